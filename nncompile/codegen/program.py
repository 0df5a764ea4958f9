"""What the emitter is given: an optimised graph and the values the module must return."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import NoSecondDerivative
from ..ir import Graph, Model


@dataclass
class Program:
    """What the emitter needs: an optimised graph and the values the module must return."""

    model: Model
    graph: Graph
    outputs: dict[str, int]
    grads: dict[str, int | None]           # wrt name -> its gradient node (None: no dependence)
    updates: dict[str, int] = field(default_factory=dict)  # state name -> its new value (train mode)
    trace_values: dict[int, int] = field(default_factory=dict)   # forward node -> node holding it
    trace_grads: dict[int | tuple[int, int], int] = field(default_factory=dict)   # forward node -> its adjoint;
    # (user, operand position) -> that branch's part of the adjoint, where a value fans out
    eval_program: Program | None = None   # forward()'s program, when eval mode differs from train mode
    predict_program: Program | None = None   # predict()'s: eval mode, data inputs only, no loss
    hvp_program: Program | None = None   # hvp()'s: train mode, grads are the parts of H v
    hvp_missing: NoSecondDerivative | None = None   # why there is no hvp_program: hvp() and hessian() raise it
    tangents: dict[str, int] = field(default_factory=dict)   # hvp(): param name -> the leaf holding its v


    @property
    def dim_names(self) -> list[str]:
        """The symbolic dims of the inputs, in the order they first appear (the module's DIMS)."""
        names: list[str] = []
        for n in self.model.inputs.values():
            for d in self.graph[n].shape:
                if isinstance(d, str) and d not in names:
                    names.append(d)
        return names
