#!/usr/bin/env python
"""Conv nets: the compiled forward and backward against PyTorch eager (oneDNN) and JAX jit.

Two cases, each timed as one forward and backward pass (the loss and the gradient of every
param; no input gradients, no optimiser update), in float32 on one thread:

* **digits_cnn**: examples/digits_cnn.nn without its dropout (benchmarks/models/digits_cnn_plain.nn)
  at batch 64: 1 x 8 x 8 images, two conv_bn_relu blocks of 16 and 32 channels (batch norm
  in training mode) with 2 x 2 max pooling, linear scores; small tensors, so per-op overhead
  dominates;
* **cifar_block**: benchmarks/models/cifar_block.nn at batch 64: 3 x 32 x 32 images, 3 x 3
  convs of 32 and 64 channels with bias and relu, 2 x 2 max pooling after each, a linear head;
  the GEMMs dominate.

PyTorch runs ``F.conv2d``/``F.batch_norm``/``F.max_pool2d`` eagerly and ``loss.backward()``;
JAX jits ``value_and_grad`` of the same function (``lax.conv_general_dilated``,
``lax.reduce_window``). Before timing, each implementation's loss and gradients must agree with
the compiled module's (float32 tolerance), so every row computes the same thing. The rows are
timed in turns in one process (reference.time_us_interleaved); ratios are medians over the
compiled module's.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/conv.py [--repeat 100] [--markdown]

Torch and JAX are optional (``pip install 'nncompile[bench]'``); their rows are left out when
they are missing.
"""
from __future__ import annotations

import argparse
import sys

from one_core import HERE  # isort: skip - first: one BLAS thread, set before numpy loads

import statistics  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import reference as ref  # noqa: E402
from reference import jax, jnp, torch  # noqa: E402
from train_step import table  # noqa: E402

import nncompile  # noqa: E402

Grads = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    batch: int
    image: tuple[int, int, int]
    batchnorm: bool      # conv_bn_relu blocks (digits) or conv with bias and relu (cifar)


CASES = (Case("digits_cnn", HERE / "models" / "digits_cnn_plain.nn", 64, (1, 8, 8), True),
         Case("cifar_block", HERE / "models" / "cifar_block.nn", 64, (3, 32, 32), False))
EPS = 1e-5


def data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((case.batch, *case.image)).astype(np.float32), rng.integers(0, 10, case.batch)


def compiled(case: Case, params: dict, X: np.ndarray, y: np.ndarray) -> tuple[Callable[[], Any], Callable]:
    module = nncompile.load_module(nncompile.compile_file(case.path, dtype="float32", input_grads=False), case.name)
    state = module.init_state() if hasattr(module, "init_state") else None

    def run() -> Any:
        return module.value_and_grad(params, state, None, X=X, y=y) if state is not None else \
            module.value_and_grad(params, X=X, y=y)

    def read() -> tuple[float, Grads]:
        outputs, grads = run()[:2]
        return float(outputs["loss"]), grads
    return run, read


# ---- PyTorch eager --------------------------------------------------------------------------

def torch_loss(case: Case, p: dict, X: Any, y: Any) -> Any:
    F = torch.nn.functional
    h = X
    for block in ("conv1", "conv2"):
        if case.batchnorm:
            h = F.conv2d(h, p[f"{block}.W"], padding=1)
            h = F.batch_norm(h, None, None, p[f"{block}.bn.gamma"], p[f"{block}.bn.beta"], training=True, eps=EPS)
        else:
            h = F.conv2d(h, p[f"{block}.W"], p[f"{block}.b"], padding=1)
        h = F.max_pool2d(torch.relu(h), 2)
    scores = torch.addmm(p["fc.b"], h.flatten(1), p["fc.W"])
    return F.cross_entropy(scores, y)


def torch_step(case: Case, params: dict, X: np.ndarray, y: np.ndarray) -> tuple[Callable[[], Any], Callable] | None:
    if torch is None:
        return None
    leaves = {k: torch.from_numpy(v.copy()).requires_grad_() for k, v in params.items()}
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def run() -> Any:
        for leaf in leaves.values():
            leaf.grad = None
        loss = torch_loss(case, leaves, Xt, yt)
        loss.backward()
        return loss

    def read() -> tuple[float, Grads]:
        loss = run()
        return float(loss.detach()), {k: v.grad.numpy() for k, v in leaves.items()}
    return run, read


# ---- JAX jit --------------------------------------------------------------------------------

def jax_loss(case: Case, p: dict, X: Any, y: Any) -> Any:
    lax = jax.lax
    h = X
    for block in ("conv1", "conv2"):
        h = lax.conv_general_dilated(h, p[f"{block}.W"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        if case.batchnorm:
            mu = h.mean(axis=(0, 2, 3), keepdims=True)
            var = ((h - mu) ** 2).mean(axis=(0, 2, 3), keepdims=True)
            h = (h - mu) / jnp.sqrt(var + EPS) * p[f"{block}.bn.gamma"][:, None, None] \
                + p[f"{block}.bn.beta"][:, None, None]
        else:
            h = h + p[f"{block}.b"][:, None, None]
        h = lax.reduce_window(jax.nn.relu(h), -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
    scores = h.reshape(h.shape[0], -1) @ p["fc.W"] + p["fc.b"]
    logp = jax.nn.log_softmax(scores, axis=1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def jax_step(case: Case, params: dict, X: np.ndarray, y: np.ndarray) -> tuple[Callable[[], Any], Callable] | None:
    if jax is None:
        return None
    fn = jax.jit(jax.value_and_grad(lambda p, X, y: jax_loss(case, p, X, y)))
    p = {k: jnp.asarray(v) for k, v in params.items()}
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def run() -> Any:
        return jax.block_until_ready(fn(p, Xj, yj))

    def read() -> tuple[float, Grads]:
        loss, grads = run()
        return float(loss), {k: np.asarray(v) for k, v in grads.items()}
    return run, read


# ---- one case ---------------------------------------------------------------------------------

def implementations(case: Case) -> tuple[dict[str, Callable[[], Any]], dict[str, Callable]]:
    module = nncompile.load_module(nncompile.compile_file(case.path, dtype="float32"), f"{case.name}_init")
    params = module.init_params(0)
    for k in params:   # nonzero biases and shifts, so their gradients are checked too
        if k.endswith((".b", ".beta")):
            params[k][...] = 0.1 * np.random.default_rng(len(k)).standard_normal(params[k].shape)
    X, y = data(case)
    runs, reads = {}, {}
    for name, make in (("compiled", compiled), ("torch", torch_step), ("jax", jax_step)):
        made = make(case, params, X, y)
        if made is not None:
            runs[name], reads[name] = made
    return runs, reads


def agree(case: Case, reads: dict[str, Callable]) -> None:
    """Every implementation's loss and gradients are the compiled module's (float32 tolerance)."""
    loss, grads = reads["compiled"]()
    for name, read in reads.items():
        other, theirs = read()
        if abs(other - loss) > 1e-4 * max(1.0, abs(loss)):
            sys.exit(f"{case.name}: {name}'s loss {other} differs from the compiled module's {loss}")
        for k, want in grads.items():
            off = float(np.max(np.abs(theirs[k] - want)))
            if off > 1e-3 * max(1e-3, float(np.max(np.abs(want)))):
                sys.exit(f"{case.name}: {name}'s gradient of {k} differs from the compiled module's by {off:.2e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=100, help="timed passes per row (default 100)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--case", action="append", choices=[c.name for c in CASES], help="only these cases")
    args = ap.parse_args()
    print(ref.pin_threads(1))
    rows = []
    for case in (c for c in CASES if not args.case or c.name in args.case):
        runs, reads = implementations(case)
        agree(case, reads)
        times = ref.time_us_interleaved(runs, args.repeat, warmup=5, block=5)
        base = statistics.median(times["compiled"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append([f"{case.name} (batch {case.batch})", name, f"{med / 1000:.2f}", f"{min(ts) / 1000:.2f}",
                         f"{med / base:.2f}"])
    print(table(["case", "forward + backward", "median ms", "min ms", "/ compiled"], rows, args.markdown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
