"""The op registry's machinery: what an op is (:class:`OpDef`), how one is declared
(:func:`op`, :func:`elementwise`, :func:`composite`), the ufunc -> C table that gives a
chain its fused form, and the shape rules and emitters that several ops share.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .. import shapes
from ..backends import NUMPY, Backend
from ..ir import Graph, Node
from ..shapes import Shape, ShapeError
from .value import Value

Emit = Callable[..., str]            # (ctx, operand names, attrs, out=None) -> an expression
Step = tuple[str, ...]               # (ufunc, operand, ...): operands "0", "1", "$" (the result so far) or a literal
# (g, out, *operands) -> one gradient per operand (or None), as values (see .value); a
# lone value for a one-operand op
Vjp = Callable[..., Value | Sequence[Value | None]]
Rewrite = Callable[[Graph, int], int | None]   # (graph, node) -> its cheaper equivalent (see ops/rewrites.py)
Label = str | Callable[[dict[str, Any]], str]   # a diagram's op node: a symbol ("×"), or text made from the attrs
Switch = Callable[[list[np.ndarray], dict[str, Any]], np.ndarray]   # (operand values, attrs) -> crosses 0 at a kink
Chance = Callable[[int | None, dict[str, Any]], tuple[float, str] | None]   # (classes, attrs) -> loss, formula
# (ctx, operand tensor names, attrs) -> the ONNX tensor holding the result (see ops/onnx_helpers.py)
Lowering = Callable[..., str | None]


class EmitContext:
    """What an emitter may ask of the backend: the array module, the dtype, concrete shapes."""

    backend: Backend = NUMPY
    dtype = "np.float32"
    rng = "rng"
    literals: frozenset[int] = frozenset()   # the operands emitted as Python numbers (folded constants)
    operand_shapes: tuple[Shape, ...] = ()   # the shapes of the operands of the op being emitted

    def filled(self, value: float, shape: Shape) -> str:
        """An array of ``value`` shaped ``shape`` that the code only reads (codegen keeps one in
        the workspace)."""
        return f"{self.xp}.full({self.shape(shape)}, {literal(value)}, dtype={self.dtype})"

    @property
    def xp(self) -> str:
        """The array module's name in the generated code: ``np`` or ``cp``."""
        return self.backend.xp

    def shape(self, shape: Shape) -> str:  # pragma: no cover - overridden by codegen
        raise NotImplementedError

    def dim(self, symbol: str) -> str:  # pragma: no cover - overridden by codegen
        raise NotImplementedError

    def reduction(self, ufunc: str) -> str:
        """The function reducing with ``ufunc`` ("add", "maximum")."""
        return self.backend.reduction(ufunc)

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


def _first_operand(operands: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    return operands[0]


@dataclass(frozen=True)
class Kink:
    """Where an op is not differentiable, for the gradient check (:mod:`nncompile.gradcheck`):
    ``switch(operands, attrs)`` is an array that crosses 0 exactly where the op changes
    branch (by default the first operand: relu at 0), and ``what`` says what sits there."""

    switch: Switch = _first_operand
    what: str = "is at its kink"
    named: Callable[[dict[str, Any]], str] | None = None   # (attrs) -> what the check calls the op, where a
                                                            # model writes no name for it (a comparison)


@dataclass(frozen=True)
class Loss:
    """A loss op as training reads it (:mod:`nncompile.train.trainer`): what kind of targets
    it compares with, how a report names its value, and the loss of a model that knows nothing yet."""

    kind: str         # what it compares: "classes" (scores [N, C], int labels), "binary" (logits, 0/1
                      # targets), "regression" (predictions, targets), "distribution" (scores, rows of probabilities)
    what: str = ""    # its value in a report: "softmax cross-entropy of the scores"
    chance: Chance | None = None   # the loss of equal scores, and its formula ("-log(1/10)"); None: no such level
    assumed: bool = False   # the loss training assumes of class scores where the graph has none it knows


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
    c_result: int = 0                         # a fresh result of up to this rank is C-ordered whatever the operands
    in_place: bool = False                    # not a chain: may write over an operand of its own shape
    differentiable: bool = True               # False: carries no gradient (a mask), autodiff treats it as constant
    no_second_order: str = ""                 # no gradient rule yet no mask: why (autodiff errs at the model's line)
    view: bool = False                        # the result is a numpy view of operand 0: it owns no storage
    reorders: bool = False                    # a view whose axes are in another order than operand 0's
    random: bool = False                      # draws from the caller's random generator (ctx.rng)
    pairwise: str | None = None               # a reduction: the elementwise op meant when it is called with two tensors
    mode_dependent: bool = False              # lowers differently in train and eval mode (dropout)
    scalar: str | Callable[[dict[str, Any]], str] | None = None   # C over {0}, {1} (or attrs -> it): fusable
    domain: str = "real"                      # gradient-check inputs: real, positive, separated
    samples: tuple[Sample, ...] = ()
    int_bounds: Callable[[list[Node]], dict[int, shapes.Dim]] | None = None   # operand -> the dim its ints lie below
    targets: dict[int, str] = field(default_factory=dict)   # operand -> "probability" or "distribution" (rows sum to 1)
    helpers: tuple[str, ...] = ()             # functions the emitted code calls, each defined once per module
    lower: Callable[..., int] | None = None   # expanded by the elaborator: (el, args, attrs, loc, scope) -> node
    composite: Callable[..., Value] | None = None   # built from other ops: (operands as values, **attrs) -> value
    dispatch: Callable[[list[Node]], str] | None = None  # one name in the language, the op chosen by operand dtype
    doc: str = ""                             # what it computes: the formula, for docs/language.md
    example: str = ""                         # one line of .nn using it (elaborated by tests/test_docs.py)
    rewrites: tuple[Rewrite, ...] = ()        # simplifications of a node of this op, tried in order
    label: Label | None = None                # what diagrams show; None: the name and attributes
    drawn_in_user: Label | None = None        # diagrams draw it inside the one op using it, which shows this label
    kink: Kink | None = None                  # where it is not differentiable, for the gradient check
    loss: Loss | None = None                  # a loss: what training reads of it
    onnx: Lowering | None = None              # its ONNX nodes (nncompile.export); None: it cannot be exported
    dead_at: float | None = None              # an output at or below this is a unit that passes no gradient (relu: 0)
    saturates: tuple[float, float] | None = None   # outputs outside (lo, hi) sit on a flat tail (gradient health)
    cluster_note: Callable[[list[Shape], dict[str, Any]], str] | None = None   # (operand shapes, attrs) -> what the
                                              # diagram's cluster of a layer using it says of it: a conv's kernel

    @property
    def elementwise(self) -> bool:
        return self.chain is not None

    def may_overwrite(self, attrs: dict[str, Any]) -> bool:
        """Whether the result may be written over an operand's buffer. A chain's first step
        writes there, so that is safe only if no later step reads an operand again."""
        if self.chain is None:
            return self.in_place
        return not any(o.isdigit() for _, *operands in self.chain(attrs)[1:] for o in operands)

    def c_expression(self, operands: Sequence[str], attrs: dict[str, Any]) -> str:
        """The C form over the operands' C expressions (a fused kernel's line)."""
        template = self.scalar(attrs) if callable(self.scalar) else self.scalar
        assert template is not None, f"{self.name} has no C form"
        return template.format(*operands, **attrs)

    def compute(self, args: Sequence[Any], attrs: dict[str, Any]) -> np.ndarray:
        """Run the op on concrete float64 numpy arrays with the very code the numpy backend
        emits (constant folding, a trainer's data loss)."""
        names = [f"a{i}" for i in range(len(args))]
        scope = {**_helper_scope(self.helpers), **dict(zip(names, args))}
        ctx = _Float64Context()
        ctx.operand_shapes = tuple(np.shape(a) for a in args)
        return np.asarray(eval(self.emit(ctx, names, attrs), scope))  # noqa: S307 - our own text


@functools.lru_cache(maxsize=None)
def _helper_scope(helpers: tuple[str, ...]) -> dict[str, Any]:
    """numpy and an op's helper functions, defined once (a trainer computes its data loss often)."""
    scope: dict[str, Any] = {"np": np}
    for helper in helpers:
        exec(helper, scope)  # noqa: S102 - our own registry text, never user input
    return scope


REGISTRY: dict[str, OpDef] = {}


def infer(op: str, ins: list[Node], attrs: dict[str, Any]) -> tuple[Shape, str]:
    """The shape and dtype of ``op`` applied to ``ins``: what a graph asks of each node it adds."""
    return REGISTRY[op].infer(ins, attrs)


def new_graph() -> Graph:
    """An empty graph whose nodes are shaped by the registry's rules."""
    return Graph(infer)


class _Float64Context(EmitContext):
    """Emission for running an op here, on float64 numpy arrays."""

    dtype = "np.float64"

    def shape(self, shape: Shape) -> str:
        return repr(tuple(shape))


def op(name: str, arity: int, infer, emit, **kw: Any) -> OpDef:
    if name in REGISTRY:
        raise ValueError(f"op {name} declared twice")
    REGISTRY[name] = OpDef(name, arity, infer, emit, **kw)
    return REGISTRY[name]


# Each numpy ufunc a chain may call, as C over its operands {0}, {1}: the fused GPU kernels'
# form of a chain is derived from the chain through this table.
C_FORMS = {
    "add": "{0} + {1}", "subtract": "{0} - {1}", "multiply": "{0} * {1}", "divide": "{0} / {1}",
    "power": "pow({0}, {1})", "maximum": "max({0}, {1})", "minimum": "min({0}, {1})", "negative": "-{0}",
    "exp": "exp({0})", "log": "log({0})", "sqrt": "sqrt({0})", "absolute": "fabs({0})", "tanh": "tanh({0})",
    "sign": "((T)({0} > 0) - (T)({0} < 0))",
}


def c_form(steps: tuple[Step, ...]) -> str:
    """The C expression over {0}, {1} that a chain computes, step by step in its order of
    evaluation (so the GPU rounds as numpy does); a literal 0.0 is written (T)0."""
    expr, bracketed = "", True
    for fn, *operands in steps:
        infix = C_FORMS[fn].startswith(("{", "-"))
        names = []
        for o in operands:
            if o == "$":   # the result so far, bracketed where an operator applies to it
                names.append(f"({expr})" if infix and not bracketed else expr)
            elif o.isdigit():
                names.append(f"{{{o}}}")
            else:
                names.append(f"(T){o.removesuffix('.0')}")
        expr, bracketed = C_FORMS[fn].format(*names), not infix
    return expr


# The ufuncs of a chain that Python writes as an operator: on numpy scalars these operators
# round exactly as the ufunc does (tested), at a fraction of a ufunc call's cost. Not power:
# numpy's scalar ``**`` is another implementation, a last bit off np.power in float32.
PYTHON_FORMS = {
    "add": "{0} + {1}", "subtract": "{0} - {1}", "multiply": "{0} * {1}", "divide": "{0} / {1}",
    "negative": "-{0}",
}


def python_form(steps: tuple[Step, ...]) -> str | None:
    """The chain as one Python expression over {0}, {1} (for scalars), or None where a step
    has no operator form."""
    expr = ""
    for fn, *operands in steps:
        if fn not in PYTHON_FORMS:
            return None
        names = [f"({expr})" if o == "$" else f"{{{o}}}" if o.isdigit() else f"({o})" if o.startswith("-") else o
                 for o in operands]
        expr = PYTHON_FORMS[fn].format(*names)
    return expr


def elementwise(name: str, arity: int, steps: tuple[Step, ...] | Callable[[dict], tuple[Step, ...]],
                scalar: str | Callable[[dict[str, Any]], str] | None = None, **kw: Any) -> OpDef:
    """An elementwise op, emitted as a chain of numpy ufunc calls that run in place in its
    result; whether that result may overwrite an operand follows from the chain
    (:meth:`OpDef.may_overwrite`), so it cannot be declared. Its C form is derived from the
    chain (:func:`c_form`) unless given: a chain that depends on attributes needs one, and
    so does a ufunc C has no counterpart for."""
    if scalar is None:
        if callable(steps):
            raise TypeError(f"{name}: a chain that depends on attributes needs its C form written out")
        scalar = c_form(steps)
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


# What only a node of an op's own can use: a composite, which leaves none, must not declare it.
_NODE_KNOWLEDGE = frozenset({"vjp", "emit", "chain", "scalar", "takes_out", "c_result", "in_place", "differentiable",
                             "view", "reorders", "random", "helpers", "rewrites", "label", "kink", "loss", "lower",
                             "mode_dependent"})


def composite(name: str, arity: int, build: Callable[..., Value], **kw: Any) -> OpDef:
    """An op that is a composition of others, written over values: ``silu`` is
    ``lambda x: x * x.sigmoid()``. The elaborator expands each call into the nodes ``build``
    adds (through the ``lower`` hook), so the op needs no emitter or gradient rule of its
    own: autodiff, fusion and the gradient checks see only its parts."""
    ignored = sorted(set(kw) & _NODE_KNOWLEDGE)
    if ignored:   # no node of the composite's own op ever exists: its parts carry all of these
        raise TypeError(f"{name} is a composite: {', '.join(ignored)} would never be read (its parts declare theirs)")

    def lower(el, args: list[int], attrs: dict, loc, scope) -> int:
        need_float([el.G[a] for a in args], name)   # a composite computes on floats: say so in its own name

        def add(opname: str, operands: Sequence[int], node_attrs: dict) -> int:
            return el.op(opname, list(operands), dict(node_attrs), loc, scope)
        return build(*(Value(el.G, a, add) for a in args), **attrs).n

    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        """The shape and dtype of the composition, built over stand-in inputs."""
        need_float(ins, name)
        G = new_graph()
        xs = [Value(G, G.add("input", (), {"name": f"x{i}", "shape": n.shape, "dtype": n.dtype}))
              for i, n in enumerate(ins)]
        out = G[build(*xs, **attrs).n]
        return out.shape, out.dtype

    def emit(ctx: EmitContext, args: list[str], attrs: dict, out: str | None = None) -> str:
        raise AssertionError(f"{name} is a composite: the elaborator expands it into its parts")

    return op(name, arity, infer, emit, lower=lower, composite=build, **kw)


# ---- shape and dtype rules ------------------------------------------------------------

def need_float(ins: list[Node], opname: str) -> None:
    for i, node in enumerate(ins):
        if node.dtype != "float":
            what = f"'{node.name}'" if node.name else f"operand {i + 1}"
            fix = "; to compute with the numbers, declare the input float" if node.op == "input" else ""
            raise ShapeError(f"{opname} needs floats, but {what} is {node.dtype}{shapes.show(node.shape)}: int values "
                             "are labels and indices, for the ops that take them (softmax_cross_entropy, svm_loss, "
                             f"x[idx], one_hot){fix}", i)


def elementwise_rule(opname: str):
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        need_float(ins, opname)
        try:
            return shapes.broadcast(*(n.shape for n in ins)), "float"
        except ShapeError as exc:
            hint = "; for the matrix product write '@'" if opname == "'*'" and _multiplies(ins) else ""
            raise ShapeError(f"cannot apply {opname} to {' and '.join(shapes.show(n.shape) for n in ins)}: "
                             + exc.message.split(": ", 1)[-1] + hint, len(ins) - 1) from None
    return infer


def _multiplies(ins: list[Node]) -> bool:
    """Whether two operands that do not broadcast are shaped for '@' (a common slip for '*')."""
    try:
        return len(ins) == 2 and min(len(n.shape) for n in ins) >= 2 and bool(shapes.matmul(ins[0].shape, ins[1].shape))
    except ShapeError:
        return False


def along_axis_rule(opname: str):
    """Shape-preserving ops that work along one axis (softmax, log_softmax)."""
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        need_float(ins, opname)
        shapes.normalize_axes(attrs.get("axis", -1), len(ins[0].shape))
        return ins[0].shape, "float"
    return infer


def float_like_first(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
    return ins[0].shape, "float"


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


def reduce_expr(ctx: EmitContext, ufunc: str, x: str, axis, keepdims: bool = False, out: str | None = None) -> str:
    """``np.add.reduce(x, axis=1, out=buf)``, or the backend's own reduction."""
    extra = [f"axis={tuple(axis) if isinstance(axis, (list, tuple)) else axis!r}"]
    if keepdims:
        extra.append("keepdims=True")
    if out:
        extra.append(f"out={out}")
    return f"{ctx.reduction(ufunc)}({', '.join([x, *extra])})"


def number_attr(opname: str, attrs: dict, name: str, low: float | None = None) -> float:
    value = attrs.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShapeError(f"{opname}() needs a number for {name}, not {value!r}")
    if low is not None and value < low:
        raise ShapeError(f"{opname}() needs {name} >= {low:g}, not {value!r}")
    return float(value)


def labels_rule(opname: str, numbers: tuple[str, ...] = ()):
    """Scores [N, C] and integer class labels [N]: a scalar loss; ``numbers`` are the
    attributes that must be numbers (svm_loss's delta)."""
    def infer(ins: list[Node], attrs: dict) -> tuple[Shape, str]:
        scores, labels = ins[0], ins[1]
        need_float([scores], opname)
        if labels.dtype != "int":
            what = f"'{labels.name}' is" if labels.name else "the labels are"
            fix = "declare it as int[...]" if labels.name else "pass an int input"
            raise ShapeError(f"{opname} needs integer class labels, but {what} "
                             f"{labels.dtype}{shapes.show(labels.shape)}; {fix}", 1)
        if len(scores.shape) != 2:
            raise ShapeError(f"{opname} needs scores of shape [N, C], not {shapes.show(scores.shape)}", 0)
        if labels.shape != scores.shape[:1]:
            raise ShapeError(f"{opname}: labels {shapes.show(labels.shape)} do not match "
                             f"scores {shapes.show(scores.shape)}; expected {shapes.show(scores.shape[:1])}", 1)
        for key in numbers:
            if key in attrs:
                number_attr(opname, attrs, key)
        return (), "float"
    return infer


# ---- diagram text ---------------------------------------------------------------------

def attr_text(value: Any) -> str:
    """An attribute value as a diagram shows it: a tuple as ``0, 2``, anything else as str."""
    if isinstance(value, tuple):
        return ", ".join(attr_text(x) for x in value)
    return str(value)
