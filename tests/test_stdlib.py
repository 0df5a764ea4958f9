"""The standard library (nncompile/stdlib/nn.nn, ``import nn``): its layers compute what
their comments say, batchnorm trains on batch statistics and evaluates on running ones,
dropout is reproducible with a seed and absent in evaluation, and all of it is
gradient-checked in float64."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import nncompile
from nncompile.elaborate import STDLIB, elaborate_file

from conftest import numeric_grad, write_nn

LAYERS = re.findall(r"^layer (\w+)\(", (STDLIB / "nn.nn").read_text(), flags=re.M)


@pytest.fixture
def build(tmp_path: Path):
    counter = iter(range(10_000))

    def compile_(source: str, dtype: str = "float64"):
        return nncompile.compile_and_load(write_nn(tmp_path, f"m{next(counter)}.nn", source), dtype=dtype)
    return compile_


def _close(a, b, **kw) -> None:
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), **{"rtol": 1e-10, "atol": 1e-12, **kw})


def test_the_library_ships_the_layers_the_issue_asks_for() -> None:
    assert {"linear", "affine", "dense", "mlp", "batchnorm", "dense_bn", "dense_dropout", "maxout_linear",
            "conv", "conv_bn_relu", "batchnorm2d", "residual"} <= \
        set(LAYERS)
    assert (STDLIB / "nn.nn").is_file()


def test_linear_affine_dense_and_maxout(build) -> None:
    m = build("""
        import nn
        input x: float[N, 5]
        a = linear(x, out=3)
        b = affine(x, out=3)
        c = dense(x, out=3)
        d = maxout_linear(x, out=3, k=2)
        output a, b, c, d
    """)
    p = m.init_params(0)
    x = np.random.default_rng(0).standard_normal((4, 5))
    p["c.b"] = np.linspace(-1, 1, 3)
    out = m.forward(p, x=x)
    _close(out["a"], x @ p["a.W"] + p["a.b"])
    _close(out["b"], x @ p["b.W"] + p["b.b"])
    _close(out["c"], np.maximum(x @ p["c.W"] + p["c.b"], 0))
    pieces = x @ p["d.W"] + p["d.b"]
    _close(out["d"], np.maximum(pieces[:, :3], pieces[:, 3:]))       # max(W1 x + b1, W2 x + b2)
    assert p["d.W"].shape == (5, 6)
    assert abs(p["b.W"].std() / np.sqrt(2 / 5) - 1) < 0.6          # He-initialised (15 draws)


def test_mlp_and_repeat_unroll_with_their_own_params(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", """
        import nn
        input x: float[N, 5]
        h = repeat 3 dense(x, out=5)
        s = mlp(h, hidden=7, out=2, depth=2)
        output s
    """)
    model = elaborate_file(path)
    G = model.graph
    assert {k: G[n].shape for k, n in model.params.items()} == {
        "h.1.W": (5, 5), "h.1.b": (5,), "h.2.W": (5, 5), "h.2.b": (5,), "h.3.W": (5, 5), "h.3.b": (5,),
        "s.h.1.W": (5, 7), "s.h.1.b": (7,), "s.h.2.W": (7, 7), "s.h.2.b": (7,),
        "s.scores.W": (7, 2), "s.scores.b": (2,)}
    m = nncompile.compile_and_load(path, dtype="float64")
    p = m.init_params(0)
    x = np.random.default_rng(1).standard_normal((3, 5))
    h = x
    for i in (1, 2, 3):
        h = np.maximum(h @ p[f"h.{i}.W"] + p[f"h.{i}.b"], 0)
    for i in (1, 2):
        h = np.maximum(h @ p[f"s.h.{i}.W"] + p[f"s.h.{i}.b"], 0)
    _close(m.forward(p, x=x)["s"], h @ p["s.scores.W"] + p["s.scores.b"])


def test_a_users_consts_do_not_capture_the_librarys_shape_names(build) -> None:
    """The library's patterns use lower-case names, so a model's `const D = 32` (or K, B, H)
    leaves them free to bind to the argument's dims."""
    m = build("""
        import nn
        const D = 32, K = 7, B = 2, H = 9
        input x: float[N, 5]
        h = batchnorm(dense(x, out=H) as fc, momentum=0.5) as bn
        output h
    """)
    assert m.OUTPUTS["h"][0] == ("N", 9)


# ---- batchnorm -------------------------------------------------------------------------

BN = """
    import nn
    input x: float[N, 4]
    input w: float[N, 4]
    h = batchnorm(x, momentum=0.8, eps=1e-5) as bn
    output h
    train {
        loss = sum(h * w)
        minimize loss
    }
"""


def test_batchnorm_trains_on_batch_statistics_and_updates_its_running_ones(build) -> None:
    m = build(BN)
    assert set(m.STATE) == {"bn.running_mean", "bn.running_var"}
    params, state = m.init_params(0), m.init_state()
    _close(state["bn.running_mean"], np.zeros(4))
    _close(state["bn.running_var"], np.ones(4))
    params["bn.gamma"], params["bn.beta"] = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.0, -1.0, 1.0, 0.5])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 4)) * 3 + 5
    out, _, new_state = m.value_and_grad(params, state, None, x=x, w=np.ones((8, 4)))
    mu, var = x.mean(axis=0), x.var(axis=0)
    _close(out["h"], params["bn.gamma"] * (x - mu) / np.sqrt(var + 1e-5) + params["bn.beta"])
    _close(new_state["bn.running_mean"], 0.8 * 0 + 0.2 * mu)
    _close(new_state["bn.running_var"], 0.8 * 1 + 0.2 * var)
    _close(state["bn.running_mean"], np.zeros(4))          # the caller's state is not changed in place


def test_batchnorm_evaluates_with_the_running_statistics(build) -> None:
    m = build(BN)
    params = m.init_params(0)
    params["bn.gamma"], params["bn.beta"] = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.0, -1.0, 1.0, 0.5])
    state = {"bn.running_mean": np.array([1.0, -2.0, 0.0, 4.0]), "bn.running_var": np.array([4.0, 1.0, 0.25, 9.0])}
    x = np.random.default_rng(3).standard_normal((6, 4))
    out = m.forward(params, state, x=x, w=np.zeros((6, 4)))
    want = params["bn.gamma"] * (x - state["bn.running_mean"]) / np.sqrt(state["bn.running_var"] + 1e-5) \
        + params["bn.beta"]
    _close(out["h"], want)
    # deterministic, and each example's answer does not depend on the rest of its batch
    _close(m.forward(params, state, x=x, w=np.zeros((6, 4)))["h"], out["h"])
    _close(m.forward(params, state, x=x[:1], w=np.zeros((1, 4)))["h"], out["h"][:1])


def test_batchnorm_gradients_in_training_mode(build) -> None:
    """With respect to its input, gamma and beta, against central differences (float64)."""
    m = build(BN)
    rng = np.random.default_rng(4)
    params = {"bn.gamma": rng.uniform(0.5, 2, 4), "bn.beta": rng.standard_normal(4)}
    state = m.init_state()
    x, w = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    _, grads, _ = m.value_and_grad(params, state, None, x=x, w=w)

    def loss() -> float:
        return float(m.value_and_grad(params, state, None, x=x, w=w)[0]["loss"])
    for name, value in (("x", x), ("bn.gamma", params["bn.gamma"]), ("bn.beta", params["bn.beta"])):
        np.testing.assert_allclose(grads[name], numeric_grad(loss, value), rtol=1e-6, atol=1e-8, err_msg=name)


def test_dense_bn_stacks_and_its_running_stats_converge(build) -> None:
    m = build("""
        import nn
        input x: float[N, 3]
        h = dense_bn(x, out=3, momentum=0.5) as fc
        output h
        train {
            loss = sum(h)
            minimize loss
        }
    """)
    params, state = m.init_params(0), m.init_state()
    x = np.random.default_rng(5).standard_normal((64, 3)) + 2
    for _ in range(40):   # the same batch again and again: the running stats become its stats
        _, _, state = m.value_and_grad(params, state, None, x=x)
    pre = x @ params["fc.W"]
    _close(state["fc.bn.running_mean"], pre.mean(axis=0), rtol=1e-9)
    _close(state["fc.bn.running_var"], pre.var(axis=0), rtol=1e-9)
    train_out = m.value_and_grad(params, state, None, x=x)[0]["h"]
    _close(m.forward(params, state, x=x)["h"], train_out, rtol=1e-4, atol=1e-4)


# ---- dropout ---------------------------------------------------------------------------

DROPOUT = """
    import nn
    input x: float[N, 50]
    input w: float[N, 40]
    h = dense_dropout(x, out=40, p=0.4) as fc
    output h
    train {
        loss = sum(h * w)
        minimize loss
    }
"""


def test_dropout_is_reproducible_with_a_seed(build) -> None:
    m = build(DROPOUT)
    params = m.init_params(0)
    rng = np.random.default_rng(6)
    x, w = rng.standard_normal((30, 50)), rng.standard_normal((30, 40))
    a = m.value_and_grad(params, None, np.random.default_rng(7), x=x, w=w)
    b = m.value_and_grad(params, None, np.random.default_rng(7), x=x, w=w)
    c = m.value_and_grad(params, None, np.random.default_rng(8), x=x, w=w)
    np.testing.assert_array_equal(a[0]["h"], b[0]["h"])
    np.testing.assert_array_equal(a[1]["fc.W"], b[1]["fc.W"])
    assert not np.array_equal(a[0]["h"], c[0]["h"])


def test_dropout_is_inverted_and_absent_in_evaluation(build) -> None:
    m = build(DROPOUT)
    params = m.init_params(0)
    params["fc.b"] = np.full(40, 3.0)      # every unit active, so dropped units are exactly the zeros
    x = np.random.default_rng(9).standard_normal((200, 50)) * 0.01
    full = np.maximum(x @ params["fc.W"] + params["fc.b"], 0)
    evaluated = m.forward(params, x=x, w=np.zeros((200, 40)))["h"]
    _close(evaluated, full)
    _close(m.forward(params, x=x, w=np.zeros((200, 40)))["h"], evaluated)   # deterministic
    trained = m.value_and_grad(params, None, np.random.default_rng(10), x=x, w=np.ones((200, 40)))[0]["h"]
    kept = trained != 0
    assert abs(kept.mean() - 0.6) < 0.02                                   # keep probability 1 - p
    _close(trained[kept], full[kept] / 0.6)                                 # kept units scaled by 1 / (1 - p)


def test_dropout_gradients_with_a_fixed_mask(build) -> None:
    m = build(DROPOUT.replace("[N, 50]", "[N, 6]").replace("[N, 40]", "[N, 5]").replace("out=40", "out=5"))
    params = m.init_params(1)
    rng = np.random.default_rng(11)
    params["fc.b"] = rng.uniform(0.5, 1, 5)
    x, w = rng.standard_normal((4, 6)), rng.standard_normal((4, 5))
    _, grads = m.value_and_grad(params, None, np.random.default_rng(12), x=x, w=w)

    def loss() -> float:   # the same seed every time: the same mask
        return float(m.value_and_grad(params, None, np.random.default_rng(12), x=x, w=w)[0]["loss"])
    for name, value in (("x", x), ("fc.W", params["fc.W"]), ("fc.b", params["fc.b"])):
        np.testing.assert_allclose(grads[name], numeric_grad(loss, value), rtol=1e-6, atol=1e-8, err_msg=name)


# ---- the conv net layers ----------------------------------------------------------------

CONV_NET = """
    import nn
    input x: float[N, 2, 6, 6]
    input w: float[N, 2, 6, 6]
    a = conv(x, out=3) as c1
    b = conv(x, out=4, k=2, stride=2, padding=0) as c2
    h = batchnorm2d(x, momentum=0.8) as bn
    r = residual(x) as res
    s = conv_bn_relu(x, out=3, k=2, stride=2, padding=0) as cbr
    output a, b, h, r, s
    loss = sum(h * w) + sum(r * w)
    minimize loss
"""


def _conv2d(x: np.ndarray, W: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The definition, one output pixel at a time: sum over c, p, q of x[c, i*s + p, j*s + q] W[f, c, p, q]."""
    x = np.pad(x, ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    f, _, kh, kw = W.shape
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    out = np.zeros((len(x), f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = np.einsum("ncpq,fcpq->nf", x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw], W)
    return out


def _bn2d(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mu, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    return gamma[:, None, None] * (x - mu) / np.sqrt(var + 1e-5) + beta[:, None, None]


def test_the_conv_layers_compute_what_their_comments_say(build) -> None:
    m = build(CONV_NET)
    rng = np.random.default_rng(5)
    p, state = m.init_params(0), m.init_state()
    p = {k: v + rng.uniform(0.1, 0.5, v.shape) if k.endswith((".b", "beta")) else v for k, v in p.items()}
    x = rng.standard_normal((3, 2, 6, 6))
    out, _, new_state = m.value_and_grad(p, state, None, x=x, w=np.ones_like(x))
    _close(out["a"], _conv2d(x, p["c1.W"], padding=1) + p["c1.b"][:, None, None])
    _close(out["b"], _conv2d(x, p["c2.W"], stride=2) + p["c2.b"][:, None, None])
    assert out["a"].shape == (3, 3, 6, 6) and out["b"].shape == (3, 4, 3, 3)
    _close(out["h"], _bn2d(x, p["bn.gamma"], p["bn.beta"]))
    _close(new_state["bn.running_mean"], 0.2 * x.mean(axis=(0, 2, 3)))
    _close(new_state["bn.running_var"], 0.8 + 0.2 * x.var(axis=(0, 2, 3)))
    _close(out["s"], np.maximum(_bn2d(_conv2d(x, p["cbr.W"], 2, 0), p["cbr.bn.gamma"], p["cbr.bn.beta"]), 0))
    h = np.maximum(_bn2d(_conv2d(x, p["res.conv1.W"], padding=1), p["res.conv1.bn.gamma"], p["res.conv1.bn.beta"]), 0)
    _close(out["r"], np.maximum(x + _bn2d(_conv2d(h, p["res.W"], padding=1), p["res.bn2.gamma"], p["res.bn2.beta"]), 0))
    assert abs(p["c1.W"].std() / np.sqrt(2 / (2 * 9)) - 1) < 0.3   # He, fan-in channels * k * k


def test_batchnorm2d_evaluates_with_the_running_statistics_per_channel(build) -> None:
    m = build(CONV_NET)
    p, state = m.init_params(0), m.init_state()
    state["bn.running_mean"], state["bn.running_var"] = np.array([1.0, -2.0]), np.array([4.0, 0.25])
    x = np.random.default_rng(6).standard_normal((2, 2, 6, 6))
    out = m.forward(p, state, x=x, w=x)
    _close(out["h"], p["bn.gamma"][:, None, None] * (x - state["bn.running_mean"][:, None, None])
           / np.sqrt(state["bn.running_var"][:, None, None] + 1e-5) + p["bn.beta"][:, None, None])
    _close(m.forward(p, state, x=x[:1], w=x[:1])["h"], out["h"][:1])


def test_the_conv_layers_gradients_in_training_mode(build) -> None:
    m = build(CONV_NET.replace("[N, 2, 6, 6]", "[N, 2, 4, 4]"))
    rng = np.random.default_rng(7)
    params = {k: v + rng.uniform(0.1, 0.3, v.shape) for k, v in m.init_params(1).items()}
    state = m.init_state()
    x, w = rng.standard_normal((2, 2, 4, 4)), rng.standard_normal((2, 2, 4, 4))
    _, grads, _ = m.value_and_grad(params, state, None, x=x, w=w)

    def loss() -> float:
        return float(m.value_and_grad(params, state, None, x=x, w=w)[0]["loss"])
    for name, value in (("x", x), *((k, params[k]) for k in ("bn.gamma", "res.W", "res.conv1.W", "res.bn2.beta"))):
        np.testing.assert_allclose(grads[name], numeric_grad(loss, value), rtol=1e-6, atol=1e-8, err_msg=name)
