"""Imported first by the benchmarks that time against torch and JAX: one BLAS thread for
everyone (set before numpy loads, so it must come before any numpy import), this folder and
the checkout importable, and the compiled mlp_medium they share."""
from __future__ import annotations

import os
import sys
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import nncompile  # noqa: E402


def mlp_medium() -> tuple:
    """benchmarks/models/mlp_medium.nn compiled in float32, and its params with nonzero biases
    (as the other benchmarks use): (module, params)."""
    module = nncompile.load_module(nncompile.compile_file(HERE / "models" / "mlp_medium.nn", dtype="float32"),
                                   "mlp_medium")
    params = module.init_params(0)
    for k in params:
        if k.endswith(".b"):
            params[k][...] = 0.1 * np.random.default_rng(len(k)).standard_normal(params[k].shape)
    return module, params
