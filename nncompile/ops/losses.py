"""Losses and penalties: softmax_cross_entropy with probability targets, the multiclass
SVM loss (and its gradient op), sigmoid cross-entropy, mse, and the l2, l1 and elastic_net
penalties. Declared like :mod:`.basic`, one call per op, and each op's helper source, shape
rule, emitter, gradient rule, kink, chance-level loss and ONNX lowering sit just above its
entry.
"""
from __future__ import annotations

import math

import numpy as np

from .. import shapes
from ..ir import Node
from ..shapes import Dim, Shape, ShapeError
from .basic import LOG_SOFTMAX, MATRIX
from .value import Value
from .registry import (
    EmitContext,
    Kink,
    Loss,
    Sample,
    float_like_first,
    labels_rule,
    literal,
    need_float,
    number_attr,
    op,
    template,
)
from .onnx_helpers import OnnxContext, reduce_over, rows


# -- softmax_cross_entropy with probability targets

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


def _onnx_soft_nll(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """-1/N sum t * log_softmax(s)."""
    scores, targets = args
    logp = ctx.node("LogSoftmax", [scores], axis=1)
    total = reduce_over(ctx, "ReduceSum", ctx.node("Mul", [targets, logp]), None)
    return ctx.node("Div", [ctx.node("Neg", [total]), rows(ctx, ctx.operand(0).shape)])


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


# -- the multiclass SVM loss

def _class_bounds(ins: list[Node]) -> dict[int, Dim]:
    return {1: ins[0].shape[-1]}


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


def _svm_switch(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    """Each margin s_j - s_y + delta, which is 0 at its hinge (the label's own column has none)."""
    scores, labels = operands
    rows = np.arange(len(labels))
    margins = scores - scores[rows, labels][:, None] + float(attrs.get("delta", 1.0))
    margins[rows, labels] = 1.0
    return margins


def _chance_of_svm(classes: int | None, attrs: dict) -> tuple[float, str] | None:
    """Equal scores miss the margin of each of the C - 1 wrong classes by delta."""
    delta = float(attrs.get("delta", 1.0))
    return None if classes is None else ((classes - 1) * delta, f"({classes} - 1) * {delta:g}")


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


# -- sigmoid cross-entropy and mse: predictions and targets of one shape

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


def _chance_of_logit(classes: int | None, attrs: dict) -> tuple[float, str]:
    """A logit of 0 gives either outcome probability 1/2."""
    return math.log(2), "log 2"


def _onnx_sigmoid_ce(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    """mean(softplus(x) - x t)."""
    x, t = args
    loss = ctx.node("Sub", [ctx.node("Softplus", [x]), ctx.node("Mul", [x, t])])
    return reduce_over(ctx, "ReduceMean", loss, None)


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


_MSE = '''def _mse(pred, target):
    """mean((pred - target) ** 2), one subtraction and a dot product."""
    d = pred - target
    return np.vdot(d, d) * (1.0 / d.size)'''


def _onnx_mse(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    d = ctx.node("Sub", list(args))
    return reduce_over(ctx, "ReduceMean", ctx.node("Mul", [d, d]), None)


def _vjp_mse(g: Value, out: Value, p: Value, t: Value):
    dp = (p - t) * g.per_element(p.shape, factor=2.0)
    return dp, -dp


op("mse", 2, _same_shape_loss_rule("mse", "targets"), template("_mse({0}, {1})"), vjp=_vjp_mse, helpers=(_MSE,),
   samples=(Sample(((5,), (5,))), Sample(((3, 4), (3, 4))), Sample(((3, 4), ()))),
   doc="mean squared error: mean((pred - target)^2) over every entry", example="loss = mse(x, t)",
   loss=Loss("regression", "mean squared error of the predictions"),
   onnx=_onnx_mse)


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


def _every_entry(operands: list[np.ndarray], attrs: dict) -> np.ndarray:
    """A penalty's |w| bends wherever an entry of any of its tensors crosses 0."""
    return np.concatenate([np.ravel(x) for x in operands])


def _onnx_penalty(op_type: str):
    """One reduction per tensor (ReduceSumSquare for L2, ReduceL1 for L1), summed."""
    def lower(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
        terms = [reduce_over(ctx, op_type, w, None) for w in args]
        return terms[0] if len(terms) == 1 else ctx.node("Sum", terms)
    return lower


def _emit_l2(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return _sum_of([f"{ctx.xp}.vdot({a}, {a})" for a in args])


op("l2", -1, _penalty_rule("l2"), _emit_l2, vjp=lambda g, out, *ws: tuple(w * (g * 2.0) for w in ws),
   samples=(Sample((MATRIX,)), Sample((MATRIX, (4,)))),
   doc="the L2 penalty R(W) = sum W^2, summed over every tensor given (its gradient is 2 W)",
   example="reg = l2(W, W2)",
   onnx=_onnx_penalty("ReduceSumSquare"))


def _emit_l1(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return _sum_of([f"{ctx.xp}.absolute({a}).sum()" for a in args])


op("l1", -1, _penalty_rule("l1"), _emit_l1, vjp=lambda g, out, *ws: tuple(w.sign() * g for w in ws), domain="nonzero",
   samples=(Sample((MATRIX,)), Sample((MATRIX, (4,)))),
   doc="the L1 penalty R(W) = sum |W|, summed over every tensor given", example="reg = l1(W)",
   kink=Kink(_every_entry),
   onnx=_onnx_penalty("ReduceL1"))


def _emit_elastic(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    beta = float(attrs["beta"])
    return f"({literal(beta)} * {_emit_l2(ctx, args, attrs)} + {_emit_l1(ctx, args, attrs)})"


def _onnx_elastic(ctx: OnnxContext, args: list[str], attrs: dict) -> str:
    l2 = _onnx_penalty("ReduceSumSquare")(ctx, args, attrs)
    l1 = _onnx_penalty("ReduceL1")(ctx, args, attrs)
    return ctx.node("Add", [ctx.node("Mul", [ctx.constant(float(attrs["beta"])), l2]), l1])


def _vjp_elastic(g: Value, out: Value, *ws: Value):
    beta = float(out.attr("beta"))
    return tuple((w * (2.0 * beta) + w.sign()) * g for w in ws)


op("elastic_net", -1, _penalty_rule("elastic_net"), _emit_elastic, vjp=_vjp_elastic, attrs=(("beta", 1.0),),
   domain="nonzero", samples=(Sample((MATRIX,)), Sample((MATRIX, (4,)), {"beta": 0.3})),
   doc="the elastic net penalty R(W) = sum (beta W^2 + |W|), summed over every tensor given",
   example="reg = elastic_net(W, beta=0.5)",
   kink=Kink(_every_entry),
   onnx=_onnx_elastic)
