#!/usr/bin/env bash
# Notebooks checked for real (tests/test_notebook.py): the %%nn magic in an IPython shell and
# in a python3 kernel driven by nbclient, and examples/tutorial.ipynb executed from top to
# bottom (diagrams as SVG, modules as HTML tables, the curves as a PNG, no error but the one it
# shows on purpose, never a traceback). Installs the optional extras "notebook" (ipython,
# ipykernel, nbclient, nbformat) and "train" (matplotlib, scikit-learn) from PyPI into .venv
# first; without them those tests only skip.
# Usage: bash scripts/notebook_check.sh [PYTEST ARGS...]
source "$(dirname "$0")/_setup.sh" "test,train,notebook"
python -c 'import IPython, ipykernel, nbclient, nbformat; print(f"ipython {IPython.__version__}, ipykernel {ipykernel.__version__}, nbclient {nbclient.__version__}, nbformat {nbformat.__version__}")'
NNCOMPILE_NOTEBOOK_CHECK=1 python -m pytest -q -p no:cacheprovider tests/test_notebook.py tests/test_display.py "$@"
