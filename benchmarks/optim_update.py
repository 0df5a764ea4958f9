#!/usr/bin/env python
"""The optimiser update alone, on mlp_medium's 535,818 float32 params: the compiled chain of
ufuncs, run over cache-sized blocks of its buffers as the module does and in one call over
them, against JAX jit's fused update.

Every row updates right after one (untimed) ``value_and_grad`` of the compiled module, so
its buffers are where a training step leaves them; only the update is timed. Rows:

* **apply_update**: the module's ``apply_update``, which reads the gradients and works in
  a scratch buffer of its own;
* **step's update**: what ``step`` runs, the same chain taking the gradient buffer, which
  ``step`` owns, as its scratch, over blocks of ``_BLOCK`` floats of every buffer (last
  block first);
* **one call**: step's update with no blocks, each pass over the whole buffers (the base);
* **blocks of B**: step's update with the module's ``_BLOCK`` set to B;
* **jax jit**: ``jax.jit`` of the same update over flat arrays, the buffers donated.

    python benchmarks/optim_update.py [--repeat 300] [--optimizer adam] [--markdown]

JAX is optional. On machines that set OPENBLAS_CORETYPE, run it as
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/optim_update.py``.
"""
from __future__ import annotations

import argparse
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"   # before numpy is imported: one core for everyone

import gc  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import reference as ref  # noqa: E402
import train_step  # noqa: E402
from reference import jax, jnp  # noqa: E402

import nncompile  # noqa: E402

BLOCKS = (16384, 65536, 131072, 262144)


def compiled_rows(module: Any, optimizer: str) -> tuple[Callable[[], None], dict[str, Callable[[], None]]]:
    """The module's value_and_grad (to run before each update) and its update rows."""
    params = module.init_params(0)
    opt = module.init_opt_state(params)
    X, y = ref.mlp_data(128, module.INPUTS["X"][0][1], module.BOUNDS["y"])
    latest: list[Any] = [None]
    lr = train_step.LR[optimizer]

    def before() -> None:
        latest[0] = module.value_and_grad(params, X=X, y=y)[1]

    def blocked(size: int) -> Callable[[], None]:
        def run() -> None:   # step's update with the module's block size set to size
            default, module._BLOCK = module._BLOCK, size
            try:
                module._apply_update(params, latest[0], opt, lr, True)
            finally:
                module._BLOCK = default
        return run

    rows = {"apply_update": lambda: module.apply_update(params, latest[0], opt, lr),
            f"step's update (blocks of {module._BLOCK})": lambda: module._apply_update(params, latest[0], opt, lr, True),
            "one call": blocked(1 << 62),
            **{f"blocks of {size}": blocked(size) for size in BLOCKS}}
    return before, rows


def jax_row(optimizer: str, size: int) -> Callable[[], None] | None:
    """train_step.py's JAX update over flat arrays, the gradient fixed."""
    if jax is None:
        return None
    h, lr = train_step.HYPER[optimizer], train_step.LR[optimizer]

    def update(p: Any, m: Any, v: Any, g: Any, t: Any) -> tuple[Any, Any, Any]:
        if optimizer == "sgd":
            return p - lr * g, m, v
        if optimizer == "momentum":
            m = h["momentum"] * m - lr * g
            return p + m, m, v
        m = h["beta1"] * m + (1 - h["beta1"]) * g
        v = h["beta2"] * v + (1 - h["beta2"]) * g * g
        c1, c2 = lr / (1 - h["beta1"] ** t), 1 / (1 - h["beta2"] ** t) ** 0.5
        return p - c1 * m / (jnp.sqrt(v) * c2 + h["eps"]), m, v

    fn = jax.jit(update, donate_argnums=(0, 1, 2))
    rng = np.random.default_rng(0)
    g = jnp.asarray(rng.standard_normal(size).astype(np.float32) * 1e-2)
    state: list[Any] = [jnp.asarray(rng.standard_normal(size).astype(np.float32)), jnp.zeros(size, jnp.float32),
                        jnp.zeros(size, jnp.float32), 0]

    def run() -> None:
        state[3] += 1
        state[0], state[1], state[2] = jax.block_until_ready(fn(*state[:3], g, jnp.float32(state[3])))
    return run


def measure(before: Callable[[], None], rows: dict[str, Callable[[], None]], repeat: int) -> dict[str, list[float]]:
    """Per-row update times in µs, rows in turns, each update right after ``before``."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(repeat + 10):
            for name, run in rows.items():
                before()
                t0 = time.perf_counter()
                run()
                if round_ >= 10:   # the first rounds warm up
                    times[name].append((time.perf_counter() - t0) * 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--optimizer", action="append", choices=list(train_step.HYPER))
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    print(ref.pin_threads(1))
    print(train_step.blas_kernel())
    path = HERE / "models" / "mlp_medium.nn"
    table = []
    for optimizer in args.optimizer or train_step.HYPER:
        module = nncompile.load_module(nncompile.compile_file(path, dtype="float32", input_grads=False,
                                                              optimizer=optimizer), f"mlp_medium_{optimizer}")
        before, rows = compiled_rows(module, optimizer)
        size = int(sum(np.prod(shape) for shape, _ in module.PARAMS.values()))
        jax_run = jax_row(optimizer, size)
        if jax_run is not None:
            rows["jax jit"] = jax_run
        times = measure(before, rows, args.repeat)
        base = statistics.median(times["one call"])
        for name, ts in times.items():
            med = statistics.median(ts)
            table.append([f"{optimizer} ({size} params)", name, f"{med:.1f}", f"{min(ts):.1f}", f"{med / base:.2f}"])
    print(train_step.table(["update", "row", "median us", "min us", "/ one call"], table, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
