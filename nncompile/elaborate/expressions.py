"""Expressions: names looked up, arithmetic and calls turned into op nodes (or layer
instances), subscripts into views and gathers."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Callable

from .. import syntax
from ..autodiff import differentiate
from ..errors import Loc, NNError, NNWarning, closest
from ..initializers import INITIALIZERS
from ..ops import REGISTRY, OpDef, constant
from ..shapes import ShapeError, show
from .constants import is_none, is_number, left_chain, neg_chain
from .core import Scope
from .imports import stdlib_layers

if TYPE_CHECKING:
    from . import Elaborator

LANGUAGE_CALLS = ("grad",)   # calls the elaborator builds itself: no registry op has these names

class Expressions:
    """Builds the graph nodes of an expression and returns the node of its value."""

    def __init__(self, el: Elaborator):
        self.el = el

    def expr(self, expr: syntax.Expr, scope: Scope, scope_hint: str | None = None) -> int:
        el = self.el
        match expr:
            case syntax.Number(value=value):
                return el.constant(float(value), expr.loc)
            case syntax.Ref():
                return self.lookup(expr, scope)
            case syntax.BinOp():
                if el.consts.is_arithmetic(expr, scope):   # numbers only: the checks of a const (1 / 0, 10 ** 400)
                    el.consts.eval(expr, scope)
                chain = left_chain(expr)   # a + b + c + ... in a loop, however long
                value = self.expr(chain[0].left, scope)
                for binop in chain:
                    # the parser names each operator by the op it is (syntax.BinOp.op): `@` is matmul
                    value = el.op(binop.op, [value, self.expr(binop.right, scope)], {}, binop.loc, scope)
                return value
            case syntax.Compare(cmp=cmp, left=left, right=right):   # a mask of 0s and 1s, no gradient
                operands = [self.expr(left, scope), self.expr(right, scope)]
                return el.op("step", operands, {"cmp": cmp}, expr.loc, scope, [left.loc, right.loc])
            case syntax.Transposed(operand=syntax.Ref(parts=parts)) if ".".join((*parts, "T")) in scope.values:
                name = ".".join(parts)
                if name in scope.values:   # y = f(X) names the result and the instance alike
                    raise NNError(f"'{name}.T' is both the transpose of {name} and the member T of the layer "
                                  f"instance {name}; write transpose({name}) for the transpose, or name the call "
                                  "with 'as' and another name, and read the member through that one", expr.loc)
                return scope.values[f"{name}.T"]   # a layer's member named T: fc.T
            case syntax.Transposed(operand=operand):
                return el.op("transpose", [self.expr(operand, scope)], {"axes": None}, expr.loc, scope)
            case syntax.Neg(operand=syntax.Number(value=value)):
                return el.constant(-float(value), expr.loc)
            case syntax.Neg():
                negs, operand = neg_chain(expr)
                value = self.expr(operand, scope)
                for _ in range(negs):
                    value = el.op("neg", [value], {}, expr.loc, scope)
                return value
            case syntax.Call():
                return self.call(expr, scope, scope_hint)
            case syntax.Repeat():
                return el.layers.repeat(expr, scope, scope_hint)
            case syntax.ListExpr():
                return el.const_tensor(el.consts.tensor_value(expr, scope, "a list in an expression"), expr.loc)
            case syntax.Bool():
                raise NNError("true and false are only allowed as op attributes (like keepdims=true)", expr.loc)
            case syntax.Index():
                return self.index(expr, scope)
        raise NNError("unsupported expression", expr.loc)  # pragma: no cover - the grammar has no others

    def lookup(self, ref: syntax.Ref, scope: Scope) -> int:
        el = self.el
        name = ref.name
        if name in scope.values:
            return scope.values[name]
        if len(ref.parts) == 1:
            if name in scope.consts:
                value = scope.consts[name]
                if is_number(value):
                    return el.constant(float(value), ref.loc, name=ref.name)  # named in diagrams
                if isinstance(value, list):
                    return el.const_tensor(el.consts.tensor_value(ref, scope, f"'{name}'"), ref.loc, name=ref.name)
                if isinstance(value, str):   # const M = N: another name for a symbolic dim, a number as N is
                    return el.G.add("dim", (), {"symbols": (value,), "factor": 1}, loc=ref.loc)
                raise NNError(f"'{name}' is {value!r}, not a number", ref.loc)
            if name in scope.dims:
                dim = scope.dims[name]
                if isinstance(dim, int):
                    return el.constant(float(dim), ref.loc)
                return el.G.add("dim", (), {"symbols": (dim,), "factor": 1}, loc=ref.loc)
            if name in el.symbolic_dims():   # the batch size N as a number: sum(x) / N
                return el.G.add("dim", (), {"symbols": (name,), "factor": 1}, loc=ref.loc)
        if name == "None":
            raise NNError("None is a new axis in a subscript (x[:, None]) or an attribute not given "
                          "(axis=None), not a value", ref.loc)
        raise el.unknown(name, ref.loc, scope)

    def index(self, expr: syntax.Index, scope: Scope) -> int:
        """``x[2, 0:3, idx]`` as numpy reads it: integers and fixed slices make a view (the
        ``slice`` op), integer tensors among the subscripts a gather (``index``). Bounds are
        made non-negative where the dim is known, so x[:, -3:] and x[:, 2:5] are one value."""
        el = self.el
        target = self.expr(expr.target, scope)
        shape = el.G[target].shape
        subscripts, new_axes = _expand_subscripts(expr.subscripts, shape, lambda sub: is_none(sub, scope))
        key: list[str] = []
        tensors: list[int] = []
        locs = [expr.target.loc]
        for axis, sub in enumerate(subscripts):
            dim = shape[axis]
            match sub:
                case syntax.Slice(start=start, stop=stop):
                    start, stop = (None if e is None else el.consts.index(e, scope) for e in (start, stop))
                    if isinstance(dim, int) and (start, stop) != (None, None):
                        start, stop, _ = slice(start, stop).indices(dim)
                    key.append(":" if (start, stop) in ((None, None), (0, dim)) else
                               f"{'' if start is None else start}:{'' if stop is None else stop}")
                case _ if el.consts.is_static(sub, scope):
                    value = el.consts.index(sub, scope)
                    key.append(str(value + dim if isinstance(dim, int) and -dim <= value < 0 else value))
                    if isinstance(dim, str):   # X[7] needs N >= 8, X[-2] N >= 2: checked when the module is called
                        el.model.min_dims[dim] = max(el.model.min_dims.get(dim, 0),
                                                     value + 1 if value >= 0 else -value)
                case _:
                    node = self.expr(sub, scope)
                    tensors.append(node)
                    key.append(f"{{{len(tensors)}}}")
                    locs.append(sub.loc)
                    if el.G[node].dtype == "int":
                        el.bound(node, dim)
        while key and key[-1] == ":":   # x[i, :] is x[i]
            key.pop()
        value = target                   # x[:] is x
        if key:
            value = el.op("index" if tensors else "slice", [target, *tensors], {"key": tuple(key)},
                          expr.loc, scope, locs)
        if new_axes:
            if tensors:
                raise NNError("None (a new axis) cannot be mixed with index tensors in one subscript; index "
                              "first, then add the axis: t = x[i] and then t[:, None]", new_axes[0][1])
            value = self._with_new_axes(value, [at for at, _ in new_axes], expr, scope)
        return value

    def _with_new_axes(self, value: int, at: list[int], expr: syntax.Index, scope: Scope) -> int:
        """``x[:, None]``: a view with axes of size 1 inserted at the positions ``at`` of the result."""
        dims = list(self.el.G[value].shape)
        for position in at:
            dims.insert(position, 1)
        return self.el.op("reshape", [value], {"shape": tuple(dims)}, expr.loc, scope)

    def call(self, call: syntax.Call, scope: Scope, scope_hint: str | None) -> int:
        """A call of a layer (inlined) or of a public op."""
        el = self.el
        if call.func in el.layers.defined:
            return el.layers.call(call, scope, scope_hint)
        if call.scope is not None:
            raise NNError(f"'as {call.scope}' names a layer instance, but {call.func} is not a layer", call.loc)
        if call.func == "grad":   # LANGUAGE_CALLS
            return self.grad(call, scope)
        opdef = REGISTRY.get(call.func)
        if opdef is None or not opdef.public:
            if call.func in scope.later:   # a layer defined further down
                raise el.unknown(call.func, call.loc, scope)
            if call.func in INITIALIZERS:
                raise NNError(f"{call.func}() is an initialiser: use it in a param declaration, "
                              f"like 'param W: [3, 4] = {call.func}()'", call.loc)
            module = stdlib_layers().get(call.func)
            if module is not None:
                raise NNError(f"unknown op or layer '{call.func}': it is a layer of the standard library "
                              f"module '{module}'; add 'import {module}' at the top of the file", call.loc)
            known = [n for n, d in REGISTRY.items() if d.public] + list(el.layers.defined)
            close = closest(call.func, known)
            raise NNError(f"unknown op or layer '{call.func}'" + (f"; did you mean '{close}'?" if close else ""),
                          call.loc)
        return self.op_call(opdef, call, scope)

    def op_call(self, opdef: OpDef, call: syntax.Call, scope: Scope) -> int:
        """Bind a call's arguments to an op's tensors and attributes, then build the op (or let a
        mode-dependent op lower itself)."""
        el = self.el
        attr_names = [a for a, _ in opdef.attrs]
        # A variadic op (arity -1: concat, l2) takes every positional argument as a tensor,
        # so its attributes are given by keyword: concat(a, b, axis=1).
        arity = len(call.args) if opdef.arity < 0 else opdef.arity
        positional = [] if opdef.arity < 0 else attr_names
        if opdef.arity < 0 and not call.args:
            raise NNError(f"{opdef.name}() needs at least one tensor argument", call.loc)
        if opdef.arity < 0 and attr_names:
            for arg in call.args:
                match arg:
                    case syntax.Number() | syntax.Bool():
                        raise NNError(f"{opdef.name}() takes any number of tensors, so give "
                                      f"{' and '.join(attr_names)} by keyword, like {attr_names[0]}=...", arg.loc)
        if len(call.args) < arity:
            raise NNError(f"{opdef.name}() takes {arity} tensor argument(s), got {len(call.args)}", call.loc)
        if len(call.args) > arity + len(positional):
            most = arity + len(positional)
            raise NNError(f"{opdef.name}() takes at most {most} argument{'s' if most != 1 else ''}, "
                          f"got {len(call.args)}", call.args[most].loc)
        args = [self.expr(a, scope) for a in call.args[:arity]]
        attrs: dict[str, Any] = dict(opdef.attrs)
        given: set[str] = set()
        for name, value in zip(positional, call.args[arity:]):
            if el.consts.is_tensor(value, scope):
                pairwise = opdef.pairwise
                raise NNError(f"{opdef.name}() takes {arity} tensor argument(s), then '{name}', which must be a "
                              "constant, but this is a tensor" + (f"; for the elementwise {opdef.name} of two "
                              f"tensors use {pairwise}(a, b)" if pairwise else ""), value.loc)
            attrs[name] = el.consts.attribute(value, scope)
            given.add(name)
        for name, value, loc in call.kwargs:
            if name not in attrs:
                raise NNError(f"{opdef.name}() has no argument '{name}'"
                              + (f"; it takes {', '.join(attr_names)}" if attr_names else ""), loc)
            if name in given:
                raise NNError(f"{opdef.name}() got '{name}' twice", loc)
            attrs[name] = el.consts.attribute(value, scope)
            given.add(name)
        if "shape" in attrs and not isinstance(attrs["shape"], tuple):
            raise NNError(f"{opdef.name}() needs a shape, like {opdef.name}(x, [2, 3])"
                          + ("" if attrs["shape"] is None else f", not {attrs['shape']!r}"), call.loc)
        if opdef.lower is not None:  # an op that builds itself from others: a composite, or dropout by mode
            el.model.mode_dependent |= opdef.mode_dependent
            try:
                return opdef.lower(el, args, attrs, call.loc, scope)
            except ShapeError as exc:
                where = call.args[exc.arg].loc if exc.arg is not None and exc.arg < arity else call.loc
                raise el.shape_error(exc, where, None, args, attrs, scope) from None   # a composite: no retry
        return el.op(opdef.name, args, attrs, call.loc, scope, [a.loc for a in call.args])

    def grad(self, call: syntax.Call, scope: Scope) -> int:
        """``grad(f, x)``: d f / d x built into the graph here, by the same reverse mode as the
        model's backward pass (which later differentiates it again: double backprop). With a
        list ``[W, b]``, the gradients flattened and concatenated into one vector."""
        el = self.el
        usage = "like grad(loss, X) or grad(loss, [W, b])"
        if call.kwargs:
            raise NNError(f"grad() takes no keyword arguments; {usage}", call.kwargs[0][2])
        if len(call.args) != 2:
            raise NNError(f"grad() takes 2 arguments, the scalar to differentiate and what to differentiate it "
                          f"with respect to, got {len(call.args)}; {usage}", call.loc)
        what, wrt = call.args
        target = self.expr(what, scope)
        node = el.G[target]
        if node.shape != () or node.dtype != "float":
            raise NNError(f"grad() differentiates a float scalar, but this is {node.dtype}{show(node.shape)}; "
                          "take sum() or mean() of it first", what.loc)
        refs = wrt.items if isinstance(wrt, syntax.ListExpr) else (wrt,)
        if not refs:
            raise NNError(f"grad() needs something to differentiate with respect to; {usage}", wrt.loc)
        leaves = [self.grad_leaf(ref, scope) for ref in refs]
        adjoints = differentiate(el.G, target, leaves)
        grads = []
        for ref, leaf in zip(refs, leaves):
            if leaf not in adjoints:
                warnings.warn(NNWarning(f"this does not depend on '{ref.name}': its gradient is zero", ref.loc),
                              stacklevel=2)
            grads.append(adjoints[leaf] if leaf in adjoints else constant(el.G, 0.0, el.G[leaf].shape))
        if not isinstance(wrt, syntax.ListExpr):
            return grads[0]
        flat = [self.flattened(g, ref) for g, ref in zip(grads, refs)]
        return flat[0] if len(flat) == 1 else el.op("concat", flat, {"axis": 0}, call.loc, scope)

    def grad_leaf(self, ref: syntax.Expr, scope: Scope) -> int:
        """What grad() differentiates with respect to: a named float value."""
        if not isinstance(ref, syntax.Ref):
            raise NNError("grad() differentiates with respect to a name (a param, an input or a value), "
                          "like grad(loss, X)", ref.loc)
        n = self.lookup(ref, scope)
        node = self.el.G[n]
        if node.dtype != "float":
            raise NNError(f"'{ref.name}' is {node.dtype}{show(node.shape)}: only floats have gradients", ref.loc)
        return n

    def flattened(self, n: int, ref: syntax.Ref) -> int:
        shape = self.el.G[n].shape
        if any(isinstance(d, str) for d in shape):
            raise NNError(f"grad() of a list concatenates the gradients, so each needs a fixed shape, but "
                          f"'{ref.name}' is {show(shape)}; take grad() with respect to it alone", ref.loc)
        size = 1
        for d in shape:
            size *= d
        return self.el.G.add("reshape", [n], {"shape": (size,)}, loc=ref.loc) if shape != (size,) else n


Subscript = syntax.Expr | syntax.Slice


def _expand_subscripts(subscripts: tuple, shape: tuple, new_axis: Callable[[Subscript], bool]
                       ) -> tuple[list[Subscript], list[tuple[int, Loc]]]:
    """numpy's ``...`` and ``None`` taken out of a subscript: ``...`` becomes as many ``:`` as the
    axes not written, and each ``None`` (where ``new_axis`` says it is one) a new axis, returned
    as its position in the result (with its location, for errors)."""
    ellipses = [s for s in subscripts if isinstance(s, syntax.EllipsisIndex)]
    if len(ellipses) > 1:
        raise NNError("a subscript may have only one '...'", ellipses[1].loc)
    written = [s for s in subscripts if not (new_axis(s) or isinstance(s, syntax.EllipsisIndex))]
    if len(written) > len(shape):
        raise NNError(f"too many subscripts: the value has shape {show(shape)} ({len(shape)} axes), "
                      f"but {len(written)} are given", written[len(shape)].loc)
    out: list[Subscript] = []
    new_axes: list[tuple[int, Loc]] = []
    position = 0   # the result's axis the next subscript makes
    for sub in subscripts:
        if new_axis(sub):
            new_axes.append((position, sub.loc))
            position += 1
        elif isinstance(sub, syntax.EllipsisIndex):
            fill = len(shape) - len(written)
            out += [syntax.Slice(sub.loc, None, None)] * fill
            position += fill
        else:
            out.append(sub)
            position += isinstance(sub, syntax.Slice)   # an integer drops its axis
    return out, new_axes
