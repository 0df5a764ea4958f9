"""Indexing, slicing and concatenation: slice, index (a gather), scatter (their gradient),
arange and concat. Declared like :mod:`.basic`, one call per op, and each op's shape rule,
emitter, gradient rule and ONNX lowering sit just above its entry.
"""
from __future__ import annotations

from .. import shapes
from ..ir import Node
from ..shapes import Dim, Shape, ShapeError
from .basic import MATRIX
from .value import Value
from .registry import EmitContext, Sample, op
from .onnx_helpers import OnnxContext


# -- the subscript key, which slice, index and scatter share
# A subscript key is a tuple of numpy subscripts as text, one per indexed axis: "2", "0:3",
# ":", or "{1}" for the integer tensor that is operand 1. Emission is then the numpy
# expression itself, x[:, 0:3], and diagrams show it as written.

def _key_parts(key: tuple[str, ...]) -> list[tuple]:
    parts = []
    for entry in key:
        if entry.startswith("{"):
            parts.append(("tensor", int(entry[1:-1])))
        elif ":" in entry:
            start, stop = entry.split(":")
            parts.append(("slice", int(start) if start else None, int(stop) if stop else None))
        else:
            parts.append(("int", int(entry)))
    return parts


def _index_shape(opname: str, x: Node, tensors: list[Node], key: tuple[str, ...]) -> Shape:
    """numpy's rule: ints drop their axis, slices keep it, and integer tensors (with any ints
    among them) broadcast together; their dims go where they stand if they are adjacent,
    else first."""
    parts = _key_parts(key)
    if len(parts) > len(x.shape):
        raise ShapeError(f"too many subscripts: {shapes.show(x.shape)} has {len(x.shape)} axes, "
                         f"but {len(parts)} are indexed", 0)
    parts += [("slice", None, None)] * (len(x.shape) - len(parts))
    advanced = [i for i, p in enumerate(parts) if p[0] == "tensor"]
    if advanced:
        advanced = [i for i, p in enumerate(parts) if p[0] in ("tensor", "int")]
    dims: list[Dim] = []
    for axis, (part, dim) in enumerate(zip(parts, x.shape)):
        if part[0] == "slice":
            if part[1:] == (None, None):
                dims.append(dim)
            elif isinstance(dim, int):
                size = len(range(dim)[slice(*part[1:])])
                if size == 0:
                    raise ShapeError(f"the slice {key[axis]} of axis {axis} (size {dim}) is empty", 0)
                dims.append(size)
            else:
                raise ShapeError(f"cannot slice axis {axis} of {shapes.show(x.shape)} with fixed bounds: its size "
                                 f"{dim} is only known when the module is called; use ':'", 0)
        elif part[0] == "int" and isinstance(dim, int) and not -dim <= part[1] < dim:
            raise ShapeError(f"index {part[1]} is out of range for axis {axis} of {shapes.show(x.shape)}", 0)
        if part[0] == "slice" or not advanced:
            continue
        if axis == advanced[0]:
            dims.append(None)   # where the broadcast index dims go, if adjacent
    if not advanced:
        return tuple(dims)
    try:
        joint = shapes.broadcast(*(t.shape for t in tensors))
    except ShapeError as exc:
        raise ShapeError("the index tensors do not broadcast together: " + exc.message.split(": ", 1)[-1],
                         1) from None
    at = dims.index(None)
    rest = dims[:at] + dims[at + 1:]
    if advanced != list(range(advanced[0], advanced[-1] + 1)):
        return (*joint, *rest)          # separated by a slice: numpy puts them first
    return (*rest[:at], *joint, *rest[at:])


# -- slice and index

def _subscript(key: tuple[str, ...], args: list[str]) -> str:
    """The key as a numpy subscript over the emitted operand names."""
    return ", ".join(entry.format(*args) for entry in key) + ("," if len(key) == 1 else "")


def _emit_index(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"{args[0]}[{_subscript(attrs['key'], args)}]"


def _emit_gather(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    """A gather is a new array, which later code may write into. Index tensors that are all
    0-d (an int scalar input, an argmax of a vector) reach numpy as integers, and integers
    index basically: a view of the operand, so writing into it would change the caller's
    input or param. Then the entry is copied out."""
    gathered = _emit_index(ctx, args, attrs, out)
    return f"{gathered}.copy()" if all(shape == () for shape in ctx.operand_shapes[1:]) else gathered


def _vjp_index(g: Value, out: Value, x: Value, *tensors: Value):
    grad = g.node("scatter", *tensors, key=out.attr("key"), shape=x.shape)
    return (grad, *([None] * len(tensors)))


def _slice_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return _index_shape("slice", ins[0], [], attrs["key"]), ins[0].dtype


_INT64_MAX = 2 ** 63 - 1   # a slice's open end


def _onnx_slice(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """x[2, 0:3]: one Slice over the axes the key restricts, then a Squeeze of the integer ones."""
    starts, ends, axes, dropped = [], [], [], []
    for axis, part in enumerate(_key_parts(attrs["key"])):
        if part[0] == "int":
            starts.append(part[1])
            ends.append(part[1] + 1 if part[1] != -1 else _INT64_MAX)
            axes.append(axis)
            dropped.append(axis)
        elif part[0] == "slice" and part[1:] != (None, None):
            starts.append(0 if part[1] is None else part[1])
            ends.append(_INT64_MAX if part[2] is None else part[2])
            axes.append(axis)
    x = args[0]
    if axes:
        x = ctx.node("Slice", [x, ctx.ints(starts), ctx.ints(ends), ctx.ints(axes)])
    if dropped:
        x = ctx.node("Squeeze", [x, ctx.ints(dropped)])
    return x


op("slice", 1, _slice_rule, _emit_index, vjp=_vjp_index, attrs=(("key", ()),), public=False, view=True,
   samples=(Sample((MATRIX,), {"key": (":", "1:3")}), Sample(((2, 3, 4),), {"key": ("1", "0:2")}),
            Sample((MATRIX,), {"key": ("-1",)})),
   doc="x[...] with integers and fixed slices: a view", example="first = x[:, 0:3]",
   onnx=_onnx_slice)


def _index_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    for i, t in enumerate(ins[1:], 1):
        if t.dtype != "int":
            what = f"'{t.name}'" if t.name else "an index"
            raise ShapeError(f"indices must be integers, but {what} is {t.dtype}{shapes.show(t.shape)}", i)
    return _index_shape("index", ins[0], ins[1:], attrs["key"]), ins[0].dtype


def _onnx_index(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """numpy's advanced indexing: the fixed slices first; then one integer tensor alone on an
    axis is a Gather there, and several (with any integers among them) broadcast together
    and become a GatherND over those axes moved to the front, its result dims put back where
    numpy puts them (in place if the indexed axes are adjacent, else first)."""
    key, rank = attrs["key"], len(ctx.operand(0).shape)
    parts = _key_parts(key) + [("slice", None, None)] * (rank - len(key))
    advanced = [a for a, p in enumerate(parts) if p[0] in ("tensor", "int")]
    kept = tuple(":" if p[0] != "slice" else entry for p, entry in zip(parts, (*key, *[":"] * rank)))
    x = _onnx_slice(ctx, args[:1], {"key": kept})
    if len(advanced) == 1:
        return ctx.node("Gather", [x, args[parts[advanced[0]][1]]], axis=advanced[0])
    indices = [args[parts[a][1]] if parts[a][0] == "tensor" else ctx.constant(parts[a][1], "int") for a in advanced]
    tensors = {ctx.operand(parts[a][1]).shape if parts[a][0] == "tensor" else None for a in advanced}
    if len(tensors) > 1:   # broadcast them together: add zeros of the joint shape (Sum takes no ints)
        zero = ctx.constant(0, "int")
        joint = ctx.node("Mul", [indices[0], zero])
        for i in indices[1:]:
            joint = ctx.node("Add", [joint, ctx.node("Mul", [i, zero])])
        indices = [ctx.node("Add", [i, joint]) for i in indices]
    columns = [ctx.node("Unsqueeze", [i, ctx.ints([-1])]) for i in indices]
    rest = [a for a in range(rank) if a not in advanced]
    if advanced + rest != list(range(rank)):
        x = ctx.node("Transpose", [x], perm=advanced + rest)
    out = ctx.node("GatherND", [x, ctx.node("Concat", columns, axis=-1)])
    at = advanced[0]
    if advanced != list(range(at, at + len(advanced))) or at == 0:
        return out   # separated (numpy puts the index dims first), or already first
    joint_rank = len(ctx.graph[ctx.current].shape) - len(rest)
    perm = [joint_rank + j for j in range(at)] + list(range(joint_rank)) + \
        [joint_rank + j for j in range(at, len(rest))]
    return ctx.node("Transpose", [out], perm=perm)


op("index", -1, _index_rule, _emit_gather, vjp=_vjp_index, attrs=(("key", ()),), public=False,
   samples=(Sample(((5, 4), (5,), (5,)), {"key": ("{1}", "{2}")}, ints={1: 5, 2: 4}),
            Sample(((5, 4), (3,)), {"key": (":", "{1}")}, ints={1: 4}),
            Sample(((2, 5, 4), (2, 3)), {"key": ("1", "{1}")}, ints={1: 5}),
            Sample(((5, 4), (6,)), {"key": ("{1}",)}, ints={1: 5})),
   doc="x[...] with integer tensors among the subscripts (numpy's advanced indexing): a gather",
   example="correct = scores[arange(N), y]",
   onnx=_onnx_index)


# -- scatter

def _index_tuple(key: tuple[str, ...], args: list[str]) -> str:
    """The key as a Python index tuple (slices spelled out), for code that indexes with it."""
    items = []
    for entry, part in zip(key, _key_parts(key)):
        if part[0] == "slice":
            items.append(f"slice({part[1]}, {part[2]})")
        else:
            items.append(entry.format(*args))
    return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"


_SCATTER = '''def _scatter(g, shape, index, accumulate, dtype):
    """The gradient of x[index]: g added into zeros shaped like x (repeated indices accumulate)."""
    out = np.zeros(shape, dtype=dtype)
    if accumulate:
        np.add.at(out, index, g)
    else:
        out[index] = g
    return out'''


def _emit_scatter(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    # The key's operand numbers count x as operand 0; here operand 0 is the gradient.
    accumulate = any(e.startswith("{") for e in attrs["key"])
    return (f"_scatter({args[0]}, {ctx.shape(attrs['shape'])}, {_index_tuple(attrs['key'], args)}, "
            f"{accumulate}, {ctx.dtype})")


def _vjp_scatter(u: Value, out: Value, g: Value, *tensors: Value):
    # scatter is index's transpose, so its VJP is the gather again.
    gather = u.node("index" if tensors else "slice", *tensors, key=out.attr("key"))
    return (gather, *([None] * len(tensors)))


op("scatter", -1, lambda ins, attrs: (attrs["shape"], "float"), _emit_scatter, public=False, helpers=(_SCATTER,),
   vjp=_vjp_scatter, attrs=(("key", ()), ("shape", ())),
   samples=(Sample(((3, 2),), {"key": (":", "1:3"), "shape": (3, 4)}),
            Sample(((5,), (5,), (5,)), {"key": ("{1}", "{2}"), "shape": (5, 4)}, ints={1: 5, 2: 4}),
            Sample(((6,), (6,)), {"key": ("{1}",), "shape": (5,)}, ints={1: 5})),
   doc="the gradient of slice and index: g added into zeros shaped like x at the indexed entries")


# -- arange

def _arange_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    n = attrs.get("n")
    if isinstance(n, str) or (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        return (n,), "int"
    raise ShapeError(f"arange() needs a positive whole number or a dim like N, not {n!r}")


def _emit_arange(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    n = attrs["n"]
    return f"{ctx.xp}.arange({ctx.dim(n) if isinstance(n, str) else n})"


def _onnx_arange(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    n = attrs["n"]
    stop = ctx.dim(n) if isinstance(n, str) else ctx.constant(int(n), "int")
    return ctx.node("Range", [ctx.constant(0, "int"), stop, ctx.constant(1, "int")])


op("arange", 0, _arange_rule, _emit_arange, attrs=(("n", None),),
   doc="the integers 0, 1, ..., n - 1 (n may be a dim like N), to index with", example="rows = arange(N)",
   onnx=_onnx_arange)


# -- concat

def _concat_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    if not ins:
        raise ShapeError("concat() needs at least one tensor")
    first = ins[0]
    if not first.shape:
        raise ShapeError("concat() joins tensors along an axis, so they cannot be scalars", 0)
    axis = attrs.get("axis")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ShapeError(f"concat() needs an integer axis, not {axis!r}")
    (axis,) = shapes.normalize_axes(axis, len(first.shape))
    total = 0
    for i, node in enumerate(ins):
        if node.dtype != first.dtype:
            raise ShapeError(f"concat() cannot join {first.dtype} and {node.dtype} tensors", i)
        others = [d for a, d in enumerate(node.shape) if a != axis]
        if len(node.shape) != len(first.shape) or others != [d for a, d in enumerate(first.shape) if a != axis]:
            raise ShapeError(f"concat(axis={attrs['axis']}): {shapes.show(node.shape)} does not match "
                             f"{shapes.show(first.shape)} on the other axes", i)
        if not isinstance(node.shape[axis], int):
            raise ShapeError(f"concat() along axis {axis} needs fixed sizes there, but {shapes.show(node.shape)} "
                             f"has the symbolic dim {node.shape[axis]} (the joined size would be a sum, which no dim "
                             "is); join along a fixed axis, or declare this one with a number", i)
        total += node.shape[axis]
    return (*first.shape[:axis], total, *first.shape[axis + 1:]), first.dtype


def _emit_concat(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    parts = f"({', '.join(args)}{',' if len(args) == 1 else ''})"
    return f"{ctx.xp}.concatenate({parts}, axis={attrs['axis']!r}" + (f", out={out})" if out else ")")


def _onnx_concat(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    return ctx.node("Concat", list(args), axis=int(attrs["axis"]))


def _vjp_concat(g: Value, out: Value, *xs: Value):
    (axis,) = shapes.normalize_axes(out.attr("axis"), len(out.shape))
    grads, start = [], 0
    for x in xs:   # each operand's gradient is its slice of g (a view, no copy)
        size = x.shape[axis]
        grads.append(g.node("slice", key=(":",) * axis + (f"{start}:{start + size}",)))
        start += size
    return tuple(grads)


op("concat", -1, _concat_rule, _emit_concat, vjp=_vjp_concat, attrs=(("axis", 0),), takes_out=True,
   samples=(Sample(((2, 3), (4, 3))), Sample(((3, 2), (3, 1), (3, 4)), {"axis": 1}), Sample(((3,), (2,)))),
   doc="joins tensors along an existing axis (all other dims equal)", example="h = concat(x, t, axis=1)",
   onnx=_onnx_concat)
