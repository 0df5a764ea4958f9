"""The lecture's toolkit of ops (issue 4; nncompile/ops/activations.py, losses.py and
indexing.py): activations, losses, penalties, indexing and concatenation, each compared
with hand-written numpy, pushed to logits of +-1000, and checked where the generated
registry check (tests/test_ops.py) cannot reach: whole .nn programs, the language's
subscripts, errors, and the GPU backend's scalar forms."""
from __future__ import annotations

import decimal
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import nncompile
from nncompile.compiler import compile_file, load_module
from nncompile.elaborate import elaborate_file
from nncompile.errors import NNError

from conftest import assert_grads_match, write_nn

BIG = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 1000.0, 0.0], [0.0, -1000.0, 1000.0]])
BIG_LABELS = np.array([0, 2, 1])


# ---- numpy references, written as the notes write them ---------------------------------

def np_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def svm_loss_naive(scores: np.ndarray, y: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """The CS231n notes' loop: L_i = sum_{j != y_i} max(0, s_j - s_{y_i} + delta), and its gradient."""
    loss, grad = 0.0, np.zeros_like(scores)
    for i in range(len(y)):
        for j in range(scores.shape[1]):
            if j == y[i]:
                continue
            margin = scores[i, j] - scores[i, y[i]] + delta
            if margin > 0:
                loss += margin
                grad[i, j] += 1
                grad[i, y[i]] -= 1
    return loss / len(y), grad / len(y)


def np_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


@pytest.fixture
def build(tmp_path: Path):
    """``build(source, dtype=...)``: the module compiled from .nn text."""
    counter = iter(range(10_000))

    def compile_(source: str, dtype: str = "float64", **options):
        path = write_nn(tmp_path, f"m{next(counter)}.nn", source)
        return nncompile.compile_and_load(path, dtype=dtype, **options)
    return compile_


def _finite(*arrays) -> bool:
    return all(np.isfinite(np.asarray(a, dtype=float)).all() for a in arrays)


# ---- activations -----------------------------------------------------------------------

ACTIVATIONS = {
    "leaky_relu(x, alpha=0.1)": lambda x: np.where(x > 0, x, 0.1 * x),
    "leaky_relu(x)": lambda x: np.where(x > 0, x, 0.01 * x),
    "elu(x)": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "elu(x, alpha=1.7)": lambda x: np.where(x > 0, x, 1.7 * np.expm1(np.minimum(x, 0))),
    "softplus(x)": lambda x: np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0),
    "gelu(x)": np_gelu,
    "sigmoid(x)": lambda x: 1 / (1 + np.exp(-x)),
    "softmax(x)": np_softmax,
    "softmax(x, axis=0)": lambda x: np_softmax(x, axis=0),
    "log_softmax(x, axis=-1)": np_log_softmax,
    "silu(x)": lambda x: x / (1 + np.exp(-x)),
    "swish(x)": lambda x: x / (1 + np.exp(-x)),
    "hardtanh(x)": lambda x: np.clip(x, -1.0, 1.0),
    "hardswish(x)": lambda x: x * np.clip(x + 3, 0, 6) / 6,
    "hardtanh(x, min_val=-0.5, max_val=1.5)": lambda x: np.clip(x, -0.5, 1.5),
    "maxout(x, k=2)": lambda x: np.maximum(x[:, :3], x[:, 3:]),
    "maxout(x, k=3)": lambda x: x.reshape(len(x), 3, 2).max(axis=1),
}


@pytest.mark.parametrize("call", list(ACTIVATIONS))
def test_activation_values_and_gradients(call: str, build) -> None:
    m = build(f"input x: float[N, 6]\ninput w: float[N, 6]\nh = {call}\nloss = sum(h * h)\nminimize loss\n"
              if "maxout" not in call else
              f"input x: float[N, 6]\nh = {call}\nloss = sum(h * h)\nminimize loss\n")
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 2.0, (4, 6)) * rng.choice([-1.0, 1.0], (4, 6))   # away from the kinks
    inputs = {"x": x, **({"w": x} if "w" in m.INPUTS else {})}
    out = m.forward({}, **inputs)
    np.testing.assert_allclose(out["loss"], np.sum(ACTIVATIONS[call](x) ** 2), rtol=1e-12)
    assert_grads_match(m, {}, inputs, names=["x"])


@pytest.mark.parametrize("call", ["sigmoid", "softplus", "elu", "gelu", "leaky_relu", "tanh", "relu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activations_stay_finite_at_1000(call: str, dtype: str, build) -> None:
    m = build(f"input x: float[4]\nh = {call}(x)\nloss = sum(h)\noutput h\nminimize loss\n", dtype=dtype)
    x = np.array([-1000.0, -30.0, 30.0, 1000.0])
    out, grads = m.value_and_grad({}, x=x)
    assert _finite(out["h"], grads["x"]), (out, grads)
    expected = {"sigmoid": [0, 0, 1, 1], "softplus": [0, 0, 30, 1000], "elu": [-1, -1, 30, 1000],
                "gelu": [0, 0, 30, 1000], "leaky_relu": [-10, -0.3, 30, 1000], "tanh": [-1, -1, 1, 1],
                "relu": [0, 0, 30, 1000]}[call]
    np.testing.assert_allclose(out["h"], expected, rtol=1e-6, atol=1e-6)
    slope = {"sigmoid": [0, 0, 0, 0], "softplus": [0, 0, 1, 1], "elu": [0, 0, 1, 1], "gelu": [0, 0, 1, 1],
             "leaky_relu": [0.01, 0.01, 1, 1], "tanh": [0, 0, 0, 0], "relu": [0, 0, 1, 1]}[call]
    np.testing.assert_allclose(grads["x"], slope, atol=1e-6)


def exact_sigmoid(x: float) -> float:
    """1 / (1 + exp(-x)) with 50 significant digits, rounded once to a float."""
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        return float(1 / (1 + (-decimal.Decimal(float(x))).exp()))


@pytest.mark.parametrize(("dtype", "low", "high", "ulps"), [("float64", -700, 700, 4), ("float32", -87, 88, 4)])
def test_sigmoid_keeps_its_relative_precision_on_both_sides(build, dtype: str, low: float, high: float,
                                                            ulps: int) -> None:
    """Over the dtype's whole normal range: sigmoid(-50) is exp(-50), not 0, and so is
    softplus's gradient; log(sigmoid(-50)) is -50 with gradient 1, not -inf and NaN."""
    m = build("""
        input x: float[N]
        s = sigmoid(x)
        loss = sum(softplus(x))
        output s
        minimize loss
    """, dtype=dtype)
    x = np.linspace(low, high, 4001).astype(dtype)
    out, grads = m.value_and_grad({}, x=x)
    exact = np.array([exact_sigmoid(v) for v in x])
    eps = np.finfo(dtype).eps
    for got in (out["s"], grads["x"]):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, exact, rtol=ulps * eps, atol=0)
    m = build("input x: float[2]\nloss = sum(log(sigmoid(x)))\nminimize loss\n", dtype=dtype)
    out, grads = m.value_and_grad({}, x=np.array([-50.0, 50.0]))
    np.testing.assert_allclose(out["loss"], -50.0, rtol=ulps * eps)
    np.testing.assert_allclose(grads["x"], [1.0, 0.0], rtol=ulps * eps, atol=1e-20)   # 1 - sigmoid(x)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler (gcc) on the PATH")
@pytest.mark.parametrize(("dtype", "low", "high"), [("float64", -700, 700), ("float32", -87, 88)])
def test_sigmoids_c_form_keeps_its_relative_precision_too(dtype: str, low: float, high: float) -> None:
    """The scalar form the GPU backend fuses, compiled with gcc, is as accurate as numpy's."""
    import fake_cupy
    from nncompile.ops import REGISTRY

    x = np.linspace(low, high, 4001).astype(dtype)
    got = fake_cupy.run_c(REGISTRY["sigmoid"].c_expression(["x0"], {}), dtype, x)
    np.testing.assert_allclose(got, [exact_sigmoid(v) for v in x], rtol=4 * np.finfo(dtype).eps, atol=0)


def test_maxout_is_the_lectures_max_of_two_affine_maps(build) -> None:
    m = build("""
        input x: float[N, 3]
        input W1: float[3, 4]
        input W2: float[3, 4]
        both = maxout(concat(x @ W1, x @ W2, axis=1), k=2)
        by_hand = maximum(x @ W1, x @ W2)
        output both, by_hand
    """)
    rng = np.random.default_rng(1)
    out = m.forward({}, x=rng.standard_normal((5, 3)), W1=rng.standard_normal((3, 4)), W2=rng.standard_normal((3, 4)))
    np.testing.assert_array_equal(out["both"], out["by_hand"])


@pytest.mark.parametrize("call", ["softmax(x)", "log_softmax(x)", "softmax(x, axis=0)", "log_softmax(x, axis=0)"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_and_log_softmax_at_1000(call: str, dtype: str, build) -> None:
    m = build(f"input x: float[3, 3]\ninput w: float[3, 3]\np = {call}\nloss = sum(p * w)\noutput p\nminimize loss\n",
              dtype=dtype)
    w = np.arange(9.0).reshape(3, 3) / 9
    out, grads = m.value_and_grad({}, x=BIG, w=w)
    assert _finite(out["p"], out["loss"], grads["x"], grads["w"])
    axis = 0 if "axis=0" in call else -1
    want = (np_softmax if call.startswith("softmax") else np_log_softmax)(BIG, axis)
    np.testing.assert_allclose(out["p"], want, rtol=1e-6, atol=1e-6)
    if dtype == "float64":   # the exact gradient, from the float64 references
        if call.startswith("softmax"):
            expected = want * (w - (w * want).sum(axis=axis, keepdims=True))
        else:
            expected = w - np.exp(want) * w.sum(axis=axis, keepdims=True)
        np.testing.assert_allclose(grads["x"], expected, atol=1e-12)


# ---- losses ----------------------------------------------------------------------------

LOSS_MODEL = """
    const C = 3
    input s: float[N, C]
    input y: int[N]
    input t: float[N, C]
    ce = softmax_cross_entropy(s, y)
    ce_probs = softmax_cross_entropy(s, t)
    svm = svm_loss(s, y)
    svm2 = svm_loss(s, y, delta=2.5)
    loss = ce + ce_probs + svm + svm2
    output ce, ce_probs, svm, svm2
    minimize loss
"""


def _losses(build, dtype: str = "float64"):
    return build(LOSS_MODEL, dtype=dtype)


def test_losses_match_hand_written_numpy(build) -> None:
    m = _losses(build)
    rng = np.random.default_rng(2)
    s, y = rng.standard_normal((6, 3)) * 2, rng.integers(0, 3, 6)
    t = np_softmax(rng.standard_normal((6, 3)))
    out, grads = m.value_and_grad({}, s=s, y=y, t=t)
    logp = np_log_softmax(s)
    np.testing.assert_allclose(out["ce"], -logp[np.arange(6), y].mean(), rtol=1e-12)
    np.testing.assert_allclose(out["ce_probs"], -(t * logp).sum(axis=1).mean(), rtol=1e-12)
    svm, dsvm = svm_loss_naive(s, y, 1.0)
    svm2, dsvm2 = svm_loss_naive(s, y, 2.5)
    np.testing.assert_allclose(out["svm"], svm, rtol=1e-12)
    np.testing.assert_allclose(out["svm2"], svm2, rtol=1e-12)
    onehot = np.eye(3)[y]
    p = np_softmax(s)
    expected = (p - onehot) / 6 + (p * t.sum(1, keepdims=True) - t) / 6 + dsvm + dsvm2
    np.testing.assert_allclose(grads["s"], expected, atol=1e-12)
    np.testing.assert_allclose(grads["t"], -logp / 6, atol=1e-12)


def test_one_hot_probability_targets_equal_integer_labels(build) -> None:
    m = _losses(build)
    rng = np.random.default_rng(3)
    s, y = rng.standard_normal((5, 3)), rng.integers(0, 3, 5)
    out, grads = m.value_and_grad({}, s=s, y=y, t=np.eye(3)[y])
    np.testing.assert_allclose(out["ce"], out["ce_probs"], rtol=1e-12)
    np.testing.assert_allclose(grads["s"], 2 * (np_softmax(s) - np.eye(3)[y]) / 5 + svm_loss_naive(s, y, 1.0)[1]
                               + svm_loss_naive(s, y, 2.5)[1], atol=1e-12)


def test_svm_loss_matches_indexing_by_hand(build) -> None:
    """The notes' vectorised form, written in the language with a gather, equals the built-in."""
    m = build("""
        input s: float[N, 4]
        input y: int[N]
        correct = s[arange(N), y]
        by_hand = sum(maximum(s - reshape(correct, [N, 1]) + 1.0, 0)) / N - 1.0
        builtin = svm_loss(s, y)
        output by_hand, builtin
    """)
    rng = np.random.default_rng(4)
    out = m.forward({}, s=rng.standard_normal((7, 4)), y=rng.integers(0, 4, 7))
    np.testing.assert_allclose(out["by_hand"], out["builtin"], rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_losses_stay_finite_and_correct_at_1000(dtype: str, build) -> None:
    m = _losses(build, dtype)
    t = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.25, 0.25, 0.5]])
    out, grads = m.value_and_grad({}, s=BIG, y=BIG_LABELS, t=t)
    assert _finite(*out.values(), *grads.values())
    # -logp of the labels: row 0 takes the max (0), row 1 is 1000 below it, row 2 is 2000 below.
    np.testing.assert_allclose(out["ce"], (0 + 1000 + 2000) / 3, rtol=1e-6)
    logp = np_log_softmax(BIG)
    np.testing.assert_allclose(out["ce_probs"], -(t * logp).sum() / 3, rtol=1e-6)
    svm, dsvm = svm_loss_naive(BIG, BIG_LABELS, 1.0)
    np.testing.assert_allclose(out["svm"], svm, rtol=1e-6)
    onehot = np.eye(3)[BIG_LABELS]
    p = np_softmax(BIG)
    svm2 = svm_loss_naive(BIG, BIG_LABELS, 2.5)[1]
    expected = (p - onehot) / 3 + (p * t.sum(1, keepdims=True) - t) / 3 + dsvm + svm2
    np.testing.assert_allclose(grads["s"], expected, atol=1e-6)


BINARY = """
    input x: float[N]
    input t: float[N]
    input p: float[N, 2]
    input q: float[N, 2]
    bce = sigmoid_cross_entropy(x, t)
    sq = mse(p, q)
    loss = bce + sq
    output bce, sq
    minimize loss
"""


def test_binary_cross_entropy_and_mse_match_numpy(build) -> None:
    m = build(BINARY)
    rng = np.random.default_rng(5)
    x, t = rng.standard_normal(6) * 3, rng.uniform(0, 1, 6)
    p, q = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    out, grads = m.value_and_grad({}, x=x, t=t, p=p, q=q)
    sig = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(out["bce"], -np.mean(t * np.log(sig) + (1 - t) * np.log(1 - sig)), rtol=1e-12)
    np.testing.assert_allclose(out["sq"], np.mean((p - q) ** 2), rtol=1e-12)
    np.testing.assert_allclose(grads["x"], (sig - t) / 6, atol=1e-14)
    np.testing.assert_allclose(grads["t"], -x / 6, atol=1e-14)
    np.testing.assert_allclose(grads["p"], 2 * (p - q) / 12, atol=1e-14)
    np.testing.assert_allclose(grads["q"], -2 * (p - q) / 12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_stays_finite_at_1000(dtype: str, build) -> None:
    m = build(BINARY, dtype=dtype)
    x, t = np.array([1000.0, -1000.0, 1000.0, -1000.0]), np.array([1.0, 0.0, 0.0, 1.0])
    out, grads = m.value_and_grad({}, x=x, t=t, p=np.zeros((4, 2)), q=np.zeros((4, 2)))
    assert _finite(*out.values(), *grads.values())
    np.testing.assert_allclose(out["bce"], 500.0, rtol=1e-6)     # confidently wrong twice: 1000 each
    np.testing.assert_allclose(grads["x"], [0, 0, 0.25, -0.25], atol=1e-7)


def test_penalties_match_the_lecture(build) -> None:
    m = build("""
        input W1: float[3, 4]
        input W2: float[4]
        r2 = l2(W1, W2)
        r1 = l1(W1)
        en = elastic_net(W1, W2, beta=0.3)
        loss = r2 + r1 + en
        output r2, r1, en
        minimize loss
    """)
    rng = np.random.default_rng(6)
    W1, W2 = rng.standard_normal((3, 4)), rng.standard_normal(4)
    out, grads = m.value_and_grad({}, W1=W1, W2=W2)
    np.testing.assert_allclose(out["r2"], (W1 ** 2).sum() + (W2 ** 2).sum(), rtol=1e-12)
    np.testing.assert_allclose(out["r1"], np.abs(W1).sum(), rtol=1e-12)
    np.testing.assert_allclose(out["en"], (0.3 * W1 ** 2 + np.abs(W1)).sum() + (0.3 * W2 ** 2 + np.abs(W2)).sum(),
                               rtol=1e-12)
    np.testing.assert_allclose(grads["W1"], 2 * W1 + np.sign(W1) + 0.6 * W1 + np.sign(W1), atol=1e-12)
    np.testing.assert_allclose(grads["W2"], 2 * W2 + 0.6 * W2 + np.sign(W2), atol=1e-12)


def test_cross_entropy_dispatches_on_the_targets_dtype(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", """
        input s: float[N, 3]
        input y: int[N]
        input t: float[N, 3]
        a = softmax_cross_entropy(s, y)
        b = softmax_cross_entropy(s, t)
        output a, b
    """)
    model = elaborate_file(path)
    ops = {name: model.graph[n].op for name, n in model.outputs.items()}
    assert ops == {"a": "softmax_cross_entropy", "b": "softmax_cross_entropy_probs"}


# ---- indexing, slicing, concatenation --------------------------------------------------

INDEXING = {
    "x[1]": lambda x, i, j: x[1],
    "x[-1]": lambda x, i, j: x[-1],
    "x[:, 0:2]": lambda x, i, j: x[:, 0:2],
    "x[:, -2:]": lambda x, i, j: x[:, -2:],
    "x[1:3, 2]": lambda x, i, j: x[1:3, 2],
    "x[:, :, 1]": lambda x, i, j: x[:, :, 1],
    "x[2, 1, 0]": lambda x, i, j: x[2, 1, 0],
    "x[0:5]": lambda x, i, j: x[0:5],
    "x[i]": lambda x, i, j: x[i],
    "x[:, j]": lambda x, i, j: x[:, j],
    "x[i, j]": lambda x, i, j: x[i, j],
    "x[0, j]": lambda x, i, j: x[0, j],
    "x[i, :, 1]": lambda x, i, j: x[i, :, 1],
    "x[:, j, 1:3]": lambda x, i, j: x[:, j, 1:3],
    "x[i, 1:3, j]": lambda x, i, j: x[i, 1:3, j],
}


@pytest.mark.parametrize("subscript", list(INDEXING))
def test_indexing_is_numpys(subscript: str, build) -> None:
    shape = INDEXING[subscript](np.zeros((5, 4, 3)), np.zeros(6, int), np.zeros(6, int)).shape
    m = build(f"""
        input x: float[5, 4, 3]
        input i: int[6]
        input j: int[6]
        input w: float{list(shape) if shape else ""}
        v = {subscript}
        loss = sum(v * w)
        output v
        minimize loss
    """)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 4, 3))
    i, j = np.array([0, 4, 4, 2, 0, 4]), np.array([2, 0, 1, 1, 2, 2])   # repeated indices on purpose
    want = INDEXING[subscript](x, i, j)
    w = rng.uniform(0.5, 1.5, want.shape)
    out, grads = m.value_and_grad({}, x=x, i=i, j=j, w=w)
    np.testing.assert_array_equal(out["v"], want)
    expected = np.zeros_like(x)
    np.add.at(expected, _numpy_key(subscript, i, j), w)   # repeated indices accumulate
    np.testing.assert_allclose(grads["x"], expected, atol=1e-14)
    assert_grads_match(m, {}, {"x": x, "i": i, "j": j, "w": w}, names=["x"])


def _numpy_key(subscript: str, i: np.ndarray, j: np.ndarray):
    return eval("np.s_" + subscript[1:], {"np": np, "i": i, "j": j})  # our own table above


def test_slices_are_views_that_never_overwrite_their_base(build) -> None:
    """A gradient computed in place must not land in the sliced input (or a live activation)."""
    m = build("input X: float[N, 6]\nfirst = X[:, 0:3]\nd = l2(X, first)\nminimize d\n")
    X = np.random.default_rng(8).standard_normal((4, 6))
    before = X.copy()
    _, grads = m.value_and_grad({}, X=X)
    np.testing.assert_array_equal(X, before)
    expected = 2 * X
    expected[:, 0:3] += 2 * X[:, 0:3]
    np.testing.assert_allclose(grads["X"], expected, rtol=1e-12)


@pytest.mark.parametrize("subscript, of", [("X[:, k]", "X"), ("X[k]", "X"), ("W[:, k]", "W"), ("X[0, k]", "X"),
                                           ("X[:, argmax(v)]", "X")])
def test_a_gather_by_int_scalars_never_writes_into_its_operand(subscript: str, of: str, build) -> None:
    """0-d index tensors reach numpy as integers, which index basically (a view): the
    gathered entries are computed on in place, so they must be a copy, or the caller's
    input or param changes under them and each call's gradient doubles the last."""
    m = build(f"""
        input X: float[N, 5]
        input k: int = 2
        input v: float[5]
        param W: [4, 5] = normal(1.0)
        col = {subscript}
        h = exp(col) * 3
        loss = sum(col ** 2) + sum(h)
        output h
        minimize loss
    """)
    rng = np.random.default_rng(9)
    params = m.init_params(0)
    inputs = {"X": rng.standard_normal((3, 5)), "v": np.array([0.0, 0.0, 1.0, 0.0, 0.0])}
    before = {name: value.copy() for name, value in (*params.items(), *inputs.items())}
    forward = m.forward(params, **inputs)
    first = m.value_and_grad(params, **inputs)
    second = m.value_and_grad(params, **inputs)
    for name, value in (*params.items(), *inputs.items()):
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    np.testing.assert_array_equal(forward["h"], first[0]["h"])
    np.testing.assert_array_equal(first[1][of], second[1][of])
    assert_grads_match(m, params, inputs, names=[of])


def test_the_lectures_correct_class_gather_bounds_its_labels(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", "input s: float[N, 7]\ninput y: int[N]\nc = s[arange(N), y]\noutput c\n")
    assert elaborate_file(path).int_bounds == {"y": 7}
    m = nncompile.compile_and_load(path)
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        m.forward({}, s=np.zeros((2, 7)), y=np.array([0, 7]))


def test_full_slices_are_the_value_itself(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", "input x: float[3, 4]\na = x[:]\nb = x[:, :]\noutput a, b\n")
    model = elaborate_file(path)
    assert model.outputs["a"] == model.outputs["b"] == model.inputs["x"]


@pytest.mark.parametrize(("line", "message"), [
    ("v = x[0, 1, 2]", "too many subscripts: the value has shape [N, 4] (2 axes), but 3 are given"),
    ("v = x[:, 1.5]", "an index must be a whole number (or an int tensor), not 1.5"),
    ("v = x[:, 3:1]", "the slice 3:1 of axis 1 (size 4) is empty"),
    ("v = x[0:2]", "cannot slice axis 0 of [N, 4] with fixed bounds: its size N is only known when the module "
                   "is called; use ':'"),
    ("v = x[:, 4]", "index 4 is out of range for axis 1 of [N, 4]"),
    ("v = x[:, t]", "indices must be integers, but 't' is float[N]"),
    ("v = x[y, arange(3)]", "the index tensors do not broadcast together: dims N and 3 differ (axis -1)"),
    ("v = concat(x, t, axis=1)", "concat(axis=1): [N] does not match [N, 4] on the other axes"),
    ("v = concat(x, x, axis=0)", "concat() along axis 0 needs fixed sizes there, but [N, 4] has the symbolic dim N "
                                 "(the joined size would be a sum, which no dim is); join along a fixed axis, or "
                                 "declare this one with a number"),
    ("v = concat(x, y, axis=1)", "concat() cannot join float and int tensors"),
    ("v = concat(x, x, 1)", "concat() takes any number of tensors, so give axis by keyword, like axis=..."),
    ("v = l2()", "l2() needs at least one tensor argument"),
    ("v = maxout(x, k=3)", "maxout(x, k=3) needs x's last dim to be a multiple of k, but x is [N, 4]"),
    ("v = maxout(x)", "maxout() needs k, the number of linear pieces, as a positive integer, not None"),
    ("v = leaky_relu(x, alpha=true)", "leaky_relu() needs a number for alpha, not True"),
    ("v = sum(x, axis=N)", "an axis must be a whole number, not 'N'"),
    ("v = softmax_cross_entropy(x, t)", "softmax_cross_entropy needs integer class labels, but 't' is float[N]"),
    ("v = softmax_cross_entropy(x, z)", "softmax_cross_entropy: probability targets [N, 3] do not match scores [N, 4]"),
    ("v = svm_loss(x, t)", "svm_loss needs integer class labels, but 't' is float[N]"),
    ("v = svm_loss(x, 2)", "svm_loss needs integer class labels, but the labels are float[]; pass an int input"),
    ("v = sigmoid_cross_entropy(x, z)", "sigmoid_cross_entropy: targets [N, 3] do not match [N, 4]"),
    ("v = arange(2.5)", "arange() needs a positive whole number or a dim like N, not 2.5"),
    ("v = hardtanh(x, min_val=1, max_val=0)", "hardtanh() needs max_val >= 1, not 0"),
    ("v = hardtanh(x, max_val=t)", "'t' is a tensor, but a constant is needed here"),
])
def test_errors_point_at_the_users_text(line: str, message: str, tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", f"input x: float[N, 4]\ninput t: float[N]\ninput y: int[N]\n"
                                      f"input z: float[N, 3]\n{line}\noutput v\n")
    with pytest.raises(NNError) as info:
        elaborate_file(path)
    assert message in info.value.message
    assert info.value.loc is not None and info.value.loc.line == 5


def test_composites_expand_into_their_parts_at_the_users_line(tmp_path: Path) -> None:
    """silu is x * sigmoid(x) in the graph, every part on the line that called it; a composite
    does not make the module's train and eval modes differ (as dropout does)."""
    path = write_nn(tmp_path, "m.nn", "input x: float[N, 4]\nh = silu(x)\noutput h\n")
    model = elaborate_file(path)
    ops = {model.graph[n].op: model.graph[n].loc.line for n in model.graph.nodes() if model.graph[n].op != "input"}
    assert ops == {"sigmoid": 2, "mul": 2}
    assert not model.mode_dependent


def test_a_composite_is_reported_by_its_own_name_at_the_operand(tmp_path: Path) -> None:
    """silu(y) of an int tensor says silu needs floats, pointing at y, not at the sigmoid inside."""
    path = write_nn(tmp_path, "m.nn", "input y: int[3]\nh = silu(y)\noutput h\n")
    with pytest.raises(NNError) as err:
        elaborate_file(path)
    assert err.value.loc.line == 2 and err.value.loc.col == 10
    assert "silu needs floats, but 'y' is int[3]" in err.value.message


def test_a_composite_cannot_declare_what_only_its_own_nodes_would_read() -> None:
    """Its parts carry their kinks, labels, rewrites and rules; one declared on the composite
    would never be read, so declaring it is an error, not a silent no-op."""
    from nncompile.ops import composite

    with pytest.raises(TypeError, match="label, vjp would never be read"):
        composite("twice", 1, lambda x: x + x, label="2x", vjp=lambda g, out, x: 2.0 * g)


def test_hardtanh_follows_pytorchs_rule_at_its_kinks(build) -> None:
    """The gradient is 1 strictly inside [min_val, max_val] and 0 at the ends, as
    torch.nn.functional.hardtanh's is."""
    m = build("input x: float[6]\nh = hardtanh(x, min_val=-1.0, max_val=2.0)\nloss = sum(h)\nminimize loss\n")
    x = np.array([-3.0, -1.0, 0.0, 1.5, 2.0, 5.0])
    outputs, grads = m.value_and_grad({}, x=x)
    np.testing.assert_array_equal(outputs["loss"], np.sum(np.clip(x, -1.0, 2.0)))
    np.testing.assert_array_equal(grads["x"], [0.0, 0.0, 1.0, 1.0, 0.0, 0.0])


def test_hardtanh_returns_x_itself_inside_its_range(tmp_path: Path) -> None:
    """Clipping is exact: a value inside the range comes back bit for bit, in float32 too
    (built from relus shifted to the ends, hardtanh(1e-7) would round to 1.19e-7)."""
    path = write_nn(tmp_path, "m.nn", "input x: float[4]\nh = hardtanh(x)\noutput h\n")
    m = load_module(compile_file(path, dtype="float32"))
    x = np.array([1e-7, -3e-8, 0.999, -1e-30], dtype=np.float32)
    np.testing.assert_array_equal(m.forward({}, x=x)["h"], x)


def test_hardswish_follows_pytorchs_rule_at_its_kinks(build) -> None:
    """torch.nn.functional.hardswish's gradient is x/3 + 1/2 strictly between -3 and 3, and
    the outer pieces' slopes at the kinks: 0 at -3 and 1 at 3."""
    m = build("input x: float[6]\nh = hardswish(x)\nloss = sum(h)\nminimize loss\n")
    x = np.array([-4.0, -3.0, 0.0, 1.5, 3.0, 4.0])
    outputs, grads = m.value_and_grad({}, x=x)
    np.testing.assert_allclose(outputs["loss"], np.sum(x * np.clip(x + 3, 0, 6) / 6), rtol=1e-15)
    np.testing.assert_allclose(grads["x"], [0.0, 0.0, 0.5, 1.0, 1.0, 1.0], rtol=1e-15)


def test_concat_joins_and_splits_the_gradient(build) -> None:
    m = build("""
        input a: float[N, 2]
        input b: float[N, 3]
        input c: float[N, 1]
        input w: float[N, 6]
        h = concat(a, b, c, axis=-1)
        v = concat(a, a, axis=1)
        loss = sum(h * w) + sum(v * v)
        output h
        minimize loss
    """)
    rng = np.random.default_rng(9)
    vals = {"a": rng.standard_normal((4, 2)), "b": rng.standard_normal((4, 3)), "c": rng.standard_normal((4, 1)),
            "w": rng.standard_normal((4, 6))}
    out, grads = m.value_and_grad({}, **vals)
    np.testing.assert_array_equal(out["h"], np.concatenate([vals["a"], vals["b"], vals["c"]], axis=1))
    np.testing.assert_allclose(grads["a"], vals["w"][:, :2] + 4 * vals["a"], atol=1e-14)
    np.testing.assert_allclose(grads["c"], vals["w"][:, 5:], atol=1e-14)
    assert_grads_match(m, {}, vals)


def test_symbolic_dims_are_numbers_and_attributes(build) -> None:
    """N, the batch size, reads as a number in expressions and as a dim in attributes; so does
    a const naming it."""
    m = build("""
        input x: float[N, 6]
        const M = N
        per_example = sum(x) / N
        per_row = sum(x) / M
        grid = reshape(x, [N, 2, 3])
        rows = arange(N)
        output per_example, per_row, grid, rows
    """)
    x = np.arange(24.0).reshape(4, 6)
    out = m.forward({}, x=x)
    np.testing.assert_allclose(out["per_example"], x.sum() / 4)
    np.testing.assert_allclose(out["per_row"], x.sum() / 4)
    assert out["grid"].shape == (4, 2, 3) and out["rows"].tolist() == [0, 1, 2, 3]


# ---- the GPU backend: every new elementwise op's C scalar form --------------------------

def test_scalar_forms_compute_what_the_numpy_chains_compute(tmp_path: Path, monkeypatch) -> None:
    """Fused into CuPy kernels (run here on the numpy stand-in), the new activations and their
    gradients give the numpy backend's numbers."""
    path = write_nn(tmp_path, "acts.nn", """
        input x: float[N, 8]
        input W: float[8, 8]
        h = x @ W
        a = leaky_relu(h * 2, alpha=0.2) + elu(h + 1, alpha=1.5) + softplus(h * 3) + gelu(h - 1)
        loss = sum(a * a)
        minimize loss
    """)
    source = nncompile.compile_file(path, dtype="float64", backend="cupy")
    assert "expm1(" in source and "log1p(" in source     # elu and softplus were fused into kernels
    sys.path.insert(0, str(Path(__file__).parent))
    import fake_cupy
    sys.path.pop(0)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    gpu = load_module(source, "acts_gpu")
    cpu = nncompile.compile_and_load(path, dtype="float64")
    rng = np.random.default_rng(10)
    inputs = {"x": rng.standard_normal((5, 8)), "W": rng.standard_normal((8, 8))}
    (want, want_g), (got, got_g) = cpu.value_and_grad({}, **inputs), gpu.value_and_grad({}, **inputs)
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-12)
    for key in want_g:
        np.testing.assert_allclose(got_g[key], want_g[key], rtol=1e-10, atol=1e-12)


def test_every_new_op_is_registered_with_docs() -> None:
    from nncompile.ops import REGISTRY
    for name in ("leaky_relu", "elu", "softplus", "gelu", "maxout", "softmax", "log_softmax", "svm_loss",
                 "sigmoid_cross_entropy", "mse", "l1", "l2", "elastic_net", "concat", "arange",
                 "softmax_cross_entropy"):
        opdef = REGISTRY[name]
        assert opdef.public and opdef.doc and opdef.example, name
    for name in ("leaky_relu", "elu", "softplus", "gelu"):
        assert REGISTRY[name].scalar, f"{name} has no C form, so the GPU backend cannot fuse it"
