"""The differential suite: nncompile against PyTorch autograd (float64) on the same numbers.

Every op a .nn file can reach is compared sample by sample, applied to leaves and to
intermediate values, in float64 and float32 (tests/differential/opcases.py); the documented
rules at kinks and ties, and inputs where naive formulas lose precision, are compared on
purpose; and randomly generated well-typed models (tests/differential/models.py: fan-out,
broadcasting, reductions, matmuls of every rank, layers called twice, repeat, losses) are
compiled and compared with the same computation written in PyTorch. Each comparison also checks
dtypes, that inputs are never modified and that a later call never overwrites an earlier
call's results (tests/differential/harness.py).

Run it with ``bash scripts/differential.sh`` (installs PyTorch into .venv; ``--long`` for the
long profile). Without PyTorch the comparisons skip; the coverage checks still run.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from nncompile.compiler import compile_and_load
from nncompile.ops import REGISTRY, OpDef

from conftest import write_nn
from differential import models, second_order
from differential.harness import (TOLERANCES, Tolerance, assert_close, call, compare_trace, compare_with_torch,
                                  run_torch)
from differential.opcases import OpCase, missing_references, op_cases, reachable_ops
from differential.reference import TORCH
from test_ops import draw

DTYPES = ("float64", "float32")

# Ops a .nn file reaches that have no gradient samples, compared by the hand-written cases below.
WITHOUT_SAMPLES = {"arange": "test_arange_gathers_rows", "dropout": "test_dropout_matches_torch_on_its_own_mask",
                   **dict.fromkeys(("step", "argmax", "one_hot"), "test_masks_accuracy_and_one_hot_match_torch")}

# CI's profile is derandomized (the same 60 models every run, so a red CI is reproducible) and
# does not shrink a failure, which can take minutes; the long profile shrinks to a minimal model.
settings.register_profile("differential", settings.get_profile("nncompile"), max_examples=60, deadline=None,
                          derandomize=True, phases=(Phase.explicit, Phase.reuse, Phase.generate),
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("differential-long", settings.get_profile("differential"), max_examples=3000,
                          derandomize=False, phases=tuple(Phase))
PROFILE = settings.get_profile(os.environ.get("NNCOMPILE_DIFFERENTIAL_PROFILE", "differential"))


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


differential = pytest.mark.differential   # every test that compares with PyTorch


# ---- coverage: these run without PyTorch, so a new op without a reference fails everywhere

def test_every_op_a_model_can_reach_has_a_torch_reference() -> None:
    assert not missing_references(), (
        f"ops {missing_references()} have no PyTorch reference: add one to tests/differential/reference.py")
    assert set(TORCH) <= set(REGISTRY), f"references for unknown ops: {sorted(set(TORCH) - set(REGISTRY))}"


def test_every_op_a_model_can_reach_is_compared() -> None:
    compared = {case.opdef.name for case in op_cases()} | set(WITHOUT_SAMPLES)
    missing = sorted(set(reachable_ops()) - compared)
    assert not missing, f"ops never compared with PyTorch: {missing}"
    for test in WITHOUT_SAMPLES.values():
        assert callable(globals().get(test)), test


# ---- every op, every sample: leaves and intermediates, float64 and float32 ----------------

@differential
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", op_cases(), ids=lambda case: case.id)
def test_op_matches_torch(case: OpCase, dtype: str, torch, tmp_path: Path) -> None:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    path = write_nn(tmp_path, "op.nn", case.text())
    compare_with_torch(path, case.reference, case.params(), [case.inputs(rng, draw), case.inputs(rng, draw)],
                       dtype=dtype)


@differential
def test_trace_gradients_have_the_module_dtype(torch, tmp_path: Path) -> None:
    """What eval and render show: the unoptimised trace's every adjoint, in the module's dtype."""
    wrong = []
    for dtype in DTYPES:
        for case in op_cases():
            if case.variant != "leaf":
                continue
            path = write_nn(tmp_path, f"{case.id}.nn", case.text())
            rng = np.random.default_rng(0)
            try:
                compare_trace(path, case.reference, "loss", case.params(), case.inputs(rng, draw), dtype=dtype,
                              tol=TOLERANCES[dtype], check_dtypes=True)
            except AssertionError as exc:
                wrong.append(f"{case.id} {dtype}: {str(exc).splitlines()[0]}")
    assert not wrong, f"{len(wrong)} op cases, among them:\n" + "\n".join(wrong[:8])


# ---- kinks and ties, on purpose: the documented rule is PyTorch's -------------------------
# An even split among tied maxima (so a reduction's gradient sums to the upstream gradient),
# half each for a tie of maximum/minimum, relu'(0) = 0 (so maximum(x, 0) at 0 is 1/2 while
# relu is 0: they are different functions of the tie), |x|'(0) = 0, and x ** e at x = 0 has
# the limits of its gradients, 0 (d/dx for e > 1 or e = 0; d/de for e >= 0).

T = TORCH
TIES = {
    "relu at 0": ("out = relu(x)", {"x": [-1.0, 0.0, 2.0]}, lambda e: T["relu"](e["x"])),
    "leaky_relu alpha=0 at 0": ("out = leaky_relu(x, alpha=0)", {"x": [-1.0, 0.0, 2.0]},
                                lambda e: T["leaky_relu"](e["x"], alpha=0.0)),
    "leaky_relu at 0": ("out = leaky_relu(x, alpha=0.1)", {"x": [-1.0, 0.0, 2.0]},
                        lambda e: T["leaky_relu"](e["x"], alpha=0.1)),
    "elu at 0": ("out = elu(x)", {"x": [-1.0, 0.0, 2.0]}, lambda e: T["elu"](e["x"])),
    "abs at 0": ("out = abs(x)", {"x": [-1.0, 0.0, 2.0]}, lambda e: T["abs"](e["x"])),
    "l1 at 0": ("out = l1(x)", {"x": [-1.0, 0.0, 2.0]}, lambda e: T["l1"](e["x"])),
    "maximum(x, 0) at 0": ("out = maximum(x, 0)", {"x": [-1.0, 0.0, 2.0]},
                           lambda e: T["maximum"](e["x"], torch_zero(e["x"]))),
    "minimum(x, 0) at 0": ("out = minimum(x, 0)", {"x": [-1.0, 0.0, 2.0]},
                           lambda e: T["minimum"](e["x"], torch_zero(e["x"]))),
    "maximum of tied tensors": ("out = maximum(x, t)", {"x": [1.0, 2.0, 3.0], "t": [1.0, 0.0, 3.0]},
                                lambda e: T["maximum"](e["x"], e["t"])),
    "minimum of tied tensors": ("out = minimum(x, t)", {"x": [1.0, 2.0, 3.0], "t": [1.0, 0.0, 3.0]},
                                lambda e: T["minimum"](e["x"], e["t"])),
    "max of an all-equal vector": ("out = max(x)", {"x": [2.0, 2.0, 2.0]}, lambda e: T["max"](e["x"])),
    "max along an axis with ties": ("out = max(x, axis=1)", {"x": [[1.0, 3.0, 3.0], [0.0, 0.0, 0.0]]},
                                    lambda e: T["max"](e["x"], axis=1)),
    "max keepdims with ties": ("out = max(x, axis=0, keepdims=true)", {"x": [[1.0, 3.0], [1.0, 2.0]]},
                               lambda e: T["max"](e["x"], axis=0, keepdims=True)),
    "max of a param concatenated with itself": ("out = max(concat(x, x, axis=0))", {"x": [3.0, 1.0, 2.0]},
                                                lambda e: T["max"](T["concat"](e["x"], e["x"], axis=0))),
    "hardtanh at both ends": ("out = hardtanh(x, min_val=-1.0, max_val=2.0)",
                              {"x": [-3.0, -1.0, 0.0, 2.0, 5.0]},
                              lambda e: T["hardtanh"](e["x"], min_val=-1.0, max_val=2.0)),
    "hardswish at both kinks": ("out = hardswish(x)", {"x": [-4.0, -3.0, 0.0, 3.0, 4.0]},
                                lambda e: T["hardswish"](e["x"])),
    # clip is hardtanh: 0 at both ends (torch.clamp would give 1 there), as docs/language.md says
    "clip at both ends": ("out = clip(x, -1, 2)", {"x": [-3.0, -1.0, 0.0, 2.0, 5.0]},
                          lambda e: T["hardtanh"](e["x"], min_val=-1.0, max_val=2.0)),
    "where with a zero condition": ("out = where(t, x, 2 * x)", {"t": [0.0, 1.0, -2.0], "x": [1.0, 2.0, 3.0]},
                                    lambda e: T["where"](e["t"], e["x"], 2 * e["x"])),
    "min along an axis with ties": ("out = min(x, axis=1)", {"x": [[1.0, -3.0, -3.0], [0.0, 0.0, 0.0]]},
                                    lambda e: T["min"](e["x"], axis=1)),
    "std of equal entries beside others": ("out = std(x, axis=1)", {"x": [[2.0, 2.0, 2.0], [0.5, -1.0, 3.0]]},
                                           lambda e: T["std"](e["x"], axis=1)),
    "maxout with a tie": ("out = maxout(x, k=2)", {"x": [1.0, 2.0, 1.0, 0.0]}, lambda e: T["maxout"](e["x"], k=2)),
    "svm margin at its kink": ("out = svm_loss(x, y)", {"x": [[0.0, 1.0], [2.0, 0.5]], "y": [1, 0]},
                               lambda e: T["svm_loss"](e["x"], e["y"])),
    "x ** e at x = 0, e = 0": ("out = x ** t", {"x": [0.0, 1.0, 2.0], "t": 0.0}, lambda e: T["pow"](e["x"], e["t"])),
    "x ** e at x = 0, e = 2": ("out = x ** t", {"x": [0.0, 1.0, 2.0], "t": 2.0}, lambda e: T["pow"](e["x"], e["t"])),
    "x ** 0 at x = 0": ("out = x ** 0", {"x": [0.0, 1.0, 2.0]},
                        lambda e: T["pow"](e["x"], torch_zero(e["x"]))),
}


def torch_zero(like):
    return like.new_zeros(())


def declare(name: str, value: np.ndarray) -> str:
    kind = "int" if value.dtype.kind in "iu" else "float"
    return f"input {name}: {kind}[{', '.join(map(str, value.shape))}]" if value.shape else f"input {name}: {kind}"


def weighted_model(statement: str, inputs: dict[str, np.ndarray], out_shape: tuple) -> str:
    """``statement`` (which defines ``out``) over ``inputs``, reduced to ``loss = sum(out * w)``."""
    lines = [declare(name, value) for name, value in inputs.items()]
    lines += [declare("w", np.zeros(out_shape)), statement, "loss = sum(out * w)", "output out", "minimize loss"]
    return "\n".join(lines) + "\n"


def weighted(fn):
    """The PyTorch twin of :func:`weighted_model`."""
    def reference(env: dict) -> dict:
        out = fn(env)
        return {"out": out, "loss": (out * env["w"]).sum()}
    return reference


def weights_for(fn, inputs: dict[str, np.ndarray], seed: int = 0) -> np.ndarray:
    torch = pytest.importorskip("torch")
    shape = tuple(fn({k: torch.tensor(v) for k, v in inputs.items()}).shape)
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape)


@differential
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(TIES), ids=list(TIES))
def test_kinks_and_ties_follow_the_documented_rule(case: str, dtype: str, torch, tmp_path: Path) -> None:
    compare_weighted(TIES[case], dtype, tmp_path)


def compare_weighted(case: tuple, dtype: str, tmp_path: Path, tol: Tolerance | None = None) -> None:
    """A table's case (statement, inputs, its PyTorch twin) as ``loss = sum(out * w)``, against
    PyTorch with two sets of weights."""
    statement, inputs, fn = case
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    w = weights_for(fn, inputs)
    path = write_nn(tmp_path, "case.nn", weighted_model(statement, inputs, w.shape))
    with np.errstate(invalid="ignore"):   # a loss over infinite outputs adds inf and -inf
        compare_with_torch(path, weighted(fn), {}, [{**inputs, "w": w}, {**inputs, "w": 1.7 - w}], dtype=dtype,
                           tol=tol)


# ---- infinite inputs: the values PyTorch gives, and gradients that are not 0 * inf ----------
# (gelu and silu give nan gradients at infinities on both sides; hardswish, a composite whose
# product rule multiplies x by hardtanh's 0, gives nan where PyTorch gives 0 and 1.)

INFINITE = {"x": [-np.inf, -2.0, 0.5, np.inf]}
INFINITIES = {op: (f"out = {op}(x{''.join(f', {k}={v}' for k, v in attrs.items())})", INFINITE,
                   lambda e, op=op, attrs=attrs: T[op](e["x"], **attrs))
              for op, attrs in {"elu": {"alpha": 1.5}, "leaky_relu": {"alpha": 0.1}, "relu": {}, "tanh": {},
                                "sigmoid": {}, "softplus": {}, "hardtanh": {"min_val": -1.0, "max_val": 2.0},
                                "abs": {}, "exp": {}}.items()}


@differential
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(INFINITIES), ids=list(INFINITIES))
def test_infinite_inputs_give_pytorchs_values_and_gradients(case: str, dtype: str, torch, tmp_path: Path) -> None:
    compare_weighted(INFINITIES[case], dtype, tmp_path)


# ---- where naive formulas lose precision: relative error only, however small the number ----

WIDE = [-50.0, -30.0, -10.0, -0.5, 0.5, 10.0, 30.0, 50.0]
BIG_SCORES = [[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0], [0.0, -1000.0, 999.0]]
EXTREMES = {
    "sigmoid": ("out = sigmoid(x)", {"x": WIDE}, lambda e: T["sigmoid"](e["x"])),
    "log of sigmoid": ("out = log(sigmoid(x))", {"x": WIDE}, lambda e: T["log"](T["sigmoid"](e["x"]))),
    "softplus": ("out = softplus(x)", {"x": WIDE}, lambda e: T["softplus"](e["x"])),
    "exp": ("out = exp(x)", {"x": WIDE}, lambda e: T["exp"](e["x"])),
    "leaky_relu of a small slope": ("out = leaky_relu(x, alpha=0.001)", {"x": WIDE + [-1.0, -3.3, -7.77, -1e-3]},
                                    lambda e: T["leaky_relu"](e["x"], alpha=0.001)),
    "log_softmax at 1000": ("out = log_softmax(x)", {"x": BIG_SCORES}, lambda e: T["log_softmax"](e["x"])),
    "softmax at 1000": ("out = softmax(x, axis=0)", {"x": BIG_SCORES}, lambda e: T["softmax"](e["x"], axis=0)),
    "softmax_cross_entropy at 1000": ("out = softmax_cross_entropy(x, y)", {"x": BIG_SCORES, "y": [0, 2, 1]},
                                      lambda e: T["softmax_cross_entropy"](e["x"], e["y"])),
    "sigmoid_cross_entropy at 1000": ("out = sigmoid_cross_entropy(x, t)",
                                      {"x": [-1000.0, -50.0, 0.5, 50.0, 1000.0], "t": [0.0, 0.3, 1.0, 0.7, 1.0]},
                                      lambda e: T["sigmoid_cross_entropy"](e["x"], e["t"])),
}
# Relative error only: sigmoid(-50) = 1.9e-22 must not come out as 0 (then log(sigmoid(-50))
# is -inf where it should be -50). The float32 bound is a few of float32's ulps.
RELATIVE = {"float64": Tolerance(rtol=1e-9, atol=0.0), "float32": Tolerance(rtol=1e-5, atol=0.0)}


@differential
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(EXTREMES), ids=list(EXTREMES))
def test_extreme_inputs_keep_their_relative_precision(case: str, dtype: str, torch, tmp_path: Path) -> None:
    compare_weighted(EXTREMES[case], dtype, tmp_path, tol=RELATIVE[dtype])


# ---- the ops without gradient samples -------------------------------------------------------

@differential
def test_arange_gathers_rows(torch, tmp_path: Path) -> None:
    """The lecture's scores[arange(N), y], with N bound at call time."""
    path = write_nn(tmp_path, "gather.nn", """
        input X: float[N, 4]
        input y: int[N]
        input w: float[N]
        picked = X[arange(N), y]
        loss = sum(picked * w)
        output picked
        minimize loss
    """)
    rng = np.random.default_rng(0)

    def inputs() -> dict:
        return {"X": rng.standard_normal((5, 4)), "y": rng.integers(0, 4, 5), "w": rng.uniform(0.5, 1.5, 5)}

    def reference(env: dict) -> dict:
        picked = env["X"][T["arange"](len(env["y"])), env["y"]]
        return {"picked": picked, "loss": (picked * env["w"]).sum()}
    for dtype in DTYPES:
        compare_with_torch(path, reference, {}, [inputs(), inputs()], dtype=dtype)


@differential
def test_masks_accuracy_and_one_hot_match_torch(torch, tmp_path: Path) -> None:
    """The six comparisons as 0/1 masks (of floats, and of argmax's ints against labels), an
    accuracy, one-hot targets and a where routed by a mask, with the gradient through where
    and one_hot's product only: no gradient flows through a mask."""
    path = write_nn(tmp_path, "masks.nn", """
        input s: float[N, 4]
        input y: int[N]
        input w: float[N, 4]
        predicted = argmax(s, axis=1)
        accuracy = mean(predicted == y)
        wrong = sum(predicted != y)
        targets = one_hot(y, 4)
        masks = (s > 0) + 2 * (s >= 0.5) + 4 * (s < -0.5) + 8 * (s <= 0) + 16 * (s == s) + 32 * (s != 0)
        leaky = where(s > 0, s, 0.1 * s)
        loss = sum(leaky * w) + sum(targets * s) + sum(masks * s)
        output predicted, accuracy, wrong, targets, masks, leaky
        minimize loss
    """)
    rng = np.random.default_rng(0)

    def inputs() -> dict:
        return {"s": rng.standard_normal((6, 4)), "y": rng.integers(0, 4, 6), "w": rng.uniform(0.5, 1.5, (6, 4))}

    def reference(env: dict) -> dict:
        s, y = env["s"], env["y"]
        predicted = T["argmax"](s, axis=1)
        targets = T["one_hot"](y, 4).to(s.dtype)
        masks = sum(2 ** i * T["step"](s, b, cmp=cmp) for i, (cmp, b) in
                    enumerate([(">", 0.0), (">=", 0.5), ("<", -0.5), ("<=", 0.0), ("==", s), ("!=", 0.0)]))
        masks.requires_grad_()   # a leaf to PyTorch: no gradient reaches s through it, but d loss / d masks is s
        leaky = T["where"](T["step"](s, 0.0, cmp=">"), s, 0.1 * s)
        named = {"predicted": predicted, "accuracy": T["step"](predicted, y, cmp="==").mean(),
                 "wrong": T["step"](predicted, y, cmp="!=").sum(), "targets": targets, "masks": masks,
                 "leaky": leaky}
        return {**named, "loss": (leaky * env["w"]).sum() + (targets * s).sum() + (masks * s).sum()}
    for dtype in DTYPES:
        compare_with_torch(path, reference, {}, [inputs(), inputs()], dtype=dtype)


@differential
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_matches_torch_on_its_own_mask(dtype: str, torch, tmp_path: Path) -> None:
    """Train mode keeps a unit with probability 1 - p and scales it by 1 / (1 - p); the
    gradient flows through the kept units only. The mask is read off the module's output
    (inputs are nonzero, so a dropped unit is exactly 0); eval mode is the identity."""
    path = write_nn(tmp_path, "dropout.nn", """
        input x: float[40, 5]
        input w: float[40, 5]
        out = dropout(x, p=0.25)
        loss = sum(out * w)
        output out
        minimize loss
    """)
    module = compile_and_load(path, dtype=dtype)
    rng = np.random.default_rng(0)
    inputs = {"x": draw(rng, "nonzero", [(40, 5)])[0].astype(module.DTYPE),
              "w": rng.uniform(0.5, 1.5, (40, 5)).astype(module.DTYPE)}
    result = call(module, {}, inputs)
    mask = torch.tensor((np.asarray(result.outputs["out"]) != 0).astype(np.float64))
    assert 0.5 < float(mask.mean()) < 0.95, "about 3 in 4 units should be kept"

    def reference(env: dict) -> dict:
        out = T["dropout"](env["x"], p=0.25, mask=mask)
        return {"out": out, "loss": (out * env["w"]).sum()}
    expected = run_torch(reference, "loss", {}, inputs)
    tol = TOLERANCES[dtype]
    assert_close(result.outputs["out"], expected.values["out"], tol, "train-mode value")
    for name in ("x", "w"):
        assert_close(result.grads[name], expected.grads[name], tol, f"d loss / d {name}")
    assert_close(module.forward({}, **inputs)["out"], inputs["x"], tol, "eval mode is the identity")


# ---- random well-typed models -----------------------------------------------------------------

@differential
@PROFILE
@given(model=models.random_models(), seed=st.integers(0, 2 ** 32 - 1), n=st.integers(2, 5),
       dtype=st.sampled_from(DTYPES))
def test_random_models_match_torch(model: models.RandomModel, seed: int, n: int, dtype: str, tmp_path_factory) -> None:
    pytest.importorskip("torch")
    note(repr(model))
    path = write_nn(tmp_path_factory.mktemp("random"), "random.nn", model.text)
    rng = np.random.default_rng(seed)
    params = model.draw_params(rng)
    compare_with_torch(path, model.reference, params, [model.draw_inputs(rng, n), model.draw_inputs(rng, n)],
                       dtype=dtype)


@differential
def test_an_op_that_overwrites_an_operand_it_still_needs_is_caught(torch, tmp_path: Path, monkeypatch) -> None:
    """The intermediate variant's reason to be: gelu's chain reads x after its first step, so
    run in place it overwrites an intermediate x it still needs. Leaves are never written
    over, which is how such a bug passed the registry's own gradient checks."""
    derived = OpDef.may_overwrite
    monkeypatch.setattr(OpDef, "may_overwrite", lambda op, attrs: op.name == "gelu" or derived(op, attrs))
    sample = REGISTRY["gelu"].samples[0]
    for variant, broken in (("leaf", False), ("intermediate", True)):
        case = OpCase(REGISTRY["gelu"], sample, variant)
        path = write_nn(tmp_path, f"{variant}.nn", case.text())
        inputs = [case.inputs(np.random.default_rng(i), draw) for i in range(2)]
        if broken:
            with pytest.raises(AssertionError, match="value of loss"):
                compare_with_torch(path, case.reference, case.params(), inputs, dtype="float64")
        else:
            compare_with_torch(path, case.reference, case.params(), inputs, dtype="float64")


# ---- second derivatives: hvp() and grad() against PyTorch's double backward ------------------

@differential
@pytest.mark.parametrize("case", [c for c in op_cases() if c.variant == "leaf" and c.floats], ids=lambda c: c.id)
def test_grad_in_the_language_matches_torch_double_backward(case: OpCase, torch, tmp_path: Path) -> None:
    """grad(sum(op(x) * w), x) as an output, and the loss sum(grad(...) * u) differentiated
    again (H u), for every op and sample, against autograd.grad(create_graph=True)."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    path = write_nn(tmp_path, "grad.nn", second_order.grad_case_text(case))
    inputs = [second_order.grad_case_inputs(case, rng, draw) for _ in range(2)]
    compare_with_torch(path, second_order.grad_case_reference(case), {}, inputs, dtype="float64")


@differential
@pytest.mark.parametrize("case", [c for c in op_cases() if c.variant == "intermediate"], ids=lambda c: c.id)
def test_hvp_matches_torch_double_backward_on_every_op(case: OpCase, torch, tmp_path: Path) -> None:
    """hvp() and hessian() over the op's model with its operands made from a param."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    path = write_nn(tmp_path, "op.nn", case.text())
    second_order.compare_hvp_with_torch(path, case.reference, case.params(), case.inputs(rng, draw), rng)


@differential
@PROFILE
@given(model=models.random_models(), seed=st.integers(0, 2 ** 32 - 1), n=st.integers(2, 5))
def test_hvp_matches_torch_double_backward_on_random_models(model: models.RandomModel, seed: int, n: int,
                                                            tmp_path_factory) -> None:
    pytest.importorskip("torch")
    note(repr(model))
    path = write_nn(tmp_path_factory.mktemp("random"), "random.nn", model.text)
    rng = np.random.default_rng(seed)
    second_order.compare_hvp_with_torch(path, model.reference, model.draw_params(rng), model.draw_inputs(rng, n), rng)
