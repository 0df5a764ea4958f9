"""The gradient check (nncompile/gradcheck.py and ``nncompile check``): it passes correct
gradients where a fixed finite-difference step cannot (a point on a relu's kink, a deep
ill-conditioned net), still fails a gradient that is wrong by 1%, and says NaN, inf, kink
or unused where that is the truth."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import write_nn

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
