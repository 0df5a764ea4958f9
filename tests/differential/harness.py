"""Compile a .nn model, run it as a user would, and compare every value and gradient with
PyTorch autograd in float64 on the same numbers.

One comparison (:func:`compare_with_torch`) checks, besides the numbers:

- every returned value and gradient has exactly the module's float dtype and the right shape;
- the caller's inputs and params are never modified;
- a second call (same dims, other inputs) leaves the first call's results untouched;
- ``forward`` agrees with ``value_and_grad``'s outputs;
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
# reference(leaves) -> every named value it computes (the loss among them), as tensors
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
# does not; through a dozen ops with fan-out the error grows to some 1e-5 of the scale.
TOLERANCES = {"float64": Tolerance(rtol=1e-8, atol=1e-10), "float32": Tolerance(rtol=2e-4, atol=1e-4)}


def assert_close(actual: Any, expected: np.ndarray, tol: Tolerance, what: str) -> None:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, PyTorch has {expected.shape}"
    finite = np.isfinite(expected)
    same_nonfinite = np.array_equal(np.where(finite, 0.0, expected), np.where(finite, 0.0, actual),
                                    equal_nan=True)
    assert same_nonfinite, f"{what}: non-finite entries differ\n  nncompile {actual}\n  PyTorch   {expected}"
    scale = max(1.0, float(np.abs(expected[finite]).max(initial=0.0)))
    np.testing.assert_allclose(np.where(finite, actual, 0.0), np.where(finite, expected, 0.0),
                               rtol=tol.rtol, atol=tol.atol * scale, err_msg=what)


@dataclass
class TorchRun:
    """The reference's every named value and the loss's gradient with respect to each of them."""

    values: Arrays
    grads: Arrays


def run_torch(reference: Reference, loss: str, params: Arrays, inputs: Arrays) -> TorchRun:
    """Evaluate ``reference`` in float64 on the same numbers, and backpropagate the loss."""
    leaves = {}
    for name, value in {**params, **inputs}.items():
        value = np.asarray(value)
        if value.dtype.kind == "f":
            leaves[name] = torch.tensor(value.astype(np.float64), requires_grad=True)
        else:
            leaves[name] = torch.tensor(value.astype(np.int64))
    named = reference(dict(leaves))
    for tensor in named.values():
        if tensor.requires_grad and not tensor.is_leaf:
            tensor.retain_grad()
    named[loss].backward()
    everything = {**leaves, **named}
    values = {k: v.detach().numpy() for k, v in everything.items()}
    grads = {k: (np.zeros(v.shape) if v.grad is None else v.grad.numpy())
             for k, v in everything.items() if v.is_floating_point()}
    return TorchRun(values, grads)


def call(module: ModuleType, params: Arrays, inputs: Arrays) -> tuple[Arrays, Arrays]:
    """``value_and_grad`` as a user calls it, checking that it leaves its arguments alone and
    returns arrays of exactly the module's dtype, of the declared shapes."""
    before = copy.deepcopy((params, inputs))
    outputs, grads = module.value_and_grad(params, **inputs)
    for kept, now, what in ((before[0], params, "param"), (before[1], inputs, "input")):
        for name, value in kept.items():
            assert now[name].dtype == value.dtype and np.array_equal(now[name], value, equal_nan=True), \
                f"value_and_grad modified its {what} {name!r}"
    dtype = np.dtype(module.DTYPE)
    for name, value in outputs.items():
        if module.OUTPUTS[name][1].startswith("float"):
            assert getattr(value, "dtype", type(value)) == dtype, \
                f"output {name!r} is {getattr(value, 'dtype', type(value))}, not the module's {dtype}"
    for name, grad in grads.items():
        assert getattr(grad, "dtype", type(grad)) == dtype, \
            f"gradient of {name!r} is {getattr(grad, 'dtype', type(grad))}, not the module's {dtype}"
        assert np.shape(grad) == np.shape({**params, **inputs}[name]), f"gradient of {name!r} has the wrong shape"
    return outputs, grads


def compare_with_torch(path: Path, reference: Reference, params: Arrays, inputs: list[Arrays], *,
                       dtype: str, loss: str = "loss", tol: Tolerance | None = None) -> None:
    """Compile ``path`` in ``dtype`` and compare it with ``reference`` on each set of inputs
    (called one after the other on one module: they should share their dims)."""
    tol = tol or TOLERANCES[dtype]
    module = compile_and_load(path, dtype=dtype)
    params = {k: np.asarray(v, dtype=module.DTYPE) for k, v in params.items()}
    inputs = [{k: _as(v, module.DTYPE) for k, v in one.items()} for one in inputs]
    results = [call(module, params, one) for one in inputs]
    kept = copy.deepcopy(results)
    for i, (one, (outputs, grads)) in enumerate(zip(inputs, results)):
        expected = run_torch(reference, loss, params, one)
        float_leaves = {k for k, v in {**params, **one}.items() if v.dtype.kind == "f"}
        assert set(grads) == float_leaves, f"gradients of {sorted(grads)}, expected {sorted(float_leaves)}"
        for name, value in outputs.items():
            assert_close(value, expected.values[name], tol, f"call {i + 1}: value of {name}")
        for name, grad in grads.items():
            assert_close(grad, expected.grads[name], tol, f"call {i + 1}: d {loss} / d {name}")
        evaluated = module.forward(params, **one)
        for name, value in evaluated.items():
            assert_close(value, expected.values[name], tol, f"call {i + 1}: forward() value of {name}")
    for i, (before, now) in enumerate(zip(kept, results)):
        for part, what in zip(range(2), ("output", "gradient")):
            for name, value in before[part].items():
                assert np.array_equal(now[part][name], value, equal_nan=True), \
                    f"call {len(results)} overwrote the {what} {name!r} returned by call {i + 1}"
    compare_trace(path, reference, loss, params, inputs[0], dtype=dtype, tol=tol)


def compare_trace(path: Path, reference: Reference, loss: str, params: Arrays, inputs: Arrays, *,
                  dtype: str, tol: Tolerance, check_dtypes: bool = False) -> None:
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
    expected = run_torch(reference, loss, params, inputs)
    compared = [(name, n) for name, n in named.items() if name in expected.values and n in values]
    for name, n in compared:
        assert_close(values[n], expected.values[name], tol, f"trace: value of {name}")
        if name in expected.grads and np.asarray(values[n]).dtype.kind == "f":
            grad = grads.get(n, np.zeros(np.shape(values[n])))
            assert_close(grad, expected.grads[name], tol, f"trace: d {loss} / d {name}")
    if not check_dtypes:
        return
    dtype = np.dtype(module.DTYPE)
    wrong = {name: getattr(grads[n], "dtype", type(grads[n])) for name, n in compared
             if n in grads and getattr(grads[n], "dtype", None) != dtype}
    assert not wrong, f"trace: gradients not of the module's dtype {dtype}: {wrong}"


def _as(value: Any, dtype) -> np.ndarray:
    value = np.asarray(value)
    return value.astype(dtype) if value.dtype.kind == "f" else value.astype(np.int64)
