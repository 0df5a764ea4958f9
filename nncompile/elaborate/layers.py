"""Layers: their definitions, and their calls inlined one instance at a time (each with its own
params, scoped by the instance name: ``fc1.W``), ``repeat`` unrolled, arguments bound and
checked against the shape patterns they declare (``x: [B, K]``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import syntax
from ..errors import Loc, NNError, closest
from ..limits import MAX_LAYER_DEPTH, MAX_NODES, MAX_REPEAT
from ..loops import Unstretchable, instance_of
from ..ops import REGISTRY
from ..shapes import Shape, show
from .constants import show_expr
from .core import Scope

if TYPE_CHECKING:
    from . import Elaborator


class Layers:
    """The layers defined so far, and the calls being inlined."""

    def __init__(self, el: Elaborator):
        self.el = el
        self.defined: dict[str, syntax.Layer] = {}
        self.consts_of: dict[str, dict[str, Any]] = {}   # layer -> the consts of the file that defines it
        self.calling: list[str] = []   # the layers being instantiated, outermost first
        self.left_out = 0   # a short compile's: the nodes of the instances left out at its gaps

    def define(self, layer: syntax.Layer, scope: Scope) -> None:
        if layer.name in self.defined:
            raise NNError(f"layer '{layer.name}' is already defined", layer.loc,
                          notes=(("first defined here", self.defined[layer.name].loc),))
        if layer.name in REGISTRY and REGISTRY[layer.name].public:
            raise NNError(f"'{layer.name}' is a built-in op; give the layer another name", layer.loc)
        seen: set[str] = set()
        for arg in layer.args:
            if arg.name in seen:
                raise NNError(f"layer '{layer.name}' has two arguments named '{arg.name}'", arg.loc)
            seen.add(arg.name)
        self.defined[layer.name] = layer
        self.consts_of[layer.name] = scope.consts

    def call(self, call: syntax.Call, scope: Scope, scope_hint: str | None) -> int:
        return self.instantiate(self.defined[call.func], call, self.instance_name(call, scope, scope_hint), scope)

    def instance_name(self, call: syntax.Call, scope: Scope, scope_hint: str | None) -> str:
        """``affine(h) as fc1`` is named by ``as``, else by the variable it is assigned to, else by a count."""
        if call.scope or scope_hint:
            return call.scope or scope_hint
        count = scope.auto_names.get(call.func, 0) + 1
        scope.auto_names[call.func] = count
        return f"{call.func}_{count}"

    def repeat(self, rep: syntax.Repeat, scope: Scope, scope_hint: str | None) -> int:
        """``repeat 3 block(x)``: three instances, each fed the one before, named ``h.1`` to ``h.3``."""
        el = self.el
        count = el.consts.eval(rep.count, scope)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise NNError(f"repeat needs a positive whole number of times, not {count!r}", rep.count.loc)
        if count > MAX_REPEAT:
            raise NNError(f"repeat can unroll at most {MAX_REPEAT} copies, not {count}", rep.count.loc)
        call = rep.call
        if call.func not in self.defined:
            if call.func in scope.later:   # a layer defined further down
                raise el.unknown(call.func, call.loc, scope)
            raise NNError(f"repeat applies a layer, but '{call.func}' is not one", call.loc)
        if not call.args:
            raise NNError("repeat feeds each result into the layer's first argument, so give it one", call.loc)
        layer = self.defined[call.func]
        base = self.instance_name(call, scope, scope_hint)
        value = el.exprs.expr(call.args[0], scope)
        # The other tensors are built once and shared by every copy; attributes bind as in a plain call.
        tensors = {a.name for a in layer.args if not a.is_attribute}
        named = [(a.name, e) for a, e in zip(layer.args[1:], call.args[1:])] + [(k, e) for k, e, _ in call.kwargs]
        shared = {name: el.exprs.expr(e, scope) for name, e in named if name in tensors}
        el.model.repeats[(*scope.prefix, base)] = rep.loc   # instance i is scope (*prefix, f"{base}.{i}")
        key = (*scope.prefix, base)
        for i in self.numbers(key, count, scope):
            if layer.args:   # else binding reports the extra argument
                shared[layer.args[0].name] = value
            size = len(el.G)
            value = self.instantiate(layer, call, f"{base}.{i}", scope, given=shared)
        if key in el.model.gaps:   # each instance left out as big as the last one made
            self.left_out += el.model.gaps[key][1] * (len(el.G) - size)
            self.check_size(call.loc)
        return value

    def numbers(self, key: tuple[str, ...], count: int, scope: Scope) -> range | list[int]:
        """The instances a repeat elaborates: all of them, or for a short compile (``shorten``)
        the first and the last few, around a gap recorded in ``model.gaps``. A repeat inside
        another's instance is written out in that instance's loop body: it stays whole."""
        short, long = self.el.shorten or (count, count)
        if count <= max(short, long) or instance_of(self.el.model, scope.prefix) is not None:
            return range(1, count + 1)
        head = short // 2
        self.el.model.gaps[key] = (head, count - short)
        return [*range(1, head + 1), *range(count - short + head + 1, count + 1)]

    def check_size(self, loc: Loc) -> None:
        """The full model past MAX_NODES is an error; a short compile's, one it cannot stretch
        to (it stops here, not after its pipeline: the full compile reports where the limit is
        passed, seconds later, where a repeat 1000 of a repeat 1000 would run the short one's
        for minutes)."""
        if len(self.el.G) + self.left_out <= MAX_NODES:
            return
        if self.left_out:
            raise Unstretchable(f"the full model would grow past {MAX_NODES} graph nodes")
        raise NNError(f"the model grows past {MAX_NODES} graph nodes, the limit, at this layer call", loc)

    def instantiate(self, layer: syntax.Layer, call: syntax.Call, name: str, scope: Scope,
                    given: dict[str, int] | None = None) -> int:
        """Inline one call of a layer: bind its arguments, build its body under scope ``name``."""
        el = self.el
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
        inner = Scope((*scope.prefix, name), dict(self.consts_of[layer.name]), in_layer=layer.name)
        bound = self.bind_args(layer, call, scope, inner, given or {})
        for arg in layer.args:
            if arg.name in bound:
                inner.define(arg.name, arg.loc)
        self.calling.append(layer.name)
        try:
            result = el.statements.body(layer.body, inner)
        except NNError as exc:
            if exc.loc is not None and exc.loc.file == layer.loc.file and \
                    layer.loc.line <= exc.loc.line and call.loc.line != exc.loc.line:
                exc.notes = (*exc.notes, (f"in layer '{layer.name}' called here as '{name}'", call.loc))
            raise
        finally:
            self.calling.pop()
        self.check_size(call.loc)
        if result is None:
            raise NNError(f"layer '{layer.name}' has no 'return' statement", layer.loc)
        if layer.returns is not None:
            self.check_pattern(el.G[result].shape, layer.returns, inner, call.loc,
                               f"the result of {layer.name}()", bind=False)
        el.model.layers[inner.prefix] = layer.name
        for local, node in inner.values.items():
            scope.values[f"{name}.{local}"] = node
        for local, defined in inner.other_mode.items():   # bn.mu, which only train mode has
            if local not in inner.values:
                scope.other_mode.setdefault(f"{name}.{local}", defined)
        if el.G[result].name is None:
            el.G.set(result, name=".".join(inner.prefix))
            el.instance_results.add(result)
        return result

    def bind_args(self, layer: syntax.Layer, call: syntax.Call, scope: Scope, inner: Scope,
                  given: dict[str, int]) -> dict[str, Any]:
        """Bind a call's arguments; ``given`` holds tensors already built for some of them (repeat's)."""
        el = self.el
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
                close = closest(kw, order)
                raise NNError(f"{layer.name}() has no argument '{kw}'"
                              + (f"; did you mean '{close}'?" if close else f"; it takes {', '.join(order)}"), loc)
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
                value = el.consts.eval(payload, default_scope)
                want = arg.type.dtype
                if want == "int" and not (isinstance(value, int) and not isinstance(value, bool)):
                    raise NNError(f"{layer.name}() needs an int for '{arg.name}', not {value!r}", loc)
                if want == "float" and not isinstance(value, (int, float)):
                    raise NNError(f"{layer.name}() needs a number for '{arg.name}', not {value!r}", loc)
                inner.consts[arg.name] = float(value) if want == "float" else value
                bound[arg.name] = value
            else:
                node = payload if kind == "node" else el.exprs.expr(payload, default_scope)
                if arg.type is not None:
                    actual = el.G[node]
                    if arg.type.dtype and arg.type.dtype != actual.dtype:
                        raise NNError(f"{layer.name}() needs {arg.type.dtype} for '{arg.name}', "
                                      f"but got {actual.dtype}{show(actual.shape)}", loc)
                    self.check_pattern(actual.shape, arg.type.shape or (), inner, loc,
                                       f"argument '{arg.name}' of {layer.name}()", bind=True)
                inner.values[arg.name] = node
                bound[arg.name] = node
        return bound

    def check_pattern(self, shape: Shape, pattern: tuple[syntax.Expr, ...], inner: Scope, loc: Loc,
                      what: str, bind: bool) -> None:
        """Match a shape against ``[B, K]``: unbound names bind, known ones must agree."""
        expected = "[" + ", ".join(show_expr(e) for e in pattern) + "]"
        if len(shape) != len(pattern):
            raise NNError(f"{what} must have shape {expected} (rank {len(pattern)}), "
                          f"but it has shape {show(shape)}", loc)
        for axis, (dim, expr) in enumerate(zip(shape, pattern)):
            match expr:
                case syntax.Ref(parts=[name]) if bind and name not in inner.consts and name not in inner.dims:
                    inner.dims[name] = dim
                    if isinstance(dim, int):
                        inner.consts[name] = dim
                case _:
                    want = self.el.consts.eval(expr, inner)
                    if want != dim:
                        named = show_expr(expr)
                        named = f"{named} = {want}" if named != str(want) else named
                        raise NNError(f"{what} must have shape {expected}, but it has shape {show(shape)}: "
                                      f"dim {axis + 1} is {dim}, expected {named}", loc)
