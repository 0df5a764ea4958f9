"""Running a model on concrete numbers: the file's defaults, ``--set`` values, or seeded
random tensors; or a trained model's params (and state) on examples of a data set, in train
or eval mode. ``eval``, ``render`` and ``check`` all start here."""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

import numpy as np

from .codegen import Program, emit_module
from .compiler import build, load_module
from .elaborate import elaborate_file
from .errors import Loc, NNError
from .ir import Model, Node
from .ops import REGISTRY
from .shapes import show

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
    mode: str = "train"
    # where a value fans out, each branch's own part of its gradient (the parts sum to it):
    # (user node, operand position) -> d(loss)/d(the value, as that operand)
    branch_grads: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def named_values(self) -> dict[str, np.ndarray]:
        """Every value the user named, in the order the file defines them; an output that is
        another name for a value (``out = scores``) right after it."""
        out: dict[str, np.ndarray] = {}
        G = self.program.graph
        aliases: dict[int, list[str]] = {}
        for name, n in self.model.outputs.items():
            aliases.setdefault(n, []).append(name)
        for n in sorted(self.values):
            node = G[n]
            for name in [node.name, *aliases.get(n, ())]:
                if name and name not in out:   # a grad() the user named too (grad_of set)
                    out[name] = self.values[n]
        return out

    def input_and_param_grads(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, n in {**self.model.inputs, **self.model.params}.items():
            if self.model.graph[n].dtype != "float" or self.model.target is None:
                continue
            out[name] = self.grads.get(n, np.zeros_like(self.values[n]))
        return out

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """In a notebook an evaluation shows as its diagram (nncompile.display.Diagram)."""
        from .display import Diagram

        return Diagram(self)._repr_mimebundle_(include, exclude)

    def __repr__(self) -> str:   # one line, not every array it holds
        from .display import describe

        return describe(self)


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["x=3", "W=[[1,2]]"]`` -> ``{"x": "3", "W": "[[1,2]]"}``."""
    sets: dict[str, str] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise NNError(f"--set expects NAME=VALUE, not {item!r}")
        sets[name.strip()] = value.strip()
    return sets


MODES = ("train", "eval")


def evaluate_file(path: str | Path, sets: Mapping[str, str] | None = None, *, seed: int = 0,
                  dtype: str | None = None, mode: str = "train", params: Mapping[str, np.ndarray] | None = None,
                  state: Mapping[str, np.ndarray] | None = None,
                  inputs: Mapping[str, np.ndarray] | None = None) -> Evaluation:
    """Every value and gradient of the model in ``mode`` (train: dropout on, batch statistics;
    eval: dropout off, the running statistics of ``state``). ``params``, ``state`` and
    ``inputs`` (a trained run's, examples of a data set) replace the initialisers' params and
    the defaults or random tensors; ``--set`` values still win over them."""
    if mode not in MODES:
        raise NNError(f"--mode must be {' or '.join(MODES)}, not {mode!r}")
    model = elaborate_file(path, dtype, mode=mode)
    program = build(model, optimized=False, trace=True)
    module = load_module(emit_module(program, trace=True), Path(path).stem)
    given = {name: value for name, value in (inputs or {}).items() if name not in (sets or {})}
    dims = {d: str(len(value)) for name, value in given.items() if name in model.inputs
            for d in model.graph[model.inputs[name]].shape[:1] if isinstance(d, str)}
    for d, size in dims.items():   # the given examples fix their batch: a --set of it would be dropped
        if d in (sets or {}) and sets[d].isdigit() and int(sets[d]) != int(size):   # (else concrete_values says)
            raise NNError(f"--set {d}={sets[d]}: {d} is {size} here, the number of examples given; "
                          "--batch chooses how many")
    chosen, drawn = concrete_values(model, module, {**dims, **(sets or {})}, seed)
    if params is not None:
        chosen = _trained(model, module, params, sets or {})
    drawn.update({name: _as_input(model, module, name, value) for name, value in given.items()
                  if name in model.inputs})
    _check_with_module(model, module, chosen, drawn, sets or {})
    values, grads = _run(model, module, chosen, drawn, seed, state)
    branches = {use: grads.pop(use) for use in [k for k in grads if isinstance(k, tuple)]}
    return Evaluation(model, program, module, chosen, drawn, values, grads, mode, branches)


def _trained(model: Model, module: ModuleType, params: Mapping[str, np.ndarray],
             sets: Mapping[str, str]) -> dict[str, np.ndarray]:
    """A trained model's params for this model (``--set`` still overrides one)."""
    missing = [name for name in model.params if name not in params and name not in sets]
    unknown = sorted(set(params) - set(model.params))
    if missing or unknown:
        wrong = "; ".join(f"{what} {', '.join(names)}" for what, names in (("missing", missing), ("unknown", unknown))
                          if names)
        raise NNError(f"--params do not fit this model ({wrong}): it has params {', '.join(model.params)}")
    chosen = {name: np.asarray(params[name], dtype=module.DTYPE) for name in model.params if name in params}
    for name in sets:
        if name in model.params:
            chosen[name] = _parse_value(name, sets[name], model, model.params[name], module.DTYPE)
    return chosen


def _as_input(model: Model, module: ModuleType, name: str, value: np.ndarray) -> np.ndarray:
    node = model.graph[model.inputs[name]]
    return np.asarray(value, dtype=module.DTYPE if node.dtype == "float" else np.int64)


def concrete_values(model: Model, module: ModuleType, sets: Mapping[str, str], seed: int
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Params from the initialisers, inputs from defaults; ``sets`` overrides either, and
    symbolic dims (``N=8``); tensors with no value are seeded random numbers."""
    G = model.graph
    given, sets = sets, dict(sets)
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
    inputs: dict[str, np.ndarray] = {}
    for name, n in model.inputs.items():   # given values fix the dims first (--set y=[0, 3]: N = 2) ...
        if name in sets:
            inputs[name] = _parse_value(name, sets[name], model, n, module.DTYPE)
            for want, got in zip(G[n].shape, np.shape(inputs[name])):
                if isinstance(want, str):
                    dims.setdefault(want, got)
    for n in model.inputs.values():        # ... then the others, large enough for every fixed index ...
        for d in G[n].shape:
            if isinstance(d, str):
                dims.setdefault(d, max(DEFAULT_DIM, model.min_dims.get(d, 0)))
    check_memory(model, dims, np.dtype(module.DTYPE).itemsize)
    rng = np.random.default_rng(seed)
    params = module.init_params(seed)
    for name, n in model.params.items():
        if name in sets:
            params[name] = _parse_value(name, sets[name], model, n, module.DTYPE)
    for name, n in model.inputs.items():   # ... and random values are drawn to match them
        node = G[n]
        if name in sets or name in model.defaults:
            continue
        shape = tuple(dims[d] if isinstance(d, str) else d for d in node.shape)
        if node.dtype == "int":
            inputs[name] = rng.integers(0, _int_limit(model, name, dims), size=shape)
        elif (kind := _target_kind(model, n)) == "probability":
            inputs[name] = rng.uniform(0.0, 1.0, shape).astype(module.DTYPE)
        elif kind == "distribution":
            weights = rng.uniform(0.0, 1.0, shape)
            inputs[name] = (weights / weights.sum(axis=-1, keepdims=True)).astype(module.DTYPE)
        else:
            inputs[name] = rng.standard_normal(shape).astype(module.DTYPE)
    _check_with_module(model, module, params, inputs, given)
    return params, inputs


def _target_kind(model: Model, n: int) -> str | None:
    """What a loss that reads input ``n`` as its targets needs of it (sigmoid cross-entropy:
    probabilities; soft-label cross-entropy: rows that sum to 1), from the op registry."""
    G = model.graph
    for user in G.nx.successors(n):
        targets = REGISTRY[G[user].op].targets
        for i, arg in enumerate(G[user].args):
            if arg == n and i in targets:
                return targets[i]
    return None


def check_memory(model: Model, dims: Mapping[str, int], itemsize: int) -> None:
    """Refuse, saying the estimate and the limit, a run whose arrays cannot fit in this
    machine's memory, rather than fail with a MemoryError halfway through. The estimate is
    every value the graph holds (params, inputs, each intermediate and gradient), as the
    trace that eval and render run keeps them all."""
    limit = memory_limit()
    sizes = {n: _nbytes(model.graph[n], dims, itemsize) for n in model.graph.nodes()
             if not REGISTRY[model.graph[n].op].view}
    total = sum(sizes.values())
    if limit is None or total <= limit:
        return
    largest = max((n for n in sizes if model.graph[n].loc is not None), key=sizes.get, default=None)
    node = model.graph[largest] if largest is not None else None
    what = "" if node is None else (f"; the largest array, {node.name or node.op} {show(node.shape)}, "
                                    f"takes {_show_bytes(sizes[largest])}")
    at = ", ".join(f"{d} = {v}" for d, v in dims.items())
    raise NNError(f"running this model{f' with {at}' if at else ''} would allocate about {_show_bytes(total)}, "
                  f"more than the {_show_bytes(limit)} of memory this machine has{what}",
                  node.loc if node is not None else None, file=model.file)


def memory_limit() -> int | None:
    """The most memory this process may use: the machine's physical memory, or less under a
    resource limit or a container's (cgroup) limit; None where the system cannot say."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not a POSIX system
        pass
    try:
        import resource
        limits += [soft for soft, _ in map(resource.getrlimit, (resource.RLIMIT_AS, resource.RLIMIT_DATA))
                   if soft != resource.RLIM_INFINITY]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not a POSIX system
        pass
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        limits += [int(text)] if text.isdigit() else []
    except OSError:
        pass
    return min((v for v in limits if v > 0), default=None)


def _nbytes(node: Node, dims: Mapping[str, int], itemsize: int) -> int:
    count = math.prod(dims.get(d, DEFAULT_DIM) if isinstance(d, str) else d for d in node.shape)
    return count * (itemsize if node.dtype == "float" else 8 if node.dtype == "int" else 1)


def _show_bytes(n: int) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 2 ** 60 else f"10^{len(str(n)) - 1} bytes"
    return f"{n} bytes"


def _int_limit(model: Model, name: str, dims: Mapping[str, int]) -> int:
    """Random ints for an input lie below its class count and the size of every axis it
    indexes (below 10 when nothing bounds them)."""
    limits = [model.int_bounds[name]] if name in model.int_bounds else []
    limits += [dims[d] for d in model.dim_bounds.get(name, ())]
    return max(1, min(limits, default=10))   # an empty axis: the module's own check says what is wrong


_NON_FINITE = re.compile(r"(?<![\w.\"])(nan|inf|infinity)(?![\w.\"])", re.IGNORECASE)
_JSON_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "infinity": "Infinity"}


def _parse_value(name: str, text: str, model: Model, n: int, dtype) -> np.ndarray:
    node = model.graph[n]
    flag = _flag(name, text)
    try:   # nan and inf as numpy prints them (1e999 is JSON's inf already)
        parsed = json.loads(_NON_FINITE.sub(lambda m: _JSON_NON_FINITE[m[1].lower()], text))
        if _holds_bool(parsed):   # numpy would read [true, 2] as [1, 2]
            raise _set_error(f"{flag}: true and false are not numbers here; write 1 and 0", name, node.loc)
        value = np.asarray(parsed)
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
    if node.dtype != "float":
        return value.astype(np.int64)
    with np.errstate(over="ignore"):
        cast = value.astype(dtype)
    if (np.isinf(cast) & np.isfinite(value)).any():
        raise _set_error(f"{flag}: a value is too large for {np.dtype(dtype).name} (at most "
                         f"{float(np.finfo(dtype).max):.4g}); it would be inf", name, node.loc)
    return cast


def _holds_bool(parsed) -> bool:
    return isinstance(parsed, bool) or isinstance(parsed, list) and any(map(_holds_bool, parsed))


def _flag(name: str, text: str) -> str:
    """``--set y=[0, 1, 2]`` as the user wrote it, a long value cut short."""
    return f"--set {name}={text if len(text) <= 40 else text[:37] + '...'}"


def _set_error(message: str, name: str, declared: Loc | None) -> NNError:
    """A bad ``--set`` is a mistake on the command line, not in the file: the error names the
    flag, and a note shows the declaration the value is for."""
    return NNError(message, notes=((f"'{name}' is declared here", declared),) if declared else ())


def _check_with_module(model: Model, module: ModuleType, params, inputs, sets: Mapping[str, str]) -> None:
    """The module's own checks of its inputs and params, run once up front so that eval,
    render and check all report a bad value where it came from: a ``--set`` on the command
    line (with a note at the declaration it is for), else the declaration (its default)."""
    try:
        module._convert_inputs(inputs)
        if model.params:
            module._convert(params, module.PARAMS, "param", "params")
    except (TypeError, ValueError) as exc:
        # "input 'y' holds 9: ...": the value of y is wrong
        named = re.match(r"(?:input|param) '([^']+)'(?: has (\w+) = )?", str(exc))
        node = {**model.inputs, **model.params}.get(named.group(1)) if named else None
        declared = model.graph[node].loc if node is not None else None
        if named:   # the value came from a --set: of the input itself, or of the dim it names
            for name in (named.group(1), named.group(2)):
                if name in sets:
                    raise _set_error(f"{_flag(name, sets[name])}: {exc}", named.group(1), declared) from None
        if declared is not None:
            raise NNError(str(exc), declared) from None
        raise NNError(str(exc), file=model.file) from None


def _run(model: Model, module: ModuleType, params, inputs, seed: int, state=None) -> tuple[dict, dict]:
    with np.errstate(all="ignore"):
        return module.trace(params, dict(state) if state is not None and model.state else None,
                            np.random.default_rng(seed), **inputs)


def to_json(value: Any, dtype: str) -> Any:
    """Numbers as the shortest decimal that round-trips at the model's precision."""
    array = np.asarray(value)
    if array.dtype.kind in "iub":
        return array.tolist()
    digits = 8 if dtype == "float32" else 17
    fmt = np.vectorize(lambda v: float(f"{v:.{digits}g}") if np.isfinite(v) else None, otypes=[object])
    return fmt(array).tolist() if array.ndim else fmt(array).item()
