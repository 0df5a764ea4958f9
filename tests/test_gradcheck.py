"""The gradient check (nncompile/gradcheck.py and ``nncompile check``): it passes correct
gradients where a fixed finite-difference step cannot (a point on a relu's kink, a deep
ill-conditioned net), still fails a gradient that is wrong by 1%, and says NaN, inf, kink
or unused where that is the truth."""
from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import write_nn
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nncompile.codegen import emit_module
from nncompile.compiler import build, load_module
from nncompile.elaborate import elaborate_file
from nncompile.evaluate import concrete_values
from nncompile.gradcheck import GradResult, Kinks, check_gradients, relative_error, ridders, summarize
from nncompile.ops import REGISTRY
from nncompile.ops.registry import Kink

# The first example is all zeros: with zeros() biases, relu's input for that row is exactly 0.
DEAD_ROW = """
    input X: float[4, 3] = [[0, 0, 0], [1, -2, 0.5], [0.3, 0.8, -1], [-0.7, 0.2, 0.9]]
    input y: int[4] = [0, 1, 2, 1]
    layer affine(x: [B, K], out: int) -> [B, out] {
        param W: [K, out] = he()
        param b: [out] = zeros()
        return x @ W + b
    }
    h = relu(affine(X, out=5) as fc1)
    scores = affine(h, out=3) as fc2
    loss = softmax_cross_entropy(scores, y)
    minimize loss
"""

# Thirty dense + batch-norm blocks: the loss has relu kinks within 1e-7 of the point.
DEEP = """
    import nn
    input X: float[N, 8]
    input y: int[N]
    h = repeat 30 dense_bn(X, out=8)
    scores = linear(h, out=3) as out
    loss = softmax_cross_entropy(scores, y)
    minimize loss
"""


def prepared(path: Path) -> tuple[ModuleType, dict, dict, Kinks]:
    """What ``nncompile check`` checks: the float64 module, its params and inputs, its kinks."""
    model = elaborate_file(path, "float64")
    module = load_module(emit_module(build(model)), path.stem)
    params, inputs = concrete_values(model, module, {}, 0)
    return module, params, inputs, Kinks.of_file(path)


def scaling_gradient(module: ModuleType, name: str, factor: float) -> ModuleType:
    """The module with one gradient deliberately wrong: d/d``name`` times ``factor``."""
    right = module.value_and_grad

    def wrong(params, state=None, rng=None, /, **inputs):
        outputs, grads, *rest = right(params, state, rng, **inputs)
        return (outputs, {**grads, name: grads[name] * factor}, *rest)
    module.value_and_grad = wrong
    return module


def by_name(results: list[GradResult]) -> dict[str, GradResult]:
    return summarize(results)


def test_a_dead_row_on_relus_kink_is_named_and_checked_nearby(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "dead.nn", DEAD_ROW)
    result = run_cli("check", "dead.nn")
    assert result.returncode == 0, result
    assert "gradient check passed" in result.stdout and "FAIL" not in result.stdout
    bias = next(line for line in result.stdout.splitlines() if "gradient of fc1.b" in line)
    assert "relu (line 8) is at its kink for 5 entries" in bias and "checked at a point nearby" in bias


def test_a_wrong_gradient_fails_even_where_the_point_sits_on_a_kink(tmp_path: Path) -> None:
    module, params, inputs, kinks = prepared(write_nn(tmp_path, "dead.nn", DEAD_ROW))
    wrong = scaling_gradient(module, "fc1.b", 1.01)
    results = by_name(check_gradients(wrong, params, inputs, kinks=kinks))
    assert results["fc1.b"].status == "FAIL" and results["fc1.b"].error > 1e-3
    assert all(r.ok for name, r in results.items() if name != "fc1.b"), results


@pytest.mark.parametrize("factor", [1.0001, 0.9999, 1.00001])
def test_a_gradient_off_by_a_hundredth_of_a_percent_is_never_ok(tmp_path: Path, factor: float) -> None:
    """The tolerance is 1e-6: an error a hundred times larger than that must not pass."""
    for source, name in ((DEAD_ROW, "fc1.W"), (DEEP, "h.1.W")):
        module, params, inputs, kinks = prepared(write_nn(tmp_path, "m.nn", source))
        results = by_name(check_gradients(scaling_gradient(module, name, factor), params, inputs, kinks=kinks,
                                          directions=1))
        assert results[name].status != "ok", results[name]


def test_a_deep_batchnorm_net_passes_and_a_wrong_gradient_in_it_fails(tmp_path: Path) -> None:
    """One run shows both: 92 correct gradients pass, the one scaled by 1.01 fails."""
    module, params, inputs, kinks = prepared(write_nn(tmp_path, "deep.nn", DEEP))
    assert len(params) == 92
    results = by_name(check_gradients(scaling_gradient(module, "h.1.W", 1.01), params, inputs,
                                      kinks=kinks, directions=1))
    assert results.pop("h.1.W").status == "FAIL"
    assert all(r.status == "ok" for r in results.values()), [r for r in results.values() if r.status != "ok"]



DEAD_STACK = """
    import nn
    input X: float[N, 6]
    input y: int[N]
    h = repeat 40 dense(X, out=6)
    scores = linear(h, out=2) as head
    loss = softmax_cross_entropy(scores, y) + 1e-4 * l2(head.W)
    minimize loss
"""


def test_vanishing_gradients_of_a_dying_relu_stack_are_judged_against_the_floor(tmp_path: Path) -> None:
    """Forty dense relu layers: the upper ones sit on their kinks, and their bias gradients
    fall to 1e-10, below what a difference quotient there resolves. They were FAILED for
    differences well within the numeric slope's own error; they are not, and a gradient 1%
    off among them still fails."""
    module, params, inputs, kinks = prepared(write_nn(tmp_path, "stack.nn", DEAD_STACK))
    results = by_name(check_gradients(module, params, inputs, kinks=kinks))
    assert not [r for r in results.values() if r.status == "FAIL"], [r for r in results.values() if not r.ok]
    assert sum(r.status == "ok" for r in results.values()) > 50
    notes = [r.note for r in results.values() if "instances" in r.note]   # one phrase per op of the source
    assert notes and all(len(note) < 250 and note.count("relu") == 1 for note in notes), notes
    assert re.search(r"relu \([^)]*line \d+\) is at its kink for \d+ entries, in \d+ instances \(h\.\d+, h\.\d+, h\.\d+, "
                     r"\.\.\.\) at the given point", " ".join(notes)), notes
    for name in ("head.W", "h.40.W"):
        wrong = by_name(check_gradients(scaling_gradient(module, name, 1.01), params, inputs, kinks=kinks))
        assert wrong[name].status == "FAIL", wrong[name]

def test_the_deep_net_defeats_a_fixed_step(tmp_path: Path) -> None:
    """Why the check extrapolates and steers clear of kinks: at the old fixed step 1e-6
    centred differences disagree with the (correct) analytic gradient of the deep net."""
    module, params, inputs, _ = prepared(write_nn(tmp_path, "deep.nn", DEEP))
    rng = np.random.default_rng(0)

    def loss(p: dict) -> float:
        return float(module.value_and_grad(p, None, np.random.default_rng(0), **inputs)[0]["loss"])
    grad = module.value_and_grad(params, None, np.random.default_rng(0), **inputs)[1]["h.1.W"]
    d = rng.standard_normal(grad.shape)
    fixed = (loss({**params, "h.1.W": params["h.1.W"] + 1e-6 * d})
             - loss({**params, "h.1.W": params["h.1.W"] - 1e-6 * d})) / 2e-6
    assert relative_error(float(np.sum(grad * d)), fixed) > 1e-3


def test_the_check_uses_float64_whatever_the_models_dtype(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", "dtype float32\n" + DEAD_ROW.replace("\n    ", "\n"))
    result = run_cli("check", "m.nn")
    assert result.returncode == 0, result
    errors = [float(line.split("relative error ")[1].split()[0]) for line in result.stdout.splitlines()
              if "relative error" in line]
    assert len(errors) == 5 and max(errors) < 1e-8, "float32 differences could not agree this closely"


def test_nan_and_inf_are_reported_as_such(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", """
        input x: float[3] = [0, 1, 4]
        param v: [3] = ones()
        loss = sum(sqrt(x) * v)
        minimize loss
    """)
    result = run_cli("check", "m.nn")
    assert result.returncode == 1, result
    line = next(line for line in result.stdout.splitlines() if "gradient of x" in line)
    assert "FAIL: the gradient holds 1 NaN or inf entry" in line and "relative error" not in line
    assert "gradient check FAILED for x" in result.stderr


def test_a_param_that_does_not_affect_the_loss_gets_a_warning(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", """
        input x: float[3] = [1, 2, 3]
        param v: [3] = ones()
        param w: [3] = ones()
        param u: [3] = ones()
        loss = sum(v * x) + sum(relu(u - 10))
        minimize loss
    """)
    result = run_cli("check", "m.nn")
    assert result.returncode == 0, result
    for name in ("w", "u"):
        assert f"gradient of {name}  warning: {name} does not affect the loss" in result.stdout
    assert "2 ok, 2 unused" in result.stdout


def test_ties_in_max_and_maximum_are_named(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", """
        input x: float[4] = [1, 3, 3, 2]
        param v: [4] = ones()
        loss = max(x * v) + sum(maximum(x, 2))
        minimize loss
    """)
    module, params, inputs, kinks = prepared(path)
    note = by_name(check_gradients(module, params, inputs, kinks=kinks))["x"].note
    assert "max (line 3) has a tie for the maximum for 2 entries" in note
    assert "maximum (line 3) has tied operands for 1 entry" in note


def test_a_point_that_cannot_be_moved_off_a_kink_is_inconclusive_not_failed(tmp_path: Path, monkeypatch,
                                                                            capsys) -> None:
    """As if every point nearby sat on relu's kink too: the check says so and does not fail."""
    from nncompile import cli, gradcheck

    path = write_nn(tmp_path, "dead.nn", DEAD_ROW)
    module, params, inputs, kinks = prepared(path)
    monkeypatch.setattr(gradcheck, "kink_radius", lambda *args: 0.0)
    results = by_name(check_gradients(module, params, inputs, kinks=kinks))
    assert all(r.status == "inconclusive" and r.ok for r in results.values()), results
    assert results["fc1.b"].note == ("relu (line 8) is at its kink for 5 entries at the given point, "
                                     "and so was every point nearby tried")
    assert cli.main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gradient of fc1.b  inconclusive: relu (line 8) is at its kink" in out and "5 inconclusive" in out


def test_ridders_extrapolates_past_truncation_error() -> None:
    slope, err = ridders(np.exp, 0.5)
    assert abs(slope - 1.0) < 1e-12 and err < 1e-10


@pytest.mark.parametrize("a, b, floor, want", [(1.0, 1.0, 1e-5, 0.0), (1e-17, 1e-13, 1e-5, 1e-8),
                                               (2.0, 1.0, 1e-5, 0.5)])
def test_relative_error_has_a_floor_for_zero_gradients(a: float, b: float, floor: float, want: float) -> None:
    assert relative_error(a, b, floor) == pytest.approx(want, rel=1e-3)


def test_a_kink_is_read_from_its_op(tmp_path: Path, monkeypatch) -> None:
    """The check names no op: where an op's kink is, and how it is said, come from the op's
    declaration (OpDef.kink), so an op declaring one is watched like relu."""
    smooth = REGISTRY["tanh"]
    monkeypatch.setitem(REGISTRY, "tanh", dataclasses.replace(smooth, kink=Kink(what="is at its pretend kink")))
    path = write_nn(tmp_path, "m.nn", """
        input x: float[3] = [-1, 0, 2]
        loss = sum(tanh(x))
        minimize loss
    """)
    module, params, inputs, kinks = prepared(path)
    assert "tanh (line 2) is at its pretend kink for 1 entry" in by_name(
        check_gradients(module, params, inputs, kinks=kinks))["x"].note
    monkeypatch.setitem(REGISTRY, "tanh", smooth)
    assert not Kinks.of_file(path).kinks


# ---- kinks the check once missed: max-pool switches, comparisons, argmax -----------------

def test_a_tie_in_a_max_pool_window_is_stepped_around(tmp_path: Path) -> None:
    """Two entries of a window 1e-5 apart: a step of 1e-3 moves the max from one to the
    other. Its switch must change sign there (the max minus the runner-up never does)."""
    module, params, inputs, kinks = prepared(write_nn(tmp_path, "m.nn", """
        input X: float[1, 1, 2, 4] = [[[[0.5, 0.50001, -1, 2], [0.1, 0.2, 1.99999, 0.3]]]]
        param w: [4] = ones()
        q = max_pool2d(X * w, 2)
        loss = sum(tanh(q + 0.3) * q)
        minimize loss
    """))
    results = by_name(check_gradients(module, params, inputs, kinks=kinks))
    assert all(r.status == "ok" and r.error < 1e-8 for r in results.values()), results


def test_a_pool_window_of_dead_relus_is_no_kink_of_its_own(tmp_path: Path) -> None:
    """All four relus of a window output 0 (a tie at 0); one wakes up 2e-4 away along X. The
    tie moves only because that relu's kink was crossed: the check looks closer and passes."""
    module, params, inputs, kinks = prepared(write_nn(tmp_path, "m.nn", """
        input X: float[1, 1, 2, 4] = [[[[-1, -0.0002, 0.5, 2], [-1, -1, 0.3, 1]]]]
        param b: [1] = zeros()
        param w: [1, 1, 1, 1] = ones()
        q = max_pool2d(relu(X * w + b), 2)
        loss = sum(tanh(q + 0.3) * q)
        minimize loss
    """))
    results = by_name(check_gradients(module, params, inputs, kinks=kinks))
    assert all(r.status == "ok" for r in results.values()), results


@pytest.mark.parametrize("x, expression, named", [
    ("[0.2, -1, 0.5, 0.19999, 1.3, -0.3]", "where(h > 0.2, h, -h)", "comparison > (line 4) is at its threshold"),
    ("[0.2, -1, 0.5, 0.19999, 1.3, -0.3]", "h * (h >= 0.2)", "comparison >= (line 4) is at its threshold"),
    ("[0.5, -1, 0.5, 0.49999, 0.2, -0.3]", "one_hot(argmax(h), 6) * h", "argmax (line 4) has a tie for the maximum"),
])
def test_a_comparison_or_argmax_the_loss_reads_is_a_kink(tmp_path: Path, x: str, expression: str, named: str) -> None:
    """The loss jumps where a mask flips: the check steps around it, and names it when the
    point sits on it (x[0] is at the threshold, or tied for the max; x[3] is 1e-5 off)."""
    module, params, inputs, kinks = prepared(write_nn(tmp_path, "m.nn", f"""
        input x: float[6] = {x}
        param w: [6] = ones()
        h = x * w * [1, 1, 1, 1, 1, 2]
        loss = sum(tanh({expression} + 0.1) * h)
        minimize loss
    """))
    results = by_name(check_gradients(module, params, inputs, kinks=kinks))
    assert all(r.status == "ok" for r in results.values()), results
    assert named in results["w"].note and "checked at a point nearby" in results["w"].note


def test_a_kink_only_an_output_reads_does_not_disturb_the_check(tmp_path: Path) -> None:
    """An accuracy's argmax and comparison reach no loss: they are not the loss's kinks."""
    path = write_nn(tmp_path, "m.nn", """
        input X: float[2, 3] = [[0.5, 0.5, -1], [2, 0.1, 1.9]]
        input y: int[2] = [0, 2]
        param W: [3, 3] = normal(0.5)
        scores = X @ W
        accuracy = mean(argmax(scores, axis=1) == y)
        loss = softmax_cross_entropy(scores, y)
        output accuracy
        minimize loss
    """)
    assert Kinks.of_file(path).kinks == []


def test_a_kink_nearer_than_round_off_allows_is_as_good_as_at_the_point(tmp_path: Path) -> None:
    """A relu 1e-8 from its kink: a step short enough to miss it measures round-off (it was
    passed at a relative error of 1.3e-6, as within the estimate's error; a like case with
    an error estimate of 0 FAILed), so the point is moved off it and checked sharply."""
    module, params, inputs, kinks = prepared(write_nn(tmp_path, "m.nn", """
        input x: float[4] = [1e-8, -0.5, 0.7, 2]
        param w: [4] = ones()
        loss = sum(tanh(relu(x * w) - 0.3) * x)
        minimize loss
    """))
    results = [r for r in check_gradients(module, params, inputs, kinks=kinks) if r.name == "x"]
    assert all(r.status == "ok" and r.error < 1e-7 for r in results), results
    assert "relu (line 3) is at its kink for 1 entry at the given point: checked at a point nearby" in \
        [r.note for r in results]


def test_ridders_error_estimate_is_never_below_round_off() -> None:
    """At a step of 1e-13 the differences of f = 1 + t / 1000 are a few ulps: the estimate
    may be off by far more than the tolerance, and its error estimate must say so."""
    slope, err = ridders(lambda t: 1.0 + 1e-3 * t, 1e-13)
    assert err >= abs(slope - 1e-3) and err > 1e-5


def mutated_rule(monkeypatch, op: str, factor: float) -> None:
    """The registry's gradient rule of ``op``, every part times ``factor``: a wrong rule."""
    right = REGISTRY[op]

    def wrong(g, out, *operands):
        parts = right.vjp(g, out, *operands)
        if not isinstance(parts, tuple):
            return parts * factor
        return tuple(None if part is None else part * factor for part in parts)
    monkeypatch.setitem(REGISTRY, op, dataclasses.replace(right, vjp=wrong))


@pytest.mark.parametrize("op, expression", [("max_pool2d", "max_pool2d(X * w, 2)"),
                                            ("where", "where(X * w > 0.2, X * w, -X * w)")])
def test_a_wrong_rule_behind_a_kink_still_fails(tmp_path: Path, monkeypatch, op: str, expression: str) -> None:
    """Stepping around kinks must not step around a wrong rule: 0.1% off fails."""
    mutated_rule(monkeypatch, op, 1.001)
    module, params, inputs, kinks = prepared(write_nn(tmp_path, "m.nn", f"""
        input X: float[1, 1, 2, 4] = [[[[0.5, 0.50001, -1, 2], [0.1, 0.2, 1.99999, 0.3]]]]
        param w: [4] = ones()
        q = {expression}
        loss = sum(tanh(q + 0.3) * q)
        minimize loss
    """))
    results = by_name(check_gradients(module, params, inputs, kinks=kinks))
    assert results["w"].status == "FAIL" and results["w"].error > 1e-4, results


# ---- generated models: no correct gradient FAILs, no wrong one passes ---------------------

def _checked(source: str, seed: int) -> tuple[dict[str, GradResult], dict[str, GradResult]]:
    """The check of a generated model, and of the same model with d/dw 0.1% off."""
    from nncompile.errors import NNError

    with tempfile.TemporaryDirectory() as folder:
        try:
            module, params, inputs, kinks = prepared(write_nn(Path(folder), "m.nn", source))
        except NNError:   # a geometry with no output pixel left
            assume(False)
        right = by_name(check_gradients(module, params, inputs, seed=seed, kinks=kinks))
        wrong = by_name(check_gradients(scaling_gradient(module, "w", 1.001), params, inputs, seed=seed, kinks=kinks))
    return right, wrong


def _never_false(right: dict[str, GradResult], wrong: dict[str, GradResult]) -> None:
    assert not [r for r in right.values() if r.status == "FAIL"], right
    assert wrong["w"].status != "ok" or wrong["w"].analytic == 0.0, wrong["w"]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(channels=st.sampled_from([2, 4]), groups=st.sampled_from([1, 2]), filters=st.sampled_from([2, 4]),
       kernel=st.sampled_from([2, 3]), stride=st.sampled_from([1, 2]), dilation=st.sampled_from([1, 2]),
       padding=st.sampled_from([0, 1]), size=st.integers(6, 9), pool=st.sampled_from([2, 3]),
       pool_stride=st.sampled_from([1, 2]), pool_padding=st.sampled_from([0, 1]),
       activation=st.sampled_from(["", "relu", "tanh"]), jitter=st.sampled_from([0.0, 1e-6, 1e-4]),
       seed=st.integers(0, 2**16))
def test_generated_conv_and_max_pool_nets_are_judged_truly(channels: int, groups: int, filters: int, kernel: int,
                                                          stride: int, dilation: int, padding: int, size: int,
                                                          pool: int, pool_stride: int, pool_padding: int,
                                                          activation: str, jitter: float, seed: int) -> None:
    """conv2d (stride, dilation, groups, padding) -> max_pool2d, its filters all ones at
    first and its images on a grid of tenths, shifted by at most 1e-4: window sums tie, or
    nearly. Correct gradients never FAIL (a max-pool switch within the step is a kink) and
    a 0.1% error never passes."""
    rng = np.random.default_rng(seed)
    images = np.round(rng.standard_normal((2, channels, size, size)), 1)
    images += jitter * rng.standard_normal(images.shape)
    source = f"""
        input X: float[2, {channels}, {size}, {size}] = {images.tolist()!r}
        param w: [{filters}, {channels // groups}, {kernel}, {kernel}] = ones()
        param b: [{filters}] = zeros()
        h = {activation}(conv2d(X, w, b, stride={stride}, dilation={dilation}, groups={groups}, padding={padding}))
        q = max_pool2d(h, {pool}, stride={pool_stride}, padding={pool_padding})
        loss = sum(tanh(q + 0.3) * q)
        minimize loss
    """
    _never_false(*_checked(source, seed))


_SAME = ("clip(H, -0.5, 0.5)", "where(H > 0, H, 0.3 * H)", "where(H > 0.2, H, -H)", "abs(H - 0.3)", "H * (H > 0.1)",
         "one_hot(argmax(H, axis=1), 6) * H", "maximum(H, 0.2)", "minimum(H, H * 0.5 + 0.1)", "relu(H - 0.1)",
         "leaky_relu(H, 0.1)", "elu(H, 0.5)", "hardtanh(H, -0.3, 0.3)", "H - max(H, axis=1, keepdims=true)",
         "H * min(H, axis=0, keepdims=true)", "where(H < 0.4, H * H, H)")
_LAST = ("max(H, axis=1)", "min(H, axis=0)", "max(H)", "sum(H, axis=1)", "maxout(H, 2)", "maxout(H, 3)")


@settings(max_examples=25, deadline=None, derandomize=True)
@given(chain=st.lists(st.sampled_from(_SAME), min_size=1, max_size=2), last=st.sampled_from(_LAST),
       jitter=st.sampled_from([0.0, 1e-6, 1e-4]), seed=st.integers(0, 2**16))
def test_generated_chains_of_kinks_on_near_ties_are_judged_truly(chain: list[str], last: str, jitter: float,
                                                                seed: int) -> None:
    """Kinked and masked ops (clip, where of a comparison, abs, argmax, max and min, maxout...)
    on data a tenth apart, shifted by at most 1e-4: ties, thresholds and clip ends at or near
    the point. Correct gradients never FAIL and a 0.1% error never passes."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal((6, 6)), 1) + jitter * rng.standard_normal((6, 6))
    lines = ["h0 = x * w + b"] + [f"h{i + 1} = {op.replace('H', f'h{i}')}" for i, op in enumerate(chain)]
    source = "\n".join([f"input x: float[6, 6] = {x.tolist()!r}", "param w: [6] = ones()", "param b: [6] = zeros()",
                        *lines, f"z = {last.replace('H', f'h{len(chain)}')}", "loss = sum(tanh(z + 0.37) * (z + 0.21))",
                        "minimize loss"])
    _never_false(*_checked(source, seed))
