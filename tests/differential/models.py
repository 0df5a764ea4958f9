"""Random well-typed .nn models, each written twice from one random structure: as .nn text
and as PyTorch code. Neither is derived from the other or from nncompile's IR, so a
disagreement is nncompile's (or a reference's) fault, not a shared translation's.

A model starts from a batch ``X: float[N, D]`` (N symbolic) and a broadcast partner, then
applies random steps to the values made so far: elementwise ops (operands may be the same
value: fan-out), broadcasting binary ops, reductions with axis/keepdims, matmuls with params
of every rank combination, softmax, reshapes, transposes, slices, concatenation, gathers by
integer inputs, a dense layer called several times, ``repeat`` of a residual layer, and a
param shared by two calls of a layer. The loss weights some values with random inputs and may
add softmax cross-entropy, the SVM loss, binary cross-entropy or mean squared error; plain
``sum(v)`` or ``mean(v)`` terms leave the backward pass's own arrays (masks, seeds) unmultiplied.

Inputs stay away from kinks and ties by construction (continuous random draws, never ``x - x``,
no ``max`` over values that can repeat, no batchnorm of a column that can be constant); a rough
magnitude bound per value keeps float32 from overflowing or cancelling badly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from hypothesis import strategies as st

from .opcases import nn_literal
from .reference import TORCH, F, torch

Dim = int | str
Shape = tuple[Dim, ...]
N_SIZE = 5          # the value the magnitude bound assumes for N (calls use 2..5)
MAX_MAGNITUDE = 100.0

LAYERS = {
    "block": """layer block(x: [B, K], out: int) -> [B, out] {
    param W: [K, out] = normal(0.5)
    param b: [out] = normal(0.5)
    return tanh(x @ W + b)
}""",
    "res": """layer res(x: [B, K]) -> [B, K] {
    param W: [K, K] = normal(0.5)
    return x + tanh(x @ W)
}""",
    "shared": """layer shared(x: [B, K], W: [K, M]) -> [B, M] {
    return x @ W
}""",
}


@dataclass
class Value:
    name: str
    shape: Shape
    magnitude: float          # a rough bound on |entries|
    bounded: bool = False     # within [-1, 1]: safe to exponentiate
    positive: bool = False    # within [0.2, 3]: safe to take the log or divide by
    sources: frozenset[str] = frozenset()   # the leaves it depends on
    distinct: bool = True     # no two entries equal (ties for max), but by a measure-zero accident

    @property
    def fixed_axes(self) -> list[int]:
        return [a for a, d in enumerate(self.shape) if isinstance(d, int)]


@dataclass
class Leaf:
    shape: Shape
    kind: str                 # normal | weights | targets | labels
    bound: int = 0            # labels: values in [0, bound)


@dataclass
class RandomModel:
    text: str
    torch_source: str
    inputs: dict[str, Leaf]
    params: dict[str, Leaf]

    def __repr__(self) -> str:   # what hypothesis prints for a falsifying example
        return f"RandomModel(\n--- .nn\n{self.text}--- PyTorch\n{self.torch_source})"

    def reference(self, env: dict) -> dict:
        namespace = {"env": env, "op": TORCH, "torch": torch, "F": F}
        exec(self.torch_source, namespace)  # noqa: S102 - our own generated code
        return {k: v for k, v in namespace.items() if k not in ("env", "op", "torch", "F", "N", "__builtins__")
                and hasattr(v, "requires_grad")}

    def draw_inputs(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {name: _draw(rng, leaf, n) for name, leaf in self.inputs.items()}

    def draw_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {name: _draw(rng, leaf, 0) for name, leaf in self.params.items()}


def _draw(rng: np.random.Generator, leaf: Leaf, n: int) -> np.ndarray:
    shape = tuple(n if isinstance(d, str) else d for d in leaf.shape)
    if leaf.kind == "labels":
        return rng.integers(0, leaf.bound, shape)
    if leaf.kind == "weights":
        return rng.uniform(0.5, 1.5, shape)
    if leaf.kind == "targets":
        return rng.uniform(0.0, 1.0, shape)
    return rng.standard_normal(shape) * (0.5 if leaf.kind == "param" else 1.0)


def broadcast(a: Shape, b: Shape) -> Shape | None:
    """numpy's rule, where a symbolic dim matches only itself or 1."""
    out = []
    for x, y in zip(((1,) * len(b) + a)[-max(len(a), len(b)):], ((1,) * len(a) + b)[-max(len(a), len(b)):]):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


def size(shape: Shape) -> int:
    return math.prod(N_SIZE if isinstance(d, str) else d for d in shape)


def nn_shape(shape: Shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


class Builder:
    """Accumulates a model's .nn lines and PyTorch lines as random steps are drawn."""

    def __init__(self, draw: Callable):
        self.draw = draw
        self.nn: list[str] = []
        self.py: list[str] = ["N = env['X'].shape[0]"]
        self.values: list[Value] = []
        self.inputs: dict[str, Leaf] = {}
        self.params: dict[str, Leaf] = {}
        self.layers: list[str] = []
        self.count = 0
        self.operands: list[Value] = []   # the values the current step picked
        self.pending: dict[str, Leaf] = {}   # the step's layer params, kept once its value is made
        self.state: dict[str, Shape] = {}

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def pick(self, values: list[Value] | None = None) -> Value:
        values = self.values if values is None else values
        if not values:
            raise NoCandidate
        value = self.draw(st.sampled_from(values))
        self.operands.append(value)
        return value

    def input(self, shape: Shape, kind: str = "normal", bound: int = 0, name: str | None = None) -> Value:
        name = name or self.fresh({"labels": "y", "weights": "w", "targets": "t"}.get(kind, "x"))
        dtype = "int" if kind == "labels" else "float"
        self.nn.append(f"input {name}: {dtype}{nn_shape(shape)}" if shape else f"input {name}: {dtype}")
        self.py.append(f"{name} = env[{name!r}]")
        self.inputs[name] = Leaf(shape, kind, bound)
        return Value(name, shape, 4.0, sources=frozenset([name]))

    def param(self, shape: Shape) -> Value:
        name = self.fresh("W")
        self.nn.append(f"param {name}: {nn_shape(shape)} = normal(0.5)")
        self.py.append(f"{name} = env[{name!r}]")
        self.params[name] = Leaf(shape, "param")
        value = Value(name, shape, 2.0, sources=frozenset([name]))
        self.operands.append(value)
        return value

    def layer(self, name: str) -> None:
        if name not in self.layers:
            self.layers.append(name)

    def emit(self, nn: str, py: str, shape: Shape, magnitude: float, distinct: bool = True,
             **flags: bool) -> Value | None:
        """A new value from the operands this step picked (``distinct=False``: it may hold ties)."""
        if magnitude > MAX_MAGNITUDE:
            return None
        name = self.fresh("v")
        self.nn.append(f"{name} = {nn}")
        self.py.append(f"{name} = {py}")
        sources = frozenset().union(*(v.sources for v in self.operands))
        distinct = distinct and all(v.distinct for v in self.operands)
        value = Value(name, shape, magnitude, sources=sources, distinct=distinct, **flags)
        self.operands.append(value)
        self.params.update(self.pending)
        self.pending = {}
        self.values.append(value)
        return value

    # ---- operands that keep ops inside their domains

    def positive(self, v: Value) -> tuple[str, str]:
        """v itself if it is safely positive, else a positive function of it, in [0.5, 1.5]."""
        if v.positive:
            return v.name, v.name
        return f"(sigmoid({v.name}) + 0.5)", f"(op['sigmoid']({v.name}) + 0.5)"

    # ---- the steps

    def unary(self) -> Value | None:
        v = self.pick()
        choices = ["tanh", "sigmoid", "relu", "abs", "softplus", "gelu", "elu", "leaky_relu", "neg", "log", "sqrt"]
        if v.bounded:
            choices.append("exp")
        fn = self.draw(st.sampled_from(choices))
        m = v.magnitude
        if fn == "neg":
            return self.emit(f"-{v.name}", f"-{v.name}", v.shape, m, bounded=v.bounded)
        if fn in ("log", "sqrt"):
            nn, py = self.positive(v)
            return self.emit(f"{fn}({nn})", f"op[{fn!r}]({py})", v.shape, 2.0)
        attrs = {"elu": {"alpha": 0.5}, "leaky_relu": {"alpha": 0.1}}.get(fn, {})
        nn_args = "".join(f", {k}={nn_literal(a)}" for k, a in attrs.items())
        py_args = "".join(f", {k}={a!r}" for k, a in attrs.items())
        bounded = fn in ("tanh", "sigmoid") or (v.bounded and fn in ("relu", "abs", "leaky_relu", "elu", "gelu"))
        positive = fn == "exp" or (fn == "sigmoid" and v.bounded)
        magnitude = {"tanh": 1.0, "sigmoid": 1.0, "exp": 3.0}.get(fn, m + 1)
        return self.emit(f"{fn}({v.name}{nn_args})", f"op[{fn!r}]({v.name}{py_args})", v.shape, magnitude,
                         distinct=fn != "relu", bounded=bounded, positive=positive)

    def binary(self) -> Value | None:
        a = self.pick()
        partners = [b for b in self.values if broadcast(a.shape, b.shape) is not None]
        b = self.pick(partners)
        if self.draw(st.booleans()):
            a, b = b, a
        fn = self.draw(st.sampled_from(["add", "sub", "mul", "div", "pow", "maximum", "minimum"]))
        shape = broadcast(a.shape, b.shape)
        if fn == "sub" and a is b:
            return None   # exactly zero: every op after it would sit on its kink
        if fn in ("maximum", "minimum") and a.sources & b.sources:
            return None   # maximum(Z, transpose(Z)) ties on its diagonal
        if fn in ("add", "sub"):
            symbol = "+" if fn == "add" else "-"
            return self.emit(f"{a.name} {symbol} {b.name}", f"{a.name} {symbol} {b.name}", shape,
                             a.magnitude + b.magnitude)
        if fn == "mul":
            return self.emit(f"{a.name} * {b.name}", f"{a.name} * {b.name}", shape, a.magnitude * b.magnitude,
                             bounded=a.bounded and b.bounded)
        if fn == "div":
            nn, py = self.positive(b)
            return self.emit(f"{a.name} / {nn}", f"{a.name} / {py}", shape, a.magnitude * 5)
        if fn == "pow":
            base_nn, base_py = self.positive(a)
            if b.bounded and self.draw(st.booleans()):
                return self.emit(f"{base_nn} ** {b.name}", f"op['pow']({base_py}, {b.name})", shape, 3.0)
            e = self.draw(st.sampled_from([2, 3, 0.5, -1, 1.5, 0]))
            return self.emit(f"{base_nn} ** {e}", f"op['pow']({base_py}, {float(e)!r})", a.shape, 3.5 ** abs(e),
                             distinct=e != 0)
        return self.emit(f"{fn}({a.name}, {b.name})", f"op[{fn!r}]({a.name}, {b.name})", shape,
                         max(a.magnitude, b.magnitude), bounded=a.bounded and b.bounded)

    def reduce(self) -> Value | None:
        v = self.pick([v for v in self.values if v.shape])
        fn = self.draw(st.sampled_from(["sum", "mean", "max"] if v.distinct else ["sum", "mean"]))
        rank = len(v.shape)
        axes = self.draw(st.none() | st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
        keepdims = self.draw(st.booleans())
        reduced = range(rank) if axes is None else axes
        shape = tuple((1 if keepdims else None) if a in reduced else d for a, d in enumerate(v.shape))
        shape = tuple(d for d in shape if d is not None)
        attrs = {}
        if axes is not None:
            negative = self.draw(st.booleans())
            axis = [a - rank if negative else a for a in axes]
            attrs["axis"] = axis[0] if len(axis) == 1 and self.draw(st.booleans()) else axis
        if keepdims:
            attrs["keepdims"] = True
        magnitude = v.magnitude * (size(v.shape) // max(1, size(shape)) if fn == "sum" else 1)
        nn_args = "".join(f", {k}={nn_literal(a)}" for k, a in attrs.items())
        py_args = "".join(f", {k}={a!r}" for k, a in attrs.items())
        return self.emit(f"{fn}({v.name}{nn_args})", f"op[{fn!r}]({v.name}{py_args})", shape, magnitude,
                         bounded=v.bounded and fn != "sum")

    def matmul(self) -> Value | None:
        v = self.pick([v for v in self.values if v.shape])
        pattern = self.draw(st.sampled_from(["right", "left", "gram"]))
        s = v.shape
        if pattern == "gram":   # contracts over whatever the axis is, the symbolic batch included
            if len(s) < 2:
                return self.emit(f"{v.name} @ {v.name}", f"{v.name} @ {v.name}", (), v.magnitude ** 2 * size(s))
            axes = list(range(len(s) - 2)) + [len(s) - 1, len(s) - 2]
            t = f"transpose({v.name}, {nn_literal(axes)})"
            return self.emit(f"{t} @ {v.name}", f"op['transpose']({v.name}, axes={axes!r}) @ {v.name}",
                             (*s[:-2], s[-1], s[-1]), v.magnitude ** 2 * _as_int(s[-2]), distinct=False)
        m = self.draw(st.integers(1, 3))
        if pattern == "right":           # v @ W: W is [K], [K, M] or batched [B, K, M]
            k = s[-1]
            if not isinstance(k, int):
                return None
            rank = self.draw(st.integers(1, 3))
            if rank == 3:
                batch = s[-3] if len(s) >= 3 else self.draw(st.integers(1, 2))
                batch = batch if isinstance(batch, int) else 1
                w_shape: Shape = (batch, k, m)
            else:
                w_shape = (k,) if rank == 1 else (k, m)
            w = self.param(w_shape)
            out = _matmul_shape(s, w_shape)
            return self.emit(f"{v.name} @ {w.name}", f"{v.name} @ {w.name}", out, v.magnitude * w.magnitude * k)
        k = s[0] if len(s) == 1 else s[-2]   # W @ v: W is [K] or [M, K]
        if not isinstance(k, int):
            return None
        w_shape = (k,) if self.draw(st.booleans()) else (m, k)
        w = self.param(w_shape)
        return self.emit(f"{w.name} @ {v.name}", f"{w.name} @ {v.name}", _matmul_shape(w_shape, s),
                         v.magnitude * w.magnitude * k)

    def softmax(self) -> Value | None:
        v = self.pick([v for v in self.values if v.shape])
        fn = self.draw(st.sampled_from(["softmax", "log_softmax"]))
        axis = self.draw(st.integers(-len(v.shape), len(v.shape) - 1))
        return self.emit(f"{fn}({v.name}, axis={axis})", f"op[{fn!r}]({v.name}, axis={axis})", v.shape,
                         1.0 if fn == "softmax" else v.magnitude * 2 + 3, bounded=fn == "softmax")

    def reshape(self) -> Value | None:
        v = self.pick([v for v in self.values if len(v.shape) >= 1])
        s = v.shape
        if len(s) >= 2 and all(isinstance(d, int) for d in s[-2:]):
            shape = (*s[:-2], s[-2] * s[-1])
        elif isinstance(s[-1], int) and s[-1] % 2 == 0:
            shape = (*s[:-1], 2, s[-1] // 2)
        else:
            return None
        return self.emit(f"reshape({v.name}, {nn_shape(shape)})",
                         f"op['reshape']({v.name}, shape=[{', '.join(map(str, shape))}])", shape, v.magnitude,
                         bounded=v.bounded, positive=v.positive)

    def transpose(self) -> Value | None:
        v = self.pick([v for v in self.values if len(v.shape) >= 2])
        axes = self.draw(st.permutations(range(len(v.shape))))
        shape = tuple(v.shape[a] for a in axes)
        if self.draw(st.booleans()):
            return self.emit(f"transpose({v.name}, {nn_literal(list(axes))})",
                             f"op['transpose']({v.name}, axes={list(axes)!r})", shape, v.magnitude,
                             bounded=v.bounded, positive=v.positive)
        return self.emit(f"transpose({v.name})", f"op['transpose']({v.name})", v.shape[::-1], v.magnitude,
                         bounded=v.bounded, positive=v.positive)

    def subscript(self) -> Value | None:
        v = self.pick([v for v in self.values if any(isinstance(d, int) and d >= 2 for d in v.shape)])
        axis = self.draw(st.sampled_from([a for a in v.fixed_axes if v.shape[a] >= 2]))
        n = v.shape[axis]
        if self.draw(st.booleans()):
            i = self.draw(st.integers(-n, n - 1))
            key, shape = str(i), v.shape[:axis] + v.shape[axis + 1:]
        else:
            start = self.draw(st.integers(0, n - 1))
            stop = self.draw(st.integers(start + 1, n))
            key, shape = f"{start}:{stop}", v.shape[:axis] + (stop - start,) + v.shape[axis + 1:]
        text = f"{v.name}[{', '.join([':'] * axis + [key])}]"
        return self.emit(text, text, shape, v.magnitude, bounded=v.bounded, positive=v.positive)

    def concat(self) -> Value | None:
        v = self.pick([v for v in self.values if v.fixed_axes])
        axis = self.draw(st.sampled_from(v.fixed_axes))
        same = [u for u in self.values if len(u.shape) == len(v.shape) and isinstance(u.shape[axis], int)
                and all(d == e for a, (d, e) in enumerate(zip(u.shape, v.shape)) if a != axis)]
        u = self.pick(same)
        shape = v.shape[:axis] + (v.shape[axis] + u.shape[axis],) + v.shape[axis + 1:]
        return self.emit(f"concat({v.name}, {u.name}, axis={axis})", f"op['concat']({v.name}, {u.name}, axis={axis})",
                         shape, max(v.magnitude, u.magnitude), distinct=not v.sources & u.sources,
                         bounded=v.bounded and u.bounded)

    def gather(self) -> Value | None:
        v = self.pick([v for v in self.values if len(v.shape) == 2 and isinstance(v.shape[1], int)])
        c = v.shape[1]
        if v.shape[0] == "N" and self.draw(st.booleans()):
            y = self.input(("N",), "labels", c)
            return self.emit(f"{v.name}[arange(N), {y.name}]", f"{v.name}[op['arange'](N), {y.name}]", ("N",),
                             v.magnitude)   # one entry per row: no repeats
        k = self.draw(st.integers(1, 4))
        idx = self.input((k,), "labels", c)
        text = f"{v.name}[:, {idx.name}]"
        return self.emit(text, text, (v.shape[0], k), v.magnitude, distinct=False)   # labels repeat

    def block(self) -> Value | None:
        v = self.pick([v for v in self.values if len(v.shape) == 2 and isinstance(v.shape[1], int)])
        k, m = v.shape[1], self.draw(st.integers(1, 4))
        self.layer("block")
        inst = self.fresh("L")
        self.pending.update({f"{inst}.W": Leaf((k, m), "param"), f"{inst}.b": Leaf((m,), "param")})
        return self.emit(f"block({v.name}, out={m}) as {inst}",
                         f"op['tanh']({v.name} @ env['{inst}.W'] + env['{inst}.b'])", (v.shape[0], m), 1.0,
                         bounded=True)

    def repeat(self) -> Value | None:
        v = self.pick([v for v in self.values if len(v.shape) == 2 and isinstance(v.shape[1], int)])
        k, count = v.shape[1], self.draw(st.integers(1, 3))
        self.layer("res")
        inst = self.fresh("R")
        expr = v.name
        for i in range(1, count + 1):
            self.pending[f"{inst}.{i}.W"] = Leaf((k, k), "param")
            expr = f"_res({expr}, env['{inst}.{i}.W'])"
        if "def _res" not in "\n".join(self.py):
            self.py.insert(1, "def _res(x, W):\n    return x + op['tanh'](x @ W)")
        return self.emit(f"repeat {count} res({v.name}) as {inst}", expr, v.shape, v.magnitude + count)

    def shared(self) -> Value | None:
        """One param, two calls of a layer that takes it as an argument: its gradients add up."""
        v = self.pick([v for v in self.values if len(v.shape) == 2 and isinstance(v.shape[1], int)])
        k, m = v.shape[1], self.draw(st.integers(1, 3))
        self.layer("shared")
        w = self.param((k, m))
        first = self.emit(f"shared({v.name}, {w.name})", f"{v.name} @ {w.name}", (v.shape[0], m), v.magnitude * 2 * k)
        if first is None:
            return None
        t = self.emit(f"tanh({v.name})", f"op['tanh']({v.name})", v.shape, 1.0, bounded=True)
        return self.emit(f"shared({t.name}, {w.name})", f"{t.name} @ {w.name}", (v.shape[0], m), 2.0 * k)

    def constant(self) -> Value | None:
        """Numbers in expressions: literals and a const."""
        v = self.pick()
        c = self.draw(st.sampled_from([2.5, -0.5, 3, 0.25]))
        form = self.draw(st.sampled_from(["times", "minus", "over", "const"]))
        if form == "times":
            return self.emit(f"{v.name} * {c}", f"{v.name} * {c!r}", v.shape, v.magnitude * 3)
        if form == "minus":
            return self.emit(f"{c} - {v.name}", f"{c!r} - {v.name}", v.shape, v.magnitude + 3)
        if form == "over":
            return self.emit(f"{v.name} / {c}", f"{v.name} / {c!r}", v.shape, v.magnitude * 4)
        name = self.fresh("C")
        self.nn.append(f"const {name} = {c}")
        self.py.append(f"{name} = {c!r}")
        return self.emit(f"{name} * {v.name} + 1", f"{name} * {v.name} + 1", v.shape, v.magnitude * 3 + 1)

    def per_example(self) -> Value | None:
        """The symbolic batch size as a number: a sum over the batch divided by N."""
        v = self.pick([v for v in self.values if v.shape and v.shape[0] == "N"])
        return self.emit(f"sum({v.name}, axis=0) / N", f"op['sum']({v.name}, axis=0) / N", v.shape[1:], v.magnitude)

    def input_grad(self) -> Value | None:
        """grad() in the model: d sum(v) / d leaf, for a float input or param v depends on, used by
        later steps and the loss like any value (so the loss's gradient is a double backprop)."""
        leaves = {**self.inputs, **self.params}
        v = self.pick([v for v in self.values if any(leaves.get(s, Leaf((), "labels")).kind != "labels"
                                                     for s in v.sources if s in leaves)])
        wrt = self.draw(st.sampled_from(sorted(s for s in v.sources if s in leaves and leaves[s].kind != "labels")))
        if "def _grad" not in "\n".join(self.py):   # a gradient of a constant (the gradient of a sum) is zero
            self.py.insert(1, "def _grad(f, x):\n    g = torch.autograd.grad(f, x, create_graph=True, allow_unused=True)"
                              "[0] if f.requires_grad else None\n    return torch.zeros_like(x) if g is None else g")
        return self.emit(f"grad(sum({v.name}), {wrt})", f"_grad(op['sum']({v.name}), {wrt})",
                         leaves[wrt].shape, v.magnitude * 4, distinct=False)

    def import_nn(self) -> None:
        if "import nn" not in self.nn:
            self.nn.insert(0, "import nn")

    def mlp(self) -> Value | None:
        """The standard library's mlp: repeat depth dense (relu) layers, then linear scores."""
        v = self.pick([v for v in self.values if len(v.shape) == 2 and isinstance(v.shape[1], int)])
        k, hidden, out, depth = v.shape[1], self.draw(st.integers(1, 4)), self.draw(st.integers(1, 3)), \
            self.draw(st.integers(1, 2))
        self.import_nn()
        inst = self.fresh("M")
        expr, fan_in = v.name, k
        for i in range(1, depth + 1):
            self.pending.update({f"{inst}.h.{i}.W": Leaf((fan_in, hidden), "param"),
                                f"{inst}.h.{i}.b": Leaf((hidden,), "param")})
            expr = f"op['relu']({expr} @ env['{inst}.h.{i}.W'] + env['{inst}.h.{i}.b'])"
            fan_in = hidden
        self.pending.update({f"{inst}.scores.W": Leaf((hidden, out), "param"),
                             f"{inst}.scores.b": Leaf((out,), "param")})
        expr = f"{expr} @ env['{inst}.scores.W'] + env['{inst}.scores.b']"
        # A dead relu unit makes a column constant over the batch: ties, and zero variance.
        return self.emit(f"mlp({v.name}, hidden={hidden}, out={out}, depth={depth}) as {inst}", expr,
                         (v.shape[0], out), v.magnitude * 2 * depth + 2, distinct=False)

    def maxout_linear(self) -> Value | None:
        v = self.pick([v for v in self.values if len(v.shape) == 2 and isinstance(v.shape[1], int) and v.distinct])
        k, out, pieces = v.shape[1], self.draw(st.integers(1, 3)), self.draw(st.integers(2, 3))
        self.import_nn()
        inst = self.fresh("Q")
        self.pending.update({f"{inst}.W": Leaf((k, pieces * out), "param"),
                             f"{inst}.b": Leaf((pieces * out,), "param")})
        return self.emit(f"maxout_linear({v.name}, out={out}, k={pieces}) as {inst}",
                         f"op['maxout']({v.name} @ env['{inst}.W'] + env['{inst}.b'], k={pieces})",
                         (v.shape[0], out), v.magnitude * 2 * k + 2)

    def batchnorm_of(self, v: Value, inst: str, x_py: str) -> str:
        """The PyTorch lines of the library's batchnorm on ``x_py`` (instance ``inst``); returns
        its output expression. Train mode: batch statistics (F.batch_norm) and the running
        statistics moved by momentum 0.9 with the biased variance, as the library does."""
        f = v.shape[1]
        gamma, beta, mean, var = (f"env['{inst}.{p}']" for p in ("gamma", "beta", "running_mean", "running_var"))
        self.pending.update({f"{inst}.gamma": Leaf((f,), "param"), f"{inst}.beta": Leaf((f,), "param")})
        self.state.update({f"{inst}.running_mean": (f,), f"{inst}.running_var": (f,)})
        t = self.fresh("_bn")
        self.py += [
            f"{t} = {x_py}",
            "if env['mode'] == 'train':",
            f"    {t}_mu, {t}_var = {t}.mean(0), {t}.var(0, unbiased=False)",
            f"    locals()['new {inst}.running_mean'] = 0.9 * {mean} + 0.1 * {t}_mu",
            f"    locals()['new {inst}.running_var'] = 0.9 * {var} + 0.1 * {t}_var",
            f"    {t} = F.batch_norm({t}, None, None, {gamma}, {beta}, training=True, eps=1e-5)",
            "else:",
            f"    {t} = ({t} - {mean}) / torch.sqrt({var} + 1e-5) * {gamma} + {beta}",
        ]
        return t

    def normalisable(self) -> list[Value]:
        """[N, F] values whose columns vary over the batch (a constant column has zero variance:
        batchnorm then divides float32 rounding noise by sqrt(eps), and no precision compares)."""
        return [v for v in self.values if len(v.shape) == 2 and v.shape[0] == "N" and isinstance(v.shape[1], int)
                and v.distinct]

    def batchnorm(self) -> Value | None:
        v = self.pick(self.normalisable())
        self.import_nn()
        inst = self.fresh("B")
        return self.emit(f"batchnorm({v.name}) as {inst}", self.batchnorm_of(v, inst, v.name), v.shape, 4.0)

    def dense_bn(self) -> Value | None:
        v = self.pick(self.normalisable())
        out = self.draw(st.integers(1, 4))
        self.import_nn()
        inst = self.fresh("D")
        self.pending[f"{inst}.W"] = Leaf((v.shape[1], out), "param")
        shape = ("N", out)
        bn = self.batchnorm_of(Value(v.name, shape, 1.0), f"{inst}.bn", f"{v.name} @ env['{inst}.W']")
        return self.emit(f"dense_bn({v.name}, out={out}) as {inst}", f"op['relu']({bn})", shape, 4.0, distinct=False)

    STEPS = ("unary", "unary", "binary", "binary", "binary", "reduce", "matmul", "matmul", "softmax", "reshape",
             "transpose", "subscript", "concat", "gather", "block", "repeat", "shared", "constant", "per_example",
             "mlp", "maxout_linear", "batchnorm", "dense_bn", "input_grad")

    def step(self) -> None:
        name = self.draw(st.sampled_from(self.STEPS))
        self.operands, self.pending = [], {}
        try:
            getattr(self, name)()
        except NoCandidate:
            pass

    # ---- the loss

    def loss(self) -> None:
        last = self.values[-1]
        chosen = [last] + self.draw(st.lists(st.sampled_from(self.values), max_size=2, unique_by=lambda v: v.name))
        nn_terms, py_terms = [], []
        for v in chosen:
            reduction = self.draw(st.sampled_from(["weighted", "sum", "mean"]))
            if reduction == "weighted":
                w = self.input(v.shape, "weights")
                nn_terms.append(f"sum({v.name} * {w.name})")
                py_terms.append(f"op['sum']({v.name} * {w.name})")
            else:   # a plain reduction: the gradient is returned as the backward pass makes it
                nn_terms.append(f"{reduction}({v.name})")
                py_terms.append(f"op[{reduction!r}]({v.name})")
        scores = [v for v in self.values if len(v.shape) == 2 and v.shape[0] == "N" and isinstance(v.shape[1], int)
                  and v.shape[1] >= 2]
        head = self.draw(st.sampled_from(["none", "softmax_cross_entropy", "soft_targets", "svm_loss", "mse",
                                          "sigmoid_cross_entropy"]))
        if scores and head != "none":
            s = self.draw(st.sampled_from(scores))
            if head in ("softmax_cross_entropy", "svm_loss"):
                target = self.input(("N",), "labels", s.shape[1])
            else:
                target = self.input(s.shape, "normal" if head == "mse" else "targets")
            if head == "soft_targets":   # float [N, C] targets: the probability form of the same name
                head = "softmax_cross_entropy"
            nn_terms.append(f"{head}({s.name}, {target.name})")
            py_terms.append(f"op[{head!r}]({s.name}, {target.name})")
        weights = [w for w in self.params if self.params[w].kind == "param"]
        penalty = self.draw(st.sampled_from(["none", "l1", "l2", "elastic_net"]))
        if weights and penalty != "none":   # the lecture's R(W), over some of the params
            chosen_w = self.draw(st.lists(st.sampled_from(weights), min_size=1, max_size=3, unique=True))
            beta = ", beta=0.5" if penalty == "elastic_net" else ""
            nn_terms.append(f"0.01 * {penalty}({', '.join(chosen_w)}{beta})")
            py_terms.append(f"0.01 * op[{penalty!r}]({', '.join(f'env[{w!r}]' for w in chosen_w)}{beta})")
        self.nn.append(f"loss = {' + '.join(nn_terms)}")
        self.py.append(f"loss = {' + '.join(py_terms)}")
        outputs = [last.name] + [v.name for v in chosen[1:]]
        self.nn.append(f"output {', '.join(dict.fromkeys(outputs))}")
        self.nn.append("minimize loss")

    def model(self) -> RandomModel:
        imports = [line for line in self.nn if line.startswith("import ")]
        text = "\n\n".join([*imports, *(LAYERS[name] for name in self.layers)])
        body = [line for line in self.nn if not line.startswith("import ")]
        return RandomModel((text + "\n\n" if text else "") + "\n".join(body) + "\n",
                           "\n".join(self.py) + "\n", self.inputs, self.params)


class NoCandidate(Exception):
    """A step found no value it applies to."""


def _as_int(d: Dim) -> int:
    return N_SIZE if isinstance(d, str) else d


def _matmul_shape(a: Shape, b: Shape) -> Shape:
    """numpy's matmul rule for the shapes the generator makes."""
    if len(a) == 1 and len(b) == 1:
        return ()
    if len(a) == 1:
        return (*b[:-2], b[-1])
    if len(b) == 1:
        return a[:-1]
    batch = broadcast(a[:-2], b[:-2])
    assert batch is not None
    return (*batch, a[-2], b[-1])


@st.composite
def random_models(draw: Callable, min_steps: int = 3, max_steps: int = 10) -> RandomModel:
    b = Builder(draw)
    d = draw(st.integers(2, 4))
    x = b.input(("N", d), name="X")
    b.values.append(x)
    partner = draw(st.sampled_from([("N", 1), (1, d), (d,), (), (2, 1, d)]))
    b.values.append(b.input(partner, name="Z"))
    if draw(st.booleans()):   # an input the calls leave out: its default is used, and differentiated
        b.nn.append("input s = 0.7")
        b.py.append("s = torch.tensor(0.7, dtype=X.dtype, requires_grad=True)")
        b.values.append(Value("s", (), 1.0, bounded=True, sources=frozenset(["s"])))
    for _ in range(draw(st.integers(min_steps, max_steps))):
        b.step()
    b.loss()
    return b.model()
