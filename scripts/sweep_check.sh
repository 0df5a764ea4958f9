#!/usr/bin/env bash
# nncompile sweep checked for real (tests/test_sweep.py): workers as separate processes of the
# real CLI sharing one Optuna journal file (and an sqlite database), a worker killed with
# SIGKILL and one interrupted mid-trial, median pruning, and the best trial's run directory
# predicting. Installs the optional extra "sweep" (optuna, matplotlib) from PyPI into .venv
# first; without it those tests only skip. About a minute on a quiet 2-core machine.
# Usage: bash scripts/sweep_check.sh [PYTEST ARGS...]
source "$(dirname "$0")/_setup.sh" "test,train,sweep"
python -c 'import optuna; print(f"optuna {optuna.__version__}")'
python -m pytest -q -p no:cacheprovider tests/test_sweep.py tests/test_sweep_space.py "$@"
