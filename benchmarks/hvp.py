#!/usr/bin/env python
"""One Hessian-vector product of mlp_medium: the compiled module's hvp() against JAX's
forward-over-reverse ``jvp(grad(f))`` (jit) and PyTorch's double backward (``create_graph=True``).

The model is benchmarks/models/mlp_medium.nn (784 -> 512 relu -> 256 relu -> 10, softmax
cross-entropy), batch 128, float32, one thread each. Every row computes H v of the same loss at
the same params along the same v, and must agree with the compiled hvp() (float32 tolerance)
before anything is timed. The rows are timed in turns in one process
(reference.time_us_interleaved); ratios are over the compiled hvp()'s median. The compiled
value_and_grad() is timed alongside: what one H v costs in gradients.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/hvp.py [--repeat 200] [--markdown]

Torch and JAX are optional (``pip install 'nncompile[bench]'``); their rows are left out when
they are missing.
"""
from __future__ import annotations

import argparse
import sys

from one_core import mlp_medium  # isort: skip - first: one BLAS thread, set before numpy loads

import statistics  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import reference as ref  # noqa: E402
from reference import jax, jnp, torch  # noqa: E402

BATCH = 128
Arrays = dict[str, np.ndarray]


def torch_hvp(params: Arrays, v: Arrays, X: np.ndarray, y: np.ndarray) -> Callable[[], Arrays] | None:
    """Double backward: grad with create_graph, then the gradient of <grad, v>."""
    if torch is None:
        return None
    import torch.nn.functional as F

    L = ref.mlp_layers(params)
    leaves = {k: torch.from_numpy(p.copy()).requires_grad_() for k, p in params.items()}
    vs = [torch.from_numpy(v[k]) for k in params]
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)

    def step() -> Any:
        h = Xt
        for i in range(1, L):
            h = torch.relu(torch.addmm(leaves[f"fc{i}.b"], h, leaves[f"fc{i}.W"]))
        loss = F.cross_entropy(torch.addmm(leaves[f"fc{L}.b"], h, leaves[f"fc{L}.W"]), yt)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True)
        inner = sum((g * u).sum() for g, u in zip(grads, vs))
        return dict(zip(leaves, torch.autograd.grad(inner, list(leaves.values()))))
    return step


def jax_hvp(params: Arrays, v: Arrays, X: np.ndarray, y: np.ndarray) -> Callable[[], Arrays] | None:
    """The autodiff cookbook's forward-over-reverse: jvp(grad(f), (params,), (v,)), jitted."""
    if jax is None:
        return None
    loss = ref._jax_mlp_loss(ref.mlp_layers(params))
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def f(p: Any) -> Any:
        return loss(p, Xj, yj)[0]
    fn = jax.jit(lambda p, t: jax.jvp(jax.grad(f), (p,), (t,))[1])
    p = {k: jnp.asarray(a) for k, a in params.items()}
    t = {k: jnp.asarray(a) for k, a in v.items()}
    return lambda: jax.block_until_ready(fn(p, t))


def as_numpy(hv: Any) -> Arrays:
    return {k: np.asarray(a.detach().numpy() if hasattr(a, "detach") else a, dtype=np.float64) for k, a in hv.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200, help="timed calls per row (default 200)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    print(ref.pin_threads(1))

    module, params = mlp_medium()
    X, y = ref.mlp_data(BATCH, module.INPUTS["X"][0][1], module.BOUNDS["y"])
    rng = np.random.default_rng(2)
    v = {k: rng.standard_normal(p.shape).astype(np.float32) for k, p in params.items()}

    rows: dict[str, Callable[[], Any]] = {"nncompile hvp()": lambda: module.hvp(params, v, X=X, y=y)}
    for name, make in (("JAX jvp(grad(f)), jit", jax_hvp), ("PyTorch double backward", torch_hvp)):
        step = make(params, v, X, y)
        if step is not None:
            rows[name] = step
    expected = as_numpy(rows["nncompile hvp()"]())
    for name, step in rows.items():
        got = as_numpy(step())
        worst = max(ref.rel_err(got[k], expected[k]) for k in expected)
        assert worst < 1e-3, f"{name} disagrees with the compiled hvp(): relative error {worst:.2e}"
        print(f"{name}: agrees with the compiled hvp() to {worst:.1e} (relative, worst param)")
    rows["nncompile value_and_grad() (for scale)"] = lambda: module.value_and_grad(params, X=X, y=y)

    times = ref.time_us_interleaved(rows, args.repeat)
    base = statistics.median(times["nncompile hvp()"])
    table = [[name, f"{statistics.median(t):.0f}", f"{min(t):.0f}", f"{statistics.median(t) / base:.2f}"]
             for name, t in times.items()]
    header = ["mlp_medium, batch 128, float32", "median us", "min us", "/ nncompile hvp()"]
    if args.markdown:
        print("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                         *("| " + " | ".join(r) + " |" for r in table)]))
    else:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *table)]
        print("\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [header, *table]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
