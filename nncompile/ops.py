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
from .shapes import Dim, Shape, ShapeError

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
    dispatch: Callable[[list[Node]], str] | None = None  # one name in the language, the op chosen by operand dtype
    doc: str = ""                             # what it computes: the formula, for docs/language.md
    example: str = ""                         # one line of .nn using it (elaborated by tests/test_docs.py)

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

    # A chain that reads an operand after its first step must not overwrite that operand.
    kw.setdefault("in_place", True)
    return op(name, arity, emit=emit, chain=chain, takes_out=True, scalar=scalar, **kw)


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


def _dispatch_ce(ins: list[Node]) -> str:
    """Integer labels [N] or float probability targets [N, C]: one name, two ops. Anything
    else (float [N] labels, say) goes to the label rule, whose error says to declare them int."""
    probs = len(ins) > 1 and ins[1].dtype == "float" and len(ins[1].shape) == 2
    return "softmax_cross_entropy_probs" if probs else "softmax_cross_entropy"


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
    if dropped == (0,) and not kept and len(attrs["shape"]) == 1:
        # A bias gradient, the column sums of [N, M]: as ones @ g it is one BLAS gemv,
        # about twice as fast as a strided add.reduce.
        into = f", out={out}" if out else ""
        return f"{ctx.xp}.matmul({ctx.xp}.ones(len({args[0]}), dtype={ctx.dtype}), {args[0]}{into})"
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

elementwise("add", 2, (("add", "0", "1"),), "{0} + {1}", symbol="'+'", vjp=_vjp_add, samples=_B,
            doc="a + b, with numpy broadcasting (also written add(a, b))", example="z = x + t")
elementwise("sub", 2, (("subtract", "0", "1"),), "{0} - {1}", symbol="'-'", vjp=_vjp_sub, samples=_B,
            doc="a - b, with numpy broadcasting", example="z = x - t")
elementwise("mul", 2, (("multiply", "0", "1"),), "{0} * {1}", symbol="'*'", vjp=_vjp_mul, samples=_B,
            doc="a * b, elementwise, with numpy broadcasting", example="z = x * t")
elementwise("div", 2, (("divide", "0", "1"),), "{0} / {1}", symbol="'/'", vjp=_vjp_div, samples=_B,
            domain="positive",
            doc="a / b, elementwise, with numpy broadcasting", example="z = x / t")
elementwise("pow", 2, (("power", "0", "1"),), "pow({0}, {1})", symbol="'**'", vjp=_vjp_pow, samples=_B,
            domain="positive",
            doc="a ** b, elementwise; x ** 2 compiles to x * x", example="z = x ** 2")
elementwise("maximum", 2, (("maximum", "0", "1"),), "max({0}, {1})", vjp=_vjp_maximum, samples=_B,
            domain="separated", doc="elementwise max of two tensors",
            example="z = maximum(x, 0)")
elementwise("minimum", 2, (("minimum", "0", "1"),), "min({0}, {1})", vjp=_vjp_minimum, samples=_B,
            domain="separated", doc="elementwise min of two tensors",
            example="z = minimum(x, t)")

_U = (Sample((_M,)), Sample(((),)))
elementwise("neg", 1, (("negative", "0"),), "-{0}", symbol="'-'", vjp=_vjp_neg, samples=_U, public=False)
elementwise("exp", 1, (("exp", "0"),), "exp({0})", vjp=_vjp_exp, samples=_U,
            doc="e ** x", example="z = exp(x)")
elementwise("log", 1, (("log", "0"),), "log({0})", vjp=_vjp_log, samples=_U, domain="positive",
            doc="the natural logarithm", example="z = log(x)")
elementwise("sqrt", 1, (("sqrt", "0"),), "sqrt({0})", vjp=_vjp_sqrt, samples=_U, domain="positive",
            doc="the square root", example="z = sqrt(x)")
elementwise("abs", 1, (("absolute", "0"),), "fabs({0})", vjp=_vjp_abs, samples=_U, domain="nonzero",
            doc="|x|", example="z = abs(x)")
elementwise("tanh", 1, (("tanh", "0"),), "tanh({0})", vjp=_vjp_tanh, samples=_U,
            doc="(exp(x) - exp(-x)) / (exp(x) + exp(-x)) = 2 sigmoid(2x) - 1", example="h = tanh(x)")
elementwise("sigmoid", 1, (("multiply", "0", "0.5"), ("tanh", "$"), ("add", "$", "1.0"), ("multiply", "$", "0.5")),
            "(T)0.5 * (tanh((T)0.5 * {0}) + (T)1)", vjp=_vjp_sigmoid, samples=_U,
            doc="1 / (1 + exp(-x)), computed as (tanh(x / 2) + 1) / 2, which cannot overflow",
            example="h = sigmoid(x)")
elementwise("relu", 1, (("maximum", "0", "0.0"),), "max({0}, (T)0)", vjp=_vjp_relu, samples=_U, domain="nonzero",
            doc="max(0, x)", example="h = relu(x)")

# Masks and signs carry no gradient: they exist to build other ops' gradients.
elementwise("step", 2, lambda attrs: ((_COMPARE[attrs["cmp"]], "0", "1"),), "(T)({0} {cmp} {1})",
            attrs=(("cmp", ">"),), public=False, doc="1 where the comparison holds, else 0")
elementwise("sign", 1, (("sign", "0"),), "copysign((T)1, {0})", public=False)

op("matmul", 2, _matmul_rule, call("matmul"), vjp=_vjp_matmul, takes_out=True,
   samples=(Sample(((3, 4), (4, 2))), Sample(((2, 3, 4), (4, 2))), Sample(((4,), (4, 2))),
            Sample(((3, 4), (4,))), Sample(((4,), (4,))), Sample(((2, 1, 3, 4), (2, 4, 2)))),
   doc="a @ b: matrix product, numpy's rules for 1-D and batched operands", example="s = x @ W")

_R = (Sample((_M,)), Sample((_M,), {"axis": 1}), Sample(((2, 3, 4),), {"axis": 0, "keepdims": True}),
      Sample(((2, 3, 4),), {"axis": (0, 2)}))
_RA = (("axis", None), ("keepdims", False))
op("sum", 1, _reduce_rule("sum"), reduce_call("add"), vjp=_vjp_sum, attrs=_RA, samples=_R, takes_out=True,
   doc="the sum over axis (an int, a list, or every axis by default); keepdims=true keeps them as 1",
   example="total = sum(x, axis=1)")
op("mean", 1, _reduce_rule("mean"), call("mean"), vjp=_vjp_mean, attrs=_RA, samples=_R, takes_out=True,
   doc="the mean over axis (every axis by default)", example="m = mean(x, axis=0)")
op("max", 1, _reduce_rule("max"), reduce_call("maximum"), vjp=_vjp_max, attrs=_RA, samples=_R, takes_out=True,
   doc="the max over axis (every axis by default); the gradient goes to the maxima", example="top = max(x, axis=1)")

op("reshape", 1, _reshape_rule, _emit_reshape, vjp=_vjp_reshape, attrs=(("shape", None),),
   samples=(Sample((_M,), {"shape": (2, 6)}), Sample(((2, 3, 4),), {"shape": (-1, 4)})),
   doc="the same entries in a new shape; one dim may be -1, dims like N are allowed",
   example="r = reshape(x, [N, 2, 3])")
op("transpose", 1, _transpose_rule, _emit_transpose, vjp=_vjp_transpose, attrs=(("axes", None),),
   samples=(Sample((_M,)), Sample(((2, 3, 4),), {"axes": (1, 2, 0)})),
   doc="permutes the axes (reverses them by default)", example="xt = transpose(x)")

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
   doc="inverted dropout: in train mode x * mask / (1 - p) with mask ~ Bernoulli(1 - p); in eval mode x",
   example="h = dropout(x, p=0.5)")
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
   samples=(Sample(((5, 4), (5,)), ints={1: 4}),), dispatch=_dispatch_ce,
   doc="mean over the batch of -log softmax(s_i)[y_i] for int [N] labels y, computed stably; with float "
       "[N, C] probability targets t instead: -1/N sum_i sum_c t_ic log softmax(s_i)_c",
   example="loss = softmax_cross_entropy(scores, y)")
op("softmax_cross_entropy_grad", 3, _ce_grad_rule, template("_softmax_nll_grad(_log_softmax({0}, 1), {1}, {2})"),
   public=False, helpers=(_LOG_SOFTMAX, _SOFTMAX_NLL_GRAD))

# What the passes turn softmax_cross_entropy and its gradient into, so the log-softmax is
# computed once in the forward pass and reused by the backward pass.
op("log_softmax", 1, _along_axis_rule("log_softmax"), template("_log_softmax({0}, {axis})"), vjp=_vjp_log_softmax,
   attrs=(("axis", -1),), helpers=(_LOG_SOFTMAX,), samples=(Sample((_M,)), Sample(((2, 3, 4),), {"axis": 1})),
   doc="x - log(sum(exp(x), axis)), computed after subtracting the max so it cannot overflow",
   example="logp = log_softmax(x, axis=-1)")
op("nll", 2, _ce_rule, template("_nll({0}, {1})"), public=False, helpers=(_NLL,),
   doc="mean -logp[i, label_i]")
op("softmax_nll_grad", 3, _ce_grad_rule, template("_softmax_nll_grad({0}, {1}, {2})"), public=False,
   helpers=(_SOFTMAX_NLL_GRAD,))


# ---- the lecture's toolkit: activations, losses, penalties, indexing ---------------------
# Each entry is the whole op: shape rule, numpy emitter, C scalar form where it is
# elementwise (so the GPU backend fuses it), a VJP built from other registry ops, samples for
# the generated gradient check, the formula, and a one-line example for docs/language.md.

def _number_attr(opname: str, attrs: dict, name: str, low: float | None = None) -> float:
    value = attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError(f"{opname}() needs a number for {name}, not {value!r}")
    if low is not None and value < low:
        raise ShapeError(f"{opname}() needs {name} >= {low:g}, not {value!r}")
    return float(value)


def _checked_elementwise_rule(opname: str, check: Callable[[dict], None]):
    base = elementwise_rule(opname)

    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        check(attrs)
        return base(ins, attrs)
    return infer


def _per_element(G: Graph, g: int, shape: Shape, factor: float = 1.0, rows_only: bool = False) -> int:
    """``g * factor / count``: the gradient of a mean over ``shape`` (over its first dim when
    ``rows_only``), where the count may be a symbolic batch size."""
    count, symbols = _count(shape[:1] if rows_only else shape, None)
    if symbols:
        g = G.add("div", [g, G.add("dim", (), {"symbols": symbols, "factor": count})])
        return g if factor == 1.0 else G.add("mul", [g, constant(G, factor)])
    return G.add("mul", [g, constant(G, factor / count)])


# -- activations

def _leaky_chain(attrs: dict) -> tuple[Step, ...]:
    # x + (alpha - 1) * min(x, 0): three passes, no temporary.
    return (("minimum", "0", "0.0"), ("multiply", "$", repr(float(attrs["alpha"]) - 1.0)), ("add", "0", "$"))


def _vjp_leaky_relu(G: Graph, n: int, g: int):
    alpha = float(G[n].attr("alpha"))
    # For alpha > 0 the output has the input's sign, so the input need not be kept for backward.
    source = n if alpha > 0 else G[n].args[0]
    mask = G.add("step", [source, constant(G, 0.0)], {"cmp": ">"})
    slope = G.add("add", [G.add("mul", [mask, constant(G, 1.0 - alpha)]), constant(G, alpha)])
    return (G.add("mul", [g, slope]),)


_ELU = '''def _elu(x, alpha, out=None):
    """x where x > 0, else alpha * (exp(x) - 1); exp only ever sees x <= 0, so it cannot overflow."""
    neg = np.expm1(np.minimum(x, 0.0))
    neg *= alpha
    return np.add(np.maximum(x, 0.0, out=out), neg, out=out)'''


def _emit_elu(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    return f"_elu({args[0]}, {float(attrs['alpha'])!r}" + (f", out={out})" if out else ")")


def _vjp_elu(G: Graph, n: int, g: int):
    # d/dx = 1 where x > 0, else alpha * exp(x) = elu(x) + alpha.
    x, alpha = G[n].args[0], float(G[n].attr("alpha"))
    pos = G.add("step", [x, constant(G, 0.0)], {"cmp": ">"})
    neg = G.add("step", [x, constant(G, 0.0)], {"cmp": "<="})
    slope = G.add("add", [pos, G.add("mul", [neg, G.add("add", [n, constant(G, alpha)])])])
    return (G.add("mul", [g, slope]),)


def _vjp_softplus(G: Graph, n: int, g: int):
    return (G.add("mul", [g, G.add("sigmoid", [G[n].args[0]])]),)


_GELU_C, _GELU_K = 0.7978845608028654, 0.044715   # sqrt(2 / pi), and the cubic term's weight


def _vjp_gelu(G: Graph, n: int, g: int):
    # gelu = x/2 (1 + t), t = tanh(c (x + k x^3)): d/dx = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 k x^2)
    x = G[n].args[0]
    x2 = G.add("mul", [x, x])
    inner = G.add("mul", [x, G.add("add", [G.add("mul", [x2, constant(G, _GELU_K)]), constant(G, 1.0)])])
    t = G.add("tanh", [G.add("mul", [inner, constant(G, _GELU_C)])])
    dinner = G.add("add", [G.add("mul", [x2, constant(G, 3 * _GELU_K * _GELU_C)]), constant(G, _GELU_C)])
    sech2 = G.add("sub", [constant(G, 1.0), G.add("mul", [t, t])])
    slope = G.add("add", [G.add("mul", [G.add("add", [t, constant(G, 1.0)]), constant(G, 0.5)]),
                          G.add("mul", [G.add("mul", [x, constant(G, 0.5)]), G.add("mul", [sech2, dinner])])])
    return (G.add("mul", [g, slope]),)


def _maxout_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    _need_float(ins, "maxout")
    k, shape = attrs.get("k"), ins[0].shape
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ShapeError(f"maxout() needs k, the number of linear pieces, as a positive integer, not {k!r}")
    if not shape or not isinstance(shape[-1], int) or shape[-1] % k:
        raise ShapeError(f"maxout(x, k={k}) needs x's last dim to be a multiple of k, but x is {S.show(shape)}", 0)
    return (*shape[:-1], shape[-1] // k), "float"


def _pieces(shape: Shape, k: int) -> Shape:
    """[..., k*D] viewed as k pieces of D: [..., k, D]."""
    return (*shape[:-1], k, shape[-1] // k)


def _emit_maxout(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    x = args[0]
    return _reduce(ctx, "maximum", f"{x}.reshape({x}.shape[:-1] + ({attrs['k']}, -1))", -2, out=out)


def _vjp_maxout(G: Graph, n: int, g: int):
    x = G[n].args[0]  # the max gate: route the gradient to the winning piece
    shape = G[x].shape
    pieces = _pieces(shape, G[n].attr("k"))
    axis = len(pieces) - 2
    xr = G.add("reshape", [x], {"shape": pieces})
    mask = G.add("step", [xr, broadcast(G, n, pieces, axis, False)], {"cmp": "=="})
    gx = G.add("mul", [mask, broadcast(G, g, pieces, axis, False)])
    return (G.add("reshape", [gx], {"shape": shape}),)


_SOFTMAX = '''def _softmax(x, axis):
    """exp(x - max) / sum(exp(x - max)): shifting by the max first keeps exp from overflowing."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e'''


def _vjp_softmax(G: Graph, n: int, g: int):
    axis = G[n].attr("axis")
    total = G.add("sum", [G.add("mul", [g, n])], {"axis": axis, "keepdims": True})
    return (G.add("mul", [n, G.add("sub", [g, total])]),)


# -- losses

def _labels_rule(opname: str):
    """Scores [N, C] and integer class labels [N]: a scalar loss."""
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        scores, labels = ins[0], ins[1]
        _need_float([scores], opname)
        if labels.dtype != "int":
            what = f"'{labels.name}'" if labels.name else "the labels"
            raise ShapeError(f"{opname} needs integer class labels, but {what} is "
                             f"{labels.dtype}{S.show(labels.shape)}; declare it as int[...]", 1)
        if len(scores.shape) != 2:
            raise ShapeError(f"{opname} needs scores of shape [N, C], not {S.show(scores.shape)}", 0)
        if labels.shape != scores.shape[:1]:
            raise ShapeError(f"{opname}: labels {S.show(labels.shape)} do not match "
                             f"scores {S.show(scores.shape)}; expected {S.show(scores.shape[:1])}", 1)
        for key in ("delta",):
            if key in attrs:
                _number_attr(opname, attrs, key)
        return (), "float"
    return infer


def _class_bounds(ins: list[Node]) -> dict[int, int]:
    return {1: ins[0].shape[-1]} if isinstance(ins[0].shape[-1], int) else {}


def _ce_probs_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    scores, targets = ins
    _need_float(ins, "softmax_cross_entropy")
    if len(scores.shape) != 2:
        raise ShapeError(f"softmax_cross_entropy needs scores of shape [N, C], not {S.show(scores.shape)}", 0)
    if targets.shape != scores.shape:
        raise ShapeError(f"softmax_cross_entropy: probability targets {S.show(targets.shape)} do not match "
                         f"scores {S.show(scores.shape)}; give one distribution per row (or int[N] labels)", 1)
    return (), "float"


_SOFT_NLL = '''def _soft_nll(logp, targets):
    """Mean over the batch of -sum_c targets * logp: cross-entropy against probability targets."""
    return np.vdot(targets, logp) * (-1.0 / len(targets))'''


def _vjp_ce_probs(G: Graph, n: int, g: int):
    # L = -1/N sum_i sum_c t_ic logp_ic: dL/ds = (softmax(s) * rowsum(t) - t) / N, dL/dt = -logp / N.
    scores, targets = G[n].args
    logp = G.add("log_softmax", [scores], {"axis": 1})
    gn = _per_element(G, g, G[scores].shape, rows_only=True)
    rowsum = G.add("sum", [targets], {"axis": 1, "keepdims": True})
    ds = G.add("mul", [G.add("sub", [G.add("mul", [G.add("exp", [logp]), rowsum]), targets]), gn])
    dt = G.add("mul", [logp, G.add("neg", [gn])])
    return ds, dt


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


def _vjp_svm(G: Graph, n: int, g: int):
    scores, labels = G[n].args
    return G.add("svm_loss_grad", [scores, labels, g], {"delta": G[n].attr("delta")}), None


def _same_shape_loss_rule(opname: str, what: str):
    """Predictions and targets of one shape (targets may broadcast): a scalar mean loss."""
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        _need_float(ins, opname)
        pred, target = ins
        try:
            shape = S.broadcast(pred.shape, target.shape)
        except ShapeError:
            shape = None
        if shape != pred.shape:
            raise ShapeError(f"{opname}: {what} {S.show(target.shape)} do not match "
                             f"{S.show(pred.shape)}", 1)
        return (), "float"
    return infer


_SIGMOID_CE = '''def _sigmoid_ce(x, t):
    """mean(log(1 + exp(x)) - x t): log(1 + exp(x)) as logaddexp(0, x) stays finite for any x."""
    loss = np.logaddexp(0.0, x)
    loss -= x * t
    return loss.mean()'''


def _vjp_sigmoid_ce(G: Graph, n: int, g: int):
    x, t = G[n].args
    gn = _per_element(G, g, G[x].shape)
    dx = G.add("mul", [G.add("sub", [G.add("sigmoid", [x]), t]), gn])
    dt = G.add("mul", [x, G.add("neg", [gn])])
    return dx, dt


_MSE = '''def _mse(pred, target):
    """mean((pred - target) ** 2), one subtraction and a dot product."""
    d = pred - target
    return np.vdot(d, d) * (1.0 / d.size)'''


def _vjp_mse(G: Graph, n: int, g: int):
    p, t = G[n].args
    dp = G.add("mul", [G.add("sub", [p, t]), _per_element(G, g, G[p].shape, 2.0)])
    return dp, G.add("neg", [dp])


# -- penalties: variadic, so one call covers all the weights, as the lecture's R(W) does

def _penalty_rule(opname: str):
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        if not ins:
            raise ShapeError(f"{opname}() needs at least one tensor, like {opname}(fc1.W, fc2.W)")
        _need_float(ins, opname)
        if "beta" in attrs:
            _number_attr(opname, attrs, "beta")
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
    return f"({beta!r} * {_emit_l2(ctx, args, attrs)} + {_emit_l1(ctx, args, attrs)})"


def _vjp_l2(G: Graph, n: int, g: int):
    return tuple(G.add("mul", [a, G.add("mul", [g, constant(G, 2.0)])]) for a in G[n].args)


def _vjp_l1(G: Graph, n: int, g: int):
    return tuple(G.add("mul", [G.add("sign", [a]), g]) for a in G[n].args)


def _vjp_elastic(G: Graph, n: int, g: int):
    beta = float(G[n].attr("beta"))
    return tuple(G.add("mul", [G.add("add", [G.add("mul", [a, constant(G, 2.0 * beta)]), G.add("sign", [a])]), g])
                 for a in G[n].args)


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
        raise ShapeError(f"too many subscripts: {S.show(x.shape)} has {len(x.shape)} axes, "
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
                raise ShapeError(f"cannot slice axis {axis} of {S.show(x.shape)} with fixed bounds: its size "
                                 f"{dim} is only known when the module is called; use ':'", 0)
        elif part[0] == "int" and isinstance(dim, int) and not -dim <= part[1] < dim:
            raise ShapeError(f"index {part[1]} is out of range for axis {axis} of {S.show(x.shape)}", 0)
        if part[0] == "slice" or not advanced:
            continue
        if axis == advanced[0]:
            dims.append(None)   # where the broadcast index dims go, if adjacent
    if not advanced:
        return tuple(dims)
    try:
        joint = S.broadcast(*(t.shape for t in tensors))
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
            raise ShapeError(f"indices must be integers, but {what} is {t.dtype}{S.show(t.shape)}", i)
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


def _vjp_index(G: Graph, n: int, g: int):
    x, *tensors = G[n].args
    grad = G.add("scatter", [g, *tensors], {"key": G[n].attr("key"), "shape": G[x].shape})
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
    (axis,) = S.normalize_axes(axis, len(first.shape))
    total = 0
    for i, node in enumerate(ins):
        if node.dtype != first.dtype:
            raise ShapeError(f"concat() cannot join {first.dtype} and {node.dtype} tensors", i)
        others = [d for a, d in enumerate(node.shape) if a != axis]
        if len(node.shape) != len(first.shape) or others != [d for a, d in enumerate(first.shape) if a != axis]:
            raise ShapeError(f"concat(axis={attrs['axis']}): {S.show(node.shape)} does not match "
                             f"{S.show(first.shape)} on the other axes", i)
        if not isinstance(node.shape[axis], int):
            raise ShapeError(f"concat() along axis {axis} needs fixed sizes there, but {S.show(node.shape)} "
                             f"has the symbolic dim {node.shape[axis]}", i)
        total += node.shape[axis]
    return (*first.shape[:axis], total, *first.shape[axis + 1:]), first.dtype


def _emit_concat(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    parts = f"({', '.join(args)}{',' if len(args) == 1 else ''})"
    return f"{ctx.xp}.concatenate({parts}, axis={attrs['axis']!r}" + (f", out={out})" if out else ")")


def _vjp_concat(G: Graph, n: int, g: int):
    rank = len(G[n].shape)
    (axis,) = S.normalize_axes(G[n].attr("axis"), rank)
    grads, start = [], 0
    for a in G[n].args:   # each operand's gradient is its slice of g (a view, no copy)
        size = G[a].shape[axis]
        key = (":",) * axis + (f"{start}:{start + size}",)
        grads.append(G.add("slice", [g], {"key": key}))
        start += size
    return tuple(grads)


# -- the entries

_NZ = dict(samples=_U, domain="nonzero")
elementwise("leaky_relu", 1, _leaky_chain, "({0} + ((T){alpha} - (T)1) * min({0}, (T)0))", attrs=(("alpha", 0.01),),
            infer=_checked_elementwise_rule("leaky_relu", lambda a: _number_attr("leaky_relu", a, "alpha")),
            in_place=False, vjp=_vjp_leaky_relu,
            samples=(*_U, Sample((_M,), {"alpha": 0.2})), domain="nonzero",
            doc="x where x > 0, else alpha * x (the lecture's fix for dying relus)",
            example="h = leaky_relu(x, alpha=0.1)")
op("elu", 1, _checked_elementwise_rule("elu", lambda a: _number_attr("elu", a, "alpha")), _emit_elu,
   scalar="(max({0}, (T)0) + (T){alpha} * expm1(min({0}, (T)0)))", attrs=(("alpha", 1.0),), takes_out=True,
   in_place=True,
   helpers=(_ELU,), vjp=_vjp_elu, samples=(*_U, Sample((_M,), {"alpha": 1.7})), domain="nonzero",
   doc="x where x > 0, else alpha * (exp(x) - 1)", example="h = elu(x, alpha=1.0)")
elementwise("softplus", 1, (("logaddexp", "0", "0.0"),), "(max({0}, (T)0) + log1p(exp(-fabs({0}))))",
            vjp=_vjp_softplus, samples=_U,
            doc="log(1 + exp(x)), computed as max(x, 0) + log(1 + exp(-|x|)), which cannot overflow",
            example="h = softplus(x)")
elementwise("gelu", 1, (("multiply", "0", "0"), ("multiply", "$", repr(_GELU_K)), ("add", "$", "1.0"),
                        ("multiply", "$", "0"), ("multiply", "$", repr(_GELU_C)), ("tanh", "$"), ("add", "$", "1.0"),
                        ("multiply", "$", "0"), ("multiply", "$", "0.5")),
            f"(T)0.5 * {{0}} * ((T)1 + tanh((T){_GELU_C!r} * ({{0}} + (T){_GELU_K!r} * {{0}} * {{0}} * {{0}})))",
            in_place=False, vjp=_vjp_gelu, samples=_U,
            doc="the tanh approximation x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) of x * Phi(x)",
            example="h = gelu(x)")
op("maxout", 1, _maxout_rule, _emit_maxout,
   attrs=(("k", None),), takes_out=True, vjp=_vjp_maxout, domain="separated",
   samples=(Sample(((3, 6),), {"k": 2}), Sample(((2, 3, 6),), {"k": 3}), Sample(((4,),), {"k": 4})),
   doc="the max over k linear pieces: x [..., k*D] is split into k consecutive pieces of D and "
       "out[..., d] = max_j x[..., j*D + d]; maxout(x @ W + b, k=2) with W = [W1 | W2] is the "
       "lecture's max(W1 x + b1, W2 x + b2)",
   example="h = maxout(x, k=2)")
op("softmax", 1, _along_axis_rule("softmax"), template("_softmax({0}, {axis})"), vjp=_vjp_softmax,
   attrs=(("axis", -1),), helpers=(_SOFTMAX,), samples=(Sample((_M,)), Sample(((2, 3, 4),), {"axis": 1})),
   doc="exp(x) / sum(exp(x), axis), computed after subtracting the max so it cannot overflow",
   example="p = softmax(x, axis=-1)")

op("softmax_cross_entropy_probs", 2, _ce_probs_rule, template("_soft_nll(_log_softmax({0}, 1), {1})"),
   vjp=_vjp_ce_probs, public=False, helpers=(_LOG_SOFTMAX, _SOFT_NLL), samples=(Sample(((5, 4), (5, 4))),),
   doc="softmax_cross_entropy with float [N, C] probability targets t: -1/N sum_i sum_c t_ic log softmax(s_i)_c")
op("svm_loss", 2, _labels_rule("svm_loss"), template("_svm_loss({0}, {1}, {delta})"), vjp=_vjp_svm,
   attrs=(("delta", 1.0),), helpers=(_SVM,), int_bounds=_class_bounds, domain="separated",
   # delta = 1.05: the separated draw puts scores on a 0.1 grid, so no margin sits on its kink.
   samples=(Sample(((5, 4), (5,)), {"delta": 1.05}, ints={1: 4}),),
   doc="the multiclass SVM (hinge) loss: 1/N sum_i sum_{j != y_i} max(0, s_ij - s_iy_i + delta)",
   example="loss = svm_loss(scores, y, delta=1.0)")
op("svm_loss_grad", 3, _ce_grad_rule, template("_svm_loss_grad({0}, {1}, {2}, {delta})"), public=False,
   attrs=(("delta", 1.0),), helpers=(_SVM,))
op("sigmoid_cross_entropy", 2, _same_shape_loss_rule("sigmoid_cross_entropy", "targets"),
   template("_sigmoid_ce({0}, {1})"), vjp=_vjp_sigmoid_ce, helpers=(_SIGMOID_CE,),
   samples=(Sample(((5,), (5,))), Sample(((3, 4), (3, 4))), Sample(((3, 4), (4,)))),
   doc="binary cross-entropy on logits x with targets t in [0, 1]: "
       "mean(max(x, 0) - x t + log(1 + exp(-|x|))), finite for any x",
   example="loss = sigmoid_cross_entropy(x, t)")
op("mse", 2, _same_shape_loss_rule("mse", "targets"), template("_mse({0}, {1})"), vjp=_vjp_mse, helpers=(_MSE,),
   samples=(Sample(((5,), (5,))), Sample(((3, 4), (3, 4))), Sample(((3, 4), ()))),
   doc="mean squared error: mean((pred - target)^2) over every entry", example="loss = mse(x, t)")

op("l2", -1, _penalty_rule("l2"), _emit_l2, vjp=_vjp_l2,
   samples=(Sample((_M,)), Sample((_M, (4,)))),
   doc="the L2 penalty R(W) = sum W^2, summed over every tensor given (its gradient is 2 W)",
   example="reg = l2(W, W2)")
op("l1", -1, _penalty_rule("l1"), _emit_l1, vjp=_vjp_l1, domain="nonzero",
   samples=(Sample((_M,)), Sample((_M, (4,)))),
   doc="the L1 penalty R(W) = sum |W|, summed over every tensor given", example="reg = l1(W)")
op("elastic_net", -1, _penalty_rule("elastic_net"), _emit_elastic, vjp=_vjp_elastic, attrs=(("beta", 1.0),),
   domain="nonzero", samples=(Sample((_M,)), Sample((_M, (4,)), {"beta": 0.3})),
   doc="the elastic net penalty R(W) = sum (beta W^2 + |W|), summed over every tensor given",
   example="reg = elastic_net(W, beta=0.5)")

op("slice", 1, _slice_rule, _emit_index, vjp=_vjp_index, attrs=(("key", ()),), public=False,
   samples=(Sample((_M,), {"key": (":", "1:3")}), Sample(((2, 3, 4),), {"key": ("1", "0:2")}),
            Sample((_M,), {"key": ("-1",)})),
   doc="x[...] with integers and fixed slices: a view", example="first = x[:, 0:3]")
op("index", -1, _index_rule, _emit_index, vjp=_vjp_index, attrs=(("key", ()),), public=False,
   samples=(Sample(((5, 4), (5,), (5,)), {"key": ("{1}", "{2}")}, ints={1: 5, 2: 4}),
            Sample(((5, 4), (3,)), {"key": (":", "{1}")}, ints={1: 4}),
            Sample(((2, 5, 4), (2, 3)), {"key": ("1", "{1}")}, ints={1: 5}),
            Sample(((5, 4), (6,)), {"key": ("{1}",)}, ints={1: 5})),
   doc="x[...] with integer tensors among the subscripts (numpy's advanced indexing): a gather",
   example="correct = scores[arange(N), y]")
op("scatter", -1, lambda ins, attrs: (attrs["shape"], "float"), _emit_scatter, public=False, helpers=(_SCATTER,),
   doc="the gradient of slice and index: g added into zeros shaped like x at the indexed entries")
op("arange", 0, _arange_rule, _emit_arange, attrs=(("n", None),),
   doc="the integers 0, 1, ..., n - 1 (n may be a dim like N), to index with", example="rows = arange(N)")
op("concat", -1, _concat_rule, _emit_concat, vjp=_vjp_concat, attrs=(("axis", 0),), takes_out=True,
   samples=(Sample(((2, 3), (4, 3))), Sample(((3, 2), (3, 1), (3, 4)), {"axis": 1}), Sample(((3,), (2,)))),
   doc="joins tensors along an existing axis (all other dims equal)", example="h = concat(x, t, axis=1)")
