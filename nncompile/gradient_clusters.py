"""What a diagram draws of a model that calls ``grad()``: the gradient sub-graph each call
built sits in a cluster of its own (``grad(data_loss, X)``), apart from the forward graph.

A grad() call adds its backward nodes to the graph where it is written (the adjoints, with
``grad_of`` set, and the local gradients they multiply by), and the forward values after it
use them. Which nodes those are follows from the graph alone: everything the outputs and the
target need, less what they need without passing through an adjoint.
"""
from __future__ import annotations

from typing import Iterable

import networkx as nx

from .ir import Graph


def drawn_nodes(G: Graph, roots: Iterable[int]) -> list[int]:
    """The outputs, the target and everything they depend on, grad() sub-graphs included (the
    model's own backward pass, which no output uses, is left out), in topological order."""
    keep: set[int] = set()
    for r in roots:
        keep.add(r)
        keep.update(nx.ancestors(G.nx, r))
    return G.topological(keep)


def gradient_clusters(G: Graph, nodes: list[int], roots: Iterable[int]) -> dict[int, str]:
    """Each drawn node of a grad() sub-graph -> its cluster's label, ``grad(f, x)``: one per
    connected part (a call, or calls that share nodes)."""
    drawn = set(nodes)
    forward: set[int] = set()
    stack = [r for r in roots if r is not None and r in drawn and G[r].grad_of is None]
    while stack:   # what the roots need without going through an adjoint
        n = stack.pop()
        if n in forward:
            continue
        forward.add(n)
        stack.extend(a for a in G[n].args if G[a].grad_of is None)
    inside = drawn - forward
    parts = nx.connected_components(G.nx.subgraph(inside).to_undirected(as_view=True))
    clusters: dict[int, str] = {}
    for part in sorted(parts, key=min):
        label = _label(G, part)
        clusters.update((n, label) for n in part)
    return clusters


def _label(G: Graph, part: set[int]) -> str:
    """``grad(f, x)`` from the part's seeds (d f / d f = 1) and its adjoints of leaves."""
    targets = sorted({G[n].grad_of for n in part if G[n].op == "const" and G[n].grad_of in G})
    leaves = sorted({G[n].grad_of for n in part if G[n].grad_of in G and G[G[n].grad_of].is_leaf})
    def names(ns: list[int]) -> str:
        return ", ".join(G[n].name or "…" for n in ns)
    wrt = names(leaves)
    return f"grad({names(targets) or '…'}, {f'[{wrt}]' if len(leaves) > 1 else wrt or '…'})"
