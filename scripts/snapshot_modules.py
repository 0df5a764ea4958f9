"""Compile every example and benchmark model, in every form a user can ask for, into one folder.

A refactoring of the compiler should leave generated code alone. Run this before and after,
and compare: ``diff -r BEFORE AFTER`` lists every module whose bytes changed.

    python scripts/snapshot_modules.py OUT_DIR [RANDOM_MODELS]

Besides the bundled models it compiles RANDOM_MODELS (default 300) well-typed programs from
the fuzz suite's generator (tests/fuzzing.py), seeds 0, 1, ..., which reach every op.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from nncompile.compiler import compile_file
from nncompile.errors import NNError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
MODELS = sorted((ROOT / "examples").glob("*.nn")) + sorted((ROOT / "benchmarks" / "models").glob("*.nn"))
FORMS = {
    "f32": {},
    "f64": {"dtype": "float64"},
    "unopt": {"optimized": False},
    "trace": {"dtype": "float64", "trace": True},
    "params_only": {"input_grads": False},
    "cupy": {"backend": "cupy"},
    "adam": {"optimizer": "adam", "input_grads": False},
    "sgd": {"optimizer": "sgd", "input_grads": False},
    "cupy_adam": {"backend": "cupy", "optimizer": "adam", "input_grads": False},
}


def snapshot(path: Path, stem: str, out: Path) -> None:
    for form, options in FORMS.items():
        target = out / f"{stem}.{form}.py"
        try:
            target.write_text(compile_file(path, **options))
        except NNError as exc:
            target.with_suffix(".error").write_text(exc.format() + "\n")


def main(out: Path, random_models: int = 300) -> int:
    from fuzzing import RandomChoices, write_program

    out.mkdir(parents=True, exist_ok=True)
    for path in MODELS:
        snapshot(path, path.stem, out)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(random_models):
            path = Path(tmp) / f"random{seed}.nn"
            path.write_text(write_program(RandomChoices(seed), ill_typed=0.0)[0])
            snapshot(path, path.stem, out)
    print(f"{len(MODELS)} models and {random_models} random ones x {len(FORMS)} forms -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), *map(int, sys.argv[2:3])))
