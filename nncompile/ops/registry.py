"""The op registry's machinery: what an op is (:class:`OpDef`), how one is declared
(:func:`op`, :func:`elementwise`), and the shape rules, emitters and graph-building helpers
that the declarations in :mod:`.basic` and :mod:`.toolkit` share.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import shapes as S
from ..ir import Graph, Node
from ..shapes import Shape, ShapeError
from .value import Value

Emit = Callable[..., str]            # (ctx, operand names, attrs, out=None) -> an expression
Step = tuple[str, ...]               # (ufunc, operand, ...): operands "0", "1", "$" (the result so far) or a literal
# (g, out, *operands) -> one gradient per operand (or None), as values (see .value); a
# lone value for a one-operand op
Vjp = Callable[..., Value | Sequence[Value | None]]


class EmitContext:
    """What an emitter may ask of the backend: the array module, the dtype, concrete shapes."""

    xp = "np"
    dtype = "np.float32"
    rng = "rng"
    literals: frozenset[int] = frozenset()   # the operands emitted as Python numbers (folded constants)

    def shape(self, shape: Shape) -> str:  # pragma: no cover - overridden by codegen
        raise NotImplementedError

    def dim(self, symbol: str) -> str:  # pragma: no cover - overridden by codegen
        raise NotImplementedError

    def reduction(self, ufunc: str) -> str:
        """The function reducing with ``ufunc`` ("add", "maximum"): numpy's ufunc method
        ``np.add.reduce`` skips np.sum's Python wrapper; a backend may name its own."""
        return f"{self.xp}.{ufunc}.reduce"

    def kernel(self, expr: str, arity: int) -> str:  # pragma: no cover - overridden by codegen
        """The name of a module-level kernel computing the C expression ``expr`` over x0, x1, ..."""
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
    in_place: bool = False                    # not a chain: may write over an operand of its own shape
    differentiable: bool = True               # False: carries no gradient (a mask), autodiff treats it as constant
    view: bool = False                        # the result is a numpy view of operand 0: it owns no storage
    random: bool = False                      # draws from the caller's random generator (ctx.rng)
    scalar: str | None = None                 # C expression over {0}, {1}: fusable elementwise op
    domain: str = "real"                      # gradient-check inputs: real, positive, separated
    samples: tuple[Sample, ...] = ()
    int_bounds: Callable[[list[Node]], dict[int, S.Dim]] | None = None   # operand -> the dim its ints lie below
    targets: dict[int, str] = field(default_factory=dict)   # operand -> "probability" or "distribution" (rows sum to 1)
    helpers: tuple[str, ...] = ()             # functions the emitted code calls, each defined once per module
    lower: Callable[..., int] | None = None   # expanded by the elaborator: (elaborator, args, attrs, loc, scope) -> node
    composite: Callable[..., Value] | None = None   # built from other ops: (operands as values, **attrs) -> value
    dispatch: Callable[[list[Node]], str] | None = None  # one name in the language, the op chosen by operand dtype
    doc: str = ""                             # what it computes: the formula, for docs/language.md
    example: str = ""                         # one line of .nn using it (elaborated by tests/test_docs.py)

    @property
    def elementwise(self) -> bool:
        return self.chain is not None

    def may_overwrite(self, attrs: dict[str, Any]) -> bool:
        """Whether the result may be written over an operand's buffer. A chain's first step
        writes there, so that is safe only if no later step reads an operand again."""
        if self.chain is None:
            return self.in_place
        return not any(o.isdigit() for _, *operands in self.chain(attrs)[1:] for o in operands)


REGISTRY: dict[str, OpDef] = {}


def op(name: str, arity: int, infer, emit, **kw: Any) -> OpDef:
    if name in REGISTRY:
        raise ValueError(f"op {name} declared twice")
    REGISTRY[name] = OpDef(name, arity, infer, emit, **kw)
    return REGISTRY[name]


def elementwise(name: str, arity: int, steps: tuple[Step, ...] | Callable[[dict], tuple[Step, ...]],
                scalar: str, **kw: Any) -> OpDef:
    """An elementwise op, emitted as a chain of numpy ufunc calls that run in place in its
    result; whether that result may overwrite an operand follows from the chain
    (:meth:`OpDef.may_overwrite`), so it cannot be declared."""
    chain = steps if callable(steps) else (lambda attrs, steps=steps: steps)
    kw.setdefault("infer", elementwise_rule(kw.pop("symbol", name)))

    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        expr = None
        for i, (fn, *operands) in enumerate(chain(attrs)):
            names = [expr if o == "$" else args[int(o)] if o.isdigit() else o for o in operands]
            last = i == len(chain(attrs)) - 1
            expr = f"{ctx.xp}.{fn}({', '.join(names + ([f'out={out}'] if out and last else []))})"
        return expr

    if "in_place" in kw:
        raise TypeError(f"{name}: an elementwise op's in_place follows from its chain (OpDef.may_overwrite)")
    return op(name, arity, emit=emit, chain=chain, takes_out=True, scalar=scalar, **kw)


def composite(name: str, arity: int, build: Callable[..., Value], **kw: Any) -> OpDef:
    """An op that is a composition of others, written over values: ``silu`` is
    ``lambda x: x * x.sigmoid()``. The elaborator expands each call into the nodes ``build``
    adds (through the ``lower`` hook), so the op needs no emitter or gradient rule of its
    own: autodiff, fusion and the gradient checks see only its parts."""
    def lower(el, args: list[int], attrs: dict, loc, scope) -> int:
        def add(opname: str, operands: Sequence[int], node_attrs: dict) -> int:
            return el.op(opname, list(operands), dict(node_attrs), loc, scope)
        return build(*(Value(el.G, a, add) for a in args), **attrs).n

    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        """The shape and dtype of the composition, built over stand-in inputs."""
        G = Graph()
        xs = [Value(G, G.add("input", (), {"name": f"x{i}", "shape": n.shape, "dtype": n.dtype}))
              for i, n in enumerate(ins)]
        out = G[build(*xs, **attrs).n]
        return out.shape, out.dtype

    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        raise AssertionError(f"{name} is a composite: the elaborator expands it into its parts")

    return op(name, arity, infer, emit, lower=lower, composite=build, **kw)


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


def _ce_grad_rule(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return ins[0].shape, "float"


def _dispatch_ce(ins: list[Node]) -> str:
    """Integer labels [N] or float probability targets [N, C]: one name, two ops. Anything
    else (float [N] labels, say) goes to the label rule, whose error says to declare them int."""
    probs = len(ins) > 1 and ins[1].dtype == "float" and len(ins[1].shape) == 2
    return "softmax_cross_entropy_probs" if probs else "softmax_cross_entropy"


# ---- emitters -------------------------------------------------------------------------

def literal(value: Any) -> str:
    """Python source for an attribute value; a float that is inf or nan as np.inf or np.nan
    (a bare ``inf`` would not import)."""
    if not isinstance(value, float):
        return repr(value)
    if value != value:
        return "np.nan"
    if value in (float("inf"), float("-inf")):
        return "np.inf" if value > 0 else "(-np.inf)"
    text = repr(value)
    return f"({text})" if text.startswith("-") else text


def call(fn: str) -> Emit:
    """Emit ``np.fn(a, axis=1, out=buf)``; attributes are passed as keywords when set."""
    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        extra = [f"{k}={literal(v)}" for k, v in attrs.items() if v is not None and v is not False]
        return f"{ctx.xp}.{fn}({', '.join([*args, *extra, *([f'out={out}'] if out else [])])})"
    return emit


def template(text: str) -> Emit:
    """Emit an expression written with {0}, {1} for operands and {xp} for the array module."""
    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        return text.format(*args, xp=ctx.xp, dtype=ctx.dtype, **{k: literal(v) if isinstance(v, float) else v for k, v in attrs.items()})
    return emit


_COMPARE = {">": "greater", ">=": "greater_equal", "<": "less", "<=": "less_equal", "==": "equal"}


def _emit_step(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
    """1 where the comparison holds, else 0, in the module's float dtype: a numpy comparison
    gives bools unless it writes into a float buffer."""
    test = f"{ctx.xp}.{_COMPARE[attrs['cmp']]}({args[0]}, {args[1]}"
    return f"{test}, out={out})" if out else f"{test}).astype({ctx.dtype})"


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


def _reduce(ctx: EmitContext, ufunc: str, x: str, axis, keepdims: bool = False, out: str | None = None) -> str:
    """``np.add.reduce(x, axis=1, out=buf)``, or the backend's own reduction."""
    extra = [f"axis={tuple(axis) if isinstance(axis, (list, tuple)) else axis!r}"]
    if keepdims:
        extra.append("keepdims=True")
    if out:
        extra.append(f"out={out}")
    return f"{ctx.reduction(ufunc)}({', '.join([x, *extra])})"


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
    # A Python float would broadcast as float64 (the seed 1.0 of a float32 module's gradient).
    value = f"{ctx.dtype}({args[0]})" if 0 in ctx.literals else args[0]
    if attrs.get("axes"):
        value = f"{ctx.xp}.expand_dims({value}, {attrs['axes']!r})"
    return f"{ctx.xp}.broadcast_to({value}, {ctx.shape(attrs['shape'])})"


def _number_attr(opname: str, attrs: dict, name: str, low: float | None = None) -> float:
    value = attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError(f"{opname}() needs a number for {name}, not {value!r}")
    if low is not None and value < low:
        raise ShapeError(f"{opname}() needs {name} >= {low:g}, not {value!r}")
    return float(value)


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
