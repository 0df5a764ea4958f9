"""Scheduling and buffer planning: the optimised, workspace-reusing code computes exactly
what the plain code does, call after call, and never hands out memory it will reuse."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import example_inputs

from nncompile.codegen import emit_module
from nncompile.compiler import build, load_module
from nncompile.elaborate import elaborate_file
from nncompile.schedule import plan_buffers, schedule

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "examples").glob("*.nn")) + sorted((ROOT / "benchmarks" / "models").glob("*.nn"))


def _module(path: Path, optimized: bool, dtype: str = "float64"):
    return load_module(emit_module(build(elaborate_file(path, dtype), optimized=optimized)), path.stem)


def _call(module, params, inputs):
    if hasattr(module, "value_and_grad"):  # a fixed seed: dropout draws the same masks in both
        return module.value_and_grad(params, None, np.random.default_rng(0), **inputs)[:2]
    return module.forward(params, **inputs), {}


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_optimised_code_matches_unoptimised_code(path: Path) -> None:
    if path.stem == "deep_tanh":
        pytest.importorskip("numpy")  # runs like the rest; 1000 layers take a second or two
    fast, plain = _module(path, optimized=True), _module(path, optimized=False)
    params = fast.init_params(3)
    inputs = example_inputs(fast, 5)
    (out_fast, grads_fast), (out_plain, grads_plain) = _call(fast, params, inputs), _call(plain, params, inputs)
    assert out_fast.keys() == out_plain.keys() and grads_fast.keys() == grads_plain.keys()
    for key in out_fast:
        np.testing.assert_allclose(out_fast[key], out_plain[key], rtol=1e-10, atol=1e-12, err_msg=key)
    for key in grads_fast:
        np.testing.assert_allclose(grads_fast[key], grads_plain[key], rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("name", ["mlp", "two_layer", "neuron"])
def test_a_second_call_gives_the_same_answer_and_leaves_the_first_untouched(name: str) -> None:
    module = _module(ROOT / "examples" / f"{name}.nn", optimized=True, dtype="float32")
    params = module.init_params(0)
    inputs = example_inputs(module, 6)
    first_out, first_grads = module.value_and_grad(params, **inputs)
    snapshot = {k: np.array(v, copy=True) for k, v in {**first_out, **first_grads}.items()}
    other = example_inputs(module, 6, seed=1)
    module.value_and_grad(params, **other)           # reuses the workspace with other data
    second_out, second_grads = module.value_and_grad(params, **inputs)
    for key, value in {**first_out, **first_grads}.items():
        np.testing.assert_array_equal(value, snapshot[key], err_msg=f"{key} changed under the caller")
        np.testing.assert_array_equal({**second_out, **second_grads}[key], snapshot[key], err_msg=key)
    returned = [v for v in [*first_out.values(), *first_grads.values()] if np.ndim(v)]
    again = [v for v in [*second_out.values(), *second_grads.values()] if np.ndim(v)]
    for a in returned:
        for b in again:
            assert not np.shares_memory(a, b), "a later call returned memory an earlier call handed out"
        for p in params.values():
            assert not np.shares_memory(a, p)


def test_the_workspace_follows_the_batch_size() -> None:
    module = _module(ROOT / "examples" / "mlp.nn", optimized=True, dtype="float32")
    params = module.init_params(0)
    small, large = example_inputs(module, 3), example_inputs(module, 11)
    expected_small = module.value_and_grad(params, **small)
    module.value_and_grad(params, **large)
    again = module.value_and_grad(params, **small)
    np.testing.assert_array_equal(again[0]["loss"], expected_small[0]["loss"])
    np.testing.assert_array_equal(again[1]["h1.W"], expected_small[1]["h1.W"])


def test_a_layer_runs_in_one_buffer_and_only_needed_activations_are_kept() -> None:
    model = elaborate_file(ROOT / "benchmarks" / "models" / "mlp_small.nn")
    program = build(model, input_grads=False)
    G = program.graph
    results = [*program.outputs.values(), *[g for g in program.grads.values() if g is not None]]
    plan = plan_buffers(G, schedule(G, results), set(results))
    ops = {G[n].op: n for n in plan.order}
    relu = next(n for n in plan.order if G[n].op == "relu")
    bias_add = G[relu].args[0]
    assert plan.inplace[relu] == bias_add, "relu should overwrite x @ W + b in place"
    assert plan.inplace[bias_add] == G[bias_add].args[0], "the bias add should overwrite x @ W"
    # Returned values are never workspace buffers.
    assert not set(results) & set(plan.slot)
    assert "softmax_cross_entropy" not in ops, "the loss shares its log-softmax with the gradient"


def test_the_schedule_is_topological_and_deterministic() -> None:
    def order_of():
        model = elaborate_file(ROOT / "examples" / "mlp.nn")
        program = build(model)
        results = [*program.outputs.values(), *[g for g in program.grads.values() if g is not None]]
        return program.graph, schedule(program.graph, results)

    (G, first), (_, second) = order_of(), order_of()
    assert first == second
    position = {n: i for i, n in enumerate(first)}
    for n in first:
        assert all(position[a] < position[n] for a in G[n].args)


def test_a_fresh_result_computed_from_a_transpose_is_c_ordered(tmp_path: Path) -> None:
    """numpy makes a ufunc's fresh result in its operands' layout, a transpose's too; a result
    is asked for in C order, as the workspace's buffers and a loop's are, so that a sum over
    it adds in the same order wherever it was made (tests/test_codegen_loops.py)."""
    from conftest import write_nn
    from nncompile.compiler import compile_file

    path = write_nn(tmp_path, "t.nn", """
input X: float[N, 3]
param W: [3, 4] = xavier()
a = tanh(X.T)
b = a.T * 2.0 + X
c = max(a.T, axis=1, keepdims=true) * X
output a, b, c
loss = sum(b @ W) + sum(c)
minimize loss
""")
    module = load_module(compile_file(path, dtype="float64"), "t_layout")
    outputs = module.forward(module.init_params(0), X=np.ones((5, 3)))
    values, grads = module.value_and_grad(module.init_params(0), X=np.ones((5, 3)))
    for name, array in [*outputs.items(), *values.items(), *grads.items()]:
        assert array.ndim < 2 or array.flags.c_contiguous, name
