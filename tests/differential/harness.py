"""Compile a .nn model, run it as a user would, and compare every value and gradient with
PyTorch autograd in float64 on the same numbers.

One comparison (:func:`compare_with_torch`) checks, besides the numbers:

- every returned value and gradient has exactly the module's float dtype and the right shape;
- the caller's inputs and params are never modified;
- a second call (same dims, other inputs) leaves the first call's results untouched;
- with state, the new state after each training step, and ``forward`` in eval mode with the
  state it is given (without state or modes, ``forward`` must agree with the outputs);
- the ``trace`` function that ``eval`` and ``render`` show (unoptimised) gives the same
  intermediate values and gradients as PyTorch's ``retain_grad``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np

from nncompile.codegen import emit_module
from nncompile.compiler import build, compile_and_load, load_module
from nncompile.elaborate import elaborate_file

from .reference import torch

Arrays = dict[str, np.ndarray]
# reference(env) -> every named value it computes (the loss among them), as tensors; env holds
# the params, inputs and state as tensors, and "mode": "train" or "eval"
Reference = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Tolerance:
    """|actual - expected| <= atol * max(1, max |expected|) + rtol * |expected|, per array.

    The absolute part scales with the array's largest entry: a gradient summed from terms
    of size s carries rounding errors of about eps * s, however small the sum comes out.
    """

    rtol: float
    atol: float


# float64: both sides compute the same formulas at double precision, in different orders and
# with different stable rewrites (log-softmax, logaddexp), a few ulps apart per op.
# float32: the module rounds every intermediate to float32 (eps 1.2e-7) and the reference
# does not; through a dozen ops with fan-out the error grows to some 1e-5 of the scale. Where
# a computation is ill-conditioned (the gradient through a batchnorm whose output is summed
# is a cancellation of large terms), float32 is off by more, and PyTorch's own float32 run
# says by how much: SLACK times its distance from float64 is allowed on top.
TOLERANCES = {"float64": Tolerance(rtol=1e-8, atol=1e-10), "float32": Tolerance(rtol=2e-4, atol=1e-4)}
SLACK = 10.0


def assert_close(actual: Any, expected: np.ndarray, tol: Tolerance, what: str, slack: Any = 0.0) -> None:
    """``actual`` within ``tol`` of ``expected``, plus an allowance per entry (``slack``)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, PyTorch has {expected.shape}"
    finite = np.isfinite(expected)
    same_nonfinite = np.array_equal(np.where(finite, 0.0, expected), np.where(finite, 0.0, actual),
                                    equal_nan=True)
    assert same_nonfinite, f"{what}: non-finite entries differ\n  nncompile {actual}\n  PyTorch   {expected}"
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    actual, expected = np.where(finite, actual, 0.0), np.where(finite, expected, 0.0)
    allowed = tol.atol * scale + tol.rtol * np.abs(expected) + np.nan_to_num(np.asarray(slack, dtype=np.float64))
    bad = ~(np.abs(actual - expected) <= allowed)
    if bad.any():
        where = [tuple(int(i) for i in ix) for ix in zip(*np.nonzero(np.atleast_1d(bad)))][:6]
        flat_a, flat_e = np.atleast_1d(actual), np.atleast_1d(expected)
        rows = "\n".join(f"  {list(ix)}: nncompile {flat_a[ix]!r}, PyTorch {flat_e[ix]!r}" for ix in where)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} entries differ (rtol {tol.rtol:g}, "
                             f"atol {tol.atol * scale:.3g})\n{rows}\n  nncompile {actual!r}\n  PyTorch   {expected!r}")


@dataclass
class TorchRun:
    """The reference's every named value and the loss's gradient with respect to each of them."""

    values: Arrays
    grads: Arrays


NEW = "new "   # a reference names the state after a training step "new NAME"


def run_torch(reference: Reference, loss: str, params: Arrays, inputs: Arrays, state: Arrays | None = None,
              mode: str = "train", precision: str = "float64") -> TorchRun:
    """Evaluate ``reference`` in float64 (or ``precision``) on the same numbers (``env["mode"]``
    says train or eval, as value_and_grad and forward run them), and backpropagate the loss
    in train mode."""
    leaves = {}
    for name, value in {**params, **inputs, **(state or {})}.items():
        value = np.asarray(value)
        if value.dtype.kind == "f":
            leaves[name] = torch.tensor(value.astype(precision), requires_grad=name not in (state or {}))
        else:
            leaves[name] = torch.tensor(value.astype(np.int64))
    named = reference({**leaves, "mode": mode})
    for tensor in named.values():
        if tensor.requires_grad and not tensor.is_leaf:
            tensor.retain_grad()
    if mode == "train":
        named[loss].backward()
    everything = {**leaves, **named}
    values = {k: v.detach().numpy() for k, v in everything.items()}
    grads = {k: (np.zeros(v.shape) if v.grad is None else v.grad.numpy(force=True))   # force: a ZeroTensor
             for k, v in everything.items() if v.is_floating_point()}
    return TorchRun(values, grads)


@dataclass
class Result:
    outputs: Arrays
    grads: Arrays
    state: Arrays   # the new state ({} without state)


def call(module: ModuleType, params: Arrays, inputs: Arrays, state: Arrays | None = None) -> Result:
    """``value_and_grad`` as a user calls it (``state=None`` means ``init_state()``), checking
    that it leaves its arguments alone and returns arrays of exactly the module's dtype, of
    the declared shapes."""
    before = copy.deepcopy((params, inputs, state or {}))
    if hasattr(module, "init_state"):
        outputs, grads, new_state = module.value_and_grad(params, state, np.random.default_rng(0), **inputs)
    else:
        (outputs, grads), new_state = module.value_and_grad(params, **inputs), {}
    for kept, now, what in zip(before, (params, inputs, state or {}), ("param", "input", "state")):
        for name, value in kept.items():
            assert now[name].dtype == value.dtype and np.array_equal(now[name], value, equal_nan=True), \
                f"value_and_grad modified its {what} {name!r}"
    _check_dtypes(module, {**outputs, **new_state}, "value_and_grad()")
    dtype = np.dtype(module.DTYPE)
    for name, grad in grads.items():
        assert getattr(grad, "dtype", type(grad)) == dtype, \
            f"gradient of {name!r} is {getattr(grad, 'dtype', type(grad))}, not the module's {dtype}"
        given = {**params, **module.DEFAULTS, **inputs}
        assert np.shape(grad) == np.shape(given[name]), f"gradient of {name!r} has the wrong shape"
    return Result(outputs, grads, new_state)


def _check_dtypes(module: ModuleType, values: Arrays, where: str) -> None:
    """Float outputs and state in exactly the module's dtype (never a Python float, never float64
    in a float32 module)."""
    dtype = np.dtype(module.DTYPE)
    tables = {**module.OUTPUTS, **getattr(module, "STATE", {})}
    for name, value in values.items():
        if tables[name][1].startswith("float"):
            assert getattr(value, "dtype", type(value)) == dtype, \
                f"{where}: {name!r} is {getattr(value, 'dtype', type(value))}, not the module's {dtype}"


def compare_with_torch(path: Path, reference: Reference, params: Arrays, inputs: list[Arrays], *,
                       dtype: str, loss: str = "loss", tol: Tolerance | None = None) -> ModuleType:
    """Compile ``path`` in ``dtype`` and compare it with ``reference`` on each set of inputs,
    called one after the other on one module (they should share their dims); with state, the
    first call passes None (the initial state) and each later one the state the last returned.
    Returns the module."""
    tol = tol or TOLERANCES[dtype]
    module = compile_and_load(path, dtype=dtype)
    assert set(module.PARAMS) == set(params), f"the module's params are {sorted(module.PARAMS)}, not {sorted(params)}"
    params = {k: np.asarray(v, dtype=module.DTYPE) for k, v in params.items()}
    inputs = [{k: _as(v, module.DTYPE) for k, v in one.items()} for one in inputs]
    initial = module.init_state() if hasattr(module, "init_state") else {}
    results, states, state = [], [], None
    for one in inputs:
        results.append(call(module, params, one, state))
        states.append(initial if state is None else state)
        state = copy.deepcopy(results[-1].state) or None
    kept = copy.deepcopy(results)
    for i, (one, before, result) in enumerate(zip(inputs, states, results)):
        expected = run_torch(reference, loss, params, one, before)
        slack = _slack(run_torch(reference, loss, params, one, before, precision=dtype), expected)
        defaults = {k for k in module.DEFAULTS if k not in one and module.INPUTS[k][1].startswith("float")}
        float_leaves = {k for k, v in {**params, **one}.items() if v.dtype.kind == "f"} | defaults
        assert set(result.grads) == float_leaves, \
            f"gradients of {sorted(result.grads)}, expected {sorted(float_leaves)}"
        for name, value in result.outputs.items():
            assert_close(value, expected.values[name], tol, f"call {i + 1}: value of {name}", slack.values[name])
        for name, grad in result.grads.items():
            assert_close(grad, expected.grads[name], tol, f"call {i + 1}: d {loss} / d {name}", slack.grads[name])
        for name, value in result.state.items():
            assert_close(value, expected.values[NEW + name], tol, f"call {i + 1}: new state {name}",
                         slack.values[NEW + name])
        evaluated = module.forward(params, before, **one) if initial else module.forward(params, **one)
        in_eval = run_torch(reference, loss, params, one, before, mode="eval")
        eval_slack = _slack(run_torch(reference, loss, params, one, before, mode="eval", precision=dtype), in_eval)
        _check_dtypes(module, evaluated, "forward()")
        for name, value in evaluated.items():
            assert_close(value, in_eval.values[name], tol, f"call {i + 1}: forward() (eval mode) value of {name}",
                         eval_slack.values[name])
    for i, (before, now) in enumerate(zip(kept, results)):
        for what in ("outputs", "grads", "state"):
            for name, value in getattr(before, what).items():
                assert np.array_equal(getattr(now, what)[name], value, equal_nan=True), \
                    f"call {len(results)} overwrote {what}[{name!r}] returned by call {i + 1}"
    compare_trace(path, reference, loss, params, inputs[0], dtype=dtype, tol=tol, state=initial)
    return module


def compare_trace(path: Path, reference: Reference, loss: str, params: Arrays, inputs: Arrays, *,
                  dtype: str, tol: Tolerance, state: Arrays | None = None, check_dtypes: bool = False) -> None:
    """Every named intermediate value, and the loss's gradient with respect to it, as ``eval``
    and ``render`` compute them (the unoptimised module's ``trace``), against PyTorch; with
    ``check_dtypes``, also that each gradient has the module's dtype."""
    model = elaborate_file(path, dtype)
    G = model.graph
    named: dict[str, int] = {}
    for n in sorted(G.nodes()):
        if G[n].name and G[n].grad_of is None and G[n].op != "const":
            named.setdefault(G[n].name, n)
    module = load_module(emit_module(build(model, optimized=False, trace=True), trace=True), "traced")
    with np.errstate(all="ignore"):
        values, grads = module.trace(params, None, np.random.default_rng(0), **inputs)
    expected = run_torch(reference, loss, params, inputs, state)
    slack = _slack(run_torch(reference, loss, params, inputs, state, precision=dtype), expected)
    compared = [(name, n) for name, n in named.items() if name in expected.values and n in values]
    for name, n in compared:
        assert_close(values[n], expected.values[name], tol, f"trace: value of {name}", slack.values[name])
        if name in expected.grads and np.asarray(values[n]).dtype.kind == "f":
            grad = grads.get(n, np.zeros(np.shape(values[n])))
            assert_close(grad, expected.grads[name], tol, f"trace: d {loss} / d {name}", slack.grads[name])
    if not check_dtypes:
        return
    dtype = np.dtype(module.DTYPE)
    wrong = {name: getattr(grads[n], "dtype", type(grads[n])) for name, n in compared
             if n in grads and getattr(grads[n], "dtype", None) != dtype}
    assert not wrong, f"trace: gradients not of the module's dtype {dtype}: {wrong}"


def _slack(rough: TorchRun, exact: TorchRun) -> TorchRun:
    """SLACK times how far PyTorch's own run at the module's precision is from float64: what
    that precision costs this computation (zero when the module is float64)."""
    def far(a: Arrays, b: Arrays) -> Arrays:
        return {k: SLACK * np.abs(np.asarray(a[k], dtype=np.float64) - b[k]) for k in b if k in a}
    return TorchRun(far(rough.values, exact.values), far(rough.grads, exact.grads))


def _as(value: Any, dtype) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(dtype) if value.dtype.kind == "f" else value.astype(np.int64)
