"""Shared fixtures: where the examples live, running the CLI, compiling .nn text."""
from __future__ import annotations

import inspect
import os

# One BLAS thread per process: the suite runs on small machines next to other work, where
# threaded BLAS spinning on busy cores makes a tiny matmul take a hundred times longer.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import signal  # noqa: E402 - after the environment is set
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:  # numpy may already be loaded (by a pytest plugin): limit its BLAS threads in place too
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - optional
    pass
else:
    threadpool_limits(1)

from hypothesis import settings  # noqa: E402

# No example database: nothing is written into the checkout (.hypothesis/), and a failure
# prints the falsifying example, which is what a report needs.
settings.register_profile("nncompile", database=None, print_blob=True)
settings.load_profile("nncompile")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.nn"))


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # shown when an assertion about a run fails
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def as_a_shell_starts_it() -> None:
    """A child's ``preexec_fn``: SIGINT default and unblocked, as a terminal's shell starts a
    command, whatever the tests' process inherited (a suite started in the background has
    SIGINT ignored, which children inherit, and then Python raises no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def cli(*args: str | Path, cwd: str | Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60) -> CliResult:
    """Run ``python -m nncompile ARGS`` as a user would, from ``cwd`` (``env`` adds variables)."""
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("NNCOMPILE_UPDATE_GOLDENS", None)
    done = subprocess.run([sys.executable, "-m", "nncompile", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., CliResult]:
    """``run_cli("eval", "model.nn", "--json")``, run in ``tmp_path`` unless ``cwd=`` says otherwise."""
    def run(*args: str | Path, cwd: str | Path | None = None, env: dict[str, str] | None = None) -> CliResult:
        return cli(*args, cwd=tmp_path if cwd is None else cwd, env=env)
    return run


def write_nn(directory: Path, name: str, text: str) -> Path:
    """Write a .nn file (indentation of a triple-quoted string removed) and return its path."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def compile_nn(tmp_path: Path) -> Callable[..., ModuleType]:
    """``compile_nn(source, dtype="float64")``: the loaded module compiled from .nn text."""
    from nncompile.compiler import compile_and_load

    counter = iter(range(1_000_000))

    def compile_(text: str, name: str | None = None, **options) -> ModuleType:
        path = write_nn(tmp_path, name or f"model{next(counter)}.nn", text)
        return compile_and_load(path, **options)
    return compile_


def value_and_grad(module: ModuleType, params: dict, inputs: dict, seed: int = 0) -> tuple[dict, dict]:
    """(outputs, grads) of any generated module. A model with train/eval behaviour takes
    ``(params, state, rng)`` and also returns its new state; a fixed seed makes dropout's masks
    the same from call to call."""
    if "rng" not in inspect.signature(module.value_and_grad).parameters:
        return module.value_and_grad(params, **inputs)
    outputs, grads, *_ = module.value_and_grad(params, None, np.random.default_rng(seed), **inputs)
    return outputs, grads


def example_inputs(module: ModuleType, n: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float64 values (integer labels in range) for every input without a default."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, (shape, dtype) in module.INPUTS.items():
        if name in module.DEFAULTS:
            continue
        shape = tuple(n if isinstance(d, str) else d for d in shape)
        inputs[name] = rng.integers(0, module.BOUNDS.get(name, 2), shape) if dtype.startswith("int") \
            else rng.standard_normal(shape)
    return inputs


def numeric_grad(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of ``f()`` with respect to every entry of ``x`` (changed in place)."""
    grad = np.zeros(x.shape, dtype=np.float64)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = f()
        flat[i] = old - eps
        minus = f()
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * eps)
    return grad


def assert_grads_match(module: ModuleType, params: dict, inputs: dict, *, rtol: float = 1e-6,
                       atol: float = 1e-8, names: list[str] | None = None) -> None:
    """value_and_grad agrees with central differences of the loss, entry by entry (float64)."""
    params = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    inputs = {k: (np.array(v, dtype=np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v))
              for k, v in inputs.items()}
    _, grads = module.value_and_grad(params, **inputs)
    loss = module.LOSS or next(iter(module.OUTPUTS))
    for name in names or list(grads):
        where = params if name in params else inputs
        x = where[name]

        def f() -> float:
            return float(module.forward(params, **inputs)[loss])
        expected = numeric_grad(f, x)
        np.testing.assert_allclose(grads[name], expected, rtol=rtol, atol=atol, err_msg=f"gradient of {name}")
