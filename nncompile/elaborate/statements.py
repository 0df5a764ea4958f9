"""Statements: declarations of inputs, params and state, assignments, outputs and the loss,
``train { }`` and ``eval { }`` blocks and the state updates in them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import syntax
from ..errors import Loc, NNError, closest
from ..initializers import INITIALIZERS, fans
from ..limits import MAX_DIM
from ..shapes import Dim, Shape, show
from .core import Scope, check_size

if TYPE_CHECKING:
    from . import Elaborator


_DEFINITIONS = (syntax.Const, syntax.Input, syntax.Param, syntax.State, syntax.Assign, syntax.Layer)   # define a name


@dataclass(frozen=True)
class ParamInit:
    """How a param gets its first value: an initialiser and its arguments."""

    init: str
    args: tuple[tuple[str, float], ...]
    fan_in: int
    fan_out: int


class Statements:
    """Runs statements in order, in one scope; ``train { }`` blocks count in train mode only,
    ``eval { }`` blocks in eval mode only."""

    def __init__(self, el: Elaborator):
        self.el = el
        self.phase: str | None = None    # the train/eval block being elaborated, if any
        self.dtype_at: Loc | None = None   # the dtype statement, once one has run

    def body(self, body: tuple[syntax.Stmt, ...], scope: Scope) -> int | None:
        """Run a file's or a layer's statements; the node of the value it returns, if any."""
        returned = None
        for stmt in reversed(body):   # the first definition of a name is the one a hint points to
            if isinstance(stmt, _DEFINITIONS):
                scope.later[stmt.name] = stmt.loc
            if isinstance(stmt, syntax.Input) and stmt.type is not None and stmt.type.shape is not None:
                for expr in stmt.type.shape:
                    if isinstance(expr, syntax.Ref) and len(expr.parts) == 1:
                        scope.later_dims[expr.parts[0]] = expr.loc
        for stmt in body:
            if returned is not None:
                raise NNError("statements after 'return' are never run", stmt.loc)
            if isinstance(stmt, _DEFINITIONS):
                scope.later.pop(stmt.name, None)
            returned = self.statement(stmt, scope)
        return returned

    def statement(self, stmt: syntax.Stmt, scope: Scope) -> int | None:
        el = self.el
        match stmt:
            case syntax.Const(name=name, value=value):
                scope.define(name, stmt.loc)
                scope.consts[name] = el.consts.eval(value, scope)
            case syntax.Input():
                self.top_only(stmt, scope, "input")
                self.outside_phase(stmt, "input")
                self.input(stmt, scope)
            case syntax.Param():
                self.outside_phase(stmt, "param")
                self.leaf(stmt, scope, "param")
            case syntax.State():
                self.outside_phase(stmt, "state")
                self.leaf(stmt, scope, "state")
            case syntax.Update():
                self.update(stmt, scope)
            case syntax.Assign(name=name, value=value):
                scope.define(name, stmt.loc)
                hint = name if isinstance(value, (syntax.Call, syntax.Repeat)) else None   # names the instance
                self.bind(scope, name, el.exprs.expr(value, scope, scope_hint=hint))
            case syntax.Output(names=names):
                self.top_only(stmt, scope, "output")
                for name, loc in names:
                    el.model.outputs[name] = el.exprs.lookup(syntax.Ref(loc, tuple(name.split("."))), scope)
            case syntax.Minimize():
                self.top_only(stmt, scope, "minimize")
                self.minimize(stmt, scope)
            case syntax.Return(value=value):
                if scope.in_layer is None:
                    raise NNError("'return' is only allowed inside a layer", stmt.loc)
                return el.exprs.expr(value, scope)
            case syntax.Layer():
                self.top_only(stmt, scope, "layer definition")
                el.layers.define(stmt, scope)
            case syntax.Import():
                self.top_only(stmt, scope, "import")
                el.imports.follow(stmt, scope)
            case syntax.DType(dtype=dtype):
                self.top_only(stmt, scope, "dtype")
                if self.dtype_at is not None:   # else the last one would silently win
                    raise NNError(f"the dtype is set already (to {el.model.dtype}); a file has one dtype statement",
                                  stmt.loc, notes=(("set here", self.dtype_at),))
                self.dtype_at = stmt.loc
                el.model.dtype = dtype
            case syntax.Phase():
                return self.phase_block(stmt, scope)
        return None

    def minimize(self, stmt: syntax.Minimize, scope: Scope) -> None:
        el = self.el
        node = el.exprs.lookup(syntax.Ref(stmt.loc, (stmt.name,)), scope)
        loss = el.G[node]
        if loss.shape != () or loss.dtype != "float":
            raise NNError(f"the loss must be a float scalar, but '{stmt.name}' is "
                          f"{loss.dtype}{show(loss.shape)}; reduce it with sum() or mean()", stmt.loc)
        if el.model.loss is not None:
            raise NNError("only one 'minimize' statement is allowed", stmt.loc)
        el.model.loss = node
        el.model.outputs.setdefault(stmt.name, node)

    def phase_block(self, block: syntax.Phase, scope: Scope) -> int | None:
        """A compile-time branch: its statements count only in its own mode, and what they
        define is visible after the block."""
        if self.phase is not None:
            raise NNError(f"a '{block.phase}' block cannot be nested in a '{self.phase}' block", block.loc)
        self.el.model.mode_dependent = True
        if block.phase != self.el.mode:
            for stmt in block.body:   # for the error where this mode reads one of them
                if isinstance(stmt, _DEFINITIONS):
                    scope.other_mode.setdefault(stmt.name, (block.phase, stmt.loc))
            return None
        self.phase = block.phase
        try:
            return self.body(block.body, scope)
        finally:
            self.phase = None

    def update(self, stmt: syntax.Update, scope: Scope) -> None:
        el = self.el
        if self.phase != "train":
            raise NNError("'update' changes state while training, so it belongs in a 'train { }' block", stmt.loc)
        target = el.exprs.lookup(stmt.target, scope)
        node = el.G[target]
        if node.op != "state":
            raise NNError(f"'{stmt.target.name}' is not declared with 'state', so it cannot be updated",
                          stmt.target.loc)
        if node.name in el.model.updates:
            raise NNError(f"'{stmt.target.name}' is updated twice", stmt.loc)
        value = el.exprs.expr(stmt.value, scope)
        got = el.G[value]
        if got.shape != node.shape or got.dtype != "float":
            raise NNError(f"the new value of '{stmt.target.name}' is {got.dtype}{show(got.shape)}, "
                          f"but the state is float{show(node.shape)}", stmt.value.loc)
        el.model.updates[node.name] = value

    def outside_phase(self, stmt: syntax.Input | syntax.Param | syntax.State, what: str) -> None:
        """Train and eval mode share one module's inputs, params and state, so nothing declares
        them in one mode only."""
        if self.phase is not None:
            raise NNError(f"declare {what}s outside '{self.phase}' blocks: both modes share them", stmt.loc)

    def top_only(self, stmt: syntax.Node, scope: Scope, what: str) -> None:
        if scope.in_layer is not None:
            raise NNError(f"{what} statements are not allowed inside layer '{scope.in_layer}'", stmt.loc)

    def bind(self, scope: Scope, name: str, node: int) -> None:
        """Name a value after the variable it is assigned to (``scores = affine(h) as fc2``)."""
        el = self.el
        scope.values[name] = node
        if el.G[node].name is None or node in el.instance_results:
            el.G.set(node, name=scope.qualify(name))
            el.instance_results.discard(node)

    def input(self, stmt: syntax.Input, scope: Scope) -> None:
        el = self.el
        scope.define(stmt.name, stmt.loc)
        dtype, shape = "float", ()
        if stmt.type is not None:
            dtype = stmt.type.dtype or "float"
            shape = self.shape(stmt.type, scope, symbolic=True)
        elif stmt.default is None:
            raise NNError(f"input '{stmt.name}' needs a type (like float[N, 3]) or a default value", stmt.loc)
        if stmt.default is not None:
            value = np.asarray(el.consts.tensor_value(stmt.default, scope, f"the default of '{stmt.name}'"),
                               dtype=float if dtype == "float" else None)
            if dtype == "int" and not np.issubdtype(value.dtype, np.integer):
                raise NNError(f"input '{stmt.name}' is int, but its default is not an integer", stmt.default.loc)
            if stmt.type is None:
                shape = value.shape
            elif value.shape != shape:
                raise NNError(f"the default of '{stmt.name}' has shape {show(value.shape)}, "
                              f"but the input is declared {show(shape)}", stmt.default.loc)
            el.model.defaults[stmt.name] = value.tolist()
        node = el.G.add("input", (), {"name": stmt.name, "shape": shape, "dtype": dtype},
                        name=stmt.name, loc=stmt.loc)
        scope.values[stmt.name] = node
        el.model.inputs[stmt.name] = node

    def leaf(self, stmt: syntax.Param | syntax.State, scope: Scope, kind: str) -> None:
        """A param (trained) or a state (carried between calls): a named leaf with an initialiser."""
        el = self.el
        scope.define(stmt.name, stmt.loc)
        if stmt.type is not None and stmt.type.dtype == "int":
            raise NNError(f"{kind}s hold real numbers, so they must be float", stmt.type.loc)
        shape = self.shape(stmt.type, scope, symbolic=False) if stmt.type is not None else None
        match stmt.init:
            case syntax.Call(func=func) as init if func in INITIALIZERS:
                if shape is None:
                    shape = ()
                initial = self.initializer(init, shape, scope)
            case syntax.Call(func=func) as init:
                close = closest(func, INITIALIZERS)
                raise NNError(f"unknown initialiser '{func}'" + (f"; did you mean '{close}'?" if close else
                              f"; the initialisers are {', '.join(sorted(INITIALIZERS))}"), init.loc)
            case syntax.Ref(parts=(func,)) as init if func in INITIALIZERS and func not in scope.consts:
                raise NNError(f"'{func}' is an initialiser, so it is called: write '= {func}()'", init.loc)
            case init:
                value = np.asarray(el.consts.tensor_value(init, scope, f"the initial value of '{stmt.name}'"),
                                   dtype=float)
                if shape is None:
                    shape = value.shape
                elif value.shape not in ((), shape):
                    raise NNError(f"the initial value has shape {show(value.shape)}, but the param is {show(shape)}",
                                  init.loc)
                initial = ParamInit("constant", (("value", value.tolist()),), *fans(shape))
        name = scope.qualify(stmt.name)
        node = el.G.add(kind, (), {"name": name, "shape": shape, "dtype": "float"},
                        name=name, loc=stmt.loc, scope=scope.prefix)
        scope.values[stmt.name] = node
        (el.model.params if kind == "param" else el.model.state)[name] = node
        el.model.param_inits[name] = initial

    def initializer(self, init: syntax.Call, shape: Shape, scope: Scope) -> ParamInit:
        """``he()``, ``normal(std=0.01)``: an initialiser's arguments, by position or keyword, checked."""
        spec = INITIALIZERS[init.func]
        known = dict(spec.args)
        args = dict(known)
        names = list(known)
        if len(init.args) > len(names):
            raise NNError(f"{init.func}() takes {len(names)} argument(s)", init.args[len(names)].loc)
        for name, value in zip(names, init.args):
            args[name] = self.el.consts.number(value, scope, f"{init.func}(): {name}")
        for name, value, loc in init.kwargs:
            if name not in known:
                raise NNError(f"{init.func}() has no argument '{name}'"
                              + (f"; it takes {', '.join(names)}" if names else ""), loc)
            args[name] = self.el.consts.number(value, scope, f"{init.func}(): {name}")
        problem = spec.check(args) if spec.check else None
        if problem:
            raise NNError(f"{init.func}(): {problem}", init.loc)
        return ParamInit(init.func, tuple(args.items()), *fans(shape))

    def shape(self, type_: syntax.Type, scope: Scope, symbolic: bool) -> Shape:
        """The shape of an input (``symbolic``: unknown names become dims set at each call) or of
        a param or state (every dim known when compiling)."""
        el = self.el
        if type_.shape is None:
            return ()
        dims: list[Dim] = []
        for expr in type_.shape:
            match expr:
                case syntax.Ref(parts=[name]) if symbolic and name not in scope.consts and name not in scope.dims:
                    dims.append(name)  # a symbolic dim, bound when the module is called
                    el.dim_places.setdefault(name, expr.loc)
                case syntax.Ref(parts=[name]) if name not in scope.consts and name not in scope.dims and \
                        (name in el.symbolic_dims() or name in scope.later_dims and name not in scope.later):
                    raise NNError(f"a param's shape must be known when compiling, but {name} is a symbolic dim "
                                  "(set by the inputs at each call)", expr.loc)
                case _:
                    dims.append(self.dim(expr, scope, symbolic))
        check_size(tuple(dims), type_.loc)
        return tuple(dims)

    def dim(self, expr: syntax.Expr, scope: Scope, symbolic: bool) -> Dim:
        value = self.el.consts.eval(expr, scope)
        if isinstance(value, str):
            if not symbolic:
                raise NNError(f"a param's shape cannot depend on the symbolic dim {value}", expr.loc)
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 < value <= MAX_DIM:
            return int(value)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
            raise NNError(f"a dimension can be at most {MAX_DIM} (2**31 - 1), not {value}", expr.loc)
        raise NNError(f"a dimension must be a positive integer, not {value!r}", expr.loc)
