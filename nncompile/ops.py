"""The op registry: every primitive op, declared once.

An :class:`OpDef` carries everything the pipeline needs to know about an op: its name in
the language, its operands and attributes, its shape/dtype rule, its numpy emitter, its
scalar form for elementwise fusion, and its gradient rule (a VJP that builds graph nodes
from other registry ops). Adding an op means adding one ``op(...)`` call below; the test
suite generates a float64 finite-difference gradient check from each op's ``samples``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from . import shapes as S
from .ir import Graph, Node
from .shapes import Shape, ShapeError

Emit = Callable[..., str]            # (ctx, operand names, attrs, out=None) -> an expression
Step = tuple[str, ...]               # (ufunc, operand, ...): operands "0", "1", "$" (the result so far) or a literal
Vjp = Callable[[Graph, int, int], Sequence[int | None]]


class EmitContext:
    """What an emitter may ask of the backend: the array module, the dtype, concrete shapes."""

    xp = "np"
    dtype = "np.float32"
    rng = "rng"

    def shape(self, shape: Shape) -> str:  # pragma: no cover - overridden by codegen
        raise NotImplementedError

    def dim(self, symbol: str) -> str:  # pragma: no cover - overridden by codegen
        raise NotImplementedError


@dataclass(frozen=True)
class Sample:
    """Operand shapes (and attributes) for an op's generated gradient check.

    ``ints`` maps an operand index to the exclusive upper bound of its integer values.
    """

    shapes: tuple[Shape, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    ints: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OpDef:
    name: str
    arity: int
    infer: Callable[[list[Node], dict[str, Any]], tuple[Shape, str]]
    emit: Emit
    vjp: Vjp | None = None
    attrs: tuple[tuple[str, Any], ...] = ()   # (name, default) in positional order
    public: bool = True                       # callable from a .nn file
    chain: Callable[[dict[str, Any]], tuple[Step, ...]] | None = None  # elementwise: ufunc calls, in place
    takes_out: bool = False                   # emit(..., out=buffer) writes the result into a buffer
    in_place: bool = False                    # may write over an operand of its own shape (elementwise)
    scalar: str | None = None                 # C expression over {0}, {1}: fusable elementwise op
    domain: str = "real"                      # gradient-check inputs: real, positive, separated
    samples: tuple[Sample, ...] = ()
    int_bounds: Callable[[list[Node]], dict[int, int]] | None = None
    helpers: tuple[str, ...] = ()             # functions the emitted code calls, each defined once per module
    lower: Callable[..., int] | None = None   # mode-dependent ops: (elaborator, args, attrs, loc, scope) -> node
    doc: str = ""

    @property
    def elementwise(self) -> bool:
        return self.chain is not None


REGISTRY: dict[str, OpDef] = {}


def op(name: str, arity: int, infer, emit, **kw: Any) -> OpDef:
    if name in REGISTRY:
        raise ValueError(f"op {name} declared twice")
    REGISTRY[name] = OpDef(name, arity, infer, emit, **kw)
    return REGISTRY[name]


def elementwise(name: str, arity: int, steps: tuple[Step, ...] | Callable[[dict], tuple[Step, ...]],
                scalar: str, **kw: Any) -> OpDef:
    """An elementwise op, emitted as a chain of numpy ufunc calls that run in place."""
    chain = steps if callable(steps) else (lambda attrs, steps=steps: steps)
    kw.setdefault("infer", elementwise_rule(kw.pop("symbol", name)))

    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        expr = None
        for i, (fn, *operands) in enumerate(chain(attrs)):
            names = [expr if o == "$" else args[int(o)] if o.isdigit() else o for o in operands]
            last = i == len(chain(attrs)) - 1
            expr = f"{ctx.xp}.{fn}({', '.join(names + ([f'out={out}'] if out and last else []))})"
        return expr

    return op(name, arity, emit=emit, chain=chain, takes_out=True, in_place=True, scalar=scalar, **kw)


# ---- shape and dtype rules ------------------------------------------------------------

def _need_float(ins: list[Node], opname: str) -> None:
    for i, node in enumerate(ins):
        if node.dtype != "float":
            what = f"'{node.name}'" if node.name else f"operand {i + 1}"
            raise ShapeError(f"{opname} needs floats, but {what} is {node.dtype}{S.show(node.shape)}", i)


def elementwise_rule(opname: str):
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        _need_float(ins, opname)
        try:
            return S.broadcast(*(n.shape for n in ins)), "float"
        except ShapeError as exc:
            raise ShapeError(f"cannot apply {opname} to {' and '.join(S.show(n.shape) for n in ins)}: "
                             + exc.message.split(": ", 1)[-1], len(ins) - 1) from None
    return infer


def _same_as_first(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return ins[0].shape, ins[0].dtype


def _leaf(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return attrs["shape"], attrs["dtype"]


def _matmul_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    _need_float(ins, "'@'")
    return S.matmul(ins[0].shape, ins[1].shape), "float"


def _reduce_rule(opname: str):
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        _need_float(ins, opname)
        return S.reduce(ins[0].shape, attrs.get("axis"), attrs.get("keepdims", False)), "float"
    return infer


def _along_axis_rule(opname: str):
    """Shape-preserving ops that work along one axis (softmax, log_softmax)."""
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        _need_float(ins, opname)
        S.normalize_axes(attrs.get("axis", -1), len(ins[0].shape))
        return ins[0].shape, "float"
    return infer


def _reshape_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return S.reshape(ins[0].shape, tuple(attrs["shape"])), ins[0].dtype


def _transpose_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return S.transpose(ins[0].shape, attrs.get("axes")), ins[0].dtype


def _target_shape_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return tuple(attrs["shape"]), "float"


def _ce_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    scores, labels = ins[0], ins[1]
    _need_float([scores], "softmax_cross_entropy")
    if labels.dtype != "int":
        what = f"'{labels.name}'" if labels.name else "the labels"
        raise ShapeError(f"softmax_cross_entropy needs integer class labels, but {what} is "
                         f"{labels.dtype}{S.show(labels.shape)}; declare it as int[...]", 1)
    if len(scores.shape) != 2:
        raise ShapeError(f"softmax_cross_entropy needs scores of shape [N, C], not {S.show(scores.shape)}", 0)
    if labels.shape != scores.shape[:1]:
        raise ShapeError(f"softmax_cross_entropy: labels {S.show(labels.shape)} do not match "
                         f"scores {S.show(scores.shape)}; expected {S.show(scores.shape[:1])}", 1)
    return (), "float"


def _ce_grad_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return ins[0].shape, "float"


# ---- emitters -------------------------------------------------------------------------

def call(fn: str) -> Emit:
    """Emit ``np.fn(a, axis=1, out=buf)``; attributes are passed as keywords when set."""
    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        extra = [f"{k}={v!r}" for k, v in attrs.items() if v is not None and v is not False]
        return f"{ctx.xp}.{fn}({', '.join([*args, *extra, *([f'out={out}'] if out else [])])})"
    return emit


def template(text: str) -> Emit:
    """Emit an expression written with {0}, {1} for operands and {xp} for the array module."""
    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        return text.format(*args, xp=ctx.xp, dtype=ctx.dtype, **attrs)
    return emit


_COMPARE = {">": "greater", ">=": "greater_equal", "<": "less", "<=": "less_equal", "==": "equal"}


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


_REDUCTIONS = {"add": "sum", "maximum": "max"}


def _reduce(ctx: EmitContext, ufunc: str, x: str, axis, keepdims: bool = False, out: str | None = None) -> str:
    """``np.add.reduce(x, axis=1, out=buf)``: numpy's ufunc method skips np.sum's Python
    wrapper; CuPy gets its own ``cp.sum``."""
    extra = [f"axis={tuple(axis) if isinstance(axis, (list, tuple)) else axis!r}"]
    if keepdims:
        extra.append("keepdims=True")
    if out:
        extra.append(f"out={out}")
    fn = f"{ufunc}.reduce" if ctx.xp == "np" else _REDUCTIONS[ufunc]
    return f"{ctx.xp}.{fn}({', '.join([x, *extra])})"


def reduce_call(ufunc: str) -> Emit:
    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        return _reduce(ctx, ufunc, args[0], attrs.get("axis"), attrs.get("keepdims", False), out)
    return emit


def _emit_sum_to(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    dropped, kept = attrs["dropped"], attrs["kept"]
    if not kept:
        return _reduce(ctx, "add", args[0], dropped, out=out)
    if not dropped:
        return _reduce(ctx, "add", args[0], kept, keepdims=True, out=out)
    text = _reduce(ctx, "add", args[0], dropped + kept, keepdims=True)
    return f"{text}.reshape({ctx.shape(attrs['shape'])})"  # a fresh array: ``out`` is not needed


def _emit_broadcast(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    value = args[0]
    if attrs.get("axes"):
        value = f"{ctx.xp}.expand_dims({value}, {attrs['axes']!r})"
    return f"{ctx.xp}.broadcast_to({value}, {ctx.shape(attrs['shape'])})"


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
    a, b = G[n].args
    one = constant(G, 1.0)
    ga = G.add("mul", [g, G.add("mul", [b, G.add("pow", [a, G.add("sub", [b, one])])])])
    gb = G.add("mul", [g, G.add("mul", [n, G.add("log", [a])])])
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


def _vjp_maximum(G: Graph, n: int, g: int):
    a, b = G[n].args  # the max gate routes the gradient to the larger operand
    return (G.add("mul", [g, G.add("step", [a, b], {"cmp": ">="})]),
            G.add("mul", [g, G.add("step", [a, b], {"cmp": "<"})]))


def _vjp_minimum(G: Graph, n: int, g: int):
    a, b = G[n].args
    return (G.add("mul", [g, G.add("step", [a, b], {"cmp": "<="})]),
            G.add("mul", [g, G.add("step", [a, b], {"cmp": ">"})]))


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
    x = G[n].args[0]  # route the gradient to the maxima, as the max gate does
    shape, axis, keep = G[x].shape, G[n].attr("axis"), G[n].attr("keepdims")
    mask = G.add("step", [x, broadcast(G, n, shape, axis, keep)], {"cmp": "=="})
    return (G.add("mul", [mask, broadcast(G, g, shape, axis, keep)]),)


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


# ---- graph-building helpers shared by autodiff and the rules above --------------------

def constant(G: Graph, value: float, shape: Shape = ()) -> int:
    return G.add("const", (), {"value": float(value), "shape": shape, "dtype": "float"})


def _count(shape: Shape, axis) -> tuple[int, tuple[str, ...]]:
    """How many elements a reduction over ``axis`` averages: an int factor times symbols."""
    axes = S.normalize_axes(axis, len(shape))
    factor, symbols = 1, []
    for a in axes:
        if isinstance(shape[a], int):
            factor *= shape[a]
        else:
            symbols.append(shape[a])
    return factor, tuple(symbols)


def sum_to(G: Graph, x: int, target: Shape) -> int:
    """Undo broadcasting: sum a gradient back down to the shape of the operand it flowed from."""
    shape = G[x].shape
    if shape == tuple(target):
        return x
    dropped, kept = S.unbroadcast_axes(shape, target)
    return G.add("sum_to", [x], {"dropped": dropped, "kept": kept, "shape": tuple(target)})


def broadcast(G: Graph, g: int, shape: Shape, axis, keepdims: bool) -> int:
    """Spread a reduced gradient back over the reduced axes."""
    axes = () if keepdims or G[g].shape == () else S.normalize_axes(axis, len(shape))
    return G.add("broadcast_to", [g], {"shape": tuple(shape), "axes": axes})


# ---- the registry ---------------------------------------------------------------------

_M = (3, 4)
_B = (Sample((_M, _M)), Sample((_M, (4,))), Sample(((2, 1, 4), (3, 1))), Sample(((), _M)))

_LEAF = dict(public=False, infer=_leaf)
op("input", 0, emit=template("<input>"), **_LEAF)
op("param", 0, emit=template("<param>"), **_LEAF)
op("state", 0, emit=template("<state>"), **_LEAF)
op("const", 0, emit=template("<const>"), **_LEAF)
op("dim", 0, lambda ins, a: ((), "float"), _emit_dim, public=False, doc="a symbolic size as a number")

elementwise("add", 2, (("add", "0", "1"),), "{0} + {1}", symbol="'+'", vjp=_vjp_add, samples=_B)
elementwise("sub", 2, (("subtract", "0", "1"),), "{0} - {1}", symbol="'-'", vjp=_vjp_sub, samples=_B)
elementwise("mul", 2, (("multiply", "0", "1"),), "{0} * {1}", symbol="'*'", vjp=_vjp_mul, samples=_B)
elementwise("div", 2, (("divide", "0", "1"),), "{0} / {1}", symbol="'/'", vjp=_vjp_div, samples=_B,
            domain="positive")
elementwise("pow", 2, (("power", "0", "1"),), "pow({0}, {1})", symbol="'**'", vjp=_vjp_pow, samples=_B,
            domain="positive")
elementwise("maximum", 2, (("maximum", "0", "1"),), "max({0}, {1})", vjp=_vjp_maximum, samples=_B,
            domain="separated", doc="elementwise max of two tensors")
elementwise("minimum", 2, (("minimum", "0", "1"),), "min({0}, {1})", vjp=_vjp_minimum, samples=_B,
            domain="separated", doc="elementwise min of two tensors")

_U = (Sample((_M,)), Sample(((),)))
elementwise("neg", 1, (("negative", "0"),), "-{0}", symbol="'-'", vjp=_vjp_neg, samples=_U, public=False)
elementwise("exp", 1, (("exp", "0"),), "exp({0})", vjp=_vjp_exp, samples=_U)
elementwise("log", 1, (("log", "0"),), "log({0})", vjp=_vjp_log, samples=_U, domain="positive")
elementwise("sqrt", 1, (("sqrt", "0"),), "sqrt({0})", vjp=_vjp_sqrt, samples=_U, domain="positive")
elementwise("abs", 1, (("absolute", "0"),), "fabs({0})", vjp=_vjp_abs, samples=_U, domain="nonzero")
elementwise("tanh", 1, (("tanh", "0"),), "tanh({0})", vjp=_vjp_tanh, samples=_U)
elementwise("sigmoid", 1, (("multiply", "0", "0.5"), ("tanh", "$"), ("add", "$", "1.0"), ("multiply", "$", "0.5")),
            "(T)0.5 * (tanh((T)0.5 * {0}) + (T)1)", vjp=_vjp_sigmoid, samples=_U,
            doc="1 / (1 + exp(-x)), computed as (tanh(x / 2) + 1) / 2, which cannot overflow")
elementwise("relu", 1, (("maximum", "0", "0.0"),), "max({0}, (T)0)", vjp=_vjp_relu, samples=_U, domain="nonzero")

# Masks and signs carry no gradient: they exist to build other ops' gradients.
elementwise("step", 2, lambda attrs: ((_COMPARE[attrs["cmp"]], "0", "1"),), "(T)({0} {cmp} {1})",
            attrs=(("cmp", ">"),), public=False, doc="1 where the comparison holds, else 0")
elementwise("sign", 1, (("sign", "0"),), "copysign((T)1, {0})", public=False)

op("matmul", 2, _matmul_rule, call("matmul"), vjp=_vjp_matmul, takes_out=True,
   samples=(Sample(((3, 4), (4, 2))), Sample(((2, 3, 4), (4, 2))), Sample(((4,), (4, 2))),
            Sample(((3, 4), (4,))), Sample(((4,), (4,))), Sample(((2, 1, 3, 4), (2, 4, 2)))))

_R = (Sample((_M,)), Sample((_M,), {"axis": 1}), Sample(((2, 3, 4),), {"axis": 0, "keepdims": True}),
      Sample(((2, 3, 4),), {"axis": (0, 2)}))
_RA = (("axis", None), ("keepdims", False))
op("sum", 1, _reduce_rule("sum"), reduce_call("add"), vjp=_vjp_sum, attrs=_RA, samples=_R, takes_out=True)
op("mean", 1, _reduce_rule("mean"), call("mean"), vjp=_vjp_mean, attrs=_RA, samples=_R, takes_out=True)
op("max", 1, _reduce_rule("max"), reduce_call("maximum"), vjp=_vjp_max, attrs=_RA, samples=_R, takes_out=True)

op("reshape", 1, _reshape_rule, _emit_reshape, vjp=_vjp_reshape, attrs=(("shape", None),),
   samples=(Sample((_M,), {"shape": (2, 6)}), Sample(((2, 3, 4),), {"shape": (-1, 4)})))
op("transpose", 1, _transpose_rule, _emit_transpose, vjp=_vjp_transpose, attrs=(("axes", None),),
   samples=(Sample((_M,)), Sample(((2, 3, 4),), {"axes": (1, 2, 0)})))

op("sum_to", 1, _target_shape_rule, _emit_sum_to, public=False, takes_out=True)

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
   doc="inverted dropout: in train mode x * mask / (1 - p) with mask ~ Bernoulli(1 - p); in eval mode x")
op("dropout_mask", 0, _target_shape_rule, _emit_dropout_mask, public=False, helpers=(_DROPOUT_MASK,),
   doc="0 or 1 / (1 - p), drawn from the caller's random generator")

# A group of elementwise ops made one GPU kernel by passes.fuse_elementwise (CuPy backend).
op("fused", -1, lambda ins, attrs: (attrs["shape"], "float"), template("{kernel}"), public=False, takes_out=True,
   in_place=True,
   doc="several elementwise ops in one kernel: attrs hold the C expression over x0, x1, ...")
op("broadcast_to", 1, _target_shape_rule, _emit_broadcast, public=False)

op("softmax_cross_entropy", 2, _ce_rule, template("_nll(_log_softmax({0}, 1), {1})"), vjp=_vjp_ce,
   helpers=(_LOG_SOFTMAX, _NLL),
   int_bounds=lambda ins: {1: ins[0].shape[-1]} if isinstance(ins[0].shape[-1], int) else {},
   samples=(Sample(((5, 4), (5,)), ints={1: 4}),),
   doc="mean over the batch of -log softmax(scores)[label], computed stably")
op("softmax_cross_entropy_grad", 3, _ce_grad_rule, template("_softmax_nll_grad(_log_softmax({0}, 1), {1}, {2})"),
   public=False, helpers=(_LOG_SOFTMAX, _SOFTMAX_NLL_GRAD))

# What the passes turn softmax_cross_entropy and its gradient into, so the log-softmax is
# computed once in the forward pass and reused by the backward pass.
op("log_softmax", 1, _along_axis_rule("log_softmax"), template("_log_softmax({0}, {axis})"), vjp=_vjp_log_softmax,
   attrs=(("axis", -1),), helpers=(_LOG_SOFTMAX,), samples=(Sample((_M,)), Sample(((2, 3, 4),), {"axis": 1})),
   doc="x - log(sum(exp(x), axis)), computed stably")
op("nll", 2, _ce_rule, template("_nll({0}, {1})"), public=False, helpers=(_NLL,),
   doc="mean -logp[i, label_i]")
op("softmax_nll_grad", 3, _ce_grad_rule, template("_softmax_nll_grad({0}, {1}, {2})"), public=False,
   helpers=(_SOFTMAX_NLL_GRAD,))
