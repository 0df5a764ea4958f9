"""Which outputs of a model are predictions: what an export (or a deployed model) computes
from the data alone, without the labels and without the loss."""
from __future__ import annotations

import networkx as nx

from ..ir import Model
from ..ops import REGISTRY


def label_inputs(model: Model) -> set[int]:
    """The inputs that are labels: each feeds the targets of a loss (the operands after the
    first of an op the registry marks as a loss: softmax_cross_entropy's y, mse's targets,
    the teacher's probabilities of a distillation) and never its predictions (the first
    operand), so an autoencoder's X, which is both, stays a data input."""
    G = model.graph
    inputs = set(model.inputs.values())

    def feeding(n: int) -> set[int]:
        return (nx.ancestors(G.nx, n) | {n}) & inputs

    targets: set[int] = set()
    predicted: set[int] = set()
    for n in G.nodes():
        if REGISTRY[G[n].op].loss is None:
            continue
        first, *rest = G[n].args
        predicted |= feeding(first)
        for t in rest:
            targets |= feeding(t)
    return targets - predicted


def prediction_outputs(model: Model) -> dict[str, int]:
    """The outputs that are predictions (scores, probabilities): each depends on a data
    input, and on no label and no loss (a loss op's result, or the value the file minimises).
    Computed on the graph as elaborated, before the passes rewrite it."""
    G = model.graph
    labels = label_inputs(model)
    losses = {n for n in G.nodes() if REGISTRY[G[n].op].loss is not None}
    if model.loss is not None:
        losses.add(model.loss)
    tainted = set(labels) | losses
    for n in labels | losses:
        tainted |= nx.descendants(G.nx, n)
    data = set(model.inputs.values()) - labels
    return {name: n for name, n in model.outputs.items()
            if n not in tainted and (nx.ancestors(G.nx, n) | {n}) & data}
