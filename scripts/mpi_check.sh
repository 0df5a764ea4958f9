#!/usr/bin/env bash
# Data-parallel training checked for real (tests/test_distributed.py): the MPICH wheel's mpiexec
# starts two workers on localhost, as root too, with no extra flags; in float64 their params
# equal a one-process run's, a killed or hung worker ends the run with an error and a checkpoint
# that resumes. Installs the optional extra "mpi" (mpi4py, mpich) from PyPI into .venv first;
# without it those tests only skip. About 2 minutes on 2 busy cores.
# Usage: bash scripts/mpi_check.sh [PYTEST ARGS...]
source "$(dirname "$0")/_setup.sh" "test,train,mpi"
python -c 'from mpi4py import MPI; print(f"mpi4py, {MPI.Get_library_version().splitlines()[0].strip()}")'
python -m pytest -q -p no:cacheprovider tests/test_distributed.py "$@"
