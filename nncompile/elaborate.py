"""Elaboration: syntax tree -> IR graph.

Resolves names, evaluates constants, instantiates layers (each call gets its own params,
scoped by the name it is bound to: ``fc1.W``), unrolls ``repeat``, follows imports, and
checks shapes as each node is built, so every error points at the user's text.
"""
from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import syntax as S
from .errors import Loc, NNError
from .initializers import INITIALIZERS, fans
from .ir import Graph, Model
from .limits import MAX_DIM, MAX_ELEMENTS, MAX_INT, MAX_LAYER_DEPTH, MAX_NODES, MAX_RANK, MAX_REPEAT
from .ops import REGISTRY, OpDef
from .parser import parse_file
from .shapes import Dim, Shape, ShapeError, show

STDLIB = Path(__file__).resolve().parent / "stdlib"
_PAIRWISE = {"max": "maximum"}   # a reduction, and the op a newcomer calling it with two tensors meant
_BINOPS = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "matmul": "matmul", "pow": "pow"}


@dataclass(frozen=True)
class ParamInit:
    """How a param gets its first value: an initialiser and its arguments."""

    init: str
    args: tuple[tuple[str, float], ...]
    fan_in: int
    fan_out: int


@dataclass
class Scope:
    """Names visible while elaborating one file's top level or one layer instance."""

    prefix: tuple[str, ...]
    consts: dict[str, Any]
    dims: dict[str, Dim] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    defined: dict[str, Loc] = field(default_factory=dict)
    auto_names: dict[str, int] = field(default_factory=dict)
    instances: dict[str, Loc] = field(default_factory=dict)
    in_layer: str | None = None

    def qualify(self, name: str) -> str:
        return ".".join((*self.prefix, name))

    def define(self, name: str, loc: Loc) -> None:
        if name in self.defined:
            raise NNError(f"'{name}' is already defined", loc,
                          notes=((f"'{name}' was first defined here", self.defined[name]),))
        self.defined[name] = loc


MODES = ("train", "eval")


def elaborate_file(path: str | Path, dtype: str | None = None, mode: str = "train") -> Model:
    """Parse and elaborate a .nn file (and what it imports) for train or eval mode."""
    module = parse_file(path)
    return Elaborator(module.file, dtype, mode).run(module)


def elaborate(module: S.Module, dtype: str | None = None, mode: str = "train") -> Model:
    return Elaborator(module.file, dtype, mode).run(module)


class Elaborator:
    """Builds the graph of one mode: ``train { }`` blocks count in train mode, ``eval { }``
    blocks in eval mode, and mode-dependent ops (dropout) lower accordingly."""

    def __init__(self, file: str, dtype: str | None, mode: str = "train"):
        assert mode in MODES, mode
        self.G = Graph()
        self.model = Model(self.G, file, mode=mode)
        self.mode = mode
        self.phase: str | None = None    # the train/eval block being elaborated, if any
        self.dtype_override = dtype
        self.layers: dict[str, tuple[S.Layer, Loc]] = {}
        self.param_inits: dict[str, ParamInit] = {}
        self.importing: list[str] = []
        self.imported: set[str] = set()
        self.globals: dict[str, Any] = {}
        self.instance_results: set[int] = set()   # layer results named after their instance
        self.layer_consts: dict[str, dict[str, Any]] = {}
        self.calling: list[str] = []   # the layers being instantiated, outermost first

    # ---- files and statements ----------------------------------------------------------

    def run(self, module: S.Module) -> Model:
        top = Scope((), self.globals)
        self.importing.append(str(Path(module.file).resolve()))
        self.statements(module.body, top)
        if self.dtype_override:
            self.model.dtype = self.dtype_override
        self.model.param_inits = self.param_inits
        if not self.model.outputs and self.model.loss is None:
            last = module.body[-1] if module.body else None
            raise NNError("the model has no 'output' or 'minimize' statement, so nothing would be computed",
                          last.loc if last else Loc(module.file, 1, 1))
        return self.model

    def statements(self, body: tuple[S.Stmt, ...], scope: Scope) -> int | None:
        returned = None
        for stmt in body:
            if returned is not None:
                raise NNError("statements after 'return' are never run", stmt.loc)
            returned = self.statement(stmt, scope)
        return returned

    def statement(self, stmt: S.Stmt, scope: Scope) -> int | None:
        top = scope.in_layer is None
        if isinstance(stmt, S.Const):
            scope.define(stmt.name, stmt.loc)
            scope.consts[stmt.name] = self.const_eval(stmt.value, scope)
        elif isinstance(stmt, S.Input):
            self.top_only(stmt, scope, "input")
            self.outside_phase(stmt, "input")
            self.input(stmt, scope)
        elif isinstance(stmt, (S.Param, S.State)):
            self.outside_phase(stmt, "param" if isinstance(stmt, S.Param) else "state")
            self.param(stmt, scope)
        elif isinstance(stmt, S.Update):
            self.update(stmt, scope)
        elif isinstance(stmt, S.Assign):
            scope.define(stmt.name, stmt.loc)
            hint = stmt.name if isinstance(stmt.value, (S.Call, S.Repeat)) else None
            node = self.expr(stmt.value, scope, scope_hint=hint)
            self.bind(scope, stmt.name, node)
        elif isinstance(stmt, S.Output):
            self.top_only(stmt, scope, "output")
            for name, loc in stmt.names:
                self.model.outputs[name] = self.lookup(S.Ref(loc, tuple(name.split("."))), scope)
        elif isinstance(stmt, S.Minimize):
            self.top_only(stmt, scope, "minimize")
            node = self.lookup(S.Ref(stmt.loc, (stmt.name,)), scope)
            if self.G[node].shape != () or self.G[node].dtype != "float":
                raise NNError(f"the loss must be a float scalar, but '{stmt.name}' is "
                              f"{self.G[node].dtype}{show(self.G[node].shape)}; reduce it with sum() or mean()", stmt.loc)
            if self.model.loss is not None:
                raise NNError("only one 'minimize' statement is allowed", stmt.loc)
            self.model.loss = node
            self.model.outputs.setdefault(stmt.name, node)
        elif isinstance(stmt, S.Return):
            if top:
                raise NNError("'return' is only allowed inside a layer", stmt.loc)
            return self.expr(stmt.value, scope)
        elif isinstance(stmt, S.Layer):
            self.top_only(stmt, scope, "layer definition")
            self.define_layer(stmt, scope)
        elif isinstance(stmt, S.Import):
            self.top_only(stmt, scope, "import")
            self.import_(stmt, scope)
        elif isinstance(stmt, S.DType):
            self.top_only(stmt, scope, "dtype")
            self.model.dtype = stmt.dtype
        elif isinstance(stmt, S.Phase):
            return self.phase_block(stmt, scope)
        return None

    def phase_block(self, block: S.Phase, scope: Scope) -> int | None:
        """A compile-time branch: its statements count only in its own mode, and what they
        define is visible after the block."""
        if self.phase is not None:
            raise NNError(f"a '{block.phase}' block cannot be nested in a '{self.phase}' block", block.loc)
        self.model.mode_dependent = True
        if block.phase != self.mode:
            return None
        self.phase = block.phase
        try:
            return self.statements(block.body, scope)
        finally:
            self.phase = None

    def update(self, stmt: S.Update, scope: Scope) -> None:
        if self.phase != "train":
            raise NNError("'update' changes state while training, so it belongs in a 'train { }' block", stmt.loc)
        target = self.lookup(stmt.target, scope)
        node = self.G[target]
        if node.op != "state":
            raise NNError(f"'{stmt.target.name}' is not declared with 'state', so it cannot be updated",
                          stmt.target.loc)
        if node.name in self.model.updates:
            raise NNError(f"'{stmt.target.name}' is updated twice", stmt.loc)
        value = self.expr(stmt.value, scope)
        got = self.G[value]
        if got.shape != node.shape or got.dtype != "float":
            raise NNError(f"the new value of '{stmt.target.name}' is {got.dtype}{show(got.shape)}, "
                          f"but the state is float{show(node.shape)}", stmt.value.loc)
        self.model.updates[node.name] = value

    def outside_phase(self, stmt: S.Input | S.Param | S.State, what: str) -> None:
        """Train and eval mode share one module's inputs, params and state, so nothing declares
        them in one mode only."""
        if self.phase is not None:
            raise NNError(f"declare {what}s outside '{self.phase}' blocks: both modes share them", stmt.loc)

    def top_only(self, stmt: S.Node, scope: Scope, what: str) -> None:
        if scope.in_layer is not None:
            raise NNError(f"{what} statements are not allowed inside layer '{scope.in_layer}'", stmt.loc)

    def bind(self, scope: Scope, name: str, node: int) -> None:
        """Name a value after the variable it is assigned to (``scores = affine(h) as fc2``)."""
        scope.values[name] = node
        if self.G[node].name is None or node in self.instance_results:
            self.G.set(node, name=scope.qualify(name))
            self.instance_results.discard(node)

    def input(self, stmt: S.Input, scope: Scope) -> None:
        scope.define(stmt.name, stmt.loc)
        dtype, shape = "float", ()
        if stmt.type is not None:
            dtype = stmt.type.dtype or "float"
            shape = self.shape(stmt.type, scope, symbolic=True)
        elif stmt.default is None:
            raise NNError(f"input '{stmt.name}' needs a type (like float[N, 3]) or a default value", stmt.loc)
        if stmt.default is not None:
            value = np.asarray(self.tensor_value(stmt.default, scope, f"the default of '{stmt.name}'"),
                               dtype=float if dtype == "float" else None)
            if dtype == "int" and not np.issubdtype(value.dtype, np.integer):
                raise NNError(f"input '{stmt.name}' is int, but its default is not an integer", stmt.default.loc)
            if stmt.type is None:
                shape = value.shape
            elif value.shape != shape:
                raise NNError(f"the default of '{stmt.name}' has shape {show(value.shape)}, "
                              f"but the input is declared {show(shape)}", stmt.default.loc)
            self.model.defaults[stmt.name] = value.tolist()
        node = self.G.add("input", (), {"name": stmt.name, "shape": shape, "dtype": dtype},
                          name=stmt.name, loc=stmt.loc)
        scope.values[stmt.name] = node
        self.model.inputs[stmt.name] = node

    def param(self, stmt: S.Param | S.State, scope: Scope) -> None:
        """A param (trained) or a state (carried between calls): a named leaf with an initialiser."""
        kind = "param" if isinstance(stmt, S.Param) else "state"
        scope.define(stmt.name, stmt.loc)
        if stmt.type is not None and stmt.type.dtype == "int":
            raise NNError(f"{kind}s hold real numbers, so they must be float", stmt.type.loc)
        shape = self.shape(stmt.type, scope, symbolic=False) if stmt.type is not None else None
        init = stmt.init
        if isinstance(init, S.Call) and init.func in INITIALIZERS:
            spec = INITIALIZERS[init.func]
            known = dict(spec.args)
            args = dict(known)
            names = list(known)
            if len(init.args) > len(names):
                raise NNError(f"{init.func}() takes {len(names)} argument(s)", init.args[len(names)].loc)
            for name, value in zip(names, init.args):
                args[name] = self.number(value, scope, f"{init.func}(): {name}")
            for name, value, loc in init.kwargs:
                if name not in known:
                    raise NNError(f"{init.func}() has no argument '{name}'"
                                  + (f"; it takes {', '.join(names)}" if names else ""), loc)
                args[name] = self.number(value, scope, f"{init.func}(): {name}")
            problem = spec.check(args) if spec.check else None
            if problem:
                raise NNError(f"{init.func}(): {problem}", init.loc)
            if shape is None:
                shape = ()
            fan_in, fan_out = fans(shape)
            spec_init = ParamInit(init.func, tuple(args.items()), fan_in, fan_out)
        elif isinstance(init, S.Call):
            close = difflib.get_close_matches(init.func, INITIALIZERS, n=1)
            raise NNError(f"unknown initialiser '{init.func}'" + (f"; did you mean '{close[0]}'?" if close else
                          f"; the initialisers are {', '.join(sorted(INITIALIZERS))}"), init.loc)
        else:
            value = np.asarray(self.tensor_value(init, scope, f"the initial value of '{stmt.name}'"), dtype=float)
            if shape is None:
                shape = value.shape
            elif value.shape not in ((), shape):
                raise NNError(f"the initial value has shape {show(value.shape)}, but the param is {show(shape)}",
                              init.loc)
            spec_init = ParamInit("constant", (("value", value.tolist()),), *fans(shape))
        name = scope.qualify(stmt.name)
        node = self.G.add(kind, (), {"name": name, "shape": shape, "dtype": "float"},
                          name=name, loc=stmt.loc, scope=scope.prefix)
        scope.values[stmt.name] = node
        (self.model.params if kind == "param" else self.model.state)[name] = node
        self.param_inits[name] = spec_init

    def shape(self, type_: S.Type, scope: Scope, symbolic: bool) -> Shape:
        if type_.shape is None:
            return ()
        dims: list[Dim] = []
        for expr in type_.shape:
            if isinstance(expr, S.Ref) and len(expr.parts) == 1 and symbolic and \
                    expr.name not in scope.consts and expr.name not in scope.dims:
                dims.append(expr.name)  # a symbolic dim, bound when the module is called
                continue
            if not symbolic and isinstance(expr, S.Ref) and expr.name not in scope.consts and \
                    expr.name not in scope.dims and expr.name in self.symbolic_dims():
                raise NNError(f"a param's shape must be known when compiling, but {expr.name} is a symbolic dim "
                              "(set by the inputs at each call)", expr.loc)
            value = self.const_eval(expr, scope)
            if isinstance(value, str):
                if not symbolic:
                    raise NNError(f"a param's shape cannot depend on the symbolic dim {value}", expr.loc)
                dims.append(value)
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 < value <= MAX_DIM:
                dims.append(int(value))
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
                raise NNError(f"a dimension can be at most {MAX_DIM} (2**31 - 1), not {value}", expr.loc)
            else:
                raise NNError(f"a dimension must be a positive integer, not {value!r}", expr.loc)
        _check_size(tuple(dims), type_.loc)
        return tuple(dims)

    def symbolic_dims(self) -> set[str]:
        return {d for n in self.model.inputs.values() for d in self.G[n].shape if isinstance(d, str)}

    def define_layer(self, layer: S.Layer, scope: Scope) -> None:
        if layer.name in self.layers:
            raise NNError(f"layer '{layer.name}' is already defined", layer.loc,
                          notes=(("first defined here", self.layers[layer.name][1]),))
        if layer.name in REGISTRY and REGISTRY[layer.name].public:
            raise NNError(f"'{layer.name}' is a built-in op; give the layer another name", layer.loc)
        seen: set[str] = set()
        for arg in layer.args:
            if arg.name in seen:
                raise NNError(f"layer '{layer.name}' has two arguments named '{arg.name}'", arg.loc)
            seen.add(arg.name)
        self.layers[layer.name] = (layer, layer.loc)
        self.layer_consts[layer.name] = scope.consts   # the consts of the file that defines it

    def import_(self, stmt: S.Import, scope: Scope) -> None:
        if stmt.is_path:
            # Shown (in errors, in the generated code's comments) relative to the importing
            # file as the user wrote it; resolved only to recognise a file seen before.
            shown = Path(os.path.normpath(Path(stmt.loc.file).parent / stmt.target))
            try:
                path = shown.resolve()
            except (OSError, ValueError) as exc:   # a name too long for the file system, a NUL byte
                shown_name = "".join(c if c.isprintable() else "?" for c in stmt.target[:40])
                raise NNError(f"cannot import \"{shown_name}\": "
                              f"{getattr(exc, 'strerror', None) or exc}", stmt.loc) from None
        else:
            shown = path = (STDLIB / f"{stmt.target}.nn").resolve()
            if not _is_file(path):
                known = sorted(p.stem for p in STDLIB.glob("*.nn"))
                raise NNError(f"no standard library module '{stmt.target}'"
                              + (f"; there is {', '.join(known)}" if known else ""), stmt.loc)
        if str(path) in self.importing:
            chain = [*self.importing[self.importing.index(str(path)):], str(path)]
            raise NNError("import cycle: " + " imports ".join(Path(p).name for p in chain), stmt.loc)
        if str(path) in self.imported:
            return
        if not _is_file(path):
            raise NNError(f"cannot import \"{stmt.target}\": there is no file {shown}", stmt.loc)
        module = parse_file(shown)
        self.importing.append(str(path))
        # The imported file has its own consts: its layers see those, never the importer's.
        own = Scope((), {})
        for inner in module.body:
            if not isinstance(inner, (S.Const, S.Layer, S.Import)):
                raise NNError("an imported file may only define consts and layers, and import others", inner.loc)
            self.statement(inner, own)
        for name, value in own.consts.items():   # and the importer gets them too
            scope.define(name, own.defined.get(name, stmt.loc))
            scope.consts[name] = value
        self.importing.pop()
        self.imported.add(str(path))

    # ---- compile-time constants --------------------------------------------------------

    def const_eval(self, expr: S.Expr, scope: Scope) -> Any:
        """Evaluate an expression that must be known at compile time (dims, attributes)."""
        if isinstance(expr, S.BinOp) and expr.op != "matmul":
            chain = _left_chain(expr)   # a + b + c + ... in a loop, however long
            value = self.const_eval(chain[0].left, scope)
            for binop in chain:
                value = _arith(binop, value, self.const_eval(binop.right, scope))
            return value
        if isinstance(expr, S.Neg):
            negs, operand = _neg_chain(expr)
            value = self.const_eval(operand, scope)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return -value if negs % 2 else value
        if isinstance(expr, S.Number):
            return expr.value
        if isinstance(expr, S.Bool):
            return expr.value
        if isinstance(expr, S.Ref) and len(expr.parts) == 1:
            if expr.name in scope.consts:
                return scope.consts[expr.name]
            if expr.name in scope.dims:
                return scope.dims[expr.name]
            if expr.name in self.model.inputs or expr.name in scope.values:
                raise NNError(f"'{expr.name}' is a tensor, but a constant is needed here", expr.loc)
            if expr.name in self.symbolic_dims():   # a dim like N, known only at each call: arange(N)
                return expr.name
            raise self.unknown(expr.name, expr.loc, scope, consts_only=True)
        if isinstance(expr, S.ListExpr):
            items = [self.const_eval(item, scope) for item in expr.items]
            _check_rectangular(items, expr)
            return items
        raise NNError("a constant is needed here (a number, a const, or arithmetic on them)", expr.loc)

    # ---- expressions -------------------------------------------------------------------

    def expr(self, expr: S.Expr, scope: Scope, scope_hint: str | None = None) -> int:
        if isinstance(expr, S.Number):
            return self.constant(float(expr.value), expr.loc)
        if isinstance(expr, S.Ref):
            return self.lookup(expr, scope)
        if isinstance(expr, S.BinOp):
            if self.is_arithmetic(expr, scope):   # numbers only: the checks of a const (1 / 0, 10 ** 400)
                self.const_eval(expr, scope)
            chain = _left_chain(expr)   # a + b + c + ... in a loop, however long
            value = self.expr(chain[0].left, scope)
            for binop in chain:
                value = self.op(_BINOPS[binop.op], [value, self.expr(binop.right, scope)], {}, binop.loc, scope)
            return value
        if isinstance(expr, S.Neg):
            if isinstance(expr.operand, S.Number):
                return self.constant(-float(expr.operand.value), expr.loc)
            negs, operand = _neg_chain(expr)
            value = self.expr(operand, scope)
            for _ in range(negs):
                value = self.op("neg", [value], {}, expr.loc, scope)
            return value
        if isinstance(expr, S.Call):
            return self.call(expr, scope, scope_hint)
        if isinstance(expr, S.Repeat):
            return self.repeat(expr, scope, scope_hint)
        if isinstance(expr, S.ListExpr):
            return self.const_tensor(self.tensor_value(expr, scope, "a list in an expression"), expr.loc)
        if isinstance(expr, S.Bool):
            raise NNError("true and false are only allowed as op attributes (like keepdims=true)", expr.loc)
        if isinstance(expr, S.Index):
            return self.index(expr, scope)
        raise NNError("unsupported expression", expr.loc)  # pragma: no cover - the grammar has no others

    def index(self, expr: S.Index, scope: Scope) -> int:
        """``x[2, 0:3, idx]`` as numpy reads it: integers and fixed slices make a view (the
        ``slice`` op), integer tensors among the subscripts a gather (``index``). Bounds are
        made non-negative where the dim is known, so x[:, -3:] and x[:, 2:5] are one value."""
        target = self.expr(expr.target, scope)
        shape = self.G[target].shape
        if len(expr.subscripts) > len(shape):
            raise NNError(f"too many subscripts: the value has shape {show(shape)} ({len(shape)} axes), "
                          f"but {len(expr.subscripts)} are given", expr.subscripts[len(shape)].loc)
        key: list[str] = []
        tensors: list[int] = []
        locs = [expr.target.loc]
        for axis, sub in enumerate(expr.subscripts):
            dim = shape[axis]
            if isinstance(sub, S.Slice):
                start, stop = (None if e is None else self.static_index(e, scope) for e in (sub.start, sub.stop))
                if isinstance(dim, int) and (start, stop) != (None, None):
                    start, stop, _ = slice(start, stop).indices(dim)
                key.append(":" if (start, stop) in ((None, None), (0, dim)) else
                           f"{'' if start is None else start}:{'' if stop is None else stop}")
            elif self.is_static(sub, scope):
                value = self.static_index(sub, scope)
                key.append(str(value + dim if isinstance(dim, int) and -dim <= value < 0 else value))
                if isinstance(dim, str):   # X[7] needs N >= 8, X[-2] N >= 2: checked when the module is called
                    self.model.min_dims[dim] = max(self.model.min_dims.get(dim, 0), value + 1 if value >= 0 else -value)
            else:
                node = self.expr(sub, scope)
                tensors.append(node)
                key.append(f"{{{len(tensors)}}}")
                locs.append(sub.loc)
                if self.G[node].dtype == "int":
                    self.bound(node, dim)
        while key and key[-1] == ":":   # x[i, :] is x[i]
            key.pop()
        if not key:
            return target                # x[:] is x
        return self.op("index" if tensors else "slice", [target, *tensors], {"key": tuple(key)},
                       expr.loc, scope, locs)

    def is_static(self, expr: S.Expr, scope: Scope) -> bool:
        """Whether a subscript is known when compiling (a number or a const), not a tensor."""
        if isinstance(expr, S.Number):
            return True
        if isinstance(expr, S.Ref):
            return len(expr.parts) == 1 and expr.name not in scope.values and \
                (expr.name in scope.consts or isinstance(scope.dims.get(expr.name), int))
        if isinstance(expr, S.Neg):
            return self.is_static(_neg_chain(expr)[1], scope)
        if isinstance(expr, S.BinOp):
            chain = _left_chain(expr)
            return all(b.op != "matmul" for b in chain) and self.is_static(chain[0].left, scope) and \
                all(self.is_static(b.right, scope) for b in chain)
        return False

    def is_arithmetic(self, expr: S.Expr, scope: Scope) -> bool:
        """Whether an expression is arithmetic on numbers and numeric consts alone."""
        pending = [expr]
        while pending:
            item = pending.pop()
            if isinstance(item, S.BinOp) and item.op != "matmul":
                pending += [item.left, item.right]
            elif isinstance(item, S.Neg):
                pending.append(item.operand)
            elif isinstance(item, S.Ref):
                value = scope.consts.get(item.name) if item.name not in scope.values else None
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    return False
            elif not isinstance(item, S.Number):
                return False
        return True

    def is_tensor(self, expr: S.Expr, scope: Scope) -> bool:
        """Whether an expression names or computes a tensor (so it cannot be an attribute)."""
        pending = [expr]
        while pending:
            item = pending.pop()
            if isinstance(item, (S.Call, S.Repeat, S.Index)):
                return True
            if isinstance(item, S.Ref) and item.name in scope.values:
                return True
            if isinstance(item, S.BinOp):
                pending += [item.left, item.right]
            elif isinstance(item, S.Neg):
                pending.append(item.operand)
        return False

    def static_index(self, expr: S.Expr, scope: Scope) -> int:
        value = self.const_eval(expr, scope)
        if isinstance(value, bool) or not isinstance(value, int):
            raise NNError(f"an index must be a whole number (or an int tensor), not {value!r}", expr.loc)
        return value

    def constant(self, value: float, loc: Loc | None, name: str | None = None) -> int:
        return self.G.add("const", (), {"value": value, "shape": (), "dtype": "float"}, loc=loc, name=name)

    def const_tensor(self, value: Any, loc: Loc, name: str | None = None) -> int:
        array = np.asarray(value, dtype=float)
        _check_size(array.shape, loc)
        return self.G.add("const", (), {"value": array.tolist(), "shape": array.shape, "dtype": "float"},
                          loc=loc, name=name)

    def tensor_value(self, expr: S.Expr, scope: Scope, what: str) -> Any:
        """A constant that becomes a tensor: a number or a (rectangular) list of numbers."""
        value = self.const_eval(expr, scope)
        pending = [value]
        while pending:
            item = pending.pop()
            if isinstance(item, list):
                pending.extend(item)
            elif isinstance(item, str):
                raise NNError(f"{what} must be made of numbers, but {item} is a symbolic dim, "
                              "known only when the module is called", expr.loc)
            elif not isinstance(item, (int, float)):
                raise NNError(f"{what} must be made of numbers, not {item!r}", expr.loc)
        return value

    def number(self, expr: S.Expr, scope: Scope, what: str) -> float:
        value = self.const_eval(expr, scope)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NNError(f"{what} must be a number, not {value!r}", expr.loc)
        return float(value)

    def lookup(self, ref: S.Ref, scope: Scope) -> int:
        name = ref.name
        if name in scope.values:
            return scope.values[name]
        if len(ref.parts) == 1:
            if name in scope.consts:
                value = scope.consts[name]
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    return self.constant(float(value), ref.loc, name=ref.name)  # named in diagrams
                if isinstance(value, list):
                    return self.const_tensor(self.tensor_value(ref, scope, f"'{name}'"), ref.loc, name=ref.name)
                raise NNError(f"'{name}' is {value!r}, not a number", ref.loc)
            if name in scope.dims:
                dim = scope.dims[name]
                if isinstance(dim, int):
                    return self.constant(float(dim), ref.loc)
                return self.G.add("dim", (), {"symbols": (dim,), "factor": 1}, loc=ref.loc)
            if name in self.symbolic_dims():   # the batch size N as a number: sum(x) / N
                return self.G.add("dim", (), {"symbols": (name,), "factor": 1}, loc=ref.loc)
        raise self.unknown(name, ref.loc, scope)

    def unknown(self, name: str, loc: Loc, scope: Scope, consts_only: bool = False) -> NNError:
        pool = list(scope.consts) + list(scope.dims) + ([] if consts_only else list(scope.values))
        close = difflib.get_close_matches(name, pool, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        if "." in name and name.split(".")[0] in scope.values:
            hint = f"; '{name.split('.')[0]}' has no member '{name.split('.', 1)[1]}'" + hint
        return NNError(f"unknown name '{name}'{hint}", loc)

    def op(self, opname: str, args: list[int], attrs: dict[str, Any], loc: Loc, scope: Scope,
           arg_locs: list[Loc] | None = None) -> int:
        opdef = REGISTRY[opname]
        if opdef.dispatch is not None:   # one name in the language, the op chosen by the operands' dtypes
            opdef = REGISTRY[opdef.dispatch([self.G[a] for a in args])]
            opname = opdef.name
        try:
            node = self.G.add(opname, args, attrs, loc=loc, scope=scope.prefix)
        except ShapeError as exc:
            where = arg_locs[exc.arg] if arg_locs and exc.arg is not None and exc.arg < len(arg_locs) else loc
            raise NNError(exc.message, where) from None
        _check_size(self.G[node].shape, loc)
        if opdef.int_bounds:
            for index, bound in opdef.int_bounds([self.G[a] for a in args]).items():
                self.bound(args[index], bound)
        return node

    def bound(self, n: int, dim: Dim) -> None:
        """Node ``n`` holds labels or indices below ``dim``: if it is an input, the module checks it."""
        leaf = self.G[n]
        if leaf.op != "input":
            return
        if isinstance(dim, int):
            self.model.int_bounds[leaf.name] = min(self.model.int_bounds.get(leaf.name, dim), dim)
        elif dim not in self.model.dim_bounds.get(leaf.name, ()):
            self.model.dim_bounds[leaf.name] = (*self.model.dim_bounds.get(leaf.name, ()), dim)

    def call(self, call: S.Call, scope: Scope, scope_hint: str | None) -> int:
        if call.func in self.layers:
            layer, _ = self.layers[call.func]
            name = call.scope or scope_hint or self.auto_name(scope, call.func)
            return self.instantiate(layer, call, name, scope)
        if call.scope is not None:
            raise NNError(f"'as {call.scope}' names a layer instance, but {call.func} is not a layer", call.loc)
        opdef = REGISTRY.get(call.func)
        if opdef is None or not opdef.public:
            if call.func in INITIALIZERS:
                raise NNError(f"{call.func}() is an initialiser: use it in a param declaration, "
                              f"like 'param W: [3, 4] = {call.func}()'", call.loc)
            known = [n for n, d in REGISTRY.items() if d.public] + list(self.layers)
            close = difflib.get_close_matches(call.func, known, n=1)
            raise NNError(f"unknown op or layer '{call.func}'" + (f"; did you mean '{close[0]}'?" if close else ""),
                          call.loc)
        return self.op_call(opdef, call, scope)

    def op_call(self, opdef: OpDef, call: S.Call, scope: Scope) -> int:
        attr_names = [a for a, _ in opdef.attrs]
        # A variadic op (arity -1: concat, l2) takes every positional argument as a tensor,
        # so its attributes are given by keyword: concat(a, b, axis=1).
        arity = len(call.args) if opdef.arity < 0 else opdef.arity
        positional = [] if opdef.arity < 0 else attr_names
        if opdef.arity < 0 and not call.args:
            raise NNError(f"{opdef.name}() needs at least one tensor argument", call.loc)
        if opdef.arity < 0 and attr_names:
            for arg in call.args:
                if isinstance(arg, (S.Number, S.Bool)):
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
            if self.is_tensor(value, scope):
                pairwise = _PAIRWISE.get(opdef.name)
                raise NNError(f"{opdef.name}() takes {arity} tensor argument(s), then '{name}', which must be a "
                              "constant, but this is a tensor" + (f"; for the elementwise {opdef.name} of two "
                              f"tensors use {pairwise}(a, b)" if pairwise else ""), value.loc)
            attrs[name] = self.attr_value(value, scope)
            given.add(name)
        for name, value, loc in call.kwargs:
            if name not in attrs:
                raise NNError(f"{opdef.name}() has no argument '{name}'"
                              + (f"; it takes {', '.join(attr_names)}" if attr_names else ""), loc)
            if name in given:
                raise NNError(f"{opdef.name}() got '{name}' twice", loc)
            attrs[name] = self.attr_value(value, scope)
            given.add(name)
        if "shape" in attrs and not isinstance(attrs["shape"], tuple):
            raise NNError(f"{opdef.name}() needs a shape, like {opdef.name}(x, [2, 3])"
                          + ("" if attrs["shape"] is None else f", not {attrs['shape']!r}"), call.loc)
        if opdef.lower is not None:  # a composite, or an op whose meaning depends on the mode, like dropout
            try:
                return opdef.lower(self, args, attrs, call.loc, scope)
            except ShapeError as exc:
                raise NNError(exc.message, call.loc) from None
        return self.op(opdef.name, args, attrs, call.loc, scope, [a.loc for a in call.args])

    def attr_value(self, expr: S.Expr, scope: Scope) -> Any:
        value = self.const_eval(expr, scope)
        if isinstance(value, list):
            return tuple(value)
        return value

    def auto_name(self, scope: Scope, layer: str) -> str:
        count = scope.auto_names.get(layer, 0) + 1
        scope.auto_names[layer] = count
        return f"{layer}_{count}"

    def repeat(self, rep: S.Repeat, scope: Scope, scope_hint: str | None) -> int:
        count = self.const_eval(rep.count, scope)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise NNError(f"repeat needs a positive whole number of times, not {count!r}", rep.count.loc)
        if count > MAX_REPEAT:
            raise NNError(f"repeat can unroll at most {MAX_REPEAT} copies, not {count}", rep.count.loc)
        call = rep.call
        if call.func not in self.layers:
            raise NNError(f"repeat applies a layer, but '{call.func}' is not one", call.loc)
        if not call.args:
            raise NNError("repeat feeds each result into the layer's first argument, so give it one", call.loc)
        layer, _ = self.layers[call.func]
        base = call.scope or scope_hint or self.auto_name(scope, call.func)
        value = self.expr(call.args[0], scope)
        # The other tensors are built once and shared by every copy; attributes bind as in a plain call.
        tensors = {a.name: a for a in layer.args if not a.is_attribute}
        named = [(a.name, e) for a, e in zip(layer.args[1:], call.args[1:])] + [(k, e) for k, e, _ in call.kwargs]
        shared = {name: self.expr(e, scope) for name, e in named if name in tensors}
        for i in range(1, count + 1):
            if layer.args:   # else binding reports the extra argument
                shared[layer.args[0].name] = value
            value = self.instantiate(layer, call, f"{base}.{i}", scope, given=shared)
        return value

    # ---- layers ------------------------------------------------------------------------

    def instantiate(self, layer: S.Layer, call: S.Call, name: str, scope: Scope,
                    given: dict[str, int] | None = None) -> int:
        """Inline one call of a layer: bind its arguments, build its body under scope ``name``."""
        if name in scope.instances:
            raise NNError(f"the layer instance name '{name}' is already used; name this call with 'as' "
                          "(each call has its own params: to share weights, declare them with 'param' "
                          "outside the layer and pass them in as arguments)",
                          call.loc, notes=(("first used here", scope.instances[name]),))
        if layer.name in self.calling:
            chain = [*self.calling[self.calling.index(layer.name):], layer.name]
            raise NNError(f"layer {layer.name} calls itself: {' -> '.join(chain)}; a layer cannot be recursive "
                          "(to apply one n times, write `repeat n layer(x)`)", call.loc)
        if len(self.calling) >= MAX_LAYER_DEPTH:
            raise NNError(f"layers are called inside one another more than {MAX_LAYER_DEPTH} deep, the limit",
                          call.loc)
        scope.instances[name] = call.loc
        inner = Scope((*scope.prefix, name), dict(self.layer_consts[layer.name]), in_layer=layer.name)
        bound = self.bind_layer_args(layer, call, scope, inner, given or {})
        for arg in layer.args:
            if arg.name in bound:
                inner.define(arg.name, arg.loc)
        self.calling.append(layer.name)
        try:
            result = self.statements(layer.body, inner)
        except NNError as exc:
            if exc.loc is not None and exc.loc.file == layer.loc.file and \
                    layer.loc.line <= exc.loc.line and call.loc.line != exc.loc.line:
                exc.notes = (*exc.notes, (f"in layer '{layer.name}' called here as '{name}'", call.loc))
            raise
        finally:
            self.calling.pop()
        if len(self.G) > MAX_NODES:
            raise NNError(f"the model grows past {MAX_NODES} graph nodes, the limit, at this layer call", call.loc)
        if result is None:
            raise NNError(f"layer '{layer.name}' has no 'return' statement", layer.loc)
        if layer.returns is not None:
            self.check_pattern(self.G[result].shape, layer.returns, inner, call.loc,
                               f"the result of {layer.name}()", bind=False)
        self.model.layers[inner.prefix] = layer.name
        for local, node in inner.values.items():
            scope.values[f"{name}.{local}"] = node
        if self.G[result].name is None:
            self.G.set(result, name=".".join(inner.prefix))
            self.instance_results.add(result)
        return result

    def bind_layer_args(self, layer: S.Layer, call: S.Call, scope: Scope, inner: Scope,
                        given: dict[str, int]) -> dict[str, Any]:
        """Bind a call's arguments; ``given`` holds tensors already built for some of them (repeat's)."""
        params = {a.name: a for a in layer.args}
        order = [a.name for a in layer.args]
        values: dict[str, tuple[Any, Loc]] = {}
        positional = call.args
        if len(positional) > len(order):
            raise NNError(f"{layer.name}() takes {len(order)} argument(s) but {len(positional)} were given",
                          positional[len(order)].loc)
        for arg_name, expr in zip(order, positional):
            values[arg_name] = (("node", given[arg_name]) if arg_name in given else ("expr", expr), expr.loc)
        for kw, expr, loc in call.kwargs:
            if kw not in params:
                close = difflib.get_close_matches(kw, order, n=1)
                raise NNError(f"{layer.name}() has no argument '{kw}'"
                              + (f"; did you mean '{close[0]}'?" if close else f"; it takes {', '.join(order)}"), loc)
            if kw in values:
                raise NNError(f"{layer.name}() got argument '{kw}' twice", loc)
            values[kw] = (("node", given[kw]) if kw in given else ("expr", expr), loc)
        bound: dict[str, Any] = {}
        for arg in layer.args:
            if arg.name not in values:
                if arg.default is None:
                    raise NNError(f"{layer.name}() is missing argument '{arg.name}'", call.loc,
                                  notes=((f"'{arg.name}' is declared here", arg.loc),))
                values[arg.name] = (("expr", arg.default), arg.loc)
                default_scope = inner
            else:
                default_scope = scope
            (kind, payload), loc = values[arg.name]
            if arg.is_attribute:
                if kind == "node":
                    raise NNError(f"'{arg.name}' of {layer.name}() is a {arg.type.dtype} attribute, not a tensor", loc)
                value = self.const_eval(payload, default_scope)
                want = arg.type.dtype
                if want == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
                    raise NNError(f"{layer.name}() needs an int for '{arg.name}', not {value!r}", loc)
                if want == "float" and not isinstance(value, (int, float)):
                    raise NNError(f"{layer.name}() needs a number for '{arg.name}', not {value!r}", loc)
                inner.consts[arg.name] = float(value) if want == "float" else value
                bound[arg.name] = value
            else:
                node = payload if kind == "node" else self.expr(payload, default_scope)
                if arg.type is not None:
                    actual = self.G[node]
                    if arg.type.dtype and arg.type.dtype != actual.dtype:
                        raise NNError(f"{layer.name}() needs {arg.type.dtype} for '{arg.name}', "
                                      f"but got {actual.dtype}{show(actual.shape)}", loc)
                    self.check_pattern(actual.shape, arg.type.shape or (), inner, loc,
                                       f"argument '{arg.name}' of {layer.name}()", bind=True)
                inner.values[arg.name] = node
                bound[arg.name] = node
        return bound

    def check_pattern(self, shape: Shape, pattern: tuple[S.Expr, ...], inner: Scope, loc: Loc,
                      what: str, bind: bool) -> None:
        """Match a shape against ``[B, K]``: unbound names bind, known ones must agree."""
        expected = "[" + ", ".join(_show_expr(e) for e in pattern) + "]"
        if len(shape) != len(pattern):
            raise NNError(f"{what} must have shape {expected} (rank {len(pattern)}), "
                          f"but it has shape {show(shape)}", loc)
        for axis, (dim, expr) in enumerate(zip(shape, pattern)):
            if bind and isinstance(expr, S.Ref) and len(expr.parts) == 1 and \
                    expr.name not in inner.consts and expr.name not in inner.dims:
                inner.dims[expr.name] = dim
                if isinstance(dim, int):
                    inner.consts[expr.name] = dim
                continue
            want = self.const_eval(expr, inner)
            if want != dim:
                named = _show_expr(expr)
                named = f"{named} = {want}" if named != str(want) else named
                raise NNError(f"{what} must have shape {expected}, but it has shape {show(shape)}: "
                              f"dim {axis + 1} is {dim}, expected {named}", loc)


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a name too long for the file system (or with a NUL byte) is no file."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _left_chain(expr: S.BinOp) -> list[S.BinOp]:
    """``a + b - c`` as [a + b, (a + b) - c]: the operators of a left-nested chain, innermost first."""
    chain = [expr]
    while isinstance(chain[-1].left, S.BinOp):
        chain.append(chain[-1].left)
    return chain[::-1]


def _neg_chain(expr: S.Neg) -> tuple[int, S.Expr]:
    """``- - - x`` as (3, x)."""
    count = 0
    while isinstance(expr, S.Neg):
        count, expr = count + 1, expr.operand
    return count, expr


def _arith(binop: S.BinOp, left: Any, right: Any) -> int | float:
    """One step of compile-time arithmetic, refusing results that no tensor could use."""
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right))
    if not numbers or binop.op == "matmul":
        raise NNError("a constant is needed here (a number, a const, or arithmetic on them)", binop.loc)
    op = binop.op
    if op == "pow" and isinstance(left, int) and isinstance(right, int) and right > 0 and \
            (abs(left).bit_length() - 1) * right > MAX_INT.bit_length():   # too big before computing it
        real = (abs(left).bit_length() - 1) * right < 1000   # would 2.0 ** 1000 still be finite?
        hint = f"; for a real number write {left}.0 ** {right}" if real else ""
        raise NNError(f"cannot evaluate this constant: {left} ** {right} is too large, whole numbers must fit in "
                      f"int64 (at most {MAX_INT}){hint}", binop.loc)
    try:
        if op == "div" and isinstance(left, int) and isinstance(right, int) and left % right == 0:
            value = left // right
        else:
            value = {"add": lambda: left + right, "sub": lambda: left - right, "mul": lambda: left * right,
                     "div": lambda: left / right, "pow": lambda: left ** right}[op]()
    except ZeroDivisionError:
        raise NNError("cannot evaluate this constant: division by zero", binop.loc) from None
    except OverflowError:
        value = math.inf
    if isinstance(value, complex):
        raise NNError(f"cannot evaluate this constant: ({left}) ** {right} is a complex number", binop.loc)
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise NNError(f"cannot evaluate this constant: the result is too large, whole numbers must fit "
                      f"in int64 (at most {MAX_INT}); write the numbers as reals (2.0, 1e20) for a real result",
                      binop.loc)
    if isinstance(value, float) and not math.isfinite(value):
        raise NNError("cannot evaluate this constant: the result overflows float64 (the largest is about "
                      "1.8e308)", binop.loc)
    return value


def _check_size(shape: Shape, loc: Loc) -> None:
    """Every tensor fits the limits: MAX_RANK axes, and MAX_ELEMENTS elements where its dims are known."""
    if len(shape) > MAX_RANK:
        raise NNError(f"a tensor can have at most {MAX_RANK} axes, but this one has {len(shape)}", loc)
    known = math.prod(d for d in shape if isinstance(d, int))
    if known > MAX_ELEMENTS:
        raise NNError(f"this tensor would have {known} elements, more than the limit of {MAX_ELEMENTS} (2**40)"
                      f": shape {show(shape)}", loc)


def _list_shape(value: Any) -> tuple[int, ...]:
    """The shape of a nested list whose items were already checked to be rectangular."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _check_rectangular(items: list[Any], expr: S.ListExpr) -> None:
    """A list literal is a tensor: every item has the same shape, and it has at most MAX_RANK axes."""
    shapes = [_list_shape(item) for item in items]
    for item, shape in zip(expr.items, shapes):
        if shape != shapes[0]:
            raise NNError(f"the items of a list must all have the same shape, but this one has shape "
                          f"{show(shape)} and the first {show(shapes[0])}", item.loc)
    if shapes and len(shapes[0]) + 1 > MAX_RANK:
        raise NNError(f"a tensor can have at most {MAX_RANK} axes, but this list is nested "
                      f"{len(shapes[0]) + 1} deep", expr.loc)


def _show_expr(expr: S.Expr) -> str:
    if isinstance(expr, S.Ref):
        return expr.name
    if isinstance(expr, S.Number):
        return str(expr.value)
    return "?"
