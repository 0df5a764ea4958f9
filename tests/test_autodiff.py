"""Reverse-mode autodiff, as the backprop lecture teaches it.

The examples give the lecture's numbers; the rules (add distributes, mul switches, max
routes, fan-out sums, broadcasting is undone by summing) are each checked on a small model;
and the backward pass is a graph in the same IR as the forward pass.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from nncompile.autodiff import differentiate
from nncompile.compiler import compile_and_load
from nncompile.elaborate import elaborate_file

from conftest import (EXAMPLE_FILES, EXAMPLES, ROOT, assert_grads_match, example_inputs, numeric_grad,
                      value_and_grad, write_nn)


def _scalars(values: dict) -> dict:
    return {k: float(v) for k, v in values.items()}


# ---- the examples ---------------------------------------------------------------------

def test_circuit_gives_the_lecture_numbers() -> None:
    m = compile_and_load(EXAMPLES / "circuit.nn", dtype="float64")
    outputs, grads = m.value_and_grad(m.init_params())     # x = -2, y = 5, z = -4 by default
    assert float(outputs["f"]) == -12.0
    assert _scalars(grads) == {"x": -4.0, "y": -4.0, "z": 3.0}


def test_circuit_in_float32_too() -> None:
    m = compile_and_load(EXAMPLES / "circuit.nn")
    outputs, grads = m.value_and_grad({})
    assert outputs["f"].dtype == np.float32 and float(outputs["f"]) == -12.0
    assert _scalars(grads) == {"x": -4.0, "y": -4.0, "z": 3.0}


def test_neuron_gives_the_lecture_numbers() -> None:
    m = compile_and_load(EXAMPLES / "neuron.nn", dtype="float64")
    params = m.init_params()
    assert _scalars(params) == {"w0": 2.0, "w1": -3.0, "w2": -3.0}
    outputs, grads = m.value_and_grad(params)                # x0 = -1, x1 = -2 by default
    assert round(float(outputs["f"]), 2) == 0.73
    rounded = {k: round(v, 2) for k, v in _scalars(grads).items()}
    assert rounded == {"w0": -0.20, "x0": 0.39, "w1": -0.39, "x1": -0.59, "w2": 0.20}
    # and exactly: the local gradient of the sigmoid is (1 - f) f
    f = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(float(grads["w2"]), (1 - f) * f, rtol=1e-12)
    np.testing.assert_allclose(float(grads["x0"]), 2 * (1 - f) * f, rtol=1e-12)


def spot_check(module, params: dict, inputs: dict, *, seed: int = 0, entries: int = 40, directions: int = 3,
               rtol: float = 1e-5) -> None:
    """Central differences of the loss for big models: every entry of small tensors, a random
    sample of entries of big ones, and directional derivatives along random directions."""
    rng = np.random.default_rng(seed)
    params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    _, grads = module.value_and_grad(params, **inputs)
    loss = module.LOSS

    def f() -> float:
        return float(module.forward(params, **inputs)[loss])

    assert set(grads) == set(params) | {k for k, (_, dt) in module.INPUTS.items() if dt.startswith("float")}
    for name, grad in grads.items():
        x = params[name] if name in params else inputs[name]
        assert grad.shape == x.shape, name
        if x.size <= entries:
            np.testing.assert_allclose(grad, numeric_grad(f, x), rtol=rtol, atol=1e-8, err_msg=name)
            continue
        flat, gflat = x.reshape(-1), np.asarray(grad).reshape(-1)
        for i in rng.choice(x.size, entries, replace=False):
            old = flat[i]
            flat[i] = old + 1e-6
            plus = f()
            flat[i] = old - 1e-6
            minus = f()
            flat[i] = old
            np.testing.assert_allclose(gflat[i], (plus - minus) / 2e-6, rtol=rtol, atol=1e-8,
                                       err_msg=f"{name}[{np.unravel_index(i, x.shape)}]")
        for _ in range(directions):
            d = rng.standard_normal(x.shape)
            x += 1e-6 * d
            plus = f()
            x -= 2e-6 * d
            minus = f()
            x += 1e-6 * d
            np.testing.assert_allclose(np.sum(grad * d), (plus - minus) / 2e-6, rtol=rtol, err_msg=name)


@pytest.mark.parametrize("example", ["two_layer.nn", "mlp.nn"])
def test_network_gradients_match_finite_differences(example: str) -> None:
    m = compile_and_load(EXAMPLES / example, dtype="float64")
    rng = np.random.default_rng(1)
    D = m.INPUTS["X"][0][1]
    C = m.OUTPUTS["scores"][0][1]
    inputs = {"X": rng.standard_normal((3, D)), "y": np.array([0, 2, C - 1])}
    params = m.init_params(seed=3)
    # make every bias nonzero too, so their gradients are checked at a generic point
    params = {k: v + 0.01 * rng.standard_normal(v.shape) for k, v in params.items()}
    spot_check(m, params, inputs)


def test_labels_get_no_gradient() -> None:
    m = compile_and_load(EXAMPLES / "two_layer.nn", dtype="float64")
    _, grads = m.value_and_grad(m.init_params(), X=np.ones((2, 3072)), y=np.array([1, 2]))
    assert "y" not in grads
    assert set(grads) == {"X", "fc1.W", "fc1.b", "fc2.W", "fc2.b"}


# ---- the rules ------------------------------------------------------------------------

def test_add_distributes_and_mul_switches(compile_nn) -> None:
    m = compile_nn("""
        input a = 3
        input b = -4
        input c = 2
        f = a * b + c
        output f
    """, dtype="float64")
    _, grads = m.value_and_grad({})
    assert _scalars(grads) == {"a": -4.0, "b": 3.0, "c": 1.0}


def test_fan_out_sums_gradients(compile_nn) -> None:
    m = compile_nn("""
        input x = 3
        y = x * x + x      # x is used three times
        output y
    """, dtype="float64")
    _, grads = m.value_and_grad({})
    assert float(grads["x"]) == 2 * 3 + 1


def test_fan_out_through_layers_sums_gradients(compile_nn) -> None:
    m = compile_nn("""
        input x: float[2, 3]
        layer scale(v: [B, K]) -> [B, K] {
            param s: [K] = ones()
            return v * s
        }
        a = scale(x) as first
        b = scale(x) as second
        loss = sum(a * b)
        minimize loss
    """, dtype="float64")
    x = np.arange(6.0).reshape(2, 3) - 2
    params = {"first.s": np.array([1.0, 2.0, 3.0]), "second.s": np.array([-1.0, 0.5, 2.0])}
    _, grads = m.value_and_grad(params, x=x)
    s1, s2 = params["first.s"], params["second.s"]
    np.testing.assert_allclose(grads["x"], 2 * x * s1 * s2)
    np.testing.assert_allclose(grads["first.s"], (x * x * s2).sum(axis=0))
    assert_grads_match(m, params, {"x": x})


def test_broadcasting_is_undone_by_summing(compile_nn) -> None:
    m = compile_nn("""
        input X: float[N, 3]
        param b: [3] = zeros()
        param s = 2.0
        param col: [4, 1] = ones()
        h = (X + b) * s
        loss = sum(h) + sum(col * b)
        minimize loss
    """, dtype="float64")
    X = np.arange(12.0).reshape(4, 3)
    params = {"b": np.array([0.5, -1.0, 2.0]), "s": np.array(2.0), "col": np.array([[1.0], [2.0], [3.0], [4.0]])}
    _, grads = m.value_and_grad(params, X=X)
    assert grads["b"].shape == (3,) and grads["s"].shape == () and grads["col"].shape == (4, 1)
    np.testing.assert_allclose(grads["b"], 4 * 2.0 + 10.0)            # summed over the batch, and over col
    np.testing.assert_allclose(grads["s"], (X + params["b"]).sum())    # a scalar broadcast everywhere
    np.testing.assert_allclose(grads["col"], np.full((4, 1), params["b"].sum()))
    np.testing.assert_allclose(grads["X"], np.full((4, 3), 2.0))
    assert_grads_match(m, params, {"X": X})


def test_bias_gradient_is_the_batch_sum(compile_nn) -> None:
    m = compile_nn("""
        input X: float[N, 2]
        param W: [2, 3] = normal(std=1)
        param b: [3] = zeros()
        scores = X @ W + b
        loss = sum(scores * scores)
        output scores
        minimize loss
    """, dtype="float64")
    params = m.init_params(0)
    X = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    outputs, grads = m.value_and_grad(params, X=X)
    np.testing.assert_allclose(grads["b"], (2 * outputs["scores"]).sum(axis=0))
    np.testing.assert_allclose(grads["W"], X.T @ (2 * outputs["scores"]))


def test_max_gate_routes_the_gradient(compile_nn) -> None:
    """The lecture's f = 2 (x y + max(z, w)): the gradient reaches z, and none reaches w."""
    m = compile_nn("""
        input x = 3
        input y = -4
        input z = 2
        input w = -1
        f = 2 * (x * y + maximum(z, w))
        output f
    """, dtype="float64")
    outputs, grads = m.value_and_grad({})
    assert float(outputs["f"]) == -20.0
    assert _scalars(grads) == {"x": -8.0, "y": 6.0, "z": 2.0, "w": 0.0}
    _, grads = m.value_and_grad({}, z=-5.0)       # now w is the larger: it gets the gradient
    assert float(grads["z"]) == 0.0 and float(grads["w"]) == 2.0


def test_min_gate_and_relu_route_the_gradient(compile_nn) -> None:
    m = compile_nn("""
        input a: float[4]
        input b: float[4]
        loss = sum(minimum(a, b) * [1, 2, 3, 4]) + sum(relu(a))
        minimize loss
    """, dtype="float64")
    a, b = np.array([1.0, -2.0, 3.0, -4.0]), np.array([2.0, -3.0, 1.0, 5.0])
    _, grads = m.value_and_grad({}, a=a, b=b)
    np.testing.assert_allclose(grads["a"], [1 + 1, 0, 0 + 1, 4])
    np.testing.assert_allclose(grads["b"], [0, 2, 3, 0])


def test_max_reduction_routes_to_the_maximum(compile_nn) -> None:
    m = compile_nn("""
        input x: float[2, 3]
        m = max(x, axis=1)
        loss = sum(m * [10, 100])
        minimize loss
    """, dtype="float64")
    _, grads = m.value_and_grad({}, x=np.array([[1.0, 5.0, 2.0], [-1.0, -3.0, -2.0]]))
    np.testing.assert_allclose(grads["x"], [[0, 10, 0], [100, 0, 0]])


def test_mean_over_a_symbolic_batch(compile_nn) -> None:
    m = compile_nn("""
        input x: float[N, 2]
        loss = mean(x * x)
        minimize loss
    """, dtype="float64")
    for n in (1, 5):
        x = np.arange(2.0 * n).reshape(n, 2)
        _, grads = m.value_and_grad({}, x=x)
        np.testing.assert_allclose(grads["x"], 2 * x / (2 * n))


def test_unused_inputs_get_zero_gradients(compile_nn) -> None:
    m = compile_nn("""
        input x = 2
        input unused: float[3]
        param p: [2] = ones()
        f = x * x
        output f
    """, dtype="float64")
    _, grads = m.value_and_grad(m.init_params(), unused=np.ones(3))
    assert float(grads["x"]) == 4.0
    np.testing.assert_array_equal(grads["unused"], np.zeros(3))
    np.testing.assert_array_equal(grads["p"], np.zeros(2))


def test_loss_is_minimize_target_not_other_outputs(compile_nn) -> None:
    m = compile_nn("""
        input x = 3
        a = x * 10
        loss = x * x
        output a
        minimize loss
    """, dtype="float64")
    assert m.LOSS == "loss"
    outputs, grads = m.value_and_grad({})
    assert float(outputs["a"]) == 30.0 and float(grads["x"]) == 6.0


def test_no_value_and_grad_without_a_scalar_target(compile_nn) -> None:
    m = compile_nn("""
        input x: float[3]
        y = x * 2
        output y
    """)
    assert not hasattr(m, "value_and_grad")
    np.testing.assert_array_equal(m.forward({}, x=np.ones(3))["y"], np.full(3, 2.0))


# ---- the backward pass is a graph in the same IR -------------------------------------

def test_backward_graph_lives_in_the_same_ir(tmp_path) -> None:
    model = elaborate_file(write_nn(tmp_path, "m.nn", """
        input x: float[2]
        param b: [3, 2] = ones()
        y = x * b + x
        loss = sum(y)
        minimize loss
    """), "float64")
    G = model.graph
    before = set(G.nodes())
    x, b = model.inputs["x"], model.params["b"]
    adjoints = differentiate(G, model.loss, [x, b])
    new = set(G.nodes()) - before
    assert new and {x, b} <= set(adjoints)
    assert all(G[n].op in {"input", "param", "const"} or G[n].args for n in new)
    assert all(G[adjoints[n]].grad_of == n for n in (x, b))
    assert G[adjoints[x]].shape == (2,) and G[adjoints[b]].shape == (3, 2)
    # x fans out to the product and the sum: its adjoint adds the two contributions ...
    assert G[adjoints[x]].op == "add"
    # ... each of which was summed over the broadcast axis of [3, 2] back to x's [2]
    assert all(G[a].op == "sum_to" and G[a].shape == (2,) for a in G[adjoints[x]].args)
    # and the whole thing is still a DAG, with a deterministic schedule
    assert nx.is_directed_acyclic_graph(G.nx)


# ---- dtypes: every value and every gradient has exactly the module's dtype ---------------

MODELS = [*EXAMPLE_FILES, *sorted((ROOT / "benchmarks" / "models").glob("*.nn"))]


def assert_module_dtypes(module, outputs: dict, grads: dict, declared: str = "OUTPUTS") -> None:
    """Outputs have the dtype their table declares (OUTPUTS for forward, TRAIN_OUTPUTS for
    value_and_grad), gradients the module's float dtype; arrays are arrays, and scalars numpy
    scalars of that dtype (as numpy's ufuncs return them), never Python numbers or
    sometimes-0-d arrays."""
    table = getattr(module, declared)
    expected = {**{name: np.dtype(dtype) for name, (_, dtype) in table.items()},
                **{f"d {name}": np.dtype(module.DTYPE) for name in grads}}
    got = {**outputs, **{f"d {name}": g for name, g in grads.items()}}
    for name, value in got.items():
        assert isinstance(value, np.generic if np.shape(value) == () else np.ndarray), \
            f"{name} is a {type(value).__name__} of shape {np.shape(value)}"
        assert value.dtype == expected[name], f"{name} is {value.dtype}, not {expected[name]}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("path", MODELS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_value_and_gradient_has_the_module_dtype(path, dtype: str) -> None:
    m = compile_and_load(path, dtype=dtype)
    params, inputs = m.init_params(), example_inputs(m)
    assert_module_dtypes(m, m.forward(params, **inputs), {})
    if not hasattr(m, "value_and_grad"):
        return
    if not hasattr(m, "STATE"):
        assert_module_dtypes(m, *value_and_grad(m, params, inputs), declared="TRAIN_OUTPUTS")
        return
    outputs, grads, state = m.value_and_grad(params, None, np.random.default_rng(0), **inputs)
    assert_module_dtypes(m, outputs, grads, declared="TRAIN_OUTPUTS")
    assert all(v.dtype == m.DTYPE for v in [*m.init_state().values(), *state.values()]), state


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("source", [
    "loss = sum(relu(x))", "loss = sum(leaky_relu(x, alpha=0))", "loss = sum(leaky_relu(x, alpha=0.2))",
    "loss = sum(maximum(x, 0))", "loss = sum(minimum(x, 0))", "loss = max(x)", "loss = max(x - w)",
    "loss = sum(-x)", "loss = sum(-b)", "loss = mean(-b)", "loss = sum(x)", "loss = mean(x)",
    "loss = maximum(s, 0)", "loss = leaky_relu(s)",
    "loss = sum(abs(x))", "loss = sum(elu(x))", "loss = max(concat(x, w, axis=0))", "loss = sum(maxout(x, k=3))",
])
def test_mask_gradients_have_the_module_dtype(compile_nn, source: str, dtype: str) -> None:
    """Masks (relu's, the max gate's) are bools in numpy, and a seed broadcast from a Python
    float is float64: a gradient that is only a mask or a seed must still come back as floats
    of the module's dtype, in float32 and float64, scalars too."""
    inputs = "input x: float[3]\ninput w: float[3]\ninput s = 0.5\ninput b: float[20]\n"
    m = compile_nn(f"{inputs}{source}\nminimize loss\n", dtype=dtype)
    assert_module_dtypes(m, *m.value_and_grad({}, x=np.array([-1.0, 2.0, 3.0]), w=np.array([0.5, 1.0, 4.0]),
                                                s=np.array(0.5), b=np.linspace(-1, 1, 20)))


# ---- ties and limits: PyTorch's conventions ---------------------------------------------

def test_max_splits_the_gradient_evenly_among_ties(compile_nn) -> None:
    m = compile_nn("""
        input x: float[4]
        loss = max(x)
        minimize loss
    """, dtype="float64")
    _, grads = m.value_and_grad({}, x=np.full(4, 2.0))
    np.testing.assert_array_equal(grads["x"], [0.25] * 4)
    _, grads = m.value_and_grad({}, x=np.array([1.0, 3.0, 3.0, -1.0]))
    np.testing.assert_array_equal(grads["x"], [0, 0.5, 0.5, 0])


def test_max_of_a_repeated_param_shares_its_gradient(compile_nn) -> None:
    """max(concat(W, W)) has d/dW = [1, 0, 0] for W = [3, 1, 2]: each copy of the max gets half."""
    m = compile_nn("""
        param W = [3, 1, 2]
        loss = max(concat(W, W, axis=0))
        minimize loss
    """, dtype="float64")
    _, grads = m.value_and_grad(m.init_params())
    np.testing.assert_array_equal(grads["W"], [1, 0, 0])


@pytest.mark.parametrize(("source", "shape", "per_output"), [
    ("max(x, axis=1)", (3,), lambda g: g.sum(axis=1)),
    ("max(x, axis=0)", (8,), lambda g: g.sum(axis=0)),
    ("max(x, axis=1, keepdims=true)", (3, 1), lambda g: g.sum(axis=1, keepdims=True)),
    ("maxout(x, k=2)", (3, 4), lambda g: g.reshape(3, 2, 4).sum(axis=1)),
    ("maxout(x, k=4)", (3, 2), lambda g: g.reshape(3, 4, 2).sum(axis=1)),
])
def test_a_reductions_gradient_sums_to_the_upstream_gradient(compile_nn, source: str, shape, per_output) -> None:
    """Whatever the ties, the entries feeding one output share exactly its gradient."""
    m = compile_nn(f"""
        input x: float[3, 8]
        input u: float[{", ".join(map(str, shape))}]
        loss = sum({source} * u)
        minimize loss
    """, dtype="float64")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (3, 8)).astype(float)          # small integers: ties everywhere
    u = rng.uniform(1, 2, shape)
    _, grads = m.value_and_grad({}, x=x, u=u)
    np.testing.assert_allclose(per_output(grads["x"]), u)


@pytest.mark.parametrize(("source", "expected"), [
    ("maximum(x, 0)", 0.5), ("maximum(0, x)", 0.5), ("minimum(x, 0)", 0.5), ("relu(x)", 0.0),
    ("leaky_relu(x, alpha=0.1)", 0.1), ("abs(x)", 0.0), ("elu(x, alpha=0.5)", 0.5),
])
def test_kinks_and_ties_follow_pytorch(compile_nn, source: str, expected: float) -> None:
    """At x = 0: maximum and minimum give each operand half, relu'(0) = 0, abs'(0) = 0."""
    m = compile_nn(f"input x: float[2]\nloss = sum({source})\nminimize loss\n", dtype="float64")
    _, grads = m.value_and_grad({}, x=np.zeros(2))
    np.testing.assert_array_equal(grads["x"], [expected] * 2)


def test_maximum_of_two_tensors_splits_ties_and_sums_to_the_gradient(compile_nn) -> None:
    m = compile_nn("""
        input a: float[3]
        input b: float[3]
        loss = sum(maximum(a, b) * [1, 2, 4]) + sum(minimum(a, b) * [8, 16, 32])
        minimize loss
    """, dtype="float64")
    _, grads = m.value_and_grad({}, a=np.array([1.0, 2.0, 3.0]), b=np.array([0.0, 2.0, 5.0]))
    np.testing.assert_array_equal(grads["a"], [1 + 0, 1 + 8, 0 + 32])
    np.testing.assert_array_equal(grads["b"], [0 + 8, 1 + 8, 4 + 0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_power_gradients_have_pytorchs_limits_at_zero(compile_nn, dtype: str) -> None:
    """d(x ** 0)/dx = 0 at x = 0 (not 0 * inf), and d(x ** e)/de = 0 at x = 0 (not 0 * log 0)."""
    m = compile_nn("""
        input x: float[3]
        param e = 2.5
        loss = sum(x ** 0) + sum(x ** e)
        minimize loss
    """, dtype=dtype)
    x = np.array([0.0, 1.0, 2.0])
    _, grads = m.value_and_grad({"e": np.array(2.5)}, x=x)
    np.testing.assert_allclose(grads["x"], 2.5 * x ** 1.5, rtol=1e-6)
    np.testing.assert_allclose(grads["e"], np.sum(x[1:] ** 2.5 * np.log(x[1:])), rtol=1e-6)
    _, grads = m.value_and_grad({"e": np.array(0.0)}, x=x)
    np.testing.assert_array_equal(grads["x"], [0, 0, 0])
    assert np.isfinite(grads["e"])
    with np.errstate(divide="ignore"):    # 0 ** -1 is inf, and so is its d/de: as PyTorch has it
        _, grads = m.value_and_grad({"e": np.array(-1.0)}, x=x)
    assert grads["e"] == -np.inf


def test_power_gradients_match_central_differences_away_from_zero(compile_nn) -> None:
    m = compile_nn("""
        input x: float[3]
        param e = 1.7
        loss = sum(x ** e) + sum(e ** x)
        minimize loss
    """, dtype="float64")
    assert_grads_match(m, {"e": np.array(1.7)}, {"x": np.array([0.5, 1.0, 2.0])})
