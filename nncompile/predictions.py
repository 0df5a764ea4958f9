"""Which inputs of a model are labels and which outputs are predictions: what a deployed
model computes from the data alone. The module's ``predict()``, ``nncompile predict`` and the
ONNX export all cut a model here, so they agree on what a prediction is.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from .ir import Model
from .ops import REGISTRY


@dataclass(frozen=True)
class Roles:
    """What prediction leaves out of a model: its labels and the outputs on the loss's side."""

    labels: tuple[str, ...] = ()         # inputs only the loss needs (labels, targets)
    loss_side: tuple[str, ...] = ()      # outputs that are a loss, or scalars before or after the minimised one


def prediction_roles(model: Model) -> Roles:
    """Which inputs are labels and which outputs belong to the loss, read off the graph (as
    elaborated, before the passes rewrite it).

    An input is a label when it feeds the targets of a loss op (an op with a ``loss`` entry in
    nncompile/ops: softmax_cross_entropy's y, mse's targets) and never its predictions (an
    autoencoder's X, which is both, stays data), or when every output it reaches is on the
    loss's side (the t of a hand-written ``mean((pred - t) ** 2)``). An output is on the loss's
    side when it is a loss op's result, or a scalar the minimised value depends on or that
    depends on it (``data_loss``)."""
    G, target = model.graph, model.loss   # a model that minimises nothing has no loss: circuit's f is its value
    inputs = set(model.inputs.values())
    losses = _losses(model)
    before = nx.ancestors(G.nx, target) if target is not None else set()
    loss_side = {name for name, n in model.outputs.items() if n in losses or (
        target is not None and G[n].shape == () and (n in before or target in nx.ancestors(G.nx, n)))}
    side_nodes = {model.outputs[name] for name in loss_side} | losses
    targets: set[int] = set()
    predicted: set[int] = set()
    for n in (n for n in losses if REGISTRY[G[n].op].loss is not None):   # what a loss op judges, and against what
        first, *rest = G[n].args
        predicted |= (nx.ancestors(G.nx, first) | {first}) & inputs
        for t in rest:
            targets |= (nx.ancestors(G.nx, t) | {t}) & inputs
    labels = []
    for name, n in model.inputs.items():
        after = nx.descendants(G.nx, n)
        only_the_loss = target in after and after & set(model.outputs.values()) <= side_nodes
        if n not in predicted and (n in targets or only_the_loss):
            labels.append(name)
    return Roles(tuple(labels), tuple(sorted(loss_side)))


def prediction_outputs(model: Model, roles: Roles | None = None) -> dict[str, int]:
    """The outputs that are predictions (scores, probabilities): each depends on a data input,
    on no label and no loss, and needs no symbolic dim that only a label fixes (``arange(N)``
    where only y has N). ``roles`` default to this model's own."""
    roles = prediction_roles(model) if roles is None else roles
    G = model.graph
    tainted: set[int] = set()
    for n in [model.inputs[name] for name in roles.labels if name in model.inputs] + sorted(_losses(model)):
        tainted |= {n} | nx.descendants(G.nx, n)
    data = {n for name, n in model.inputs.items() if name not in roles.labels}
    return {name: n for name, n in model.outputs.items()
            if n not in tainted and name not in roles.loss_side and (nx.ancestors(G.nx, n) | {n}) & data
            and _dims_known(model, n, roles.labels)}


def _losses(model: Model) -> set[int]:
    """The loss ops' results and the minimised value."""
    G = model.graph
    found = {n for n in G.nodes() if REGISTRY[G[n].op].loss is not None}
    return found | ({model.loss} if model.loss is not None else set())


def _dims_known(model: Model, output: int, labels: tuple[str, ...]) -> bool:
    """Whether the data inputs an output reads fix every symbolic dim it needs."""
    G = model.graph
    symbols = {d for n in model.inputs.values() for d in G[n].shape if isinstance(d, str)}
    needed = {output} | nx.ancestors(G.nx, output)
    known = {d for name, n in model.inputs.items() if n in needed and name not in labels
             for d in G[n].shape if isinstance(d, str)}
    used = {d for n in needed for d in G[n].shape if isinstance(d, str)}
    used |= {v for n in needed for _, v in G[n].attrs if isinstance(v, str) and v in symbols}
    return used <= known
