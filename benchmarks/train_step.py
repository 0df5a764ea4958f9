#!/usr/bin/env python
"""One optimiser step, compiled against the same step by hand in numpy, in PyTorch eager and in JAX jit.

A training step is forward, backward and the update of every param. The cases are the
digits MLP of examples/digits_mlp.nn (64 -> 256 relu -> 10, softmax cross-entropy plus L2 on
both weights, batch 64), and benchmarks/models/mlp_small.nn (batch 32) and mlp_medium.nn
(batch 128), each with Adam, SGD and momentum:

* **compiled**: ``module.step(params, opt_state, lr, X=X, y=y)``, compiled as ``nncompile
  train`` compiles it (float32, no input gradients);
* **numpy**: the same step by hand, as a careful numpy programmer writes it (benchmarks/
  reference.py's forward and backward, then the update in place, param by param);
* **torch**: PyTorch eager, ``loss.backward()`` and ``torch.optim.Adam``/``SGD`` (its default
  implementation on the CPU);
* **jax**: ``jax.jit`` of value_and_grad and the same update, the buffers donated.

Before timing, every implementation takes a few steps from the same params and data, and
their params must agree (float32 tolerance), so each row computes the same thing. Then the
rows are timed in turns in one process (reference.time_us_interleaved), one thread each;
the ratios are medians over the compiled step's. The whole-run table times 20 epochs over the
digits' training split: ``Trainer.fit`` against scikit-learn's ``MLPClassifier.fit`` with the
same architecture, batch, optimiser and L2.

    python benchmarks/train_step.py [--repeat 400] [--markdown] [--case digits] [--optimizer adam]

Torch, JAX and scikit-learn are optional (``pip install 'nncompile[bench]'``); their rows are
left out when they are missing. On machines that set OPENBLAS_CORETYPE, run it as
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/train_step.py``.
"""
from __future__ import annotations

import argparse
import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"   # before numpy is imported: one core for everyone

import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import reference as ref  # noqa: E402
from reference import jax, jnp, torch  # noqa: E402

import nncompile  # noqa: E402

HYPER = {"adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, "sgd": {}, "momentum": {"momentum": 0.9}}
LR = {"adam": 1e-3, "sgd": 1e-2, "momentum": 1e-2}


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    batch: int
    reg: float          # L2 on every weight: loss += 0.5 * reg * sum(W ** 2)


CASES = (
    Case("digits", REPO / "examples" / "digits_mlp.nn", 64, 1e-3),
    Case("mlp_small", HERE / "models" / "mlp_small.nn", 32, 0.0),
    Case("mlp_medium", HERE / "models" / "mlp_medium.nn", 128, 0.0),
)

Step = Callable[[], Any]


# ---- the update by hand, shared by the numpy and JAX rows ------------------------------------

def numpy_step(case: Case, optimizer: str, params: dict[str, np.ndarray], X: np.ndarray,
               y: np.ndarray) -> Callable[[], dict[str, np.ndarray]]:
    """Forward and backward (reference.mlp_numpy, plus the L2 term), then the update in place."""
    slots = {k: [np.zeros_like(v) for _ in range(2)] for k, v in params.items()}
    h, lr, t = HYPER[optimizer], LR[optimizer], [0]

    weights = [v for k, v in params.items() if k.endswith(".W")]

    def step() -> dict[str, np.ndarray]:
        outputs, grads = ref.mlp_numpy(params, X, y)
        if case.reg:   # the loss the step reports includes the L2 term, as the compiled step's does
            outputs["loss"] = outputs["loss"] + 0.5 * case.reg * sum(float(np.vdot(w, w)) for w in weights)
        t[0] += 1
        for k, p in params.items():
            g = grads[k]
            if case.reg and k.endswith(".W"):
                g += case.reg * p
            m, v = slots[k]
            if optimizer == "sgd":
                p -= lr * g
            elif optimizer == "momentum":
                m *= h["momentum"]
                m -= lr * g
                p += m
            else:
                m *= h["beta1"]
                m += (1 - h["beta1"]) * g
                v *= h["beta2"]
                v += (1 - h["beta2"]) * (g * g)
                denom = np.sqrt(v)
                denom *= 1 / (1 - h["beta2"] ** t[0]) ** 0.5
                denom += h["eps"]
                p -= (lr / (1 - h["beta1"] ** t[0])) * m / denom
        return params

    return step


def torch_step(case: Case, optimizer: str, params: dict[str, np.ndarray], X: np.ndarray,
               y: np.ndarray) -> Callable[[], Any] | None:
    if torch is None:
        return None
    import torch.nn.functional as F

    L = ref.mlp_layers(params)
    leaves = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    make = {"adam": lambda p: torch.optim.Adam(p, lr=LR["adam"], betas=(0.9, 0.999), eps=1e-8),
            "sgd": lambda p: torch.optim.SGD(p, lr=LR["sgd"]),
            "momentum": lambda p: torch.optim.SGD(p, lr=LR["momentum"], momentum=0.9)}
    opt = make[optimizer](list(leaves.values()))
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    weights = [leaves[f"fc{i}.W"] for i in range(1, L + 1)]

    def step() -> dict[str, Any]:
        h = Xt
        for i in range(1, L):
            h = torch.relu(torch.addmm(leaves[f"fc{i}.b"], h, leaves[f"fc{i}.W"]))
        loss = F.cross_entropy(torch.addmm(leaves[f"fc{L}.b"], h, leaves[f"fc{L}.W"]), yt)
        if case.reg:
            loss = loss + 0.5 * case.reg * sum((w * w).sum() for w in weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return leaves

    return step


def jax_step(case: Case, optimizer: str, params: dict[str, np.ndarray], X: np.ndarray,
             y: np.ndarray) -> Callable[[], Any] | None:
    if jax is None:
        return None
    L = ref.mlp_layers(params)
    h, lr = HYPER[optimizer], LR[optimizer]

    def loss_fn(p: dict[str, Any]) -> Any:
        a = jnp.asarray(X)
        for i in range(1, L):
            a = jax.nn.relu(a @ p[f"fc{i}.W"] + p[f"fc{i}.b"])
        logp = jax.nn.log_softmax(a @ p[f"fc{L}.W"] + p[f"fc{L}.b"], axis=1)
        loss = -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=1))
        return loss + 0.5 * case.reg * sum(jnp.sum(p[f"fc{i}.W"] ** 2) for i in range(1, L + 1))

    def update(p: Any, m: Any, v: Any, t: Any) -> tuple[Any, Any, Any]:
        g = jax.grad(loss_fn)(p)
        if optimizer == "sgd":
            return jax.tree.map(lambda a, b: a - lr * b, p, g), m, v
        if optimizer == "momentum":
            m = jax.tree.map(lambda a, b: h["momentum"] * a - lr * b, m, g)
            return jax.tree.map(lambda a, b: a + b, p, m), m, v
        m = jax.tree.map(lambda a, b: h["beta1"] * a + (1 - h["beta1"]) * b, m, g)
        v = jax.tree.map(lambda a, b: h["beta2"] * a + (1 - h["beta2"]) * b * b, v, g)
        c1, c2 = lr / (1 - h["beta1"] ** t), 1 / (1 - h["beta2"] ** t) ** 0.5
        return jax.tree.map(lambda a, b, c: a - c1 * b / (jnp.sqrt(c) * c2 + h["eps"]), p, m, v), m, v

    fn = jax.jit(update, donate_argnums=(0, 1, 2))
    state = [{k: jnp.asarray(v) for k, v in params.items()}, {k: jnp.zeros_like(v) for k, v in params.items()},
             {k: jnp.zeros_like(v) for k, v in params.items()}, 0]

    def step() -> Any:
        state[3] += 1
        state[0], state[1], state[2] = jax.block_until_ready(fn(*state[:3], jnp.float32(state[3])))
        return state[0]

    return step


# ---- one case --------------------------------------------------------------------------------

def implementations(case: Case, optimizer: str) -> tuple[dict[str, Step], Callable[[], dict[str, dict]]]:
    """Each implementation's step on its own copy of the same params and data, and a function
    that reads every implementation's params back as numpy."""
    module = nncompile.load_module(nncompile.compile_file(case.path, dtype="float32", input_grads=False,
                                                          optimizer=optimizer), case.name)
    params = module.init_params(0)
    for k in params:
        if k.endswith(".b"):
            params[k][...] = 0.1 * np.random.default_rng(len(k)).standard_normal(params[k].shape)
    D, C = module.INPUTS["X"][0][1], module.BOUNDS["y"]
    X, y = ref.mlp_data(case.batch, D, C)
    opt = module.init_opt_state(params)
    steps: dict[str, Step] = {"compiled": lambda: module.step(params, opt, LR[optimizer], X=X, y=y)}
    readers: dict[str, Callable[[], dict]] = {"compiled": lambda: params}
    by_hand = {k: v.copy() for k, v in params.items()}
    steps["numpy"], readers["numpy"] = numpy_step(case, optimizer, by_hand, X, y), lambda: by_hand
    for name, make in (("torch", torch_step), ("jax", jax_step)):
        step = make(case, optimizer, {k: v.copy() for k, v in params.items()}, X, y)
        if step is not None:
            latest: list[Any] = [None]

            def run(step: Step = step, latest: list[Any] = latest) -> None:
                latest[0] = step()

            steps[name] = run
            readers[name] = lambda latest=latest: {k: np.asarray(v.detach() if hasattr(v, "detach") else v)
                                                   for k, v in latest[0].items()}
    return steps, lambda: {name: read() for name, read in readers.items()}


def agree(steps: dict[str, Step], read: Callable[[], dict[str, dict]], optimizer: str, label: str,
          count: int = 3) -> None:
    """A few steps of each from the same start: the params must match the compiled ones. Adam's
    first steps move a param by about lr * g / |g| whatever the size of g, so where g is near 0
    float32 rounding can flip a step: there the allowance is a share of lr per step."""
    for _ in range(count):
        for step in steps.values():
            step()
    got = read()
    for name, params in got.items():
        for k, want in got["compiled"].items():
            off = float(np.max(np.abs(params[k] - want)))
            allowed = 0.5 * LR[optimizer] * count if optimizer == "adam" else 1e-4 * float(np.max(np.abs(want)))
            if off > allowed:
                sys.exit(f"{label}: {name}'s {k} differs from the compiled step's by {off:.2e} (allowed {allowed:.1e})")


def whole_run(epochs: int) -> list[list[str]]:
    """20 epochs over the digits' training split: Trainer.fit against MLPClassifier.fit."""
    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError:
        return []
    from nncompile.train import TrainConfig, Trainer
    from nncompile.train.data import bind, load_source, split

    config = TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, patience=0, val_every=10 ** 9)
    trainer = Trainer(REPO / "examples" / "digits_mlp.nn", config)
    trainer.progress = False
    train, _ = split(bind(load_source("digits"), trainer.module), config.val_split, salt=2)
    X, y = train.arrays["X"], train.arrays["y"]
    rows = []
    started = time.perf_counter()
    trainer.fit(train)
    ours = time.perf_counter() - started
    rows.append(["nncompile Trainer.fit", f"{ours:.2f} s", "1.00"])
    clf = MLPClassifier((256,), activation="relu", solver="adam", alpha=1e-3, batch_size=64, learning_rate_init=1e-3,
                        max_iter=epochs, tol=0.0, n_iter_no_change=10 ** 9, shuffle=True, random_state=0)
    import warnings
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # "did not converge": it ran the epochs asked for
        clf.fit(X, y)
    theirs = time.perf_counter() - started
    rows.append(["scikit-learn MLPClassifier.fit", f"{theirs:.2f} s", f"{theirs / ours:.2f}"])
    return rows


def blas_kernel() -> str:
    """Which BLAS kernel runs the GEMMs (OpenBLAS picks one per CPU, or OPENBLAS_CORETYPE's)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS kernel: unknown (threadpoolctl is not installed)"
    kernels = [f"{i['internal_api']} {i['architecture']}" for i in threadpool_info() if i.get("architecture")]
    return "BLAS kernel: " + (", ".join(kernels) or "unknown")


def table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                          *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *rows])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=400, help="timed steps per row (default 400)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of the whole-run table (default 20)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--case", action="append", choices=[c.name for c in CASES], help="only these cases")
    ap.add_argument("--optimizer", action="append", choices=list(HYPER), help="only these optimisers")
    args = ap.parse_args()
    print(ref.pin_threads(1))
    print(blas_kernel())
    rows = []
    for case in (c for c in CASES if not args.case or c.name in args.case):
        for optimizer in args.optimizer or HYPER:
            steps, read = implementations(case, optimizer)
            label = f"{case.name} {optimizer}"
            agree(steps, read, optimizer, label)
            times = ref.time_us_interleaved(steps, args.repeat, warmup=20)
            base = statistics.median(times["compiled"])
            for name, ts in times.items():
                med = statistics.median(ts)
                rows.append([label, name, f"{med:.1f}", f"{min(ts):.1f}", f"{med / base:.2f}"])
    print(table(["case", "step", "median us", "min us", "/ compiled"], rows, args.markdown))
    run_rows = whole_run(args.epochs) if not args.case or "digits" in args.case else []
    if run_rows:
        print()
        print(f"whole run: {args.epochs} epochs of the digits MLP (1617 examples, batch 64, adam)")
        print(table(["", "time", "/ nncompile"], run_rows, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
