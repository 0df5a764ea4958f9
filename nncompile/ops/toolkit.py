"""The lecture notes' toolkit: more activations, losses and penalties, indexing and
concatenation. Declared like :mod:`.basic`, one call per op.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .. import shapes
from ..ir import Node
from ..shapes import Dim, Shape, ShapeError
from .basic import LOG_SOFTMAX, MATRIX, UNARY, route_to_maxima, tie_gap
from .value import Value
from .registry import (
    EmitContext,
    Kink,
    Loss,
    Sample,
    Step,
    along_axis_rule,
    composite,
    elementwise,
    elementwise_rule,
    float_like_first,
    labels_rule,
    literal,
    need_float,
    number_attr,
    op,
    reduce_expr,
    template,
)
from .onnx_helpers import OnnxContext, float_attr, int_attr, onnx_node, reduce_over, rows

# ---- the lecture's toolkit: activations, losses, penalties, indexing ---------------------
# Each entry is the whole op: shape rule, numpy emitter, C scalar form where it is
# elementwise (so the GPU backend fuses it), a VJP over values written beside it, samples for
# the generated gradient check, the formula, and a one-line example for docs/language.md.

def _checked_elementwise_rule(opname: str, check: Callable[[dict], None]):
    base = elementwise_rule(opname)

    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        check(attrs)
        return base(ins, attrs)
    return infer


# -- activations

def _leaky_chain(attrs: dict) -> tuple[Step, ...]:
    # x + (alpha - 1) * min(x, 0): three passes, no temporary.
    return (("minimum", "0", "0.0"), ("multiply", "$", literal(float(attrs["alpha"]) - 1.0)), ("add", "0", "$"))


_ELU = '''def _elu(x, alpha, out=None):
    """x where x > 0, else alpha * (exp(x) - 1); exp only ever sees x <= 0, so it cannot overflow."""
    neg = np.expm1(np.minimum(x, 0.0))
    neg *= alpha
    return np.add(np.maximum(x, 0.0, out=out), neg, out=out)'''


def _emit_elu(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"_elu({args[0]}, {literal(float(attrs['alpha']))}" + (f", out={out})" if out else ")")


_GELU_C, _GELU_K = 0.7978845608028654, 0.044715   # sqrt(2 / pi), and the cubic term's weight


def _maxout_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    need_float(ins, "maxout")
    k, shape = attrs.get("k"), ins[0].shape
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ShapeError(f"maxout() needs k, the number of linear pieces, as a positive integer, not {k!r}")
    if not shape or not isinstance(shape[-1], int) or shape[-1] % k:
        raise ShapeError(f"maxout(x, k={k}) needs x's last dim to be a multiple of k, but x is {shapes.show(shape)}", 0)
    return (*shape[:-1], shape[-1] // k), "float"


def _pieces(shape: Shape, k: int) -> Shape:
    """[..., k*D] viewed as k pieces of D: [..., k, D]."""
    return (*shape[:-1], k, shape[-1] // k)


def _emit_maxout(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    x = args[0]
    return reduce_expr(ctx, "maximum", f"{x}.reshape({x}.shape[:-1] + ({attrs['k']}, -1))", -2, out=out)


_SOFTMAX = '''def _softmax(x, axis):
    """exp(x - max) / sum(exp(x - max)): shifting by the max first keeps exp from overflowing."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e'''


# -- losses

def _class_bounds(ins: list[Node]) -> dict[int, Dim]:
    return {1: ins[0].shape[-1]}


def _ce_probs_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    scores, targets = ins
    need_float(ins, "softmax_cross_entropy")
    if len(scores.shape) != 2:
        raise ShapeError(f"softmax_cross_entropy needs scores of shape [N, C], not {shapes.show(scores.shape)}", 0)
    if targets.shape != scores.shape:
        raise ShapeError(f"softmax_cross_entropy: probability targets {shapes.show(targets.shape)} do not match "
                         f"scores {shapes.show(scores.shape)}; give one distribution per row (or int[N] labels)", 1)
    return (), "float"


_SOFT_NLL = '''def _soft_nll(logp, targets):
    """Mean over the batch of -sum_c targets * logp: cross-entropy against probability targets."""
    return np.vdot(targets, logp) * (-1.0 / len(targets))'''


_SVM = '''def _svm_margins(scores, labels, delta):
    """max(0, s_j - s_y + delta) for every class j, and 0 for the correct class y itself."""
    rows = np.arange(len(labels))
    margins = scores - scores[rows, labels][:, None]
    margins += delta
    np.maximum(margins, 0.0, out=margins)
    margins[rows, labels] = 0.0
    return margins


def _svm_loss(scores, labels, delta):
    """The multiclass SVM (hinge) loss: mean over the batch of the sum of the margins."""
    return _svm_margins(scores, labels, delta).sum() * (1.0 / len(labels))


def _svm_loss_grad(scores, labels, g, delta):
    """d loss / d scores: 1 for each violated margin, minus their count at the correct class."""
    rows = np.arange(len(labels))
    grad = (_svm_margins(scores, labels, delta) > 0).astype(scores.dtype)
    grad[rows, labels] = -grad.sum(axis=1)
    grad *= g * (1.0 / len(labels))
    return grad'''


def _same_shape_loss_rule(opname: str, what: str):
    """Predictions and targets of one shape (targets may broadcast): a scalar mean loss."""
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        need_float(ins, opname)
        pred, target = ins
        try:
            shape = shapes.broadcast(pred.shape, target.shape)
        except ShapeError:
            shape = None
        if shape != pred.shape:
            raise ShapeError(f"{opname}: {what} {shapes.show(target.shape)} do not match "
                             f"{shapes.show(pred.shape)}", 1)
        return (), "float"
    return infer


_SIGMOID_CE = '''def _sigmoid_ce(x, t):
    """mean(log(1 + exp(x)) - x t): log(1 + exp(x)) as logaddexp(0, x) stays finite for any x."""
    loss = np.logaddexp(0.0, x)
    loss -= x * t
    return loss.mean()'''


_MSE = '''def _mse(pred, target):
    """mean((pred - target) ** 2), one subtraction and a dot product."""
    d = pred - target
    return np.vdot(d, d) * (1.0 / d.size)'''


# -- penalties: variadic, so one call covers all the weights, as the lecture's R(W) does

def _penalty_rule(opname: str):
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        if not ins:
            raise ShapeError(f"{opname}() needs at least one tensor, like {opname}(fc1.W, fc2.W)")
        need_float(ins, opname)
        if "beta" in attrs:
            number_attr(opname, attrs, "beta")
        return (), "float"
    return infer


def _sum_of(terms: list[str]) -> str:
    return terms[0] if len(terms) == 1 else "(" + " + ".join(terms) + ")"


def _emit_l2(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return _sum_of([f"{ctx.xp}.vdot({a}, {a})" for a in args])


def _emit_l1(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return _sum_of([f"{ctx.xp}.absolute({a}).sum()" for a in args])


def _emit_elastic(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    beta = float(attrs["beta"])
    return f"({literal(beta)} * {_emit_l2(ctx, args, attrs)} + {_emit_l1(ctx, args, attrs)})"


# -- indexing, slicing, concatenation
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


def _slice_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return _index_shape("slice", ins[0], [], attrs["key"]), ins[0].dtype


def _index_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    for i, t in enumerate(ins[1:], 1):
        if t.dtype != "int":
            what = f"'{t.name}'" if t.name else "an index"
            raise ShapeError(f"indices must be integers, but {what} is {t.dtype}{shapes.show(t.shape)}", i)
    return _index_shape("index", ins[0], ins[1:], attrs["key"]), ins[0].dtype


def _subscript(key: tuple[str, ...], args: list[str]) -> str:
    """The key as a numpy subscript over the emitted operand names."""
    return ", ".join(entry.format(*args) for entry in key) + ("," if len(key) == 1 else "")


def _emit_index(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"{args[0]}[{_subscript(attrs['key'], args)}]"


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


def _vjp_index(g: Value, out: Value, x: Value, *tensors: Value):
    grad = g.node("scatter", *tensors, key=out.attr("key"), shape=x.shape)
    return (grad, *([None] * len(tensors)))


def _arange_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    n = attrs.get("n")
    if isinstance(n, str) or (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        return (n,), "int"
    raise ShapeError(f"arange() needs a positive whole number or a dim like N, not {n!r}")


def _emit_arange(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    n = attrs["n"]
    return f"{ctx.xp}.arange({ctx.dim(n) if isinstance(n, str) else n})"


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
                             f"has the symbolic dim {node.shape[axis]}", i)
        total += node.shape[axis]
    return (*first.shape[:axis], total, *first.shape[axis + 1:]), first.dtype


def _emit_concat(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    parts = f"({', '.join(args)}{',' if len(args) == 1 else ''})"
    return f"{ctx.xp}.concatenate({parts}, axis={attrs['axis']!r}" + (f", out={out})" if out else ")")


# -- what the gradient check and training read of these ops

def _elu_switch(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    """elu bends at 0, except with alpha = 1, where its slope is continuous."""
    x = operands[0]
    return x if float(attrs.get("alpha", 1.0)) != 1.0 else np.ones_like(x)


def _tie_among_pieces(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    x = operands[0]
    return tie_gap(x.reshape(*x.shape[:-1], int(attrs["k"]), -1), (-2,))


def _svm_switch(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    """Each margin s_j - s_y + delta, which is 0 at its hinge (the label's own column has none)."""
    scores, labels = operands
    rows = np.arange(len(labels))
    margins = scores - scores[rows, labels][:, None] + float(attrs.get("delta", 1.0))
    margins[rows, labels] = 1.0
    return margins


def _every_entry(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    """A penalty's |w| bends wherever an entry of any of its tensors crosses 0."""
    return np.concatenate([np.ravel(x) for x in operands])


def _chance_of_svm(classes: int | None, attrs: dict) -> tuple[float, str] | None:
    """Equal scores miss the margin of each of the C - 1 wrong classes by delta."""
    delta = float(attrs.get("delta", 1.0))
    return None if classes is None else ((classes - 1) * delta, f"({classes} - 1) * {delta:g}")


def _chance_of_logit(classes: int | None, attrs: dict) -> tuple[float, str]:
    """A logit of 0 gives either outcome probability 1/2."""
    return math.log(2), "log 2"


# -- ONNX lowerings (nncompile.export; ops/onnx_helpers.py says what a lowering is)

_INT64_MAX = 2 ** 63 - 1   # a slice's open end


def _onnx_gelu(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """Opset 20 has gelu's tanh approximation as one node; before it, the formula."""
    x = args[0]
    if ctx.opset >= 20:
        return ctx.node("Gelu", [x], approximate="tanh")
    cubic = ctx.node("Mul", [ctx.node("Mul", [ctx.node("Mul", [x, x]), ctx.constant(_GELU_K)]), x])
    inner = ctx.node("Mul", [ctx.node("Add", [x, cubic]), ctx.constant(_GELU_C)])
    half = ctx.node("Mul", [x, ctx.constant(0.5)])
    return ctx.node("Mul", [half, ctx.node("Add", [ctx.node("Tanh", [inner]), ctx.constant(1.0)])])


def _onnx_hardtanh(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    low, high = (ctx.constant(float(attrs[k])) for k in ("min_val", "max_val"))
    return ctx.node("Clip", [args[0], low, high])


def _onnx_maxout(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """[..., k*D] as [..., k, D] (Reshape's 0 keeps a dim), then the max over the k pieces."""
    rank = len(ctx.operand(0).shape)
    pieces = ctx.node("Reshape", [args[0], ctx.ints([0] * (rank - 1) + [int(attrs["k"]), -1])])
    return reduce_over(ctx, "ReduceMax", pieces, [-2])


def _onnx_soft_nll(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """-1/N sum t * log_softmax(s)."""
    scores, targets = args
    logp = ctx.node("LogSoftmax", [scores], axis=1)
    total = reduce_over(ctx, "ReduceSum", ctx.node("Mul", [targets, logp]), None)
    return ctx.node("Div", [ctx.node("Neg", [total]), rows(ctx, ctx.operand(0).shape)])


def _onnx_svm_loss(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """1/N sum over the wrong classes of max(0, s_j - s_y + delta): the label's own column is
    masked out where the class number equals the label (OneHot would be one node, but ONNX
    Runtime has it for float32 values only)."""
    scores, labels = args
    classes = ctx.operand(0).shape[1]
    column = ctx.node("Unsqueeze", [labels, ctx.ints([1])])   # [N, 1]
    correct = ctx.node("GatherElements", [scores, column], axis=1)
    margins = ctx.node("Relu", [ctx.node("Add", [ctx.node("Sub", [scores, correct]),
                                                ctx.constant(float(attrs["delta"]))])])
    count = ctx.dim(classes) if isinstance(classes, str) else ctx.constant(classes, "int")
    every = ctx.node("Range", [ctx.constant(0, "int"), count, ctx.constant(1, "int")])   # 0, 1, ..., C - 1
    wrong = ctx.node("Cast", [ctx.node("Not", [ctx.node("Equal", [column, every])])], to=ctx.float_type)
    total = reduce_over(ctx, "ReduceSum", ctx.node("Mul", [margins, wrong]), None)
    return ctx.node("Div", [total, rows(ctx, ctx.operand(0).shape)])


def _onnx_sigmoid_ce(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """mean(softplus(x) - x t)."""
    x, t = args
    loss = ctx.node("Sub", [ctx.node("Softplus", [x]), ctx.node("Mul", [x, t])])
    return reduce_over(ctx, "ReduceMean", loss, None)


def _onnx_mse(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    d = ctx.node("Sub", list(args))
    return reduce_over(ctx, "ReduceMean", ctx.node("Mul", [d, d]), None)


def _onnx_penalty(op_type: str):
    """One reduction per tensor (ReduceSumSquare for L2, ReduceL1 for L1), summed."""
    def lower(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
        terms = [reduce_over(ctx, op_type, w, None) for w in args]
        return terms[0] if len(terms) == 1 else ctx.node("Sum", terms)
    return lower


def _onnx_elastic(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    l2 = _onnx_penalty("ReduceSumSquare")(ctx, args, attrs)
    l1 = _onnx_penalty("ReduceL1")(ctx, args, attrs)
    return ctx.node("Add", [ctx.node("Mul", [ctx.constant(float(attrs["beta"])), l2]), l1])


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


def _onnx_arange(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    n = attrs["n"]
    stop = ctx.dim(n) if isinstance(n, str) else ctx.constant(int(n), "int")
    return ctx.node("Range", [ctx.constant(0, "int"), stop, ctx.constant(1, "int")])


def _onnx_concat(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    return ctx.node("Concat", list(args), axis=int(attrs["axis"]))


# -- the entries

_NZ = dict(samples=UNARY, domain="nonzero")


def _vjp_leaky_relu(g: Value, out: Value, x: Value):
    alpha = float(out.attr("alpha"))
    # For alpha > 0 the output has the input's sign, so the input need not be kept for backward.
    mask = (out if alpha > 0 else x) > 0.0
    return g * (mask * (1.0 - alpha) + alpha)


# Primitive for its rule and speed: leaky_relu'(0) = alpha as PyTorch's (through maximum, a tie
# would give (1 + alpha) / 2), three in-place passes, and the rule reads only the output's sign.
elementwise("leaky_relu", 1, _leaky_chain, "({0} + ((T){alpha} - (T)1) * min({0}, (T)0))", attrs=(("alpha", 0.01),),
            infer=_checked_elementwise_rule("leaky_relu", lambda a: number_attr("leaky_relu", a, "alpha")),
            vjp=_vjp_leaky_relu,
            samples=(*UNARY, Sample((MATRIX,), {"alpha": 0.2})), domain="nonzero",
            doc="x where x > 0, else alpha * x (the lecture's fix for dying relus)",
            example="h = leaky_relu(x, alpha=0.1)",
            kink=Kink(),
            onnx=onnx_node("LeakyRelu", alpha=float_attr("alpha")))


def _vjp_elu(g: Value, out: Value, x: Value):
    # d/dx = 1 where x > 0, else alpha * exp(x) = elu(x) + alpha.
    return g * ((x > 0.0) + (x <= 0.0) * (out + float(out.attr("alpha"))))


# Primitive for stability: expm1 of min(x, 0) never overflows and keeps precision near 0;
# there is no expm1 op to compose it from.
op("elu", 1, _checked_elementwise_rule("elu", lambda a: number_attr("elu", a, "alpha")), _emit_elu,
   scalar="(max({0}, (T)0) + (T){alpha} * expm1(min({0}, (T)0)))", attrs=(("alpha", 1.0),), takes_out=True,
   in_place=True,
   helpers=(_ELU,), vjp=_vjp_elu, samples=(*UNARY, Sample((MATRIX,), {"alpha": 1.7})), domain="nonzero",
   doc="x where x > 0, else alpha * (exp(x) - 1)", example="h = elu(x, alpha=1.0)",
   kink=Kink(_elu_switch),
   onnx=onnx_node("Elu", alpha=float_attr("alpha")))
# Primitive for stability: logaddexp(0, x), where log(1 + exp(x)) overflows past x = 709.
elementwise("softplus", 1, (("logaddexp", "0", "0.0"),), "(max({0}, (T)0) + log1p(exp(-fabs({0}))))",  # logaddexp(x, 0)
            vjp=lambda g, out, x: g * x.sigmoid(), samples=UNARY,
            doc="log(1 + exp(x)), computed as max(x, 0) + log(1 + exp(-|x|)), which cannot overflow",
            example="h = softplus(x)",
            onnx=onnx_node("Softplus"))


def _vjp_gelu(g: Value, out: Value, x: Value):
    # gelu = x/2 (1 + t), t = tanh(c (x + k x^3)): d/dx = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 k x^2)
    x2 = x * x
    t = (x * (x2 * _GELU_K + 1.0) * _GELU_C).tanh()
    dinner = x2 * (3 * _GELU_K * _GELU_C) + _GELU_C
    sech2 = 1.0 - t * t
    return g * ((t + 1.0) * 0.5 + x * 0.5 * (sech2 * dinner))


# Primitive for speed: its parts are smooth, but written as a composite (the same formula in
# .nn, float32 [256, 1024], forward and backward) it measured no faster (3.64 vs 3.73 ms best,
# 4.27 vs 4.08 ms median of 7), while the chain runs in one buffer and fuses as one C expression.
elementwise("gelu", 1, (("multiply", "0", "0"), ("multiply", "$", repr(_GELU_K)), ("add", "$", "1.0"),
                        ("multiply", "$", "0"), ("multiply", "$", repr(_GELU_C)), ("tanh", "$"), ("add", "$", "1.0"),
                        ("multiply", "$", "0"), ("multiply", "$", "0.5")),
            vjp=_vjp_gelu, samples=UNARY,
            doc="the tanh approximation x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) of x * Phi(x)",
            example="h = gelu(x)",
            onnx=_onnx_gelu)

# Composites: built from the ops above by the elaborator, so autodiff differentiates their
# parts (JAX's silu and tinygrad's swish are written the same way). swish is silu's other name.
def _silu(x: Value) -> Value:
    return x * x.sigmoid()


composite("silu", 1, _silu, samples=UNARY, doc="x * sigmoid(x) (the same op as swish)", example="h = silu(x)")
composite("swish", 1, _silu, samples=UNARY, doc="x * sigmoid(x) (the same op as silu)", example="h = swish(x)")


def _check_range(attrs: dict) -> None:
    low = number_attr("hardtanh", attrs, "min_val")
    number_attr("hardtanh", attrs, "max_val", low=low)


def _clip_chain(attrs: dict) -> tuple[Step, ...]:
    return (("maximum", "0", literal(float(attrs["min_val"]))), ("minimum", "$", literal(float(attrs["max_val"]))))


def _vjp_hardtanh(g: Value, out: Value, x: Value):
    # 1 strictly inside the range, 0 at and beyond its ends (PyTorch's rule at the kinks).
    return g * ((x > float(out.attr("min_val"))) * (x < float(out.attr("max_val"))))


def _outside_range(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    """Crosses 0 at both ends of the range."""
    x = operands[0]
    return (x - float(attrs["min_val"])) * (x - float(attrs["max_val"]))


# Primitive for exactness: as a composition of relus (hi - relu(hi - lo - relu(x - lo))) it
# would shift x by the ends and round it (float32 hardtanh(1e-7) would be 1.19e-7); clipping
# is two in-place passes that return x itself inside the range.
elementwise("hardtanh", 1, _clip_chain, "min(max({0}, (T){min_val}), (T){max_val})",
            attrs=(("min_val", -1.0), ("max_val", 1.0)),
            infer=_checked_elementwise_rule("hardtanh", _check_range), vjp=_vjp_hardtanh,
            samples=(*UNARY, Sample((MATRIX,), {"min_val": -0.5, "max_val": 2.0})),
            doc="x clipped to [min_val, max_val]; the gradient is 1 strictly inside, 0 at and beyond the ends",
            example="h = hardtanh(x, min_val=-1.0, max_val=1.0)",
            kink=Kink(_outside_range, "is at an end of its range"),
            onnx=_onnx_hardtanh)


def _hardswish(x: Value) -> Value:
    # x * relu6(x + 3) / 6, relu6 = hardtanh(0, 6): its gradient is 0 at 0 and at 6, so
    # hardswish' is 0 at x = -3 and 1 at x = 3 (the outer pieces' slopes), PyTorch's rule.
    return x * (x + 3.0).node("hardtanh", min_val=0.0, max_val=6.0) / 6.0


composite("hardswish", 1, _hardswish, samples=UNARY,
          doc="x * relu6(x + 3) / 6: 0 below -3, x above 3, x (x + 3) / 6 between; the gradient is 0 at -3 "
              "and 1 at 3",
          example="h = hardswish(x)")


def _vjp_maxout(g: Value, out: Value, x: Value):
    # the max gate: the winning piece gets the gradient, tied pieces share it
    pieces = x.reshape(_pieces(x.shape, out.attr("k")))
    return route_to_maxima(g, out, pieces, len(pieces.shape) - 2, False).reshape(x.shape)


op("maxout", 1, _maxout_rule, _emit_maxout,
   attrs=(("k", None),), takes_out=True, vjp=_vjp_maxout, domain="separated",
   samples=(Sample(((3, 6),), {"k": 2}), Sample(((2, 3, 6),), {"k": 3}), Sample(((4,),), {"k": 4})),
   doc="the max over k linear pieces: x [..., k*D] is split into k consecutive pieces of D and "
       "out[..., d] = max_j x[..., j*D + d]; maxout(x @ W + b, k=2) with W = [W1 | W2] is the "
       "lecture's max(W1 x + b1, W2 x + b2)",
   example="h = maxout(x, k=2)",
   kink=Kink(_tie_among_pieces, "has a tie for the maximum"),
   onnx=_onnx_maxout)


def _vjp_softmax(g: Value, out: Value, x: Value):
    total = (g * out).sum(out.attr("axis"), keepdims=True)
    return out * (g - total)


op("softmax", 1, along_axis_rule("softmax"), template("_softmax({0}, {axis})"), vjp=_vjp_softmax,
   attrs=(("axis", -1),), helpers=(_SOFTMAX,), samples=(Sample((MATRIX,)), Sample(((2, 3, 4),), {"axis": 1})),
   doc="exp(x) / sum(exp(x), axis), computed after subtracting the max so it cannot overflow",
   example="p = softmax(x, axis=-1)",
   onnx=onnx_node("Softmax", axis=int_attr("axis")))


def _vjp_ce_probs(g: Value, out: Value, scores: Value, targets: Value):
    # L = -1/N sum_i sum_c t_ic logp_ic: dL/ds = (softmax(s) * rowsum(t) - t) / N, dL/dt = -logp / N.
    logp = scores.node("log_softmax", axis=1)
    gn = g.per_element(scores.shape, axis=0)
    rowsum = targets.sum(1, keepdims=True)
    return (logp.exp() * rowsum - targets) * gn, logp * -gn


op("softmax_cross_entropy_probs", 2, _ce_probs_rule, template("_soft_nll(_log_softmax({0}, 1), {1})"),
   targets={1: "distribution"}, vjp=_vjp_ce_probs, public=False, helpers=(LOG_SOFTMAX, _SOFT_NLL), samples=(Sample(((5, 4), (5, 4))),),
   doc="softmax_cross_entropy with float [N, C] probability targets t: -1/N sum_i sum_c t_ic log softmax(s_i)_c",
   loss=Loss("distribution", "softmax cross-entropy of the scores against the targets"),
   onnx=_onnx_soft_nll)
op("svm_loss", 2, labels_rule("svm_loss", numbers=("delta",)), template("_svm_loss({0}, {1}, {delta})"),
   vjp=lambda g, out, scores, labels: (scores.node("svm_loss_grad", labels, g, delta=out.attr("delta")), None),
   attrs=(("delta", 1.0),), helpers=(_SVM,), int_bounds=_class_bounds, domain="separated",
   # delta = 1.05: the separated draw puts scores on a 0.1 grid, so no margin sits on its kink.
   samples=(Sample(((5, 4), (5,)), {"delta": 1.05}, ints={1: 4}),),
   doc="the multiclass SVM (hinge) loss: 1/N sum_i sum_{j != y_i} max(0, s_ij - s_iy_i + delta)",
   example="loss = svm_loss(scores, y, delta=1.0)",
   kink=Kink(_svm_switch, "is at its margin"), loss=Loss("classes", "SVM loss of the scores", _chance_of_svm),
   onnx=_onnx_svm_loss)


def _vjp_svm_grad(u: Value, out: Value, scores: Value, labels: Value, g: Value):
    # Piecewise constant in the scores (their gradient is 0 off the kinks), linear in g.
    unit = scores.node("svm_loss_grad", labels, u.const(1.0), **out.attrs)
    return None, None, (u * unit).sum()


op("svm_loss_grad", 3, float_like_first, template("_svm_loss_grad({0}, {1}, {2}, {delta})"), public=False,
   attrs=(("delta", 1.0),), helpers=(_SVM,), vjp=_vjp_svm_grad, domain="separated",
   samples=(Sample(((5, 4), (5,), ()), {"delta": 1.05}, ints={1: 4}),))


def _vjp_sigmoid_ce(g: Value, out: Value, x: Value, t: Value):
    gn = g.per_element(x.shape)
    return (x.sigmoid() - t) * gn, x * -gn


op("sigmoid_cross_entropy", 2, _same_shape_loss_rule("sigmoid_cross_entropy", "targets"),
   template("_sigmoid_ce({0}, {1})"), vjp=_vjp_sigmoid_ce, helpers=(_SIGMOID_CE,), targets={1: "probability"},
   samples=(Sample(((5,), (5,))), Sample(((3, 4), (3, 4))), Sample(((3, 4), (4,)))),
   doc="binary cross-entropy on logits x with targets t in [0, 1]: "
       "mean(max(x, 0) - x t + log(1 + exp(-|x|))), finite for any x",
   example="loss = sigmoid_cross_entropy(x, t)",
   loss=Loss("binary", "sigmoid cross-entropy of the logits", _chance_of_logit),
   onnx=_onnx_sigmoid_ce)


def _vjp_mse(g: Value, out: Value, p: Value, t: Value):
    dp = (p - t) * g.per_element(p.shape, factor=2.0)
    return dp, -dp


op("mse", 2, _same_shape_loss_rule("mse", "targets"), template("_mse({0}, {1})"), vjp=_vjp_mse, helpers=(_MSE,),
   samples=(Sample(((5,), (5,))), Sample(((3, 4), (3, 4))), Sample(((3, 4), ()))),
   doc="mean squared error: mean((pred - target)^2) over every entry", example="loss = mse(x, t)",
   loss=Loss("regression", "mean squared error of the predictions"),
   onnx=_onnx_mse)

op("l2", -1, _penalty_rule("l2"), _emit_l2, vjp=lambda g, out, *ws: tuple(w * (g * 2.0) for w in ws),
   samples=(Sample((MATRIX,)), Sample((MATRIX, (4,)))),
   doc="the L2 penalty R(W) = sum W^2, summed over every tensor given (its gradient is 2 W)",
   example="reg = l2(W, W2)",
   onnx=_onnx_penalty("ReduceSumSquare"))
op("l1", -1, _penalty_rule("l1"), _emit_l1, vjp=lambda g, out, *ws: tuple(w.sign() * g for w in ws), domain="nonzero",
   samples=(Sample((MATRIX,)), Sample((MATRIX, (4,)))),
   doc="the L1 penalty R(W) = sum |W|, summed over every tensor given", example="reg = l1(W)",
   kink=Kink(_every_entry),
   onnx=_onnx_penalty("ReduceL1"))


def _vjp_elastic(g: Value, out: Value, *ws: Value):
    beta = float(out.attr("beta"))
    return tuple((w * (2.0 * beta) + w.sign()) * g for w in ws)


op("elastic_net", -1, _penalty_rule("elastic_net"), _emit_elastic, vjp=_vjp_elastic, attrs=(("beta", 1.0),),
   domain="nonzero", samples=(Sample((MATRIX,)), Sample((MATRIX, (4,)), {"beta": 0.3})),
   doc="the elastic net penalty R(W) = sum (beta W^2 + |W|), summed over every tensor given",
   example="reg = elastic_net(W, beta=0.5)",
   kink=Kink(_every_entry),
   onnx=_onnx_elastic)

op("slice", 1, _slice_rule, _emit_index, vjp=_vjp_index, attrs=(("key", ()),), public=False, view=True,
   samples=(Sample((MATRIX,), {"key": (":", "1:3")}), Sample(((2, 3, 4),), {"key": ("1", "0:2")}),
            Sample((MATRIX,), {"key": ("-1",)})),
   doc="x[...] with integers and fixed slices: a view", example="first = x[:, 0:3]",
   onnx=_onnx_slice)
op("index", -1, _index_rule, _emit_index, vjp=_vjp_index, attrs=(("key", ()),), public=False,
   samples=(Sample(((5, 4), (5,), (5,)), {"key": ("{1}", "{2}")}, ints={1: 5, 2: 4}),
            Sample(((5, 4), (3,)), {"key": (":", "{1}")}, ints={1: 4}),
            Sample(((2, 5, 4), (2, 3)), {"key": ("1", "{1}")}, ints={1: 5}),
            Sample(((5, 4), (6,)), {"key": ("{1}",)}, ints={1: 5})),
   doc="x[...] with integer tensors among the subscripts (numpy's advanced indexing): a gather",
   example="correct = scores[arange(N), y]",
   onnx=_onnx_index)


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
op("arange", 0, _arange_rule, _emit_arange, attrs=(("n", None),),
   doc="the integers 0, 1, ..., n - 1 (n may be a dim like N), to index with", example="rows = arange(N)",
   onnx=_onnx_arange)


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
