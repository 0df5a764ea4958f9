"""The ops of the backprop lecture: arithmetic and elementwise math, matrix products,
reductions, reshapes, the softmax cross-entropy loss, dropout, and the internal ops that
gradients and fusion are built from. Each ``op(...)`` or ``elementwise(...)`` call is the
whole op: shape rule, emitter, C scalar form, gradient rule and gradient-check samples.
"""
from __future__ import annotations

import math

import numpy as np

from .. import shapes
from ..ir import Node
from ..shapes import Shape, ShapeError, unbroadcast_axes
from .value import Value, count
from .registry import (
    Emit,
    EmitContext,
    Kink,
    Loss,
    Sample,
    along_axis_rule,
    attr_text,
    call,
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
from .rewrites import (
    add_zero,
    divide_by_one,
    double_negation,
    half_power_is_sqrt,
    mul_by_one,
    per_channel_sum,
    power_of_one,
    relu_mask_after_max_pool,
    scale_of_scale,
    share_log_softmax,
    share_log_softmax_in_gradient,
    square_is_mul,
    subtract_zero,
    sum_of_squares_is_l2,
    twice_added_scaled,
)
from .onnx_helpers import (
    OnnxContext,
    batch_normalization,
    first_of,
    gemm,
    int_attr,
    onnx_node,
    onnx_reduce,
    one_hot_of,
    rows,
)

LOG_SOFTMAX = '''def _log_softmax(x, axis):
    """x - log(sum(exp(x))): shifting by the max first keeps exp from overflowing."""
    if x.ndim == 2 and axis in (1, -1) and x.shape[1] < x.shape[0]:
        # Short rows (class scores): numpy runs one loop per row it reduces, so down the
        # columns of the transpose, a few loops over the whole batch, is about twice as fast.
        shifted = x.T.copy()
        shifted -= np.maximum.reduce(shifted, axis=0)
        lse = np.log(np.add.reduce(np.exp(shifted), axis=0))
        out = np.empty(x.shape, dtype=x.dtype)   # in C order, written through its transpose:
        np.subtract(shifted, lse, out=out.T)     # the operands' own layout, lse along each row
        return out
    shifted = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    shifted -= np.log(np.add.reduce(np.exp(shifted), axis=axis, keepdims=True))
    return shifted'''

_LABEL_ENTRIES = '''_ROW_STARTS = {}


def _label_entries(labels, classes):
    """The flat index of each row's label in a C-ordered [len(labels), classes] array: a third
    of 2-d indexing's cost. The row starts are made once per shape, as a workspace is."""
    starts = _ROW_STARTS.get((len(labels), classes))
    if starts is None:
        starts = _ROW_STARTS[len(labels), classes] = np.arange(0, len(labels) * classes, classes)
    return starts + labels'''

_NLL = '''def _nll(logp, labels):
    """Mean negative log-likelihood of the labels under log-probabilities ``logp``."""
    picked = logp.reshape(-1)[_label_entries(labels, logp.shape[1])]
    return picked.sum() * (-1.0 / len(labels))'''

_SOFTMAX_NLL_GRAD = '''def _softmax_nll_grad(logp, labels, g):
    """(softmax - onehot(labels)) * g / N from saved log-probabilities: one exp, no max or sum."""
    probs = np.ascontiguousarray(np.exp(logp))
    probs.reshape(-1)[_label_entries(labels, probs.shape[1])] -= 1
    probs *= g / len(labels)
    return probs'''


_SIGMOID = '''def _sigmoid(x, out=None):
    """1 / (1 + exp(-x)) as where(x >= 0, 1, e) / (1 + e) with e = exp(-|x|): exp cannot
    overflow, and no side cancels, so sigmoid(-50) keeps its relative precision. As e <= 1,
    the numerator is max(e, x >= 0), many times faster than np.where."""
    e = np.exp(-np.abs(x))
    top = np.maximum(e, x >= 0, out=out)
    e += 1.0
    return np.divide(top, e, out=out)'''


def _emit_sigmoid(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"_sigmoid({args[0]}" + (f", out={out})" if out else ")")


# ---- shape rules and emitters of the ops below ---------------------------------------

def _same_as_first(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return ins[0].shape, ins[0].dtype


def _leaf(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return attrs["shape"], attrs["dtype"]


def _matmul_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    need_float(ins, "'@'")
    return shapes.matmul(ins[0].shape, ins[1].shape), "float"


def _reduce_rule(opname: str):
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        need_float(ins, opname)
        return shapes.reduce(ins[0].shape, attrs.get("axis"), attrs.get("keepdims", False)), "float"
    return infer


def _reshape_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return shapes.reshape(ins[0].shape, tuple(attrs["shape"])), ins[0].dtype


def _transpose_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return shapes.transpose(ins[0].shape, attrs.get("axes")), ins[0].dtype


def _target_shape_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return tuple(attrs["shape"]), "float"


def _dispatch_ce(ins: list[Node]) -> str:
    """Integer labels [N] or float probability targets [N, C]: one name, two ops. Anything
    else (float [N] labels, say) goes to the label rule, whose error says to declare them int."""
    probs = len(ins) > 1 and ins[1].dtype == "float" and len(ins[1].shape) == 2
    return "softmax_cross_entropy_probs" if probs else "softmax_cross_entropy"


_COMPARE = {">": "greater", ">=": "greater_equal", "<": "less", "<=": "less_equal", "==": "equal", "!=": "not_equal"}


def _compare_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    """Floats or ints (argmax(s, axis=1) == y), broadcast like numpy: a float mask."""
    try:
        return shapes.broadcast(*(n.shape for n in ins)), "float"
    except ShapeError as exc:
        raise ShapeError(f"cannot compare {' and '.join(shapes.show(n.shape) for n in ins)} with "
                         f"'{attrs.get('cmp')}': " + exc.message.split(": ", 1)[-1], 1) from None


def _emit_step(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    """1 where the comparison holds, else 0, in the module's float dtype: a numpy comparison
    gives bools. Into a buffer they are copied (copyto returns None, so ``or`` gives the buffer):
    a comparison writing floats itself casts each chunk through a buffer, about twice as slow."""
    test = f"{ctx.xp}.{_COMPARE[attrs['cmp']]}({args[0]}, {args[1]})"
    return f"{ctx.xp}.copyto({out}, {test}) or {out}" if out else f"{test}.astype({ctx.dtype})"


def _emit_dim(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    factors = [ctx.dim(d) for d in attrs["symbols"]] + ([str(attrs["factor"])] if attrs["factor"] != 1 else [])
    return f"{ctx.dtype}({' * '.join(factors)})"


def _emit_reshape(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"{args[0]}.reshape({ctx.shape(attrs['shape'])})"


def _emit_transpose(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    axes = attrs.get("axes")
    if axes is None or tuple(axes) == tuple(reversed(range(len(axes)))):
        return f"{args[0]}.T"   # a view: matmul hands it to BLAS as a transpose flag, never a copy
    return f"{ctx.xp}.transpose({args[0]}, {tuple(axes)!r})"


def reduce_call(ufunc: str) -> Emit:
    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        return reduce_expr(ctx, ufunc, args[0], attrs.get("axis"), attrs.get("keepdims", False), out)
    return emit


def _emit_sum_to(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    dropped, kept = attrs["dropped"], attrs["kept"]
    if dropped == (0,) and not kept and len(attrs["shape"]) == 1:
        # A bias gradient, the column sums of [N, M]: as ones @ g it is one BLAS gemv,
        # about twice as fast as a strided add.reduce (the ones made once, in the workspace).
        into = f", out={out}" if out else ""
        return f"{ctx.xp}.matmul({ctx.filled(1.0, ctx.operand_shapes[0][:1])}, {args[0]}{into})"
    if not kept:
        return reduce_expr(ctx, "add", args[0], dropped, out=out)
    if not dropped:
        return reduce_expr(ctx, "add", args[0], kept, keepdims=True, out=out)
    into = f"{out}.reshape({ctx.shape((1,) * len(dropped) + tuple(attrs['shape']))})" if out else None
    text = reduce_expr(ctx, "add", args[0], dropped + kept, keepdims=True, out=into)
    return f"{text}.reshape({ctx.shape(attrs['shape'])})"


def _emit_broadcast(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    # A Python float would broadcast as float64 (the seed 1.0 of a float32 module's gradient).
    value = f"{ctx.dtype}({args[0]})" if 0 in ctx.literals else args[0]
    if attrs.get("axes"):
        value = f"{ctx.xp}.expand_dims({value}, {attrs['axes']!r})"
    return f"{ctx.xp}.broadcast_to({value}, {ctx.shape(attrs['shape'])})"


# ---- gradient rules -------------------------------------------------------------------
# A rule takes the upstream gradient g, the op's output and its operands, as values
# (:mod:`.value`), and returns one gradient per operand (None for one that carries none),
# shaped like the op's output or like the operand: autodiff sums away broadcast axes, so
# rules never need to. Rules of a line are written in their op's entry below.

def _gate(g: Value, winner: Value, loser: Value) -> tuple[Value, Value]:
    """The max gate: the gradient goes to the winning operand, and half to each on a tie
    (PyTorch's rule), so the two shares always sum to g."""
    share = g * winner.node("split", loser)
    return share, g - share


def route_to_maxima(g: Value, top: Value, x: Value, axis, keepdims: bool) -> Value:
    """The gradient of ``top = max(x, axis)``: g split evenly among the entries tied for the
    max (PyTorch's amax rule), so each reduced slice's gradient sums to its g."""
    mask = x.eq(top.broadcast(x.shape, axis, keepdims))
    ties = mask.sum(axis, keepdims)
    return mask * (g / ties).broadcast(x.shape, axis, keepdims)


# ---- what diagrams, the gradient check and training read of an op ----------------------

def _reduction_label(name: str):
    """``sum(axis=1, keepdims)``; a bare ``sum`` over every axis."""
    def label(attrs: dict) -> str:
        axis, keep = attrs.get("axis"), attrs.get("keepdims")
        args = ([] if axis is None else [f"axis={attr_text(axis)}"]) + (["keepdims"] if keep else [])
        return f"{name}({', '.join(args)})" if args else name
    return label


def _difference(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    """maximum and minimum switch operands where a - b crosses 0."""
    return np.subtract(operands[0], operands[1])


def tie_gap(x: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    """Each entry minus the largest other entry it is reduced with: 0 at a tie for the max."""
    axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
    x = np.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
    x = x.reshape(*x.shape[:x.ndim - len(axes)], -1)
    if x.shape[-1] < 2:
        return np.ones_like(x)
    top = np.sort(x, axis=-1)[..., -2:]
    return x - np.where(x == top[..., 1:], top[..., :1], top[..., 1:])


def _tie_in_reduction(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    axis = attrs.get("axis")
    return tie_gap(operands[0], None if axis is None else tuple(np.atleast_1d(axis).tolist()))


def _chance_of_softmax(classes: int | None, attrs: dict) -> tuple[float, str] | None:
    """Equal scores give every class probability 1/C."""
    return None if classes is None else (math.log(classes), f"-log(1/{classes})")


# ---- ONNX lowerings (nncompile.export; ops/onnx_helpers.py says what a lowering is) --------

_ONNX_COMPARE = {">": "Greater", ">=": "GreaterOrEqual", "<": "Less", "<=": "LessOrEqual", "==": "Equal"}


def _onnx_step(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    if attrs["cmp"] == "!=":
        test = ctx.node("Not", [ctx.node("Equal", list(args))])
    else:
        test = ctx.node(_ONNX_COMPARE[attrs["cmp"]], list(args))
    return ctx.node("Cast", [test], to=ctx.float_type)


def _onnx_split(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """1 where a > b, 0.5 where a == b: heaviside(a - b, 0.5) spelled with comparisons."""
    above = ctx.node("Cast", [ctx.node("Greater", list(args))], to=ctx.float_type)
    tied = ctx.node("Cast", [ctx.node("Equal", list(args))], to=ctx.float_type)
    return ctx.node("Add", [above, ctx.node("Mul", [tied, ctx.constant(0.5)])])


def _onnx_reshape(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    return ctx.node("Reshape", [args[0], ctx.shape(tuple(attrs["shape"]))])


def _onnx_transpose(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    axes, rank = attrs.get("axes"), len(ctx.operand(0).shape)
    perm = list(reversed(range(rank))) if axes is None else [a % rank for a in axes]
    return ctx.node("Transpose", [args[0]], perm=perm)


def _onnx_sum_to(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """Sum the leading axes away and the kept ones to 1, then take the target's shape."""
    axes = [*attrs["dropped"], *attrs["kept"]]
    if not axes:
        return args[0]
    summed = ctx.node("ReduceSum", [args[0], ctx.ints(axes)], keepdims=1)
    return ctx.node("Reshape", [summed, ctx.shape(tuple(attrs["shape"]))])


def _onnx_broadcast_to(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    x = args[0]
    if attrs.get("axes"):
        x = ctx.node("Unsqueeze", [x, ctx.ints(attrs["axes"])])
    return ctx.node("Expand", [x, ctx.shape(tuple(attrs["shape"]))])


def _mean_loss(op_type: str):
    """ONNX's own loss node, averaged over the batch as nncompile's is."""
    return onnx_node(op_type, reduction=lambda attrs: "mean")


# ---- the registry ---------------------------------------------------------------------

MATRIX = (3, 4)
_B = (Sample((MATRIX, MATRIX)), Sample((MATRIX, (4,))), Sample(((2, 1, 4), (3, 1))), Sample(((), MATRIX)))

_LEAF = dict(public=False, infer=_leaf)
op("input", 0, emit=template("<input>"), **_LEAF)
op("param", 0, emit=template("<param>"), **_LEAF)
op("state", 0, emit=template("<state>"), **_LEAF)
op("const", 0, emit=template("<const>"), **_LEAF)
op("dim", 0, lambda ins, a: ((), "float"), _emit_dim, public=False, doc="a symbolic size as a number",
   label="dim",
   onnx=lambda ctx, args, attrs: ctx.count(attrs["symbols"], attrs["factor"]))

elementwise("add", 2, (("add", "0", "1"),), symbol="'+'", vjp=lambda g, out, a, b: (g, g), samples=_B,
            doc="a + b, with numpy broadcasting (also written add(a, b))", example="z = x + t",
            rewrites=(add_zero, twice_added_scaled), label="+",
            onnx=first_of(batch_normalization, gemm, onnx_node("Add")))
elementwise("sub", 2, (("subtract", "0", "1"),), symbol="'-'", vjp=lambda g, out, a, b: (g, -g), samples=_B,
            doc="a - b, with numpy broadcasting", example="z = x - t",
            rewrites=(subtract_zero,), label="−",
            onnx=onnx_node("Sub"))
elementwise("mul", 2, (("multiply", "0", "1"),), symbol="'*'", vjp=lambda g, out, a, b: (g * b, g * a), samples=_B,
            doc="a * b, elementwise, with numpy broadcasting", example="z = x * t",
            rewrites=(mul_by_one, scale_of_scale, relu_mask_after_max_pool), label="×",
            onnx=onnx_node("Mul"))


def _vjp_div(g: Value, out: Value, a: Value, b: Value):
    ga = g / b
    return ga, -(ga * out)


elementwise("div", 2, (("divide", "0", "1"),), symbol="'/'", vjp=_vjp_div, samples=_B,
            domain="positive",
            doc="a / b, elementwise, with numpy broadcasting", example="z = x / t",
            rewrites=(divide_by_one,), label="÷",
            onnx=onnx_node("Div"))


def _vjp_pow(g: Value, out: Value, a: Value, b: Value):
    # PyTorch's limits where the formulas give 0 * inf: d/da = b a^(b-1) is 0 where b == 0
    # (x ** 0 at x = 0), and d/db = a^b log(a) is 0 where a == 0 and b >= 0. Each mask moves
    # the offending power or log to 1 exactly there, and is a constant for higher derivatives.
    zero = out.const(0.0)
    b_is_0 = b.eq(zero)
    ga = g * (b * a ** (b - 1.0 + b_is_0))
    a_is_0 = a.eq(zero) * (b >= zero)
    return ga, g * (out * (a + a_is_0).log())


elementwise("pow", 2, (("power", "0", "1"),), symbol="'**'", vjp=_vjp_pow, samples=_B,
            domain="positive",
            doc="a ** b, elementwise; x ** 2 compiles to x * x", example="z = x ** 2",
            rewrites=(power_of_one, square_is_mul, half_power_is_sqrt), label="**",
            onnx=onnx_node("Pow"))
elementwise("maximum", 2, (("maximum", "0", "1"),), vjp=lambda g, out, a, b: _gate(g, a, b), samples=_B,
            domain="separated", doc="elementwise max of two tensors; on a tie each gets half the gradient",
            example="z = maximum(x, 0)",
            label="max", kink=Kink(_difference, "has tied operands"),
            onnx=onnx_node("Max"))
elementwise("minimum", 2, (("minimum", "0", "1"),), vjp=lambda g, out, a, b: _gate(g, b, a), samples=_B,
            domain="separated", doc="elementwise min of two tensors; on a tie each gets half the gradient",
            example="z = minimum(x, t)",
            label="min", kink=Kink(_difference, "has tied operands"),
            onnx=onnx_node("Min"))

UNARY = (Sample((MATRIX,)), Sample(((),)))
elementwise("neg", 1, (("negative", "0"),), symbol="'-'", vjp=lambda g, out, x: -g, samples=UNARY, public=False,
            rewrites=(double_negation,), label="−",
            onnx=onnx_node("Neg"))
elementwise("exp", 1, (("exp", "0"),), vjp=lambda g, out, x: g * out, samples=UNARY,
            doc="e ** x", example="z = exp(x)",
            onnx=onnx_node("Exp"))
elementwise("log", 1, (("log", "0"),), vjp=lambda g, out, x: g / x, samples=UNARY, domain="positive",
            doc="the natural logarithm", example="z = log(x)",
            onnx=onnx_node("Log"))
elementwise("sqrt", 1, (("sqrt", "0"),), vjp=lambda g, out, x: g * 0.5 / out, samples=UNARY, domain="positive",
            doc="the square root", example="z = sqrt(x)",
            onnx=onnx_node("Sqrt"))
elementwise("abs", 1, (("absolute", "0"),), vjp=lambda g, out, x: g * x.sign(), samples=UNARY, domain="nonzero",
            doc="|x|", example="z = abs(x)",
            kink=Kink(),
            onnx=onnx_node("Abs"))
# Primitive for speed and precision: one ufunc; as 2 sigmoid(2x) - 1 it would cancel near 0.
elementwise("tanh", 1, (("tanh", "0"),), vjp=lambda g, out, x: g * (1.0 - out * out), samples=UNARY,
            doc="(exp(x) - exp(-x)) / (exp(x) + exp(-x)) = 2 sigmoid(2x) - 1", example="h = tanh(x)",
            saturates=(-0.97, 0.97),   # 1 - t^2 < 0.06 beyond: Karpathy's makemore part 3 measure
            onnx=onnx_node("Tanh"))
# Primitive for stability: the two-sided form keeps its relative precision where
# 1 / (1 + exp(-x)) would overflow or round to 0; its rule needs only the output.
op("sigmoid", 1, elementwise_rule("sigmoid"), _emit_sigmoid,
   scalar="(exp(min({0}, (T)0)) / ((T)1 + exp(-fabs({0}))))", takes_out=True, in_place=True,
   helpers=(_SIGMOID,), vjp=lambda g, out, x: g * (out * (1.0 - out)), samples=UNARY,
   doc="1 / (1 + exp(-x)), computed as exp(min(x, 0)) / (1 + exp(-|x|)), which cannot overflow and keeps "
       "its relative precision on both sides (sigmoid(-50) is exp(-50), not 0)",
   example="h = sigmoid(x)",
   saturates=(0.03, 0.97),   # s (1 - s) < 0.03 beyond, under 12% of its peak 0.25
   onnx=onnx_node("Sigmoid"))
# Primitive for its rule and speed: one in-place ufunc, relu'(0) = 0 (PyTorch's; maximum(x, 0)
# would give the tie's 1/2), and the mask comes from the output, so backward keeps no input.
elementwise("relu", 1, (("maximum", "0", "0.0"),), vjp=lambda g, out, x: g * (out > 0.0), samples=UNARY,
            domain="nonzero",
            doc="max(0, x)", example="h = relu(x)",
            kink=Kink(), dead_at=0.0,
            onnx=onnx_node("Relu"))

# Masks and signs carry no gradient: they exist to build other ops' gradients.
_MASK = dict(public=False, differentiable=False, infer=elementwise_rule("a mask"))
op("step", 2, emit=_emit_step, scalar="(T)({0} {cmp} {1})", attrs=(("cmp", ">"),), takes_out=True, in_place=True,
   samples=(*(Sample((MATRIX, MATRIX), {"cmp": cmp}) for cmp in _COMPARE), Sample((MATRIX, ()), {"cmp": ">="})),
   doc="1 where the comparison holds, else 0", label=lambda attrs: attrs["cmp"],
   kink=Kink(_difference, "is at its threshold", named=lambda attrs: f"comparison {attrs['cmp']}"),
   **{**_MASK, "infer": _compare_rule},
   onnx=_onnx_step)
op("split", 2, emit=template("{xp}.heaviside({xp}.subtract({0}, {1}), 0.5)"),
   scalar="((T)({0} > {1}) + (T)0.5 * (T)({0} == {1}))", samples=_B, **_MASK,
   doc="the max gate's share for a: 1 where a > b, 0.5 where a == b, 0 where a < b",
   onnx=_onnx_split)
elementwise("sign", 1, (("sign", "0"),), samples=UNARY, **_MASK,
            onnx=onnx_node("Sign"))  # 0 at 0


def _vjp_matmul(g: Value, out: Value, a: Value, b: Value):
    sa, sb = a.shape, b.shape
    if len(sa) == 1 and len(sb) == 1:           # a dot product
        return g * b, g * a
    if len(sa) == 1:                             # [K] @ [..., K, M]: treat a as [1, K]
        a2 = a.reshape((1, sa[0]))
        g2 = g.reshape((*g.shape[:-1], 1, g.shape[-1]))
        ga = g2 @ b.mT
        return ga.reshape((*ga.shape[:-2], sa[0])).sum_to(sa), a2.mT @ g2
    if len(sb) == 1:                             # [..., N, K] @ [K]: treat b as [K, 1]
        b2 = b.reshape((sb[0], 1))
        g2 = g.reshape((*g.shape, 1))
        gb = a.mT @ g2
        return g2 @ b2.mT, gb.reshape(gb.shape[:-1]).sum_to(sb)
    return g @ b.mT, a.mT @ g


op("matmul", 2, _matmul_rule, call("matmul"), vjp=_vjp_matmul, takes_out=True,
   c_result=3,   # numpy's result of two batch axes follows a transposed operand's layout
   samples=(Sample(((3, 4), (4, 2))), Sample(((2, 3, 4), (4, 2))), Sample(((4,), (4, 2))),
            Sample(((3, 4), (4,))), Sample(((4,), (4,))), Sample(((2, 1, 3, 4), (2, 4, 2)))),
   doc="a @ b: matrix product, numpy's rules for 1-D and batched operands", example="s = x @ W",
   label="@",
   onnx=onnx_node("MatMul"))

_R = (Sample((MATRIX,)), Sample((MATRIX,), {"axis": 1}), Sample(((2, 3, 4),), {"axis": 0, "keepdims": True}),
      Sample(((2, 3, 4),), {"axis": (0, 2)}))
_RA = (("axis", None), ("keepdims", False))
op("sum", 1, _reduce_rule("sum"), reduce_call("add"), attrs=_RA, samples=_R, takes_out=True,
   vjp=lambda g, out, x: g.broadcast(x.shape, out.attr("axis"), out.attr("keepdims")),
   doc="the sum over axis (an int, a list, or every axis by default); keepdims=true keeps them as 1",
   example="total = sum(x, axis=1)",
   label=_reduction_label("sum"), rewrites=(sum_of_squares_is_l2, per_channel_sum),
   onnx=onnx_reduce("ReduceSum"))
op("mean", 1, _reduce_rule("mean"), call("mean"), attrs=_RA, samples=_R, takes_out=True,
   vjp=lambda g, out, x: g.per_element(x.shape, out.attr("axis")).broadcast(x.shape, out.attr("axis"),
                                                                       out.attr("keepdims")),
   doc="the mean over axis (every axis by default)", example="m = mean(x, axis=0)",
   label=_reduction_label("mean"), rewrites=(per_channel_sum,),
   onnx=onnx_reduce("ReduceMean"))
op("max", 1, _reduce_rule("max"), reduce_call("maximum"), attrs=_RA, samples=_R, takes_out=True,
   vjp=lambda g, out, x: route_to_maxima(g, out, x, out.attr("axis"), out.attr("keepdims")), pairwise="maximum",
   doc="the max over axis (every axis by default); the gradient goes to the maxima, split evenly among ties",
   example="top = max(x, axis=1)",
   label=_reduction_label("max"), kink=Kink(_tie_in_reduction, "has a tie for the maximum"),
   onnx=onnx_reduce("ReduceMax"))
op("min", 1, _reduce_rule("min"), reduce_call("minimum"), attrs=_RA, samples=_R, takes_out=True,
   vjp=lambda g, out, x: route_to_maxima(g, out, x, out.attr("axis"), out.attr("keepdims")), pairwise="minimum",
   doc="the min over axis (every axis by default); the gradient goes to the minima, split evenly among ties",
   example="low = min(x, axis=1)",
   label=_reduction_label("min"),
   kink=Kink(lambda operands, attrs: _tie_in_reduction([-operands[0]], attrs), "has a tie for the minimum"),
   onnx=onnx_reduce("ReduceMin"))


def _variance(x: Value, axis=None, keepdims: bool = False, ddof: float = 0) -> Value:
    """mean(|x - mean(x)|^2) over axis, numpy's two passes; ddof > 0 divides by n - ddof instead of n."""
    ddof = number_attr("var", {"ddof": ddof}, "ddof", low=0)
    centred = x - x.node("mean", axis=axis, keepdims=True)
    var = (centred * centred).node("mean", axis=axis, keepdims=keepdims)
    if not ddof:
        return var
    total, symbols = count(x.shape, axis)
    if not symbols:
        if ddof >= total:
            raise ShapeError(f"var() over {total} entries needs ddof < {total}, not {ddof:g}")
        return var * (total / (total - ddof))
    n = Value(var.G, var.build("dim", (), {"symbols": symbols, "factor": total}), var.build)
    return var * (n / (n - ddof))   # n may be the batch N: nan where N <= ddof, as numpy


_VA = (*_RA, ("ddof", 0))
_V = (*_R, Sample((MATRIX,), {"axis": 0, "ddof": 1}))
composite("var", 1, _variance, attrs=_VA, samples=_V,
          doc="the variance over axis (every axis by default): mean((x - mean(x))^2), the population variance as "
              "numpy's default; ddof=1 divides by n - 1 instead (the sample variance, torch.var's default)",
          example="v = var(x, axis=0)")
# std's square root. Where the variance is 0 (every entry equal) std is kinked, as abs is at 0
# (it is a norm of x - mean(x)), and its gradient there is 0, PyTorch's rule; through a plain
# sqrt it would be 0 * inf = NaN, which would also wipe out every other term's gradient of x.
elementwise("std_root", 1, (("sqrt", "0"),), vjp=lambda g, out, x: g * 0.5 / (out + out.eq(0.0)),
            samples=UNARY, domain="positive", public=False, label="sqrt",
            kink=Kink(what="has zero variance (every entry equal)", named=lambda attrs: "std"),
            onnx=onnx_node("Sqrt"))
composite("std", 1, lambda x, **attrs: _variance(x, **attrs).node("std_root"), attrs=_VA, samples=_V,
          doc="sqrt(var(x)) over axis, population by default (ddof=0, as numpy); where every entry is equal "
              "its gradient is 0, as PyTorch's",
          example="s = std(x, axis=1, keepdims=true)")

op("reshape", 1, _reshape_rule, _emit_reshape, vjp=lambda g, out, x: g.reshape(x.shape), view=True,
   attrs=(("shape", None),),
   samples=(Sample((MATRIX,), {"shape": (2, 6)}), Sample(((2, 3, 4),), {"shape": (-1, 4)})),
   doc="the same entries in a new shape; one dim may be -1, dims like N are allowed",
   example="r = reshape(x, [N, 2, 3])",
   label=lambda attrs: f"reshape({attr_text(attrs.get('shape'))})",
   onnx=_onnx_reshape)


def _vjp_transpose(g: Value, out: Value, x: Value):
    axes, rank = out.attr("axes"), len(out.shape)
    axes = tuple(reversed(range(rank))) if axes is None else tuple(a % rank for a in axes)
    return g.transpose(sorted(range(rank), key=lambda i: axes[i]))   # the inverse permutation


op("transpose", 1, _transpose_rule, _emit_transpose, vjp=_vjp_transpose, view=True, reorders=True,
   attrs=(("axes", None),),
   samples=(Sample((MATRIX,)), Sample(((2, 3, 4),), {"axes": (1, 2, 0)})),
   doc="permutes the axes (reverses them by default)", example="xt = transpose(x)",
   label=lambda attrs: "transpose" if attrs.get("axes") is None else f"transpose({attr_text(attrs['axes'])})",
   onnx=_onnx_transpose)

op("sum_to", 1, _target_shape_rule, _emit_sum_to, public=False, takes_out=True,
   vjp=lambda g, out, x: g.node("broadcast_to", shape=x.shape, axes=()),
   attrs=(("dropped", ()), ("kept", ()), ("shape", ())),
   samples=tuple(Sample((shape,), {"dropped": d, "kept": k, "shape": target}) for shape, target in
                 (((3, 4), (4,)), ((2, 3, 4), (3, 1)), ((3, 4), (1, 4)))
                 for d, k in [unbroadcast_axes(shape, target)]),
   rewrites=(per_channel_sum,), onnx=_onnx_sum_to)

# Dropout: inverted dropout in train mode, the identity in eval mode (lowered by the elaborator).
_DROPOUT_MASK = '''def _dropout_mask(rng, shape, p):
    """Keep each unit with probability 1 - p and scale kept units by 1 / (1 - p) (inverted dropout)."""
    return np.multiply(rng.random(shape, dtype=DTYPE) >= p, 1 / (1 - p), dtype=DTYPE)'''


def _emit_dropout_mask(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"_dropout_mask({ctx.rng}, {ctx.shape(attrs['shape'])}, {attrs['p']!r})"


def _lower_dropout(el, args: list[int], attrs: dict, loc, scope) -> int:
    p = attrs["p"]
    if not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ShapeError(f"dropout rate p must be in [0, 1), not {p!r}")
    x = args[0]
    if el.mode == "eval" or p == 0:
        return x
    el.model.dropout_count += 1   # each dropout draws its own mask: the id keeps CSE from merging two
    mask = el.op("dropout_mask", [], {"shape": el.G[x].shape, "p": float(p), "id": el.model.dropout_count},
                 loc, scope)
    return el.op("mul", [x, mask], {}, loc, scope)


op("dropout", 1, _same_as_first, template("<dropout>"), attrs=(("p", 0.5),), lower=_lower_dropout, mode_dependent=True,
   doc="inverted dropout: in train mode x * mask / (1 - p) with mask ~ Bernoulli(1 - p); in eval mode x",
   example="h = dropout(x, p=0.5)")
op("dropout_mask", 0, _target_shape_rule, _emit_dropout_mask, public=False, helpers=(_DROPOUT_MASK,), random=True,
   drawn_in_user=lambda attrs: f"dropout(p={attrs['p']:g})",   # the mask and its ×, as the file wrote them
   doc="0 or 1 / (1 - p), drawn from the caller's random generator")

# A group of elementwise ops made one GPU kernel by passes.fuse_elementwise (CuPy backend).
def _emit_fused(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"{ctx.kernel(attrs['expr'], len(args))}({', '.join(args + ([out] if out else []))})"


op("fused", -1, lambda ins, attrs: (attrs["shape"], "float"), _emit_fused, public=False, takes_out=True,
   in_place=True,
   doc="several elementwise ops in one kernel: attrs hold the C expression over x0, x1, ...")


def _vjp_broadcast_to(g: Value, out: Value, x: Value):
    if out.attr("axes"):   # the axes expand_dims inserted: summed away, then numpy's own broadcasting undone
        g = g.sum(tuple(out.attr("axes")))
    return g.sum_to(x.shape)


op("broadcast_to", 1, _target_shape_rule, _emit_broadcast, public=False, vjp=_vjp_broadcast_to, view=True,
   attrs=(("shape", ()), ("axes", ())),
   samples=(Sample(((4,),), {"shape": (3, 4)}), Sample(((3,),), {"shape": (3, 4), "axes": (1,)}),
            Sample(((),), {"shape": (2, 3)})),
   onnx=_onnx_broadcast_to)

op("softmax_cross_entropy", 2, labels_rule("softmax_cross_entropy"), template("_nll(_log_softmax({0}, 1), {1})"),
   vjp=lambda g, out, scores, labels: (scores.node("softmax_cross_entropy_grad", labels, g), None),
   helpers=(LOG_SOFTMAX, _LABEL_ENTRIES, _NLL),
   int_bounds=lambda ins: {1: ins[0].shape[-1]},
   samples=(Sample(((5, 4), (5,)), ints={1: 4}),), dispatch=_dispatch_ce,
   doc="mean over the batch of -log softmax(s_i)[y_i] for int [N] labels y, computed stably; with float "
       "[N, C] probability targets t instead: -1/N sum_i sum_c t_ic log softmax(s_i)_c",
   example="loss = softmax_cross_entropy(scores, y)",
   rewrites=(share_log_softmax,),
   loss=Loss("classes", "softmax cross-entropy of the scores", _chance_of_softmax, assumed=True),
   onnx=_mean_loss("SoftmaxCrossEntropyLoss"))


def _onnx_softmax_grad(from_scores: bool):
    """(exp(logp) - onehot(y)) g / N, the log-probabilities taken of the scores or given."""
    def lower(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
        x, labels, g = args
        logp = ctx.node("LogSoftmax", [x], axis=1) if from_scores else x
        shape = ctx.operand(0).shape
        diff = ctx.node("Sub", [ctx.node("Exp", [logp]), one_hot_of(ctx, labels, int(shape[-1]))])
        return ctx.node("Div", [ctx.node("Mul", [diff, g]), rows(ctx, shape)])
    return lower


def _vjp_ce_grad(u: Value, out: Value, scores: Value, labels: Value, g: Value):
    # out = (softmax(s) - onehot(y)) g / N: linear in g, and softmax's VJP for s.
    unit = scores.node("softmax_cross_entropy_grad", labels, u.const(1.0))
    dg = (u * unit).sum()
    v = u * g.per_element(scores.shape, axis=0)
    p = scores.node("log_softmax", axis=1).exp()
    total = (v * p).sum(1, keepdims=True)
    return p * (v - total), None, dg


op("softmax_cross_entropy_grad", 3, float_like_first, template("_softmax_nll_grad(_log_softmax({0}, 1), {1}, {2})"),
   public=False, helpers=(LOG_SOFTMAX, _LABEL_ENTRIES, _SOFTMAX_NLL_GRAD), vjp=_vjp_ce_grad,
   samples=(Sample(((5, 4), (5,), ()), ints={1: 4}),),
   rewrites=(share_log_softmax_in_gradient,), onnx=_onnx_softmax_grad(from_scores=True))


def _vjp_log_softmax(g: Value, out: Value, x: Value):
    total = g.sum(out.attr("axis"), keepdims=True)
    return g - out.exp() * total


# What the passes turn softmax_cross_entropy and its gradient into, so the log-softmax is
# computed once in the forward pass and reused by the backward pass.
op("log_softmax", 1, along_axis_rule("log_softmax"), template("_log_softmax({0}, {axis})"), vjp=_vjp_log_softmax,
   attrs=(("axis", -1),), helpers=(LOG_SOFTMAX,), samples=(Sample((MATRIX,)), Sample(((2, 3, 4),), {"axis": 1})),
   doc="x - log(sum(exp(x), axis)), computed after subtracting the max so it cannot overflow",
   example="logp = log_softmax(x, axis=-1)",
   onnx=onnx_node("LogSoftmax", axis=int_attr("axis")))
op("nll", 2, labels_rule("nll"), template("_nll({0}, {1})"), public=False, helpers=(_LABEL_ENTRIES, _NLL),
   doc="mean -logp[i, label_i]",
   onnx=_mean_loss("NegativeLogLikelihoodLoss"))
op("softmax_nll_grad", 3, float_like_first, template("_softmax_nll_grad({0}, {1}, {2})"), public=False,
   helpers=(_LABEL_ENTRIES, _SOFTMAX_NLL_GRAD), onnx=_onnx_softmax_grad(from_scores=False))
