#!/usr/bin/env bash
# The long fuzz profile: N generated and mutated .nn files (default 20000) through compile,
# import, forward, value_and_grad and eval, each in a forked child with a time limit.
# Writes fuzz-report/summary.md (outcomes by class, one minimised repro per distinct
# failure) and summary.json; exits 1 if anything failed. Options after N go to the runner:
#   bash scripts/fuzz.sh 50000 --start 100000 --timeout 20 --out /tmp/fuzz
source "$(dirname "$0")/_setup.sh" "test"
n="${1:-20000}"
shift || true
OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python tests/fuzzing.py "$n" "$@"
