"""Simplifications, each a small named rule that an op lists in its ``rewrites``.

A rule is given node ``n`` and returns the existing node that computes the same value more
cheaply, ``n`` itself when it rewrote ``n`` in place (``x ** 2`` became ``x * x``), or None
when it does not apply. :func:`nncompile.passes.simplify` tries an op's rules in order and
keeps the first answer. No rule loses broadcasting: ``x * 1`` is ``x`` only where ``x``
already has the product's shape.
"""
from __future__ import annotations

import numpy as np

from .. import shapes
from ..ir import Graph


def is_const(G: Graph, n: int, value: float) -> bool:
    """Whether node ``n`` is a constant with every entry equal to ``value``."""
    node = G[n]
    return node.op == "const" and bool(np.all(np.asarray(node.attr("value")) == value))


def same_shape(G: Graph, n: int, candidate: int) -> int | None:
    """``candidate``, where it can stand for ``n`` without losing broadcasting; else None."""
    return candidate if G[candidate].shape == G[n].shape and G[candidate].dtype == G[n].dtype else None


def drop_redundant_broadcasts(G: Graph, n: int) -> None:
    """``x * broadcast_to(c)`` -> ``x * c`` when numpy's own broadcasting gives the same shape.

    Run on every elementwise op before its own rules; it tidies the operands in place and
    lets those rules try next, so it always answers None."""
    node = G[n]
    args = list(node.args)
    for i, a in enumerate(args):
        if G[a].op == "broadcast_to":
            operand = G[a].args[0] if not G[a].attr("axes") else _broadcast_as_reshape(G, a)
            if operand is None:
                continue
            trial = args[:i] + [operand] + args[i + 1:]
            try:
                shape = shapes.broadcast(*(G[t].shape for t in trial))
            except shapes.ShapeError:
                continue
            if shape == node.shape:
                args = trial
    if tuple(args) != node.args:
        G.set(n, args=tuple(args))
    return None


def _broadcast_as_reshape(G: Graph, n: int) -> int | None:
    """``broadcast_to(expand_dims(v, axes), shape)`` (a mean's gradient, [C] -> [N, C, H, W])
    as ``reshape(v, [C, 1, 1])``: the same entries, broadcast by numpy itself where the
    elementwise op that reads it meets a full-sized operand. Its unit dims are kept and only
    the leading ones dropped, so the entries line up with the same axes; a scalar v is left
    alone (nothing to gain)."""
    node = G[n]
    v = node.args[0]
    if G[v].shape == () or G[v].dtype != node.dtype:
        return None
    dims = list(G[v].shape)
    for axis in sorted(node.attr("axes")):
        dims.insert(axis, 1)
    while dims and dims[0] == 1:
        dims.pop(0)
    if tuple(dims) == G[v].shape:
        return v
    return G.add("reshape", [v], {"shape": tuple(dims)}, loc=node.loc, scope=node.scope, grad_of=node.grad_of)


# ---- arithmetic ---------------------------------------------------------------------------

def _exponent(G: Graph, n: int) -> float | None:
    """The exponent of ``x ** k`` where it is a constant scalar."""
    k = G[G[n].args[1]]
    return k.attr("value") if k.op == "const" and k.shape == () else None


def power_of_one(G: Graph, n: int) -> int | None:
    """x ** 1 -> x."""
    return same_shape(G, n, G[n].args[0]) if _exponent(G, n) == 1 else None


def square_is_mul(G: Graph, n: int) -> int | None:
    """x ** 2 -> x * x: about 200x cheaper than np.power."""
    x = G[n].args[0]
    if _exponent(G, n) != 2 or G[x].shape != G[n].shape:
        return None
    G.set(n, op="mul", args=(x, x))
    return n


def half_power_is_sqrt(G: Graph, n: int) -> int | None:
    """x ** 0.5 -> sqrt(x)."""
    x = G[n].args[0]
    if _exponent(G, n) != 0.5 or G[x].shape != G[n].shape:
        return None
    G.set(n, op="sqrt", args=(x,))
    return n


def _unit_operand(G: Graph, n: int, value: float, *units: int) -> int | None:
    """The other operand of a binary op where operand ``units[0]`` (or else the next) is the
    constant ``value``: the first match decides."""
    for unit in units:
        if is_const(G, G[n].args[unit], value):
            return same_shape(G, n, G[n].args[1 - unit])
    return None


def mul_by_one(G: Graph, n: int) -> int | None:
    """x * 1 -> x, 1 * x -> x."""
    return _unit_operand(G, n, 1.0, 1, 0)


def _scalar_const(G: Graph, n: int) -> float | None:
    node = G[n]
    return float(node.attr("value")) if node.op == "const" and node.shape == () else None


def scale_of_scale(G: Graph, n: int) -> int | None:
    """c1 * (c2 * x) -> (c1 * c2) * x for scalar constants: one pass over x, not two (the
    gradient of ``0.5 * reg * sum(W ** 2)`` is ``reg * (2 * W)`` as autodiff writes it)."""
    node = G[n]
    for k in (0, 1):
        outer, inner = _scalar_const(G, node.args[k]), G[node.args[1 - k]]
        if outer is None or inner.op != "mul":
            continue
        for j in (0, 1):
            scale, x = _scalar_const(G, inner.args[j]), inner.args[1 - j]
            if scale is not None and G[x].shape == node.shape and G[x].dtype == node.dtype:
                both = G.add("const", (), {"value": outer * scale, "shape": (), "dtype": "float"},
                             loc=node.loc, scope=node.scope)
                G.set(n, args=(both, x))
                return n
    return None


def add_zero(G: Graph, n: int) -> int | None:
    """x + 0 -> x, 0 + x -> x."""
    return _unit_operand(G, n, 0.0, 1, 0)


def subtract_zero(G: Graph, n: int) -> int | None:
    """x - 0 -> x."""
    return _unit_operand(G, n, 0.0, 1)


def divide_by_one(G: Graph, n: int) -> int | None:
    """x / 1 -> x."""
    return _unit_operand(G, n, 1.0, 1)


def double_negation(G: Graph, n: int) -> int | None:
    """-(-x) -> x."""
    inner = G[G[n].args[0]]
    return same_shape(G, n, inner.args[0]) if inner.op == "neg" else None


def sum_of_squares_is_l2(G: Graph, n: int) -> int | None:
    """sum(x * x) over every axis -> l2(x), one BLAS dot of the flattened x instead of a
    multiply, a buffer and a reduction (the L2 term ``sum(W ** 2)``, its square already x * x)."""
    node = G[n]
    square = G[node.args[0]]
    if dict(node.attrs).get("keepdims") or square.op != "mul" or square.args[0] != square.args[1]:
        return None
    axis = dict(node.attrs).get("axis")
    rank = len(square.shape)
    if axis is not None and sorted(shapes.normalize_axes(axis, rank)) != list(range(rank)):
        return None
    x = square.args[0]
    if G[x].shape != square.shape or G[x].dtype != "float":
        return None
    G.set(n, op="l2", args=(x,), attrs=())
    return n


# ---- losses -------------------------------------------------------------------------------

def _from_log_softmax(G: Graph, n: int, then: str) -> int:
    """``op(scores, ...)`` -> ``then(log_softmax(scores), ...)``, in place. The loss and its
    gradient both start from log_softmax(scores): as one node (CSE merges the two) the
    backward pass reuses what the forward pass computed."""
    node = G[n]
    logp = G.add("log_softmax", [node.args[0]], {"axis": 1}, loc=node.loc, scope=node.scope)
    G.set(n, op=then, args=(logp, *node.args[1:]))
    return n


def share_log_softmax(G: Graph, n: int) -> int:
    """softmax_cross_entropy(s, y) -> nll(log_softmax(s), y)."""
    return _from_log_softmax(G, n, "nll")


def share_log_softmax_in_gradient(G: Graph, n: int) -> int:
    """softmax_cross_entropy_grad(s, y, g) -> softmax_nll_grad(log_softmax(s), y, g)."""
    return _from_log_softmax(G, n, "softmax_nll_grad")


# ---- images ------------------------------------------------------------------------------

def _reduced_axes(G: Graph, n: int) -> set[int]:
    """The axes of its operand that a sum, mean or sum_to node adds up."""
    node, rank = G[n], len(G[G[n].args[0]].shape)
    attrs = dict(node.attrs)
    if "dropped" in attrs:
        return {*attrs["dropped"], *attrs["kept"]}
    return set(shapes.normalize_axes(attrs.get("axis"), rank)) if attrs.get("axis") is not None else set(range(rank))


def per_channel_sum(G: Graph, n: int) -> int | None:
    """A sum or mean of an image batch [N, C, H, W] over all but its channels (batch norm's
    statistics and their gradients) -> channel_sum: two BLAS matrix-vector products instead
    of a strided reduction over three of four axes. The sum of a negation (a subtraction's
    gradient) is the negated sum of its operand, one pass over the image fewer."""
    x = G[G[n].args[0]]
    if len(x.shape) != 4 or x.dtype != "float" or not isinstance(x.shape[1], int) or _reduced_axes(G, n) != {0, 2, 3}:
        return None
    negate = x.op == "neg"
    attrs = (("mean", G[n].op == "mean"), ("negate", negate), ("shape", G[n].shape))
    G.set(n, op="channel_sum", args=(x.args[0],) if negate else G[n].args, attrs=attrs)
    return n


# ---- relu before a max pool ---------------------------------------------------------------
# relu is nondecreasing, so it commutes with a window's max: max(relu(x)) = relu(max(x)), the
# same bits, and the relu and its backward mask run on the pooled array (4x fewer entries for a
# 2 x 2 pool). Its gradient is the same too, ties included: where a window's max of x is
# positive, relu(x) equals x at every entry tied with it and is smaller elsewhere, so the first
# max of relu(x) is the first max of x, which relu passes (mask 1 there, before or after the
# pool); where it is not positive, relu(x) is all zeros, and the gradient through relu is 0 at
# every entry of the window either way (masked after routing, or routed after masking). A
# position summed over overlapping windows gets, window by window, the same addends. Equal
# values, exactly; a zero may change its sign.

def _relu_read_only_through_pool(G: Graph, r: int, attrs: tuple) -> bool:
    """Whether every reader of relu output ``r`` is a max pool with ``attrs``, that pool's
    gradient (r as its x) or relu's mask ``r > 0`` feeding only such a gradient's product:
    with both rewrites below, nothing reads the unpooled relu any more, unless it is also a
    result of the model (rules do not see the roots), which keeps it for that result."""
    for u in G.users(r):
        node = G[u]
        if node.op in ("max_pool2d", "max_pool2d_grad") and node.attrs == attrs and node.args[-1] == r \
                and r not in node.args[:-1]:
            continue
        if _is_relu_mask(G, u, r) and all(_masked_pool_grad(G, m, attrs) is not None for m in G.users(u)):
            continue
        return False
    return True


def _is_relu_mask(G: Graph, n: int, r: int) -> bool:
    node = G[n]
    return node.op == "step" and dict(node.attrs).get("cmp") == ">" and node.args[0] == r and is_const(G, node.args[1], 0.0)


def _masked_pool_grad(G: Graph, n: int, attrs: tuple | None = None) -> tuple[int, int, int] | None:
    """``(g, x, mask)`` where node n is ``max_pool2d_grad(g, relu(x)) * (relu(x) > 0)``."""
    node = G[n]
    if node.op != "mul":
        return None
    for grad, mask in (node.args, node.args[::-1]):
        pool_grad = G[grad]
        if pool_grad.op != "max_pool2d_grad" or (attrs is not None and pool_grad.attrs != attrs):
            continue
        g, r = pool_grad.args
        if G[r].op == "relu" and _is_relu_mask(G, mask, r) and pool_grad.shape == node.shape:
            return g, G[r].args[0], mask
    return None


def relu_after_max_pool(G: Graph, n: int) -> int | None:
    """max_pool2d(relu(x)) -> relu(max_pool2d(x)) where nothing else reads relu(x) (see above
    for why the values and gradients are the same)."""
    r = G[n].args[0]
    if G[r].op != "relu" or G[r].dtype != "float" or not _relu_read_only_through_pool(G, r, G[n].attrs):
        return None
    pooled = G.add("max_pool2d", [G[r].args[0]], G[n].attrs, loc=G[n].loc, scope=G[n].scope)
    G.set(n, op="relu", args=(pooled,), attrs=())
    return n


def relu_mask_after_max_pool(G: Graph, n: int) -> int | None:
    """max_pool2d_grad(g, relu(x)) * (relu(x) > 0) -> max_pool2d_grad(g * (p > 0), x) with
    p = relu(max_pool2d(x)), the forward's value after relu_after_max_pool (merged with it):
    relu's backward mask runs on the pooled gradient (see above for why it is the same)."""
    found = _masked_pool_grad(G, n)
    if found is None:
        return None
    g, x, mask = found
    grad = next(a for a in G[n].args if a != mask)
    attrs, r = G[grad].attrs, G[grad].args[1]
    if not _relu_read_only_through_pool(G, r, attrs):
        return None
    meta = {"loc": G[n].loc, "scope": G[n].scope}
    pooled = G.add("relu", [G.add("max_pool2d", [x], attrs, **meta)], (), **meta)
    masked = G.add("mul", [g, G.add("step", [pooled, G[mask].args[1]], G[mask].attrs, **meta)], (), **meta)
    G.set(n, op="max_pool2d_grad", args=(masked, x), attrs=attrs)
    return n


# ---- a term added twice ------------------------------------------------------------------

def _scaled_operands(G: Graph, b: int, n: int) -> tuple[int, int] | None:
    """``(s, big)`` where node b is ``s * big`` with s smaller than the sum n (a per-channel
    factor, a scalar) and big of n's shape."""
    node = G[b]
    if node.op != "mul" or node.dtype != "float":
        return None
    for s, big in (node.args, node.args[::-1]):
        if G[big].shape == G[n].shape and G[big].dtype == "float" and shapes.elements(G[s].shape) < shapes.elements(G[n].shape):
            return s, big
    return None


def _same_view(G: Graph, a: int, b: int) -> bool:
    """Whether a and b are one node, or the same reshape or broadcast of one node (merged later)."""
    return a == b or (G[a].op == G[b].op and G[a].op in ("reshape", "broadcast_to")
                      and (G[a].args, G[a].attrs) == (G[b].args, G[b].attrs))


def _same_product(G: Graph, b1: int, b2: int) -> bool:
    if b1 == b2:
        return True
    if not G[b1].op == G[b2].op == "mul":
        return False
    (p, q), (r, t) = G[b1].args, G[b2].args
    return (_same_view(G, p, r) and _same_view(G, q, t)) or (_same_view(G, p, t) and _same_view(G, q, r))


def twice_added_scaled(G: Graph, n: int) -> int | None:
    """(a + s * x) + s * x -> a + (2 * s) * x where nothing else reads s * x and s is smaller
    than x (batch norm's variance gradient reaches xc twice, once through each factor of
    xc * xc): the 2 meets the small factor, and one pass over the image fewer. Not the same
    bits: a + 2 b is rounded once where (a + b) + b is rounded twice (2 s and 2 (s x) are exact,
    unless |s| is above half the dtype's largest value, where 2 s overflows)."""
    node = G[n]
    for inner, b in (node.args, node.args[::-1]):
        first = G[inner]
        if first.op != "add" or first.shape != node.shape or G.users(inner) != [n]:
            continue
        for a, b1 in (first.args, first.args[::-1]):
            scaled = _scaled_operands(G, b, n)
            if scaled is None or not _same_product(G, b1, b) or not _read_only_by(G, b1, b, inner, n):
                continue
            s, big = scaled
            two = G.add("const", (), {"value": 2.0, "shape": (), "dtype": "float"}, loc=node.loc, scope=node.scope)
            doubled = G.add("mul", [s, two], (), loc=G[b].loc, scope=G[b].scope)
            G.set(n, args=(a, G.add("mul", [doubled, big], (), loc=G[b].loc, scope=G[b].scope, grad_of=G[b].grad_of)))
            return n
    return None


def _read_only_by(G: Graph, b1: int, b: int, inner: int, n: int) -> bool:
    """Whether the two terms are read by the two sums only (once each, or one node by both)."""
    if b1 == b:
        return sorted(G.users(b)) == sorted((inner, n))
    return G.users(b1) == [inner] and G.users(b) == [n]
