"""A .nn model per op and sample of the registry, with its PyTorch twin.

Each model is ``loss = sum(op(operands...) * w)`` with random weights ``w`` (an input, so its
gradient, the op's value, is compared too). In the ``intermediate`` variant every float
operand is first the output of other ops, ``h = x * a + 0.1`` with a shared scalar param
``a``: an op that overwrites an operand it still needs, or mishandles a non-leaf operand,
shows there (``out`` is not an output there, so the schedule may also reuse its buffers as
it would deep inside a model), and ``d/da`` sums the op's gradients over all its operands. The ``unweighted``
variant is plain ``sum(op(...))``: there the op's own gradient is returned as it is made
(a mask, a broadcast seed), with no multiplication to fix its dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nncompile.ir import Graph
from nncompile.ops import REGISTRY, OpDef, Sample, new_graph

from .reference import TORCH

OPERATORS = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**", "matmul": "@"}
SPELLED_AS = {"softmax_cross_entropy_probs": "softmax_cross_entropy"}  # chosen by the targets' dtype
SCALE = 1.3  # the intermediate variant's param a


def nn_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(nn_literal(v) for v in value) + "]"
    return repr(value)


def nn_type(dtype: str, shape: tuple) -> str:
    return f"{dtype}[{', '.join(map(str, shape))}]" if shape else dtype


def spell(opdef: OpDef, operands: list[str], attrs: dict) -> str:
    """The op applied to ``operands`` as a user writes it: operators, subscripts or a call."""
    if opdef.name in OPERATORS:
        return f"{operands[0]} {OPERATORS[opdef.name]} {operands[1]}"
    if opdef.name == "neg":
        return f"-{operands[0]}"
    if opdef.name == "step":
        return f"{operands[0]} {attrs['cmp']} {operands[1]}"
    if opdef.name in ("slice", "index"):
        return f"{operands[0]}[{', '.join(entry.format(*operands) for entry in attrs['key'])}]"
    args = operands + [f"{k}={nn_literal(v)}" for k, v in attrs.items()]
    return f"{SPELLED_AS.get(opdef.name, opdef.name)}({', '.join(args)})"


SYNTAX = {"neg", "slice", "index", "step"}  # internal ops written as -x, subscripts and comparisons


def reachable_ops() -> dict[str, OpDef]:
    """Every op a .nn file can produce: the public ones, and those spelled by syntax or chosen
    by a public one's dispatch."""
    return {name: d for name, d in REGISTRY.items() if d.public or name in SYNTAX or name in SPELLED_AS}


@dataclass
class OpCase:
    """One op applied to one sample's operands, as .nn text and as a PyTorch function."""

    opdef: OpDef
    sample: Sample
    variant: str  # one of VARIANTS

    @property
    def id(self) -> str:
        return f"{self.opdef.name}-{self.opdef.samples.index(self.sample)}-{self.variant}"

    @property
    def intermediate(self) -> bool:
        return self.variant == "intermediate"

    @property
    def weighted(self) -> bool:
        return self.variant != "unweighted"

    @property
    def floats(self) -> list[int]:
        return [i for i in range(len(self.sample.shapes)) if i not in self.sample.ints]

    def out_shape(self) -> tuple:
        G = new_graph()
        leaves = [G.add("input", (), {"name": f"x{i}", "shape": tuple(s),
                                      "dtype": "int" if i in self.sample.ints else "float"})
                  for i, s in enumerate(self.sample.shapes)]
        return G[G.add(self.opdef.name, leaves, {**dict(self.opdef.attrs), **self.sample.attrs})].shape

    def text(self) -> str:
        lines = [f"input x{i}: {nn_type('int' if i in self.sample.ints else 'float', tuple(s))}"
                 for i, s in enumerate(self.sample.shapes)]
        if self.weighted:
            lines.append(f"input w: {nn_type('float', self.out_shape())}")
        operands = [f"x{i}" for i in range(len(self.sample.shapes))]
        if self.intermediate:
            lines.append(f"param a = {SCALE}")
            for i in self.floats:
                lines.append(f"h{i} = x{i} * a + 0.1")
                operands[i] = f"h{i}"
        lines += [f"out = {spell(self.opdef, operands, dict(self.sample.attrs))}",
                  "loss = sum(out * w)" if self.weighted else "loss = sum(out)",
                  *([] if self.intermediate else ["output out"]), "minimize loss"]
        return "\n".join(lines) + "\n"

    def reference(self, env: dict) -> dict:
        named = {}
        operands = [env[f"x{i}"] for i in range(len(self.sample.shapes))]
        if self.intermediate:
            for i in self.floats:
                named[f"h{i}"] = operands[i] = env[f"x{i}"] * env["a"] + 0.1
        named["out"] = out = TORCH[self.opdef.name](*operands, **self.sample.attrs)
        named["loss"] = (out * env["w"] if self.weighted else out).sum()
        return named

    def params(self) -> dict[str, np.ndarray]:
        return {"a": np.array(SCALE)} if self.intermediate else {}

    def inputs(self, rng: np.random.Generator, draw) -> dict[str, np.ndarray]:
        """Operands from the op's gradient-check domain (away from its kinks and ties)."""
        shapes = self.sample.shapes
        drawn = draw(rng, self.opdef.domain, [shapes[i] for i in self.floats])
        values = dict(zip((f"x{i}" for i in self.floats), drawn))
        for i, bound in self.sample.ints.items():
            values[f"x{i}"] = rng.integers(0, bound, shapes[i])
        if self.weighted:
            values["w"] = rng.uniform(0.5, 1.5, self.out_shape())
        return values


VARIANTS = ("leaf", "intermediate", "unweighted")


def op_cases() -> list[OpCase]:
    return [OpCase(d, sample, variant) for d in reachable_ops().values()
            if d.vjp is not None or d.composite is not None
            for sample in d.samples for variant in VARIANTS]


def missing_references() -> list[str]:
    return sorted(set(reachable_ops()) - set(TORCH))
