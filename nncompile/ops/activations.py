"""Activations beyond the core ops: leaky_relu, elu, softplus, gelu, silu/swish, hardtanh,
hardswish, maxout and softmax. Declared like :mod:`.basic`, one call per op, and each op's
helper source, shape rule, emitter, gradient rule, kink and ONNX lowering sit just above its
entry. An entry's comment says why the op is a primitive rather than a composite.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import shapes
from ..ir import Node
from ..shapes import Shape, ShapeError
from .basic import MATRIX, UNARY, route_to_maxima, tie_gap
from .value import Value
from .registry import (
    EmitContext,
    Kink,
    Sample,
    Step,
    along_axis_rule,
    composite,
    elementwise,
    elementwise_rule,
    literal,
    need_float,
    number_attr,
    op,
    reduce_expr,
    template,
)
from .onnx_helpers import OnnxContext, float_attr, int_attr, onnx_node, reduce_over


# -- shared by leaky_relu, elu and hardtanh: the elementwise rule, after checking the attributes

def _checked_elementwise_rule(opname: str, check: Callable[[dict], None]):
    base = elementwise_rule(opname)

    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        check(attrs)
        return base(ins, attrs)
    return infer


# -- leaky_relu

def _leaky_chain(attrs: dict) -> tuple[Step, ...]:
    # max(x, alpha * x) for alpha <= 1 (min beyond): two passes, no temporary, alpha * x rounded
    # once (x + (alpha - 1) * min(x, 0) cancels, 1e-5 off in float32 at alpha 0.001, and
    # makes -inf nan).
    alpha = float(attrs["alpha"])
    return (("multiply", "0", literal(alpha)), ("maximum" if alpha <= 1 else "minimum", "$", "0"))


def _leaky_c(attrs: dict) -> str:
    """The chain's C form (CUDA's max is fmax: nan * alpha is nan, so a nan still spreads)."""
    return f"{'max' if float(attrs['alpha']) <= 1 else 'min'}({{0}}, (T){{alpha}} * {{0}})"


def _vjp_leaky_relu(g: Value, out: Value, x: Value):
    alpha = float(out.attr("alpha"))
    # For alpha > 0 the output has the input's sign, so the input need not be kept for backward.
    mask = (out if alpha > 0 else x) > 0.0
    return g * (mask * (1.0 - alpha) + alpha)


# Primitive for its rule and speed: leaky_relu'(0) = alpha as PyTorch's (through maximum, a tie
# would give (1 + alpha) / 2), two passes, and the rule reads only the output's sign.
elementwise("leaky_relu", 1, _leaky_chain, _leaky_c, attrs=(("alpha", 0.01),),
            infer=_checked_elementwise_rule("leaky_relu", lambda a: number_attr("leaky_relu", a, "alpha")),
            vjp=_vjp_leaky_relu,
            samples=(*UNARY, Sample((MATRIX,), {"alpha": 0.2}), Sample((MATRIX,), {"alpha": 3.0})),   # max, min
            domain="nonzero", doc="x where x > 0, else alpha * x (the lecture's fix for dying relus)",
            example="h = leaky_relu(x, alpha=0.1)",
            kink=Kink(),
            onnx=onnx_node("LeakyRelu", alpha=float_attr("alpha")))


# -- elu, softplus

_ELU = '''def _elu(x, alpha, out=None):
    """x where x > 0, else alpha * (exp(x) - 1); exp only ever sees x <= 0, so it cannot overflow."""
    neg = np.expm1(np.minimum(x, 0.0))
    neg *= alpha
    return np.add(np.maximum(x, 0.0, out=out), neg, out=out)'''


def _emit_elu(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"_elu({args[0]}, {literal(float(attrs['alpha']))}" + (f", out={out})" if out else ")")


def _elu_switch(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    """elu bends at 0, except with alpha = 1, where its slope is continuous."""
    x = operands[0]
    return x if float(attrs.get("alpha", 1.0)) != 1.0 else np.ones_like(x)


def _vjp_elu(g: Value, out: Value, x: Value):
    # d/dx = 1 where x > 0, else alpha * exp(x) = elu(x) + alpha, written alpha - relu(-elu(x)) so
    # the masked term is finite at x = inf (0 * inf is nan; PyTorch's elu'(inf) is 1) and its own
    # derivative at 0 is relu's there, 0, as PyTorch's double backward has it.
    return g * ((x > 0.0) + (x <= 0.0) * (float(out.attr("alpha")) - (-out).node("relu")))


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


# -- gelu

_GELU_C, _GELU_K = 0.7978845608028654, 0.044715   # sqrt(2 / pi), and the cubic term's weight


def _onnx_gelu(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """Opset 20 has gelu's tanh approximation as one node; before it, the formula."""
    x = args[0]
    if ctx.opset >= 20:
        return ctx.node("Gelu", [x], approximate="tanh")
    cubic = ctx.node("Mul", [ctx.node("Mul", [ctx.node("Mul", [x, x]), ctx.constant(_GELU_K)]), x])
    inner = ctx.node("Mul", [ctx.node("Add", [x, cubic]), ctx.constant(_GELU_C)])
    half = ctx.node("Mul", [x, ctx.constant(0.5)])
    return ctx.node("Mul", [half, ctx.node("Add", [ctx.node("Tanh", [inner]), ctx.constant(1.0)])])


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


# -- hardtanh, hardswish

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


def _onnx_hardtanh(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    low, high = (ctx.constant(float(attrs[k])) for k in ("min_val", "max_val"))
    return ctx.node("Clip", [args[0], low, high])


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


# -- maxout

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


def _tie_among_pieces(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    x = operands[0]
    return tie_gap(x.reshape(*x.shape[:-1], int(attrs["k"]), -1), (-2,))


def _onnx_maxout(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """[..., k*D] as [..., k, D] (Reshape's 0 keeps a dim), then the max over the k pieces."""
    rank = len(ctx.operand(0).shape)
    pieces = ctx.node("Reshape", [args[0], ctx.ints([0] * (rank - 1) + [int(attrs["k"]), -1])])
    return reduce_over(ctx, "ReduceMax", pieces, [-2])


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


# -- softmax

_SOFTMAX = '''def _softmax(x, axis):
    """exp(x - max) / sum(exp(x - max)): shifting by the max first keeps exp from overflowing."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e'''


def _vjp_softmax(g: Value, out: Value, x: Value):
    total = (g * out).sum(out.attr("axis"), keepdims=True)
    return out * (g - total)


op("softmax", 1, along_axis_rule("softmax"), template("_softmax({0}, {axis})"), vjp=_vjp_softmax,
   attrs=(("axis", -1),), helpers=(_SOFTMAX,), samples=(Sample((MATRIX,)), Sample(((2, 3, 4),), {"axis": 1})),
   doc="exp(x) / sum(exp(x), axis), computed after subtracting the max so it cannot overflow",
   example="p = softmax(x, axis=-1)",
   onnx=onnx_node("Softmax", axis=int_attr("axis")))
