"""The CuPy backend: every model compiles to a module that parses, imports only numpy and
cupy, fuses elementwise groups into kernels whose CUDA compiles, and computes what the
numpy backend computes (run here on a CPU stand-in for CuPy, and on a GPU when there is one)."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nncompile
from nncompile.compiler import load_module

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "examples").glob("*.nn")) + sorted((ROOT / "benchmarks" / "models").glob("*.nn"))
SMALL = [p for p in MODELS if p.stem != "deep_tanh"]


def _kernels(source: str) -> list[tuple[str, str, str, str]]:
    tree = ast.parse(source)
    return [tuple(a.value for a in call.args) for call in ast.walk(tree)
            if isinstance(call, ast.Call) and getattr(call.func, "attr", "") == "ElementwiseKernel"]


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_every_model_compiles_to_a_cupy_module_that_parses(path: Path) -> None:
    source = nncompile.compile_file(path, backend="cupy")
    tree = ast.parse(source)
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(isinstance(node, ast.ImportFrom) for node in ast.walk(tree))
    assert imported == {"numpy", "cupy"}
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    for name in ("forward", "_read_inputs"):
        host_calls = [ast.unparse(c) for c in ast.walk(functions[name]) if isinstance(c, ast.Call)
                      and isinstance(c.func, ast.Attribute) and ast.unparse(c.func).startswith("np.")]
        assert host_calls == [], f"{name} computes on the host: {host_calls}"


def test_bias_add_and_relu_become_one_kernel() -> None:
    source = nncompile.compile_file(ROOT / "benchmarks" / "models" / "mlp_small.nn", backend="cupy")
    bodies = [body for _, _, body, _ in _kernels(source)]
    assert "y = max((x0 + x1), (T)0)" in bodies
    assert any("x0 *" in b and "> (T)0.0" in b for b in bodies), bodies  # relu backward: mask times grad
    assert source.count("cp.ElementwiseKernel(") == len(set(bodies)), "each kernel is defined once"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA compiler) is not installed")
@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_generated_cuda_compiles_with_nvcc(path: Path, tmp_path: Path) -> None:
    kernels = _kernels(nncompile.compile_file(path, backend="cupy"))
    code = ["#include <math.h>", "typedef float T;"]
    for in_params, _, operation, name in kernels:
        params = ", ".join(in_params.split(", "))
        code.append(f"__device__ void {name}({params}, T& y) {{ {operation}; }}")
    (tmp_path / "kernels.cu").write_text("\n".join(code) + "\n")
    result = subprocess.run(["nvcc", "-c", "kernels.cu", "-o", "kernels.o"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def _load_on_fake_cupy(source: str, name: str, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    import fake_cupy
    sys.path.pop(0)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    return load_module(source, name)


def _inputs(module, n=5):
    rng = np.random.default_rng(0)
    out = {}
    for name, (shape, dtype) in module.INPUTS.items():
        if name in module.DEFAULTS:
            continue
        shape = tuple(n if isinstance(d, str) else d for d in shape)
        out[name] = rng.integers(0, module.BOUNDS.get(name, 2), shape) if dtype.startswith("int") \
            else rng.standard_normal(shape)
    return out


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_the_cupy_module_computes_what_the_numpy_module_computes(path: Path, monkeypatch) -> None:
    reference = nncompile.compile_and_load(path, dtype="float64")
    gpu = _load_on_fake_cupy(nncompile.compile_file(path, dtype="float64", backend="cupy"), path.stem, monkeypatch)
    params = reference.init_params(1)
    np.testing.assert_array_equal(gpu.init_params(1)[next(iter(params))], params[next(iter(params))]) \
        if params else None
    inputs = _inputs(reference)
    for _ in range(2):  # the second call runs on a reused workspace
        want_out, want_grads = reference.value_and_grad(params, None, np.random.default_rng(0), **inputs)[:2]
        got_out, got_grads = gpu.value_and_grad(params, None, np.random.default_rng(0), **inputs)[:2]
        for key in want_out:
            np.testing.assert_allclose(got_out[key], want_out[key], rtol=1e-10, atol=1e-12, err_msg=key)
        for key in want_grads:
            np.testing.assert_allclose(got_grads[key], want_grads[key], rtol=1e-10, atol=1e-12, err_msg=key)


def _gpu_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver or no device all mean "no GPU"
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs CuPy and an NVIDIA GPU")
@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_on_the_gpu_gradients_match_the_numpy_backend(path: Path) -> None:
    import cupy as cp

    reference = nncompile.compile_and_load(path, dtype="float64")
    gpu = nncompile.compile_and_load(path, dtype="float64", backend="cupy")
    params = reference.init_params(2)
    inputs = _inputs(reference)
    want_out, want_grads = reference.value_and_grad(params, **inputs)[:2]
    got_out, got_grads = gpu.value_and_grad({k: cp.asarray(v) for k, v in params.items()},
                                            **{k: cp.asarray(v) for k, v in inputs.items()})[:2]
    for key in want_out:
        np.testing.assert_allclose(cp.asnumpy(got_out[key]), want_out[key], rtol=1e-9, atol=1e-12)
    for key in want_grads:
        np.testing.assert_allclose(cp.asnumpy(got_grads[key]), want_grads[key], rtol=1e-9, atol=1e-12)
