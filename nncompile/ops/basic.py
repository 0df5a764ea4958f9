"""The ops of the backprop lecture: arithmetic and elementwise math, matrix products,
reductions, reshapes, the softmax cross-entropy loss, dropout, and the internal ops that
gradients and fusion are built from. Each ``op(...)`` or ``elementwise(...)`` call is the
whole op: shape rule, emitter, C scalar form, gradient rule and gradient-check samples.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import Graph
from ..shapes import ShapeError, unbroadcast_axes
from .registry import (
    _COMPARE,
    EmitContext,
    Sample,
    _along_axis_rule,
    _ce_grad_rule,
    _count,
    _dispatch_ce,
    _emit_broadcast,
    _emit_dim,
    _emit_reshape,
    _emit_step,
    _emit_sum_to,
    _emit_transpose,
    _labels_rule,
    _leaf,
    _matmul_rule,
    _reduce_rule,
    _reshape_rule,
    _same_as_first,
    _target_shape_rule,
    _transpose_rule,
    broadcast,
    call,
    constant,
    elementwise,
    elementwise_rule,
    op,
    per_element,
    reduce_call,
    sum_to,
    template,
)
from .registry import Kink, Loss, attr_text
from .rewrites import (
    add_zero,
    divide_by_one,
    double_negation,
    half_power_is_sqrt,
    mul_by_one,
    power_of_one,
    share_log_softmax,
    share_log_softmax_in_gradient,
    square_is_mul,
    subtract_zero,
)

_LOG_SOFTMAX = '''def _log_softmax(x, axis):
    """x - log(sum(exp(x))): shifting by the max first keeps exp from overflowing."""
    shifted = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    shifted -= np.log(np.add.reduce(np.exp(shifted), axis=axis, keepdims=True))
    return shifted'''

_NLL = '''def _nll(logp, labels):
    """Mean negative log-likelihood of the labels under log-probabilities ``logp``."""
    return logp[np.arange(len(labels)), labels].sum() * (-1.0 / len(labels))'''

_SOFTMAX_NLL_GRAD = '''def _softmax_nll_grad(logp, labels, g):
    """(softmax - onehot(labels)) * g / N from saved log-probabilities: one exp, no max or sum."""
    probs = np.exp(logp)
    probs[np.arange(len(labels)), labels] -= 1
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


# ---- gradient rules -------------------------------------------------------------------
# Each returns one gradient per operand, shaped like the op's output (or like the operand);
# autodiff sums away broadcast axes, so rules never need to.

def _vjp_add(G: Graph, n: int, g: int):
    return g, g


def _vjp_sub(G: Graph, n: int, g: int):
    return g, G.add("neg", [g])


def _vjp_mul(G: Graph, n: int, g: int):
    a, b = G[n].args
    return G.add("mul", [g, b]), G.add("mul", [g, a])


def _vjp_div(G: Graph, n: int, g: int):
    a, b = G[n].args
    ga = G.add("div", [g, b])
    return ga, G.add("neg", [G.add("mul", [ga, n])])


def _vjp_pow(G: Graph, n: int, g: int):
    # PyTorch's limits where the formulas give 0 * inf: d/da = b a^(b-1) is 0 where b == 0
    # (x ** 0 at x = 0), and d/db = a^b log(a) is 0 where a == 0 and b >= 0. Each mask moves
    # the offending power or log to 1 exactly there, and is a constant for higher derivatives.
    a, b = G[n].args
    zero = constant(G, 0.0)
    b_is_0 = G.add("step", [b, zero], {"cmp": "=="})
    power = G.add("pow", [a, G.add("add", [G.add("sub", [b, constant(G, 1.0)]), b_is_0])])
    ga = G.add("mul", [g, G.add("mul", [b, power])])
    a_is_0 = G.add("mul", [G.add("step", [a, zero], {"cmp": "=="}), G.add("step", [b, zero], {"cmp": ">="})])
    gb = G.add("mul", [g, G.add("mul", [n, G.add("log", [G.add("add", [a, a_is_0])])])])
    return ga, gb


def _vjp_neg(G: Graph, n: int, g: int):
    return (G.add("neg", [g]),)


def _vjp_exp(G: Graph, n: int, g: int):
    return (G.add("mul", [g, n]),)


def _vjp_log(G: Graph, n: int, g: int):
    return (G.add("div", [g, G[n].args[0]]),)


def _vjp_sqrt(G: Graph, n: int, g: int):
    return (G.add("div", [G.add("mul", [g, constant(G, 0.5)]), n]),)


def _vjp_abs(G: Graph, n: int, g: int):
    return (G.add("mul", [g, G.add("sign", [G[n].args[0]])]),)


def _vjp_tanh(G: Graph, n: int, g: int):
    return (G.add("mul", [g, G.add("sub", [constant(G, 1.0), G.add("mul", [n, n])])]),)


def _vjp_sigmoid(G: Graph, n: int, g: int):
    return (G.add("mul", [g, G.add("mul", [n, G.add("sub", [constant(G, 1.0), n])])]),)


def _vjp_relu(G: Graph, n: int, g: int):
    # The mask comes from the output, so the pre-activation need not be kept for backward.
    return (G.add("mul", [g, G.add("step", [n, constant(G, 0.0)], {"cmp": ">"})]),)


def _gate(G: Graph, g: int, winner: int, loser: int) -> tuple[int, int]:
    """The max gate: the gradient goes to the winning operand, and half to each on a tie
    (PyTorch's rule), so the two shares always sum to g."""
    share = G.add("mul", [g, G.add("split", [winner, loser])])
    return share, G.add("sub", [g, share])


def _vjp_maximum(G: Graph, n: int, g: int):
    a, b = G[n].args
    return _gate(G, g, a, b)


def _vjp_minimum(G: Graph, n: int, g: int):
    a, b = G[n].args
    return _gate(G, g, b, a)


def _vjp_matmul(G: Graph, n: int, g: int):
    a, b = G[n].args
    sa, sb = G[a].shape, G[b].shape
    if len(sa) == 1 and len(sb) == 1:           # a dot product
        return G.add("mul", [g, b]), G.add("mul", [g, a])
    if len(sa) == 1:                             # [K] @ [..., K, M]: treat a as [1, K]
        a2 = G.add("reshape", [a], {"shape": (1, sa[0])})
        g2 = G.add("reshape", [g], {"shape": (*G[g].shape[:-1], 1, G[g].shape[-1])})
        ga = G.add("matmul", [g2, _swap(G, b)])
        ga = G.add("reshape", [ga], {"shape": (*G[ga].shape[:-2], sa[0])})
        return sum_to(G, ga, sa), G.add("matmul", [_swap(G, a2), g2])
    if len(sb) == 1:                             # [..., N, K] @ [K]: treat b as [K, 1]
        b2 = G.add("reshape", [b], {"shape": (sb[0], 1)})
        g2 = G.add("reshape", [g], {"shape": (*G[g].shape, 1)})
        gb = G.add("matmul", [_swap(G, a), g2])
        gb = G.add("reshape", [gb], {"shape": G[gb].shape[:-1]})
        return G.add("matmul", [g2, _swap(G, b2)]), sum_to(G, gb, sb)
    return G.add("matmul", [g, _swap(G, b)]), G.add("matmul", [_swap(G, a), g])


def _swap(G: Graph, x: int) -> int:
    rank = len(G[x].shape)
    return G.add("transpose", [x], {"axes": (*range(rank - 2), rank - 1, rank - 2)})


def _vjp_sum(G: Graph, n: int, g: int):
    x = G[n].args[0]
    return (broadcast(G, g, G[x].shape, G[n].attr("axis"), G[n].attr("keepdims")),)


def _vjp_mean(G: Graph, n: int, g: int):
    x = G[n].args[0]
    factor, symbols = _count(G[x].shape, G[n].attr("axis"))
    if symbols:
        scaled = G.add("div", [g, G.add("dim", (), {"symbols": symbols, "factor": factor})])
    else:
        scaled = G.add("mul", [g, constant(G, 1.0 / factor)])
    return (broadcast(G, scaled, G[x].shape, G[n].attr("axis"), G[n].attr("keepdims")),)


def _vjp_max(G: Graph, n: int, g: int):
    x = G[n].args[0]
    shape, axis, keep = G[x].shape, G[n].attr("axis"), G[n].attr("keepdims")
    return (route_to_maxima(G, x, n, g, shape, axis, keep),)


def route_to_maxima(G: Graph, x: int, top: int, g: int, shape, axis, keepdims: bool) -> int:
    """The gradient of ``top = max(x, axis)``: g split evenly among the entries tied for the
    max (PyTorch's amax rule), so each reduced slice's gradient sums to its g."""
    mask = G.add("step", [x, broadcast(G, top, shape, axis, keepdims)], {"cmp": "=="})
    ties = G.add("sum", [mask], {"axis": axis, "keepdims": keepdims})
    return G.add("mul", [mask, broadcast(G, G.add("div", [g, ties]), shape, axis, keepdims)])


def _vjp_reshape(G: Graph, n: int, g: int):
    return (G.add("reshape", [g], {"shape": G[G[n].args[0]].shape}),)


def _vjp_transpose(G: Graph, n: int, g: int):
    axes = G[n].attr("axes")
    rank = len(G[n].shape)
    axes = tuple(reversed(range(rank))) if axes is None else tuple(a % rank for a in axes)
    inverse = tuple(sorted(range(rank), key=lambda i: axes[i]))
    return (G.add("transpose", [g], {"axes": inverse}),)


def _vjp_log_softmax(G: Graph, n: int, g: int):
    axis = G[n].attr("axis")
    total = G.add("sum", [g], {"axis": axis, "keepdims": True})
    return (G.add("sub", [g, G.add("mul", [G.add("exp", [n]), total])]),)


def _vjp_ce(G: Graph, n: int, g: int):
    scores, labels = G[n].args
    return G.add("softmax_cross_entropy_grad", [scores, labels, g]), None


def _vjp_ce_grad(G: Graph, n: int, u: int):
    # out = (softmax(s) - onehot(y)) g / N: linear in g, and softmax's VJP for s.
    scores, labels, g = G[n].args
    unit = G.add("softmax_cross_entropy_grad", [scores, labels, constant(G, 1.0)])
    dg = G.add("sum", [G.add("mul", [u, unit])], {"axis": None, "keepdims": False})
    v = G.add("mul", [u, per_element(G, g, G[scores].shape, rows_only=True)])
    p = G.add("exp", [G.add("log_softmax", [scores], {"axis": 1})])
    total = G.add("sum", [G.add("mul", [v, p])], {"axis": 1, "keepdims": True})
    return G.add("mul", [p, G.add("sub", [v, total])]), None, dg


def _vjp_sum_to(G: Graph, n: int, g: int):
    return (G.add("broadcast_to", [g], {"shape": G[G[n].args[0]].shape, "axes": ()}),)


def _vjp_broadcast_to(G: Graph, n: int, g: int):
    axes = G[n].attr("axes")
    if axes:   # the axes expand_dims inserted: summed away, then numpy's own broadcasting undone
        g = G.add("sum", [g], {"axis": tuple(axes), "keepdims": False})
    return (sum_to(G, g, G[G[n].args[0]].shape),)


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


# ---- the registry ---------------------------------------------------------------------

_M = (3, 4)
_B = (Sample((_M, _M)), Sample((_M, (4,))), Sample(((2, 1, 4), (3, 1))), Sample(((), _M)))

_LEAF = dict(public=False, infer=_leaf)
op("input", 0, emit=template("<input>"), **_LEAF)
op("param", 0, emit=template("<param>"), **_LEAF)
op("state", 0, emit=template("<state>"), **_LEAF)
op("const", 0, emit=template("<const>"), **_LEAF)
op("dim", 0, lambda ins, a: ((), "float"), _emit_dim, public=False, doc="a symbolic size as a number",
   label="dim")

elementwise("add", 2, (("add", "0", "1"),), "{0} + {1}", symbol="'+'", vjp=_vjp_add, samples=_B,
            doc="a + b, with numpy broadcasting (also written add(a, b))", example="z = x + t",
            rewrites=(add_zero,), label="+")
elementwise("sub", 2, (("subtract", "0", "1"),), "{0} - {1}", symbol="'-'", vjp=_vjp_sub, samples=_B,
            doc="a - b, with numpy broadcasting", example="z = x - t",
            rewrites=(subtract_zero,), label="−")
elementwise("mul", 2, (("multiply", "0", "1"),), "{0} * {1}", symbol="'*'", vjp=_vjp_mul, samples=_B,
            doc="a * b, elementwise, with numpy broadcasting", example="z = x * t",
            rewrites=(mul_by_one,), label="×")
elementwise("div", 2, (("divide", "0", "1"),), "{0} / {1}", symbol="'/'", vjp=_vjp_div, samples=_B,
            domain="positive",
            doc="a / b, elementwise, with numpy broadcasting", example="z = x / t",
            rewrites=(divide_by_one,), label="÷")
elementwise("pow", 2, (("power", "0", "1"),), "pow({0}, {1})", symbol="'**'", vjp=_vjp_pow, samples=_B,
            domain="positive",
            doc="a ** b, elementwise; x ** 2 compiles to x * x", example="z = x ** 2",
            rewrites=(power_of_one, square_is_mul, half_power_is_sqrt), label="**")
elementwise("maximum", 2, (("maximum", "0", "1"),), "max({0}, {1})", vjp=_vjp_maximum, samples=_B,
            domain="separated", doc="elementwise max of two tensors; on a tie each gets half the gradient",
            example="z = maximum(x, 0)",
            label="max", kink=Kink(_difference, "has tied operands"))
elementwise("minimum", 2, (("minimum", "0", "1"),), "min({0}, {1})", vjp=_vjp_minimum, samples=_B,
            domain="separated", doc="elementwise min of two tensors; on a tie each gets half the gradient",
            example="z = minimum(x, t)",
            label="min", kink=Kink(_difference, "has tied operands"))

_U = (Sample((_M,)), Sample(((),)))
elementwise("neg", 1, (("negative", "0"),), "-{0}", symbol="'-'", vjp=_vjp_neg, samples=_U, public=False,
            rewrites=(double_negation,), label="−")
elementwise("exp", 1, (("exp", "0"),), "exp({0})", vjp=_vjp_exp, samples=_U,
            doc="e ** x", example="z = exp(x)")
elementwise("log", 1, (("log", "0"),), "log({0})", vjp=_vjp_log, samples=_U, domain="positive",
            doc="the natural logarithm", example="z = log(x)")
elementwise("sqrt", 1, (("sqrt", "0"),), "sqrt({0})", vjp=_vjp_sqrt, samples=_U, domain="positive",
            doc="the square root", example="z = sqrt(x)")
elementwise("abs", 1, (("absolute", "0"),), "fabs({0})", vjp=_vjp_abs, samples=_U, domain="nonzero",
            doc="|x|", example="z = abs(x)",
            kink=Kink())
elementwise("tanh", 1, (("tanh", "0"),), "tanh({0})", vjp=_vjp_tanh, samples=_U,
            doc="(exp(x) - exp(-x)) / (exp(x) + exp(-x)) = 2 sigmoid(2x) - 1", example="h = tanh(x)")
op("sigmoid", 1, elementwise_rule("sigmoid"), _emit_sigmoid,
   scalar="(exp(min({0}, (T)0)) / ((T)1 + exp(-fabs({0}))))", takes_out=True, in_place=True,
   helpers=(_SIGMOID,), vjp=_vjp_sigmoid, samples=_U,
   doc="1 / (1 + exp(-x)), computed as exp(min(x, 0)) / (1 + exp(-|x|)), which cannot overflow and keeps "
       "its relative precision on both sides (sigmoid(-50) is exp(-50), not 0)",
   example="h = sigmoid(x)")
elementwise("relu", 1, (("maximum", "0", "0.0"),), "max({0}, (T)0)", vjp=_vjp_relu, samples=_U, domain="nonzero",
            doc="max(0, x)", example="h = relu(x)",
            kink=Kink())

# Masks and signs carry no gradient: they exist to build other ops' gradients.
_MASK = dict(public=False, differentiable=False, infer=elementwise_rule("a mask"))
op("step", 2, emit=_emit_step, scalar="(T)({0} {cmp} {1})", attrs=(("cmp", ">"),), takes_out=True, in_place=True,
   samples=(*(Sample((_M, _M), {"cmp": cmp}) for cmp in _COMPARE), Sample((_M, ()), {"cmp": ">="})),
   doc="1 where the comparison holds, else 0", **_MASK)
op("split", 2, emit=template("{xp}.heaviside({xp}.subtract({0}, {1}), 0.5)"),
   scalar="((T)({0} > {1}) + (T)0.5 * (T)({0} == {1}))", samples=_B, **_MASK,
   doc="the max gate's share for a: 1 where a > b, 0.5 where a == b, 0 where a < b")
elementwise("sign", 1, (("sign", "0"),), "((T)({0} > 0) - (T)({0} < 0))", samples=_U, **_MASK)  # 0 at 0

op("matmul", 2, _matmul_rule, call("matmul"), vjp=_vjp_matmul, takes_out=True,
   samples=(Sample(((3, 4), (4, 2))), Sample(((2, 3, 4), (4, 2))), Sample(((4,), (4, 2))),
            Sample(((3, 4), (4,))), Sample(((4,), (4,))), Sample(((2, 1, 3, 4), (2, 4, 2)))),
   doc="a @ b: matrix product, numpy's rules for 1-D and batched operands", example="s = x @ W",
   label="@")

_R = (Sample((_M,)), Sample((_M,), {"axis": 1}), Sample(((2, 3, 4),), {"axis": 0, "keepdims": True}),
      Sample(((2, 3, 4),), {"axis": (0, 2)}))
_RA = (("axis", None), ("keepdims", False))
op("sum", 1, _reduce_rule("sum"), reduce_call("add"), vjp=_vjp_sum, attrs=_RA, samples=_R, takes_out=True,
   doc="the sum over axis (an int, a list, or every axis by default); keepdims=true keeps them as 1",
   example="total = sum(x, axis=1)",
   label=_reduction_label("sum"))
op("mean", 1, _reduce_rule("mean"), call("mean"), vjp=_vjp_mean, attrs=_RA, samples=_R, takes_out=True,
   doc="the mean over axis (every axis by default)", example="m = mean(x, axis=0)",
   label=_reduction_label("mean"))
op("max", 1, _reduce_rule("max"), reduce_call("maximum"), vjp=_vjp_max, attrs=_RA, samples=_R, takes_out=True,
   doc="the max over axis (every axis by default); the gradient goes to the maxima, split evenly among ties",
   example="top = max(x, axis=1)",
   label=_reduction_label("max"), kink=Kink(_tie_in_reduction, "has a tie for the maximum"))

op("reshape", 1, _reshape_rule, _emit_reshape, vjp=_vjp_reshape, view=True, attrs=(("shape", None),),
   samples=(Sample((_M,), {"shape": (2, 6)}), Sample(((2, 3, 4),), {"shape": (-1, 4)})),
   doc="the same entries in a new shape; one dim may be -1, dims like N are allowed",
   example="r = reshape(x, [N, 2, 3])",
   label=lambda attrs: f"reshape({attr_text(attrs.get('shape'))})")
op("transpose", 1, _transpose_rule, _emit_transpose, vjp=_vjp_transpose, view=True, attrs=(("axes", None),),
   samples=(Sample((_M,)), Sample(((2, 3, 4),), {"axes": (1, 2, 0)})),
   doc="permutes the axes (reverses them by default)", example="xt = transpose(x)",
   label=lambda attrs: "transpose" if attrs.get("axes") is None else f"transpose({attr_text(attrs['axes'])})")

op("sum_to", 1, _target_shape_rule, _emit_sum_to, public=False, takes_out=True, vjp=_vjp_sum_to,
   attrs=(("dropped", ()), ("kept", ()), ("shape", ())),
   samples=tuple(Sample((shape,), {"dropped": d, "kept": k, "shape": target}) for shape, target in
                 (((3, 4), (4,)), ((2, 3, 4), (3, 1)), ((3, 4), (1, 4)))
                 for d, k in [unbroadcast_axes(shape, target)]))

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


op("dropout", 1, _same_as_first, template("<dropout>"), attrs=(("p", 0.5),), lower=_lower_dropout,
   doc="inverted dropout: in train mode x * mask / (1 - p) with mask ~ Bernoulli(1 - p); in eval mode x",
   example="h = dropout(x, p=0.5)")
op("dropout_mask", 0, _target_shape_rule, _emit_dropout_mask, public=False, helpers=(_DROPOUT_MASK,), random=True,
   doc="0 or 1 / (1 - p), drawn from the caller's random generator")

# A group of elementwise ops made one GPU kernel by passes.fuse_elementwise (CuPy backend).
def _emit_fused(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"{ctx.kernel(attrs['expr'], len(args))}({', '.join(args + ([out] if out else []))})"


op("fused", -1, lambda ins, attrs: (attrs["shape"], "float"), _emit_fused, public=False, takes_out=True,
   in_place=True,
   doc="several elementwise ops in one kernel: attrs hold the C expression over x0, x1, ...")
op("broadcast_to", 1, _target_shape_rule, _emit_broadcast, public=False, vjp=_vjp_broadcast_to, view=True,
   attrs=(("shape", ()), ("axes", ())),
   samples=(Sample(((4,),), {"shape": (3, 4)}), Sample(((3,),), {"shape": (3, 4), "axes": (1,)}),
            Sample(((),), {"shape": (2, 3)})))

op("softmax_cross_entropy", 2, _labels_rule("softmax_cross_entropy"), template("_nll(_log_softmax({0}, 1), {1})"), vjp=_vjp_ce,
   helpers=(_LOG_SOFTMAX, _NLL),
   int_bounds=lambda ins: {1: ins[0].shape[-1]},
   samples=(Sample(((5, 4), (5,)), ints={1: 4}),), dispatch=_dispatch_ce,
   doc="mean over the batch of -log softmax(s_i)[y_i] for int [N] labels y, computed stably; with float "
       "[N, C] probability targets t instead: -1/N sum_i sum_c t_ic log softmax(s_i)_c",
   example="loss = softmax_cross_entropy(scores, y)",
   rewrites=(share_log_softmax,),
   loss=Loss("classes", "softmax cross-entropy of the scores", _chance_of_softmax, assumed=True))
op("softmax_cross_entropy_grad", 3, _ce_grad_rule, template("_softmax_nll_grad(_log_softmax({0}, 1), {1}, {2})"),
   public=False, helpers=(_LOG_SOFTMAX, _SOFTMAX_NLL_GRAD), vjp=_vjp_ce_grad,
   samples=(Sample(((5, 4), (5,), ()), ints={1: 4}),),
   rewrites=(share_log_softmax_in_gradient,))

# What the passes turn softmax_cross_entropy and its gradient into, so the log-softmax is
# computed once in the forward pass and reused by the backward pass.
op("log_softmax", 1, _along_axis_rule("log_softmax"), template("_log_softmax({0}, {axis})"), vjp=_vjp_log_softmax,
   attrs=(("axis", -1),), helpers=(_LOG_SOFTMAX,), samples=(Sample((_M,)), Sample(((2, 3, 4),), {"axis": 1})),
   doc="x - log(sum(exp(x), axis)), computed after subtracting the max so it cannot overflow",
   example="logp = log_softmax(x, axis=-1)")
op("nll", 2, _labels_rule("nll"), template("_nll({0}, {1})"), public=False, helpers=(_NLL,),
   doc="mean -logp[i, label_i]")
op("softmax_nll_grad", 3, _ce_grad_rule, template("_softmax_nll_grad({0}, {1}, {2})"), public=False,
   helpers=(_SOFTMAX_NLL_GRAD,))
