"""The numpy operations a model reaches for, held to numpy itself: comparisons (masks of the
module's dtype, no gradient through them), where, clip, argmax, one_hot, min/var/std and
keepdims on every reduction, x.T, and None and ... in subscripts. Gradients are checked
by the registry's generated checks (tests/test_ops.py) and against PyTorch
(tests/test_differential.py); here the values, dtypes, shapes and errors are."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nncompile.errors import NNError

from conftest import cli, write_nn

RNG = np.random.default_rng(0)
X = RNG.standard_normal((5, 4))
Y = np.array([0, 3, 1, 1, 2])


def _run(compile_nn, text: str, dtype: str = "float64", **inputs):
    module = compile_nn(text, dtype=dtype)
    given = {"x": X, "y": Y, **inputs}
    return module, module.forward({}, **{name: given[name] for name in module.INPUTS})


def _error(compile_nn, text: str) -> NNError:
    with pytest.raises(NNError) as info:
        compile_nn(text)
    return info.value


HEADER = "input x: float[N, 4]\ninput y: int[N]\n"


# ---- comparisons ----------------------------------------------------------------------------

@pytest.mark.parametrize(("cmp", "numpy"), [("<", np.less), (">", np.greater), ("<=", np.less_equal),
                                            (">=", np.greater_equal), ("==", np.equal), ("!=", np.not_equal)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_comparison_is_a_mask_of_the_modules_dtype(compile_nn, cmp: str, numpy, dtype: str) -> None:
    module, out = _run(compile_nn, HEADER + f"input t: float[4]\nm = x {cmp} t\noutput m\n", dtype,
                       t=X[1].copy())
    assert out["m"].dtype == dtype and module.OUTPUTS["m"][1] == dtype
    np.testing.assert_array_equal(out["m"], numpy(X, X[1]).astype(dtype))


def test_comparisons_bind_looser_than_arithmetic_and_compare_ints(compile_nn) -> None:
    _, out = _run(compile_nn, HEADER + "a = x + 1 < 2 * x\nb = y == 1\nc = argmax(x, axis=1) != y\noutput a, b, c\n")
    np.testing.assert_array_equal(out["a"], (X + 1 < 2 * X).astype(float))
    np.testing.assert_array_equal(out["b"], (Y == 1).astype(float))
    np.testing.assert_array_equal(out["c"], (np.argmax(X, axis=1) != Y).astype(float))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_gradient_flows_through_a_mask_and_none_comes_back_as_bool(compile_nn, dtype: str) -> None:
    """sum(x > 0) is piecewise constant: its gradient is zeros, of the module's dtype."""
    module = compile_nn("input x: float[N, 4]\nloss = sum(x > 0) + sum((x <= 0.5) * x)\nminimize loss\n",
                        dtype=dtype)
    outputs, grads = module.value_and_grad({}, x=X)
    assert grads["x"].dtype == dtype and outputs["loss"].dtype == dtype
    np.testing.assert_allclose(grads["x"], (X <= 0.5).astype(dtype))


def test_a_comparison_of_shapes_that_do_not_broadcast_points_at_the_right_operand(compile_nn) -> None:
    err = _error(compile_nn, HEADER + "input t: float[3]\nm = x < t\noutput m\n")
    assert "cannot compare [N, 4] and [3] with '<'" in err.message
    assert (err.loc.line, err.loc.col) == (4, 9)


# ---- where, clip --------------------------------------------------------------------------

def test_where_selects_like_numpy_with_broadcasting(compile_nn) -> None:
    module, out = _run(compile_nn, HEADER + "input t: float[4]\n"
                       "a = where(x > t, x, 0)\nb = where(x, t, -1)\nc = where(y == 1, 1, 2)\noutput a, b, c\n",
                       "float32", t=X[0].copy())
    np.testing.assert_array_equal(out["a"], np.where(X > X[0], X, 0).astype(np.float32))
    np.testing.assert_array_equal(out["b"], np.where(X, X[0], -1).astype(np.float32))
    assert out["c"].dtype == np.float32 and out["c"].tolist() == np.where(Y == 1, 1.0, 2.0).tolist()


def test_where_needs_float_values(compile_nn) -> None:
    err = _error(compile_nn, HEADER + "h = where(x > 0, y, x)\noutput h\n")
    assert "where(cond, a, b) selects floats, but 'y' is int[N]" in err.message and err.loc.col == 18


@pytest.mark.parametrize(("lo", "hi"), [(-1, 1), (0, 6), (-0.25, -0.25)])
def test_clip_is_numpys(compile_nn, lo: float, hi: float) -> None:
    _, out = _run(compile_nn, HEADER + f"h = clip(x, {lo}, hi={hi})\noutput h\n")
    np.testing.assert_array_equal(out["h"], np.clip(X, lo, hi))


@pytest.mark.parametrize(("call", "message"), [
    ("clip(x, 1, -1)", "clip() needs hi >= 1, not -1"),
    ("clip(x, 0)", "clip() needs a number for hi, not None"),
    ("clip(x, hi=2)", "clip() needs a number for lo, not None"),
])
def test_clip_needs_both_bounds_in_order(compile_nn, call: str, message: str) -> None:
    err = _error(compile_nn, HEADER + f"h = {call}\noutput h\n")
    assert message in err.message and err.loc.line == 3


def test_maximum_and_minimum_take_a_number_on_either_side(compile_nn) -> None:
    _, out = _run(compile_nn, HEADER + "a = maximum(x, 0)\nb = maximum(0.5, x)\nc = minimum(x, -1)\n"
                  "d = minimum(6, relu(x))\noutput a, b, c, d\n", "float32")
    for name, want in {"a": np.maximum(X, 0), "b": np.maximum(0.5, X), "c": np.minimum(X, -1),
                       "d": np.minimum(6, np.maximum(X, 0))}.items():
        assert out[name].dtype == np.float32
        np.testing.assert_array_equal(out[name], want.astype(np.float32), err_msg=name)


# ---- reductions: keepdims on every one, min, var, std, argmax -------------------------------

REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "var": np.var, "std": np.std,
              "argmax": np.argmax}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_every_reduction_takes_an_axis_and_keepdims_like_numpy(compile_nn, name: str, axis, keepdims: bool) -> None:
    keep = ", keepdims=true" if keepdims else ""
    module, out = _run(compile_nn, f"input x: float[N, 4]\nr = {name}(x, axis={axis}{keep})\noutput r\n")
    want = REDUCTIONS[name](X, axis=axis, keepdims=keepdims)
    assert np.shape(out["r"]) == np.shape(want)
    assert out["r"].dtype == (np.int64 if name == "argmax" else np.float64)
    np.testing.assert_allclose(out["r"], want, rtol=1e-12)


@pytest.mark.parametrize("ddof", [0, 1, 2])
@pytest.mark.parametrize("axis", ["0", "1", "[0, 1]"])
def test_var_and_std_divide_by_n_minus_ddof(compile_nn, ddof: int, axis: str) -> None:
    """Population (ddof=0, numpy's default) unless told; over the batch N too, known only at the call."""
    _, out = _run(compile_nn, f"input x: float[N, 4]\nv = var(x, axis={axis}, ddof={ddof})\n"
                  f"s = std(x, {axis}, false, {ddof})\noutput v, s\n")
    axes = tuple(eval(axis)) if "[" in axis else int(axis)   # noqa: S307 - our own literal
    np.testing.assert_allclose(out["v"], np.var(X, axis=axes, ddof=ddof), rtol=1e-12)
    np.testing.assert_allclose(out["s"], np.std(X, axis=axes, ddof=ddof), rtol=1e-12)


def test_var_with_ddof_as_large_as_the_count_is_an_error(compile_nn) -> None:
    err = _error(compile_nn, "input x: float[3, 4]\nv = var(x, axis=1, ddof=4)\noutput v\n")
    assert "var() over 4 entries needs ddof < 4, not 4" in err.message and err.loc.line == 2


def test_argmax_gives_the_first_index_of_a_tie_as_int64(compile_nn) -> None:
    tied = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    module, out = _run(compile_nn, "input x: float[N, 4]\np = argmax(x, axis=1)\noutput p\n", x=tied)
    assert module.OUTPUTS["p"] == (("N",), "int64") and out["p"].tolist() == [1, 0]


def test_argmax_takes_one_axis(compile_nn) -> None:
    err = _error(compile_nn, HEADER + "p = argmax(x, axis=[0, 1])\noutput p\n")
    assert "argmax() takes one axis (an int) or none" in err.message


def test_an_accuracy_is_the_mean_of_a_mask(compile_nn) -> None:
    _, out = _run(compile_nn, HEADER + "acc = mean(argmax(x, axis=1) == y)\noutput acc\n", "float32")
    assert out["acc"].dtype == np.float32 and out["acc"] == np.float32(np.mean(np.argmax(X, axis=1) == Y))


# ---- one_hot --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_one_hot_is_rows_of_the_identity_in_the_modules_dtype(compile_nn, dtype: str) -> None:
    _, out = _run(compile_nn, HEADER + "t = one_hot(y, 4)\nu = one_hot(y[None], 5)\noutput t, u\n", dtype)
    assert out["t"].dtype == dtype
    np.testing.assert_array_equal(out["t"], np.eye(4)[Y])
    np.testing.assert_array_equal(out["u"], np.eye(5)[Y][None])


def test_one_hot_of_many_classes_takes_memory_for_its_result_only(compile_nn) -> None:
    """Rows of eye(n) took n x n floats: one_hot(y, 65536) asked for 16 GiB for any batch."""
    import tracemalloc

    module = compile_nn("input y: int[N]\ninput k: int = 2\nt = one_hot(y, 65536)\nu = one_hot(k, 3)\n"
                        "output t, u\n", dtype="float32")
    tracemalloc.start()
    try:
        out = module.forward({}, y=np.array([0, 65535, 7]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 3 * 65536, f"{peak} bytes at the peak"
    assert out["t"].dtype == np.float32 and out["t"].shape == (3, 65536) and out["t"].sum() == 3
    assert out["t"][1, 65535] == out["t"][2, 7] == 1
    np.testing.assert_array_equal(out["u"], [0, 0, 1])


def test_one_hot_checks_its_labels_when_called(compile_nn) -> None:
    module = compile_nn(HEADER + "t = one_hot(y, 4)\noutput t\n")
    with pytest.raises(ValueError, match=r"input 'y' holds -1: .* must lie in \[0, 4\)"):
        module.forward({}, x=X, y=np.array([0, 1, 2, 3, -1]))
    with pytest.raises(ValueError, match=r"input 'y' holds 4"):
        module.forward({}, x=X, y=np.array([0, 1, 2, 3, 4]))


@pytest.mark.parametrize(("call", "message", "col"), [
    ("one_hot(x, 4)", "one_hot needs integer labels, but 'x' is float[N, 4]; declare them as int[...]", 13),
    ("one_hot(x * 2.0, 4)", "one_hot needs integer labels, but the labels are float[N, 4]", 13),
    ("one_hot(y, 0)", "one_hot() needs the number of classes n, a positive whole number, not 0", 5),
    ("one_hot(y, 2.5)", "not 2.5", 5),
])
def test_one_hot_errors(compile_nn, call: str, message: str, col: int) -> None:
    err = _error(compile_nn, HEADER + f"t = {call}\noutput t\n")
    assert message in err.message and (err.loc.line, err.loc.col) == (3, col)


# ---- x.T, None and ... ------------------------------------------------------------------------

def test_dot_t_reverses_the_axes_of_any_expression(compile_nn) -> None:
    module, out = _run(compile_nn, HEADER + "input W: float[4, 3]\na = x.T\nb = (x @ W).T\nc = x[0].T\n"
                       "output a, b, c\n", W=X[:, :3][:4].copy())
    W = X[:, :3][:4]
    np.testing.assert_array_equal(out["a"], X.T)
    np.testing.assert_allclose(out["b"], (X @ W).T, rtol=1e-12)
    np.testing.assert_array_equal(out["c"], X[0])
    assert module.OUTPUTS["a"][0] == (4, "N")


def _subscripts(draw, rank: int) -> str:
    """A numpy subscript with slices, integers, None and at most one ..., over ``rank`` axes."""
    parts, axes = [], rank
    ellipsis = draw(st.booleans())
    written = draw(st.integers(0, axes))
    for _ in range(written):
        parts.append(draw(st.sampled_from([":", "1", "-1", "0:2", "1:", None])))
    for _ in range(draw(st.integers(0, 2))):
        parts.insert(draw(st.integers(0, len(parts))), "None")
    if ellipsis:
        parts.insert(draw(st.integers(0, len(parts))), "...")
    return ", ".join(p if p is not None else ":" for p in parts)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_none_and_ellipsis_index_as_numpy_does(tmp_path_factory, data) -> None:
    from nncompile.compiler import compile_and_load

    shape = data.draw(st.lists(st.integers(2, 4), min_size=1, max_size=3).map(tuple))
    subscript = _subscripts(data.draw, len(shape))
    if not subscript:
        return
    x = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    want = eval(f"x[{subscript}]")   # noqa: S307 - numpy as the oracle, on our own text
    path = write_nn(tmp_path_factory.mktemp("index"), "index.nn",
                    f"input x: float[{', '.join(map(str, shape))}]\nv = x[{subscript}] * 1\noutput v\n")
    got = compile_and_load(path, dtype="float64").forward({}, x=x)["v"]
    assert got.shape == want.shape, subscript
    np.testing.assert_array_equal(got, want, err_msg=subscript)


def test_a_new_axis_over_the_batch_broadcasts_pairwise(compile_nn) -> None:
    _, out = _run(compile_nn, HEADER + "d = sum((x[:, None] - x[None, ...]) ** 2, axis=-1)\noutput d\n")
    np.testing.assert_allclose(out["d"], ((X[:, None] - X[None]) ** 2).sum(-1), rtol=1e-12)


@pytest.mark.parametrize(("subscript", "message", "col"), [
    ("..., 0, ...", "a subscript may have only one '...'", 15),
    ("None, y", "None (a new axis) cannot be mixed with index tensors in one subscript", 7),
    ("..., 0, 1, 2", "too many subscripts: the value has shape [N, 4] (2 axes), but 3 are given", 18),
])
def test_subscript_errors_are_located(compile_nn, subscript: str, message: str, col: int) -> None:
    err = _error(compile_nn, HEADER + f"v = x[{subscript}]\noutput v\n")
    assert message in err.message and (err.loc.line, err.loc.col) == (3, col), err


def test_a_chained_comparison_is_a_clean_error_from_the_cli(tmp_path) -> None:
    path = write_nn(tmp_path, "chain.nn", HEADER + "m = 0 < x < 1\noutput m\n")
    done = cli("compile", path, "-o", tmp_path / "out.py")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"{path}:3:11: error: comparisons do not chain" in done.stderr and "(a < b) * (b < c)" in done.stderr
    assert not (tmp_path / "out.py").exists()


def test_none_is_no_value_outside_subscripts_and_attributes(compile_nn) -> None:
    err = _error(compile_nn, HEADER + "v = x + None\noutput v\n")
    assert "None is a new axis in a subscript (x[:, None]) or an attribute not given (axis=None)" in err.message
    assert (err.loc.line, err.loc.col) == (3, 9)


# ---- the CuPy form ----------------------------------------------------------------------------

EVERY_OP = HEADER + """
input t: float[4]
param W: [4, 4] = xavier()
s = x @ W
predicted = argmax(s, axis=1, keepdims=true)
accuracy = mean(argmax(s, axis=1) == y)
masks = (s > t) + (s != 0) * 2 + (s <= -0.5) * 4
picked = where(s >= 0, s, 0.1 * s) + clip(s, -0.5, 0.5) * one_hot(y, 4)
spread = var(s, axis=0, keepdims=true) + std(s, axis=1)[:, None] + min(s, axis=0) + s.T.T
wide = sum(x[:, None] * x[None, ...], axis=0)
loss = mean(picked * masks) + sum(spread) + mean(wide)
output predicted, accuracy, masks, picked, spread
minimize loss
"""


def test_the_cupy_form_computes_what_numpy_computes(tmp_path, monkeypatch) -> None:
    """On the CPU stand-in for CuPy (tests/fake_cupy.py: fused kernels compiled with gcc)."""
    import nncompile
    from test_cupy_backend import _load_on_fake_cupy

    path = write_nn(tmp_path, "every.nn", EVERY_OP)
    reference = nncompile.compile_and_load(path, dtype="float64")
    source = nncompile.compile_file(path, dtype="float64", backend="cupy")
    assert "cp.argmax(" in source and "cp.where(" in source and "cp.arange(" in source and "cp.min(" in source
    gpu = _load_on_fake_cupy(source, "every_cupy", monkeypatch)
    params, inputs = reference.init_params(0), {"x": X, "y": Y, "t": X[2].copy()}
    want_out, want_grads = reference.value_and_grad(params, **inputs)
    got_out, got_grads = gpu.value_and_grad(params, **inputs)
    for name in want_out:
        assert np.asarray(got_out[name]).dtype == np.asarray(want_out[name]).dtype, name
        np.testing.assert_allclose(got_out[name], want_out[name], rtol=1e-12, err_msg=name)
    for name in want_grads:
        np.testing.assert_allclose(got_grads[name], want_grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_a_file_may_define_its_own_none(compile_nn) -> None:
    """None is a predefined name, not a keyword: a file that names a value None keeps it."""
    _, out = _run(compile_nn, "input x: float[N, 4]\nconst None = 2\nv = x[None, 1] * None\noutput v\n")
    np.testing.assert_array_equal(out["v"], X[2, 1] * 2)
