"""The faster forms the generated code uses compute what the plain forms compute.

maximum and minimum against a number read a read-only array of it from the workspace
(numpy's scalar path is several times slower), the bias gradient's ones vector is made once
per batch size, log-softmax over short rows reduces down the columns of the transpose, the
softmax gradient subtracts each label's 1 by its flat index, and the labels are checked
in one pass. Each is checked against the plain numpy form, bit for bit where the order of
the arithmetic is the same, and against float64 where it is not.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from nncompile.compiler import compile_file, load_module
from nncompile.ops.basic import LOG_SOFTMAX, _LABEL_ENTRIES, _NLL, _SOFTMAX_NLL_GRAD

from conftest import write_nn

SPECIAL = np.array([-0.0, 0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, 3.0, -3.0, 1e30, -1e30],
                   dtype=np.float32)


def helpers() -> dict:
    scope: dict = {"np": np}
    exec("\n\n".join([LOG_SOFTMAX, _LABEL_ENTRIES, _NLL, _SOFTMAX_NLL_GRAD]), scope)  # noqa: S102 - the registry's own text
    return scope


def plain_log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """The form the helper had before its short-row path: the reference for its rounding."""
    shifted = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    shifted -= np.log(np.add.reduce(np.exp(shifted), axis=axis, keepdims=True))
    return shifted


@pytest.fixture
def compiled(tmp_path):
    """``compiled(text, **options)``: the module compiled from .nn text, and its source."""
    counter = iter(range(1000))

    def compile_(text: str, **options):
        source = compile_file(write_nn(tmp_path, f"m{next(counter)}.nn", text), **options)
        return load_module(source, "fast_forms"), source
    return compile_


def function_text(source: str, name: str) -> str:
    return source.split(f"\ndef {name}(")[1].split("\ndef ")[0]


def workspace_constants(module, function: str = "VALUE_AND_GRAD") -> list[np.ndarray]:
    """The read-only arrays of a function's workspaces (every set of dims)."""
    cache = getattr(module, f"_{function}_BUFFERS")
    return [b for buffers in cache.values() for b in buffers if not b.flags.writeable]


@pytest.mark.parametrize("call, plain", [
    ("relu(x)", lambda x: np.maximum(x, 0.0)),
    ("hardtanh(x, min_val=-1.0, max_val=2.0)", lambda x: np.minimum(np.maximum(x, -1.0), 2.0)),
])
def test_maximum_and_minimum_against_a_constant_array_give_the_numbers_bits(call: str, plain, compiled) -> None:
    m, source = compiled(f"input x: float[N, 12]\nh = {call}\noutput h\nloss = sum(h)\nminimize loss\n",
                         dtype="float32")
    assert "0.0)" not in function_text(source, "forward") and "0.0, out=" not in function_text(source, "forward")
    x = np.tile(SPECIAL, (3, 1))
    with np.errstate(invalid="ignore"):
        got, want = m.forward({}, x=x)["h"], plain(x)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    for constant in workspace_constants(m, "FORWARD"):
        assert constant.dtype == np.float32 and constant.shape == (3, 12) and len(set(constant.flat)) == 1



@pytest.mark.parametrize("alpha, plain", [(0.1, lambda x: np.maximum(x, np.float32(0.1) * x)),
                                          (3.0, lambda x: np.minimum(x, np.float32(3.0) * x))])
def test_leaky_relu_rounds_alpha_times_x_once_and_keeps_infinities(alpha: float, plain, compiled) -> None:
    """x + (alpha - 1) * min(x, 0) cancelled (1e-5 off in float32 at alpha 0.001) and made -inf nan."""
    m, _ = compiled(f"input x: float[N, 12]\nh = leaky_relu(x, alpha={alpha})\noutput h\n", dtype="float32")
    x = np.tile(SPECIAL, (3, 1))
    got = m.forward({}, x=x)["h"]
    np.testing.assert_array_equal(got.view(np.uint32), plain(x).view(np.uint32))
    assert got[0, list(SPECIAL).index(-np.inf)] == (-np.inf if alpha > 0 else np.inf)


@pytest.mark.parametrize("cmp", [">", "<="])
def test_a_mask_copied_from_a_comparison_gives_the_float_comparisons_bits(cmp: str, compiled) -> None:
    m, source = compiled(f"input x: float[N, 12]\ninput g: float[N, 12]\nh = relu(x)\noutput h\n"
                         f"loss = sum(h * g) + sum((x {cmp} g) * g)\nminimize loss\n", dtype="float32")
    assert "np.copyto(" in function_text(source, "value_and_grad")
    x = np.tile(SPECIAL, (12, 1))
    g = x.T.copy()   # every special value against every other, both ways round
    with np.errstate(invalid="ignore", over="ignore"):
        _, grads = m.value_and_grad({}, x=x, g=g)
        h = np.maximum(x, 0.0)
        relu_mask = np.greater(h, 0.0, out=np.empty_like(x))   # the float comparisons, as before
        compare = {">": np.greater, "<=": np.less_equal}[cmp](x, g, out=np.empty_like(x))
        want = {"x": g * relu_mask, "g": compare + h}
    for name in ("x", "g"):
        assert grads[name].dtype == np.float32
        np.testing.assert_array_equal(grads[name].view(np.uint32), want[name].view(np.uint32))

def test_the_constants_are_read_only_and_nothing_returned_shares_their_memory(compile_nn) -> None:
    m = compile_nn("""
        input X: float[N, 5]
        input y: int[N]
        param W: [5, 3] = normal(std=0.5)
        param b: [3] = zeros()
        h = relu(X @ W + b)
        output h
        loss = softmax_cross_entropy(h, y)
        minimize loss
    """, dtype="float32")
    params = m.init_params(0)
    rng = np.random.default_rng(0)
    returned = []
    for n in (7, 2, 7):   # a second batch size gets constants of its own
        outputs, grads = m.value_and_grad(params, X=rng.standard_normal((n, 5)).astype(np.float32),
                                          y=rng.integers(0, 3, n))
        returned += [*outputs.values(), *grads.values()]
    constants = workspace_constants(m)
    assert {c.shape for c in constants} == {(7, 3), (7,), (2, 3), (2,)}
    assert sorted(float(c.flat[0]) for c in constants) == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="read-only"):
        constants[0][...] = 1
    for array in returned:
        assert not any(np.shares_memory(array, c) for c in constants)


@pytest.mark.parametrize("n", [1, 3, 64])
def test_the_bias_gradient_sums_the_columns_for_every_batch_size(n: int, compiled) -> None:
    m, source = compiled("""
        input X: float[N, 4]
        input T: float[N, 6]
        param W: [4, 6] = normal(std=0.5)
        param b: [6] = zeros()
        loss = sum((X @ W + b) * T)
        minimize loss
    """, dtype="float64")
    params = m.init_params(0)
    rng = np.random.default_rng(n)
    X, T = rng.standard_normal((n, 4)), rng.standard_normal((n, 6))
    _, grads = m.value_and_grad(params, X=X, T=T)
    np.testing.assert_allclose(grads["b"], T.sum(axis=0), rtol=1e-13, atol=1e-13)
    assert "np.ones(" not in source and "np.matmul(ones, " in function_text(source, "value_and_grad")


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=40),
                  elements=st.floats(-50, 50)), st.sampled_from([np.float32, np.float64]))
def test_log_softmax_over_short_rows_is_the_plain_form_to_the_rounding(x: np.ndarray, dtype) -> None:
    x = x.astype(dtype)
    got, want = helpers()["_log_softmax"](x, 1), plain_log_softmax(x, 1)
    assert got.dtype == dtype and got.shape == x.shape and got.flags.c_contiguous
    exact = plain_log_softmax(x.astype(np.float64), 1)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got, exact, rtol=0, atol=64 * eps * (1 + np.abs(exact).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * eps * (1 + np.abs(exact).max()))


@pytest.mark.parametrize("shape, axis", [((6, 3), 1), ((6, 3), -1), ((3, 6), 1), ((6, 3), 0), ((2, 6, 3), -1)])
def test_log_softmax_takes_its_short_row_path_only_where_it_computes_the_same(shape, axis) -> None:
    x = np.random.default_rng(1).standard_normal(shape) * 30
    for layout in (x, np.asfortranarray(x), x[..., ::-1]):
        np.testing.assert_allclose(helpers()["_log_softmax"](layout, axis), plain_log_softmax(layout, axis),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_the_loss_picks_each_label_whatever_the_layout_of_logp(layout: str) -> None:
    rng = np.random.default_rng(3)
    logp = plain_log_softmax(rng.standard_normal((9, 8)), 1)[:, :4]
    logp = {"C": np.ascontiguousarray(logp), "F": np.asfortranarray(logp), "strided": logp}[layout]
    labels = rng.integers(0, 4, 9)
    assert helpers()["_nll"](logp, labels) == logp[np.arange(9), labels].sum() * (-1.0 / 9)


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_the_softmax_gradient_subtracts_each_label_whatever_the_layout_of_logp(layout: str) -> None:
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((9, 8))
    labels = rng.integers(0, 4, 9)
    logp = plain_log_softmax(scores, 1)[:, :4]
    logp = {"C": np.ascontiguousarray(logp), "F": np.asfortranarray(logp), "strided": logp}[layout]
    want = np.exp(logp)
    want[np.arange(9), labels] -= 1
    want *= 0.5 / 9
    got = helpers()["_softmax_nll_grad"](logp, labels, 0.5)
    np.testing.assert_array_equal(got, want)


def test_the_label_entries_made_once_per_shape_serve_every_batch_after() -> None:
    rng = np.random.default_rng(4)
    scope = helpers()
    for rows, classes in [(9, 4), (5, 4), (9, 3), (9, 4), (1, 4)]:
        logp = plain_log_softmax(rng.standard_normal((rows, classes)), 1)
        labels = rng.integers(0, classes, rows)
        assert scope["_nll"](logp, labels) == logp[np.arange(rows), labels].sum() * (-1.0 / rows)
        want = np.exp(logp)
        want[np.arange(rows), labels] -= 1
        want *= 1.0 / rows
        np.testing.assert_array_equal(scope["_softmax_nll_grad"](logp, labels, 1.0), want)
    assert sorted(scope["_ROW_STARTS"]) == [(1, 4), (5, 4), (9, 3), (9, 4)]


@pytest.mark.parametrize("bad", [-1, -2 ** 63, 10, 2 ** 63 - 1])
def test_one_pass_over_the_labels_catches_both_ends(bad: int, compile_nn) -> None:
    m = compile_nn("input s: float[N, 10]\ninput y: int[N]\nloss = softmax_cross_entropy(s, y)\nminimize loss\n")
    y = np.array([0, bad, 9], dtype=np.int64)
    with pytest.raises(ValueError, match=f"holds {bad}: .* must lie in \\[0, 10\\)"):
        m.value_and_grad({}, s=np.zeros((3, 10)), y=y)
    assert m.value_and_grad({}, s=np.zeros((3, 10)), y=np.array([0, 9, 5]))[0]["loss"] == pytest.approx(np.log(10))


def test_constants_asked_for_in_any_order_hold_their_values(compiled) -> None:
    # hvp asks for zeros of [N, 4] and [N, 1], then ones, then zeros of [N, 2] (relu's maximum,
    # needed only by the late svm_loss): each name must be bound to its own array
    m, source = compiled("""
        import nn
        input Z: float[N, 1]
        input y: int[N]
        v2 = mlp(Z, hidden=4, out=2, depth=2) as M1
        v3 = relu(v2)
        v5 = mlp(v2, hidden=1, out=1, depth=2) as M4
        loss = sum(v5) + svm_loss(v3, y)
        minimize loss
    """, dtype="float64")
    hvp = function_text(source, "hvp")
    late = [m.start() for m in re.finditer(r"np\.maximum\(\w+, zeros", hvp)][-1]   # v3's relu
    assert late > hvp.index("np.matmul(ones, ")   # after the ones
    rng = np.random.default_rng(4)
    params, Z, y = m.init_params(1), rng.standard_normal((2, 1)), np.array([0, 1])
    v = {k: rng.standard_normal(p.shape) for k, p in params.items()}
    got = m.hvp(params, v, Z=Z, y=y)
    assert {k: a.shape for k, a in got.items()} == {k: p.shape for k, p in params.items()}
    twice = m.hvp(params, {k: 2 * a for k, a in v.items()}, Z=Z, y=y)
    for k in params:   # linear in v
        np.testing.assert_allclose(twice[k], 2 * got[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [-1, 5])
def test_the_one_pass_covers_every_axis_of_an_index_matrix(bad: int, compiled) -> None:
    m, source = compiled("input x: float[5]\ninput i: int[N, 3]\nz = x[i]\nloss = sum(z)\nminimize loss\n")
    assert "uint64), axis=None)" in source
    good = np.array([[0, 1, 2], [4, 3, 0]])
    assert m.value_and_grad({}, x=np.ones(5, np.float32), i=good)[0]["loss"] == 6
    bad_i = good.copy()
    bad_i[1, 2] = bad
    with pytest.raises(ValueError, match=f"holds {bad}: "):
        m.value_and_grad({}, x=np.ones(5, np.float32), i=bad_i)
