"""conv2d, max_pool2d and avg_pool2d against PyTorch autograd in float64, on generated
geometries (strides, padding, dilation and groups per axis; batch sizes 1 and 2): a .nn
model is compiled as a user would, and its values and the gradients of every operand are
compared with torch.nn.functional's. Run by ``bash scripts/differential.sh``; skipped
without PyTorch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from nncompile.compiler import compile_and_load

from conftest import write_nn
from test_ops_conv import conv_geometry

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytestmark = pytest.mark.differential


def _nn_pair(values: tuple[int, int]) -> str:
    return f"[{values[0]}, {values[1]}]"


def _compare(module, inputs: dict[str, np.ndarray], torch_loss, tolerance: float = 1e-10) -> None:
    outputs, grads = module.value_and_grad({}, **inputs)
    leaves = {name: torch.tensor(value, dtype=torch.float64, requires_grad=True) for name, value in inputs.items()
              if name != "t"}
    out, loss = torch_loss(leaves, torch.tensor(inputs["t"]))
    loss.backward()
    np.testing.assert_allclose(outputs["out"], out.detach().numpy(), rtol=tolerance, atol=tolerance)
    for name, leaf in leaves.items():
        np.testing.assert_allclose(grads[name], leaf.grad.numpy(), rtol=tolerance, atol=tolerance, err_msg=name)


@settings(max_examples=40, deadline=None)
@given(geometry=conv_geometry(), seed=st.integers(0, 2 ** 32 - 1))
def test_conv2d_matches_torch(tmp_path_factory, geometry: dict, seed: int) -> None:
    g = geometry
    out_size = [(z + 2 * p - d * (k - 1) - 1) // s + 1 for z, p, d, k, s in
                zip(g["size"], g["padding"], g["dilation"], g["kernel"], g["stride"])]
    path = write_nn(tmp_path_factory.mktemp("conv"), "conv.nn", f"""
        input x: float[N, {g['c']}, {g['size'][0]}, {g['size'][1]}]
        input W: float[{g['f']}, {g['c'] // g['groups']}, {g['kernel'][0]}, {g['kernel'][1]}]
        input b: float[{g['f']}]
        input t: float[N, {g['f']}, {out_size[0]}, {out_size[1]}]
        out = conv2d(x, W{', b' if g['bias'] else ''}, stride={_nn_pair(g['stride'])}, padding={_nn_pair(g['padding'])},
                     dilation={_nn_pair(g['dilation'])}, groups={g['groups']})
        loss = sum(out * t) + 0 * sum(b)
        output out
        minimize loss
    """.replace("\n                     ", " "))
    module = compile_and_load(path, dtype="float64")
    rng = np.random.default_rng(seed)
    inputs = {"x": rng.standard_normal((g["n"], g["c"], *g["size"])),
              "W": rng.standard_normal((g["f"], g["c"] // g["groups"], *g["kernel"])),
              "b": rng.standard_normal(g["f"]), "t": rng.standard_normal((g["n"], g["f"], *out_size))}

    def reference(leaves, t):
        out = F.conv2d(leaves["x"], leaves["W"], leaves["b"] if g["bias"] else None, stride=g["stride"],
                       padding=g["padding"], dilation=g["dilation"], groups=g["groups"])
        return out, (out * t).sum() + 0 * leaves["b"].sum()
    _compare(module, inputs, reference)


@st.composite
def pool_geometry(draw):
    kernel, stride, padding, size = [], [], [], []
    for _ in range(2):
        k, s, o = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
        p = draw(st.integers(0, k // 2))
        z = max((o - 1) * s + k - 2 * p, 1)
        if (z + 2 * p - k) % s or z + 2 * p < k:
            p, z = 0, (o - 1) * s + k
        for into, value in zip((kernel, stride, padding, size), (k, s, p, z)):
            into.append(value)
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), kernel=tuple(kernel), stride=tuple(stride),
                padding=tuple(padding), size=tuple(size), op=draw(st.sampled_from(("max_pool2d", "avg_pool2d"))))


@settings(max_examples=40, deadline=None)
@given(geometry=pool_geometry(), seed=st.integers(0, 2 ** 32 - 1))
def test_the_pools_match_torch(tmp_path_factory, geometry: dict, seed: int) -> None:
    g = geometry
    out_size = [(z + 2 * p - k) // s + 1 for z, p, k, s in zip(g["size"], g["padding"], g["kernel"], g["stride"])]
    path = write_nn(tmp_path_factory.mktemp("pool"), "pool.nn", f"""
        input x: float[N, {g['c']}, {g['size'][0]}, {g['size'][1]}]
        input t: float[N, {g['c']}, {out_size[0]}, {out_size[1]}]
        out = {g['op']}(x, {_nn_pair(g['kernel'])}, stride={_nn_pair(g['stride'])}, padding={_nn_pair(g['padding'])})
        loss = sum(out * t)
        output out
        minimize loss
    """)
    module = compile_and_load(path, dtype="float64")
    rng = np.random.default_rng(seed)
    shape = (g["n"], g["c"], *g["size"])
    x = rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.1   # no ties
    inputs = {"x": x, "t": rng.standard_normal((g["n"], g["c"], *out_size))}

    def reference(leaves, t):
        pool = F.max_pool2d if g["op"] == "max_pool2d" else F.avg_pool2d
        out = pool(leaves["x"], g["kernel"], g["stride"], g["padding"])
        return out, (out * t).sum()
    _compare(module, inputs, reference)
