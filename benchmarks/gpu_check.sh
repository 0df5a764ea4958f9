#!/usr/bin/env bash
# The whole GPU check, for a machine with an NVIDIA GPU: install CuPy, run the GPU tests,
# then the GPU benchmark. One short script, so it fits a lent machine's time.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet -e ".[test]" "cupy-cuda12x>=13" 2>&1 | tail -n 2 || true
python -m pytest -q -m gpu tests/test_cupy_backend.py -rs
python benchmarks/bench_gpu.py --repeat 50
