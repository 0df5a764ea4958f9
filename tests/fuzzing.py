"""Grammar-driven fuzzing of nncompile: programs written from the language, mutations of
the examples and the standard library, and the one property every input must satisfy.

The property (:func:`run_case`): whatever the text, ``nncompile compile`` either exits 1 with
a clean diagnostic (``FILE:LINE:COL: error: ...`` with the source line and a caret, or
``nncompile: error: ...``, and no traceback), or writes a module that imports and whose
``forward`` and ``value_and_grad`` run on random inputs of the declared shapes, returning
values and gradients of exactly the declared dtypes; ``nncompile eval`` keeps the same
promise. Each case runs in a forked child with a time and memory limit, so a hang or a
runaway allocation is an outcome too, not a frozen test run.

Generators take their decisions from a :class:`Choices`, so one generator serves both the
hypothesis strategies of tests/test_fuzz.py (which shrink a failure to a small program) and
the long profile here (``bash scripts/fuzz.sh N``: N seeded programs, a summary of outcomes
by class and one minimised repro per distinct failure).
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import importlib.util
import inspect
import io
import json
import linecache
import os
import random
import re
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from math import prod
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np

from nncompile.ops import REGISTRY

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
SEEDS = {p.name: p.read_text(encoding="utf-8")
         for p in [*sorted((ROOT / "examples").glob("*.nn")), ROOT / "nncompile" / "stdlib" / "nn.nn"]}

# ---- where decisions come from ----------------------------------------------------------


class Choices(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def chance(self, p: float) -> bool: ...


class RandomChoices:
    """Decisions from a seeded ``random.Random``: the long profile's source."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


class HypothesisChoices:
    """Decisions drawn by hypothesis, so a failure shrinks: every choice shrinks towards the
    first option, the smallest number and "no"."""

    def __init__(self, draw: Callable):
        from hypothesis import strategies as st
        self.draw, self.st = draw, st

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.draw(self.st.integers(0, len(options) - 1))]

    def chance(self, p: float) -> bool:
        return self.draw(self.st.integers(0, 999)) >= round(1000 * (1 - p))


# ---- programs written from the language ---------------------------------------------------

Dim = "int | str"   # a fixed size, a const's name or a symbolic dim
INITIALISERS = ("zeros()", "ones()", "constant(value=0.5)", "normal(0.01)", "normal(std=0.1, mean=1)",
                "randn()", "uniform(-0.1, 0.1)", "uniform(a=0, b=1)", "xavier()", "xavier_uniform()",
                "glorot()", "he()", "he_uniform()", "kaiming()", "lecun()", "lecun_uniform()")
UNARY = ("exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "softplus", "gelu")
# Any other one-operand elementwise op (fusable, or a composite such as silu) comes from the
# registry, so a new one is fuzzed without being named here, with its attributes' defaults.
CONV_NET = ("conv2d", "max_pool2d", "avg_pool2d", "global_avg_pool2d", "flatten")   # written by _conv
REGISTERED_UNARY = tuple(name for name, d in REGISTRY.items() if d.public and d.arity == 1
                         and (d.scalar is not None or d.composite is not None)
                         and name not in UNARY + ("leaky_relu", "elu", "var", "std", "clip") + CONV_NET)
REDUCTIONS = ("sum", "mean", "max", "min", "var", "std")   # var and std: composites, but reductions
COMPARISONS = ("<", ">", "<=", ">=", "==", "!=")
STDLIB_LAYERS = ("linear", "affine", "dense", "mlp", "maxout_linear", "batchnorm", "dense_bn", "dense_dropout")


@dataclass
class Value:
    """A named tensor the program can use: its shape (ints and symbolic dims) and dtype."""

    name: str
    shape: tuple
    dtype: str = "float"
    bound: int | None = None   # int values: every entry lies in [0, bound)
    computed: bool = True      # False for inputs and params


class ProgramWriter:
    """Writes one .nn program, statement by statement, keeping track of every value's type so
    that the program is well-typed, except where ``ill_typed`` says to break a rule on purpose."""

    def __init__(self, c: Choices, ill_typed: float = 0.08):
        self.c, self.ill_typed = c, ill_typed
        self.lines: list[str] = []
        self.values: list[Value] = []
        self.params: list[Value] = []
        self.consts: dict[str, int] = {}
        self.used: set[str] = set()        # ops and layers called, for the coverage test
        self.counter = 0
        self.stdlib = False
        self.losses: list[Value] = []

    # -- helpers
    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def dim(self) -> Dim:
        """A fixed dim: a literal or a const."""
        if self.consts and self.c.chance(0.3):
            return self.c.choice(sorted(self.consts))
        return self.c.integer(1, 5)

    def size(self, d: Dim) -> int | None:
        return d if isinstance(d, int) else self.consts.get(d)

    def text(self, shape: Sequence) -> str:
        return "[" + ", ".join(map(str, shape)) + "]"

    def same_dims(self, a: Dim, b: Dim) -> bool:
        return a == b or (self.size(a) is not None and self.size(a) == self.size(b))

    def floats(self, where: Callable[[Value], bool] = lambda v: True) -> list[Value]:
        return [v for v in self.values if v.dtype == "float" and where(v)]

    def pick(self, where: Callable[[Value], bool] = lambda v: True) -> Value | None:
        options = self.floats(where)
        return self.c.choice(options) if options else None

    def assign(self, expr: str, shape: tuple, dtype: str = "float", stem: str = "v", bound: int | None = None
               ) -> Value:
        name = self.fresh(stem)
        self.lines.append(f"{name} = {expr}")
        value = Value(name, tuple(shape), dtype, bound)
        self.values.append(value)
        return value

    def param(self, shape: tuple) -> Value:
        name = self.fresh("W")
        init = self.c.choice(INITIALISERS)
        if not shape and self.c.chance(0.3):
            init = str(self.c.choice((0.5, -1, 2.0, 1e-3)))
        self.lines.append(f"param {name}: {self.text(shape)} = {init}" if shape or self.c.chance(0.5)
                          else f"param {name} = {init}")
        value = Value(name, tuple(shape), computed=False)
        self.values.append(value)
        self.params.append(value)
        return value

    def matrix_like(self) -> Value:
        """A float value of rank 2 whose last dim is fixed (so a weight can follow it)."""
        v = self.pick(lambda v: len(v.shape) == 2 and self.size(v.shape[1]) is not None)
        return v if v is not None else self.input(("N", self.dim()))

    def input(self, shape: tuple, dtype: str = "float", bound: int | None = None) -> Value:
        name = self.fresh("x" if dtype == "float" else "y")
        self.lines.append(f"input {name}: {dtype}{self.text(shape)}")
        value = Value(name, tuple(shape), dtype, bound, computed=False)
        self.values.append(value)
        return value

    def labels(self, batch: Dim, classes: int) -> Value:
        found = [v for v in self.values if v.dtype == "int" and len(v.shape) == 1 and v.shape[0] == batch
                 and v.bound == classes and v.name.startswith("y")]
        return found[0] if found else self.input((batch,), "int", classes)

    # -- the header
    def header(self) -> None:
        if self.c.chance(0.1):
            self.lines.append("dtype float64")
        if self.c.chance(0.35):
            self.stdlib = True
            self.lines.append("import nn")
        for _ in range(self.c.integer(0, 3)):
            name = self.fresh("D")
            if self.consts and self.c.chance(0.3):
                other = self.c.choice(sorted(self.consts))
                self.consts[name] = self.consts[other] * 2
                self.lines.append(f"const {name} = {other} * 2")
            else:
                self.consts[name] = self.c.integer(1, 6)
                self.lines.append(f"const {name} = {self.consts[name]}")
        if self.c.chance(0.2):
            self.lines.append(f"const reg{self.fresh('')} = {self.c.choice(('1e-3', '0.5', '2.5E+1', '.25'))}")
        for _ in range(self.c.integer(1, 3)):
            rank = self.c.choice((0, 1, 2, 2, 2, 3))
            if rank == 0:
                name = self.fresh("s")
                self.lines.append(f"input {name} = {self.c.choice(('-2', '0.5', '3', '1e-3', '0'))}")
                self.values.append(Value(name, (), computed=False))
                continue
            shape = (("N",) if self.c.chance(0.7) else ()) + tuple(self.dim() for _ in range(rank))
            shape = shape[:rank]
            if all(isinstance(d, int) for d in shape) and prod(shape) <= 6 and self.c.chance(0.4):
                name = self.fresh("u")
                self.lines.append(f"input {name}: float{self.text(shape)} = {self.literal(shape)}")
                self.values.append(Value(name, shape, computed=False))
            else:
                self.input(shape)

    def literal(self, shape: Sequence[int]) -> str:
        if not shape:
            return str(self.c.choice((-1.5, 0, 2, 0.25)))
        return "[" + ", ".join(self.literal(shape[1:]) for _ in range(shape[0])) + "]"

    # -- statements
    def statement(self) -> None:
        if self.c.chance(self.ill_typed):
            return self.sabotage()
        for _ in range(4):
            builder = self.c.choice(BUILDERS)
            if builder(self) is not None:
                return

    def sabotage(self) -> None:
        """A statement that breaks one rule: a clean diagnostic is the only right answer."""
        kind = self.c.integer(0, 6)
        a = self.pick() or self.input(("N", 3))
        b = self.c.choice(self.values)
        if kind == 0:
            self.lines.append(f"{self.fresh('bad')} = {a.name} @ {b.name}")
        elif kind == 1:
            self.lines.append(f"{self.fresh('bad')} = {self.c.choice(UNARY)}({a.name}, {b.name})")
        elif kind == 2:
            attr = self.c.choice(("axis=7", "axis=1.5", "keepdims=3", "axis=[0, 0]"))
            self.lines.append(f"{self.fresh('bad')} = {self.c.choice(('sum', 'mean', 'max', 'softmax'))}({a.name}, {attr})")
        elif kind == 3:
            self.lines.append(f"{self.fresh('bad')} = {a.name} + undefined_name")
        elif kind == 4:
            self.lines.append(f"{a.name} = {a.name} * 2")            # defined twice
        elif kind == 5:
            self.lines.append(f"{self.fresh('bad')} = dropout({a.name}, p={self.c.choice(('1', '-0.5', '2'))})")
        else:
            self.lines.append(f"{self.fresh('bad')} = {a.name}[{self.c.choice(('99', ':, 99', '0:0', '1.5'))}]")

    def finish(self) -> str:
        """The loss, the outputs and ``minimize``: the program's last lines."""
        if self.losses and self.c.chance(0.7):
            terms = [v.name for v in self.losses]
        else:
            v = self.pick() or self.input(("N", 2))
            terms = [f"{self.c.choice(('sum', 'mean'))}({v.name})" if v.shape else v.name]
        if self.params and self.c.chance(0.3):
            penalty = self.c.choice(("l2", "l1"))
            self.used.add(penalty)
            terms.append(f"1e-3 * {penalty}({', '.join(p.name for p in self.params[:3])})")
        computed = [v for v in self.values if v.computed]
        shown = computed[-self.c.integer(1, 3):] if computed else []
        if shown:
            self.lines.append(f"output {', '.join(v.name for v in shown)}")
        loss = f"loss = {' + '.join(terms)}"
        if self.c.chance(0.15):
            self.lines.append(f"train {{\n    {loss}\n    minimize loss\n}}")
        elif self.c.chance(0.1) and not shown:   # no minimize: the single scalar output is differentiated
            self.lines += [loss, "output loss"]
        else:
            self.lines += [loss, "minimize loss"]
        return "\n".join(self.lines) + "\n"


def write_program(c: Choices, ill_typed: float = 0.08) -> tuple[str, set[str]]:
    """A random .nn program and the ops and layers it calls."""
    w = ProgramWriter(c, ill_typed)
    w.header()
    for _ in range(c.integer(1, 7)):
        w.statement()
    return w.finish(), w.used


def _elementwise_unary(w: ProgramWriter):
    x = w.pick()
    if x is None:
        return None
    op = w.c.choice(UNARY + ("leaky_relu", "elu", "neg") + REGISTERED_UNARY)
    w.used.add(op)
    if op == "neg":
        return w.assign(f"-{x.name}" if w.c.chance(0.8) else f"+{x.name}", x.shape)
    if op in ("leaky_relu", "elu"):
        alpha = w.c.choice(("", ", 0.1", ", alpha=0.2", ", alpha=1.0", ", alpha=0"))
        return w.assign(f"{op}({x.name}{alpha})", x.shape)
    return w.assign(f"{op}({x.name})", x.shape)


def _broadcast_partner(w: ProgramWriter, x: Value) -> tuple[str, tuple]:
    """Something that broadcasts with x: a number, x itself, a value of a suffix shape."""
    kind = w.c.integer(0, 3)
    if kind == 0:
        return w.c.choice(("2", "0.5", "1e-3", "0", "3")), x.shape
    if kind == 1:
        return x.name, x.shape
    same = w.pick(lambda v: len(v.shape) <= len(x.shape) and all(
        w.same_dims(a, b) for a, b in zip(reversed(v.shape), reversed(x.shape))))
    if same is not None:
        return same.name, x.shape
    if x.shape and w.size(x.shape[-1]) is not None:
        return w.param((x.shape[-1],)).name, x.shape
    return x.name, x.shape


def _binary(w: ProgramWriter):
    x = w.pick()
    if x is None:
        return None
    other, shape = _broadcast_partner(w, x)
    op = w.c.choice(("add", "sub", "mul", "div", "pow", "maximum", "minimum"))
    w.used.add(op)
    symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/", "pow": "**"}.get(op)
    if op == "pow":
        exponent = w.c.choice(("2", "0.5", "3", "0", other))
        return w.assign(f"{x.name} ** {exponent}" if w.c.chance(0.8) else f"pow({x.name}, {exponent})", shape)
    if symbol is None or w.c.chance(0.2):
        a, b = (x.name, other) if w.c.chance(0.7) else (other, x.name)
        return w.assign(f"{op}({a}, {b})", shape)
    a, b = (x.name, other) if w.c.chance(0.7) else (other, x.name)
    return w.assign(f"{a} {symbol} {b}", shape)


def _matmul(w: ProgramWriter):
    x = w.matrix_like()
    w.used.add("matmul")
    out = w.dim()
    weight = w.param((x.shape[1], out))
    expr = f"{x.name} @ {weight.name}" if w.c.chance(0.8) else f"matmul({x.name}, {weight.name})"
    return w.assign(expr, (x.shape[0], out))


def _reduce(w: ProgramWriter):
    x = w.pick(lambda v: len(v.shape) >= 1)
    if x is None:
        return None
    op = w.c.choice(REDUCTIONS)
    w.used.add(op)
    rank = len(x.shape)
    keep = w.c.chance(0.3)
    kind = w.c.integer(0, 2)
    if kind == 0:
        shape = tuple(1 for _ in x.shape) if keep else ()
        return w.assign(f"{op}({x.name}{', keepdims=true' if keep else ''})", shape)
    axes = sorted({w.c.integer(0, rank - 1) for _ in range(1 if kind == 1 else w.c.integer(1, rank))})
    written = [a - rank if w.c.chance(0.3) else a for a in axes]
    axis = str(written[0]) if kind == 1 else w.text(written)
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)) if keep else \
        tuple(d for i, d in enumerate(x.shape) if i not in axes)
    text = f"{op}({x.name}, {axis})" if kind == 1 and w.c.chance(0.3) else \
        f"{op}({x.name}, axis={axis}{', keepdims=true' if keep else ''})"
    return w.assign(text, shape)


def _reshape(w: ProgramWriter):
    x = w.pick(lambda v: len(v.shape) >= 1 and all(w.size(d) is not None for d in v.shape[1:]))
    if x is None:
        return None
    w.used.add("reshape")
    rest = prod(w.size(d) for d in x.shape[1:])
    lead = x.shape[0]
    if isinstance(lead, str) or w.size(lead) is None:
        target = (lead, w.c.choice((rest, -1)))
        return w.assign(f"reshape({x.name}, {w.text(target)})", (lead, rest))
    total = w.size(lead) * rest
    target = w.c.choice(((total,), (-1,), (total, 1), (1, -1)))
    shape = tuple(total if d == -1 and len(target) == 1 else (total if d == -1 else d) for d in target)
    return w.assign(f"reshape({x.name}, {w.text(target)})", shape)


def _transpose(w: ProgramWriter):
    x = w.pick(lambda v: len(v.shape) >= 2)
    if x is None:
        return None
    w.used.add("transpose")
    if w.c.chance(0.25):   # numpy's .T, on a name or on a bracketed expression
        return w.assign(f"{x.name}.T" if w.c.chance(0.6) else f"({x.name} * 2).T", tuple(reversed(x.shape)))
    if w.c.chance(0.35):
        return w.assign(f"transpose({x.name})", tuple(reversed(x.shape)))
    left, axes = list(range(len(x.shape))), []
    while left:
        axes.append(left.pop(w.c.integer(0, len(left) - 1)))
    return w.assign(f"transpose({x.name}, {w.text(axes)})", tuple(x.shape[a] for a in axes))


def _concat(w: ProgramWriter):
    x = w.pick(lambda v: len(v.shape) >= 1)
    if x is None:
        return None
    w.used.add("concat")
    axis = w.c.integer(0, len(x.shape) - 1)
    if w.size(x.shape[axis]) is None:   # a symbolic axis cannot be joined along
        return None
    n = w.c.integer(2, 3)
    shape = tuple(w.size(d) * n if i == axis else d for i, d in enumerate(x.shape))
    axis_text = f", axis={axis}" if axis or w.c.chance(0.5) else ""
    return w.assign(f"concat({', '.join([x.name] * n)}{axis_text})", shape)


def _along_axis(w: ProgramWriter):
    x = w.pick(lambda v: len(v.shape) >= 1)
    if x is None:
        return None
    op = w.c.choice(("softmax", "log_softmax"))
    w.used.add(op)
    axis = w.c.choice(("", f", axis={w.c.integer(-len(x.shape), len(x.shape) - 1)}"))
    return w.assign(f"{op}({x.name}{axis})", x.shape)


def _maxout(w: ProgramWriter):
    x = w.pick(lambda v: len(v.shape) >= 1 and w.size(v.shape[-1]) is not None)
    if x is None:
        return None
    size = w.size(x.shape[-1])
    k = w.c.choice([k for k in range(1, size + 1) if size % k == 0])
    w.used.add("maxout")
    text = f"maxout({x.name}, k={k})" if w.c.chance(0.7) else f"maxout({x.name}, {k})"
    return w.assign(text, x.shape[:-1] + (size // k,))


def _dropout(w: ProgramWriter):
    x = w.pick()
    if x is None:
        return None
    w.used.add("dropout")
    p = w.c.choice(("", ", p=0.5", ", 0.25", ", p=0"))
    if w.c.chance(0.3):   # the documented train/eval pattern
        name = w.fresh("d")
        w.lines += [f"train {{\n    {name} = dropout({x.name}{p})\n}}", f"eval {{\n    {name} = {x.name}\n}}"]
        value = Value(name, x.shape)
        w.values.append(value)
        return value
    return w.assign(f"dropout({x.name}{p})", x.shape)


def _classification_loss(w: ProgramWriter):
    s = w.pick(lambda v: len(v.shape) == 2 and w.size(v.shape[1]) is not None)
    if s is None:
        return None
    classes = w.size(s.shape[1])
    op = w.c.choice(("softmax_cross_entropy", "svm_loss", "probs"))
    if op == "probs":
        w.used.add("softmax_cross_entropy")
        t = w.pick(lambda v: v.shape == s.shape and v is not s) or s
        loss = w.assign(f"softmax_cross_entropy({s.name}, softmax({t.name}))", (), stem="loss")
    else:
        w.used.add(op)
        y = w.labels(s.shape[0], classes)
        delta = w.c.choice(("", ", delta=1.0", ", 0.5")) if op == "svm_loss" else ""
        loss = w.assign(f"{op}({s.name}, {y.name}{delta})", (), stem="loss")
    w.losses.append(loss)
    return loss


def _pairwise_loss(w: ProgramWriter):
    x = w.pick()
    if x is None:
        return None
    op = w.c.choice(("mse", "sigmoid_cross_entropy"))
    w.used.add(op)
    t = w.pick(lambda v: v.shape == x.shape and v is not x)
    target = t.name if t is not None else f"sigmoid({x.name})"
    loss = w.assign(f"{op}({x.name}, {target})", (), stem="loss")
    w.losses.append(loss)
    return loss


def _penalty(w: ProgramWriter):
    if not w.params:
        w.param((w.dim(), w.dim()))
    op = w.c.choice(("l1", "l2", "elastic_net"))
    w.used.add(op)
    some = w.params[:w.c.integer(1, len(w.params))]
    beta = w.c.choice(("", ", beta=0.5")) if op == "elastic_net" else ""
    return w.assign(f"{op}({', '.join(p.name for p in some)}{beta})", ())


def _index(w: ProgramWriter):
    x = w.pick(lambda v: len(v.shape) >= 1)
    if x is None:
        return None
    kind = w.c.integer(0, 3)
    first = x.shape[0]
    size = w.size(first)
    if kind == 0:   # an integer drops the axis (a symbolic one is checked at run time)
        i = w.c.choice((0, -1, 1)) if size is None else w.c.integer(-size, size - 1)
        return w.assign(f"{x.name}[{i}]", x.shape[1:])
    if kind == 1 and len(x.shape) >= 2 and w.size(x.shape[1]) is not None:
        n = w.size(x.shape[1])
        a = w.c.integer(0, n - 1)
        b = w.c.integer(a + 1, n)
        text = w.c.choice((f"{a}:{b}", f"{a}:", f":{b}", ":"))
        width = {f"{a}:{b}": b - a, f"{a}:": n - a, f":{b}": b, ":": n}[text]
        return w.assign(f"{x.name}[:, {text}]", (first, width) + x.shape[2:])
    if kind == 2 and len(x.shape) == 2 and w.size(x.shape[1]) is not None:
        w.used.add("arange")
        y = w.labels(first, w.size(x.shape[1]))
        rows = f"arange({first})"
        return w.assign(f"{x.name}[{rows}, {y.name}]", (first,))
    if size is not None:    # a gather with an int tensor whose entries fit the axis
        w.used.add("arange")
        n = w.c.integer(1, size)
        idx = w.assign(f"arange({n})", (n,), "int", stem="i", bound=n)
        return w.assign(f"{x.name}[{idx.name}]", (n,) + x.shape[1:])
    if w.c.chance(0.5):
        return w.assign(f"{x.name}[:]", x.shape)
    return None


def _new_axes(w: ProgramWriter):
    """``None`` and ``...`` in a subscript: x[:, None], x[None], x[..., None], x[..., 0]."""
    x = w.pick(lambda v: len(v.shape) >= 1)
    if x is None:
        return None
    kind = w.c.integer(0, 3)
    if kind == 0:
        return w.assign(f"{x.name}[:, None]", x.shape[:1] + (1,) + x.shape[1:])
    if kind == 1:
        return w.assign(f"{x.name}[None]", (1,) + x.shape)
    if kind == 2:
        return w.assign(f"{x.name}[..., None]", x.shape + (1,))
    last = w.size(x.shape[-1])
    if last is None:
        return w.assign(f"{x.name}[None, ...]", (1,) + x.shape)
    return w.assign(f"{x.name}[..., {w.c.integer(-last, last - 1)}]", x.shape[:-1])


def _compare(w: ProgramWriter):
    """A mask (a comparison, 0 or 1 in the module's dtype), used as a value or by where."""
    x = w.pick()
    if x is None:
        return None
    other, shape = _broadcast_partner(w, x)
    cmp = w.c.choice(COMPARISONS)
    a, b = (x.name, other) if w.c.chance(0.7) else (other, x.name)
    kind = w.c.integer(0, 3)
    if kind == 0:
        return w.assign(f"{a} {cmp} {b}", shape)
    if kind == 1:   # a comparison binds looser than arithmetic
        return w.assign(f"({a} + 1 {cmp} 2 * {b}) * {x.name}", shape)
    w.used.add("where")
    fallback = w.c.choice((other, "0", f"0.1 * {x.name}"))
    return w.assign(f"where({a} {cmp} {b}, {x.name}, {fallback})", shape)


def _clip(w: ProgramWriter):
    x = w.pick()
    if x is None:
        return None
    w.used.add("clip")
    lo, hi = w.c.choice((("-1", "1"), ("0", "6"), ("-0.5", "0.5"), ("0", "0")))
    text = f"clip({x.name}, {lo}, {hi})" if w.c.chance(0.6) else f"clip({x.name}, lo={lo}, hi={hi})"
    return w.assign(text, x.shape)


def _accuracy(w: ProgramWriter):
    """argmax against labels (an int mask), and the labels as one-hot targets."""
    s = w.pick(lambda v: len(v.shape) == 2 and w.size(v.shape[1]) is not None)
    if s is None:
        return None
    classes = w.size(s.shape[1])
    y = w.labels(s.shape[0], classes)
    w.used |= {"argmax", "one_hot"}
    keep = w.c.chance(0.2)
    predicted = w.assign(f"argmax({s.name}, axis=1{', keepdims=true' if keep else ''})",
                         (s.shape[0], 1) if keep else (s.shape[0],), "int", stem="p", bound=classes)
    w.assign(f"mean({predicted.name} {w.c.choice(('==', '!='))} {y.name}{'[:, None]' if keep else ''})", ())
    return w.assign(f"one_hot({y.name}, {classes}) * {s.name}", s.shape)


def _layer(w: ProgramWriter):
    x = w.matrix_like()
    name = w.fresh("blk")
    out = w.dim()
    act = w.c.choice(("relu", "tanh", "sigmoid", "leaky_relu", ""))
    arrow = " -> [B, out]" if w.c.chance(0.6) else ""
    slope = ", slope: float = 0.1" if act == "leaky_relu" else ""
    ret = "leaky_relu(h, alpha=slope)" if act == "leaky_relu" else (f"{act}(h)" if act else "h")
    body = [f"param W: [K, out] = {w.c.choice(INITIALISERS)}", "param b: [out] = zeros()"]
    if w.c.chance(0.15):
        body += ["state seen: [out] = zeros()", "z = x @ W + b",
                 "train {\n        update seen = 0.9 * seen + 0.1 * mean(z, axis=0)\n    }",
                 "h = z + 0 * seen"]
    else:
        body.append("h = x @ W + b")
    w.lines.append(f"layer {name}(x: [B, K], out: int{slope}){arrow} {{\n    " + "\n    ".join(body)
                   + f"\n    return {ret}\n}}")
    w.used.add("layer")
    kind = w.c.integer(0, 3)
    if kind == 0:
        return w.assign(f"{name}({x.name}, out={out})", (x.shape[0], out))
    if kind == 1:
        return w.assign(f"{name}({x.name}, {out}) as {w.fresh('fc')}", (x.shape[0], out))
    w.used.add("repeat")
    count = w.c.integer(1, 3)
    keep = x.shape[1]
    as_name = f" as {w.fresh('stack')}" if w.c.chance(0.4) else ""
    return w.assign(f"repeat {count} {name}({x.name}, out={keep}){as_name}", x.shape)


def _stdlib(w: ProgramWriter):
    if not w.stdlib:
        return None
    x = w.matrix_like()
    layer = w.c.choice(STDLIB_LAYERS)
    w.used.add(layer)
    out = w.dim()
    args = {"linear": f"out={out}", "affine": f"out={out}", "dense": f"out={out}",
            "mlp": f"hidden={w.dim()}, out={out}, depth={w.c.integer(1, 3)}",
            "maxout_linear": f"out={out}, k={w.c.integer(1, 3)}", "batchnorm": "momentum=0.9",
            "dense_bn": f"out={out}", "dense_dropout": f"out={out}, p=0.5"}[layer]
    shape = x.shape if layer == "batchnorm" else (x.shape[0], out)
    as_name = f" as {w.fresh('lib')}" if w.c.chance(0.5) else ""
    if w.c.chance(0.2) and layer != "batchnorm":
        w.used.add("repeat")
        return w.assign(f"repeat 2 {layer}({x.name}, {args.replace(f'out={out}', f'out={x.shape[1]}')}){as_name}",
                        x.shape)
    return w.assign(f"{layer}({x.name}, {args}){as_name}", shape)


def _conv(w: ProgramWriter):
    """A conv net's op on an image [N, C, H, W] (a new input, or an image computed before),
    with a geometry whose output sizes are whole."""
    x = w.pick(lambda v: len(v.shape) == 4 and v.shape[0] == "N" and all(w.size(d) for d in v.shape[1:]))
    if x is None:
        x = w.input(("N", w.c.integer(1, 3), w.c.integer(3, 6), w.c.integer(3, 6)))
    c, h, width = (w.size(d) for d in x.shape[1:])
    op = w.c.choice(CONV_NET)
    w.used.add(op)
    if op in ("global_avg_pool2d", "flatten"):
        return w.assign(f"{op}({x.name})", ("N", c) if op == "global_avg_pool2d" else ("N", c * h * width))
    k = w.c.integer(1, min(3 if op == "conv2d" else 2, h, width))
    padding = w.c.choice((0, k // 2))
    default = 1 if op == "conv2d" else k   # a pool's stride is its kernel unless given
    stride = w.c.choice([s for s in (default, 1, 2) if (h + 2 * padding - k) % s == 0
                         and (width + 2 * padding - k) % s == 0])
    shape = ("N", c, (h + 2 * padding - k) // stride + 1, (width + 2 * padding - k) // stride + 1)
    words = ([f"stride={stride}"] if stride != default or w.c.chance(0.3) else []) + \
        ([f"padding={padding}"] if padding or w.c.chance(0.3) else [])
    if op != "conv2d":
        return w.assign(f"{op}({', '.join([x.name, str(k), *words])})", shape)
    groups = w.c.choice([g for g in (1, 2, 3) if c % g == 0])
    filters = groups * w.c.integer(1, 2)
    operands = [x.name, w.param((filters, c // groups, k, k)).name]
    if w.c.chance(0.5):
        operands.append(w.param((filters,)).name)
    words += [f"groups={groups}"] if groups > 1 else []
    return w.assign(f"conv2d({', '.join(operands + words)})", ("N", filters, *shape[2:]))


def _state(w: ProgramWriter):
    x = w.pick(lambda v: len(v.shape) == 2 and w.size(v.shape[1]) is not None)
    if x is None:
        return None
    name = w.fresh("run")
    w.used.add("state")
    w.lines += [f"state {name}: [{x.shape[1]}] = {w.c.choice(('zeros()', 'ones()'))}",
                f"train {{\n    update {name} = 0.9 * {name} + 0.1 * mean({x.name}, axis=0)\n}}"]
    return w.assign(f"{x.name} - {name}", x.shape)


BUILDERS: tuple[Callable[[ProgramWriter], Value | None], ...] = (
    _elementwise_unary, _elementwise_unary, _binary, _binary, _matmul, _reduce, _reshape, _transpose,
    _concat, _along_axis, _maxout, _dropout, _classification_loss, _pairwise_loss, _penalty, _index,
    _layer, _stdlib, _stdlib, _state, _new_axes, _compare, _compare, _clip, _accuracy, _conv)


# ---- mutations of existing files ----------------------------------------------------------

TOKEN = re.compile(r'\s+|#[^\n]*|"[^"\n]*"|[A-Za-z_]\w*|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?'
                   r'|\*\*|->|[<>=!]=|\.\.\.|.', re.S)
VOCABULARY = ("const", "input", "param", "state", "update", "output", "minimize", "layer", "return",
              "import", "dtype", "train", "eval", "repeat", "as", "float", "int", "float32", "float64",
              "true", "false", "(", ")", "[", "]", "{", "}", ",", ":", "=", "+", "-", "*", "/", "@",
              "**", "->", ".", ";", "\n", "N", "x", "relu", "sum", "nn", '"nn.nn"', "0", "1", "-1",
              "<", ">=", "==", "!=", ".T", "None", "...", "where")
HUGE = ("1e400", "1e999", "1e999 - 1e999", "10 ** 10 ** 9", "2 ** 1000", "2 ** 63", "9" * 400, "9" * 5000,
        "9223372036854775807", "9223372036854775808", "1e-400", "0", "0.0", "-0", "(-8) ** 0.5",
        "1e308 * 10", "4294967296", "65536")
UNICODE = ("π", "名前", "naïve", "x\u200by", "\u202eevil", "e\u0301", "𝑥", "\ufeff", "Ω", "ß")
FILLERS = ("\x00", "\t", "\r", "\r\n", "\x0c", "\\\n", "\udcff", "\x1b", "&#1;", "&#xFFFE;", "&#55296;",
           "<", "&", '"', "'", "`", "$", "\\", "%", "!", "?", "~", "^", "|")


MAX_TEXT = 200_000   # a long name replaced throughout a long file could make 30 MB: long, but no file a person writes


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text)


def mutate(text: str, c: Choices, rounds: int | None = None) -> str:
    """``text`` with one to three random edits: token deletions, swaps and replacements, huge
    and non-finite numbers, unicode, control characters, deep nesting, long names and files,
    truncation."""
    for _ in range(rounds if rounds is not None else c.integer(1, 3)):
        mutated = c.choice(MUTATIONS)(text, c)
        text = mutated if len(mutated) <= MAX_TEXT else text
    return text


def _token_positions(parts: list[str], want: Callable[[str], bool]) -> list[int]:
    return [i for i, p in enumerate(parts) if want(p)]


def _delete_token(text: str, c: Choices) -> str:
    parts = tokens(text)
    where = _token_positions(parts, lambda p: not p.isspace())
    if where:
        del parts[c.choice(where)]
    return "".join(parts)


def _swap_tokens(text: str, c: Choices) -> str:
    parts = tokens(text)
    where = _token_positions(parts, lambda p: not p.isspace())
    if len(where) >= 2:
        k = c.integer(0, len(where) - 2)
        i, j = where[k], where[k + 1] if c.chance(0.7) else c.choice(where)
        parts[i], parts[j] = parts[j], parts[i]
    return "".join(parts)


def _replace_token(text: str, c: Choices) -> str:
    parts = tokens(text)
    where = _token_positions(parts, lambda p: not p.isspace())
    if where:
        parts[c.choice(where)] = c.choice(VOCABULARY)
    return "".join(parts)


def _duplicate_line(text: str, c: Choices) -> str:
    lines = text.split("\n")
    i = c.integer(0, len(lines) - 1)
    lines.insert(i, lines[i])
    return "\n".join(lines)


def _huge_number(text: str, c: Choices) -> str:
    parts = tokens(text)
    where = _token_positions(parts, lambda p: p[:1].isdigit() or (p[:1] == "." and p[1:2].isdigit()))
    if where:
        parts[c.choice(where)] = c.choice(HUGE)
    return "".join(parts)


def _unicode(text: str, c: Choices) -> str:
    parts = tokens(text)
    where = _token_positions(parts, lambda p: p[:1].isalpha() or p[:1] == "_" or p.startswith(("#", '"')))
    if where:
        i = c.choice(where)
        parts[i] = parts[i] + c.choice(UNICODE) if c.chance(0.5) else c.choice(UNICODE) + parts[i]
    return "".join(parts)


def _insert_character(text: str, c: Choices) -> str:
    i = c.integer(0, len(text))
    return text[:i] + c.choice(FILLERS) + text[i:]


def _line_endings(text: str, c: Choices) -> str:
    return c.choice((text.replace("\n", "\r\n"), text.replace("\n", "\r"), text.replace("    ", "\t"),
                     "\ufeff" + text, text.rstrip("\n"), text + "\x00"))


def _deep_nesting(text: str, c: Choices) -> str:
    depth = c.choice((30, 200, 600, 1500, 6000))
    kind = c.integer(0, 5)
    if kind == 0:
        expr = "(" * depth + "x" + ")" * depth
    elif kind == 1:
        expr = "-" * depth + "x"
    elif kind == 2:
        expr = " + ".join(["x"] * depth)
    elif kind == 3:
        expr = "[" * depth + "1" + "]" * depth
    elif kind == 4:
        expr = "exp(" * depth + "x" + ")" * depth
    else:
        expr = " ** ".join(["x"] * depth)
    return "input x = 0.5\n" + text + f"\ndeep = sum({expr})\noutput deep\n"


def _long_name(text: str, c: Choices) -> str:
    parts = tokens(text)
    where = _token_positions(parts, lambda p: p[:1].isalpha() and p not in VOCABULARY)
    long = "n" * c.choice((300, 5000))
    if where:
        target = parts[c.choice(where)]
        return "".join(long if p == target else p for p in parts)
    return text + f"\nimport {long}\n"


def _long_file(text: str, c: Choices) -> str:
    n = c.choice((300, 1500))
    body = "".join(f"v{i} = v{i - 1} * 1.0001\n" for i in range(1, n))
    return text + "\ninput v0: float[3]\n" + body + f"output v{n - 1}\n"


def _truncate(text: str, c: Choices) -> str:
    return text[:c.integer(0, len(text))]


def _splice(text: str, c: Choices) -> str:
    """A piece of another seed file pasted somewhere in this one."""
    other = SEEDS[c.choice(sorted(SEEDS))].split("\n")
    i = c.integer(0, len(other) - 1)
    lines = text.split("\n")
    j = c.integer(0, len(lines))
    return "\n".join(lines[:j] + other[i:i + c.integer(1, 4)] + lines[j:])


def _edge_statement(text: str, c: Choices) -> str:
    """One statement from the edges the issue lists, added to the file."""
    return text + "\n" + c.choice(EDGES) + "\n"


EDGES = ("input big = 1e400", "const A = 10 ** 10 ** 9", "param P: [9223372036854775807, 4] = zeros()",
         "param P: [2 ** 1000, 2] = zeros()", "const K = (-8) ** 0.5", "const L = [[1, 2], [3]]",
         "input u: float[1] = [N]", "zz = leaky_relu(sum(X), alpha=1e999)", "zz = elu(X, alpha=1e999 - 1e999)",
         "param Q: [3] = normal(std=1e999)", "layer rec(x) { return rec(x) }\nzz = rec(X)",
         "zz = repeat 1000000 relu(X)", "const v = [1, 2, 3, 4]\nzz = X * v", "import " + "m" * 300,
         'import "/dev/null"', 'import "nonexistent.nn"', "zz = X[7]", "dtype float16", "zz = max(X, X)",
         "def f(x):\n    return x", "param Z: [3] = xaiver()", "zz = X[" + "9" * 30 + "]",
         "zz = reshape(X, [" + "9" * 25 + "])", "zz = sum(X, axis=" + "9" * 20 + ")", "# &#1; &#xFFFE; &#55296;")

MUTATIONS: tuple[Callable[[str, Choices], str], ...] = (
    _delete_token, _delete_token, _swap_tokens, _replace_token, _replace_token, _duplicate_line, _huge_number,
    _huge_number, _unicode, _insert_character, _line_endings, _deep_nesting, _long_name, _long_file,
    _truncate, _splice, _edge_statement, _edge_statement)


# ---- the property -------------------------------------------------------------------------

FAILURES = ("traceback", "format", "import", "run", "dtype", "hang", "died")


@dataclass(frozen=True)
class Outcome:
    """What one case did. ``kind`` is "diagnostic" or "module" when the property holds, else
    one of FAILURES; ``signature`` identifies the failure's root (exception type and the
    frame it came from), so that a summary counts each bug once."""

    kind: str
    stage: str = ""
    signature: str = ""
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES


# The module that runs each stage; helpers (ir, shapes, syntax, ops, ...) take the stage of their caller.
STAGES = {"parser": "parse", "elaborate": "elaborate", "autodiff": "codegen", "passes": "codegen",
          "schedule": "codegen", "codegen": "codegen", "compiler": "codegen", "optim": "codegen",
          "evaluate": "eval", "render": "render", "gradcheck": "check", "cli": "cli", "files": "cli"}
POSITION = re.compile(r"(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): error: \S")
CARET = re.compile(r" {4} *\^[~^]*$")


def diagnostic_problem(stderr: str, model: Path, text: str) -> str | None:
    """Why ``stderr`` is not a clean diagnostic for ``model`` (holding ``text``), or None."""
    if "Traceback" in stderr:
        return "a traceback in the diagnostic"
    lines = stderr.split("\n")
    first = next((i for i, text in enumerate(lines) if "error: " in text), None)   # warnings may come first
    if first is None:
        return "no line says error:"
    lines = lines[first:]
    if lines[0].startswith("nncompile: error: ") and len(lines[0]) > len("nncompile: error: "):
        return None
    where = POSITION.match(lines[0])
    if where is None:
        return "the error line is neither FILE:LINE:COL: error: nor nncompile: error:"
    line, col = int(where["line"]), int(where["col"])
    if line < 1 or col < 1:
        return "a position before the start of the file"
    if len(lines) < 3 or not lines[1].startswith("    ") or not CARET.match(lines[2]):
        return "FILE:LINE:COL without the source line and a caret"
    if Path(where["file"]) == model:   # lines end at "\n", or at any of "\r\n", "\r", "\n" as Python reads
        text = text.removeprefix("\ufeff")
        readings = [text.split("\n"), text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
        if all(line > len(source) for source in readings):
            return "a line past the end of the file"
        if not any(_quotes(lines[1], source[line - 1]) for source in readings if line <= len(source)):
            return "the quoted line is not the line of the position"
    return None


def _quotes(quoted: str, line: str) -> bool:
    """Whether ``quoted`` shows ``line``: the same text up to whitespace and invisible
    characters, or a piece of it where a long line is cut short with an ellipsis."""
    def visible(text: str) -> str:
        return re.sub(r"\s+", " ", "".join(ch if ch.isprintable() else " " for ch in text)).strip()
    pieces = [p.strip() for p in re.split(r"\.\.\.|…", visible(quoted))]
    return visible(quoted) == visible(line) or all(p in visible(line) for p in pieces if p) and any(pieces)


def _frames(exc: BaseException) -> list[traceback.FrameSummary]:
    return traceback.extract_tb(exc.__traceback__)


def _origin(frames: list[traceback.FrameSummary], generated: Path | None) -> tuple[str, str]:
    """(stage, frame): the stage of the innermost frame that runs one, and the innermost
    frame in nncompile or the generated module, where the exception came from."""
    where, stage = None, None
    for frame in reversed(frames):
        path = Path(frame.filename)
        if generated is not None and path == generated:
            calls = sorted(set(re.findall(r"np\.\w+|\.\w+\(|\[", frame.line or "")))
            return "run", f"module.{frame.name}:{' '.join(calls)}"
        if "nncompile" in path.parts and "tests" not in path.parts:
            where = where or f"{path.parent.name}/{path.name}:{frame.name}:{frame.lineno}"
            stage = stage or STAGES.get(path.stem)
    if where is None:
        last = frames[-1] if frames else None
        return "?", f"{Path(last.filename).name}:{last.name}" if last else "?"
    return stage or "?", where


def _message_shape(message: str) -> str:
    """A message with its particulars (names, numbers) blanked out, for grouping."""
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message.split("\n")[0])
    return re.sub(r"\d+", "N", message)[:120]


def _failure(kind: str, exc: BaseException, generated: Path | None = None, stage: str | None = None) -> Outcome:
    where, frame = _origin(_frames(exc), generated)
    name = type(exc).__name__
    if frame.startswith("module."):   # the module's own names vary from case to case; the message's shape does not
        frame += f":{_message_shape(str(exc))}"
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])[-3000:]
    return Outcome(kind, stage or where, f"{kind}:{stage or where}:{name}:{frame}", detail)


def raised_by_module(exc: BaseException, generated: Path) -> bool:
    """The module's own check of bad inputs: a ValueError or TypeError from a ``raise``
    statement in the generated file (numpy's errors surface on a line that calls numpy)."""
    frames = _frames(exc)
    if not isinstance(exc, (ValueError, TypeError)) or not frames:
        return False
    last = frames[-1]
    return Path(last.filename) == generated and (linecache.getline(last.filename, last.lineno).strip()
                                                 .startswith("raise"))


def _cli(argv: list[str]) -> tuple[int | None, str, BaseException | None]:
    """Run ``nncompile ARGV`` in-process: (exit code, stderr, the exception if one escaped)."""
    from nncompile.cli import main
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            return main(argv), err.getvalue(), None
        except SystemExit as exc:
            return (exc.code if isinstance(exc.code, int) else 1), err.getvalue(), None
        except BaseException as exc:  # noqa: BLE001 - any escape is what we are looking for
            return None, err.getvalue(), exc


def _check_cli(argv: list[str], model: Path, text: str, verb: str) -> Outcome | None:
    """None when the command succeeded; a diagnostic or a failure otherwise."""
    code, stderr, exc = _cli(argv)
    if exc is not None:
        stage = None if verb == "compile" else verb
        return _failure("traceback", exc, stage=stage)
    if code == 0:
        return None
    problem = diagnostic_problem(stderr, model, text) if code == 1 else f"exit code {code}"
    if problem is None:
        return Outcome("diagnostic", verb, "", stderr.split("\n")[0][:300])
    message = stderr.split(": error: ", 1)[-1].replace(str(model), "MODEL")
    return Outcome("format", verb, f"format:{verb}:{problem}:{_message_shape(message)}", stderr[:2000])


def _concrete(shape: Sequence, dims: dict[str, int]) -> tuple[int, ...]:
    return tuple(dims[d] if isinstance(d, str) else d for d in shape)


def choose_dims(module, rng: np.random.Generator) -> dict[str, int]:
    """Sizes for the symbolic dims: those the defaults fix, the others from 1 to 4."""
    dims: dict[str, int] = {}
    for name, value in module.DEFAULTS.items():
        for want, got in zip(module.INPUTS[name][0], np.shape(value)):
            if isinstance(want, str):
                dims.setdefault(want, got)
    for shape, _ in module.INPUTS.values():
        for d in shape:
            if isinstance(d, str) and d not in dims:
                dims[d] = int(rng.integers(1, 5))
    return dims


def random_inputs(module, dims: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of the declared shapes and dtypes for every input without a default, int ones in
    [0, BOUNDS) (or 0, which fits any axis)."""
    inputs = {}
    for name, (shape, dtype) in module.INPUTS.items():
        if name in module.DEFAULTS:
            continue
        shape = _concrete(shape, dims)
        if dtype.startswith("int"):   # a bound may be a symbolic dim (a class count C)
            bound = module.BOUNDS.get(name, 1)
            bound = dims.get(bound, 1) if isinstance(bound, str) else bound
            inputs[name] = rng.integers(0, bound if isinstance(bound, int) and bound > 0 else 1, shape).astype(dtype)
        else:
            inputs[name] = rng.standard_normal(shape).astype(dtype)
    return inputs


RUN_BUDGET = 1 << 27   # bytes of params, state and inputs a case may allocate to run its module


def _size_problem(module, dims: dict[str, int]) -> str | None:
    """"past int64" when a declared tensor cannot exist on any machine (compile should have
    said so); "too large" when it could, but not within this harness's budget; else None."""
    declared = [*module.PARAMS.values(), *getattr(module, "STATE", {}).values(), *module.INPUTS.values()]
    sizes = [prod(_concrete(shape, dims)) for shape, _ in declared]
    if any(size >= 2 ** 63 for size in sizes):
        return "past int64"
    return "too large" if 8 * sum(sizes) > RUN_BUDGET else None


def dtype_problems(module, outputs: Sequence[dict], grads: dict, dims: dict[str, int], new_state=None
                   ) -> dict[str, str]:
    """Each kind of returned array whose dtype (or shape) differs from what the module
    declares ("grad float32 bool"), with the first name it happened to."""
    want = np.dtype(module.DTYPE)
    problems: dict[str, str] = {}
    for name, value in (item for returned in outputs for item in returned.items()):
        if name in module.OUTPUTS:
            shape, dtype = module.OUTPUTS[name]
            got = np.asarray(value)
            if got.dtype != np.dtype(dtype):
                problems.setdefault(f"output {dtype} {got.dtype}", name)
            elif got.shape != _concrete(shape, dims):
                problems.setdefault("output shape", name)
    declared = {**module.PARAMS, **module.INPUTS}
    for name, grad in grads.items():
        got = np.asarray(grad)
        if got.dtype != want:
            problems.setdefault(f"grad {want} {got.dtype}", name)
        elif name in declared and got.shape != _concrete(declared[name][0], dims):
            problems.setdefault("grad shape", name)
    for name, value in (new_state or {}).items():
        if np.asarray(value).dtype != want:
            problems.setdefault(f"state {want} {np.asarray(value).dtype}", name)
    return dict(sorted(problems.items()))


def _run_module(path: Path, progress: Callable[[str], None]) -> Outcome:
    """Import the generated module and run forward and value_and_grad on random inputs."""
    progress("import")
    spec = importlib.util.spec_from_file_location(f"fuzzed_{os.getpid()}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001
        return _failure("import", exc, path, stage="import")
    rng = np.random.default_rng(0)
    dims = choose_dims(module, rng)
    size = _size_problem(module, dims)
    if size == "past int64":
        return Outcome("run", "size", "run:size:a declared tensor has 2**63 entries or more",
                       f"dims {dims}: PARAMS {module.PARAMS}, INPUTS {module.INPUTS}"[:2000])
    if size is not None:
        return Outcome("module", "run", "", "too large to run here")
    try:
        progress("init_params")
        params = module.init_params(0)
        inputs = random_inputs(module, dims, rng)
        progress("forward")
        outputs = module.forward(params, **inputs)
        result = ({}, {})
        if hasattr(module, "value_and_grad"):   # absent when there is nothing to differentiate
            progress("value_and_grad")
            takes_rng = "rng" in inspect.signature(module.value_and_grad).parameters
            result = module.value_and_grad(params, None, np.random.default_rng(1), **inputs) if takes_rng \
                else module.value_and_grad(params, **inputs)
    except BaseException as exc:  # noqa: BLE001
        if raised_by_module(exc, path):
            return Outcome("module", "run", "", f"rejected its inputs: {exc}")
        return _failure("run", exc, path)
    trained, grads, *state = result
    problems = dtype_problems(module, (outputs, trained), grads, dims, state[0] if state else None)
    if problems:
        return Outcome("dtype", "run", f"dtype:{'; '.join(problems)}",
                       f"dims {dims}: " + ", ".join(f"{kind} ({name})" for kind, name in problems.items()))
    return Outcome("module", "run")


def check_text(text: str, workdir: Path, verbs: Sequence[str] = ("compile", "eval"),
               progress: Callable[[str], None] = lambda stage: None) -> Outcome:
    """The property, in this process: the first failure, else how the text was handled.
    ``verbs`` are the commands to run on the text, with any options after the verb."""
    model, out = workdir / "model.nn", workdir / "model_out.py"
    model.write_bytes(text.encode("utf-8", "surrogateescape"))
    out.unlink(missing_ok=True)
    decoded = model.read_bytes().decode("utf-8", "replace")
    outcome = Outcome("module")
    for command in verbs:      # "eval", or with options: "eval --seed -1"
        verb, *options = command.split(" ")
        progress(verb)
        argv = [verb, str(model), *options] + (["-o", str(out)] if verb == "compile" else [])
        result = _check_cli(argv, model, decoded, verb)
        if result is not None and result.failed:
            return result
        if verb == "compile":
            if result is not None:
                return result                     # a diagnostic: nothing to run
            outcome = _run_module(out, progress)
            if outcome.failed:
                return outcome
    return outcome


def _child(text: str, verbs: Sequence[str], write_fd: int, memory: int, dump_fd: int, dump_after: float) -> None:
    """Runs in the forked child: limits, then the check; reports progress lines, then the outcome.
    Past ``dump_after`` seconds it writes its stack to ``dump_fd``: where a hang hangs."""
    def send(kind: str, payload) -> None:
        os.write(write_fd, (json.dumps([kind, payload]) + "\n").encode())

    try:
        faulthandler.dump_traceback_later(dump_after, repeat=True, file=dump_fd)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + memory, hard))
        warnings.simplefilter("ignore")
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
        with tempfile.TemporaryDirectory(prefix="nnfuzz") as tmp:
            outcome = check_text(text, Path(tmp), verbs, lambda stage: send("stage", stage))
        send("outcome", asdict(outcome))
    except BaseException as exc:  # noqa: BLE001 - the harness itself must report, not die
        send("outcome", asdict(_failure("died", exc)))
    finally:
        os._exit(0)


@functools.cache
def warm_up() -> None:
    """Build the parser and import every command here, once, so each forked child starts warm
    (a case then costs tens of milliseconds instead of a third of a second)."""
    with tempfile.TemporaryDirectory(prefix="nnfuzz") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_text("input x = 1\noutput x\n", Path(tmp))


def run_case(text: str, *, verbs: Sequence[str] = ("compile", "eval"), timeout: float = 10.0,
             memory: int = 2 << 30) -> Outcome:
    """Check one text in a forked child: a hang past ``timeout`` seconds, a crash of the
    interpreter or an allocation past ``memory`` bytes beyond its start is an outcome too."""
    warm_up()
    read_fd, write_fd = os.pipe()
    dump_read, dump_write = os.pipe()
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        os.close(read_fd), os.close(dump_read)
        _child(text, verbs, write_fd, memory, dump_write, 0.3 * timeout)
    os.close(write_fd), os.close(dump_write)
    buffer, stage, outcome = b"", "start", None
    deadline = time.monotonic() + timeout
    try:
        while outcome is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                outcome = _hang(stage, timeout, dump_read)
                break
            chunk = os.read(read_fd, 65536)
            if not chunk:
                outcome = Outcome("died", stage, f"died:{stage}", "the child exited without an outcome")
                break
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            for line in done:
                kind, payload = json.loads(line)
                if kind == "stage":
                    stage = payload
                else:
                    outcome = Outcome(**payload)
    finally:
        if outcome is None:   # interrupted: the child must not outlive the run
            os.kill(pid, signal.SIGKILL)
        os.close(read_fd), os.close(dump_read)
        os.waitpid(pid, 0)
    return outcome


DUMPED_FRAME = re.compile(r'File "([^"]+)", line (\d+) in (\S+)')


def _own_frames(dump: str) -> list[tuple[str, str, str]]:
    """(file, function, line) of the nncompile and generated frames of one dumped stack, outermost first."""
    frames = []
    for file, line, name in DUMPED_FRAME.findall(dump):
        path = Path(file)
        if path.name == "model_out.py":
            frames.append(("module", name, line))
        elif "nncompile" in path.parts and "tests" not in path.parts:
            frames.append((f"{path.parent.name}/{path.name}", name, line))
    return frames[::-1]


def _common_prefix(stacks: list[list]) -> list:
    common = stacks[0] if stacks else []
    for other in stacks[1:]:
        common = common[:next((i for i, (a, b) in enumerate(zip(common, other)) if a != b),
                              min(len(common), len(other)))]
    return common


def _hang(stage: str, timeout: float, dump_fd: int) -> Outcome:
    """A hang, named by the frames that every stack the child dumped shares: the loop it was
    stuck in, whatever that loop happened to be calling at each dump."""
    stack = os.read(dump_fd, 1 << 20).decode(errors="replace") if select.select([dump_fd], [], [], 0)[0] else ""
    dumps = stack.split("Timeout (")[1:]
    loop = _common_prefix([_own_frames(dump) for dump in dumps])[-3:]
    where = ">".join(f"{file}:{name}" if i == 0 else name for i, (file, name, _) in enumerate(loop))
    return Outcome("hang", stage, f"hang:{stage}:{where}",
                   f"still in {stage} after {timeout:g} s\n" + (dumps[-1][:1500] if dumps else ""))


# ---- the long profile ---------------------------------------------------------------------

def long_case(seed: int) -> tuple[str, str]:
    """Case number ``seed`` of the long profile: (where it came from, its text). Half are
    programs written from the language, half mutations of a seed file or a written program."""
    c = RandomChoices(seed)
    if c.chance(0.5):
        text, _ = write_program(c)
        return "program", text
    if c.chance(0.75):
        name = c.choice(sorted(SEEDS))
        return f"mutant of {name}", mutate(SEEDS[name], c)
    text, _ = write_program(c, ill_typed=0.0)
    return "mutant of a program", mutate(text, c)


def truncations(step: int = 1) -> list[tuple[str, str]]:
    """Every seed file cut at every ``step``-th character: (where it came from, its text)."""
    return [(f"truncation of {name}", text[:i]) for name, text in sorted(SEEDS.items())
            for i in range(0, len(text), step)]


def minimise(text: str, signature: str, check: Callable[[str], Outcome], budget: int = 150) -> str:
    """The smallest text found (removing chunks of lines, then of tokens) that still fails
    with the same signature: a greedy ddmin within ``budget`` checks."""
    tries = 0

    def same(candidate: str) -> bool:
        nonlocal tries
        tries += 1
        return check(candidate).signature == signature

    for split in (lambda s: s.split("\n"), tokens):
        join = "\n".join if split is not tokens else "".join
        parts = split(text)
        chunk = max(1, len(parts) // 2)
        while chunk >= 1 and tries < budget:
            i, changed = 0, False
            while i < len(parts) and tries < budget:
                candidate = parts[:i] + parts[i + chunk:]
                if candidate and same(join(candidate)):
                    parts, changed = candidate, True
                else:
                    i += chunk
            if not changed:
                chunk //= 2
        text = join(parts)
    return text


def printable(text: str) -> str:
    """``text`` with every invisible character but newline written as an escape (\\x00, \\u200b)."""
    return "".join(ch if ch == "\n" or (ch.isprintable() and ch != "\\") else
                   ascii(ch)[1:-1] if ch != "\\" else "\\\\" for ch in text)


@dataclass
class Summary:
    tried: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    failures: dict[str, dict] = field(default_factory=dict)   # signature -> first case, count, repro

    def record(self, seed: int, source: str, text: str, outcome: Outcome) -> None:
        self.tried += 1
        self.outcomes[outcome.kind if not outcome.failed else f"{outcome.kind} in {outcome.stage}"] += 1
        self.by_source[f"{source.split(' of ')[0]}: {'failed' if outcome.failed else outcome.kind}"] += 1
        if outcome.failed:
            entry = self.failures.setdefault(outcome.signature, {"count": 0, "seed": seed, "text": text,
                                                                 "detail": outcome.detail, "kind": outcome.kind,
                                                                 "stage": outcome.stage})
            entry["count"] += 1
            if len(text) < len(entry["text"]):
                entry.update(seed=seed, text=text, detail=outcome.detail)

    def write(self, folder: Path) -> None:
        (folder / "summary.md").write_text(self.markdown(), encoding="utf-8")
        (folder / "summary.json").write_text(json.dumps(
            {"tried": self.tried, "seconds": self.seconds, "outcomes": self.outcomes,
             "failures": self.failures}, indent=1, default=str), encoding="utf-8")

    def markdown(self) -> str:
        out = [f"# nncompile fuzz summary\n\n{self.tried} cases in {self.seconds:.0f} s. Repros write invisible "
           "characters as escapes (the exact texts are in summary.json).\n", "## Outcomes\n"]
        out += [f"- {kind}: {n}" for kind, n in self.outcomes.most_common()]
        out += ["", "## By source\n"] + [f"- {k}: {n}" for k, n in sorted(self.by_source.items())]
        out += ["", f"## {len(self.failures)} distinct failures\n"]
        for sig, f in sorted(self.failures.items(), key=lambda kv: (kv[1]["kind"], kv[1]["stage"], kv[0])):
            repro = printable(f.get("repro", f["text"]))
            out += [f"### {sig}\n", f"{f['count']} cases, first at seed {f['seed']}. Minimal repro:\n",
                    "```nn", repro if len(repro) < 1500 else repro[:1500] + "\n... (truncated)", "```", "",
                    "```text", f["detail"].strip()[-1200:], "```", ""]
        return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """``python tests/fuzzing.py N [--out DIR]``: the long profile (see scripts/fuzz.sh)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("n", type=int, nargs="?", default=2000, help="how many cases (default 2000)")
    p.add_argument("--start", type=int, default=0, help="the first case's seed")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per case before it counts as a hang")
    p.add_argument("--out", type=Path, default=Path("fuzz-report"), help="where summary.md and summary.json go")
    p.add_argument("--no-eval", action="store_true", help="skip `nncompile eval` (twice as fast)")
    p.add_argument("--minimise", type=int, default=150, help="checks spent minimising each distinct failure")
    p.add_argument("--truncations", type=int, metavar="STEP", default=0,
                   help="instead of N cases: every seed file cut at every STEP-th character")
    args = p.parse_args(argv)
    verbs = ("compile",) if args.no_eval else ("compile", "eval")
    summary, started = Summary(), time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        cases = truncations(args.truncations) if args.truncations else \
            (long_case(seed) for seed in range(args.start, args.start + args.n))
        for seed, (source, text) in enumerate(cases, args.start):
            summary.record(seed, source, text, run_case(text, verbs=verbs, timeout=args.timeout))
            if summary.tried % 1000 == 0:   # a run cut short still leaves a summary
                summary.seconds = time.monotonic() - started
                summary.write(args.out)
                print(f"{summary.tried} cases, {len(summary.failures)} distinct failures, "
                      f"{summary.seconds:.0f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:   # Ctrl-C: stop generating, still minimise and write the summary
        print(f"interrupted after {summary.tried} cases", file=sys.stderr)
    for sig, f in summary.failures.items():   # a hang costs a whole timeout per try: fewer, shorter
        hang = f["kind"] == "hang"
        f["repro"] = minimise(f["text"], sig, lambda t: run_case(t, verbs=verbs, timeout=3.0 if hang else args.timeout),
                              min(args.minimise, 15) if hang else args.minimise)
    summary.seconds = time.monotonic() - started
    summary.write(args.out)
    print(f"{summary.tried} cases: " + ", ".join(f"{k} {n}" for k, n in summary.outcomes.most_common())
          + f"; {len(summary.failures)} distinct failures; see {args.out / 'summary.md'}")
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
