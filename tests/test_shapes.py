"""Shape rules, checked against numpy where numpy has an answer, and for symbolic dims."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompile import shapes
from nncompile.shapes import ShapeError

small_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple)


def numpy_or_error(fn):
    try:
        return fn()
    except ValueError:
        return "error"


def ours_or_error(fn):
    try:
        return fn()
    except ShapeError:
        return "error"


# ---- broadcasting ---------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(small_shapes, min_size=1, max_size=3))
def test_broadcast_agrees_with_numpy(operands: list[tuple[int, ...]]) -> None:
    assert ours_or_error(lambda: shapes.broadcast(*operands)) == numpy_or_error(lambda: np.broadcast_shapes(*operands))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_broadcastable_shapes_always_broadcast(data) -> None:
    """Shapes made compatible on purpose (dims dropped or set to 1) broadcast to the full shape."""
    full = data.draw(st.lists(st.integers(1, 5), min_size=0, max_size=4).map(tuple))
    parts = []
    for _ in range(data.draw(st.integers(1, 3))):
        keep = data.draw(st.integers(0, len(full)))
        tail = full[len(full) - keep:]
        parts.append(tuple(1 if data.draw(st.booleans()) else d for d in tail))
    parts.append(full)
    assert shapes.broadcast(*parts) == full


@pytest.mark.parametrize(("a", "b", "out"), [
    (("N", 3), (3,), ("N", 3)),
    (("N", 3), (1, 3), ("N", 3)),
    (("N", 1), (1, "M"), ("N", "M")),
    (("N",), ("N",), ("N",)),
    ((), ("N", 2), ("N", 2)),
    ((2, 1, "N"), ("N",), (2, 1, "N")),
])
def test_broadcast_with_symbolic_dims(a, b, out) -> None:
    assert shapes.broadcast(a, b) == out
    assert shapes.broadcast(b, a) == out


@pytest.mark.parametrize(("a", "b"), [(("N",), ("M",)), (("N", 3), (4,)), (("N",), (3,)), (("N", 2), ("M", 2))])
def test_symbolic_dims_broadcast_only_with_themselves_or_one(a, b) -> None:
    with pytest.raises(ShapeError, match="cannot broadcast"):
        shapes.broadcast(a, b)


def test_broadcast_error_names_the_shapes_and_dims() -> None:
    with pytest.raises(ShapeError) as info:
        shapes.broadcast(("N", 3), ("N", 4))
    assert info.value.message == "cannot broadcast [N, 3] with [N, 4]: dims 3 and 4 differ (axis -1)"


# ---- matmul ---------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple),
       st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple))
def test_matmul_agrees_with_numpy(a, b) -> None:
    expected = numpy_or_error(lambda: np.matmul(np.zeros(a), np.zeros(b)).shape)
    assert ours_or_error(lambda: shapes.matmul(a, b)) == expected


@pytest.mark.parametrize(("a", "b", "out"), [
    (("N", 3072), (3072, 100), ("N", 100)),
    ((3,), (3, 4), (4,)),
    (("N", 3), (3,), ("N",)),
    ((3,), (3,), ()),
    (("B", "T", 8), (8, 16), ("B", "T", 16)),
    ((2, 1, "T", 8), (5, 8, "K"), (2, 5, "T", "K")),
    (("N", "K"), ("K", "N"), ("N", "N")),
])
def test_matmul_with_symbolic_and_batched_dims(a, b, out) -> None:
    assert shapes.matmul(a, b) == out


@pytest.mark.parametrize(("a", "b", "message"), [
    (("N", 100), (3072, 10), "cannot multiply [N, 100] @ [3072, 10]: inner dims 100 and 3072 differ"),
    (("N", "K"), ("M", 3), "cannot multiply [N, K] @ [M, 3]: inner dims K and M differ"),
    ((), (3, 3), "'@' needs tensors, not scalars"),
    ((2, 3, 4), (5, 4, 2), "batch dims do not broadcast"),
])
def test_matmul_errors(a, b, message) -> None:
    with pytest.raises(ShapeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        shapes.matmul(a, b)


# ---- reductions -----------------------------------------------------------------------

axes = st.one_of(st.none(), st.integers(-4, 3), st.lists(st.integers(-4, 3), min_size=1, max_size=3).map(tuple))


@settings(max_examples=300, deadline=None)
@given(small_shapes, axes, st.booleans())
def test_reduce_agrees_with_numpy(shape, axis, keepdims) -> None:
    expected = numpy_or_error(lambda: np.sum(np.zeros(shape), axis=axis, keepdims=keepdims).shape)
    if shape == () and axis is not None:
        expected = "error"   # numpy lets a scalar be reduced over "axis 0"; a .nn model may not
    assert ours_or_error(lambda: shapes.reduce(shape, axis, keepdims)) == expected


def test_reduce_keeps_symbolic_dims() -> None:
    assert shapes.reduce(("N", 10), 1, False) == ("N",)
    assert shapes.reduce(("N", 10), -1, True) == ("N", 1)
    assert shapes.reduce(("N", 10), None, False) == ()
    assert shapes.reduce(("N", 10), 0, False) == (10,)


def test_reduce_errors() -> None:
    with pytest.raises(ShapeError, match="axis 2 is out of range for a tensor of rank 2"):
        shapes.reduce((3, 4), 2, False)
    with pytest.raises(ShapeError, match="repeated axis"):
        shapes.reduce((3, 4), (1, -1), False)
    for keepdims in (1.5, 2, "N", (2, -1)):
        with pytest.raises(ShapeError, match="keepdims must be true or false"):
            shapes.reduce((3, 4), None, keepdims)


# ---- reshape and transpose ------------------------------------------------------------

@pytest.mark.parametrize(("shape", "target", "out"), [
    ((3, 4), (2, 6), (2, 6)),
    ((3, 4), (-1,), (12,)),
    ((2, 3, 4), (-1, 4), (6, 4)),
    ((2, 3, 4), (4, -1), (4, 6)),
    (("N", 3, 4), ("N", -1), ("N", 12)),
    (("N", 12), (-1, 3, 4), ("N", 3, 4)),
    (("N", 12), ("N", 3, 4), ("N", 3, 4)),
    (("N", "T", 4), (-1, "T", 2, 2), ("N", "T", 2, 2)),
    ((1,), (), ()),
])
def test_reshape(shape, target, out) -> None:
    assert shapes.reshape(shape, target) == out
    if all(isinstance(d, int) for d in shape):
        assert np.zeros(shape).reshape(target).shape == out


@settings(max_examples=200, deadline=None)
@given(small_shapes, st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple), st.booleans())
def test_reshape_agrees_with_numpy(shape, target, hole) -> None:
    if hole:
        target = (*target, -1)
    assert ours_or_error(lambda: shapes.reshape(shape, target)) == numpy_or_error(lambda: np.zeros(shape).reshape(target).shape)


@pytest.mark.parametrize(("shape", "target", "message"), [
    ((3, 4), (5, 2), "cannot reshape [3, 4] to [5, 2]: sizes differ"),
    ((3, 4), (-1, -1), "at most one dim (-1)"),
    ((3, 4), (5, -1), "cannot reshape [3, 4] to [5, -1]"),
    ((3, 4), (0, 12), "dims must be positive"),
    (("N", 3, 4), (-1, 4), "cannot infer the -1"),
    (("N", 3), ("M", 3), "sizes differ"),
    (("N", 3), (3, -1, 2), "cannot reshape"),
    ((4,), (2.0, 2), "each dim must be a whole number or a dim like N, not 2.0"),
    ((4,), ([1], 4), "each dim must be a whole number or a dim like N, not [1]"),
    ((4,), (True, 4), "not True"),
])
def test_reshape_errors(shape, target, message) -> None:
    with pytest.raises(ShapeError) as info:
        shapes.reshape(shape, target)
    assert message in info.value.message


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple), st.data())
def test_transpose_agrees_with_numpy(shape, data) -> None:
    axes = data.draw(st.one_of(st.none(), st.permutations(range(len(shape))).map(tuple)))
    assert shapes.transpose(shape, axes) == np.transpose(np.zeros(shape), axes).shape


def test_transpose_symbolic_and_errors() -> None:
    assert shapes.transpose(("N", 3), None) == (3, "N")
    assert shapes.transpose(("B", "T", 8), (0, 2, 1)) == ("B", 8, "T")
    with pytest.raises(ShapeError, match="not a permutation"):
        shapes.transpose((2, 3), (0, 0))
    with pytest.raises(ShapeError, match="not a permutation"):
        shapes.transpose((2, 3), (0, 1, 2))
    for axes in (1, 1.5, True, ([1], 0), ("N", 0), (True, False)):
        with pytest.raises(ShapeError, match=r"transpose axes must be a list of whole numbers, like \[1, 0\]"):
            shapes.transpose((2, 3), axes)


# ---- undoing broadcasting -------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.data())
def test_unbroadcast_axes_sum_back_to_the_operand(data) -> None:
    target = data.draw(small_shapes)
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2).map(tuple))
    full = lead + tuple(data.draw(st.integers(1, 3)) if d == 1 else d for d in target)
    dropped, kept = shapes.unbroadcast_axes(full, target)
    grad = np.ones(full)
    summed = grad.sum(axis=dropped + kept, keepdims=True).reshape(target) if dropped or kept else grad
    assert summed.shape == target
    # every entry of the operand received one contribution per broadcast copy of it
    assert summed.sum() == grad.size


def test_show() -> None:
    assert shapes.show(("N", 3)) == "[N, 3]" and shapes.show(()) == "[]"
