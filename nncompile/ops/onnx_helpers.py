"""What an op's ONNX lowering (``OpDef.onnx``) is given, and the lowerings several ops share.

A lowering is ``onnx(ctx, args, attrs) -> str``: it adds ONNX nodes through ``ctx`` (an
:class:`OnnxContext`, implemented by :mod:`nncompile.export`) and returns the name of the
tensor that holds the op's result. ``args`` are the operands' tensor names; an operand is
written into the ONNX graph only if some lowering reads it, so a lowering that folds its
operands into one node of its own (``x @ W + b`` as one Gemm) leaves the folded nodes out.
A lowering may also return None: it does not apply, and :func:`first_of` tries the next.

Nothing here imports onnx: exporting is optional, and the registry loads without it.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..ir import Graph, Node
from ..shapes import Dim, Shape, broadcast, ShapeError

Lowering = Callable[["OnnxContext", Sequence[str], dict[str, Any]], "str | None"]


class OnnxContext:
    """What a lowering may ask of the exporter. Tensors are named by strings; element types
    are ONNX's TensorProto codes, given here so that no lowering needs to import onnx."""

    opset: int                 # the default domain's opset being written (18 or later)
    float_type: int            # the TensorProto type of the module's float dtype
    int_type: int              # TensorProto.INT64: the module's int dtype
    graph: Graph               # the eval-mode graph being exported
    current: int               # the node being lowered

    def node(self, op_type: str, inputs: Sequence[str], *, outputs: int = 1, **attributes: Any) -> Any:
        """Add one ONNX node; its output's name (a list of names with ``outputs`` > 1)."""
        raise NotImplementedError  # pragma: no cover - implemented by nncompile.export

    def constant(self, value: Any, dtype: str = "float") -> str:
        """A constant tensor of the module's float dtype (or ``dtype="int"``: int64)."""
        raise NotImplementedError  # pragma: no cover

    def ints(self, values: Sequence[int]) -> str:
        """A constant 1-D int64 tensor: axes, starts, a fixed shape."""
        return self.constant([int(v) for v in values], "int")

    def dim(self, symbol: str) -> str:
        """A symbolic size (the batch N) as an int64 scalar, read from an input's shape when the model runs."""
        raise NotImplementedError  # pragma: no cover

    def value(self, n: int) -> str:
        """The tensor of graph node ``n`` (for a lowering that looks past its operands)."""
        raise NotImplementedError  # pragma: no cover

    def sole_use(self, n: int) -> bool:
        """Whether node ``n`` feeds one node only and is no output: folding it loses nothing."""
        raise NotImplementedError  # pragma: no cover

    # -- built from the above

    def operand(self, i: int) -> Node:
        """The graph node of the current node's operand ``i``."""
        return self.graph[self.graph[self.current].args[i]]

    def shape(self, shape: Shape) -> str:
        """A 1-D int64 tensor holding ``shape``; symbolic dims are read when the model runs."""
        if all(isinstance(d, int) for d in shape):
            return self.ints(shape)
        parts = [self.node("Unsqueeze", [self.dim(d), self.ints([0])]) if isinstance(d, str) else self.ints([d])
                 for d in shape]
        return self.node("Concat", parts, axis=0)

    def count(self, dims: Sequence[Dim], factor: float = 1.0) -> str:
        """The product of ``dims`` (times ``factor``) as a float scalar: a mean's divisor, N as a number."""
        fixed = factor
        symbols = []
        for d in dims:
            if isinstance(d, str):
                symbols.append(d)
            else:
                fixed *= d
        if not symbols:
            return self.constant(float(fixed))
        total = self.dim(symbols[0])
        for s in symbols[1:]:
            total = self.node("Mul", [total, self.dim(s)])
        total = self.node("Cast", [total], to=self.float_type)
        return total if fixed == 1 else self.node("Mul", [total, self.constant(float(fixed))])


# ---- lowerings several ops share --------------------------------------------------------

def onnx_node(op_type: str, **attributes: Callable[[dict[str, Any]], Any]) -> Lowering:
    """One ONNX node over the operands; each attribute computed from the op's attributes:
    ``onnx_node("LeakyRelu", alpha=float_attr("alpha"))``."""
    def lower(ctx: OnnxContext, args: Sequence[str], attrs: dict[str, Any]) -> str:
        return ctx.node(op_type, list(args), **{k: f(attrs) for k, f in attributes.items()})
    return lower


def float_attr(name: str) -> Callable[[dict[str, Any]], float]:
    """An attribute as an ONNX float (``alpha=1`` in a .nn file is an int)."""
    return lambda attrs: float(attrs[name])


def int_attr(name: str) -> Callable[[dict[str, Any]], int]:
    return lambda attrs: int(attrs[name])


def axes_of(attrs: dict[str, Any]) -> list[int] | None:
    """A reduction's ``axis`` attribute as a list of axes; None for every axis."""
    axis = attrs.get("axis")
    if axis is None:
        return None
    return [int(a) for a in axis] if isinstance(axis, (list, tuple)) else [int(axis)]


def reduce_over(ctx: OnnxContext, op_type: str, x: str, axes: list[int] | None, keepdims: bool = False) -> str:
    """An ONNX reduction (opset 18: the axes are an input; none given reduces every axis)."""
    inputs = [x] if axes is None else [x, ctx.ints(axes)]
    return ctx.node(op_type, inputs, keepdims=int(bool(keepdims)))


def onnx_reduce(op_type: str) -> Lowering:
    """sum, mean, max over ``axis`` (every axis by default), keeping the axes with ``keepdims``."""
    def lower(ctx: OnnxContext, args: Sequence[str], attrs: dict[str, Any]) -> str:
        return reduce_over(ctx, op_type, args[0], axes_of(attrs), attrs.get("keepdims", False))
    return lower


def first_of(*lowerings: Lowering) -> Lowering:
    """The first lowering that applies (returns a name): special forms first, the general one last."""
    def lower(ctx: OnnxContext, args: Sequence[str], attrs: dict[str, Any]) -> str:
        for lowering in lowerings:
            name = lowering(ctx, args, attrs)
            if name is not None:
                return name
        raise AssertionError("the last lowering of first_of() must always apply")
    return lower


def rows(ctx: OnnxContext, shape: Shape) -> str:
    """The number of rows (the first dim) of a tensor of ``shape``, as a float scalar."""
    return ctx.count(shape[:1])


def one_hot_of(ctx: OnnxContext, labels: str, n: int) -> str:
    """labels[..., None] == [0, 1, ..., n - 1], as floats: ONNX Runtime's OneHot has no float64 kernel."""
    column = ctx.node("Unsqueeze", [labels, ctx.ints([-1])])
    return ctx.node("Cast", [ctx.node("Equal", [column, ctx.ints(range(n))])], to=ctx.float_type)


# ---- named rewrites: a pattern of graph nodes as one ONNX node --------------------------
# Each looks at the node being lowered and the nodes feeding it, and answers None where the
# pattern does not hold; a folded node must feed nothing else (ctx.sole_use), so nothing is
# computed twice.

def _commuted(G: Graph, n: int, op: str) -> list[tuple[int, int]]:
    """For a commutative binary node ``n``: (the operand that is an ``op`` node, the other)."""
    a, b = G[n].args
    return [(x, y) for x, y in ((a, b), (b, a)) if G[x].op == op]


def gemm(ctx: OnnxContext, args: Sequence[str], attrs: dict[str, Any]) -> str | None:
    """``a @ b + c`` with 2-D a and b, and c broadcastable to the product: one Gemm (an
    affine layer reads as one node, as exporters from PyTorch write it)."""
    G, n = ctx.graph, ctx.current
    for product, c in _commuted(G, n, "matmul"):
        a, b = G[product].args
        if len(G[a].shape) != 2 or len(G[b].shape) != 2 or not ctx.sole_use(product):
            continue
        try:
            if broadcast(G[c].shape, G[product].shape) != G[product].shape or len(G[c].shape) > 2:
                continue
        except ShapeError:
            continue
        return ctx.node("Gemm", [ctx.value(a), ctx.value(b), ctx.value(c)])
    return None


def batch_normalization(ctx: OnnxContext, args: Sequence[str], attrs: dict[str, Any]) -> str | None:
    """``gamma * ((x - mean) / sqrt(var + eps)) + beta`` over x [N, C] with [C] statistics,
    the eval mode of nn.nn's batchnorm layer: one BatchNormalization."""
    G, n = ctx.graph, ctx.current
    for scaled, beta in _commuted(G, n, "mul"):
        for xhat, gamma in _commuted(G, scaled, "div"):
            centred, root = G[xhat].args
            if G[centred].op != "sub" or G[root].op != "sqrt" or G[G[root].args[0]].op != "add":
                continue
            shifted = G[root].args[0]
            x, mean = G[centred].args
            for eps, var in _commuted(G, shifted, "const"):
                if G[eps].shape != () or len(G[x].shape) != 2:
                    continue
                features = (G[x].shape[1],)
                if any(G[t].shape != features for t in (gamma, beta, mean, var)):
                    continue
                if not all(ctx.sole_use(t) for t in (scaled, xhat, centred, root, shifted)):
                    continue
                return ctx.node("BatchNormalization", [ctx.value(t) for t in (x, gamma, beta, mean, var)],
                                epsilon=float(G[eps].attr("value")))
    return None
