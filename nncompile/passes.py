"""Graph optimisations, run once each in a fixed order (no rewrite-until-fixpoint loop).

Each pass walks the graph in topological order a single time, so compile time stays
linear in the size of the model. ``Roots`` are the values the outside world asks for
(outputs, gradients); a pass that replaces a node keeps them pointing at the survivor.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .ir import Graph, Node
from . import shapes as S
from .ops import REGISTRY, EmitContext

class Roots(dict):
    """The values a program must deliver (key -> node), with a reverse index so that
    replacing a node is O(1) however many roots there are."""

    def __init__(self, items=()):
        super().__init__(items)
        self.by_node: dict[int, list[Any]] = {}
        for key, n in self.items():
            self.by_node.setdefault(n, []).append(key)

    def repoint(self, old: int, new: int) -> None:
        keys = self.by_node.pop(old, [])
        for key in keys:
            self[key] = new
        if keys:
            self.by_node.setdefault(new, []).extend(keys)


def optimize(G: Graph, roots: Roots) -> None:
    """The standard pipeline: fold constants, simplify, merge duplicates, drop dead code."""
    assert isinstance(roots, Roots), "wrap the roots in passes.Roots"
    fold_constants(G, roots)
    simplify(G, roots)
    eliminate_common_subexpressions(G, roots)
    eliminate_dead_code(G, roots)


def _replace(G: Graph, roots: Roots, old: int, new: int) -> None:
    """Make ``new`` stand for ``old`` everywhere, keeping the more helpful name and location."""
    if old == new:
        return
    G.replace_uses(old, new)
    roots.repoint(old, new)
    a, b = G[old], G[new]
    if b.name is None and b.loc is None and b.grad_of is None:   # an anonymous backward temp
        G.set(new, name=a.name, loc=a.loc, scope=a.scope, grad_of=a.grad_of)
    elif b.name is None and a.name is not None and b.op not in ("input", "param", "state") and a.grad_of is None:
        G.set(new, name=a.name, loc=a.loc or b.loc, scope=a.scope)


def eliminate_dead_code(G: Graph, roots: Roots) -> None:
    live: set[int] = set()
    stack = list(roots.values())
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(G[n].args)
    for n in [n for n in G.nodes() if n not in live and G[n].op not in ("input", "param", "state")]:
        G.remove(n)


def eliminate_common_subexpressions(G: Graph, roots: Roots) -> None:
    """Hash-consing: two nodes with the same op, operands and attributes are one value."""
    seen: dict[tuple, int] = {}
    for n in G.topological():
        node = G[n]
        if node.op in ("input", "param"):
            continue
        key = (node.op, node.args, node.attrs)
        if key in seen:
            _replace(G, roots, n, seen[key])
            G.remove(n)
        else:
            seen[key] = n


class _FoldContext(EmitContext):
    dtype = "np.float64"

    def shape(self, shape) -> str:
        return repr(tuple(shape))


def _const_value(node: Node) -> np.ndarray:
    return np.broadcast_to(np.asarray(node.attr("value"), dtype=np.float64), node.shape)


def evaluate(node: Node, args: list[np.ndarray]) -> np.ndarray:
    """Run an op on concrete numbers with the very code the numpy backend emits."""
    opdef = REGISTRY[node.op]
    names = [f"a{i}" for i in range(len(args))]
    scope: dict[str, Any] = {"np": np, **dict(zip(names, args))}
    for helper in opdef.helpers:
        exec(helper, scope)  # noqa: S102 - our own registry text, never user input
    expr = opdef.emit(_FoldContext(), names, dict(node.attrs))
    return np.asarray(eval(expr, scope))  # noqa: S307 - likewise


def fold_constants(G: Graph, roots: Roots) -> None:
    """Evaluate every op whose operands are all constants at compile time."""
    for n in G.topological():
        node = G[n]
        if node.is_leaf or node.op == "dim" or not node.args:
            continue
        if all(G[a].op == "const" for a in node.args):
            if node.dtype != "float" or any(G[a].dtype != "float" for a in node.args):
                continue
            inputs = [_const_value(G[a]) for a in node.args]
            if _size(node.shape) > max(16, *(v.size for v in inputs)):
                continue  # folding would inline a big array where a cheap broadcast does
            with np.errstate(all="ignore"):
                value = evaluate(node, inputs)
            folded = G.add("const", (), {"value": value.tolist(), "shape": tuple(value.shape), "dtype": "float"},
                           name=node.name, loc=node.loc, scope=node.scope, grad_of=node.grad_of)
            _replace(G, roots, n, folded)
            G.remove(n)


def _size(shape) -> float:
    return float(np.prod([d if isinstance(d, int) else np.inf for d in shape]))


def _is_const(G: Graph, n: int, value: float) -> bool:
    node = G[n]
    return node.op == "const" and np.all(np.asarray(node.attr("value")) == value)


_SHARES_LOG_SOFTMAX = {"softmax_cross_entropy": "nll", "softmax_cross_entropy_grad": "softmax_nll_grad"}


def _simplify_node(G: Graph, n: int) -> int | None:
    """A cheaper equivalent of node ``n`` (an existing node id), or None to keep it."""
    node = G[n]
    args = node.args
    if node.op in _SHARES_LOG_SOFTMAX:
        # Loss and gradient both start from log_softmax(scores): make it one node (CSE merges
        # the two) so the backward pass reuses what the forward pass computed.
        logp = G.add("log_softmax", [args[0]], {"axis": 1}, loc=node.loc, scope=node.scope)
        G.set(n, op=_SHARES_LOG_SOFTMAX[node.op], args=(logp, *args[1:]))
        return None
    if node.op == "pow" and G[args[1]].op == "const" and G[args[1]].shape == ():
        k = G[args[1]].attr("value")
        if k == 1:
            return _same_shape(G, n, args[0])
        if k == 2 and G[args[0]].shape == node.shape:   # x ** 2 -> x * x: ~200x cheaper than np.power
            G.set(n, op="mul", args=(args[0], args[0]))
        elif k == 0.5 and G[args[0]].shape == node.shape:
            G.set(n, op="sqrt", args=(args[0],))
        return None
    if REGISTRY[node.op].elementwise:
        _drop_redundant_broadcasts(G, n)
        node = G[n]
        args = node.args
    if node.op == "mul":
        for keep, drop in ((0, 1), (1, 0)):
            if _is_const(G, args[drop], 1.0):
                return _same_shape(G, n, args[keep])
    if node.op in ("add", "sub") and _is_const(G, args[1], 0.0):
        return _same_shape(G, n, args[0])
    if node.op == "add" and _is_const(G, args[0], 0.0):
        return _same_shape(G, n, args[1])
    if node.op == "div" and _is_const(G, args[1], 1.0):
        return _same_shape(G, n, args[0])
    if node.op == "neg" and G[args[0]].op == "neg":
        return _same_shape(G, n, G[args[0]].args[0])
    return None


def _drop_redundant_broadcasts(G: Graph, n: int) -> None:
    """``x * broadcast_to(c)`` -> ``x * c`` when numpy's own broadcasting gives the same shape."""
    node = G[n]
    args = list(node.args)
    for i, a in enumerate(args):
        if G[a].op == "broadcast_to" and not G[a].attr("axes"):
            trial = args[:i] + [G[a].args[0]] + args[i + 1:]
            try:
                shape = S.broadcast(*(G[t].shape for t in trial))
            except S.ShapeError:
                continue
            if shape == node.shape:
                args = trial
    if tuple(args) != node.args:
        G.set(n, args=tuple(args))


def _same_shape(G: Graph, n: int, candidate: int) -> int | None:
    """Only rewrite to ``candidate`` when no broadcasting is lost by doing so."""
    return candidate if G[candidate].shape == G[n].shape and G[candidate].dtype == G[n].dtype else None


def simplify(G: Graph, roots: Roots, rule: Callable[[Graph, int], int | None] = _simplify_node) -> None:
    """Algebraic identities (x**2 -> x*x, x*1 -> x, x+0 -> x, --x -> x) and op fusions."""
    for n in G.topological():
        if n not in G or G[n].is_leaf:
            continue
        better = rule(G, n)
        if better is not None and better != n:
            _replace(G, roots, n, better)
            G.remove(n)


def fuse_elementwise(G: Graph, roots: Roots) -> None:
    """Merge each tree of elementwise ops into one ``fused`` node holding a C expression.

    An op joins its user's group when it has no other user, is not a result, and has the
    user's shape (so the kernel computes it once per output element). Singletons stay as
    they are: one library ufunc is already one kernel.
    """
    results = set(roots.values())
    absorbed: set[int] = set()
    for n in reversed(G.topological()):
        node = G[n]
        if n in absorbed or not _fusable(node):
            continue
        members: list[int] = []
        inputs: list[int] = []
        expr = _fused_expr(G, n, node.shape, results, members, inputs)
        if len(members) < 2:
            continue
        absorbed.update(members)
        fused = G.add("fused", inputs, {"expr": expr, "shape": node.shape, "ops": tuple(G[m].op for m in members)},
                      name=node.name, loc=node.loc, scope=node.scope, grad_of=node.grad_of)
        _replace(G, roots, n, fused)
    eliminate_dead_code(G, roots)


def _fusable(node: Node) -> bool:
    return REGISTRY[node.op].scalar is not None and node.shape != () and node.dtype == "float"


def _fused_expr(G: Graph, n: int, shape, results: set[int], members: list[int], inputs: list[int]) -> str:
    """The C expression computing node ``n`` from the group's inputs x0, x1, ..."""
    node = G[n]
    members.append(n)
    operands = []
    for a in node.args:
        arg = G[a]
        if arg.op == "const" and arg.shape == ():
            operands.append(_c_literal(arg.attr("value")))
        elif _fusable(arg) and a not in results and arg.shape == shape and G.users(a) == [n]:
            operands.append(f"({_fused_expr(G, a, shape, results, members, inputs)})")
        else:
            if a not in inputs:
                inputs.append(a)
            operands.append(f"x{inputs.index(a)}")
    return REGISTRY[node.op].scalar.format(*operands, **dict(node.attrs))


def _c_literal(value: float) -> str:
    if value != value:
        return "NAN"
    if value in (float("inf"), float("-inf")):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    return f"(T){float(value)!r}"
