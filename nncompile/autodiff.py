"""Reverse-mode differentiation as a graph transform.

The backward pass is built from registry ops into the same graph as the forward pass, so
every later pass (CSE, folding, fusion, scheduling) optimises both at once. Following the
lecture: each node multiplies the upstream gradient by its local gradient (the op's VJP),
gradients from fan-out branches are summed, and broadcasting is undone by summing.
"""
from __future__ import annotations

from typing import Iterable

import networkx as nx

from .errors import NoSecondDerivative
from .ir import Graph
from .ops import REGISTRY, Value, constant, sum_to


def differentiate(G: Graph, target: int, wrt: Iterable[int],
                  branches: dict[tuple[int, int], int] | None = None) -> dict[int, int]:
    """Add d(target)/d(node) to the graph for every node between ``wrt`` and ``target``.

    Returns the adjoint of each such node (the ``wrt`` leaves included, where reachable).
    ``branches``, when given, receives the parts that are summed where a value fans out
    (for diagrams): (user, operand position) -> the node of that branch's own part.
    """
    wrt = list(wrt)
    needed = nx.ancestors(G.nx, target) | {target}
    relevant: set[int] = set()
    frontier = [leaf for leaf in wrt if leaf in needed]
    while frontier:  # everything downstream of a wrt leaf, within what the target needs
        n = frontier.pop()
        if n not in relevant:
            relevant.add(n)
            frontier.extend(u for u in G.nx.successors(n) if u in needed)
    contributions: dict[int, list[int]] = {target: [_seed(G, target)]}
    uses: dict[int, list[tuple[int, int]]] = {}   # where each contribution came from
    adjoints: dict[int, int] = {}
    for n in reversed(G.topological(relevant)):
        parts = contributions.pop(n, None)
        if not parts:
            continue
        if branches is not None and len(parts) > 1:
            branches.update(zip(uses[n], parts))
        grad = parts[0]
        for part in parts[1:]:
            grad = G.add("add", [grad, part])
        node = G[n]
        if G[grad].grad_of is None:
            G.set(grad, grad_of=n, loc=node.loc, scope=node.scope)
        adjoints[n] = grad
        if node.is_leaf or not REGISTRY[node.op].differentiable:   # a mask: piecewise constant
            continue
        vjp = REGISTRY[node.op].vjp
        if vjp is None:
            _no_rule(G, n)
        locals_ = vjp(Value(G, grad), Value(G, n), *(Value(G, a) for a in node.args))
        locals_ = (locals_,) if isinstance(locals_, Value) else tuple(locals_)
        if len(locals_) != len(node.args):   # registry invariant: one gradient (or None) per operand
            raise AssertionError(f"the gradient rule of {node.op} gave {len(locals_)} gradients for "
                                 f"{len(node.args)} operands")
        for position, (arg, local) in enumerate(zip(node.args, locals_)):
            if local is None or arg not in relevant:
                continue
            contributions.setdefault(arg, []).append(sum_to(G, local.n, G[arg].shape))
            uses.setdefault(arg, []).append((n, position))
    return adjoints


def _seed(G: Graph, target: int) -> int:
    return constant(G, 1.0, G[target].shape)


def hessian_vector(G: Graph, target: int, wrt: dict[str, int], tangents: dict[str, int]) -> dict[str, int | None]:
    """Reverse over reverse: H v = d/d(wrt) of sum_p <d(target)/d(p), v_p>, built in the graph
    (Theano's ``grad(sum(g * v), x)``), so the passes optimise it like any backward pass.

    ``tangents`` maps each name of ``wrt`` to the node holding its v; returns each name's
    part of H v (None where the target does not depend on it twice: a zero).
    """
    adjoints = differentiate(G, target, wrt.values())
    inner = None
    for name, n in wrt.items():
        if n not in adjoints:
            continue
        term = G.add("sum", [G.add("mul", [adjoints[n], tangents[name]])], {"axis": None, "keepdims": False})
        inner = term if inner is None else G.add("add", [inner, term])
    if inner is None:
        return {name: None for name in wrt}
    second = differentiate(G, inner, wrt.values())
    return {name: second.get(n) for name, n in wrt.items()}


def _no_rule(G: Graph, n: int) -> None:
    """An op without a gradient rule met while differentiating: the ops that declare why
    (``OpDef.no_second_order``) are the second derivatives a model cannot ask for."""
    node = G[n]
    reason = REGISTRY[node.op].no_second_order
    if not reason:
        raise AssertionError(f"op {node.op} has no gradient rule")  # registry invariant
    raise NoSecondDerivative(f"this needs the second derivative of {node.op}, which has none: {reason}", node.loc)
