"""Emission: a scheduled graph -> the source of a standalone numpy (or CuPy) module.

The module imports numpy (and CuPy, for the GPU) and nothing else. Its names come from the
.nn file (``fc1.W`` becomes ``fc1_W``, its gradient ``d_fc1_W``); every statement is
commented with the line it came from and its shape. Emission is a pure function of the
graph, so the same model and options always give the same bytes.

The parts: module.py puts the module together (tables, helpers, init_params); readers.py
writes the per-call checks of inputs, params and state; functions.py writes forward,
value_and_grad and trace; runtime.py holds the module's own helpers; names.py the
identifiers and literals. What differs between numpy and CuPy is nncompile/backends.py's.
"""
from .module import NUMPY_DTYPES, emit_module
from .names import RESERVED, Names, c_source, safe_comment, source
from .program import Program

__all__ = ["NUMPY_DTYPES", "RESERVED", "Names", "Program", "c_source", "emit_module", "safe_comment", "source"]
