"""Emission: a scheduled graph -> the source of a standalone numpy module.

The module imports numpy and nothing else. Its names come from the .nn file (``fc1.W``
becomes ``fc1_W``, its gradient ``d_fc1_W``); every statement is commented with the line
it came from and its shape. Emission is a pure function of the graph, so the same model
and options always give the same bytes.
"""
from __future__ import annotations

import builtins
import functools
import keyword
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import BACKENDS, Backend
from .errors import Sources
from .initializers import INITIALIZERS
from .ir import Graph, Model, Node
from .schedule import plan_buffers, schedule
from .ops import REGISTRY, EmitContext, literal
from .shapes import Shape, show
from .version import __version__

NUMPY_DTYPES = {"float": None, "int": "int64", "bool": "bool"}

_MODULE_NAMES = {
    *(backend.xp for backend in BACKENDS.values()), "DTYPE", "INPUTS", "PARAMS", "OUTPUTS", "LOSS", "DEFAULTS", "DIMS", "BOUNDS", "init_params", "forward",
    "value_and_grad", "trace", "params", "inputs", "outputs", "grads", "values", "buffers", "state", "rng",
    "STATE", "init_state", "new_state", "TRAIN_OUTPUTS", "DIM_BOUNDS", "MIN_DIMS",
}
RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | _MODULE_NAMES


@dataclass
class Program:
    """What the emitter needs: an optimised graph and the values the module must return."""

    model: Model
    graph: Graph
    outputs: dict[str, int]
    grads: dict[str, int | None]           # wrt name -> its gradient node (None: no dependence)
    updates: dict[str, int] = field(default_factory=dict)  # state name -> its new value (train mode)
    trace_values: dict[int, int] = field(default_factory=dict)   # forward node -> node holding it
    trace_grads: dict[int, int] = field(default_factory=dict)    # forward node -> its adjoint
    eval_program: Program | None = None   # forward()'s program, when eval mode differs from train mode


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
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _docstring_text(text: str) -> str:
    """Text that stays inside a triple-quoted docstring, whatever a file is called."""
    return safe_comment(text).replace("\\", "\\\\").replace('"', '\\"')


def source(value: Any) -> str:
    """Python source for a number, or a list, tuple or dict of them: ``repr``, except that
    inf and nan are written as np.inf and np.nan, so no value can stop a module importing."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{source(k)}: {source(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(source, value)) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(source, value)) + ("," if len(value) == 1 else "") + ")"
    return literal(value).strip("()") if isinstance(value, float) else repr(value)


def c_source(expr: str) -> str:
    """A fused kernel's C expression with inf and nan (from attributes) spelt as C spells them."""
    return re.sub(r"\b(inf|nan)\b", lambda m: "INFINITY" if m[1] == "inf" else "NAN", expr)


class _Context(EmitContext):
    def __init__(self, emitter: _Emitter, dims: dict[str, str]):
        self.emitter = emitter
        self.dims = dims
        self.backend = emitter.backend
        self.xp = emitter.backend.xp
        self.dtype = "DTYPE"
        self.target = "v"   # the variable the statement being emitted defines

    def reduction(self, ufunc: str) -> str:
        return self.backend.reduction(ufunc)

    def kernel(self, expr: str, arity: int) -> str:
        return self.emitter.kernel(expr, arity, self.target)

    def dim(self, symbol: str) -> str:
        return self.dims[symbol]

    def shape(self, shape: Shape) -> str:
        parts = [self.dims[d] if isinstance(d, str) else str(d) for d in shape]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def emit_module(program: Program, *, trace: bool = False, backend: str = "numpy") -> str:
    """The module's source. ``backend="cupy"`` keeps arrays on an NVIDIA GPU: the same code
    with ``cp`` for ``np``, and each fused elementwise group one ``cp.ElementwiseKernel``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    if trace and not BACKENDS[backend].traces:
        raise ValueError(f"the {backend} backend has no trace functions (they are numpy-only)")
    return _Emitter(program, BACKENDS[backend]).module(trace)


class _Emitter:
    def __init__(self, program: Program, backend: Backend, share: _Emitter | None = None):
        self.p = program
        self.backend = backend
        self.xp = backend.xp
        # Module-level definitions are shared with the emitter of the other mode's program.
        self.caches: list[str] = share.caches if share else []
        self.kernels: dict[tuple[str, int], str] = share.kernels if share else {}
        self.comments: dict[tuple[str, int, bool], str] = share.comments if share else {}
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
        evaluation = self if self.p.eval_program is None else _Emitter(self.p.eval_program, self.backend, share=self)
        parts = [
            f'"""{_docstring_text(source)}, compiled by nncompile {__version__}: forward and backward passes in '
            f'{self.backend.name}.\n\n'
            "Generated code: edit the .nn file and compile again rather than editing this.\n"
            'INPUTS, PARAMS and OUTPUTS map names to (shape, dtype); symbolic dims are strings.\n"""\n\n'
            + "\n".join(self.backend.imports),
            self.tables(),
            self.read_inputs(),
            self.backend.retarget(_CONVERT_INPUTS),
            *([self.read_table("params")] if self.model.params else []),
            *([self.read_table("state")] if self.model.state else []),
            *([self.backend.retarget(_CONVERT)] if self.model.params or self.model.state else []),
            *self.helpers(evaluation.G),
            self.init_params(),
            *([self.init_params("state")] if self.model.state else []),
            evaluation.function("forward", evaluation.p.outputs, None,
                                "Every declared output, for the given params and inputs"
                                + (", in eval mode." if self.model.mode_dependent else ".")),
        ]
        if self.model.target is not None:
            doc = ("The outputs, and the gradient of the loss with respect to every param and float input"
                   + (", in train mode." if self.model.mode_dependent else ".")
                   + ("\n\n    With state, also the new state (running statistics after this step)."
                      if self.model.state else ""))
            parts.append(self.function("value_and_grad", self.p.outputs, self.p.grads, doc))
        if trace:
            parts.append(self.trace_function())
        if self.kernels:  # defined once at import; CuPy compiles each on first use and caches it
            parts.insert(3, "\n".join(self.kernel_definitions()))
        if self.caches:  # workspaces, one per function and set of dims, made on first use
            parts.insert(3, "\n".join(f"{cache} = {{}}" for cache in self.caches) + "\n\n\n" + self.backend.retarget(_EMPTY))
        return "\n\n\n".join(parts).rstrip() + "\n"

    def tables(self) -> str:
        """OUTPUTS describes what forward() returns (eval mode), TRAIN_OUTPUTS what
        value_and_grad() returns (train mode: a train block's loss, say, exists only there)."""
        m = self.model
        evaluation = self.p.eval_program or self.p

        def entry(G: Graph, n: int) -> str:
            node = G[n]
            dtype = NUMPY_DTYPES[node.dtype] or self.dtype
            return f"({tuple(node.shape)!r}, {dtype!r})"

        lines = [f"DTYPE = np.{self.dtype}"]
        tables = [("INPUTS", m.inputs, self.G), ("PARAMS", m.params, self.G),
                  ("OUTPUTS", evaluation.outputs, evaluation.graph)]
        if m.target is not None:
            tables.append(("TRAIN_OUTPUTS", self.p.outputs, self.G))
        if m.state:
            tables.append(("STATE", m.state, self.G))
        for title, table, G in tables:
            lines.append(f"{title} = {{")
            lines += [f"    {name!r}: {entry(G, n)}," for name, n in table.items()]
            lines.append("}")
        loss = next((name for name, n in m.outputs.items() if n == m.target), None)
        lines.append(f"LOSS = {loss!r}")
        lines.append(f"DEFAULTS = {source(m.defaults)}")
        lines.append(f"BOUNDS = {m.int_bounds!r}")
        lines.append(f"DIM_BOUNDS = {m.dim_bounds!r}")
        lines.append(f"MIN_DIMS = {m.min_dims!r}")
        lines.append(f"DIMS = {tuple(self.dim_names)!r}")
        return "\n".join(lines)

    def read_inputs(self) -> str:
        """The per-call input check, specialised to this model: a few attribute tests when the
        caller passes arrays of the right dtype and shape, the general converter otherwise."""
        lines = ["_FLOAT, _INT = np.dtype(DTYPE), np.dtype(np.int64)  # the fast paths compare dtypes by identity",
                 "",
                 "",
                 "def _read_inputs(inputs):",
                 '    """The inputs in INPUTS order, then the DIMS; arrays already right pass straight through."""']
        if not self.model.inputs:
            lines += ["    if inputs:", "        _convert_inputs(inputs)", "    return ()"]
            return "\n".join(lines)
        names = Names()
        vars_ = {name: names.fresh(name) for name in self.model.inputs}
        dims: dict[str, str] = {}
        checks: list[Check] = []
        for name, n in self.model.inputs.items():
            node, var = self.G[n], vars_[name]
            dtype = "_FLOAT" if node.dtype == "float" else "_INT"
            checks += [Check("type", var, self.xp), Check("dtype", var, dtype), Check("ndim", var, len(node.shape))]
            checks += _dim_checks(var, node.shape, dims, names)
        checks += [Check("least", dims[d], least) for d, least in self.model.min_dims.items()]
        get = ", ".join(f"inputs.get({name!r})" for name in self.model.inputs)
        lines.append(f"    {', '.join(vars_.values())} = {get}")
        cond = " and\n            ".join(map(str, checks))
        lines += [f"    if len(inputs) != {len(vars_)} or not (", f"            {cond}):"]
        lines.append("        return _convert_inputs(inputs)")
        for name, n in self.model.inputs.items():
            limits = [str(b) for b in [self.model.int_bounds.get(name)] if b is not None]
            limits += [dims[d] for d in self.model.dim_bounds.get(name, ())]
            if limits:
                var, limit = vars_[name], limits[0] if len(limits) == 1 else f"min({', '.join(limits)})"
                lines.append(f"    if {var}.size and ({var}.min() < 0 or {var}.max() >= {limit}):")
                lines.append("        return _convert_inputs(inputs)  # raises the error")
        result = [*vars_.values(), *(dims[d] for d in self.dim_names)]
        lines.append(f"    return {', '.join(result)}{',' if len(result) == 1 else ''}")
        return "\n".join(lines)

    def read_table(self, arg: str) -> str:
        """``_read_params`` or ``_read_state``: the per-call check, like the inputs'. Arrays of
        the right type, dtype and shape pass straight through; anything else goes to the
        converter, which says what is wrong (params come back as a tuple, state as a dict)."""
        table, TABLE, one = ((self.model.params, "PARAMS", "param") if arg == "params"
                             else (self.model.state, "STATE", "state"))
        names = Names()
        vars_ = [names.fresh(name) for name in table]
        checks = []
        for var, n in zip(vars_, table.values()):
            checks += [Check("type", var, self.xp), Check("dtype", var, "_FLOAT"),
                       Check("shape", var, tuple(self.G[n].shape))]
        cond = " and\n            ".join(map(str, checks))
        convert = f'_convert({arg}, {TABLE}, "{one}", "{arg}")'
        fallback, ok = ((convert, f"{', '.join(vars_)}{',' if len(vars_) == 1 else ''}") if arg == "params"
                        else (f"dict(zip(STATE, {convert}))", "state"))
        return "\n".join([
            f"def _read_{arg}({arg}):",
            f'    """The {arg} in {TABLE} order; arrays already right pass straight through."""',
            f"    if type({arg}) is not dict or len({arg}) != {len(vars_)}:",
            f"        return {fallback}",
            f"    {', '.join(vars_)} = {', '.join(f'{arg}.get({name!r})' for name in table)}",
            f"    if not ({cond}):",
            f"        return {fallback}",
            f"    return {ok}"])

    def kernel(self, expr: str, arity: int, var: str) -> str:
        """The module-level ElementwiseKernel computing a fused node (one per distinct expression)."""
        key = (expr, arity)
        if key not in self.kernels:
            name, taken = f"_kernel_{var}", set(self.kernels.values())
            while name in taken:  # the same variable name in another function or mode
                name += "_"
            self.kernels[key] = name
        return self.kernels[key]

    def kernel_definitions(self) -> list[str]:
        lines = []
        for (expr, arity), name in self.kernels.items():
            params = ", ".join(f"T x{i}" for i in range(arity))
            definition = self.backend.elementwise_kernel(params, "T y", "y = " + c_source(expr), "nncompile" + name)
            lines.append(f"{name} = {definition}")
        return lines

    def helpers(self, other: Graph) -> list[str]:
        texts: list[str] = []
        for n, G in [*((n, self.G) for n in self.G.nodes()), *((n, other) for n in other.nodes())]:
            for helper in REGISTRY[G[n].op].helpers:
                if self.backend.retarget(helper) not in texts:
                    texts.append(self.backend.retarget(helper))
        return texts

    def init_params(self, kind: str = "params") -> str:
        if kind == "params":
            lines = ["def init_params(seed=0):",
                     '    """Fresh params drawn as the .nn file says: the same seed always gives the same params.',
                     "",
                     "    Each param has its own random stream, keyed by its name, so adding a param to the",
                     '    model does not change the others."""']
        else:
            lines = ["def init_state(seed=0):",
                     '    """The state a model starts from (running statistics before any training)."""']
        lines.append("    return {")
        for name, n in (self.model.params if kind == "params" else self.model.state).items():
            spec = self.model.param_inits[name]
            shape = repr(tuple(self.G[n].shape))
            args = {k: _Source(source(v)) for k, v in spec.args}
            if spec.init == "constant" and isinstance(dict(spec.args)["value"], list):
                expr = f"np.array({args['value']})"
            else:
                rng = f"np.random.default_rng((seed, {zlib.crc32(name.encode())}))"
                expr = INITIALIZERS[spec.init].draw(rng, shape, spec.fan_in, spec.fan_out, args)
            value = f"np.asarray({expr}, dtype=DTYPE)"
            lines.append(f"        {name!r}: {self.backend.to_device.format(value)},")
        lines.append("    }")
        return "\n".join(lines)

    # ---- functions ---------------------------------------------------------------------

    def function(self, fname: str, outputs: dict[str, int], grads: dict[str, int | None] | None, doc: str) -> str:
        # Gradients in reverse: the last layer's first, as backprop runs, so each activation
        # dies (and its buffer is reused) as early as possible.
        results = [*outputs.values(), *reversed([g for g in (grads or {}).values() if g is not None])]
        updates = self.p.updates if grads is not None else {}
        results += list(updates.values())
        body, names, ctx = self.body(fname, results)
        ret_out = self.returned(outputs, names, ctx, set())
        if grads is None:
            body.append(f"    return {ret_out}")
        else:
            seen = set(outputs.values())
            ret_grads = self.returned({k: v for k, v in grads.items()}, names, ctx, seen)
            if self.model.state:
                new_state = self.returned(updates, names, ctx, seen, keep=list(self.model.state))
                body.append(f"    return {ret_out}, {ret_grads}, {new_state}")
            else:
                body.append(f"    return {ret_out}, {ret_grads}")
        return "\n".join([f"def {fname}({self.signature(fname)}):", f'    """{doc}"""', *body])

    def signature(self, fname: str) -> str:
        """Positional-only extras, so no input name can collide with them."""
        return "params, state=None, /, **inputs" if fname == "forward" else "params, state=None, rng=None, /, **inputs"

    def trace_function(self) -> str:
        """For eval and render: every forward value and every adjoint, keyed by node id."""
        roots = list(self.p.trace_values.values()) + list(self.p.trace_grads.values())
        body, names, ctx = self.body("trace", roots)
        values = ", ".join(f"{k}: {self.array_ref(v, names, ctx)}" for k, v in self.p.trace_values.items())
        grads = ", ".join(f"{k}: {self.array_ref(v, names, ctx)}" for k, v in self.p.trace_grads.items())
        body.append(f"    return {{{values}}}, {{{grads}}}")
        return "\n".join([f"def trace({self.signature('trace')}):",
                          '    """Every intermediate value and gradient, keyed by graph node (for nncompile)."""',
                          *body])

    def body(self, fname: str, results: list[int]) -> tuple[list[str], dict[int, str], _Context]:
        """Statements computing ``results``: inputs read, workspace fetched, ops in schedule order."""
        G = self.G
        order = schedule(G, results)
        needed = set(order)
        plan = plan_buffers(G, order, set(results))
        names = Names()
        ctx = _Context(self, {})
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
        if len(plan.slots) <= 16:
            buffers = [names.fresh(f"buf{k}") for k in range(len(plan.slots))]
        else:  # a deep model: index the workspace rather than name a thousand buffers
            buffers = [f"buffers[{k}]" for k in range(len(plan.slots))]
        if plan.slots:
            cache = f"_{fname.upper()}_BUFFERS"
            key = "(" + "".join(f"{d}, " for d in dim_vars) + ")"
            self.caches.append(cache)
            lines += [f"    buffers = {cache}.get({key})",
                      "    if buffers is None:  # first call with these dims: allocate the workspace",
                      f"        buffers = {cache}[{key}] = _empty({_shape_list(ctx, plan.slots)})"]
            if len(plan.slots) <= 16:
                lines.append(f"    {', '.join(buffers)}{',' if len(buffers) == 1 else ''} = buffers")
        if any(n in needed for n in self.model.params.values()):
            for name, n in self.model.params.items():
                if n in needed:
                    names.of[n] = names.fresh(name)
            targets = [names.of.get(n, "_") for n in self.model.params.values()]
            lines.append(f"    {', '.join(targets)}{',' if len(targets) == 1 else ''} = _read_params(params)")
        if self.model.state:   # value_and_grad passes on what it does not update, even unused
            lines.append("    state = init_state() if state is None else _read_state(state)")
            for name, n in self.model.state.items():
                if n in needed:
                    names.of[n] = names.fresh(name)
                    lines.append(f"    {names.of[n]} = state[{name!r}]")
        if any(REGISTRY[G[n].op].random for n in needed):
            lines.append("    if rng is None:  # pass a seeded generator for reproducible dropout masks")
            lines.append(f"        rng = {self.xp}.random.default_rng()")
        last_where = None
        for n in plan.order:
            node = G[n]
            if node.is_leaf:
                continue
            where = self.where(node)
            if where != last_where and where:
                lines.append(f"    # {where}")
                last_where = where
            args = [self.ref(a, names.of) for a in node.args]
            ctx.literals = frozenset(i for i, a in enumerate(node.args)
                                     if G[a].op == "const" and not isinstance(G[a].attr("value"), tuple))
            if n in plan.inplace:
                out = names.of[plan.inplace[n]]
            elif n in plan.slot:
                out = buffers[plan.slot[n]]
            else:
                out = None
            var = self.var_name(n, node, names)
            lines += self.statement(ctx, node, var, args, out)
        return lines, names.of, ctx

    def statement(self, ctx: _Context, node: Node, var: str, args: list[str], out: str | None) -> list[str]:
        """One op: a single call, or for elementwise ops a chain of ufuncs run in place."""
        opdef = REGISTRY[node.op]
        attrs = dict(node.attrs)
        note = f"  # {self.describe(node)}"
        if opdef.chain is not None and node.shape != ():
            steps = opdef.chain(attrs)
            lines = []
            for i, (fn, *operands) in enumerate(steps):
                names = [var if o == "$" else args[int(o)] if o.isdigit() else o for o in operands]
                if i == 0:
                    dest = [f"out={out}"] if out else []
                    lines.append(f"    {var} = {self.xp}.{fn}({', '.join(names + dest)}){note}")
                else:
                    lines.append(f"    {self.xp}.{fn}({', '.join(names)}, out={var})")
            return lines
        ctx.target = var
        return [f"    {var} = {opdef.emit(ctx, args, attrs, out=out if opdef.takes_out else None)}{note}"]

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
        """``file.nn:12: the source line``, the comment above the statements a line became."""
        if node.loc is None:
            return None
        key = (node.loc.file, node.loc.line, node.grad_of is not None)
        if key not in self.comments:   # once per line: a line can be long and make thousands of nodes
            text = Sources.line(node.loc.file, node.loc.line)
            label = f"{_basename(node.loc.file)}:{node.loc.line}"
            if text is not None:
                label += f": {text.strip()}"
            if node.grad_of is not None:
                label += "  (backward)"
            self.comments[key] = safe_comment(label)
        return self.comments[key]

    def describe(self, node: Node) -> str:
        shape = show(node.shape) if node.shape else "scalar"
        return shape if node.dtype == "float" else f"{node.dtype} {shape}"

    def ref(self, n: int, names: dict[int, str]) -> str:
        node = self.G[n]
        if node.op == "const":
            value = node.attr("value")
            if node.shape == () or not isinstance(value, tuple):
                return literal(value)
            return f"{self.xp}.array({source(_plain(value))}, dtype=DTYPE)"
        return names[n]

    def array_ref(self, n: int, names: dict[int, str], ctx: _Context) -> str:
        """``ref``, with a constant made a value of the module's dtype (a seed of 1.0 is a Python
        float in the code, but never in what the module returns)."""
        node, expr = self.G[n], self.ref(n, names)
        if node.op != "const":
            return expr
        if node.shape == () and self.backend.scalars:
            return f"DTYPE({expr})"   # a numpy scalar, as numpy's ufuncs return one (CuPy has none)
        if isinstance(node.attr("value"), tuple):
            return expr
        return f"{self.xp}.full({ctx.shape(node.shape)}, {expr}, dtype=DTYPE)"

    def returned(self, values: dict[str, int | None], names: dict[int, str], ctx: _Context, seen: set[int],
                 keep: list[str] | None = None) -> str:
        """A dict of results that never aliases params, inputs, or each other.

        With ``keep`` (the state's names), names without a new value pass the old one on."""
        items = []
        if keep is not None:
            values = {name: values.get(name) for name in keep}
        for name, n in values.items():
            if n is None and keep is not None:
                items.append(f"{name!r}: state[{name!r}]")
                continue
            node = self.G[n if n is not None else self.model.params.get(name, self.model.inputs.get(name))]
            # A scalar is returned as numpy's ufuncs return one, a numpy scalar: immutable, so it
            # needs no copy (CuPy has no scalars: there it is a 0-d array).
            scalar = self.backend.scalars and node.shape == ()
            if n is None:
                expr = "DTYPE(0)" if scalar else f"{self.xp}.zeros({ctx.shape(node.shape)}, dtype=DTYPE)"
            elif node.op == "const":
                expr = self.array_ref(n, names, ctx)
            else:
                expr = self.ref(n, names)
                if REGISTRY[node.op].view or node.is_leaf or n in seen:
                    expr = f"{expr}[()]" if scalar else f"{self.xp}.array({expr})"
                seen.add(n)
            items.append(f"{name!r}: {expr}")
        if not items:
            return "{}"
        return "{\n" + "".join(f"        {item},\n" for item in items) + "    }"


def _shape_list(ctx: _Context, slots: list[tuple[Shape, str]]) -> str:
    """The workspace's shapes as a short list expression: runs of one shape are multiplied."""
    runs: list[list] = []
    for shape, _ in slots:
        if runs and runs[-1][0] == shape:
            runs[-1][1] += 1
        else:
            runs.append([shape, 1])
    parts = [f"[{ctx.shape(shape)}]" + (f" * {count}" if count > 1 else "") for shape, count in runs]
    return " + ".join(parts)


@functools.lru_cache(maxsize=None)
def _basename(file: str) -> str:
    return Path(file).name


_CHECKS = {
    "type": "type({var}) is {value}.ndarray",
    "dtype": "{var}.dtype is {value}",
    "ndim": "{var}.ndim == {value}",
    "shape": "{var}.shape == {value!r}",
    "axis": "{var}.shape[{axis}] == {value}",
    "bind": "({value} := {var}.shape[{axis}]) >= 0",   # binds a dim while the condition runs
    "least": "{var} >= {value}",
}


@dataclass(frozen=True)
class Check:
    """One test of a reader's fast path (``kind`` one of _CHECKS), written out once, as Python."""

    kind: str
    var: str
    value: Any
    axis: int | None = None

    def __str__(self) -> str:
        return _CHECKS[self.kind].format(var=self.var, value=self.value, axis=self.axis)


def _dim_checks(var: str, shape: Shape, dims: dict[str, str], names: Names) -> list[Check]:
    """The tests of one input's axes, once its ndim is known: first bind each dim this input
    is the first to have (``N := X.shape[0]``), then compare every other axis with its size."""
    binds, sizes = [], []
    for axis, d in enumerate(shape):
        if isinstance(d, str) and d not in dims:
            dims[d] = names.fresh(d)
            binds.append(Check("bind", var, dims[d], axis))
        else:
            sizes.append(Check("axis", var, dims[d] if isinstance(d, str) else d, axis))
    return binds + sizes


class _Source(str):
    """Source text that an initialiser's ``{value!r}`` writes as it is."""

    def __repr__(self) -> str:
        return str(self)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


_CONVERT = '''def _convert(values, table, kind, kinds):
    """Check and convert the caller's params or state (init_params() and init_state() make right
    ones): returns them in the table's order."""
    if not hasattr(values, "keys"):
        raise TypeError(f"{kinds} must be a dict of arrays, as init_{kinds}() returns, not {type(values).__name__}")
    missing = [name for name in table if name not in values]
    unknown = sorted(values.keys() - table.keys())
    if missing or unknown:
        wrong = [f"{what} {kind}(s) {names}" for what, names in (("missing", missing), ("unknown", unknown)) if names]
        raise TypeError(f"{'; '.join(wrong)}: this model's {kinds} are {list(table)}")
    arrays = []
    for name, (shape, dtype) in table.items():
        array = np.asarray(values[name])
        if array.dtype.kind not in "fiub":
            raise TypeError(f"{kind} {name!r} must be numeric, not {array.dtype}")
        if array.shape != shape:
            raise ValueError(f"{kind} {name!r} must have shape {list(shape)}, not {list(array.shape)}")
        arrays.append(array.astype(dtype, copy=False))
    return tuple(arrays)'''


_EMPTY = '''def _empty(shapes):
    """Workspace buffers: allocated once per set of dims, then reused by every call."""
    return tuple(np.empty(shape, dtype=DTYPE) for shape in shapes)'''


_CONVERT_INPUTS = '''def _convert_inputs(inputs):
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
        values.append(array)
    for dim, least in MIN_DIMS.items():
        if dims[dim] < least:
            name = next(name for name, (shape, _) in INPUTS.items() if dim in shape)
            raise ValueError(f"input {name!r} has {dim} = {dims[dim]}, but the model takes a fixed entry "
                             f"of that axis that needs {dim} >= {least}")
    for name, array in zip(INPUTS, values):
        limits = [(BOUNDS[name], str(BOUNDS[name]))] if name in BOUNDS else []
        limits += [(dims[dim], f"{dim}) = [0, {dims[dim]}") for dim in DIM_BOUNDS.get(name, ())]
        if not limits or not array.size:
            continue
        (limit, shown), low, high = min(limits), array.min(), array.max()
        if low < 0 or high >= limit:
            raise ValueError(f"input {name!r} holds {low if low < 0 else high}: its entries are class labels or "
                             f"indices, which must lie in [0, {shown})")
    return (*values, *(dims[d] for d in DIMS))'''
