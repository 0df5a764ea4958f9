"""The compiled optimisers (nncompile/optim.py): each one matches its textbook update rule,
converges on a convex least-squares problem, works in place, and is emitted
deterministically into a module that imports only numpy."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_nn

import nncompile
from nncompile.errors import NNError
from nncompile.optim import OPTIMIZERS, Optimizer, emit_optimizer

# 0.5 * mean squared error of a linear model with a bias: convex, with a closed-form optimum.
LEAST_SQUARES = """
    input X: float[N, 3]
    input t: float[N, 2]
    param W: [3, 2] = normal(std=0.5)
    param b: [2] = zeros()
    r = X @ W + b - t
    loss = 0.5 * mean(r ** 2)
    minimize loss
"""

NAMES = sorted(OPTIMIZERS)


@pytest.fixture(scope="module")
def least_squares_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_nn(tmp_path_factory.mktemp("optim"), "least_squares.nn", LEAST_SQUARES)


def compiled(path: Path, optimizer: str | Optimizer, dtype: str = "float64") -> Any:
    name = optimizer if isinstance(optimizer, str) else optimizer.name
    return nncompile.load_module(nncompile.compile_file(path, dtype=dtype, optimizer=optimizer), f"ls_{name}")


def problem(seed: int = 0, n: int = 64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    t = X @ rng.standard_normal((3, 2)) + rng.standard_normal(2) + 0.1 * rng.standard_normal((n, 2))
    return {"X": X, "t": t}


def optimal_loss(data: dict[str, np.ndarray]) -> float:
    A = np.hstack([data["X"], np.ones((len(data["X"]), 1))])
    solution = np.linalg.lstsq(A, data["t"], rcond=None)[0]
    return 0.5 * float(np.mean((A @ solution - data["t"]) ** 2))


# ---- the textbook rules, written out independently of the emitter -------------------------

HYPER = {
    "sgd": {},
    "momentum": {"momentum": 0.9},
    "nesterov": {"momentum": 0.9},
    "adagrad": {"eps": 1e-8},
    "rmsprop": {"decay_rate": 0.99, "eps": 1e-8},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "adamw": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
}


def textbook_step(name: str, p: np.ndarray, g: np.ndarray, mem: dict[str, np.ndarray], lr: float, t: int,
                  h: dict[str, float]) -> np.ndarray:
    """One update of a single param as the CS231n notes and the papers write it; returns the new p."""
    if name == "sgd":
        return p - lr * g
    if name == "momentum":
        mem["v"] = h["momentum"] * mem["v"] - lr * g
        return p + mem["v"]
    if name == "nesterov":                     # CS231n: x += -mu * v_prev + (1 + mu) * v
        v_prev = mem["v"].copy()
        mem["v"] = h["momentum"] * mem["v"] - lr * g
        return p - h["momentum"] * v_prev + (1 + h["momentum"]) * mem["v"]
    if name == "adagrad":
        mem["cache"] = mem["cache"] + g ** 2
        return p - lr * g / (np.sqrt(mem["cache"]) + h["eps"])
    if name == "rmsprop":
        mem["cache"] = h["decay_rate"] * mem["cache"] + (1 - h["decay_rate"]) * g ** 2
        return p - lr * g / (np.sqrt(mem["cache"]) + h["eps"])
    if name == "adamw":                        # Loshchilov & Hutter: decay the weights, then Adam
        p = p - lr * h["weight_decay"] * p
    mem["m"] = h["beta1"] * mem["m"] + (1 - h["beta1"]) * g
    mem["v"] = h["beta2"] * mem["v"] + (1 - h["beta2"]) * g ** 2
    m_hat = mem["m"] / (1 - h["beta1"] ** t)
    v_hat = mem["v"] / (1 - h["beta2"] ** t)
    return p - lr * m_hat / (np.sqrt(v_hat) + h["eps"])


def textbook_run(name: str, params: dict[str, np.ndarray], grads_seq: list[dict[str, np.ndarray]],
                 lrs: list[float], h: dict[str, float], clip_norm: float | None = None) -> dict[str, np.ndarray]:
    params = {k: v.copy() for k, v in params.items()}
    memory = {k: {"v": np.zeros_like(v), "m": np.zeros_like(v), "cache": np.zeros_like(v)} for k, v in params.items()}
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
        if clip_norm is not None:
            norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
            if norm > clip_norm:
                grads = {k: g * (clip_norm / norm) for k, g in grads.items()}
        for k in params:
            params[k] = textbook_step(name, params[k], grads[k], memory[k], lr, t, h)
    return params


def random_grads(seed: int, steps: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"W": rng.standard_normal((3, 2)), "b": rng.standard_normal(2)} for _ in range(steps)]


@pytest.mark.parametrize("name", NAMES)
def test_one_step_matches_the_textbook_formula(name: str, least_squares_path: Path) -> None:
    module = compiled(least_squares_path, name)
    params = module.init_params(3)
    opt_state = module.init_opt_state(params)
    grads = random_grads(1, steps=1)[0]
    before = {k: v.copy() for k, v in params.items()}
    module.apply_update(params, grads, opt_state, 0.05)
    expected = textbook_run(name, before, [grads], [0.05], HYPER[name])
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12, atol=1e-15, err_msg=f"{name}: {k}")
    assert opt_state["step"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_several_steps_with_a_changing_rate_match_the_textbook(name: str, least_squares_path: Path) -> None:
    """The state (velocity, caches, moments, the step count for bias correction) carries over."""
    module = compiled(least_squares_path, name)
    params = module.init_params(0)
    opt_state = module.init_opt_state(params)
    grads_seq, lrs = random_grads(2), [0.1, 0.05, 0.02, 0.01]
    expected = textbook_run(name, params, grads_seq, lrs, HYPER[name])
    for grads, lr in zip(grads_seq, lrs):
        module.apply_update(params, grads, opt_state, lr)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12, atol=1e-15, err_msg=f"{name}: {k}")


TORCH = {   # each optimiser as torch.optim makes it, with the hyperparameters of HYPER
    "sgd": lambda torch, ps, lr: torch.optim.SGD(ps, lr=lr),
    "momentum": lambda torch, ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9),
    "nesterov": lambda torch, ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9, nesterov=True),
    "adagrad": lambda torch, ps, lr: torch.optim.Adagrad(ps, lr=lr, eps=1e-8),
    "rmsprop": lambda torch, ps, lr: torch.optim.RMSprop(ps, lr=lr, alpha=0.99, eps=1e-8),
    "adam": lambda torch, ps, lr: torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.999), eps=1e-8),
    "adamw": lambda torch, ps, lr: torch.optim.AdamW(ps, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
}


@pytest.mark.parametrize("name", NAMES)
def test_several_steps_match_torch_optim_in_float64(name: str, least_squares_path: Path) -> None:
    """An oracle that is not ours: torch.optim fed the same gradients (a constant rate, as
    torch's momentum keeps v without lr, so only a constant rate makes the two the same).
    Both the read-only apply_update and step's own-gradients update are held to it."""
    torch = pytest.importorskip("torch")
    module = compiled(least_squares_path, name)
    params = module.init_params(0)
    leaves = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    reference = TORCH[name](torch, list(leaves.values()), 0.05)
    opt_state = module.init_opt_state(params)
    for grads in random_grads(8, steps=5):
        module.apply_update(params, grads, opt_state, 0.05)
        for k, leaf in leaves.items():
            leaf.grad = torch.from_numpy(grads[k].copy())
        reference.step()
    for k, leaf in leaves.items():
        np.testing.assert_allclose(params[k], leaf.detach().numpy(), rtol=1e-12, atol=1e-15, err_msg=f"{name}: {k}")
    data = problem(3, n=16)   # step: the gradients of value_and_grad, the update's own scratch
    for _ in range(3):
        module.step(params, opt_state, 0.05, **data)
        grads = {k: torch.from_numpy(v.copy()) for k, v in module.value_and_grad(
            {k: leaf.detach().numpy() for k, leaf in leaves.items()}, **data)[1].items() if k in leaves}
        for k, leaf in leaves.items():
            leaf.grad = grads[k]
        reference.step()
    for k, leaf in leaves.items():
        np.testing.assert_allclose(params[k], leaf.detach().numpy(), rtol=1e-12, atol=1e-15, err_msg=f"{name}: {k}")


@pytest.mark.parametrize("name", NAMES)
def test_clipping_by_global_norm(name: str, least_squares_path: Path) -> None:
    module = compiled(least_squares_path, Optimizer(name, clip_norm=0.5))
    params = module.init_params(0)
    opt_state = module.init_opt_state(params)
    grads_seq = random_grads(3)   # global norms around 3: every step is clipped
    originals = [{k: g.copy() for k, g in grads.items()} for grads in grads_seq]
    expected = textbook_run(name, params, grads_seq, [0.1] * 4, HYPER[name], clip_norm=0.5)
    for grads in grads_seq:
        module.apply_update(params, grads, opt_state, 0.1)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12, atol=1e-15, err_msg=f"{name}: {k}")
    for grads, original in zip(grads_seq, originals):   # the caller's gradients are never written
        for k in grads:
            np.testing.assert_array_equal(grads[k], original[k])


def test_clipping_leaves_small_gradients_alone(least_squares_path: Path) -> None:
    clipped, plain = compiled(least_squares_path, Optimizer("sgd", clip_norm=100.0)), compiled(least_squares_path, "sgd")
    grads = random_grads(4, steps=1)[0]
    a, b = clipped.init_params(0), plain.init_params(0)
    clipped.apply_update(a, grads, clipped.init_opt_state(a), 0.1)
    plain.apply_update(b, grads, plain.init_opt_state(b), 0.1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_hyperparameters_compiled_in_and_overridden_per_call(least_squares_path: Path) -> None:
    module = compiled(least_squares_path, Optimizer("adam", {"beta1": 0.5, "eps": 1e-6}))
    assert module.HYPERPARAMS == {"beta1": 0.5, "beta2": 0.999, "eps": 1e-6, "clip_norm": None}
    grads_seq = random_grads(5, steps=2)
    params = module.init_params(0)
    expected = textbook_run("adam", params, grads_seq, [0.1, 0.1], {"beta1": 0.5, "beta2": 0.999, "eps": 1e-6})
    opt_state = module.init_opt_state(params)
    for grads in grads_seq:
        module.apply_update(params, grads, opt_state, 0.1)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12)
    params = module.init_params(0)
    expected = textbook_run("adam", params, grads_seq, [0.1, 0.1], {"beta1": 0.8, "beta2": 0.9, "eps": 1e-6})
    opt_state = module.init_opt_state(params)
    for grads in grads_seq:
        module.apply_update(params, grads, opt_state, 0.1, beta1=0.8, beta2=0.9)
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12)


# ---- convergence on a convex problem --------------------------------------------------------

RATES = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.5, "rmsprop": 0.01, "adam": 0.05,
         "adamw": 0.05}


@pytest.mark.parametrize("name", NAMES)
def test_converges_on_least_squares(name: str, least_squares_path: Path) -> None:
    spec = Optimizer("adamw", {"weight_decay": 1e-4}) if name == "adamw" else name
    module = compiled(least_squares_path, spec)
    data = problem()
    best = optimal_loss(data)
    params = module.init_params(0)
    opt_state = module.init_opt_state(params)
    start = float(module.forward(params, **data)["loss"])
    lr = RATES[name]
    for i in range(600):
        # a decaying rate lets the adaptive methods settle instead of hovering at a fixed step size
        module.step(params, opt_state, lr / (1 + i / 100) if name in ("rmsprop", "adam", "adamw") else lr, **data)
    final = float(module.forward(params, **data)["loss"])
    assert final - best < 1e-6 * (start - best), f"{name}: loss {final} vs optimum {best} (started at {start})"


@pytest.mark.parametrize("clip_norm", [None, 0.05])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_step_is_value_and_grad_then_apply_update(name: str, dtype: str, clip_norm: float | None,
                                                  least_squares_path: Path) -> None:
    """Bit for bit, though step's update takes its own gradient buffer as its scratch and
    apply_update a buffer of its own."""
    module = compiled(least_squares_path, Optimizer(name, clip_norm=clip_norm), dtype=dtype)
    a, b = module.init_params(0), module.init_params(0)
    sa, sb = module.init_opt_state(a), module.init_opt_state(b)
    for seed in range(3):
        data = {k: v.astype(dtype) for k, v in problem(seed, n=16).items()}
        outputs = module.step(a, sa, 0.1, **data)
        expected_outputs, grads = module.value_and_grad(b, **data)
        module.apply_update(b, grads, sb, 0.1)
        assert float(outputs["loss"]) == float(expected_outputs["loss"])
    for k in a:
        assert a[k].tobytes() == b[k].tobytes()
        for slot in module.SLOTS:
            assert sa[slot][k].tobytes() == sb[slot][k].tobytes()


def test_step_writes_over_no_gradients_but_its_own(least_squares_path: Path) -> None:
    """Gradients a caller got from value_and_grad stay as they were through later steps."""
    module = compiled(least_squares_path, "adam", dtype="float32")
    params = module.init_params(0)
    opt_state = module.init_opt_state(params)
    data = {k: v.astype(np.float32) for k, v in problem(0, n=8).items()}
    _, grads = module.value_and_grad(params, **data)
    kept = {k: v.copy() for k, v in grads.items()}
    for _ in range(3):
        module.step(params, opt_state, 0.1, **data)
    for k, g in grads.items():
        np.testing.assert_array_equal(g, kept[k])


@pytest.mark.parametrize("name", NAMES)
def test_a_kernel_that_may_take_its_gradient_as_scratch_computes_the_same_with_it(
        name: str, least_squares_path: Path) -> None:
    """_w_may_be_g holds where it says: the kernel run with w = g gives the same bits as with
    a scratch of its own (and it says so for every optimiser but adagrad and rmsprop)."""
    from nncompile.optim import _w_may_be_g

    d = OPTIMIZERS[name]
    assert _w_may_be_g(d.kernel) == (name not in ("adagrad", "rmsprop"))
    if not _w_may_be_g(d.kernel):
        return
    kernel = getattr(compiled(least_squares_path, name, dtype="float32"), f"_{name}_update")
    rng = np.random.default_rng(7)
    start = [rng.standard_normal(100).astype(np.float32) for _ in range(2)]   # p, g
    start += [rng.random(100).astype(np.float32) for _ in d.slots]            # slots: squares are >= 0
    constants = [float(c) for c in rng.uniform(0.01, 0.9, len(d.kernel_args))]
    apart, shared = [a.copy() for a in start], [a.copy() for a in start]
    kernel(*apart[:1], apart[1], *apart[2:], np.empty_like(apart[1]), *constants)
    kernel(*shared[:1], shared[1], *shared[2:], shared[1], *constants)
    for x, y in zip(apart[:1] + apart[2:], shared[:1] + shared[2:]):   # p and the slots
        assert x.tobytes() == y.tobytes()


def test_float32_adam_steps_where_the_square_of_the_gradient_overflows(least_squares_path: Path) -> None:
    """g = 3e19 in float32: g * g overflows, (1 - beta1) * g squared does not, and the first
    Adam step moves each param by lr against the sign of its gradient, as in float64."""
    module = compiled(least_squares_path, "adam", dtype="float32")
    params = module.init_params(0)
    before = {k: v.copy() for k, v in params.items()}
    grads = {k: np.full(v.shape, 3e19, dtype=np.float32) * np.where(np.arange(v.size) % 2, 1, -1).reshape(v.shape)
             for k, v in params.items()}
    module.apply_update(params, grads, module.init_opt_state(params), 0.01)
    expected = textbook_run("adam", {k: v.astype(np.float64) for k, v in before.items()},
                            [{k: g.astype(np.float64) for k, g in grads.items()}], [0.01], HYPER["adam"])
    for k in params:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-6, atol=1e-6, err_msg=k)
        assert np.all(np.isfinite(params[k]))


# ---- in place, dtype, state --------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_updates_params_and_state_in_place_and_keeps_float32(name: str, least_squares_path: Path) -> None:
    module = compiled(least_squares_path, name, dtype="float32")
    params = module.init_params(0)
    arrays = dict(params)
    opt_state = module.init_opt_state(params)
    slots = {slot: dict(opt_state[slot]) for slot in module.SLOTS}
    data = {k: v.astype(np.float32) for k, v in problem(2, n=8).items()}
    before = {k: v.copy() for k, v in params.items()}
    module.step(params, opt_state, np.float64(0.01), **data)
    for k, array in params.items():
        assert array is arrays[k], "params must be updated in place"
        assert array.dtype == np.float32
        assert not np.array_equal(array, before[k])
    for slot, table in slots.items():
        for k, array in opt_state[slot].items():
            assert array is table[k] and array.dtype == np.float32


# ---- one buffer for every param ---------------------------------------------------------------

def unlaid(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same values, each in an array of its own (as np.load or a user's code gives them)."""
    return {k: v.copy() for k, v in group.items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("clip_norm", [None, 0.05])
@pytest.mark.parametrize("name", NAMES)
def test_the_one_buffer_update_equals_the_update_param_by_param_bit_for_bit(
        name: str, clip_norm: float | None, dtype: str, least_squares_path: Path) -> None:
    module = compiled(least_squares_path, Optimizer(name, clip_norm=clip_norm), dtype=dtype)
    flat = module.init_params(0)
    flat_opt = module.init_opt_state(flat)
    apart = unlaid(flat)
    apart_opt = {k: unlaid(v) if isinstance(v, dict) else v for k, v in module.init_opt_state(apart).items()}
    for seed in range(6):
        data = {k: v.astype(dtype) for k, v in problem(seed, n=16).items()}
        module.step(flat, flat_opt, 0.05 / (seed + 1), **data)
        module.step(apart, apart_opt, 0.05 / (seed + 1), **data)
    assert flat_opt["_buffers"][2] is not None, "init_params and init_opt_state made one buffer each"
    assert apart_opt["_buffers"][2] is None, "arrays of their own are updated one by one"
    for k in flat:
        assert flat[k].tobytes() == apart[k].tobytes()
        for slot in module.SLOTS:
            assert flat_opt[slot][k].tobytes() == apart_opt[slot][k].tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", NAMES)
def test_the_update_block_by_block_equals_the_update_param_by_param_bit_for_bit(
        name: str, dtype: str, tmp_path: Path) -> None:
    """A buffer larger than _BLOCK is updated in blocks, the last first; blocks cut across
    params (160,400 floats: W is 400 x 400), and each float is updated as it is alone."""
    path = write_nn(tmp_path, "wide.nn", LEAST_SQUARES.replace("[N, 3]", "[N, 400]").replace("[3, 2]", "[400, 400]")
                    .replace("[N, 2]", "[N, 400]").replace("[2]", "[400]"))
    module = nncompile.load_module(nncompile.compile_file(path, dtype=dtype, optimizer=name), f"wide_{name}")
    flat = module.init_params(0)
    flat_opt = module.init_opt_state(flat)
    apart = unlaid(flat)
    apart_opt = {k: unlaid(v) if isinstance(v, dict) else v for k, v in module.init_opt_state(apart).items()}
    kernel, calls = getattr(module, f"_{name}_update"), []
    setattr(module, f"_{name}_update", lambda p, *rest: calls.append(p.size) or kernel(p, *rest))
    rng = np.random.default_rng(1)
    for seed in range(3):
        data = {k: rng.standard_normal((4, 400)).astype(dtype) for k in ("X", "t")}
        module.step(flat, flat_opt, 0.05 / (seed + 1), **data)
        module.step(apart, apart_opt, 0.05 / (seed + 1), **data)
    blocks = -(-160_400 // module._BLOCK)
    assert blocks >= 3 and calls[:blocks] == [160_400 - (blocks - 1) * module._BLOCK] + [module._BLOCK] * (blocks - 1)
    assert calls[blocks:blocks + 2] == [160_000, 400], "arrays of their own are updated one by one, whole"
    for k in flat:
        assert flat[k].tobytes() == apart[k].tobytes()
        for slot in module.SLOTS:
            assert flat_opt[slot][k].tobytes() == apart_opt[slot][k].tobytes()


def test_init_params_are_aligned_views_of_one_buffer(least_squares_path: Path) -> None:
    params = compiled(least_squares_path, "adam").init_params(0)
    buffer = params["W"].base
    assert buffer is not None and all(v.base is buffer and v.flags.c_contiguous for v in params.values())
    assert all(v.__array_interface__["data"][0] % 64 == buffer.__array_interface__["data"][0] % 64
               for v in params.values()), "each param starts on a 64-byte boundary of the buffer"


def test_a_param_replaced_by_another_array_is_the_one_updated(least_squares_path: Path) -> None:
    """The one-buffer path must never update a buffer the caller no longer uses."""
    module = compiled(least_squares_path, "sgd")
    params = module.init_params(0)
    opt_state = module.init_opt_state(params)
    data = problem(0, n=8)
    module.step(params, opt_state, 0.1, **data)
    old_W = params["W"]
    params["W"] = replacement = old_W.copy()
    kept = old_W.copy()
    grads = module.value_and_grad(params, **data)[1]
    module.apply_update(params, grads, opt_state, 0.1)
    assert params["W"] is replacement
    np.testing.assert_array_equal(replacement, kept - 0.1 * grads["W"])
    np.testing.assert_array_equal(old_W, kept)   # the buffer behind the old view is left alone


@pytest.mark.parametrize("copy_of", ["deepcopy", "pickle"])
def test_a_copy_of_params_and_state_is_stepped_as_itself(copy_of: str, least_squares_path: Path) -> None:
    """A deep copy or a pickle keeps which arrays are the same object but not which are views
    of which: the copy must not update the buffers the originals were found behind."""
    import copy
    import pickle

    module = compiled(least_squares_path, "adam")
    params = module.init_params(0)
    opt_state = module.init_opt_state(params)
    data = problem(0, n=8)
    module.step(params, opt_state, 0.1, **data)
    twin = copy.deepcopy((params, opt_state)) if copy_of == "deepcopy" else pickle.loads(pickle.dumps((params, opt_state)))
    module.step(params, opt_state, 0.1, **data)
    module.step(*twin, 0.1, **data)
    for k in params:
        assert twin[0][k].tobytes() == params[k].tobytes()


@pytest.mark.parametrize("name", NAMES)
def test_a_model_without_params_gets_an_empty_optimiser_state(name: str, tmp_path: Path) -> None:
    path = write_nn(tmp_path, "no_params.nn", """
        input x = 2
        loss = x * x
        minimize loss
    """)
    module = compiled(path, name)
    opt_state = module.init_opt_state(module.init_params(0))
    assert all(opt_state[slot] == {} for slot in module.SLOTS)
    module.step({}, opt_state, 0.1, x=np.float64(2.0))
    assert opt_state["step"] == 1


def test_the_update_does_not_write_what_value_and_grad_returned(least_squares_path: Path) -> None:
    module = compiled(least_squares_path, "adam")
    params = module.init_params(0)
    opt_state = module.init_opt_state(params)
    outputs, grads = module.value_and_grad(params, **problem(0, n=8))
    kept = {k: v.copy() for k, v in grads.items()}
    for _ in range(2):
        module.apply_update(params, grads, opt_state, 0.1)
    for k, g in grads.items():
        np.testing.assert_array_equal(g, kept[k])
        assert not any(np.shares_memory(g, b) for b in opt_state["_buffers"][2][:-1])


def test_init_opt_state_layout(least_squares_path: Path) -> None:
    module = compiled(least_squares_path, "adam")
    params = module.init_params(0)
    opt_state = module.init_opt_state(params)
    assert module.OPTIMIZER == "adam" and module.SLOTS == ("m", "v") and module.TRAINABLE == ("W", "b")
    assert opt_state["step"] == 0 and set(opt_state) == {"step", "m", "v"}
    assert all(np.array_equal(opt_state["m"][k], np.zeros_like(params[k])) for k in params)


def test_step_passes_model_state_through(tmp_path: Path) -> None:
    """A model with running statistics: step returns (outputs, new_state) like value_and_grad."""
    path = write_nn(tmp_path, "bn.nn", """
        input X: float[N, 2]
        input t: float[N, 2]
        param W: [2, 2] = normal(std=0.5)
        state running_mean: [2] = zeros()
        train {
            mu = mean(X, axis=0)
            update running_mean = 0.5 * running_mean + 0.5 * mu
        }
        eval {
            mu = running_mean
        }
        r = (X - mu) @ W - t
        loss = 0.5 * mean(r ** 2)
        minimize loss
    """)
    module = compiled(path, "sgd")
    params, model_state = module.init_params(0), module.init_state(0)
    opt_state = module.init_opt_state(params)
    X = np.array([[1.0, 2.0], [3.0, 4.0]])
    outputs, new_state = module.step(params, opt_state, 0.1, model_state, None, X=X, t=np.zeros((2, 2)))
    assert "loss" in outputs
    np.testing.assert_allclose(new_state["running_mean"], [1.0, 1.5])


# ---- the emitted source --------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_emitted_source_is_deterministic_and_imports_only_numpy(name: str, least_squares_path: Path) -> None:
    spec = Optimizer(name, clip_norm=1.0)
    first = nncompile.compile_file(least_squares_path, optimizer=spec)
    assert first == nncompile.compile_file(least_squares_path, optimizer=spec)
    imports = set()
    for node in ast.walk(ast.parse(first)):
        if isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.add(node.module or "")
    assert imports == {"numpy"}
    assert "out=" in first and "for name in TRAINABLE" in first   # fused in-place ufuncs; the norm loop


def test_emit_optimizer_alone() -> None:
    source = emit_optimizer("momentum", ["a.W", "a.b"], momentum=0.5)
    assert "def apply_update(params, grads, opt_state, lr, /, *, momentum=0.5, clip_norm=None):" in source
    assert "_momentum_update(params['a.W'], grads['a.W'], v['a.W']" in source
    compile(source, "<optim>", "exec")


@pytest.mark.parametrize("bad, message", [
    (lambda: Optimizer("lbfgs"), "unknown optimizer 'lbfgs'"),
    (lambda: Optimizer("sgd", {"momentum": 0.9}), "the sgd optimizer has no hyperparameter 'momentum'"),
    (lambda: Optimizer("adam", {"beta1": 1.0}), "beta1 must lie in [0, 1)"),
    (lambda: Optimizer("adam", {"eps": 0.0}), "eps must be positive"),
    (lambda: Optimizer("adamw", {"weight_decay": -1.0}), "weight_decay must not be negative"),
    (lambda: Optimizer("sgd", clip_norm=0.0), "clip_norm must be a positive number"),
])
def test_bad_optimizer_settings(bad: Any, message: str) -> None:
    with pytest.raises(NNError) as info:
        bad()
    assert message in str(info.value)


def test_a_model_without_a_loss_cannot_get_an_optimizer(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "two_outputs.nn", """
        input x = 1.0
        a = x * 2
        b = x * 3
        output a, b
    """)
    with pytest.raises(NNError, match="nothing to minimise"):
        nncompile.compile_file(path, optimizer="sgd")
