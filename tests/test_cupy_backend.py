"""The CuPy backend: every model compiles to a module that parses, imports only numpy and
cupy, fuses elementwise groups into kernels whose CUDA compiles, and computes what the
numpy backend computes (run here on a CPU stand-in for CuPy, and on a GPU when there is one)."""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nncompile
from conftest import example_inputs
from nncompile.codegen import emit_module
from nncompile.compiler import build, load_module
from test_codegen import with_every_number

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


def _compile_with_nvcc(kernels: list[tuple[str, str, str, str]], tmp_path: Path) -> None:
    code = ["#include <math.h>", "typedef float T;"]
    for in_params, _, operation, name in kernels:
        params = ", ".join(in_params.split(", "))
        code.append(f"__device__ void {name}({params}, T& y) {{ {operation}; }}")
    (tmp_path / "kernels.cu").write_text("\n".join(code) + "\n")
    result = subprocess.run(["nvcc", "-c", "kernels.cu", "-o", "kernels.o"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA compiler) is not installed")
@pytest.mark.parametrize("path", SMALL, ids=lambda p: p.stem)
def test_generated_cuda_compiles_with_nvcc(path: Path, tmp_path: Path) -> None:
    _compile_with_nvcc(_kernels(nncompile.compile_file(path, backend="cupy")), tmp_path)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA compiler) is not installed")
def test_kernels_holding_inf_and_nan_compile_with_nvcc(tmp_path: Path) -> None:
    kernels = []
    for value in (np.inf, -np.inf, np.nan):
        kernels += _kernels(emit_module(build(with_every_number(value, "float32"), fuse=True), backend="cupy"))
    assert any("INFINITY" in body for _, _, body, _ in kernels) and any("NAN" in body for _, _, body, _ in kernels)
    _compile_with_nvcc([(a, b, body, f"{name}_{i}") for i, (a, b, body, name) in enumerate(kernels)], tmp_path)


def _load_on_fake_cupy(source: str, name: str, monkeypatch):
    sys.path.insert(0, str(Path(__file__).parent))
    import fake_cupy
    sys.path.pop(0)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    return load_module(source, name)


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_the_cupy_module_computes_what_the_numpy_module_computes(path: Path, monkeypatch) -> None:
    reference = nncompile.compile_and_load(path, dtype="float64")
    gpu = _load_on_fake_cupy(nncompile.compile_file(path, dtype="float64", backend="cupy"), path.stem, monkeypatch)
    params = reference.init_params(1)
    np.testing.assert_array_equal(gpu.init_params(1)[next(iter(params))], params[next(iter(params))]) \
        if params else None
    inputs = example_inputs(reference)
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
    inputs = example_inputs(reference)
    want_out, want_grads = reference.value_and_grad(params, **inputs)[:2]
    got_out, got_grads = gpu.value_and_grad({k: cp.asarray(v) for k, v in params.items()},
                                            **{k: cp.asarray(v) for k, v in inputs.items()})[:2]
    for key in want_out:
        np.testing.assert_allclose(cp.asnumpy(got_out[key]), want_out[key], rtol=1e-9, atol=1e-12)
    for key in want_grads:
        np.testing.assert_allclose(cp.asnumpy(got_grads[key]), want_grads[key], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"])
def test_each_optimizer_step_is_one_kernel_per_param_and_matches_numpy(optimizer: str, monkeypatch) -> None:
    path = ROOT / "examples" / "mlp.nn"
    reference = nncompile.compile_and_load(path, dtype="float64", input_grads=False, optimizer=optimizer)
    source = nncompile.compile_file(path, dtype="float64", input_grads=False, optimizer=optimizer, backend="cupy")
    update = source[source.index("def apply_update"):source.index("def step")]
    assert update.count(f"_{optimizer}_kernel(") == len(reference.PARAMS), "one kernel call per param"
    assert source.count(f"_{optimizer}_kernel = cp.ElementwiseKernel(") == 1
    gpu = _load_on_fake_cupy(source, f"mlp_{optimizer}", monkeypatch)
    params_np, params_gpu = reference.init_params(0), gpu.init_params(0)
    state_np, state_gpu = reference.init_opt_state(params_np), gpu.init_opt_state(params_gpu)
    inputs = example_inputs(reference)
    for _ in range(3):
        reference.step(params_np, state_np, 0.01, **inputs)
        gpu.step(params_gpu, state_gpu, 0.01, **inputs)
    for name in params_np:
        np.testing.assert_allclose(params_gpu[name], params_np[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (the CUDA compiler) is not installed")
def test_optimizer_kernels_compile_with_nvcc(tmp_path: Path) -> None:
    from nncompile.optim import OPTIMIZERS

    code = ["#include <math.h>", "typedef float T;"]
    for d in OPTIMIZERS.values():
        params = ", ".join([f"T {a}" for a in ("g", *d.kernel_args)] + [f"T& {a}" for a in ("p", *d.slots)])
        code.append(f"__device__ void nncompile_{d.name}({params}) {{ {d.cuda} }}")
    (tmp_path / "optimizers.cu").write_text("\n".join(code) + "\n")
    result = subprocess.run(["nvcc", "-c", "optimizers.cu", "-o", "optimizers.o"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("model", ["digits_mlp", "batchnorm_mlp"])
def test_the_trainer_runs_the_cupy_backend_and_learns_what_numpy_learns(model: str, monkeypatch) -> None:
    """Training on the GPU path (here the CPU stand-in): the data goes to the device once
    per epoch, params and optimiser state live there, and without dropout the run is the
    numpy run to rounding."""
    from nncompile.train import TrainConfig, Trainer
    from nncompile.train.data import Dataset

    sys.path.insert(0, str(Path(__file__).parent))
    import fake_cupy
    sys.path.pop(0)
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    rng = np.random.default_rng(0)
    n, features = 96, {"digits_mlp": 64, "batchnorm_mlp": 32}[model]
    data = Dataset({"X": rng.standard_normal((n, features)), "y": rng.integers(0, 10, n)}, "random", "y")
    results = {}
    for backend in ("numpy", "cupy"):
        config = TrainConfig(epochs=2, batch_size=32, dtype="float64", backend=backend, patience=0, val_split=0.0)
        trainer = Trainer(ROOT / "examples" / f"{model}.nn", config)
        assert "cp.ElementwiseKernel" in trainer.source if backend == "cupy" else "import cupy" not in trainer.source
        trainer.fit(data)
        state = trainer.state
        results[backend] = (state.params, trainer.evaluate(state.params, data, state.model_state))
    for name, value in results["numpy"][0].items():
        np.testing.assert_allclose(results["cupy"][0][name], value, rtol=1e-9, atol=1e-12, err_msg=name)
    assert results["cupy"][1].acc == results["numpy"][1].acc


def test_fused_sign_is_zero_at_zero_as_numpy_says(monkeypatch, tmp_path: Path) -> None:
    """abs' gradient multiplies by sign(x): the GPU kernel must agree with np.sign at 0."""
    path = tmp_path / "abs.nn"
    path.write_text("input x: float[N]\nloss = sum(abs(x) * 3)\nminimize loss\n")
    reference = nncompile.compile_and_load(path, dtype="float64")
    source = nncompile.compile_file(path, dtype="float64", backend="cupy")
    assert re.search(r"\(T\)\((x\d) > 0\) - \(T\)\(\1 < 0\)", source), "sign is fused into the gradient kernel"
    gpu = _load_on_fake_cupy(source, "abs_gpu", monkeypatch)
    x = np.array([-2.0, 0.0, 0.0, 1.5])
    np.testing.assert_array_equal(gpu.value_and_grad({}, x=x)[1]["x"], reference.value_and_grad({}, x=x)[1]["x"])
    np.testing.assert_array_equal(reference.value_and_grad({}, x=x)[1]["x"], [-3.0, 0.0, 0.0, 3.0])
