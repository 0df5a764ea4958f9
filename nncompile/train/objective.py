"""The data loss a model minimises, read off its graph: what the trainer's sanity checks and
accuracy expect of it (the loss op's declared :class:`nncompile.ops.registry.Loss`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ir import Attrs
from ..ops import REGISTRY, OpDef

CHECKED = ("classes", "binary", "regression")   # the kinds of loss whose chance level and accuracy the checks know


@dataclass(frozen=True)
class Objective:
    """The data loss a model minimises, read off its graph: the sanity checks expect what its
    loss op declares (:class:`nncompile.ops.registry.Loss`)."""

    op: str | None = None            # the one loss op of the CHECKED kinds; None when there is none, or several
    predictions: str | None = None   # the output it scores (class scores, logits, predictions), if one is
    targets: str | None = None       # the input holding its labels or targets, if one does
    attrs: Attrs = ()                # the loss op's attributes (svm_loss's margin delta)
    mixed: bool = False              # the loss adds up several of them: no one chance level
    target_inputs: tuple[str, ...] = ()   # every input a loss op reads as its targets: never normalised

    @classmethod
    def of_file(cls, path: str | Path) -> Objective:
        import networkx as nx

        from ..elaborate import elaborate_file

        model = elaborate_file(path)
        G, target = model.graph, model.target
        if target is None:
            return cls()
        losses = [n for n in nx.ancestors(G.nx, target) | {target} if REGISTRY[G[n].op].loss is not None]
        inputs = {n: name for name, n in model.inputs.items()}
        read = tuple(sorted({inputs[a] for n in losses for a in G[n].args[1:] if a in inputs}))
        found = [n for n in losses if REGISTRY[G[n].op].loss.kind in CHECKED]
        if len(found) != 1:
            return cls(mixed=len(found) > 1, target_inputs=read)
        node = G[found[0]]
        outputs = {n: name for name, n in model.outputs.items()}
        return cls(node.op, outputs.get(node.args[0]), inputs.get(node.args[1]), node.attrs, target_inputs=read)

    @property
    def kind(self) -> str | None:
        """The loss op's kind ("classes", "binary" or "regression"); None without one."""
        return REGISTRY[self.op].loss.kind if self.op else None

    @property
    def binary(self) -> bool:
        return self.kind == "binary"

    @property
    def _opdef(self) -> OpDef:
        """The loss op, or where the graph has none the trainer knows, the one it assumes of class scores."""
        if self.op:
            return REGISTRY[self.op]
        return next(opdef for opdef in REGISTRY.values() if opdef.loss is not None and opdef.loss.assumed)

    def data_loss(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        """The loss op's value, computed here in float64 from its output and its targets by
        the code the op emits."""
        args = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in map(np.asarray, (predictions, targets))]
        return float(self._opdef.compute(args, dict(self.attrs)))

    @property
    def op_or_assumed(self) -> str:
        """The loss op's name: the graph's, or the one assumed of class scores where it has none."""
        return self._opdef.name

    def describe(self) -> str:
        return self._opdef.loss.what

    def chance(self, classes: int | None) -> tuple[float, str] | None:
        """The loss of a classifier that knows nothing yet (all scores equal), and how it follows."""
        chance = self._opdef.loss.chance
        return None if self.mixed or chance is None else chance(classes, dict(self.attrs))
