"""A stand-in for CuPy that runs on the CPU with numpy, so the CuPy backend's generated
code (fused kernels, buffers, device helpers) is executed and checked without a GPU.

Only ``ElementwiseKernel`` needs real work: its C expression is translated to numpy.
"""
from __future__ import annotations

import re

import numpy as np

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
        self.expr = compile(_to_numpy(operation[len("y = "):]), name, "eval")

    def __call__(self, *args):
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
