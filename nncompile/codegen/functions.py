"""The generated functions: forward, value_and_grad and trace, each a straight line of
statements in schedule order, with its arguments read, its workspace fetched and its
results returned without aliasing anything the caller holds."""
from __future__ import annotations

from collections import Counter
from typing import Callable

from ..backends import Backend
from ..errors import Sources
from ..ir import Node
from ..ops import REGISTRY, EmitContext, literal
from ..loops import find_loops, loop_schedule
from ..ops.registry import python_form
from ..schedule import Plan, may_be_transposed, plan_buffers, schedule
from ..shapes import Shape, show
from .loops import LoopWriter, loop_reads, named_reads
from .names import Names, basename, c_source, plain, safe_comment, source
from .program import Program

# numpy runs these ufuncs several times slower against a number than against an array of it
# (maximum(x, 0.0) on [64, 256] float32: 7.6 us, against zeros: 1.9 us), so a chain's literal
# operand of theirs is read from a constant array of the workspace (bit for bit the same).
_SLOW_WITH_A_NUMBER = frozenset({"maximum", "minimum"})


class Definitions:
    """What a module defines once, at its top, for all its functions and both modes: the
    workspace caches, the fused kernels, and the comment naming each .nn line."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.caches: list[str] = []
        self.kernels: dict[tuple[str, int], str] = {}
        self.comments: dict[tuple[str, int, bool], str] = {}

    def kernel(self, expr: str, arity: int, var: str) -> str:
        """The module-level ElementwiseKernel computing a fused node (one per distinct expression)."""
        key = (expr, arity)
        if key not in self.kernels:
            name, taken, count = f"_kernel_{var}", set(self.kernels.values()), 1
            while name in taken:  # the same variable name in another function or mode
                count += 1
                name = f"_kernel_{var}__{count}"
            self.kernels[key] = name
        return self.kernels[key]

    def kernel_definitions(self) -> list[str]:
        lines = []
        for (expr, arity), name in self.kernels.items():
            params = ", ".join(f"T x{i}" for i in range(arity))
            definition = self.backend.elementwise_kernel(params, "T y", "y = " + c_source(expr), "nncompile" + name)
            lines.append(f"{name} = {definition}")
        return lines

    def where(self, node: Node) -> str | None:
        """``file.nn:12: the source line``, the comment above the statements a line became."""
        if node.loc is None:
            return None
        key = (node.loc.file, node.loc.line, node.grad_of is not None)
        if key not in self.comments:   # once per line: a line can be long and make thousands of nodes
            text = Sources.line(node.loc.file, node.loc.line)
            label = f"{basename(node.loc.file)}:{node.loc.line}"
            if text is not None:
                label += f": {text.strip()}"
            if node.grad_of is not None:
                label += "  (backward)"
            self.comments[key] = safe_comment(label)
        return self.comments[key]


class _Context(EmitContext):
    """What the ops' emit rules ask while one function is written."""

    def __init__(self, definitions: Definitions, dims: dict[str, str]):
        self.definitions = definitions
        self.dims = dims
        self.backend = definitions.backend
        self.dtype = "DTYPE"
        self.target = "v"   # the variable the statement being emitted defines
        self.grad_views: dict[str, str] = {}   # param -> its view into value_and_grad's gradient buffer
        self.grad_list = ""   # the list of those views where they are indexed (grads_[k]), not named
        self.written: dict[int, str] = {}      # gradient node -> the view it is computed straight into
        self.constants: dict[tuple[float, Shape], str] = {}   # (value, shape) -> workspace array holding it
        self.fresh: Callable[[str], str] | None = None   # names a constant (the function's Names.fresh)

    def filled(self, value: float, shape: Shape) -> str:
        """A read-only array of the workspace holding ``value`` (made once per set of dims);
        inline where the backend fuses (its kernels take numbers as fast)."""
        if self.backend.fuses or self.fresh is None:
            return super().filled(value, shape)
        key = (float(value), tuple(shape))
        if key not in self.constants:
            self.constants[key] = self.fresh({0.0: "zeros", 1.0: "ones"}.get(key[0], "filled"))
        return self.constants[key]

    def kernel(self, expr: str, arity: int) -> str:
        return self.definitions.kernel(expr, arity, self.target)

    def dim(self, symbol: str) -> str:
        return self.dims[symbol]

    def shape(self, shape: Shape) -> str:
        parts = [self.dims[d] if isinstance(d, str) else str(d) for d in shape]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


class FunctionEmitter:
    """Writes the functions of one program (the train-mode one, or forward()'s eval-mode one)."""

    def __init__(self, program: Program, definitions: Definitions, reader: str = "", loops: bool = True):
        self.loops = loops   # write the isomorphic instances of a repeat as one loop (nncompile/loops.py)
        self.reader = f"_read_{reader}_inputs" if reader else "_read_inputs"   # predict() reads PREDICT_INPUTS
        self.p = program
        self.G = program.graph
        self.model = program.model
        self.definitions = definitions
        self.backend = definitions.backend
        self.xp = definitions.backend.xp
        self.dim_names = program.dim_names
        self.transposed: dict[int, bool] = {}   # may_be_transposed's memo

    def function(self, fname: str, outputs: dict[str, int], grads: dict[str, int | None] | None, doc: str) -> str:
        # Gradients in reverse: the last layer's first, as backprop runs, so each activation
        # dies (and its buffer is reused) as early as possible.
        results = [*outputs.values(), *reversed([g for g in (grads or {}).values() if g is not None])]
        updates = self.p.updates if grads is not None else {}
        results += list(updates.values())
        flat = self.flat_grads(grads)
        body, names, ctx = self.body(fname, results, flat)
        ret_out = self.returned(outputs, names, ctx, set())
        if grads is None:
            body.append(f"    return {ret_out}")
        else:
            body += self.fill_grad_views(grads, names, ctx)
            seen = set(outputs.values())
            if ctx.grad_list and list(grads)[:len(flat)] == list(flat):   # every param's view, in order
                body.append(f"    grads = dict(zip(PARAMS, {ctx.grad_list}))  # the views, in PARAMS order")
                rest = {k: v for k, v in grads.items() if k not in flat}
                if rest:
                    body.append(f"    grads.update({self.returned(rest, names, ctx, seen)})")
                ret_grads = "grads"
            elif filled := self.loop_writer and self.loop_writer.grads(grads, ctx, seen, "grads"):
                body += filled   # the gradients a loop kept go in by a loop
                ret_grads = "grads"
            else:
                ret_grads = self.returned({k: v for k, v in grads.items()}, names, ctx, seen, views=ctx.grad_views)
            if flat and not ctx.grad_views:   # a loop's gradient no view could take (LoopWriter.plan_grad_views)
                body.append(f"    grads = _into_one_buffer({ret_grads})  # copied into one buffer's views (see flat_grads)")
                ret_grads = "grads"
            if self.model.state:
                new_state = self.returned(updates, names, ctx, seen, keep=list(self.model.state))
                body.append(f"    return {ret_out}, {ret_grads}, {new_state}")
            else:
                body.append(f"    return {ret_out}, {ret_grads}")
        return "\n".join([f"def {fname}({self.signature(fname)}):", f'    """{doc}"""', *body])

    def signature(self, fname: str) -> str:
        """Positional-only extras, so no input name can collide with them."""
        return "params, state=None, /, **inputs" if fname in ("forward", "predict") else "params, state=None, rng=None, /, **inputs"

    def trace_function(self) -> str:
        """For eval and render: every forward value and every adjoint, keyed by node id."""
        roots = list(self.p.trace_values.values()) + list(self.p.trace_grads.values())
        body, names, ctx = self.body("trace", roots, loops=False)   # every value by its node: unrolled
        values = ", ".join(f"{k}: {self.array_ref(v, names, ctx)}" for k, v in self.p.trace_values.items())
        grads = ", ".join(f"{k}: {self.array_ref(v, names, ctx)}" for k, v in self.p.trace_grads.items())
        body.append(f"    return {{{values}}}, {{{grads}}}")
        return "\n".join([f"def trace({self.signature('trace')}):",
                          '    """Every intermediate value and gradient, keyed by graph node (for nncompile)."""',
                          *body])

    def body(self, fname: str, results: list[int], flat: dict[str, int | None] | None = None, loops: bool = True
             ) -> tuple[list[str], dict[int, str], _Context]:
        """Statements computing ``results``: inputs read, workspace fetched, ops in schedule order
        (a loop's statements once, in a ``for`` over its instances; ``flat``: the param gradients,
        written into one fresh buffer, where no loop keeps them)."""
        order = schedule(self.G, results)
        found = find_loops(self.G, self.model, order, results, self.p.tangents) if loops and self.loops else []
        units = loop_schedule(self.G, results, found) if found else None
        if units is None:
            units, found = order, []
        outer = [u for u in units if isinstance(u, int)]
        plan = plan_buffers(self.G, outer, set(results), loop_reads(self.G, found))
        names = Names()
        self.loop_writer = LoopWriter(self, found, plan, names, set(results)) if found else None
        self.in_workspace = self.loop_writer.copied if found else set()   # returned as copies
        ctx = _Context(self.definitions, {})
        ctx.fresh = names.fresh
        lines = self.read_inputs(names, ctx)
        buffers = self.buffer_names(plan, names)
        if found:
            read = {a for n in outer for a in self.G[n].args} | set(results) | named_reads(found)
            rest = self.loop_writer.read_params(set(order), read)
            rest += self.read_params_and_state(set(order), names, params=False)
            if flat and self.loop_writer.plan_grad_views(flat, results):   # each iteration's into its views
                rest += self.grad_buffer(flat, results, names, ctx, set(outer))
                rest += self.loop_writer.grad_tuples(ctx, names)
        else:
            rest = self.read_params_and_state(set(order), names)
            rest += self.grad_buffer(flat or {}, results, names, ctx)
        rest += self.operations(plan, buffers, names, ctx, units)
        self.workspace(fname, plan, buffers, ctx, lines)   # after the ops: it holds the constants they read
        return lines + rest, names.of, ctx

    def flat_grads(self, grads: dict[str, int | None] | None) -> dict[str, int | None]:
        """value_and_grad's param gradients (param -> node), where they go into one buffer laid
        out like the params (numpy, no scalar params): the optimiser and an all-reduce then see
        one array (runtime.GRADS)."""
        params = self.model.params
        if grads is None or self.backend.fuses or not params or any(self.G[n].shape == () for n in params.values()):
            return {}
        return {name: grads.get(name) for name in params}

    def grad_buffer(self, flat: dict[str, int | None], results: list[int], names: Names, ctx: _Context,
                    outer: set[int] | None = None) -> list[str]:
        """The line fetching the gradient views; the gradients an op can write into its view are
        computed there (``ctx.written``), the others copied there at the end (fill_grad_views).
        With loops, ``outer``: the nodes outside them (a loop writes its own, LoopWriter.grad_tuples)."""
        if not flat:
            return []
        if len(flat) <= 16:
            views = [names.fresh("d_" + name) for name in flat]
            line = f"    {', '.join(views)}{',' if len(views) == 1 else ''} = _new_grads()"
        else:   # a deep model: index the views rather than name a thousand of them
            whole = ctx.grad_list = names.fresh("grads")
            views = [f"{whole}[{k}]" for k in range(len(flat))]
            line = f"    {whole} = _new_grads()"
        ctx.grad_views = dict(zip(flat, views))
        counts = Counter(results)
        for (name, n), view in zip(flat.items(), views):
            if n is not None and counts[n] == 1 and self.writes_into_buffer(self.G[n]) and \
                    (outer is None or n in outer):
                ctx.written[n] = view
        return [line + "  # views into one buffer (see flat_grads)"]

    def writes_into_buffer(self, node: Node) -> bool:
        opdef = REGISTRY[node.op]
        return (not node.is_leaf and not opdef.view and (opdef.chain is not None or opdef.takes_out)
                and node.shape != () and node.dtype == "float")

    def fill_grad_views(self, grads: dict[str, int | None], names: Names, ctx: _Context) -> list[str]:
        """The param gradients not computed in their views, copied there (zeros where there is none)."""
        lines = []
        in_loops = self.loop_writer.grads_written if self.loop_writer else set()
        for name, view in ctx.grad_views.items():
            n = grads.get(name)
            if name in in_loops:
                continue
            if n is None:
                lines.append(f"    {view}[...] = 0")
            elif n not in ctx.written:
                lines.append(f"    {self.xp}.copyto({view}, {self.array_ref(n, names, ctx)})")
        return lines

    def read_inputs(self, names: Names, ctx: _Context) -> list[str]:
        input_vars = [names.fresh(name) for name in self.model.inputs]
        for name, var in zip(self.model.inputs, input_vars):
            names.of[self.model.inputs[name]] = var
        dim_vars = [names.fresh(d) for d in self.dim_names]
        ctx.dims.update(zip(self.dim_names, dim_vars))
        targets = ", ".join(input_vars + dim_vars)
        if targets:
            return [f"    {targets}{',' if len(input_vars) + len(dim_vars) == 1 else ''} = {self.reader}(inputs)"]
        return [f"    {self.reader}(inputs)"]

    def buffer_names(self, plan: Plan, names: Names) -> list[str]:
        """The workspace buffers' names in the code."""
        if len(plan.slots) <= 16:
            return [names.fresh(f"buf{k}") for k in range(len(plan.slots))]
        return [f"buffers[{k}]" for k in range(len(plan.slots))]   # a deep model: indexed, not named

    def workspace(self, fname: str, plan: Plan, buffers: list[str], ctx: _Context, lines: list[str]) -> None:
        """Append the lines fetching the workspace (allocated once per set of dims): the buffers,
        then the constants the statements read (``ctx.filled``), by value."""
        values = dict.fromkeys(value for value, _ in ctx.constants)   # in the order the statements asked
        constants = [(key, name) for value in values for key, name in ctx.constants.items() if key[0] == value]
        if not plan.slots and not constants:
            return
        cache = f"_{fname.upper()}_BUFFERS"
        key = "(" + "".join(f"{ctx.dims[d]}, " for d in self.dim_names) + ")"
        self.definitions.caches.append(cache)
        filled = []
        for value in values:   # one buffer per value, a view of it per shape
            shapes = ", ".join(ctx.shape(shape) for (v, shape), _ in constants if v == value)
            filled.append(f"_filled({literal(value)}, [{shapes}])")
        lines += [f"    buffers = {cache}.get({key})",
                  "    if buffers is None:  # first call with these dims: allocate the workspace"]
        parts = [f"_empty({_shape_list(ctx, plan.slots)})"] if plan.slots else []
        if filled:   # on a line of their own: the buffers' line of a deep model is long already
            parts.append(ctx.fresh("constants"))
            lines.append(f"        {parts[-1]} = {' + '.join(filled)}  # read only")
        lines.append(f"        buffers = {cache}[{key}] = {' + '.join(parts)}")
        named = [b for b in buffers if b.isidentifier()] + [name for _, name in constants]
        if named:
            start = "" if len(named) == len(buffers) + len(constants) else f"[{len(buffers)}:]"
            lines.append(f"    {', '.join(named)}{',' if len(named) == 1 else ''} = buffers{start}")

    def read_params_and_state(self, needed: set[int], names: Names, params: bool = True) -> list[str]:
        """The params and state the statements use, and the random generator if they draw."""
        lines = []
        if params and any(n in needed for n in self.model.params.values()):
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
        if any(REGISTRY[self.G[n].op].random for n in needed):
            lines.append("    rng = _generator(rng)  # None: fresh dropout masks; a seed: the same masks each time")
        return lines

    def operations(self, plan: Plan, buffers: list[str], names: Names, ctx: _Context, units: list) -> list[str]:
        """The ops in schedule order, each under the comment naming its .nn line."""
        G, lines, last_where = self.G, [], None
        for n in units:
            if not isinstance(n, int):   # a loop over instances of a repeat
                lines += self.loop_writer.loop(n, buffers, ctx)
                last_where = None
                continue
            node = G[n]
            if node.is_leaf:
                continue
            comment, last_where = self.source_comment(node, last_where, "    ")
            lines += comment
            args = [self.ref(a, names.of) for a in node.args]
            ctx.literals = self.literal_operands(node)
            if n in ctx.written:
                out = ctx.written[n]
            elif n in plan.inplace:
                out = names.of[plan.inplace[n]]
            elif n in plan.slot:
                out = buffers[plan.slot[n]]
            else:
                out = None
            if out is not None and out.isidentifier() and ctx.written.get(n) == out:
                var = names.of[n] = out   # the gradient's view, by name
            else:
                var = self.var_name(n, node, names)
            lines += self.statement(ctx, node, var, args, out)
        return lines

    def source_comment(self, node: Node, last_where: str | None, indent: str) -> tuple[list[str], str | None]:
        """The comment naming the node's .nn line, unless the statement before had the same."""
        where = self.definitions.where(node)
        if where != last_where and where:
            return [f"{indent}# {where}"], where
        return [], last_where

    def literal_operands(self, node: Node) -> frozenset[int]:
        """The positions of the node's number operands (not tuples), which an op may write as literals."""
        G = self.G
        return frozenset(i for i, a in enumerate(node.args)
                         if G[a].op == "const" and not isinstance(G[a].attr("value"), tuple))

    def statement(self, ctx: _Context, node: Node, var: str, args: list[str], out: str | None) -> list[str]:
        """One op: a single call, or for elementwise ops a chain of ufuncs run in place."""
        opdef = REGISTRY[node.op]
        attrs = dict(node.attrs)
        note = f"  # {self.describe(node)}"
        ctx.operand_shapes = tuple(self.G[a].shape for a in node.args)
        scalars = opdef.chain is not None and node.shape == () and self.backend.scalars and \
            all(self.G[a].shape == () for a in node.args)
        expr = python_form(opdef.chain(attrs)) if scalars else None
        if scalars and len(ctx.literals) == len(args) and node.dtype == "float":
            # Numbers only (an unoptimised module folds nothing): numpy computes in float64, as
            # Python would, but with numpy's inf and nan where Python raises (1.0 / 0.0,
            # 1e300 ** 2.0) or goes complex ((-8.0) ** 0.5); the value, like every other, is of
            # the module's dtype.
            numbers = [f"{self.xp}.float64({a})" for a in args]
            value = expr.format(*numbers) if expr is not None else opdef.emit(ctx, numbers, attrs)
            return [f"    {var} = {ctx.dtype}({value}){note}"]
        if expr is not None:   # numpy scalars: Python's operators run the same loops, faster
            return [f"    {var} = {expr.format(*args)}{note}"]
        lines = []
        c_order = out is None and self.asks_c_order(node)
        if c_order and (opdef.chain is None or not self.backend.ufunc_order):
            lines.append(f"    {var} = {self.xp}.empty({ctx.shape(node.shape)}, dtype=DTYPE)  # in C order")
            out = var
        if opdef.chain is not None and node.shape != ():
            for i, (fn, *operands) in enumerate(opdef.chain(attrs)):
                names = [var if o == "$" else args[int(o)] if o.isdigit() else self.number(ctx, fn, o, node.shape)
                         for o in operands]
                if i == 0:
                    dest = [f"out={out}"] if out else ["order='C'"] if c_order else []
                    lines.append(f"    {var} = {self.xp}.{fn}({', '.join(names + dest)}){note}")
                else:
                    lines.append(f"    {self.xp}.{fn}({', '.join(names)}, out={var})")
            return lines
        ctx.target = var
        return lines + [f"    {var} = {opdef.emit(ctx, args, attrs, out=out if opdef.takes_out else None)}{note}"]

    def asks_c_order(self, node: Node) -> bool:
        """Whether a fresh result is asked for in C order: an elementwise chain's, or an op's
        that writes into an ``out=``, where an operand may be a transpose (numpy would make it
        in the transpose's layout, where a workspace buffer, or a loop's, is C-ordered; a sum
        over it would then add in another order). See may_be_transposed."""
        opdef = REGISTRY[node.op]
        rank = len(node.shape)
        if rank < 2 or rank <= opdef.c_result or opdef.chain is None and not opdef.takes_out:
            return False
        if node.dtype != "float" and not (opdef.chain is not None and self.backend.ufunc_order):
            return False   # no order= to ask, and no empty array of the module's dtype to write into
        return any(may_be_transposed(self.G, a, self.transposed) for a in node.args)

    def number(self, ctx: _Context, fn: str, text: str, shape: Shape) -> str:
        """A chain's literal operand: as written, or a constant array where numpy's ufunc is slow
        against a number (_SLOW_WITH_A_NUMBER)."""
        try:
            value = float(text.strip("()"))
        except ValueError:   # np.inf, np.nan: as written
            return text
        return ctx.filled(value, shape) if fn in _SLOW_WITH_A_NUMBER else text

    def var_name(self, n: int, node: Node, names: Names) -> str:
        if node.grad_of is not None and self.G.nx.has_node(node.grad_of) and self.G[node.grad_of].name:
            var = names.fresh("d_" + self.G[node.grad_of].name)
        elif node.grad_of is None and node.name:
            var = names.fresh(node.name)
        else:
            var = names.temp()
        names.of[n] = var
        return var

    def describe(self, node: Node) -> str:
        shape = show(node.shape) if node.shape else "scalar"
        return shape if node.dtype == "float" else f"{node.dtype} {shape}"

    def ref(self, n: int, names: dict[int, str]) -> str:
        node = self.G[n]
        if node.op == "const":
            value = node.attr("value")
            if node.shape == () or not isinstance(value, tuple):
                return literal(value)
            return f"{self.xp}.array({source(plain(value))}, dtype=DTYPE)"
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
                 keep: list[str] | None = None, views: dict[str, str] | None = None) -> str:
        """A dict of results that never aliases params, inputs, or each other (``views``: the
        gradients that are views of this call's one gradient buffer, disjoint and fresh).

        With ``keep`` (the state's names), names without a new value pass the old one on."""
        items = []
        if keep is not None:
            values = {name: values.get(name) for name in keep}
        for name, n in values.items():
            if views and name in views:
                items.append(f"{name!r}: {views[name]}")
                continue
            if n is None and keep is not None:
                items.append(f"{name!r}: state[{name!r}]")
                continue
            node = self.G[n if n is not None else self.model.params.get(name, self.model.inputs.get(name))]
            # A scalar is returned as numpy's ufuncs return one, a numpy scalar: immutable, so it
            # needs no copy (CuPy has no scalars: there it is a 0-d array). The reader makes scalar
            # inputs numpy scalars already.
            scalar = self.backend.scalars and node.shape == ()
            if scalar and n in self.model.inputs.values():
                expr = self.ref(n, names)
            elif n is None:
                expr = "DTYPE(0)" if scalar else f"{self.xp}.zeros({ctx.shape(node.shape)}, dtype=DTYPE)"
            elif node.op == "const":
                expr = self.array_ref(n, names, ctx)
            else:
                expr = self.ref(n, names)
                if REGISTRY[node.op].view or node.is_leaf or n in seen or n in self.in_workspace:
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
