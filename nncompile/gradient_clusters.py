"""What a diagram draws of a model that calls ``grad()``: the gradient sub-graph each call
built sits in a cluster of its own (``grad(data_loss, X)``), apart from the forward graph.

A grad() call adds its backward nodes to the graph where it is written (the adjoints, with
``grad_of`` set, and the local gradients they multiply by), and the forward values after it
use them. Which nodes those are follows from the graph alone: the adjoints, and the nodes
with no place in the user's text (the elaborator gives every node it adds one).
"""
from __future__ import annotations

from typing import Iterable

import networkx as nx

from .ir import ARGUMENTS, Graph, Node


def drawn_nodes(G: Graph, roots: Iterable[int]) -> list[int]:
    """The outputs, the target and everything they depend on, grad() sub-graphs included (the
    model's own backward pass, which no output uses, is left out), in topological order."""
    keep: set[int] = set()
    for r in roots:
        keep.add(r)
        keep.update(nx.ancestors(G.nx, r))
    return G.topological(keep)


def gradient_clusters(G: Graph, nodes: list[int]) -> dict[int, str]:
    """Each drawn node a grad() call built -> its cluster's label, ``grad(f, x)``: one per
    connected part (a call, or calls that share nodes; constants join their first user's)."""
    built = {n for n in nodes if _built_by_autodiff(G[n])}
    ops = {n for n in built if G[n].op != "const"}
    parts = sorted(nx.connected_components(G.nx.subgraph(ops).to_undirected(as_view=True)), key=min)
    of = {n: i for i, part in enumerate(parts) for n in part}
    for n in sorted(built - ops):   # a constant (a seed, a 1 in 1 - tanh**2) sits with the op using it
        users = [u for u in G.users(n) if u in of]
        if users:
            parts[of[users[0]]].add(n)
    clusters: dict[int, str] = {}
    for part in parts:
        label = _label(G, part)
        clusters.update((n, label) for n in part)
    return clusters


def _built_by_autodiff(node: Node) -> bool:
    """An adjoint (``grad_of`` set), or a node a gradient rule made: the only ones with no
    place in the user's text."""
    return node.grad_of is not None or (node.loc is None and node.op not in ARGUMENTS)


def _label(G: Graph, part: set[int]) -> str:
    """``grad(f, x)`` from the part's seeds (d f / d f = 1) and its adjoints of leaves."""
    targets = sorted({G[n].grad_of for n in part if G[n].op == "const" and G[n].grad_of in G})
    leaves = sorted({G[n].grad_of for n in part if G[n].grad_of in G and G[G[n].grad_of].is_leaf})
    def names(ns: list[int]) -> str:
        return ", ".join(G[n].name or G[n].op for n in ns)
    wrt = names(leaves)
    return f"grad({names(targets) or '…'}, {f'[{wrt}]' if len(leaves) > 1 else wrt or '…'})"
