"""Second derivatives against PyTorch's double backward (``create_graph=True``), float64.

Two ways a model asks for them, both compared on the same numbers:

- ``hvp(params, v, ...)``, the module's Hessian-vector product, against
  ``autograd.grad(sum_p <d loss / d p, v_p>, params)`` over a graph built with ``create_graph``;
- ``grad()`` in the .nn file (double backprop): :func:`grad_case` writes an op's model whose
  loss is ``sum(grad(sum(op(x...) * w), x_i) * u_i)``, and its PyTorch twin the same with
  ``autograd.grad(..., create_graph=True)``, so the ordinary comparison (values, gradients,
  the trace) checks grad()'s value and the loss's gradient through it (H u) at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nncompile.compiler import compile_and_load

from .harness import TOLERANCES, Arrays, Reference, assert_close
from .opcases import OpCase, nn_type, spell
from .reference import TORCH, torch


def torch_hvp(reference: Reference, loss: str, params: Arrays, inputs: Arrays, v: Arrays,
              state: Arrays | None = None) -> Arrays:
    """H v of ``reference``'s loss over the params, by double backward in float64 (train mode)."""
    leaves: dict[str, Any] = {}
    for name, value in {**params, **inputs, **(state or {})}.items():
        value = np.asarray(value)
        kind = np.float64 if value.dtype.kind == "f" else np.int64
        leaves[name] = torch.tensor(value.astype(kind), requires_grad=kind is np.float64 and name not in (state or {}))
    if not params:
        return {}
    named = reference({**leaves, "mode": "train"})
    wrt = [leaves[name] for name in params]
    if not named[loss].requires_grad:   # the loss does not depend on the params
        return {name: np.zeros(np.shape(params[name])) for name in params}
    grads = torch.autograd.grad(named[loss], wrt, create_graph=True, allow_unused=True)
    inner = sum(((g * torch.tensor(np.asarray(v[name], dtype=np.float64))).sum()
                 for name, g in zip(params, grads) if g is not None), torch.zeros((), dtype=torch.float64))
    if not inner.requires_grad:   # the loss is linear in the params: H = 0
        return {name: np.zeros(np.shape(params[name])) for name in params}
    second = torch.autograd.grad(inner, wrt, allow_unused=True)
    return {name: np.zeros(np.shape(params[name])) if h is None else h.detach().numpy(force=True)
            for name, h in zip(params, second)}


def compare_hvp_with_torch(path: Path, reference: Reference, params: Arrays, inputs: Arrays, rng: np.random.Generator,
                           *, loss: str = "loss") -> None:
    """The float64 module's hvp() (and, for a tiny model, hessian()) against PyTorch's double
    backward, along a random v; hvp() must leave its arguments alone and return the params' shapes."""
    module = compile_and_load(path, dtype="float64")
    params = {k: np.asarray(p, dtype=np.float64) for k, p in params.items()}
    v = {k: rng.standard_normal(np.shape(p)) for k, p in params.items()}
    before = {k: a.copy() for k, a in {**params, **v}.items()}
    hv = module.hvp(params, v, None, np.random.default_rng(0), **inputs)
    assert all(np.array_equal(a, before[k]) for k, a in {**params, **v}.items()), "hvp modified its arguments"
    assert set(hv) == set(params), f"hvp returned {sorted(hv)} for the params {sorted(params)}"
    state = module.init_state() if hasattr(module, "init_state") else None
    expected = torch_hvp(reference, loss, params, inputs, v, state)
    tol = TOLERANCES["float64"]
    for name, product in hv.items():
        assert np.shape(product) == np.shape(params[name]), f"H v of {name} has shape {np.shape(product)}"
        assert_close(product, expected[name], tol, f"H v, the part of {name}")
    size = sum(p.size for p in params.values())
    if 0 < size <= 40:   # the dense Hessian, column by column against PyTorch's H v
        H = module.hessian(params, None, np.random.default_rng(0), **inputs)
        flat_v = np.concatenate([v[k].reshape(-1) for k in params])
        flat_hv = np.concatenate([expected[k].reshape(-1) for k in params])
        assert_close(H @ flat_v, flat_hv, tol, "hessian() @ v")
        assert_close(H, H.T, tol, "hessian() is symmetric")


# ---- grad() in the language, op by op ----------------------------------------------------

def grad_case_text(case: OpCase) -> str:
    """``loss = sum_i sum(grad(inner, x_i) * u_i)`` with ``inner = sum(op(x...) * w)``."""
    s = case.sample
    lines = [f"input x{i}: {nn_type('int' if i in s.ints else 'float', tuple(shape))}"
             for i, shape in enumerate(s.shapes)]
    lines.append(f"input w: {nn_type('float', case.out_shape())}")
    lines += [f"input u{i}: {nn_type('float', tuple(s.shapes[i]))}" for i in case.floats]
    operands = [f"x{i}" for i in range(len(s.shapes))]
    lines += [f"out = {spell(case.opdef, operands, dict(s.attrs))}", "inner = sum(out * w)"]
    lines += [f"g{i} = grad(inner, x{i})" for i in case.floats]
    lines += ["loss = " + " + ".join(f"sum(g{i} * u{i})" for i in case.floats),
              f"output {', '.join(f'g{i}' for i in case.floats)}", "minimize loss"]
    return "\n".join(lines) + "\n"


def grad_case_reference(case: OpCase) -> Reference:
    def reference(env: dict) -> dict:
        operands = [env[f"x{i}"] for i in range(len(case.sample.shapes))]
        out = TORCH[case.opdef.name](*operands, **case.sample.attrs)
        inner = (out * env["w"]).sum()
        floats = case.floats
        grads = torch.autograd.grad(inner, [operands[i] for i in floats], create_graph=True, allow_unused=True)
        named = {f"g{i}": torch.zeros_like(operands[i]) if g is None else g for i, g in zip(floats, grads)}
        named["loss"] = sum((named[f"g{i}"] * env[f"u{i}"]).sum() for i in floats)
        return named
    return reference


def grad_case_inputs(case: OpCase, rng: np.random.Generator, draw) -> Arrays:
    values = case.inputs(rng, draw)
    values.update({f"u{i}": rng.uniform(0.5, 1.5, case.sample.shapes[i]) for i in case.floats})
    return values
