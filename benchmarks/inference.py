#!/usr/bin/env python
"""Inference: the compiled predict() against numpy by hand, PyTorch eager, JAX jit and ONNX Runtime.

The model is an MLP 784 -> 512 relu -> 256 relu -> 10 (benchmarks/models/mlp_medium.nn), its
class scores for a batch of 1 and of 128, all from the same weights:

* **compiled**: ``module.predict(params, X=X)`` (eval mode, no labels, no loss);
* **numpy**: the three affine layers by hand (``X @ W + b``, ``np.maximum``), in place where free;
* **torch**: PyTorch eager under ``torch.inference_mode()``;
* **jax**: ``jax.jit`` of the same function;
* **onnxruntime (ours)**: ONNX Runtime on the file ``nncompile export`` writes;
* **onnxruntime (torch's)**: ONNX Runtime on the file ``torch.onnx.export`` writes for the
  same torch module (the exporter PyTorch users reach for).

Each implementation's scores are checked against the compiled ones first (float32
tolerance), then all are timed in turns in one process (one thread each: numpy, torch, XLA
and ONNX Runtime's intra-op pool); ratios are medians over the compiled predict's.

    python benchmarks/inference.py [--repeat 2000] [--markdown]

Torch, JAX, onnx and onnxruntime are optional; missing ones leave their rows out. On machines
that set OPENBLAS_CORETYPE, run it as
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/inference.py``.
"""
from __future__ import annotations

import argparse
import sys

from one_core import HERE, mlp_medium  # isort: skip - first: one BLAS thread, set before numpy loads

import io  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

import reference as ref  # noqa: E402
from reference import jax, jnp, torch  # noqa: E402

import nncompile  # noqa: E402

MODEL = HERE / "models" / "mlp_medium.nn"
LAYERS = 3


def numpy_predict(params: dict[str, np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    def predict(X: np.ndarray) -> np.ndarray:
        h = X
        for i in range(1, LAYERS + 1):
            h = h @ params[f"fc{i}.W"]
            h += params[f"fc{i}.b"]
            if i < LAYERS:
                np.maximum(h, 0, out=h)
        return h

    return predict


def torch_module(params: dict[str, np.ndarray]) -> Any:
    layers: list[Any] = []
    for i in range(1, LAYERS + 1):
        W = params[f"fc{i}.W"]
        linear = torch.nn.Linear(*W.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W.T.copy()))
            linear.bias.copy_(torch.from_numpy(params[f"fc{i}.b"]))
        layers += [linear] + ([torch.nn.ReLU()] if i < LAYERS else [])
    return torch.nn.Sequential(*layers).eval()


def onnx_session(model: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def implementations(params: dict[str, np.ndarray], module: Any, folder: Path) -> dict[str, Callable[[np.ndarray], Any]]:
    impls: dict[str, Callable[[np.ndarray], Any]] = {
        "compiled": lambda X: module.predict(params, X=X)["scores"],
        "numpy": numpy_predict(params),
    }
    net = torch_module(params) if torch is not None else None
    if net is not None:
        def eager(X: np.ndarray) -> Any:
            with torch.inference_mode():
                return net(torch.from_numpy(X)).numpy()

        impls["torch"] = eager
    if jax is not None:
        def forward(p: dict[str, Any], X: Any) -> Any:
            h = X
            for i in range(1, LAYERS + 1):
                h = h @ p[f"fc{i}.W"] + p[f"fc{i}.b"]
                if i < LAYERS:
                    h = jax.nn.relu(h)
            return h

        jitted, on_device = jax.jit(forward), {k: jnp.asarray(v) for k, v in params.items()}
        impls["jax"] = lambda X: jax.block_until_ready(jitted(on_device, X))
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return impls
    ours = folder / "ours.onnx"
    nncompile.export_onnx(MODEL, ours, params=params)
    session = onnx_session(ours.read_bytes())
    name = session.get_inputs()[0].name
    impls["onnxruntime (ours)"] = lambda X: session.run(None, {name: X})[0]
    if net is not None:
        buffer = io.BytesIO()
        try:
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
            torch.onnx.export(net, (torch.zeros(1, params["fc1.W"].shape[0]),), buffer, input_names=["X"],
                              output_names=["scores"], dynamic_axes={"X": {0: "N"}}, dynamo=False)
        except Exception as exc:   # the exporter needs packages of its own (onnxscript) in some versions
            print(f"torch.onnx.export failed ({type(exc).__name__}: {exc}); its row is left out", file=sys.stderr)
        else:
            theirs = onnx_session(buffer.getvalue())
            impls["onnxruntime (torch's)"] = lambda X: theirs.run(None, {"X": X})[0]
    return impls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2000, help="timed calls per row (default 2000)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    print(ref.pin_threads(1))
    module, params = mlp_medium()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nncompile_inference_") as folder:
        impls = implementations(params, module, Path(folder))
        for batch in (1, 128):
            X = np.random.default_rng(batch).standard_normal((batch, params["fc1.W"].shape[0])).astype(np.float32)
            want = impls["compiled"](X)
            for name, fn in impls.items():
                got = np.asarray(fn(X))
                if ref.rel_err(got, want) > 1e-4:
                    sys.exit(f"{name}'s scores differ from the compiled predict's by {ref.rel_err(got, want):.2e}")
            repeat = args.repeat if batch == 1 else max(10, args.repeat // 10)
            times = ref.time_us_interleaved({k: (lambda fn=fn: fn(X)) for k, fn in impls.items()}, repeat, warmup=20)
            base = statistics.median(times["compiled"])
            for name, ts in times.items():
                rows.append([f"batch {batch}", name, f"{statistics.median(ts):.1f}", f"{min(ts):.1f}",
                             f"{statistics.median(ts) / base:.2f}"])
    header = ["case", "predict", "median us", "min us", "/ compiled"]
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        print("\n".join("| " + " | ".join(r) + " |" for r in rows))
    else:
        widths = [max(len(c) for c in col) for col in zip(header, *rows)]
        print("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
