"""Graph optimisations, run once each in a fixed order (no rewrite-until-fixpoint loop).

Each pass walks the graph in topological order a single time, so compile time stays
linear in the size of the model. ``Roots`` are the values the outside world asks for
(outputs, gradients); a pass that replaces a node keeps them pointing at the survivor.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import shapes
from .ir import ARGUMENTS, Graph, Node
from .ops import REGISTRY
from .ops.rewrites import drop_redundant_broadcasts


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
    elif b.name is None and a.name is not None and b.op not in ARGUMENTS and a.grad_of is None:
        G.set(new, name=a.name, loc=a.loc or b.loc, scope=a.scope)


def eliminate_dead_code(G: Graph, roots: Roots) -> None:
    live: set[int] = set()
    stack = list(roots.values())
    while stack:
        n = stack.pop()
        if n not in live:
            live.add(n)
            stack.extend(G[n].args)
    for n in [n for n in G.nodes() if n not in live and G[n].op not in ARGUMENTS]:
        G.remove(n)


def eliminate_common_subexpressions(G: Graph, roots: Roots) -> None:
    """Hash-consing: two nodes with the same op, operands and attributes are one value."""
    seen: dict[tuple, int] = {}
    for n in G.topological():
        node = G[n]
        if node.op in ARGUMENTS:
            continue
        key = (node.op, node.args, node.attrs)
        if key in seen:
            _replace(G, roots, n, seen[key])
            G.remove(n)
        else:
            seen[key] = n


def _const_value(node: Node) -> np.ndarray:
    return np.broadcast_to(np.asarray(node.attr("value"), dtype=np.float64), node.shape)


def fold_constants(G: Graph, roots: Roots) -> None:
    """Evaluate every op whose operands are all constants at compile time."""
    for n in G.topological():
        node = G[n]
        if not node.args:   # a leaf, a size like N, a random draw: known only when the module runs
            continue
        if all(G[a].op == "const" for a in node.args):
            if node.dtype != "float" or any(G[a].dtype != "float" for a in node.args):
                continue
            inputs = [_const_value(G[a]) for a in node.args]
            if shapes.elements(node.shape) > max(16, *(v.size for v in inputs)):
                continue  # folding would inline a big array where a cheap broadcast does
            with np.errstate(all="ignore"):
                value = REGISTRY[node.op].compute(inputs, dict(node.attrs))
            folded = G.add("const", (), {"value": value.tolist(), "shape": tuple(value.shape), "dtype": "float"},
                           name=node.name, loc=node.loc, scope=node.scope, grad_of=node.grad_of)
            _replace(G, roots, n, folded)
            G.remove(n)


def _simplify_node(G: Graph, n: int) -> int | None:
    """A cheaper equivalent of node ``n`` (an existing node id), or None to keep it: the first
    answer of the op's rewrites, tried in order after an elementwise op's operands lose the
    broadcasts numpy does itself."""
    opdef = REGISTRY[G[n].op]
    rules = (drop_redundant_broadcasts, *opdef.rewrites) if opdef.elementwise else opdef.rewrites
    for rule in rules:
        better = rule(G, n)
        if better is not None:
            return better
    return None


def simplify(G: Graph, roots: Roots, rule: Callable[[Graph, int], int | None] = _simplify_node) -> None:
    """Algebraic identities (x**2 -> x*x, x*1 -> x, x+0 -> x, --x -> x) and op fusions: each
    op's ``rewrites`` (nncompile/ops/rewrites.py), one walk over the graph."""
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
    return REGISTRY[node.op].c_expression(operands, dict(node.attrs))


def _c_literal(value: float) -> str:
    if value != value:
        return "NAN"
    if value in (float("inf"), float("-inf")):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    return f"(T){float(value)!r}"
