"""``repeat`` written as a loop: the instances of a repeat that are the same up to their params
are one ``for`` loop in the module (forward up through them, backward down), and the module
computes exactly what the unrolled one does (``loops=False``), call after call."""
from __future__ import annotations

import inspect
import itertools
import re
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nncompile import compiler
from nncompile.compiler import compile_file, load_module

from conftest import EXAMPLES, example_inputs, write_nn

sys.path.insert(0, str(Path(__file__).parent))
from fuzzing import HypothesisChoices, RandomChoices, write_program  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEEP = ROOT / "benchmarks" / "models" / "deep_tanh.nn"

DEEP_TEXT = """
const D = 4
input X: float[N, 7]
layer block(x: [B, K], width: int) -> [B, width] {
    param W: [K, width] = xavier()
    param b: [width] = zeros()
    return tanh(x @ W + b)
}
h = repeat COUNT block(X, width=D)
output h
loss = sum(h ** 2)
minimize loss
"""


NESTED = """
input X: float[N, 3]
layer inner(x: [B, K]) -> [B, K] {
    param W: [K, K] = randn()
    return relu(x @ W)
}
layer outer(x: [B, K]) -> [B, K] {
    param s: [K] = ones()
    h = repeat 3 inner(x)
    return h * s + x
}
y = repeat 4 outer(X)
output y
loss = mean(y ** 2)
minimize loss
"""

RESIDUAL = """
import nn
input X: float[N, 6]
input ctx: float[N, 6]
input y: int[N]
layer res(x: [B, K], c: [B, K]) -> [B, K] {
    param W: [K, K] = xavier()
    param g: [K] = ones()
    h = relu(x @ W) * g + c
    return x + dropout(h, p=0.25)
}
h = repeat 5 res(X, ctx)
logits = dense(h, out=3)
output logits
loss = softmax_cross_entropy(logits, y)
minimize loss
"""


def both(path: Path, **options):
    """The module with loops and the unrolled one, compiled from one file with one set of options."""
    looped = compile_file(path, loops=True, **options)
    unrolled = compile_file(path, loops=False, **options)
    return (looped, load_module(looped, f"{path.stem}_looped"), unrolled,
            load_module(unrolled, f"{path.stem}_unrolled"))


def assert_identical(a, b, where: str = "") -> None:
    """Bit for bit: the same keys in the same order, the same dtypes and the same values."""
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        x, y = np.asarray(a), np.asarray(b)
        assert x.dtype == y.dtype and x.shape == y.shape, where
        assert np.array_equal(x, y, equal_nan=True), where


def calls(module, params, inputs, seed=5) -> dict:
    """Everything the module computes, dropout masks drawn from one seed."""
    results = {"forward": module.forward(params, **inputs)}
    if hasattr(module, "value_and_grad"):
        extra = (None, np.random.default_rng(seed)) if "rng" in inspect.signature(module.value_and_grad).parameters \
            else ()
        results["value_and_grad"] = module.value_and_grad(params, *extra, **inputs)
    if hasattr(module, "predict"):
        results["predict"] = module.predict(params, **{k: v for k, v in inputs.items() if k in module.PREDICT_INPUTS})
    if hasattr(module, "hvp"):   # a direction drawn from the seed, the same for both modules
        draw = np.random.default_rng(seed)
        v = {name: np.asarray(draw.standard_normal(np.shape(a)), dtype=np.asarray(a).dtype)
             for name, a in params.items()}
        results["hvp"] = module.hvp(params, v, None, np.random.default_rng(seed), **inputs)
    return results


def arrays_in(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from arrays_in(v)
    elif isinstance(value, tuple):
        for v in value:
            yield from arrays_in(v)
    elif isinstance(value, np.ndarray):
        yield value


def assert_same_module_behaviour(path: Path, **options) -> bool:
    """The looped and unrolled modules agree on everything, twice; says whether a loop was written."""
    looped_src, looped, _, unrolled = both(path, **options)
    assert looped.PARAMS == unrolled.PARAMS and list(looped.PARAMS) == list(unrolled.PARAMS)
    params = looped.init_params(1)
    assert_identical(params, unrolled.init_params(1), "init_params")
    inputs = example_inputs(looped, seed=2)
    first = calls(looped, params, inputs)
    assert_identical(first, calls(unrolled, params, inputs))
    kept = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in enumerate(arrays_in(first))}
    calls(looped, params, example_inputs(looped, seed=3))   # a later call must not overwrite results
    for k, array in enumerate(arrays_in(first)):
        assert np.array_equal(array, kept[k], equal_nan=True)
    return "one iteration per instance" in looped_src   # a loop's comment (hessian() has a for of its own)


def hvp_source(source: str) -> str:
    return source[source.index("def hvp("):source.index("HESSIAN_LIMIT =")]


def repeated_program(seed: int) -> str | None:
    """A random well-typed program (the fuzz suite's generator) whose repeats run 3 to 6 times."""
    text = write_program(RandomChoices(seed), ill_typed=0.0)[0]
    if "repeat" not in text:
        return None
    return re.sub(r"repeat \d+ ", f"repeat {3 + seed % 4} ", text)


def test_random_repeated_models_compute_the_same_with_and_without_loops(tmp_path: Path) -> None:
    seeds = [s for s in range(400) if repeated_program(s) is not None][:40]
    looped = hvp_looped = 0
    for seed in seeds:
        path = write_nn(tmp_path, f"random{seed}", repeated_program(seed))
        looped += assert_same_module_behaviour(path, dtype="float64")
        hvp_looped += "one iteration per instance" in hvp_source(compile_file(path, dtype="float64"))
    assert looped >= 10, f"only {looped} of {len(seeds)} programs were written with a loop"
    assert hvp_looped >= 5, f"only {hvp_looped} of {len(seeds)} programs had hvp() written with a loop"


def test_hvp_goes_through_the_instances_in_four_loops_and_computes_the_same(tmp_path: Path) -> None:
    """Reverse over reverse: forward up, backward down, the backward's reverse up, a second
    backward down; each a loop reading the instance's params and directions v from tuples."""
    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "12"))
    hvp = hvp_source(compile_file(path, dtype="float64"))
    for kind in ("forward", "backward", "backward of the backward", "second backward"):
        assert re.search(rf"# h\.\d+ \.\.\. h\.\d+, {kind}: one iteration per instance", hvp), kind
    assert re.search(r"h_vW = v_arrays\[\d+:\d+:2\]  # h\.\d+\.W \.\.\. h\.\d+\.W", hvp)
    assert "v_h_6_W" not in hvp   # a middle instance's v is read in its loop, not by name
    assert assert_same_module_behaviour(path, dtype="float64")
    assert assert_same_module_behaviour(path, optimized=False)


@pytest.mark.parametrize("options", [{}, {"dtype": "float64"}, {"input_grads": False}, {"optimized": False}],
                         ids=["f32", "f64", "params_only", "unopt"])
def test_a_deep_repeat_is_one_loop_and_computes_the_same(tmp_path: Path, options: dict) -> None:
    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "12"))
    assert assert_same_module_behaviour(path, **options)


def test_the_first_instance_that_sees_another_shape_is_peeled(tmp_path: Path) -> None:
    """X is [N, 7], each block's output [N, 4]: instance 1 differs, 2 .. 12 are one loop
    (and backward, 11 .. 3: the gradient of instance 2 reads instance 1's result, written out)."""
    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "12"))
    source = compile_file(path, dtype="float64")
    assert "# h.2 ... h.12, forward" in source and "# h.11 ... h.3, backward" in source
    assert "h_1_W = param_arrays[0]" in source   # the peeled instance's own statements


def test_every_gradient_of_the_loop_matches_the_unrolled_module_and_none_alias(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "9"))
    _, looped, _, unrolled = both(path, dtype="float64")
    params = looped.init_params(4)
    X = np.random.default_rng(0).standard_normal((5, 7))
    outputs, grads = looped.value_and_grad(params, X=X)
    assert_identical((outputs, grads), unrolled.value_and_grad(params, X=X))
    assert list(grads) == [*looped.PARAMS, "X"]
    returned = [*outputs.values(), *grads.values()]
    for a, b in itertools.combinations([r for r in returned if isinstance(r, np.ndarray)], 2):
        assert not np.shares_memory(a, b)
    for array in returned:
        if isinstance(array, np.ndarray):
            assert not any(np.shares_memory(array, p) for p in params.values())
            assert not any(np.shares_memory(array, buf) for cache in (looped._VALUE_AND_GRAD_BUFFERS,)
                           for buffers in cache.values() for buf in buffers)


@pytest.mark.parametrize("count", [9, 1000])   # 1000: compiled short and stretched
def test_each_iteration_writes_its_param_gradients_into_the_one_gradient_buffer(tmp_path: Path, count: int) -> None:
    """The loop's param gradients are views of one buffer laid out like the params, as the
    unrolled module's are, computed there: a call holds that buffer and no second copy of it."""
    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", str(count)).replace("D = 4", "D = 48"))
    module = load_module(compile_file(path, dtype="float64"), f"deep_views_{count}")
    params = module.init_params(1)
    X = np.random.default_rng(0).standard_normal((2, 7))
    module.value_and_grad(params, X=X)   # the workspace is made on the first call
    tracemalloc.start()
    try:
        _, grads = module.value_and_grad(params, X=X)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    buffer = module.flat_grads(grads)
    assert buffer is not None and all(grads[k].base is buffer for k in module.PARAMS)
    origin = buffer.__array_interface__["data"][0]
    assert [(grads[k].__array_interface__["data"][0] - origin) // 8 for k in module.PARAMS] == \
        [(p.__array_interface__["data"][0] - params["h.1.W"].base.__array_interface__["data"][0]) // 8
         for p in params.values()]
    assert peak < 1.5 * buffer.nbytes, (peak, buffer.nbytes)   # the gradients and small change
    assert_identical(grads, load_module(compile_file(path, dtype="float64", loops=False),
                                        f"deep_views_{count}_unrolled").value_and_grad(params, X=X)[1])


def assert_in_one_buffer_as_unrolled(looped, unrolled, params: dict, X: np.ndarray) -> None:
    """value_and_grad's param gradients are views of one buffer (flat_grads), and the unrolled
    module's bit for bit."""
    _, grads = looped.value_and_grad(params, X=X)
    buffer = looped.flat_grads(grads)
    assert buffer is not None and all(grads[k].base is buffer for k in looped.PARAMS)
    assert_identical(grads, unrolled.value_and_grad(params, X=X)[1])
    assert_identical(buffer, unrolled.flat_grads(unrolled.value_and_grad(params, X=X)[1]))


def test_a_loop_gradient_no_op_can_write_into_its_view_is_copied_into_the_buffer(tmp_path: Path) -> None:
    """W.T's gradient is a transpose, a view of its own: copied into the one buffer after the loop."""
    text = DEEP_TEXT.replace("COUNT", "9").replace("param W: [K, width]", "param W: [width, K]").replace("x @ W", "x @ W.T")
    _, looped, _, unrolled = both(write_nn(tmp_path, "deep", text), dtype="float64")
    assert_in_one_buffer_as_unrolled(looped, unrolled, looped.init_params(1),
                                     np.random.default_rng(0).standard_normal((2, 7)))


TWICE_TEXT = """
input X: float[N, 4]
layer block(x: [B, K]) -> [B, K] {
    param W: [K, K] = xavier()
    param b: [K] = zeros()
    h = tanh(x @ W + b)
    return h @ W + x * b
}
h = repeat 5 block(X)
output h
loss = sum(h ** 2)
minimize loss
"""


def test_a_loop_that_computes_no_gradient_leaves_them_in_the_one_buffer(tmp_path: Path) -> None:
    """Only the forward pass is a loop (the backward's 2 inner instances are too few for one):
    every gradient is computed outside it, into its view, as in the unrolled module (flat_grads)."""
    path = write_nn(tmp_path, "twice", TWICE_TEXT.replace("repeat 5", "repeat 4"))
    source, looped, _, unrolled = both(path, dtype="float64")
    assert "h.1 ... h.4, forward: one iteration per instance" in source and ", backward:" not in source
    assert_in_one_buffer_as_unrolled(looped, unrolled, looped.init_params(1),
                                     np.random.default_rng(0).standard_normal((3, 4)))


def test_a_carried_gradient_read_after_the_iteration_computes_its_own_is_still_a_loop(tmp_path: Path) -> None:
    """x reaches the block's output twice (h @ W and x * b): the backward iteration computes the
    gradient it carries on before its last read of the one carried in, which it keeps under a
    name of its own (``d_h_in``). The backward is one loop, and computes what the unrolled does."""
    path = write_nn(tmp_path, "twice", TWICE_TEXT.replace("repeat 5", "repeat 12"))
    assert "# h.11 ... h.2, backward" in compile_file(path, dtype="float64")
    assert assert_same_module_behaviour(path, dtype="float64")
    assert assert_same_module_behaviour(path, dtype="float32", optimizer="adam", input_grads=False)


def test_a_gradient_that_is_a_value_the_forward_loop_kept_is_copied_into_the_one_buffer(tmp_path: Path) -> None:
    """The loss is linear in each s: the gradient of h.5.s is h.3's output, a value of the
    forward loop, which no view can take: the gradients are copied into one buffer after."""
    text = """
input X: float[3, 4]
layer block(x: [B, K]) -> [B, K] {
    param b: [K] = zeros()
    param s: [B, K] = ones()
    return x * s + b
}
h = repeat 5 block(X)
output h
loss = sum(h)
minimize loss
"""
    path = write_nn(tmp_path, "linear", text)
    source, looped, _, unrolled = both(path, dtype="float64")
    assert "h.1 ... h.5, forward: one iteration per instance" in source
    assert_in_one_buffer_as_unrolled(looped, unrolled, looped.init_params(1),
                                     np.random.default_rng(0).standard_normal((3, 4)))


def test_a_1000_layer_repeat_is_a_short_module() -> None:
    source = compile_file(DEEP)
    assert source.count("\n") < 2000 and hvp_source(source).count("\n") < 400
    assert max(map(len, source.splitlines())) < 200
    module = load_module(source, "deep_tanh")
    assert len(module.PARAMS) == 2000 and list(module.PARAMS)[:3] == ["h.1.W", "h.1.b", "h.2.W"]
    params = module.init_params()
    _, grads = module.value_and_grad(params, X=np.ones((2, 32), dtype=np.float32))
    assert list(grads) == [*module.PARAMS, "X"]


def test_the_hvp_of_a_1000_layer_repeat_is_the_unrolled_modules_bit_for_bit() -> None:
    looped = load_module(compile_file(DEEP, dtype="float64"), "deep_tanh_looped")
    unrolled = load_module(compile_file(DEEP, dtype="float64", loops=False), "deep_tanh_unrolled")
    params = looped.init_params(3)
    draw = np.random.default_rng(4)
    v = {name: draw.standard_normal(a.shape) for name, a in params.items()}
    X = draw.standard_normal((3, 32))
    hv = looped.hvp(params, v, X=X)
    assert_identical(hv, unrolled.hvp(params, v, X=X))
    assert np.abs(hv["h.500.W"]).max() > 0


def test_the_optimiser_forms_step_the_same(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "6"))
    for optimizer in ("adam", "sgd"):
        _, looped, _, unrolled = both(path, dtype="float64", optimizer=optimizer, input_grads=False)
        X = np.random.default_rng(1).standard_normal((3, 7))
        results = []
        for module in (looped, unrolled):
            params = module.init_params(2)
            opt_state = module.init_opt_state(params)
            for _ in range(3):
                module.step(params, opt_state, 0.01, X=X)
            results.append(params)
        assert_identical(*results)


def test_trace_reports_every_instance_by_its_node(tmp_path: Path) -> None:
    """trace() keys every value by its graph node: it is written out in full, not as a loop."""
    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "5"))
    looped_src, looped, _, unrolled = both(path, dtype="float64", trace=True)
    start = looped_src.index("def trace(")
    trace_src = looped_src[start:looped_src.find("\ndef ", start)]
    assert "for i in" not in trace_src and "for i in" in looped_src
    params = looped.init_params()
    X = np.random.default_rng(1).standard_normal((3, 7))
    assert_identical(looped.trace(params, X=X), unrolled.trace(params, X=X))


def test_the_gpu_module_writes_the_same_loop(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "5"))
    numpy_src = compile_file(path)
    cupy_src = compile_file(path, backend="cupy")
    compile(cupy_src, "cupy_module", "exec")
    assert "for i in range(4):" in cupy_src
    assert numpy_src.count("for i in") == cupy_src.count("for i in")
    deep = compile_file(DEEP, backend="cupy")   # 2000 params: _read_params tests them in a loop
    compile(deep, "deep_cupy", "exec")
    assert "type(array) is cp.ndarray" in deep and deep.count("\n") < 2000


def test_the_gpu_modules_hvp_loops_compute_what_numpy_computes(tmp_path: Path, monkeypatch) -> None:
    """On the CPU stand-in for CuPy, whose fused kernels run inside hvp's four loops."""
    from test_cupy_backend import _load_on_fake_cupy

    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "12"))
    cupy_src = compile_file(path, dtype="float64", backend="cupy")
    assert hvp_source(cupy_src).count("one iteration per instance") == 4
    gpu = _load_on_fake_cupy(cupy_src, "deep_cupy", monkeypatch)
    reference = load_module(compile_file(path, dtype="float64", loops=False), "deep_unrolled")
    params, inputs = reference.init_params(1), example_inputs(reference, seed=2)
    v = {k: np.random.default_rng(3).standard_normal(p.shape) for k, p in params.items()}
    want = reference.hvp(params, v, **inputs)
    got = gpu.hvp(params, v, **inputs)
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-12, atol=1e-14, err_msg=key)


def test_a_repeat_inside_a_repeated_layer_computes_the_same(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "nested", NESTED)
    assert assert_same_module_behaviour(path, dtype="float64")


def test_examples_with_repeat_compute_the_same() -> None:
    assert assert_same_module_behaviour(EXAMPLES / "stdlib_mlp.nn", dtype="float64")
    assert not assert_same_module_behaviour(EXAMPLES / "mlp.nn")   # repeat 2: too short to loop


def test_wrong_params_are_reported_as_in_the_unrolled_module(tmp_path: Path) -> None:
    """80 params: _read_params tests them in a loop over PARAMS, with the same outcome."""
    path = write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "40"))
    looped_src, looped, _, unrolled = both(path)
    assert "for array, (shape, _) in zip(arrays, PARAMS.values()):" in looped_src
    X = np.ones((2, 7), dtype=np.float32)
    for change in ({"h.3.W": np.ones((3, 3))}, {"h.3.W": None}):
        errors = []
        for module in (looped, unrolled):
            params = {**module.init_params(), **change}
            params = {k: v for k, v in params.items() if v is not None}
            with pytest.raises((TypeError, ValueError)) as info:
                module.value_and_grad(params, X=X)
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1]
    params = looped.init_params()
    params["h.2.b"] = params["h.2.b"].astype(np.float64)   # converted, as the unrolled module does
    assert_identical(looped.value_and_grad(params, X=X), unrolled.value_and_grad(params, X=X))


def test_predict_reuses_the_elaborated_graph(tmp_path: Path, monkeypatch) -> None:
    """Where train and eval mode are the same, a compile elaborates the file once."""
    elaborated = []
    real = compiler.elaborate_file
    monkeypatch.setattr(compiler, "elaborate_file", lambda *a, **k: elaborated.append(k.get("mode")) or real(*a, **k))
    compile_file(write_nn(tmp_path, "deep", DEEP_TEXT.replace("COUNT", "4")))
    assert elaborated == [None]
    elaborated.clear()
    compile_file(EXAMPLES / "dropout_mlp.nn")   # eval mode differs: one more elaboration, shared by forward and predict
    assert elaborated == [None, "eval"]


def test_a_residual_block_with_dropout_and_a_shared_input_loops_and_draws_the_same_masks(tmp_path: Path) -> None:
    """Each iteration draws its own mask, in the order the written-out module draws them; the
    gradient of ``ctx``, which every instance reads, is summed across the iterations."""
    path = write_nn(tmp_path, "res", RESIDUAL)
    source = compile_file(path, dtype="float64")
    vag = source[source.index("def value_and_grad("):source.index("def predict(")]
    assert "forward: one iteration per instance" in vag and "backward: one iteration per instance" in vag
    assert assert_same_module_behaviour(path, dtype="float64")


CARRIED_CHAIN = """
input X: float[N, 3]
param w: [3] = ones()
layer blk(x: [B, K]) -> [B, K] {
    return OP
}
h = repeat 4 blk(X)
output h
loss = sum(h * w)
minimize loss
"""


@pytest.mark.parametrize("op", ["leaky_relu(x, alpha=0.1)", "gelu(x)"])
def test_a_chain_that_reads_the_carried_value_again_reads_the_one_carried_in(tmp_path: Path, op: str) -> None:
    """leaky_relu is x + (alpha - 1) * min(x, 0): its last step reads x again, after the first
    has written the result, which in the loop has the carried value's name."""
    path = write_nn(tmp_path, "chain", CARRIED_CHAIN.replace("OP", op))
    assert assert_same_module_behaviour(path, dtype="float64")
    module = load_module(compile_file(path, dtype="float64"), "chain")
    X = np.array([[1.0, -2.0, 3.0]])
    want = X.copy()
    for _ in range(4):
        want = np.where(want > 0, want, 0.1 * want) if op.startswith("leaky") else \
            0.5 * want * (1 + np.tanh(np.sqrt(2 / np.pi) * (want + 0.044715 * want ** 3)))
    np.testing.assert_allclose(module.forward(module.init_params(), X=X)["h"], want, rtol=1e-14)


def test_a_loop_in_a_model_without_params_reads_none(tmp_path: Path) -> None:
    """No params, no _read_params in the module: the looped functions must not call it."""
    text = """
input X: float[N, 3]
layer blk(x: [B, K]) -> [B, K] {
    return tanh(x) + x
}
h = repeat 4 blk(X)
output h
loss = sum(h)
minimize loss
"""
    path = write_nn(tmp_path, "paramless", text)
    source = compile_file(path, dtype="float64")
    assert "for i in range(4):" in source and "_read_params" not in source
    assert assert_same_module_behaviour(path, dtype="float64")


def test_loops_whose_statements_need_each_other_are_written_out_not_scheduled_forever(tmp_path: Path) -> None:
    """hvp()'s passes over 7 rolled-and-tanh'd instances, then a roll outside the repeat, make
    a cycle among the loops and the statements between them: no order exists, and the
    function is written without loops (before, the schedule went round that cycle forever)."""
    from nncompile.schedule import Cycle, post_order

    with pytest.raises(Cycle):   # first, so that a schedule that cannot see one fails rather than hangs
        post_order(["a"], {"a": ["b"], "b": ["c"], "c": ["a"]}.__getitem__)
    assert post_order(["a"], {"a": ["b", "c"], "b": ["c"], "c": []}.__getitem__) == ["c", "b", "a"]
    text = """
input X: float[N, 2]
param P: [2, 2] = xavier()
param s: [2] = normal(1.0)
layer blk(x: [B, K], Q: [K, K]) -> [B, K] {
    t = concat(x[:, 1:], x[:, 0:1], axis=1)
    return tanh(t @ Q) + x
}
h = repeat 7 blk(X, P)
g = concat(h[:, 1:], h[:, 0:1], axis=1)
loss = sum(g * s)
minimize loss
"""
    path = write_nn(tmp_path, "cycle", text)
    assert assert_same_module_behaviour(path, dtype="float64")


def check_random_repeat_model(choices, directory: Path, name: str) -> None:
    """One model of tests/repeat_models.py: looped and unrolled modules the same bit for bit
    (forward, value_and_grad, hvp, three optimiser steps), no result changed by a later call or
    sharing memory with another, a param or an input, every result of the module's dtype, and
    the float64 module's values and gradients those of PyTorch's autograd."""
    from nncompile.optim import OPTIMIZERS, Optimizer
    from repeat_models import make_model, torch_model

    model = make_model(choices)
    optimizer = choices.choice(list(OPTIMIZERS))
    options = dict(input_grads=choices.chance(0.7), optimized=not choices.chance(0.15),
                   optimizer=Optimizer(optimizer, clip_norm=0.5) if choices.chance(0.3) else optimizer)
    path = write_nn(directory, f"{name}.nn", model.text)
    looped = load_module(compile_file(path, **options), f"{name}_looped")
    unrolled = load_module(compile_file(path, loops=False, **options), f"{name}_unrolled")
    params = looped.init_params(1)
    draw = np.random.default_rng(0)
    inputs, later = ({"X": draw.standard_normal((n, model.K)), "C": draw.standard_normal((n, model.K))} for n in (3, 5))
    first = calls(looped, params, inputs)
    assert_identical(first, calls(unrolled, params, inputs))
    returned = list(arrays_in(first["value_and_grad"])) + list(arrays_in(first["forward"]))
    kept = [a.copy() for a in returned]
    assert_identical(calls(looped, params, later), calls(unrolled, params, later))
    for array, copy in zip(returned, kept):
        assert np.array_equal(array, copy, equal_nan=True) and array.dtype == np.dtype(model.dtype)
    for a, b in itertools.combinations(list(arrays_in(first["value_and_grad"])), 2):
        assert not np.shares_memory(a, b)
    assert not any(np.shares_memory(a, b) for a in returned for b in [*params.values(), *inputs.values()])
    stepped = []
    for module in (looped, unrolled):
        p = module.init_params(2)
        opt_state = module.init_opt_state(p)
        outputs = [module.step(p, opt_state, 0.01, **(inputs, later)[k % 2]) for k in range(3)]
        stepped.append((p, tuple(outputs), {k: v for k, v in opt_state.items() if k != "_buffers"}))
    assert_identical(*stepped)
    torch = pytest.importorskip("torch")
    del torch
    reference = load_module(compile_file(path, dtype="float64", optimized=options["optimized"]), f"{name}_f64")
    params = reference.init_params(1)
    values, grads = reference.value_and_grad(params, **inputs)
    want_values, want_grads = torch_model(model, params, inputs)
    if not all(np.isfinite(v).all() for v in [*values.values(), *grads.values()]):
        return   # grown past float64 through the instances: nothing to compare
    for key, value in values.items():
        np.testing.assert_allclose(value, want_values[key], rtol=1e-9, atol=1e-11, err_msg=key)
    for key, grad in grads.items():
        np.testing.assert_allclose(grad, want_grads[key], rtol=1e-8, atol=1e-10, err_msg=key)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # a block that grows overflows some instances on
def test_seeded_random_repeat_blocks_loop_as_unrolled_and_match_torch(tmp_path: Path) -> None:
    for seed in range(12):
        check_random_repeat_model(RandomChoices(seed), tmp_path, f"seeded{seed}")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          derandomize=True)   # the same 50 each run, so that CI is reproducible
@given(data=st.data())
def test_random_repeat_blocks_loop_as_unrolled_and_match_torch(data) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        check_random_repeat_model(HypothesisChoices(data.draw), Path(directory), "drawn")


TRANSPOSED_KEPT = """
    const K = 2
    input X: float[N, K]
    input C: float[N, K]
    param P: [K, K] = xavier()
    layer blk0(x: [B, K], c: [B, K], Q: [K, K]) -> [B, K] {
        param M1: [K, K] = xavier()
        t0 = (M1 @ x.T).T
        t1 = tanh(t0)
        param W2: [K, K] = xavier()
        t2 = t1 @ W2
        return t2
    }
    h0 = repeat 3 blk0(X, C, P)
    output h0, h0.3.t1
    loss = sum(h0 * h0) / N + sum(h0.3.t1)
    minimize loss
"""


BATCHED_KEPT = """
    const K = 4
    input X: float[K, K, K, K]
    layer blk0(x: [K, K, K, K]) -> [K, K, K, K] {
        param W: [K, K] = xavier()
        t1 = transpose(x, [1, 0, 2, 3]) @ W
        return tanh(t1)
    }
    h0 = repeat 3 blk0(X)
    output h0, h0.3.t1
    loss = sum(h0 * h0) + sum(h0.3.t1)
    minimize loss
"""


@pytest.mark.parametrize("text", [TRANSPOSED_KEPT, BATCHED_KEPT], ids=["tanh", "batched_matmul"])
def test_a_kept_value_of_a_transpose_is_c_ordered_and_sums_as_in_the_loop(tmp_path: Path, text: str) -> None:
    """The last instance's t1, an output, is made from a transpose: numpy would make it in the
    transpose's layout (tanh's, and a matmul's of two batch axes) where the loop writes it into a
    C-ordered buffer, and sum(h0.3.t1) would add in another order (1 ulp apart in float32). The
    written-out module asks for C order."""
    path = write_nn(tmp_path, "kept.nn", text)
    looped, unrolled = (load_module(compile_file(path, dtype="float32", input_grads=False, loops=loops), f"kept{loops}")
                        for loops in (True, False))
    draw = np.random.default_rng(0)
    for _ in range(20):
        inputs = {name: draw.standard_normal([d if isinstance(d, int) else 5 for d in shape])
                  for name, (shape, _dtype) in looped.INPUTS.items()}
        values = [module.value_and_grad(module.init_params(2), **inputs)[0] for module in (looped, unrolled)]
        assert all(v["h0.3.t1"].flags.c_contiguous for v in values)
        assert values[0]["loss"].tobytes() == values[1]["loss"].tobytes()
