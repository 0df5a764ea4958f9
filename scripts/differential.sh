#!/usr/bin/env bash
# The differential suite: nncompile's values and gradients against PyTorch autograd (float64)
# on every op and on random models (tests/test_differential.py), and conv2d and the pools on
# generated geometries (tests/test_differential_conv.py). Installs the CPU build of
# PyTorch into .venv first.
# Usage: bash scripts/differential.sh [--long] [PYTEST ARGS...]
#   --long   the long profile: thousands of random models instead of 60 (about an hour on 2 cores)
source "$(dirname "$0")/_setup.sh" "test,differential"
profile=differential
if [ "${1:-}" = "--long" ]; then
    profile=differential-long
    shift
fi
NNCOMPILE_DIFFERENTIAL_PROFILE="$profile" python -m pytest -q -p no:cacheprovider tests/test_differential.py tests/test_differential_conv.py tests/test_optim.py "$@"
