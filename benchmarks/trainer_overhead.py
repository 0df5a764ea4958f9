#!/usr/bin/env python
"""What the trainer costs around the compiled ``step``: the epoch loop against a bare loop.

The case of the complaint: a small net (4 -> 16 -> 3, relu, softmax cross-entropy, L2)
trained full-batch on 240 examples of three Gaussian blobs for 10,000 epochs with Adam.
It times

* **bare**: ``for _ in range(steps): module.step(params, opt, lr, X=X, y=y)`` on the
  training split, the floor;
* **trainer loop**: ``Trainer.train`` with a run directory, as ``nncompile train`` runs it
  (checkpoints and lines on their default cadence, validation on its default schedule,
  early stopping off so that every epoch runs), and the same without a run directory (what
  ``Trainer.fit`` does: the difference is the checkpoint and metrics.jsonl written at the
  end, fsync'ed, which a loaded disk can make slow);
* **nncompile train**: the whole command in a subprocess (compiling, the sanity check,
  the curves), for scale.

    python benchmarks/trainer_overhead.py [--epochs 10000] [--repeat 3] [--no-cli]

Each figure is the best of ``--repeat`` runs, wall clock and the process's CPU time (GC on
as in real use); on a machine shared with other work the CPU time is the steadier of the
two. The ratio trainer loop / bare is the figure that must stay under 1.2.
"""
from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")   # one core: stable numbers, as bench.py

import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nncompile.train import TrainConfig, Trainer  # noqa: E402
from nncompile.train.data import bind, load_source, split  # noqa: E402

MODEL = """\
const D = 4, H = 16, C = 3
input X: float[N, D]
input y: int[N]
layer affine(x: [B, K], out: int) -> [B, out] {
    param W: [K, out] = he()
    param b: [out] = zeros()
    return x @ W + b
}
h = relu(affine(X, out=H) as fc1)
scores = affine(h, out=C) as fc2
output scores
data_loss = softmax_cross_entropy(scores, y)
loss = data_loss + 1e-4 * sum(fc1.W ** 2)
output data_loss
minimize loss
"""


def blobs(path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2.0, (3, 4))
    y = np.repeat(np.arange(3), 80)
    np.savez(path, X=centres[y] + rng.standard_normal((240, 4)), y=y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-cli", action="store_true", help="skip timing the nncompile train command")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="trainer_overhead_"))
    model, data = root / "mlp.nn", root / "blobs.npz"
    model.write_text(MODEL)
    blobs(data)
    config = TrainConfig(epochs=args.epochs, batch_size=1000, patience=0, lr=1e-3)
    trainer = Trainer(model, config)
    train, val = split(bind(load_source(str(data)), trainer.module), config.val_split, salt=2)
    module = trainer.module

    def bare() -> float:
        params = module.init_params(0)
        opt = module.init_opt_state(params)
        X, y = train.arrays["X"], train.arrays["y"]
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.epochs):
            module.step(params, opt, 1e-3, X=X, y=y)
        return time.perf_counter() - started, time.process_time() - cpu

    def loop(run_dir: Path | None) -> float:
        if run_dir is not None:
            run_dir.mkdir()
        started, cpu = time.perf_counter(), time.process_time()
        trainer.train(train, val, run_dir=run_dir, fingerprint={})
        return time.perf_counter() - started, time.process_time() - cpu

    bare_times, loop_times, bare_loop_times = [], [], []
    for i in range(args.repeat):    # take turns, so drift in the machine's speed moves every row alike
        bare_times.append(bare())
        loop_times.append(loop(root / f"run{i}"))
        bare_loop_times.append(loop(None))
    print(f"case: 4-16-3 MLP, full batch of {len(train)} examples ({len(val)} validation), {args.epochs} epochs, adam")
    print(f"{'':16s} {'wall':>9s} {'per epoch':>10s} {'ratio':>6s}   {'cpu':>9s} {'ratio':>6s}")
    base_wall, base_cpu = min(t[0] for t in bare_times), min(t[1] for t in bare_times)
    for label, times in (("bare step loop", bare_times), ("trainer loop", loop_times),
                         ("  no run dir", bare_loop_times)):
        wall, cpu = min(t[0] for t in times), min(t[1] for t in times)
        print(f"{label:16s} {wall:8.3f}s {1e6 * wall / args.epochs:8.1f}us {wall / base_wall:6.3f}   "
              f"{cpu:8.3f}s {cpu / base_cpu:6.3f}")
    print("the trainer loop's ratio must stay under 1.2")
    if not args.no_cli:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "nncompile", "train", str(model), "--data", str(data),
                               "--epochs", str(args.epochs), "--batch-size", "1000", "--patience", "0",
                               "--out", str(root / "cli")], capture_output=True, text=True, cwd=REPO)
        took = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"nncompile train failed:\n{done.stderr}")
        print(f"nncompile train  {took:8.3f} s  (the whole command: start-up, compile, checks, curves)")


if __name__ == "__main__":
    main()
