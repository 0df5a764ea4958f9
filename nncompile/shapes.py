"""Shapes with symbolic dimensions, and the rules ops use to combine them.

A dimension is an ``int`` or a ``str`` naming a symbolic size (the batch ``N``), bound only
when the compiled module is called. Rules raise :class:`ShapeError`; the elaborator turns it
into a located :class:`~nncompile.errors.NNError`.
"""
from __future__ import annotations

from collections import Counter
from math import prod

Dim = int | str
Shape = tuple[Dim, ...]


class ShapeError(Exception):
    """A shape or dtype rule was broken; ``arg`` is the offending operand when known."""

    def __init__(self, message: str, arg: int | None = None):
        super().__init__(message)
        self.message = message
        self.arg = arg


def show(shape: Shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def broadcast(*shapes: Shape) -> Shape:
    """numpy broadcasting; symbolic dims broadcast only with themselves or 1."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for axis in range(rank - 1, -1, -1):   # from the last axis, where numpy aligns the shapes
        dims = [s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0]
        real = list(dict.fromkeys(d for d in dims if d != 1))   # in operand order
        if len(real) > 1:
            raise ShapeError("cannot broadcast " + " with ".join(show(s) for s in shapes)
                             + f": dims {' and '.join(map(str, real))} differ (axis {axis - rank})")
        out.append(real[0] if real else 1)
    return tuple(reversed(out))


def matmul(a: Shape, b: Shape) -> Shape:
    if not a or not b:
        raise ShapeError(f"cannot multiply {show(a)} @ {show(b)}: '@' needs tensors, not scalars; use '*'")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeError(f"cannot multiply {show(a)} @ {show(b)}: inner dims {a2[-1]} and {b2[-2]} differ")
    try:
        batch = broadcast(a2[:-2], b2[:-2])
    except ShapeError:
        raise ShapeError(f"cannot multiply {show(a)} @ {show(b)}: batch dims do not broadcast") from None
    out = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def normalize_axes(axis: int | tuple[int, ...] | None, rank: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(rank))
    axes = (axis,) if isinstance(axis, (int, str, float)) else tuple(axis)
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, int):   # axis=N or axis=1.5, say
            raise ShapeError(f"an axis must be a whole number, not {a!r}")
        if not -rank <= a < rank:
            raise ShapeError(f"axis {a} is out of range for a tensor of rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axes}")
    return tuple(sorted(out))


def reduce(shape: Shape, axis, keepdims: bool) -> Shape:
    if not isinstance(keepdims, bool):
        raise ShapeError(f"keepdims must be true or false, not {keepdims!r}")
    axes = normalize_axes(axis, len(shape))
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def elements(shape: Shape) -> float:
    """How many entries a shape holds, a symbolic dim counting as infinitely many: for
    comparing sizes at compile time (a per-channel vector is smaller than an image)."""
    return float(prod(d if isinstance(d, int) else float("inf") for d in shape))


def _size(dims) -> tuple[int, Counter]:
    """A product of dims as (integer factor, multiset of symbols)."""
    return prod(d for d in dims if isinstance(d, int)), Counter(d for d in dims if isinstance(d, str))


def reshape(shape: Shape, target: tuple[Dim, ...]) -> Shape:
    for d in target:
        if isinstance(d, bool) or not isinstance(d, (int, str)):
            raise ShapeError(f"reshape to {show(target)}: each dim must be a whole number or a dim like N, "
                             f"not {d!r}")
    holes = [i for i, d in enumerate(target) if d == -1]
    if len(holes) > 1:
        raise ShapeError("reshape can infer at most one dim (-1)")
    if any(isinstance(d, int) and d < -1 or d == 0 for d in target):
        raise ShapeError(f"reshape to {show(target)}: dims must be positive")
    have_n, have_s = _size(shape)
    rest = [d for d in target if d != -1]
    want_n, want_s = _size(rest)
    if holes:
        if want_s - have_s or have_n % want_n:
            raise ShapeError(f"cannot reshape {show(shape)} to {show(target)}")
        left_s = have_s - want_s
        left_n = have_n // want_n
        symbols = list(left_s.elements())
        if symbols and (left_n != 1 or len(symbols) > 1):
            product = "*".join([*([str(left_n)] if left_n != 1 else []), *symbols])
            keep = f"keep the symbolic dim whole (like {show((symbols[0], -1))})" if len(symbols) == 1 else \
                "keep each symbolic dim whole"
            raise ShapeError(f"cannot infer the -1 in reshape {show(shape)} to {show(target)}: it would be "
                             f"{product}, and a dim is one number or one name; {keep}")
        fill: Dim = symbols[0] if symbols else left_n
        return tuple(fill if d == -1 else d for d in target)
    if (have_n, have_s) != (want_n, want_s):
        raise ShapeError(f"cannot reshape {show(shape)} to {show(target)}: sizes differ")
    return tuple(target)


def transpose(shape: Shape, axes: tuple[int, ...] | None) -> Shape:
    if axes is None:
        return tuple(reversed(shape))
    if not isinstance(axes, tuple) or any(isinstance(a, bool) or not isinstance(a, int) for a in axes):
        raise ShapeError(f"transpose axes must be a list of whole numbers, like [1, 0], not {axes!r}")
    if sorted(a % len(shape) if -len(shape) <= a < len(shape) else a for a in axes) != list(range(len(shape))):
        raise ShapeError(f"transpose axes {tuple(axes)} are not a permutation of the {len(shape)} axes of {show(shape)}")
    return tuple(shape[a] for a in axes)


def unbroadcast_axes(shape: Shape, target: Shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Axes to sum so a gradient of ``shape`` becomes one of ``target`` (which broadcast to it).

    Returns (leading axes to drop, axes to keep as size 1).
    """
    lead = len(shape) - len(target)
    dropped = tuple(range(lead))
    kept = tuple(lead + i for i, d in enumerate(target) if d == 1 and shape[lead + i] != 1)
    return dropped, kept
