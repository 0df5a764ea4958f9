"""A stand-in for CuPy that runs on the CPU with numpy, so the CuPy backend's generated
code (fused kernels, buffers, device helpers) is executed and checked without a GPU.

Only ``ElementwiseKernel`` needs real work: its C expression is translated to numpy, or,
with ``C_COMPILER`` set (see :func:`compiled_kernels`), compiled as C with a real compiler
and run through ctypes, so the C text itself is what gets checked.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

C_COMPILER: str | None = None        # "gcc": compile each kernel's C expression and run that
_C_TYPES = {np.dtype(np.float64): "double", np.dtype(np.float32): "float"}
_BUILD = tempfile.TemporaryDirectory(prefix="nncompile_c_kernels_")   # removed when Python exits
_LOADED: dict[tuple[str, int, str], ctypes._CFuncPtr] = {}

# C has no max/min; CUDA's are fmax/fmin for floating point (NaN is ignored, not spread).
_C_PRELUDE = """#include <tgmath.h>
typedef {ctype} T;
#define max(a, b) fmax((T)(a), (T)(b))
#define min(a, b) fmin((T)(a), (T)(b))
"""


@contextlib.contextmanager
def compiled_kernels(compiler: str = "gcc"):
    """Run every ``y = ...`` kernel as C compiled by ``compiler`` while the block runs."""
    global C_COMPILER
    old, C_COMPILER = C_COMPILER, compiler
    try:
        yield
    finally:
        C_COMPILER = old


def c_function(expr: str, arity: int, dtype) -> ctypes._CFuncPtr:
    """``void kernel(long n, const T *X0, ..., T *y)`` computing ``y[i] = expr`` with
    x0 = X0[i], ..., compiled once per expression and dtype (``gcc -shared -fPIC -O1 -lm``)."""
    ctype = _C_TYPES[np.dtype(dtype)]
    key = (expr, arity, ctype)
    if key not in _LOADED:
        params = "".join(f", const T *X{i}" for i in range(arity))
        reads = "".join(f"const T x{i} = X{i}[i]; " for i in range(arity))
        source = (_C_PRELUDE.format(ctype=ctype)
                  + f"void kernel(long n{params}, T *y) {{\n"
                  + f"    for (long i = 0; i < n; i++) {{ {reads}y[i] = {expr}; }}\n}}\n")
        stem = Path(_BUILD.name) / hashlib.sha1(source.encode()).hexdigest()
        stem.with_suffix(".c").write_text(source)
        done = subprocess.run([C_COMPILER or "gcc", "-shared", "-fPIC", "-O1", str(stem.with_suffix(".c")),
                               "-o", str(stem.with_suffix(".so")), "-lm"], capture_output=True, text=True)
        if done.returncode:
            raise AssertionError(f"the C form does not compile:\n{source}\n{done.stderr}")
        function = ctypes.CDLL(str(stem.with_suffix(".so"))).kernel
        function.restype = None
        _LOADED[key] = function
    return _LOADED[key]


def run_c(expr: str, dtype, *inputs) -> np.ndarray:
    """``expr`` over x0, x1, ... evaluated in C, elementwise, with numpy's broadcasting."""
    shape = np.broadcast_shapes(*(np.shape(a) for a in inputs))
    arrays = [np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=dtype), shape)) for a in inputs]
    out = np.empty(shape, dtype=dtype)
    pointer = ctypes.c_void_p
    c_function(expr, len(inputs), dtype)(ctypes.c_long(out.size), *(pointer(a.ctypes.data) for a in arrays),
                                         pointer(out.ctypes.data))
    return out


_C_TO_NUMPY = [
    (r"\(T\)\(", "_T("),   # a cast of a comparison: bool -> the array's float type
    (r"\(T\)", ""),
    (r"\bmax\(", "np.maximum("),
    (r"\bmin\(", "np.minimum("),
    (r"\bfabs\(", "np.abs("),
    (r"\bpow\(", "np.power("),
    (r"\bcopysign\(", "np.copysign("),
    (r"\b(exp|expm1|log|log1p|sqrt|tanh)\(", r"np.\1("),
    (r"\bINFINITY\b", "np.inf"),
    (r"\bNAN\b", "np.nan"),
]


def _T(value):
    return np.asarray(value, dtype=np.float64)


def _to_numpy(code: str) -> str:
    for pattern, replacement in _C_TO_NUMPY:
        code = re.sub(pattern, replacement, code)
    return code


class ElementwiseKernel:
    def __init__(self, in_params: str, out_params: str, operation: str, name: str):
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), name
        self.arity = len(in_params.split(","))
        self.inputs = [p.split()[1] for p in in_params.split(", ")]
        self.outputs = [p.split()[1] for p in out_params.split(", ")]
        if out_params != "T y":   # an in-place update of several arrays: C statements
            statements = [st.strip() for st in operation.split(";") if st.strip()]
            # `v = ...` must write into the caller's array, not rebind a local name.
            python = [re.sub(r"^(\w+) = ", r"\1[...] = ", _to_numpy(st)) for st in statements]
            self.statements = compile("\n".join(python), name, "exec")
            return
        assert operation.startswith("y = "), operation
        self.operation = operation[len("y = "):]
        self.expr = compile(_to_numpy(operation[len("y = "):]), name, "eval")

    def __call__(self, *args):
        if C_COMPILER and not hasattr(self, "statements"):
            inputs, out = args[:self.arity], args[self.arity:]
            dtype = next(np.asarray(a).dtype for a in inputs if np.ndim(a))
            value = run_c(self.operation, dtype, *inputs)
            if out:
                out[0][...] = value
                return out[0]
            return value
        if hasattr(self, "statements"):
            scope = {"np": np, "_T": _T, **dict(zip(self.inputs + self.outputs, args))}
            exec(self.statements, scope)  # noqa: S102 - our compiler's own kernels, in a test
            return None
        inputs, out = args[:self.arity], args[self.arity:]
        scope = {"np": np, "_T": _T, **{f"x{i}": np.asarray(a) for i, a in enumerate(inputs)}}
        with np.errstate(all="ignore"):
            value = eval(self.expr, scope)  # noqa: S307 - our compiler's own kernels, in a test
        shape = np.broadcast_shapes(*(np.shape(a) for a in inputs))
        dtype = next(np.asarray(a).dtype for a in inputs if np.ndim(a))
        if out:
            out[0][...] = value
            return out[0]
        return np.broadcast_to(np.asarray(value, dtype=dtype), shape).copy()


def asnumpy(array):
    return np.asarray(array)


def __getattr__(name: str):
    return getattr(np, name)
