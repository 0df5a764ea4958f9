"""The differential suite: nncompile against PyTorch autograd (float64) on the same numbers.

Every op a .nn file can reach is compared sample by sample, applied to leaves and to
intermediate values, in float64 and float32 (tests/differential/opcases.py); the documented
rules at kinks and ties, and inputs where naive formulas lose precision, are compared on
purpose; and randomly generated well-typed models (tests/differential/models.py: fan-out,
broadcasting, reductions, matmuls of every rank, layers called twice, repeat, losses) are
compiled and compared with the same computation written in PyTorch. Each comparison also checks
dtypes, that inputs are never modified and that a later call never overwrites an earlier
call's results (tests/differential/harness.py).

Run it with ``bash scripts/differential.sh`` (installs PyTorch into .venv; ``--long`` for the
long profile). Without PyTorch the comparisons skip; the coverage checks still run.
"""
from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from nncompile.ops import REGISTRY

from conftest import write_nn
from differential import models
from differential.harness import Tolerance, compare_with_torch
from differential.opcases import OpCase, missing_references, op_cases, reachable_ops
from differential.reference import TORCH
from test_ops import draw

DTYPES = ("float64", "float32")

# Ops a .nn file reaches that have no gradient samples, compared by the hand-written cases below.
WITHOUT_SAMPLES = {"arange": "test_arange_gathers_rows", "dropout": "test_dropout_matches_torch_on_its_own_mask"}

settings.register_profile("differential", settings.get_profile("nncompile"), max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("differential-long", settings.get_profile("differential"), max_examples=3000)
PROFILE = settings.get_profile(os.environ.get("NNCOMPILE_DIFFERENTIAL_PROFILE", "differential"))


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


# ---- coverage: these run without PyTorch, so a new op without a reference fails everywhere

def test_every_op_a_model_can_reach_has_a_torch_reference() -> None:
    assert not missing_references(), (
        f"ops {missing_references()} have no PyTorch reference: add one to tests/differential/reference.py")
    assert set(TORCH) <= set(REGISTRY), f"references for unknown ops: {sorted(set(TORCH) - set(REGISTRY))}"


def test_every_op_a_model_can_reach_is_compared() -> None:
    compared = {case.opdef.name for case in op_cases()} | set(WITHOUT_SAMPLES)
    assert set(reachable_ops()) <= compared, f"ops never compared with PyTorch: {sorted(set(reachable_ops()) - compared)}"
    for test in WITHOUT_SAMPLES.values():
        assert callable(globals().get(test)), test


# ---- every op, every sample: leaves and intermediates, float64 and float32 ----------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", op_cases(), ids=lambda case: case.id)
def test_op_matches_torch(case: OpCase, dtype: str, torch, tmp_path: Path) -> None:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    path = write_nn(tmp_path, "op.nn", case.text())
    compare_with_torch(path, case.reference, case.params(), [case.inputs(rng, draw), case.inputs(rng, draw)],
                       dtype=dtype)
