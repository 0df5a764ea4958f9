"""Running a model on concrete numbers: the file's defaults, ``--set`` values, or seeded
random tensors. ``eval``, ``render`` and ``check`` all start here."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from .codegen import Program, emit_module
from .compiler import build, load_module
from .elaborate import elaborate_file
from .errors import Loc, NNError
from .ir import Model

DEFAULT_DIM = 4  # the size given to a symbolic dim (the batch N) that nothing else fixes


@dataclass
class Evaluation:
    """A model's every forward value and gradient, keyed by node of ``program.graph``."""

    model: Model
    program: Program
    module: ModuleType
    params: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    values: dict[int, np.ndarray]
    grads: dict[int, np.ndarray]

    def named_values(self) -> dict[str, np.ndarray]:
        """Every value the user named, in the order the file defines them."""
        out: dict[str, np.ndarray] = {}
        G = self.program.graph
        for n in sorted(self.values):
            node = G[n]
            if node.name and node.name not in out and node.grad_of is None:
                out[node.name] = self.values[n]
        return out

    def input_and_param_grads(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, n in {**self.model.inputs, **self.model.params}.items():
            if self.model.graph[n].dtype != "float" or self.model.target is None:
                continue
            out[name] = self.grads.get(n, np.zeros_like(self.values[n]))
        return out


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["x=3", "W=[[1,2]]"]`` -> ``{"x": "3", "W": "[[1,2]]"}``."""
    sets: dict[str, str] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise NNError(f"--set expects NAME=VALUE, not {item!r}")
        sets[name.strip()] = value.strip()
    return sets


def evaluate_file(path: str | Path, sets: Mapping[str, str] | None = None, *, seed: int = 0,
                  dtype: str | None = None) -> Evaluation:
    model = elaborate_file(path, dtype)
    program = build(model, optimized=False, trace=True)
    module = load_module(emit_module(program, trace=True), Path(path).stem)
    params, inputs = concrete_values(model, module, sets or {}, seed)
    values, grads = _run(model, module, params, inputs, seed)
    return Evaluation(model, program, module, params, inputs, values, grads)


def concrete_values(model: Model, module: ModuleType, sets: Mapping[str, str], seed: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Params from the initialisers, inputs from defaults; ``sets`` overrides either, and
    symbolic dims (``N=8``); tensors with no value are seeded random numbers."""
    G = model.graph
    sets = dict(sets)
    dims: dict[str, int] = {}
    symbols = {d for n in model.inputs.values() for d in G[n].shape if isinstance(d, str)}
    for name in list(sets):
        if name in symbols and name not in model.inputs:
            text = sets.pop(name)
            if not text.isdigit() or int(text) < 1:
                declared = next(G[n].loc for n in model.inputs.values() if name in G[n].shape)
                raise _set_error(f"--set {name}={text}: the dim {name} must be a positive integer", name, declared)
            dims[name] = int(text)
    unknown = [name for name in sets if name not in model.inputs and name not in model.params]
    if unknown:
        known = ", ".join([*model.inputs, *model.params, *sorted(symbols)])
        raise NNError(f"--set {unknown[0]}: the model has no input, param or dim of that name; it has {known}")
    rng = np.random.default_rng(seed)
    params = module.init_params(seed)
    for name, n in model.params.items():
        if name in sets:
            params[name] = _parse_value(name, sets[name], model, n, module.DTYPE)
    inputs: dict[str, np.ndarray] = {}
    for name, n in model.inputs.items():   # given values fix the dims first (--set y=[0, 3]: N = 2) ...
        if name in sets:
            inputs[name] = _parse_value(name, sets[name], model, n, module.DTYPE)
            for want, got in zip(G[n].shape, np.shape(inputs[name])):
                if isinstance(want, str):
                    dims.setdefault(want, got)
    for name, n in model.inputs.items():   # ... then random values are drawn to match them
        node = G[n]
        if name in sets:
            continue
        elif name in model.defaults:
            continue
        else:
            shape = tuple(dims.setdefault(d, DEFAULT_DIM) if isinstance(d, str) else d for d in node.shape)
            if node.dtype == "int":
                inputs[name] = rng.integers(0, model.int_bounds.get(name, 10), size=shape)
            else:
                inputs[name] = rng.standard_normal(shape).astype(module.DTYPE)
    return params, inputs


def _parse_value(name: str, text: str, model: Model, n: int, dtype) -> np.ndarray:
    node = model.graph[n]
    flag = f"--set {name}={text if len(text) <= 40 else text[:37] + '...'}"
    try:
        value = np.asarray(json.loads(text))
    except RecursionError:
        raise _set_error(f"{flag}: the list is nested too deeply", name, node.loc) from None
    except (json.JSONDecodeError, ValueError):
        raise _set_error(f"{flag}: not a number or a JSON list of numbers", name, node.loc) from None
    if value.dtype.kind not in "iuf" or value.dtype == object:
        raise _set_error(f"{flag}: not a number or a JSON list of numbers", name, node.loc)
    if node.dtype == "int" and value.dtype.kind == "f":
        raise _set_error(f"{flag}: '{name}' is int, so its values must be whole numbers", name, node.loc)
    if len(value.shape) != len(node.shape) or any(isinstance(w, int) and w != g for w, g in zip(node.shape, value.shape)):
        dims = "[" + ", ".join(str(d) for d in node.shape) + "]"
        raise _set_error(f"--set {name}: '{name}' has shape {dims}, but the value has shape {list(value.shape)}",
                         name, node.loc)
    return value.astype(dtype if node.dtype == "float" else np.int64)


def _set_error(message: str, name: str, declared: Loc | None) -> NNError:
    """A bad ``--set`` is a mistake on the command line, not in the file: the error names the
    flag, and a note shows the declaration the value is for."""
    return NNError(message, notes=((f"'{name}' is declared here", declared),) if declared else ())


def _run(model: Model, module: ModuleType, params, inputs, seed: int) -> tuple[dict, dict]:
    try:
        with np.errstate(all="ignore"):
            return module.trace(params, None, np.random.default_rng(seed), **inputs)
    except (TypeError, ValueError) as exc:  # the module's own input checks
        # "input 'y' holds class labels, ...": point at where y is declared
        named = re.match(r"input '([^']+)'", str(exc))
        node = model.inputs.get(named.group(1)) if named else None
        if node is not None and model.graph[node].loc is not None:
            raise NNError(str(exc), model.graph[node].loc) from None
        raise NNError(str(exc), file=model.file) from None


def to_json(value: Any, dtype: str) -> Any:
    """Numbers as the shortest decimal that round-trips at the model's precision."""
    array = np.asarray(value)
    if array.dtype.kind in "iub":
        return array.tolist()
    digits = 8 if dtype == "float32" else 17
    fmt = np.vectorize(lambda v: float(f"{v:.{digits}g}") if np.isfinite(v) else None, otypes=[object])
    return fmt(array).tolist() if array.ndim else fmt(array).item()
