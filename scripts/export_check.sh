#!/usr/bin/env bash
# The ONNX export checked for real (tests/test_export.py): every example and every op that
# can be exported goes through onnx.checker (full) and ONNX Runtime, which must compute what
# the compiled module's forward does, at batch sizes 1 and 7. Installs the optional extra
# "export" (onnx, onnxruntime) from PyPI into .venv first; without it those tests only skip.
# Usage: bash scripts/export_check.sh [PYTEST ARGS...]
source "$(dirname "$0")/_setup.sh" "test,train,export"
python -c 'import onnx, onnxruntime; print(f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")'
NNCOMPILE_EXPORT_CHECK=1 python -m pytest -q -p no:cacheprovider tests/test_export.py "$@"
