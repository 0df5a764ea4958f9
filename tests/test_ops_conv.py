"""The conv net ops (nncompile/ops/conv.py) beyond the generated checks of tests/test_ops.py:
their shape errors spell the arithmetic out at the user's line, the numpy forms agree with
the definitions written one output pixel at a time on generated geometries (strides,
padding, dilation, groups), the generated code calls one helper per op with the geometry
as keywords, and a max pool's tie goes to the first maximum, as PyTorch's does."""
from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nncompile
from nncompile.ops import REGISTRY
from nncompile.ops.registry import _Float64Context, _helper_scope

from conftest import cli, write_nn

HEADER = """
input x: float[N, 4, 8, 8]
param W: [6, 4, 3, 3] = he()
param Wg: [6, 2, 3, 3] = he()
param b: [6] = zeros()
"""


@pytest.mark.parametrize(("line", "message"), [
    ("h = conv2d(x, Wg)", "conv2d: the weights [6, 2, 3, 3] take 2 channel(s) per group, but the input has 4 "
                          "channel(s) in 1 group(s), 4 each; expected [6, 4, 3, 3]"),
    ("h = conv2d(x, Wg, groups=4)", "conv2d: groups=4 must divide the 4 input channels and the 6 filters"),
    ("h = conv2d(x, W, W)", "conv2d: the bias [6, 4, 3, 3] must have one entry per filter, [6]"),
    ("h = conv2d(x, W, padding=-1)", "conv2d() needs padding to be a whole number >= 0 or a pair of them "
                                     "[height, width], not -1"),
    ("h = conv2d(b, W)", "conv2d needs an image of shape [N, C, H, W], not [6]"),
    ("h = conv2d(x, W, b, b)", "conv2d() takes an image, weights and optionally a bias, not 4 tensor(s)"),
    ("h = conv2d(x, W, dilation=4)", "conv2d: the height 8 (padded by 0 on each side) is smaller than the kernel, "
                                     "which spans 9"),
    ("h = avg_pool2d(x, 2, padding=2)", "avg_pool2d: padding 2 is more than half the kernel 2, so a window could hold padding only"),
    ("h = max_pool2d(x, [2, 0])", "max_pool2d() needs kernel to be a whole number >= 1 or a pair of them "
                                  "[height, width], not [2, 0]"),
    ("h = global_avg_pool2d(b)", "global_avg_pool2d needs x of shape [N, C, H, W], not [6]"),
])
def test_a_shape_error_is_located_and_spells_the_arithmetic_out(tmp_path: Path, line: str, message: str) -> None:
    path = write_nn(tmp_path, "bad.nn", f"{HEADER}\n{line}\noutput h\n")
    result = cli("check", path)
    assert result.returncode == 1, result
    assert f"bad.nn:6:" in result.stderr and f"error: {message}" in result.stderr, result
    assert "Traceback" not in result.stderr and line in result.stderr


def test_the_generated_code_calls_one_helper_per_op_with_the_geometry_as_keywords(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "net.nn", f"""{HEADER}
        h = relu(conv2d(x, W, b, padding=1))
        g = conv2d(h, Wg, groups=3, stride=[1, 3], dilation=2)
        p = max_pool2d(h, 2)
        loss = sum(g) + sum(avg_pool2d(p, 2))
        minimize loss
    """)
    source = nncompile.compile_file(path)
    assert "h = relu(conv2d(x, W, b, padding=1))" in source
    assert "_conv2d(x, W, b, padding=(1, 1), out=buf" in source
    assert "stride=(1, 3), dilation=(2, 2), groups=3" in source
    assert "_max_pool2d(h, (2, 2), (2, 2), out=buf" in source
    defined = [f.name for f in ast.parse(source).body if isinstance(f, ast.FunctionDef)]
    for helper in ("_windows", "_col2im", "_conv2d", "_conv2d_input_grad", "_conv2d_weight_grad", "_max_pool2d",
                   "_max_pool2d_grad", "_avg_pool2d", "_avg_pool2d_grad"):
        assert defined.count(helper) == 1, helper


def test_no_helper_loops_over_pixels() -> None:
    """Every loop runs over the kernel's offsets (range(kh), the offsets' views or masks), so
    its length is KH*KW whatever the image and batch sizes."""
    helpers = {h for opdef in REGISTRY.values() if opdef.emit.__module__ == "nncompile.ops.conv"
               for h in opdef.helpers}
    assert len(helpers) >= 9
    per_offset = {"range", "enumerate", "kh", "kw", "kernel", "offsets", "masks"}
    for text in helpers:
        for loop in (n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.For)):
            names = {n.id for n in ast.walk(loop.iter) if isinstance(n, ast.Name)}
            assert names <= per_offset, ast.unparse(loop.iter)


# ---- the numpy forms against the definitions, one output pixel at a time ------------------

def conv2d_by_definition(x, w, b, stride, padding, dilation, groups):
    """out[n, f, i, j] = b[f] + sum_{c, p, q} x[n, g(f) C/groups + c, i s + p d - pad, j s + q d - pad] w[f, c, p, q]."""
    n, c, h, width = x.shape
    f, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, f, oh, ow))
    for o, i, j in itertools.product(range(f), range(oh), range(ow)):
        group = o // (f // groups)
        patch = xp[:, group * cg:(group + 1) * cg, i * sh:i * sh + dh * (kh - 1) + 1:dh,
                   j * sw:j * sw + dw * (kw - 1) + 1:dw]
        out[:, o, i, j] = np.einsum("ncpq,cpq->n", patch, w[o]) + (0 if b is None else b[o])
    return out


@st.composite
def conv_geometry(draw):
    """A conv's shapes and geometry, drawn from its output size, plus up to stride - 1 rows
    (or columns) past the last window that the floored output size leaves unread."""
    groups = draw(st.sampled_from((1, 2, 3)))
    cg, fg = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel, stride, padding, dilation, size = [], [], [], [], []
    for _ in range(2):
        k, s, d, p, o = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2)),
                         draw(st.integers(0, 2)), draw(st.integers(1, 3)))
        z = (o - 1) * s + d * (k - 1) + 1 - 2 * p + draw(st.integers(0, s - 1))
        if z < 1:
            p, z = 0, z + 2 * p
        for into, value in zip((kernel, stride, padding, dilation, size), (k, s, p, d, z)):
            into.append(value)
    return dict(n=draw(st.integers(1, 2)), c=groups * cg, f=groups * fg, kernel=tuple(kernel), size=tuple(size),
                stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), groups=groups,
                bias=draw(st.booleans()))


def _run(opname: str, *args, **attrs):
    opdef = REGISTRY[opname]
    names = [f"a{i}" for i in range(len(args))]
    scope = {**_helper_scope(opdef.helpers), **dict(zip(names, args))}
    return eval(opdef.emit(_Float64Context(), names, {**dict(opdef.attrs), **attrs}), scope)  # noqa: S307


@settings(max_examples=60, deadline=None)
@given(conv_geometry(), st.integers(0, 2 ** 32 - 1))
def test_conv2d_and_its_gradients_are_the_definition_and_its_transposes(g: dict, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((g["n"], g["c"], *g["size"]))
    w = rng.standard_normal((g["f"], g["c"] // g["groups"], *g["kernel"]))
    b = rng.standard_normal(g["f"]) if g["bias"] else None
    geometry = {k: g[k] for k in ("stride", "padding", "dilation", "groups")}
    want = conv2d_by_definition(x, w, b, **geometry)
    got = _run("conv2d", x, w, *([b] if b is not None else []), **geometry)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # <u, conv(x, w)> = <T(u, w), x> = <G(x, u), w>: the gradients are the conv's transposes
    u = rng.standard_normal(want.shape)
    base = np.vdot(u, want - (0 if b is None else b[:, None, None]))
    gx = _run("conv2d_input_grad", u, w, size=g["size"], **geometry)
    gw = _run("conv2d_weight_grad", x, u, kernel=g["kernel"], **geometry)
    assert gx.shape == x.shape and gw.shape == w.shape
    np.testing.assert_allclose(np.vdot(gx, x), base, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.vdot(gw, w), base, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_small_images_conv_as_one_matrix_is_the_definition_whatever_the_layouts(dtype) -> None:
    """Images of at most 2*KH*KW pixels (the digits CNN's 4 x 4) take _small_conv2d's
    channels-last columns: a non-contiguous image, a non-contiguous out, a bias, a stride and
    a dilation give the definition's values."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 5, 4, 6)).astype(dtype)[:, :, :, ::-2]      # [3, 5, 4, 3], strided
    w, b = rng.standard_normal((7, 5, 3, 3)).astype(dtype), rng.standard_normal(7).astype(dtype)
    want = conv2d_by_definition(x.astype(np.float64), w, b, (1, 1), (1, 1), (1, 1), 1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    out = np.zeros((7, 3, 4, 3), dtype=dtype).transpose(1, 0, 2, 3)             # not C-contiguous
    scope = {**_helper_scope(REGISTRY["conv2d"].helpers), "x": x, "w": w, "b": b, "out": out}
    result = eval("_conv2d(x, w, b, padding=(1, 1), out=out)", scope)  # noqa: S307
    assert result is out and result.dtype == dtype
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(eval("_small_conv2d(x, w, None, (2, 1), (1, 0), (1, 1))", scope),  # noqa: S307
                               conv2d_by_definition(x.astype(np.float64), w, None, (2, 1), (1, 0), (1, 1), 1),
                               rtol=tol, atol=tol)
    np.testing.assert_allclose(eval("_small_conv2d(x, w, b, (1, 1), (2, 2), (2, 1))", scope),  # noqa: S307
                               conv2d_by_definition(x.astype(np.float64), w, b, (1, 1), (2, 2), (2, 1), 1),
                               rtol=tol, atol=tol)


def test_an_inf_pixel_of_a_small_image_is_infinite_only_in_the_outputs_that_read_it() -> None:
    """The channels-last columns multiply each pixel only by the taps that meet it, as the
    definition does: the image's other outputs stay finite, and so do the other images'."""
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((5, 3, 3, 3))
    x[0, 1, 2, 1] = np.inf
    want = conv2d_by_definition(x, w, None, (1, 1), (1, 1), (1, 1), 1)
    got = _run("conv2d", x, w, padding=1)
    reads = np.isinf(want)
    assert reads[0].any() and not reads[0].all() and not reads[1].any()
    np.testing.assert_array_equal(got[reads], want[reads])
    np.testing.assert_allclose(got[~reads], want[~reads], rtol=1e-12, atol=1e-12)


def test_a_max_pools_tie_goes_to_the_first_maximum_of_the_window() -> None:
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 2:, 2:] = 1.0
    g = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    grad = _run("max_pool2d_grad", g, x, kernel=2)
    want = np.zeros((1, 1, 4, 4))
    want[0, 0, 0, 0], want[0, 0, 0, 2], want[0, 0, 2, 0], want[0, 0, 2, 2] = 1.0, 2.0, 3.0, 4.0
    np.testing.assert_array_equal(grad, want)
    np.testing.assert_array_equal(_run("max_pool2d_select", want, x, kernel=2), g)


def test_a_pool_with_padding_never_picks_the_padding() -> None:
    x = -np.ones((1, 1, 3, 3)) - np.arange(9.0).reshape(1, 1, 3, 3)
    out = _run("max_pool2d", x, kernel=3, stride=2, padding=1)
    np.testing.assert_array_equal(out, [[[[-1.0, -2.0], [-4.0, -5.0]]]])
    avg = _run("avg_pool2d", np.ones((1, 1, 3, 3)), kernel=3, stride=2, padding=1)
    np.testing.assert_allclose(avg, np.full((1, 1, 2, 2), 4 / 9))    # padding counts as zeros


def test_the_gradient_check_of_a_padded_max_pool_is_clean(tmp_path: Path) -> None:
    """A window whose runner-up is padding can never tie: the check sees a large finite gap
    there, not inf (whose slope, inf - inf, numpy warns about on the user's terminal)."""
    path = write_nn(tmp_path, "pool.nn", """
        input X: float[N, 2, 4, 5]
        p = max_pool2d(X, kernel=2, stride=1, padding=1)
        loss = sum(tanh(p) * tanh(p))
        minimize loss
    """)
    result = cli("check", path)
    assert result.returncode == 0, result
    assert "gradient of X" in result.stdout and "ok" in result.stdout
    assert "Warning" not in result.stderr and "invalid value" not in result.stderr, result
