#!/usr/bin/env python
"""Data-parallel training steps per second with 1 and 2 workers, and the all-reduce's share.

Two cases of the issue: the digits MLP (examples/digits_mlp.nn, 64 -> 100 -> 10) at a global
batch of 256 and mlp_medium (benchmarks/models/, 784 -> 512 -> 256 -> 10) at 1024, Adam,
float32, on random inputs. For each case it times

* **1 process**: the compiled ``step`` on the whole batch, BLAS on every core (what
  ``nncompile train`` does without workers), and the same on one BLAS thread;
* **2 workers**: ``mpiexec -n 2`` (the MPICH wheel's), each worker running the trainer's
  data-parallel step (nncompile/train/distributed.py: value_and_grad on its half, its
  gradient buffer weighted in place and all-reduced, apply_update), BLAS on
  cores // 2 threads each as the trainer sets it; the time inside the Allreduce (waiting for
  the other worker included) is measured too, and an Allreduce of the same buffer alone
  after a barrier: the cost of the transfer itself.

The launches of the two are interleaved, ``--rounds`` times each; a figure is the median
over the rounds of each launch's median step time (over windows of about 0.3 s of steps).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/distributed.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MPIEXEC = Path(sys.executable).parent / "mpiexec"
CASES = {"digits_mlp": (REPO / "examples" / "digits_mlp.nn", 256),
         "mlp_medium": (REPO / "benchmarks" / "models" / "mlp_medium.nn", 1024)}
WINDOWS = 5
WINDOW_SECONDS = 0.3   # steps per window: as many as take about this long


def blas() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return ", ".join(f"{i['internal_api']} {i.get('version', '')} {i.get('architecture', '')} x{i['num_threads']}"
                     for i in threadpool_info() if i["user_api"] == "blas")


def batch_of(module, size: int) -> dict[str, np.ndarray]:
    """Random inputs of the model's shapes: features normal, labels uniform over the classes."""
    rng = np.random.default_rng(0)
    arrays = {}
    for name, (shape, dtype) in module.INPUTS.items():
        dims = [size if isinstance(d, str) else d for d in shape]
        arrays[name] = (rng.integers(0, module.BOUNDS[name], dims) if name in module.BOUNDS
                        else rng.standard_normal(dims)).astype(dtype)
    return arrays


def worker(case: str) -> None:
    """One launch: time ``steps`` steps WINDOWS times; rank 0 prints a JSON line."""
    from nncompile.train import TrainConfig, Trainer
    from nncompile.train.distributed import DataParallel, World
    from nncompile.train.loop import Stop

    path, size = CASES[case]
    world = World.detect()
    trainer = Trainer(path, TrainConfig(dtype="float32", batch_size=size))
    module, state = trainer.module, trainer.init_state()
    batch = batch_of(module, size)
    spent = [0.0]
    if world is None:
        step = module.step
    else:
        parallel = DataParallel(trainer, world)
        reduce = parallel.sum

        def timed(*buffers: np.ndarray) -> None:
            started = time.perf_counter()
            reduce(*buffers)
            spent[0] += time.perf_counter() - started
        parallel.sum = timed
        step = parallel.step_function(Stop())
    for _ in range(5):   # warm up: workspaces allocated, caches filled
        step(state.params, state.opt, 1e-3, None, None, **batch)
    started = time.perf_counter()
    for _ in range(3):
        step(state.params, state.opt, 1e-3, None, None, **batch)
    steps = max(3, int(WINDOW_SECONDS * 3 / (time.perf_counter() - started)))
    if world is not None:
        steps = world.comm.bcast(steps)   # the same count on every worker
    times, shares = [], []
    for _ in range(WINDOWS):
        if world is not None:
            world.comm.Barrier()
        spent[0], started = 0.0, time.perf_counter()
        for _ in range(steps):
            step(state.params, state.opt, 1e-3, None, None, **batch)
        elapsed = time.perf_counter() - started
        times.append(elapsed / steps)
        shares.append(spent[0] / elapsed)
    alone = None
    if world is not None:   # the transfer itself: the same buffer, the workers in step
        flat, costs = parallel.flat, []
        for _ in range(200):
            world.comm.Barrier()
            started = time.perf_counter()
            reduce(flat)
            costs.append(time.perf_counter() - started)
        alone = statistics.median(costs)
    if world is None or world.root:
        print(json.dumps({"step": statistics.median(times), "share": statistics.median(shares), "allreduce": alone,
                          "floats": int(parallel.flat.size) if world is not None else None, "blas": blas()}),
              flush=True)


def launch(case: str, workers: int, threads: int | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", case]
    if workers > 1:
        command = [str(MPIEXEC), "-n", str(workers), *command]
    env = {**os.environ, **({"OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)} if threads else {})}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--case", choices=tuple(CASES), action="append", help="(default: both)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)
    if not MPIEXEC.exists():
        sys.exit(f"no mpiexec beside {sys.executable}: pip install 'nncompile[mpi]'")
    cases = args.case or list(CASES)
    load = ", load average {:.1f}".format(os.getloadavg()[0]) if hasattr(os, "getloadavg") else ""
    print(f"{os.cpu_count()} cores{load}; {args.rounds} interleaved rounds; provisional figures on a shared machine")
    for case in cases:
        runs: dict[int, list[dict]] = {0: [], 1: [], 2: []}   # 0: one process on one BLAS thread
        for _ in range(args.rounds):
            for workers in (1, 0, 2):
                runs[workers].append(launch(case, max(1, workers), threads=1 if workers == 0 else None))
        one = statistics.median(r["step"] for r in runs[1])
        single = statistics.median(r["step"] for r in runs[0])
        two = statistics.median(r["step"] for r in runs[2])
        share = statistics.median(r["share"] for r in runs[2])
        alone = statistics.median(r["allreduce"] for r in runs[2])
        _, size = CASES[case]
        print(f"\n{case}, global batch {size} (float32, adam); flat buffer {runs[2][0]['floats']} floats")
        print(f"  1 process : {1 / one:8.1f} steps/s  ({one * 1e3:.3f} ms/step)   BLAS: {runs[1][0]['blas']}")
        print(f"  1 process : {1 / single:8.1f} steps/s  ({single * 1e3:.3f} ms/step)   BLAS: {runs[0][0]['blas']}")
        print(f"  2 workers : {1 / two:8.1f} steps/s  ({two * 1e3:.3f} ms/step)   BLAS per worker: {runs[2][0]['blas']}")
        print(f"  speed-up  : {one / two:.2f}x over 1 process, {single / two:.2f}x over 1 process on 1 thread")
        print(f"  Allreduce share of the 2-worker step: {100 * share:.1f}% "
              f"(the transfer alone: {alone * 1e6:.1f} us = {100 * alone / two:.1f}% of the step)")


if __name__ == "__main__":
    main()
