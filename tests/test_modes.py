"""Train versus eval mode: ``train { }`` / ``eval { }`` blocks, ``state`` and ``update``,
and dropout. forward() runs eval mode; value_and_grad() runs train mode and returns the
new state; random masks come only from the generator the caller passes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nncompile
from nncompile.errors import NNError
from nncompile.gradcheck import check_gradients

BATCHNORM_NET = """
const D = 4
input X: float[N, D]
input y: int[N]

layer batchnorm(x: [B, K], momentum: float = 0.9, eps: float = 1e-5) -> [B, K] {
    param gamma: [K] = ones()
    param beta: [K] = zeros()
    state running_mean: [K] = zeros()
    state running_var: [K] = ones()
    train {
        mu = mean(x, axis=0)
        var = mean((x - mu) ** 2, axis=0)
        update running_mean = momentum * running_mean + (1 - momentum) * mu
        update running_var = momentum * running_var + (1 - momentum) * var
    }
    eval {
        mu = running_mean
        var = running_var
    }
    return gamma * (x - mu) / sqrt(var + eps) + beta
}

h = batchnorm(X) as bn
d = dropout(relu(h), p=0.5)
param W: [D, 3] = normal(std=1.0)
scores = d @ W
output scores
train {
    loss = softmax_cross_entropy(scores, y)
    minimize loss
}
"""


@pytest.fixture
def net(tmp_path: Path):
    path = tmp_path / "bn.nn"
    path.write_text(BATCHNORM_NET)
    return nncompile.compile_and_load(path, dtype="float64")


def _data(n: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"X": 3 + 2 * rng.standard_normal((n, 4)), "y": rng.integers(0, 3, n)}


def test_state_is_declared_initialised_and_returned_updated(net) -> None:
    assert set(net.STATE) == {"bn.running_mean", "bn.running_var"}
    state = net.init_state()
    np.testing.assert_array_equal(state["bn.running_mean"], np.zeros(4))
    np.testing.assert_array_equal(state["bn.running_var"], np.ones(4))
    data = _data()
    outputs, grads, new_state = net.value_and_grad(net.init_params(0), state, np.random.default_rng(0), **data)
    assert set(grads) >= {"bn.gamma", "bn.beta", "W"} and "loss" in outputs
    batch_mean, batch_var = data["X"].mean(axis=0), data["X"].var(axis=0)
    np.testing.assert_allclose(new_state["bn.running_mean"], 0.9 * 0 + 0.1 * batch_mean, rtol=1e-12)
    np.testing.assert_allclose(new_state["bn.running_var"], 0.9 * 1 + 0.1 * batch_var, rtol=1e-12)
    np.testing.assert_array_equal(state["bn.running_mean"], np.zeros(4)), "the caller's state is not mutated"


def test_eval_mode_uses_the_running_statistics_and_is_deterministic(net) -> None:
    params = net.init_params(0)
    data = _data()
    state = {"bn.running_mean": data["X"].mean(axis=0), "bn.running_var": data["X"].var(axis=0)}
    first = net.forward(params, state, **data)
    second = net.forward(params, state, **data)
    np.testing.assert_array_equal(first["scores"], second["scores"])
    assert "loss" not in first, "the loss is only computed in training"
    xhat = (data["X"] - state["bn.running_mean"]) / np.sqrt(state["bn.running_var"] + 1e-5)
    expected = np.maximum(xhat * params["bn.gamma"] + params["bn.beta"], 0) @ params["W"]  # no dropout in eval
    np.testing.assert_allclose(first["scores"], expected, rtol=1e-12)


def test_training_mode_with_the_same_seed_is_reproducible(net) -> None:
    params, data = net.init_params(0), _data()
    a = net.value_and_grad(params, None, np.random.default_rng(7), **data)
    b = net.value_and_grad(params, None, np.random.default_rng(7), **data)
    c = net.value_and_grad(params, None, np.random.default_rng(8), **data)
    np.testing.assert_array_equal(a[0]["scores"], b[0]["scores"])
    np.testing.assert_array_equal(a[1]["W"], b[1]["W"])
    assert not np.array_equal(a[0]["scores"], c[0]["scores"]), "another seed draws another mask"
    seeded = net.value_and_grad(params, None, 7, **data)   # a seed stands for the generator it seeds
    np.testing.assert_array_equal(seeded[0]["scores"], a[0]["scores"])
    v = {name: a[1][name] for name in params}
    np.testing.assert_array_equal(net.hvp(params, v, None, 7, **data)["W"],
                                  net.hvp(params, v, None, np.random.default_rng(7), **data)["W"])


@pytest.mark.parametrize("rng, named", [("abc", "str"), (1.5, "float"), ({}, "dict")])
def test_an_rng_that_is_no_generator_or_seed_is_refused_by_name(net, rng, named: str) -> None:
    with pytest.raises(TypeError, match=rf"rng must be a numpy random Generator .*, an int seed or None, not {named}"):
        net.value_and_grad(net.init_params(0), None, rng, **_data())


def test_a_legacy_random_state_draws_the_masks_its_bit_generator_gives(net) -> None:
    params, data = net.init_params(0), _data()
    legacy = net.value_and_grad(params, None, np.random.RandomState(3), **data)[0]["scores"]
    same = net.value_and_grad(params, None, np.random.Generator(np.random.RandomState(3)._bit_generator), **data)
    np.testing.assert_array_equal(legacy, same[0]["scores"])


def test_batchnorm_and_dropout_gradients_match_finite_differences(net) -> None:
    """Batch norm in training mode w.r.t. its input, gamma and beta; dropout with a fixed mask."""
    results = check_gradients(net, net.init_params(1), _data(), seed=3)
    assert {r.name for r in results} >= {"X", "bn.gamma", "bn.beta", "W"}
    for r in results:
        assert r.ok, r


def test_inverted_dropout_keeps_the_expected_value(tmp_path: Path) -> None:
    path = tmp_path / "drop.nn"
    path.write_text("input x: float[N, M]\nd = dropout(x, p=0.25)\noutput d\nloss = sum(d)\nminimize loss\n")
    module = nncompile.compile_and_load(path, dtype="float64")
    x = np.ones((200, 500))
    out, grads = module.value_and_grad({}, None, np.random.default_rng(0), x=x)
    kept = out["d"] != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(out["d"][kept], 1 / 0.75)
    np.testing.assert_array_equal(grads["x"], out["d"]), "the gradient flows through the same mask"
    np.testing.assert_array_equal(module.forward({}, x=x)["d"], x), "eval mode is the identity"


@pytest.mark.parametrize("source, message", [
    ("input x = 1\nupdate x = 2\noutput x\n", "belongs in a 'train { }' block"),
    ("input x = 1\ntrain { update x = 2 }\noutput x\n", "is not declared with 'state'"),
    ("input x = 1\ntrain { param w = 2 }\noutput x\n", "declare params outside 'train' blocks"),
    ("input x = 1\noutput x\ntrain { input z = 2\nloss = x * z\nminimize loss }\n",
     "declare inputs outside 'train' blocks"),
    ("input x = 1\ntrain { eval { y = x } }\noutput x\n", "cannot be nested"),
    ("input x = 1\nd = dropout(x, p=1.5)\noutput d\n", "dropout rate p must be in [0, 1)"),
    ("state s: [2] = zeros()\ninput x = 1\ntrain { update s = x }\noutput x\n", "but the state is float[2]"),
])
def test_mode_mistakes_are_reported_at_the_source(tmp_path: Path, source: str, message: str) -> None:
    path = tmp_path / "bad.nn"
    path.write_text(source)
    with pytest.raises(NNError) as info:
        nncompile.compile_file(path)
    assert message in info.value.message
    assert info.value.loc is not None and info.value.loc.file == str(path)


def test_a_model_without_modes_keeps_the_plain_api() -> None:
    module = nncompile.compile_and_load(Path(__file__).resolve().parent.parent / "examples" / "circuit.nn")
    assert not hasattr(module, "STATE") and not hasattr(module, "init_state")
    outputs, grads = module.value_and_grad({})
    assert float(outputs["f"]) == -12.0 and float(grads["z"]) == 3.0


def test_state_none_means_init_state_even_when_the_loss_does_not_read_it(compile_nn) -> None:
    module = compile_nn("""
        input x: float[N, 3]
        param W: [3, 2] = normal()
        state unused: [2] = ones()
        loss = sum(x @ W)
        minimize loss
    """, dtype="float64")
    params = module.init_params()
    outputs, grads, state = module.value_and_grad(params, x=np.ones((2, 3)))
    np.testing.assert_array_equal(state["unused"], module.init_state()["unused"])
    assert set(module.forward(params, x=np.ones((2, 3)))) == {"loss"}


def test_outputs_describe_forward_and_train_outputs_describe_value_and_grad(net) -> None:
    """A loss defined in a train block exists in train mode only: OUTPUTS lists what
    forward() returns, TRAIN_OUTPUTS what value_and_grad() returns, each exactly."""
    params, data = net.init_params(), _data()
    forward = net.forward(params, None, **data)
    outputs = net.value_and_grad(params, None, np.random.default_rng(0), **data)[0]
    assert set(net.OUTPUTS) == set(forward) == {"scores"}
    assert set(net.TRAIN_OUTPUTS) == set(outputs) == {"scores", "loss"}
    for table, values in ((net.OUTPUTS, forward), (net.TRAIN_OUTPUTS, outputs)):
        for name, (shape, dtype) in table.items():
            assert values[name].ndim == len(shape) and values[name].dtype == dtype, name
