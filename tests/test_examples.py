"""The bundled examples: their file names and variable names are relied on elsewhere, and
each says what the issue asks of it."""
from __future__ import annotations

import inspect
import sys
from collections import Counter
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from nncompile.compiler import compile_and_load
from nncompile.elaborate import elaborate_file
from nncompile.evaluate import evaluate_file
from nncompile.gradcheck import check_gradients

from conftest import EXAMPLE_FILES, EXAMPLES, example_inputs, value_and_grad


def test_the_relied_on_examples_exist() -> None:
    assert {"circuit.nn", "neuron.nn", "two_layer.nn", "mlp.nn"} <= {p.name for p in EXAMPLE_FILES}


def test_circuit_is_the_first_lecture_circuit() -> None:
    m = elaborate_file(EXAMPLES / "circuit.nn")
    assert m.defaults == {"x": -2.0, "y": 5.0, "z": -4.0}
    assert list(m.outputs) == ["f"] and m.params == {}
    ev = evaluate_file(EXAMPLES / "circuit.nn")
    values = {k: float(v) for k, v in ev.named_values().items()}
    assert values == {"x": -2.0, "y": 5.0, "z": -4.0, "q": 3.0, "f": -12.0}


def test_neuron_is_written_gate_by_gate() -> None:
    m = elaborate_file(EXAMPLES / "neuron.nn")
    assert set(m.inputs) | set(m.params) == {"w0", "x0", "w1", "x1", "w2"}
    ops = Counter(m.graph[n].op for n in m.graph.nodes() if not m.graph[n].is_leaf)
    # w0*x0, w1*x1, +, + w2, negate, exp, + 1, 1 / den: each gate its own node, no fused sigmoid
    assert ops["mul"] == 2 and ops["add"] == 3 and ops["neg"] == 1 and ops["exp"] == 1 and ops["div"] == 1
    assert "sigmoid" not in ops
    values = {k: float(v) for k, v in evaluate_file(EXAMPLES / "neuron.nn").named_values().items()}
    assert {k: values[k] for k in ("w0", "x0", "w1", "x1", "w2")} == {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3}
    assert round(values["f"], 2) == 0.73


def test_two_layer_is_the_cifar10_net() -> None:
    m = elaborate_file(EXAMPLES / "two_layer.nn")
    G = m.graph
    assert G[m.inputs["X"]].shape == ("N", 3072) and G[m.inputs["y"]].dtype == "int"
    assert {name: G[n].shape for name, n in m.params.items()} == \
        {"fc1.W": (3072, 100), "fc1.b": (100,), "fc2.W": (100, 10), "fc2.b": (10,)}
    ops = {G[n].op for n in G.nodes()}
    assert {"relu", "softmax_cross_entropy", "matmul"} <= ops
    assert m.loss is not None and G[m.loss].shape == () and "loss" in m.outputs
    # the L2 term reads both weight matrices
    assert {m.params["fc1.W"], m.params["fc2.W"]} <= nx.ancestors(G.nx, m.loss)


def test_mlp_uses_one_layer_several_times() -> None:
    m = elaborate_file(EXAMPLES / "mlp.nn")
    uses = Counter(m.layers.values())
    assert max(uses.values()) >= 3
    assert len(m.params) >= 8 and m.loss is not None


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_gradients_check(example: Path) -> None:
    module = compile_and_load(example, dtype="float64")
    ev = evaluate_file(example, dtype="float64")
    results = check_gradients(module, ev.params, ev.inputs)
    assert results and all(r.ok for r in results), [r for r in results if not r.ok]


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_float32_and_float64_agree(example: Path) -> None:
    """The default float32 module computes what the float64 one does, to float32 accuracy.
    (A model that draws random masks draws them in its own precision, so its train-mode
    results differ by design; its deterministic eval-mode forward() is compared instead.)"""
    m32, m64 = compile_and_load(example), compile_and_load(example, dtype="float64")
    inputs = example_inputs(m64, n=8)
    params64 = m64.init_params(0)
    stochastic = not all(np.array_equal(a, b) for a, b in zip(
        value_and_grad(m64, params64, inputs, seed=1)[1].values(), value_and_grad(m64, params64, inputs, seed=2)[1].values()))
    if stochastic:
        pairs = [(m32.forward(m32.init_params(0), **inputs), m64.forward(m64.init_params(0), **inputs))]
    else:
        (out32, grads32), (out64, grads64) = (value_and_grad(m, m.init_params(0), inputs) for m in (m32, m64))
        pairs = [(out32, out64), (grads32, grads64)]
    for got, want in pairs:
        assert got.keys() == want.keys()
        for k in want:
            scale = max(1.0, float(np.max(np.abs(want[k]))))
            np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-4 * scale, err_msg=k)


def _every_call(m, params: dict, inputs: dict) -> list[dict]:
    """What forward() and value_and_grad() return for these inputs: every dict they hand out."""
    results = [m.forward(params, **inputs)]
    if hasattr(m, "value_and_grad"):
        if "rng" in inspect.signature(m.value_and_grad).parameters:
            results += m.value_and_grad(params, None, np.random.default_rng(0), **inputs)
        else:
            results += m.value_and_grad(params, **inputs)
    return results


@pytest.mark.parametrize("backend", ["numpy", "cupy"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_result_is_a_fresh_array_of_the_module_dtype(example: Path, dtype: str, backend: str,
                                                           monkeypatch) -> None:
    """The module's contract, for every function and every example, on both backends (CuPy's
    on its CPU stand-in): each returned value has exactly the module's dtype and memory of
    its own; a later call (which reuses the workspace) changes no earlier result; inputs and
    params are never written."""
    if backend == "cupy":
        monkeypatch.syspath_prepend(str(Path(__file__).parent))
        import fake_cupy
        monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    m = compile_and_load(example, dtype=dtype, backend=backend)
    params = m.init_params(0)
    first, other = ({k: v.astype(m.DTYPE) if v.dtype.kind == "f" else v for k, v in example_inputs(m, 5, seed).items()}
                    for seed in (0, 1))
    given = [*params.values(), *first.values()]
    kept_given = [np.array(v, copy=True) for v in given]
    results = _every_call(m, params, first)
    returned = [(f"{i}:{name}", value) for i, result in enumerate(results) for name, value in result.items()]
    kept = [np.array(value, copy=True) for _, value in returned]
    for (name, value), copy in zip(returned, kept):
        assert isinstance(value, (np.ndarray, np.generic)) and value.dtype == m.DTYPE, (name, type(value), value.dtype)
        for other_value in [*given, *(v for n, v in returned if n != name)]:
            assert not np.may_share_memory(value, other_value), f"{name} shares memory with another array"
    _every_call(m, params, other)
    _every_call(m, params, first)
    for (name, value), copy in zip(returned, kept):
        np.testing.assert_array_equal(value, copy, err_msg=f"{name} was overwritten by a later call")
    for value, copy in zip(given, kept_given):
        np.testing.assert_array_equal(value, copy, err_msg="an input or param was written")
