"""Emission: a scheduled graph -> the source of a standalone numpy module.

The module imports numpy and nothing else. Its names come from the .nn file (``fc1.W``
becomes ``fc1_W``, its gradient ``d_fc1_W``); every statement is commented with the line
it came from and its shape. Emission is a pure function of the graph, so the same model
and options always give the same bytes.
"""
from __future__ import annotations

import builtins
import keyword
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import Sources
from .initializers import INITIALIZERS
from .ir import Graph, Model, Node
from .ops import REGISTRY, EmitContext
from .shapes import Shape, show

NUMPY_DTYPES = {"float": None, "int": "int64", "bool": "bool"}
VIEW_OPS = {"reshape", "transpose", "broadcast_to"}

_MODULE_NAMES = {
    "np", "DTYPE", "INPUTS", "PARAMS", "OUTPUTS", "LOSS", "DEFAULTS", "DIMS", "BOUNDS", "init_params", "forward",
    "value_and_grad", "trace", "params", "inputs", "outputs", "grads", "values",
}
RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | _MODULE_NAMES


@dataclass
class Program:
    """What the emitter needs: an optimised graph and the values the module must return."""

    model: Model
    graph: Graph
    outputs: dict[str, int]
    grads: dict[str, int | None]           # wrt name -> its gradient node (None: no dependence)
    trace_values: dict[int, int] = field(default_factory=dict)   # forward node -> node holding it
    trace_grads: dict[int, int] = field(default_factory=dict)    # forward node -> its adjoint


class Names:
    """Python identifiers for graph values: the user's names where possible, never clashing."""

    def __init__(self) -> None:
        self.taken: set[str] = set(RESERVED)
        self.of: dict[Any, str] = {}
        self.temps = 0

    def fresh(self, wanted: str) -> str:
        base = re.sub(r"\W", "_", wanted) or "v"
        if base[0].isdigit():
            base = "v" + base
        name = base
        while name in self.taken or name.startswith("_"):
            name = name + "_" if not name.startswith("_") else "v" + name
        self.taken.add(name)
        return name

    def temp(self) -> str:
        while True:
            self.temps += 1
            name = f"t{self.temps}"
            if name not in self.taken:
                self.taken.add(name)
                return name


def safe_comment(text: str) -> str:
    """Text that cannot end a comment line early (no newline or other control characters)."""
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def literal(value: float) -> str:
    if value != value:
        return "np.nan"
    if value in (float("inf"), float("-inf")):
        return "np.inf" if value > 0 else "(-np.inf)"
    text = repr(float(value))
    return f"({text})" if text.startswith("-") else text


class _Context(EmitContext):
    def __init__(self, dims: dict[str, str]):
        self.dims = dims
        self.xp = "np"
        self.dtype = "DTYPE"

    def dim(self, symbol: str) -> str:
        return self.dims[symbol]

    def shape(self, shape: Shape) -> str:
        parts = [self.dims[d] if isinstance(d, str) else str(d) for d in shape]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def emit_module(program: Program, *, trace: bool = False) -> str:
    return _Emitter(program).module(trace)


class _Emitter:
    def __init__(self, program: Program):
        self.p = program
        self.G = program.graph
        self.model = program.model
        self.dtype = self.model.dtype
        self.dim_names: list[str] = []
        for n in self.model.inputs.values():
            for d in self.G[n].shape:
                if isinstance(d, str) and d not in self.dim_names:
                    self.dim_names.append(d)

    # ---- the module --------------------------------------------------------------------

    def module(self, trace: bool) -> str:
        source = Path(self.model.file).name
        parts = [
            f'"""{safe_comment(source)}, compiled by nncompile {__version__}: forward and backward passes in numpy.\n\n'
            "Generated code: edit the .nn file and compile again rather than editing this.\n"
            'INPUTS, PARAMS and OUTPUTS map names to (shape, dtype); symbolic dims are strings.\n"""\n\n'
            "import numpy as np",
            self.tables(),
            _READ_INPUTS,
            *self.helpers(),
            self.init_params(),
            self.function("forward", self.p.outputs, None,
                          "Every declared output, for the given params and inputs."),
        ]
        if self.model.target is not None:
            parts.append(self.function("value_and_grad", self.p.outputs, self.p.grads,
                                       "The outputs, and the gradient of the loss with respect to every "
                                       "param and float input."))
        if trace:
            parts.append(self.trace_function())
        return "\n\n\n".join(parts).rstrip() + "\n"

    def tables(self) -> str:
        G, m = self.G, self.model

        def entry(n: int) -> str:
            node = G[n]
            dtype = NUMPY_DTYPES[node.dtype] or self.dtype
            return f"({tuple(node.shape)!r}, {dtype!r})"

        lines = [f"DTYPE = np.{self.dtype}"]
        for title, table in (("INPUTS", m.inputs), ("PARAMS", m.params), ("OUTPUTS", self.p.outputs)):
            lines.append(f"{title} = {{")
            lines += [f"    {name!r}: {entry(n)}," for name, n in table.items()]
            lines.append("}")
        loss = next((name for name, n in m.outputs.items() if n == m.target), None)
        lines.append(f"LOSS = {loss!r}")
        lines.append(f"DEFAULTS = {m.defaults!r}")
        lines.append(f"BOUNDS = {m.int_bounds!r}")
        lines.append(f"DIMS = {tuple(self.dim_names)!r}")
        return "\n".join(lines)

    def helpers(self) -> list[str]:
        texts: list[str] = []
        for n in self.G.topological():
            helper = REGISTRY[self.G[n].op].helper
            if helper and helper.strip() not in texts:
                texts.append(helper.strip())
        return texts

    def init_params(self) -> str:
        lines = ["def init_params(seed=0):",
                 '    """Fresh params drawn as the .nn file says: the same seed always gives the same params.',
                 "",
                 "    Each param has its own random stream, keyed by its name, so adding a param to the",
                 '    model does not change the others."""',
                 "    return {"]
        for name, n in self.model.params.items():
            spec = self.model.param_inits[name]
            shape = repr(tuple(self.G[n].shape))
            args = dict(spec.args)
            if spec.init == "constant" and isinstance(args["value"], list):
                expr = f"np.array({args['value']!r})"
            else:
                rng = f"np.random.default_rng((seed, {zlib.crc32(name.encode())}))"
                expr = INITIALIZERS[spec.init].draw(rng, shape, spec.fan_in, spec.fan_out, args)
            lines.append(f"        {name!r}: np.asarray({expr}, dtype=DTYPE),")
        lines.append("    }")
        return "\n".join(lines)

    # ---- functions ---------------------------------------------------------------------

    def function(self, fname: str, outputs: dict[str, int], grads: dict[str, int | None] | None, doc: str) -> str:
        roots = list(outputs.values()) + [g for g in (grads or {}).values() if g is not None]
        body, names, ctx = self.body(roots)
        ret_out = self.returned(outputs, names, ctx, set())
        if grads is None:
            body.append(f"    return {ret_out}")
        else:
            seen = set(outputs.values())
            ret_grads = self.returned({k: v for k, v in grads.items()}, names, ctx, seen)
            body.append(f"    return {ret_out}, {ret_grads}")
        return "\n".join([f"def {fname}(params, /, **inputs):", f'    """{doc}"""', *body])

    def trace_function(self) -> str:
        """For eval and render: every forward value and every adjoint, keyed by node id."""
        roots = list(self.p.trace_values.values()) + list(self.p.trace_grads.values())
        body, names, ctx = self.body(roots)
        values = ", ".join(f"{k}: {self.ref(v, names)}" for k, v in self.p.trace_values.items())
        grads = ", ".join(f"{k}: {self.ref(v, names)}" for k, v in self.p.trace_grads.items())
        body.append(f"    return {{{values}}}, {{{grads}}}")
        return "\n".join(["def trace(params, /, **inputs):",
                          '    """Every intermediate value and gradient, keyed by graph node (for nncompile)."""',
                          *body])

    def body(self, roots: list[int]) -> tuple[list[str], dict[int, str], _Context]:
        G = self.G
        needed: set[int] = set()
        stack = list(roots)
        while stack:
            n = stack.pop()
            if n not in needed:
                needed.add(n)
                stack.extend(G[n].args)
        order = G.topological(needed)
        names = Names()
        ctx = _Context({})
        lines: list[str] = []
        input_vars = [names.fresh(name) for name in self.model.inputs]
        for name, var in zip(self.model.inputs, input_vars):
            names.of[self.model.inputs[name]] = var
        dim_vars = [names.fresh(d) for d in self.dim_names]
        ctx.dims.update(zip(self.dim_names, dim_vars))
        targets = ", ".join(input_vars + dim_vars)
        if targets:
            lines.append(f"    {targets}{',' if len(input_vars) + len(dim_vars) == 1 else ''} = _read_inputs(inputs)")
        else:
            lines.append("    _read_inputs(inputs)")
        for name, n in self.model.params.items():
            if n in needed:
                names.of[n] = names.fresh(name)
                lines.append(f"    {names.of[n]} = params[{name!r}]")
        last_where = None
        for n in order:
            node = G[n]
            if node.op in ("input", "param", "const"):
                continue
            where = self.where(node)
            if where != last_where and where:
                lines.append(f"    # {where}")
                last_where = where
            var = self.var_name(n, node, names)
            expr = REGISTRY[node.op].emit(ctx, [self.ref(a, names.of) for a in node.args], dict(node.attrs))
            lines.append(f"    {var} = {expr}  # {self.describe(node)}")
        return lines, names.of, ctx

    def var_name(self, n: int, node: Node, names: Names) -> str:
        if node.grad_of is not None and self.G.nx.has_node(node.grad_of) and self.G[node.grad_of].name:
            var = names.fresh("d_" + self.G[node.grad_of].name)
        elif node.grad_of is None and node.name:
            var = names.fresh(node.name)
        else:
            var = names.temp()
        names.of[n] = var
        return var

    def where(self, node: Node) -> str | None:
        if node.loc is None:
            return None
        text = Sources.line(node.loc.file, node.loc.line)
        label = f"{Path(node.loc.file).name}:{node.loc.line}"
        if text is not None:
            label += f": {text.strip()}"
        if node.grad_of is not None:
            label += "  (backward)"
        return safe_comment(label)

    def describe(self, node: Node) -> str:
        shape = show(node.shape) if node.shape else "scalar"
        return shape if node.dtype == "float" else f"{node.dtype} {shape}"

    def ref(self, n: int, names: dict[int, str]) -> str:
        node = self.G[n]
        if node.op == "const":
            value = node.attr("value")
            if node.shape == () or not isinstance(value, tuple):
                return literal(value)
            return f"np.array({_plain(value)!r}, dtype=DTYPE)"
        return names[n]

    def returned(self, values: dict[str, int | None], names: dict[int, str], ctx: _Context, seen: set[int]) -> str:
        """A dict of results that never aliases params, inputs, or each other."""
        items = []
        for name, n in values.items():
            if n is None:
                wrt = self.model.params.get(name, self.model.inputs.get(name))
                expr = f"np.zeros({ctx.shape(self.G[wrt].shape)}, dtype=DTYPE)"
            else:
                node = self.G[n]
                expr = self.ref(n, names)
                if node.op == "const":
                    expr = f"np.full({ctx.shape(node.shape)}, {expr}, dtype=DTYPE)"
                elif node.op in VIEW_OPS or node.op in ("input", "param") or n in seen:
                    expr = f"np.array({expr})"
                seen.add(n)
            items.append(f"{name!r}: {expr}")
        if not items:
            return "{}"
        return "{\n" + "".join(f"        {item},\n" for item in items) + "    }"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


_READ_INPUTS = '''def _read_inputs(inputs):
    """Check and convert the caller's inputs: returns them in INPUTS order, then the DIMS."""
    unknown = inputs.keys() - INPUTS.keys()
    if unknown:
        raise TypeError(f"unknown input(s) {sorted(unknown)}; this model takes {list(INPUTS)}")
    values, dims = [], {}
    for name, (shape, dtype) in INPUTS.items():
        if name in inputs:
            array = np.asarray(inputs[name])
        elif name in DEFAULTS:
            array = np.asarray(DEFAULTS[name])
        else:
            raise TypeError(f"missing input {name!r}: {dtype}{list(shape)}")
        if dtype.startswith("int") and array.dtype.kind not in "iu":
            raise TypeError(f"input {name!r} must hold integers, not {array.dtype}")
        if array.dtype.kind not in "fiub":
            raise TypeError(f"input {name!r} must be numeric, not {array.dtype}")
        array = array.astype(dtype, copy=False)
        if array.ndim != len(shape):
            raise ValueError(f"input {name!r} must have {len(shape)} dims {list(shape)}, not shape {array.shape}")
        for want, got in zip(shape, array.shape):
            if isinstance(want, str):
                if dims.setdefault(want, got) != got:
                    raise ValueError(f"input {name!r} has {want} = {got}, but an earlier input has {want} = {dims[want]}")
            elif want != got:
                raise ValueError(f"input {name!r} must have shape {list(shape)}, not {array.shape}")
        if name in BOUNDS and array.size and (array.min() < 0 or array.max() >= BOUNDS[name]):
            raise ValueError(f"input {name!r} holds class labels, which must lie in [0, {BOUNDS[name]})")
        values.append(array)
    return (*values, *(dims[d] for d in DIMS))'''
