#!/usr/bin/env python
"""GPU rows: the compiled CuPy training step against PyTorch CUDA eager, in one run.

    python benchmarks/bench_gpu.py [--repeat 100]

Models: mlp_medium (batch 128, 784 -> 512 -> 256 -> 10) and mlp_large (batch 4096,
3072 -> 1024 -> 1024 -> 10). Both implementations get the same float32 params and data,
already on the device; each timed call is one value_and_grad (forward, backward, all
param grads), bracketed by device synchronisation, median of ``--repeat`` after warm-up.
Exits 2 with a message when there is no GPU, CuPy or CUDA build of PyTorch.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import reference as ref  # noqa: E402

import nncompile  # noqa: E402

CONFIGS = (("mlp_medium", 128, [784, 512, 256, 10]), ("mlp_large", 4096, [3072, 1024, 1024, 10]))


def _timed(step, sync, repeat: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        step()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1e6)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=100)
    args = ap.parse_args()
    try:
        import cupy as cp
        device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception as exc:  # noqa: BLE001 - any failure here means "no usable GPU"
        print(f"bench_gpu.py: no GPU with CuPy here ({exc.__class__.__name__}: {exc})", file=sys.stderr)
        return 2
    torch = ref.torch if ref.torch is not None and ref.torch.cuda.is_available() else None
    print(f"device: {device}; cupy {cp.__version__}; torch {getattr(torch, '__version__', 'n/a (no CUDA build)')}")
    rows = []
    for name, batch, widths in CONFIGS:
        params = ref.init_mlp(widths)
        X, y = ref.mlp_data(batch, widths[0], widths[-1])
        module = nncompile.load_module(nncompile.compile_file(HERE / "models" / f"{name}.nn", input_grads=False,
                                                              backend="cupy"), f"{name}_cupy")
        gparams = {k: cp.asarray(v) for k, v in params.items()}
        gX, gy = cp.asarray(X), cp.asarray(y)
        want = ref.mlp_numpy(params, X, y)
        got = module.value_and_grad(gparams, X=gX, y=gy)
        err = max(ref.rel_err(cp.asnumpy(got[1][k]), want[1][k]) for k in want[1])
        sync = cp.cuda.Device().synchronize
        compiled = statistics.median(_timed(lambda: module.value_and_grad(gparams, X=gX, y=gy), sync, args.repeat))
        row = [f"{name} (N={batch})", f"{compiled:.0f}", f"{err:.1e}"]
        if torch is not None:
            leaves = {k: torch.tensor(v, device="cuda", requires_grad=True) for k, v in params.items()}
            tX, ty = torch.tensor(X, device="cuda"), torch.tensor(y, device="cuda")
            L = ref.mlp_layers(params)

            def torch_step():
                h = tX
                for i in range(1, L):
                    h = torch.relu(torch.addmm(leaves[f"fc{i}.b"], h, leaves[f"fc{i}.W"]))
                scores = torch.addmm(leaves[f"fc{L}.b"], h, leaves[f"fc{L}.W"])
                loss = torch.nn.functional.cross_entropy(scores, ty)
                return torch.autograd.grad(loss, list(leaves.values()))

            eager = statistics.median(_timed(torch_step, torch.cuda.synchronize, args.repeat))
            row += [f"{eager:.0f}", f"{eager / compiled:.2f}"]
        else:
            row += ["n/a", "n/a"]
        rows.append(row)
    header = ["model", "compiled CuPy µs", "max rel err vs numpy", "torch CUDA eager µs", "torch/compiled"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
