"""What numpy programmers build on comparisons: where (select by a mask), clip, argmax and
one_hot. The comparisons themselves (``a < b``) are the ``step`` mask of :mod:`.basic`: 1
where the comparison holds, else 0, in the module's float dtype, so a mask is a value
like any other (``mean(argmax(s, axis=1) == y)`` is an accuracy) and never a bool array.
Declared like :mod:`.basic`, one call per op, each op's rules just above its entry.
"""
from __future__ import annotations

from .. import shapes
from ..ir import Node
from ..shapes import Shape, ShapeError
from .basic import MATRIX, tie_gap
from .value import Value
from .registry import EmitContext, Kink, Sample, composite, need_float, number_attr, op
from .onnx_helpers import OnnxContext, one_hot_of

_BOOL = 9   # TensorProto.BOOL: what ONNX's Where takes as its condition


# -- where

def _where_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    cond, a, b = ins
    for i, node in ((1, a), (2, b)):
        if node.dtype != "float":
            what = f"'{node.name}'" if node.name else f"operand {i + 1}"
            raise ShapeError(f"where(cond, a, b) selects floats, but {what} is {node.dtype}{shapes.show(node.shape)}",
                             i)
    try:
        return shapes.broadcast(cond.shape, a.shape, b.shape), "float"
    except ShapeError as exc:
        raise ShapeError(f"cannot apply where to {' and '.join(shapes.show(n.shape) for n in ins)}: "
                         + exc.message.split(": ", 1)[-1], 2) from None


def _emit_where(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    text = f"{ctx.xp}.where({args[0]}, {args[1]}, {args[2]})"
    # Two Python numbers would select float64 entries: give them the module's dtype.
    return f"{text}.astype({ctx.dtype})" if {1, 2} <= ctx.literals else text


def _vjp_where(g: Value, out: Value, cond: Value, a: Value, b: Value):
    # out = a where cond, else b: the gradient goes where the entry came from, and none to the mask.
    zero = g.const(0.0)
    return None, cond.node("where", g, zero), cond.node("where", zero, g)


def _onnx_where(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    return ctx.node("Where", [ctx.node("Cast", [args[0]], to=_BOOL), args[1], args[2]])


op("where", 3, _where_rule, _emit_where, vjp=_vjp_where,
   samples=(Sample((MATRIX, MATRIX, MATRIX), ints={0: 2}), Sample(((3, 1), (4,), ()), ints={0: 2}),
            Sample(((4,), MATRIX, (3, 1))), Sample(((), MATRIX, MATRIX), ints={0: 2})),
   doc="the entries of the second operand where cond is nonzero (a comparison's mask), else of the third, "
       "broadcast like numpy's where; the gradient goes to the operand each entry came from, none to cond",
   example="h = where(cond, x, t)",
   label="where",
   onnx=_onnx_where)


# -- clip

def _clip(x: Value, lo: float | None = None, hi: float | None = None) -> Value:
    # hardtanh is clipping, with 1 strictly inside [lo, hi] and 0 at the ends as its rule.
    low = number_attr("clip", {"lo": lo}, "lo")
    high = number_attr("clip", {"hi": hi}, "hi", low=low)
    return x.node("hardtanh", min_val=low, max_val=high)


composite("clip", 1, _clip, attrs=(("lo", None), ("hi", None)),
          samples=(Sample((MATRIX,), {"lo": -0.5, "hi": 0.5}), Sample(((),), {"lo": -1.0, "hi": 2.0})),
          doc="x clipped to [lo, hi] (both needed; for one bound use maximum or minimum); the gradient is 1 "
              "strictly inside, 0 at the ends and beyond (hardtanh's rule; torch.clamp gives 1 at the ends)",
          example="h = clip(x, -1, 1)")


# -- argmax

def _argmax_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    need_float(ins, "argmax")
    axis = attrs.get("axis")
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int)):
        raise ShapeError(f"argmax() takes one axis (an int) or none (the index into the flattened array), "
                         f"not {axis!r}")
    return shapes.reduce(ins[0].shape, axis, attrs.get("keepdims", False)), "int"


def _emit_argmax(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    keep = ", keepdims=True" if attrs.get("keepdims") else ""
    return f"{ctx.xp}.argmax({args[0]}, axis={attrs.get('axis')!r}{keep})"


def _onnx_argmax(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    axis, keep, rank = attrs.get("axis"), bool(attrs.get("keepdims")), len(ctx.operand(0).shape)
    if axis is not None:
        return ctx.node("ArgMax", [args[0]], axis=int(axis), keepdims=int(keep))
    flat = ctx.node("ArgMax", [ctx.node("Reshape", [args[0], ctx.ints([-1])])], axis=0, keepdims=0)
    return ctx.node("Reshape", [flat, ctx.ints([1] * rank)]) if keep else flat


def _tie_for_the_max(operands: list, attrs: dict):
    """Where the index changes (for the gradient check: a loss that reads it jumps there)."""
    axis = attrs.get("axis")
    return tie_gap(operands[0], None if axis is None else (axis,))


op("argmax", 1, _argmax_rule, _emit_argmax, attrs=(("axis", None), ("keepdims", False)), differentiable=False,
   doc="the index of the max along axis (of the flattened array by default), an int tensor, the first on a tie; "
       "it carries no gradient",
   example="predicted = argmax(x, axis=1)",
   label=lambda attrs: "argmax" + ("" if attrs.get("axis") is None else f"(axis={attrs['axis']})"),
   kink=Kink(_tie_for_the_max, "has a tie for the maximum"),
   onnx=_onnx_argmax)


# -- one_hot

def _one_hot_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    labels, n = ins[0], attrs.get("n")
    if labels.dtype != "int":
        what = f"'{labels.name}' is" if labels.name else "the labels are"
        raise ShapeError(f"one_hot needs integer labels, but {what} {labels.dtype}{shapes.show(labels.shape)}; "
                         "declare them as int[...]", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ShapeError(f"one_hot() needs the number of classes n, a positive whole number, not {n!r}")
    return (*labels.shape, n), "float"


def _onnx_one_hot(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    return one_hot_of(ctx, args[0], int(attrs["n"]))


def _emit_one_hot(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    # Each label against 0 ... n-1: memory for the result only, where rows of eye(n) took n x n
    # (16 GiB for n = 65536, whatever the batch).
    xp = ctx.xp
    return f"({xp}.expand_dims({args[0]}, -1) == {xp}.arange({attrs['n']!r})).astype({ctx.dtype})"


def _lower_one_hot(el, args: list[int], attrs: dict, loc, scope) -> int:
    """The node itself, once the labels are known to lie below n: an input's labels are then
    checked when the module is called (a label of -1 would silently pick the last class)."""
    _one_hot_rule([el.G[a] for a in args], attrs)   # a ShapeError here points at the operand it is about
    n = el.op("one_hot", args, attrs, loc, scope)
    el.bound(args[0], attrs["n"])
    return n


op("one_hot", 1, _one_hot_rule, _emit_one_hot, attrs=(("n", None),), differentiable=False, lower=_lower_one_hot,
   samples=(Sample(((5,),), {"n": 4}, ints={0: 4}), Sample(((2, 3),), {"n": 3}, ints={0: 3})),
   doc="rows of the n x n identity picked by integer labels: 1 at [..., label], else 0, in the module's float "
       "dtype; labels must lie in [0, n)",
   example="targets = one_hot(y, 4)",
   onnx=_onnx_one_hot)
