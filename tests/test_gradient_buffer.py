"""value_and_grad's param gradients live in one buffer laid out like the params
(nncompile/codegen/runtime.py GRADS, codegen/functions.py): what flat_grads returns, what
apply_update reads as it is, and what data-parallel training all-reduces. Each call makes a
new buffer, so nothing returned is shared with a later call; step, which returns no gradients,
keeps one of its own."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_nn

import nncompile
from nncompile.optim import OPTIMIZERS, Optimizer

NAMES = sorted(OPTIMIZERS)

# W's 6 entries and b's 3 are not multiples of a 64-byte line: the buffer has gaps.
MODEL = """
    input X: float[N, 3]
    input t: float[N, 3]
    param W: [3, 2] = normal(std=0.5)
    param V: [2, 3] = normal(std=0.5)
    param b: [3] = zeros()
    param unused: [2] = zeros()
    r = tanh(X @ W) @ V + b - t
    loss = 0.5 * mean(r ** 2) + 0.01 * sum(V ** 2)
    minimize loss
"""


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nn(tmp_path_factory.mktemp("grads"), "model.nn", MODEL)


def load(path: Path, dtype: str = "float64", optimizer: str | Optimizer | None = None, **options: Any) -> Any:
    source = nncompile.compile_file(path, dtype=dtype, optimizer=optimizer, **options)
    return nncompile.load_module(source, f"grads_{dtype}_{getattr(optimizer, 'name', optimizer)}")


def data(seed: int, dtype: str = "float64", n: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((n, 3)).astype(dtype), "t": rng.standard_normal((n, 3)).astype(dtype)}


def layout_of(arrays: dict[str, np.ndarray]) -> list[int]:
    """Each array's offset in elements from the start of the buffer it is a view of."""
    base = next(iter(arrays.values())).base
    origin = base.__array_interface__["data"][0]
    return [(a.__array_interface__["data"][0] - origin) // a.itemsize for a in arrays.values()]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_param_gradients_are_views_of_one_buffer_laid_out_like_the_params(model_path: Path, dtype: str) -> None:
    module = load(model_path, dtype)
    params = module.init_params(0)
    _, grads = module.value_and_grad(params, **data(0, dtype))
    param_grads = {k: grads[k] for k in module.PARAMS}
    buffer = module.flat_grads(grads)
    assert buffer is not None and buffer.ndim == 1 and buffer.dtype == module.DTYPE and buffer.flags.c_contiguous
    assert buffer.shape == params["W"].base.shape
    assert all(g.base is buffer and g.flags.c_contiguous for g in param_grads.values())
    assert layout_of(param_grads) == layout_of(params), "each gradient sits where init_params puts its param"
    spread = np.zeros_like(buffer)
    for g, start in zip(param_grads.values(), layout_of(params)):
        spread[start:start + g.size] = g.ravel()
    np.testing.assert_array_equal(buffer, spread)   # the gaps between them hold zeros
    np.testing.assert_array_equal(grads["unused"], np.zeros(2))


def test_the_gradients_are_those_worked_out_by_hand(model_path: Path) -> None:
    """Whether written into its view or copied there, each gradient is the right one."""
    module = load(model_path)
    params = module.init_params(0)
    params["b"][...] = [0.1, -0.2, 0.3]
    X, t = data(1).values()
    W, V, b = params["W"], params["V"], params["b"]
    h = np.tanh(X @ W)
    r = h @ V + b - t
    dr = r / r.size
    dh = dr @ V.T
    expected = {"W": X.T @ (dh * (1 - h * h)), "V": h.T @ dr + 0.02 * V, "b": dr.sum(axis=0), "unused": np.zeros(2)}
    outputs, grads = module.value_and_grad(params, X=X, t=t)
    np.testing.assert_allclose(outputs["loss"], 0.5 * np.mean(r ** 2) + 0.01 * np.sum(V ** 2), rtol=1e-13)
    for k, want in expected.items():
        np.testing.assert_allclose(grads[k], want, rtol=1e-12, atol=1e-15, err_msg=k)


def test_a_later_call_makes_a_new_buffer_and_leaves_the_earlier_gradients_alone(model_path: Path) -> None:
    module = load(model_path)
    params = module.init_params(0)
    _, first = module.value_and_grad(params, **data(0))
    kept = {k: v.copy() for k, v in first.items()}
    buffer = module.flat_grads(first)
    _, second = module.value_and_grad(params, **data(1))
    assert module.flat_grads(second) is not buffer
    assert module.flat_grads(first) is None, "only the latest call's gradients are the module's buffer"
    workspace = [b for buffers in module._VALUE_AND_GRAD_BUFFERS.values() for b in buffers]
    for k, g in first.items():
        np.testing.assert_array_equal(g, kept[k])
        assert not np.shares_memory(g, second[k])
        assert not any(np.shares_memory(g, b) for b in [*workspace, *params.values()]), k


@pytest.mark.parametrize("name", NAMES)
def test_step_writes_into_one_gradient_buffer_of_its_own_that_no_caller_sees(model_path: Path, name: str) -> None:
    """step returns no gradients, so it keeps one buffer for them, made by its first call: the
    gradients value_and_grad returned before or after a step stay the caller's, and the steps
    compute what value_and_grad and apply_update compute, bit for bit."""
    module = load(model_path, optimizer=name)
    stepped, stepped_opt = laid_out(module)
    by_hand, by_hand_opt = laid_out(module)
    _, before = module.value_and_grad(stepped, **data(50))
    kept = {k: v.copy() for k, v in before.items()}
    buffers = []   # the buffer each step wrote its gradients into
    for seed in range(4):
        outputs = module.step(stepped, stepped_opt, 0.05, **data(seed))
        buffers.append(module._LATEST_GRADS[0][0].base)
        _, grads = module.value_and_grad(by_hand, **data(seed))
        module.apply_update(by_hand, grads, by_hand_opt, 0.05)
        for k in module.PARAMS:
            assert stepped[k].tobytes() == by_hand[k].tobytes(), (seed, k)
        _, after = module.value_and_grad(stepped, **data(seed))
        kept_after = {k: v.copy() for k, v in after.items()}
        module.step(stepped, stepped_opt, 0.05, **data(seed + 10))
        module.step(by_hand, by_hand_opt, 0.05, **data(seed + 10))
        for k, g in after.items():
            np.testing.assert_array_equal(g, kept_after[k], err_msg=k)
        assert not any(np.shares_memory(v, after[k]) for v in outputs.values() for k in after)
    assert all(b is buffers[0] for b in buffers), "one buffer for every step"
    for k, g in before.items():
        np.testing.assert_array_equal(g, kept[k], err_msg=k)


def test_a_step_that_raises_leaves_value_and_grad_its_own_buffers(model_path: Path) -> None:
    module = load(model_path, optimizer="sgd")
    params, opt_state = laid_out(module)
    module.step(params, opt_state, 0.05, **data(0))
    with pytest.raises(ValueError):
        module.step(params, opt_state, 0.05, X=np.zeros((8, 4)), t=np.zeros((8, 3)))
    _, grads = module.value_and_grad(params, **data(1))
    kept = {k: v.copy() for k, v in grads.items()}
    module.step(params, opt_state, 0.05, **data(2))
    for k, g in grads.items():
        np.testing.assert_array_equal(g, kept[k], err_msg=k)


def test_gradients_of_their_own_are_not_taken_for_the_buffer(model_path: Path) -> None:
    module = load(model_path)
    _, grads = module.value_and_grad(module.init_params(0), **data(0))
    assert module.flat_grads({k: v.copy() for k, v in grads.items()}) is None
    swapped = dict(grads, W=grads["V"].T, V=grads["W"].T)
    assert module.flat_grads(swapped) is None


def laid_out(module: Any) -> tuple[dict, dict]:
    """Params and optimiser state as init_params and init_opt_state make them: one buffer each."""
    params = module.init_params(0)
    return params, module.init_opt_state(params)


def arrays_of_their_own(module: Any) -> tuple[dict, dict]:
    """The same values, each param and slot an array of its own (as loaded from a file)."""
    params = {k: v.copy() for k, v in module.init_params(0).items()}
    opt_state = {k: {n: a.copy() for n, a in v.items()} if isinstance(v, dict) else v
                 for k, v in module.init_opt_state(params).items()}
    return params, opt_state


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("clip_norm", [None, 0.05])
@pytest.mark.parametrize("name", NAMES)
def test_the_update_reads_the_buffer_as_an_all_reduce_left_it(model_path: Path, name: str, clip_norm: float | None,
                                                              dtype: str) -> None:
    """Two workers' gradients summed in the buffer (as MPI_Allreduce leaves it) step the params
    as the summed gradients handed over as arrays of their own do, bit for bit, laid out in one
    buffer or not. With clipping the norm comes from the one buffer where there is one, else
    param by param: equal up to rounding."""
    module = load(model_path, dtype, Optimizer(name, clip_norm=clip_norm))
    reduced, reduced_opt = laid_out(module)
    own, own_opt = laid_out(module)
    apart, apart_opt = arrays_of_their_own(module)
    for seed in range(4):
        _, other = module.value_and_grad(reduced, **data(100 + seed, dtype))
        other_buffer = module.flat_grads(other).copy()
        _, grads = module.value_and_grad(reduced, **data(seed, dtype))
        summed = {k: grads[k] + other[k] for k in module.PARAMS}
        module.flat_grads(grads)[...] += other_buffer   # the all-reduce, in place
        module.apply_update(reduced, grads, reduced_opt, 0.05)
        module.apply_update(own, summed, own_opt, 0.05)
        module.apply_update(apart, summed, apart_opt, 0.05)
        for k in module.PARAMS:
            assert own[k].tobytes() == apart[k].tobytes(), (seed, k)
            if clip_norm is None:
                assert reduced[k].tobytes() == own[k].tobytes(), (seed, k)
            else:
                np.testing.assert_allclose(reduced[k], own[k], rtol=1e-5 if dtype == "float32" else 1e-12,
                                           atol=1e-7, err_msg=k)
    assert reduced_opt["_buffers"][2] is not None and apart_opt["_buffers"][2] is None
    assert not reduced_opt["_buffers"][2][1].any(), "value_and_grad's buffer was read where it is, not copied"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_a_step_with_the_buffer_equals_a_step_param_by_param_with_clipping(model_path: Path, name: str,
                                                                         dtype: str) -> None:
    """step (value_and_grad's buffer) with params and slots in one buffer each, against params
    and slots that are arrays of their own: bit for bit, the clipping norm included."""
    module = load(model_path, dtype, Optimizer(name, clip_norm=0.05))
    flat, flat_opt = laid_out(module)
    apart, apart_opt = arrays_of_their_own(module)
    for seed in range(5):
        module.step(flat, flat_opt, 0.05, **data(seed, dtype))
        module.step(apart, apart_opt, 0.05, **data(seed, dtype))
        for k in module.PARAMS:
            assert flat[k].tobytes() == apart[k].tobytes(), (seed, k)
            for slot in module.SLOTS:
                assert flat_opt[slot][k].tobytes() == apart_opt[slot][k].tobytes(), (seed, slot, k)
    assert flat_opt["_buffers"][2] is not None and apart_opt["_buffers"][2] is None


def test_a_deep_model_indexes_its_gradient_views(tmp_path: Path) -> None:
    """More than 16 params: the views are indexed, not named, and still one buffer."""
    path = write_nn(tmp_path, "deep.nn", """
        input X: float[N, 4]
        layer block(x: [B, 4]) -> [B, 4] {
            param W: [4, 4] = normal(std=0.5)
            param b: [4] = zeros()
            return tanh(x @ W + b)
        }
        h = repeat 12 block(X)
        loss = sum(h ** 2)
        minimize loss
    """)
    module = load(path)
    params = module.init_params(0)
    X = np.random.default_rng(0).standard_normal((5, 4))
    _, grads = module.value_and_grad(params, X=X)
    buffer = module.flat_grads(grads)
    assert len(module.PARAMS) == 24 and buffer is not None
    assert all(grads[k].base is buffer for k in module.PARAMS)
    assert layout_of({k: grads[k] for k in module.PARAMS}) == layout_of(params)
    plain = nncompile.load_module(nncompile.compile_file(path, dtype="float64", backend="numpy", optimized=False),
                                  "deep_plain")
    for k, g in plain.value_and_grad(params, X=X)[1].items():
        np.testing.assert_allclose(grads[k], g, rtol=1e-11, atol=1e-14, err_msg=k)


def test_scalar_params_keep_gradients_of_their_own(tmp_path: Path) -> None:
    """A scalar param's gradient is a numpy scalar, as numpy's ufuncs return one: no buffer."""
    path = write_nn(tmp_path, "scalar.nn", """
        input x: float[N]
        param a: [] = constant(value=0.5)
        param w: [2] = constant(value=1.0)
        loss = sum((a * x) ** 2) + sum(w ** 2)
        minimize loss
    """)
    module = load(path, optimizer="adam")
    params = module.init_params(0)
    _, grads = module.value_and_grad(params, x=np.arange(3.0))
    assert isinstance(grads["a"], np.generic) and module.flat_grads(grads) is None
    np.testing.assert_allclose(grads["a"], 2 * 0.5 * np.sum(np.arange(3.0) ** 2))
    np.testing.assert_allclose(grads["w"], [2.0, 2.0])
    module.step(params, module.init_opt_state(params), 0.1, x=np.arange(3.0))
