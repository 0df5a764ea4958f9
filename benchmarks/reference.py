"""Hand-written baselines that the compiled modules are measured against.

Every implementation takes the *same* parameter dict (numpy arrays keyed like the
compiled module's PARAMS, e.g. ``"fc1.W"``) so that all of them compute on identical
numbers, and returns ``(outputs, grads)`` keyed like the compiled module's
``value_and_grad``. Torch and JAX are optional: when they are not installed their
factories return ``None`` and callers skip those rows.

Run ``python benchmarks/reference.py`` to check that all available implementations
agree (float64 and float32) and to print the timings of the references alone.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # thread pools read these at import time; see pin_threads()
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import argparse
import gc
import statistics
import time
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

try:  # optional baseline
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None  # type: ignore[assignment]

try:  # optional baseline
    import jax
    import jax.numpy as jnp
except ImportError:  # pragma: no cover - depends on the environment
    jax = None  # type: ignore[assignment]
    jnp = None  # type: ignore[assignment]

Arrays = dict[str, np.ndarray]
Params = Mapping[str, np.ndarray]
Result = tuple[Arrays, Arrays]  # (outputs, grads), both as numpy


@dataclass(frozen=True)
class Runner:
    """One implementation bound to fixed data.

    ``step()`` is exactly what gets timed (one forward+backward, results left in the
    framework's own types, JAX results already blocked on); ``to_numpy(step())``
    converts its results for comparison, outside the timed region.
    """

    name: str
    step: Callable[[], Any]
    to_numpy: Callable[[Any], Result]

    def result(self) -> Result:
        return self.to_numpy(self.step())


# --------------------------------------------------------------------------- helpers


def pin_threads(n: int) -> str:
    """Make numpy/BLAS, torch and XLA use the same number of cores; return a summary.

    Env vars cover OpenBLAS/MKL/OpenMP (only if set before numpy is imported, which the
    scripts do). XLA's CPU thread pool ignores XLA_FLAGS in current jaxlib, so the
    process is also pinned to ``n`` cores with ``sched_setaffinity``, which every
    framework's pool respects.
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    pinned = "no affinity (not Linux)"
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:n]
        os.sched_setaffinity(0, cores)
        pinned = f"pinned to cores {cores}"
    if torch is not None:
        torch.set_num_threads(n)
    try:  # in case numpy was imported before the env vars were set
        from threadpoolctl import threadpool_info, threadpool_limits

        threadpool_limits(n)

        blas = ", ".join(
            f"{i['internal_api']} {i.get('version', '')} x{i['num_threads']}"
            for i in threadpool_info()
        )
    except ImportError:
        blas = "threadpoolctl not installed"
    return f"{n} thread(s), {pinned}; BLAS: {blas}"


def time_us(fn: Callable[[], Any], repeat: int, warmup: int = 10) -> list[float]:
    """Per-call wall times in microseconds (perf_counter), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection landing in one call is noise, not cost
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def time_us_interleaved(fns: Mapping[str, Callable[[], Any]], repeat: int, warmup: int = 10,
                        block: int = 10) -> dict[str, list[float]]:
    """Per-call times like :func:`time_us`, for several implementations measured in turns
    (``block`` calls each per round), so a machine that speeds up or slows down during the
    run moves every row alike and the ratios stay fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(max(1, repeat // block)):
            for name, fn in fns.items():
                for _ in range(block):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t0) * 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference scaled by the largest magnitude of ``b`` (norm-wise error)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def mlp_layers(params: Mapping[str, Any]) -> int:
    """Number of affine layers: params are fc1.W, fc1.b, ..., fcL.W, fcL.b."""
    n = 0
    while f"fc{n + 1}.W" in params:
        n += 1
    if n == 0:
        raise ValueError("MLP params must be named fc1.W, fc1.b, ...")
    return n


def init_mlp(widths: list[int], seed: int = 0, dtype: Any = np.float32) -> Arrays:
    """He-initialised weights and small random biases (non-zero, so bias bugs show)."""
    rng = np.random.default_rng(seed)
    params: Arrays = {}
    for i, (k, m) in enumerate(zip(widths[:-1], widths[1:], strict=True), start=1):
        params[f"fc{i}.W"] = (rng.standard_normal((k, m)) * np.sqrt(2.0 / k)).astype(dtype)
        params[f"fc{i}.b"] = (0.1 * rng.standard_normal(m)).astype(dtype)
    return params


def mlp_data(n: int, d: int, c: int, seed: int = 1, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), rng.integers(0, c, n).astype(np.int64)


# ----------------------------------------------------------------------------- numpy


def mlp_numpy(params: Params, X: np.ndarray, y: np.ndarray, input_grad: bool = False) -> Result:
    """MLP (relu hidden layers) + mean softmax cross-entropy, forward and backward.

    Written as a careful numpy user would: no persistent workspace, but in-place
    updates where they are free, transposed operands passed as views (matmul hands
    them to BLAS with a transpose flag instead of copying), stable log-softmax, relu
    backward as a multiply by the mask, and everything in the input dtype.
    """
    L = mlp_layers(params)
    acts = [X]  # the input of each layer, kept for the backward pass
    h = X
    for i in range(1, L):
        z = h @ params[f"fc{i}.W"]
        z += params[f"fc{i}.b"]
        h = np.maximum(z, 0, out=z)
        acts.append(h)
    scores = h @ params[f"fc{L}.W"]
    scores += params[f"fc{L}.b"]

    n = X.shape[0]
    rows = np.arange(n)
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    lse = np.log(s)
    loss = (lse[:, 0] - shifted[rows, y]).mean()

    g = e
    g /= s  # softmax probabilities
    g[rows, y] -= 1
    g *= 1 / n
    grads: Arrays = {}
    for i in range(L, 0, -1):
        W, h_in = params[f"fc{i}.W"], acts[i - 1]
        grads[f"fc{i}.W"] = h_in.T @ g
        grads[f"fc{i}.b"] = g.sum(axis=0)
        if i > 1:
            g = g @ W.T
            np.multiply(g, h_in > 0, out=g)
        elif input_grad:
            grads["X"] = g @ W.T
    return {"scores": scores, "loss": np.asarray(loss)}, grads


def deep_tanh_numpy(params: Params, X: np.ndarray, prefix: str = "h", input_grad: bool = False) -> Result:
    """``h = repeat L block(X)`` with block = tanh(x @ W + b); loss = sum(h**2)."""
    L = 0
    while f"{prefix}.{L + 1}.W" in params:
        L += 1
    hs = [X]
    for i in range(1, L + 1):
        z = hs[-1] @ params[f"{prefix}.{i}.W"]
        z += params[f"{prefix}.{i}.b"]
        hs.append(np.tanh(z, out=z))
    h = hs[-1]
    loss = np.vdot(h, h)
    g = 2 * h
    grads: Arrays = {}
    for i in range(L, 0, -1):
        out = hs[i]
        g *= 1 - out * out  # tanh' = 1 - tanh^2
        grads[f"{prefix}.{i}.W"] = hs[i - 1].T @ g
        grads[f"{prefix}.{i}.b"] = g.sum(axis=0)
        if i > 1 or input_grad:
            g = g @ params[f"{prefix}.{i}.W"].T
    if input_grad:
        grads["X"] = g
    return {prefix: h, "loss": np.asarray(loss)}, grads


def circuit_numpy(x: Any, y: Any, z: Any) -> Result:
    """f = (x + y) * z and df/dx, df/dy, df/dz, by hand (CS231n backprop circuit)."""
    q = x + y
    f = q * z
    dq = z  # df/dq
    return {"f": f}, {"x": dq, "y": dq, "z": q}


def numpy_mlp_runner(params: Params, X: np.ndarray, y: np.ndarray, input_grad: bool = False) -> Runner:
    return Runner("numpy", lambda: mlp_numpy(params, X, y, input_grad), lambda r: r)


def numpy_circuit_runner(x: Any, y: Any, z: Any) -> Runner:
    return Runner("numpy", lambda: circuit_numpy(x, y, z), lambda r: r)


# ----------------------------------------------------------------------------- torch


def _torch_np(t: Any) -> np.ndarray:
    return t.detach().numpy()


def torch_mlp_runner(params: Params, X: np.ndarray, y: np.ndarray, input_grad: bool = False) -> Runner | None:
    """PyTorch eager on CPU: addmm (what nn.Linear does), F.cross_entropy, autograd.grad.

    Tensors are built once with ``from_numpy`` (shared memory) so the timed step
    contains no conversions; ``autograd.grad`` avoids ``.grad`` accumulation/zeroing.
    """
    if torch is None:
        return None
    import torch.nn.functional as F

    L = mlp_layers(params)
    names = [f"fc{i}.{p}" for i in range(1, L + 1) for p in ("W", "b")]
    leaves = {k: torch.from_numpy(np.ascontiguousarray(params[k])).requires_grad_() for k in names}
    Xt = torch.from_numpy(X).requires_grad_(input_grad)
    yt = torch.from_numpy(y.astype(np.int64))
    wrt = list(leaves.values()) + ([Xt] if input_grad else [])
    keys = names + (["X"] if input_grad else [])

    def step() -> Any:
        h = Xt
        for i in range(1, L):
            h = torch.relu(torch.addmm(leaves[f"fc{i}.b"], h, leaves[f"fc{i}.W"]))
        scores = torch.addmm(leaves[f"fc{L}.b"], h, leaves[f"fc{L}.W"])
        loss = F.cross_entropy(scores, yt)
        return loss, scores, torch.autograd.grad(loss, wrt)

    def to_numpy(r: Any) -> Result:
        loss, scores, gs = r
        grads = {k: _torch_np(g) for k, g in zip(keys, gs, strict=True)}
        return {"scores": _torch_np(scores), "loss": _torch_np(loss)}, grads

    return Runner("torch", step, to_numpy)


def torch_circuit_runner(x: Any, y: Any, z: Any) -> Runner | None:
    if torch is None:
        return None
    xt, yt, zt = (torch.tensor(np.asarray(v), requires_grad=True) for v in (x, y, z))

    def step() -> Any:
        f = (xt + yt) * zt
        return f, torch.autograd.grad(f, (xt, yt, zt))

    def to_numpy(r: Any) -> Result:
        f, (gx, gy, gz) = r
        return {"f": _torch_np(f)}, {"x": _torch_np(gx), "y": _torch_np(gy), "z": _torch_np(gz)}

    return Runner("torch", step, to_numpy)


# ------------------------------------------------------------------------------- jax


def _jax_mlp_loss(L: int) -> Callable[..., Any]:
    def loss_fn(params: Mapping[str, Any], X: Any, y: Any) -> Any:
        h = X
        for i in range(1, L):
            h = jax.nn.relu(h @ params[f"fc{i}.W"] + params[f"fc{i}.b"])
        scores = h @ params[f"fc{L}.W"] + params[f"fc{L}.b"]
        logp = jax.nn.log_softmax(scores, axis=1)
        loss = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))
        return loss, scores

    return loss_fn


def jax_mlp_runner(params: Params, X: np.ndarray, y: np.ndarray, input_grad: bool = False) -> Runner | None:
    """``jax.jit(jax.value_and_grad(loss, has_aux=True))``; arrays moved to device once."""
    if jax is None:
        return None
    L = mlp_layers(params)
    fn = jax.jit(jax.value_and_grad(_jax_mlp_loss(L), argnums=(0, 1) if input_grad else 0, has_aux=True))
    p = {k: jnp.asarray(v) for k, v in params.items() if k.startswith("fc")}
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def step() -> Any:
        return jax.block_until_ready(fn(p, Xj, yj))

    def to_numpy(r: Any) -> Result:
        (loss, scores), g = r
        grads = {k: np.asarray(v) for k, v in (g[0] if input_grad else g).items()}
        if input_grad:
            grads["X"] = np.asarray(g[1])
        return {"scores": np.asarray(scores), "loss": np.asarray(loss)}, grads

    return Runner("jax", step, to_numpy)


def jax_circuit_runner(x: Any, y: Any, z: Any) -> Runner | None:
    if jax is None:
        return None
    fn = jax.jit(jax.value_and_grad(lambda a, b, c: (a + b) * c, argnums=(0, 1, 2)))
    args = tuple(jnp.asarray(v) for v in (x, y, z))

    def step() -> Any:
        return jax.block_until_ready(fn(*args))

    def to_numpy(r: Any) -> Result:
        f, (gx, gy, gz) = r
        return {"f": np.asarray(f)}, {"x": np.asarray(gx), "y": np.asarray(gy), "z": np.asarray(gz)}

    return Runner("jax", step, to_numpy)


def jax_deep_tanh_compile_s(params: Params, X: np.ndarray, prefix: str = "h") -> float | None:
    """Seconds to trace, lower and XLA-compile value_and_grad of the unrolled deep tanh net."""
    if jax is None:
        return None
    L = 0
    while f"{prefix}.{L + 1}.W" in params:
        L += 1

    def loss_fn(p: Mapping[str, Any], x: Any) -> Any:
        h = x
        for i in range(1, L + 1):
            h = jnp.tanh(h @ p[f"{prefix}.{i}.W"] + p[f"{prefix}.{i}.b"])
        return jnp.sum(h**2)

    p = {k: jnp.asarray(v) for k, v in params.items()}
    Xj = jnp.asarray(X)
    t0 = time.perf_counter()
    jax.jit(jax.value_and_grad(loss_fn)).lower(p, Xj).compile()
    return time.perf_counter() - t0


# -------------------------------------------------------------------------- factories


def mlp_runners(params: Params, X: np.ndarray, y: np.ndarray, input_grad: bool = False) -> list[Runner]:
    """numpy plus whichever of torch/jax are installed."""
    made = [f(params, X, y, input_grad) for f in (numpy_mlp_runner, torch_mlp_runner, jax_mlp_runner)]
    return [r for r in made if r is not None]


def circuit_runners(x: Any, y: Any, z: Any) -> list[Runner]:
    made = [f(x, y, z) for f in (numpy_circuit_runner, torch_circuit_runner, jax_circuit_runner)]
    return [r for r in made if r is not None]


# -------------------------------------------------------------------------- self-test


def _fd_check_numpy() -> float:
    """Central differences on a tiny float64 MLP: the numpy reference is right on its own."""
    params = init_mlp([5, 4, 3, 3], seed=3, dtype=np.float64)
    X, y = mlp_data(6, 5, 3, seed=4, dtype=np.float64)
    _, grads = mlp_numpy(params, X, y, input_grad=True)
    worst = 0.0
    eps = 1e-6
    for name, arr in [*params.items(), ("X", X)]:
        fd = np.empty_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            lp = float(mlp_numpy(params, X, y)[0]["loss"])
            arr[idx] = old - eps
            lm = float(mlp_numpy(params, X, y)[0]["loss"])
            arr[idx] = old
            fd[idx] = (lp - lm) / (2 * eps)
        worst = max(worst, rel_err(grads[name], fd))
    return worst


def _compare(ref: Result, other: Result) -> float:
    (ro, rg), (oo, og) = ref, other
    if set(rg) != set(og):
        raise AssertionError(f"grad keys differ: {sorted(rg)} vs {sorted(og)}")
    errs = [rel_err(oo[k], ro[k]) for k in ro] + [rel_err(og[k], rg[k]) for k in rg]
    return max(errs)


CONFIGS: dict[str, tuple[list[int], int]] = {
    "mlp_small": ([64, 64, 10], 32),
    "mlp_medium": ([784, 512, 256, 10], 128),
}


def self_test(repeat: int) -> bool:
    """Check all implementations agree in float64 and float32, then time them (float32)."""
    ok = True
    fd = _fd_check_numpy()
    print(f"numpy reference vs finite differences (float64): rel err {fd:.1e}")
    ok &= fd < 1e-6
    if jax is not None:
        jax.config.update("jax_enable_x64", True)  # float64 check needs it; float32 inputs stay float32
    tol = {np.float64: 1e-10, np.float32: 1e-4}
    for dtype in (np.float64, np.float32):
        for cfg, (widths, n) in CONFIGS.items():
            params = init_mlp(widths, dtype=dtype)
            X, y = mlp_data(n, widths[0], widths[-1], dtype=dtype)
            for input_grad in (False, True):
                runners = mlp_runners(params, X, y, input_grad)
                ref = runners[0].result()
                for r in runners[1:]:
                    res = r.result()
                    err = _compare(ref, res)
                    dt_ok = all(v.dtype == dtype for v in res[1].values())
                    good = err < tol[dtype] and dt_ok
                    ok &= good
                    print(f"{np.dtype(dtype).name:8} {cfg:11} dX={input_grad!s:5} {r.name:6} vs numpy: "
                          f"rel err {err:.1e} {'ok' if good else 'FAIL'}")
        args = tuple(np.asarray(v, dtype=dtype) for v in (-2.0, 5.0, -4.0))
        want = ({"f": -12.0}, {"x": -4.0, "y": -4.0, "z": 3.0})
        for r in circuit_runners(*args):
            o, g = r.result()
            good = float(o["f"]) == want[0]["f"] and all(float(g[k]) == v for k, v in want[1].items())
            ok &= good
            print(f"{np.dtype(dtype).name:8} circuit     {r.name:6}: f={float(o['f'])} "
                  f"grads={[float(g[k]) for k in 'xyz']} {'ok' if good else 'FAIL'}")

    print(f"\nreference timings, float32, {repeat} calls each (µs: min / median / max)")
    for cfg, (widths, n) in CONFIGS.items():
        params = init_mlp(widths)
        X, y = mlp_data(n, widths[0], widths[-1])
        for r in mlp_runners(params, X, y):
            t = time_us(r.step, repeat)
            print(f"  {cfg:11} N={n:<4} {r.name:6} {min(t):9.1f} {statistics.median(t):9.1f} {max(t):9.1f}")
    for r in circuit_runners(*(np.asarray(v, np.float32) for v in (-2.0, 5.0, -4.0))):
        t = time_us(r.step, repeat)
        print(f"  {'circuit':11} {'':6} {r.name:6} {min(t):9.1f} {statistics.median(t):9.1f} {max(t):9.1f}")
    print("\nall implementations agree" if ok else "\nMISMATCH")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    print(pin_threads(args.threads))
    print("numpy", np.__version__, "| torch", getattr(torch, "__version__", "absent"),
          "| jax", getattr(jax, "__version__", "absent"))
    return 0 if self_test(args.repeat) else 1


if __name__ == "__main__":
    sys.exit(main())
