"""A graph node as a value: arithmetic on it adds nodes to its graph.

Gradient rules and composite ops are written with it, so that a rule reads as its formula
(``g * (1 - out * out)`` for tanh, as in micrograd, tinygrad's gradient table and tangent's
adjoints) while building exactly the nodes that spelled-out ``G.add`` calls would. Python
numbers become ``const`` nodes where they meet a value. ``==`` keeps its Python meaning
(values are compared as objects); the mask "a equals b" is :meth:`Value.eq`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from .. import shapes
from ..ir import Graph
from ..shapes import Shape, ShapeError


Build = Callable[[str, Sequence[int], dict], int]   # (op, operand ids, attrs) -> the new node's id


class Value:
    """Node ``n`` of graph ``G``; operators and methods add the nodes they compute.

    ``build`` adds a node (``G.add`` by default); a composite expanded by the elaborator
    passes one that records the .nn call's line and scope on every node it adds."""

    __slots__ = ("G", "n", "build")

    def __init__(self, G: Graph, n: int, build: Build | None = None) -> None:
        self.G, self.n, self.build = G, n, build or G.add

    def __repr__(self) -> str:
        node = self.G[self.n]
        return f"Value({self.n}: {node.op}{shapes.show(node.shape)})"

    # -- what the node is
    @property
    def shape(self) -> Shape:
        return self.G[self.n].shape

    @property
    def args(self) -> tuple[Value, ...]:
        """The node's operands, as values."""
        return tuple(Value(self.G, a, self.build) for a in self.G[self.n].args)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.G[self.n].attrs)

    def attr(self, name: str) -> Any:
        return self.G[self.n].attr(name)

    # -- building nodes
    def node(self, op: str, *operands: Value | float, **attrs: Any) -> Value:
        """The node ``op(self, *operands)`` with ``attrs``."""
        args = [self, *(self._lift(o) for o in operands)]
        return Value(self.G, self.build(op, [a.n for a in args], attrs), self.build)

    def const(self, value: float, shape: Shape = ()) -> Value:
        """A float constant in this value's graph."""
        n = self.build("const", (), {"value": float(value), "shape": shape, "dtype": "float"})
        return Value(self.G, n, self.build)

    def _lift(self, other: Value | float) -> Value:
        if isinstance(other, Value):
            return other
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            # `x == 0` is Python's identity test, False, not a mask (that is x.eq(0)); a
            # composite's attribute may be anything a user wrote, like a list or a dim.
            raise ShapeError(f"a number is needed here, not {other!r}"
                             + ("; for the mask 'a equals b' write a.eq(b)" if isinstance(other, bool) else ""))
        return self.const(other)

    def __bool__(self) -> bool:
        raise TypeError("a value is a graph node, not a number: `if x > 0` or max(x, 0) cannot be decided when "
                        "the graph is built; use the masks (x > 0) * ..., or maximum/relu")

    def _binary(self, op: str, other: Value | float, reflected: bool = False, **attrs: Any) -> Value:
        other = self._lift(other)
        return other.node(op, self, **attrs) if reflected else self.node(op, other, **attrs)

    def __neg__(self) -> Value:
        return self.node("neg")

    def eq(self, other: Value | float) -> Value:
        """The mask 1 where self == other, else 0 (``==`` itself compares the objects)."""
        return self._binary("step", other, cmp="==")

    # -- shapes and reductions
    def sum(self, axis: Any = None, keepdims: bool = False) -> Value:
        return self.node("sum", axis=axis, keepdims=keepdims)

    def reshape(self, shape: Shape) -> Value:
        return self.node("reshape", shape=tuple(shape))

    def transpose(self, axes: Iterable[int] | None = None) -> Value:
        return self.node("transpose", axes=None if axes is None else tuple(axes))

    @property
    def mT(self) -> Value:
        """The last two axes swapped (numpy's ``matrix_transpose``)."""
        rank = len(self.shape)
        return self.transpose((*range(rank - 2), rank - 1, rank - 2))

    def sum_to(self, target: Shape) -> Value:
        """Undo broadcasting: summed down to ``target`` (itself if it has that shape)."""
        if self.shape == tuple(target):
            return self
        dropped, kept = shapes.unbroadcast_axes(self.shape, target)
        return self.node("sum_to", dropped=dropped, kept=kept, shape=tuple(target))

    def broadcast(self, shape: Shape, axis: Any = None, keepdims: bool = False) -> Value:
        """A reduced value spread back over the axes ``axis`` of ``shape``."""
        axes = () if keepdims or self.shape == () else shapes.normalize_axes(axis, len(shape))
        return self.node("broadcast_to", shape=tuple(shape), axes=axes)

    def per_element(self, shape: Shape, axis: Any = None, factor: float = 1.0) -> Value:
        """``self * factor / count``: the gradient of a mean over the axes ``axis`` (all by
        default) of ``shape``, whose count may be a symbolic batch size."""
        total, symbols = count(shape, axis)
        if not symbols:
            return self * (factor / total)
        scaled = self / Value(self.G, self.build("dim", (), {"symbols": symbols, "factor": total}), self.build)
        return scaled if factor == 1.0 else scaled * factor


def _operator(op: str, reflected: bool = False, **attrs: Any) -> Callable[[Value, Value | float], Value]:
    def method(self: Value, other: Value | float) -> Value:
        return self._binary(op, other, reflected, **attrs)
    method.__name__ = f"{'r' if reflected else ''}{op}"
    return method


# a + b, 2.0 * a, a @ b ...; the comparisons give the step mask: 1 where it holds, else 0
# (it carries no gradient).
for _name, _op in (("add", "add"), ("sub", "sub"), ("mul", "mul"), ("truediv", "div"), ("pow", "pow")):
    setattr(Value, f"__{_name}__", _operator(_op))
    setattr(Value, f"__r{_name}__", _operator(_op, reflected=True))
Value.__matmul__ = _operator("matmul")
for _name, _cmp in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
    setattr(Value, f"__{_name}__", _operator("step", cmp=_cmp))
for _op in ("exp", "log", "tanh", "relu", "sigmoid", "sign"):   # x.exp() ...
    setattr(Value, _op, lambda self, _op=_op: self.node(_op))


def count(shape: Shape, axis: Any) -> tuple[int, tuple[str, ...]]:
    """How many elements a reduction over ``axis`` averages: an int factor times symbols."""
    factor, symbols = 1, []
    for a in shapes.normalize_axes(axis, len(shape)):
        if isinstance(shape[a], int):
            factor *= shape[a]
        else:
            symbols.append(shape[a])
    return factor, tuple(symbols)


# ---- for the machinery that holds node ids, not values ---------------------------------------

def constant(G: Graph, value: float, shape: Shape = ()) -> int:
    return Value(G, -1).const(value, shape).n


def sum_to(G: Graph, x: int, target: Shape) -> int:
    """Undo broadcasting: sum a gradient back down to the shape of the operand it flowed from."""
    return Value(G, x).sum_to(target).n
