"""The array libraries a compiled module can run on: numpy (CPU) and CuPy (NVIDIA GPU).

Everything the code generator, the optimisers and the trainer need to know about a target
is an attribute or method of its :class:`Backend`, so none of them branches on a name, and
:data:`BACKENDS` is the only place the list of backends is written.
"""
from __future__ import annotations

import ast
import functools
import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Backend:
    """One target: the array module the generated code calls, and how code for it differs.

    ``reductions`` maps a ufunc to the function reducing with it; without one (numpy) the
    ufunc's own ``.reduce`` method is called, which skips ``np.sum``'s Python wrapper.
    ``host_names`` are the numpy attributes that keep meaning numpy's when helper source
    written for numpy is retargeted (see :meth:`retarget`).
    """

    name: str                       # what --backend and compile_file(backend=...) take
    xp: str                         # the array module's name in generated code
    module: str                     # the Python module it is
    needs: str                      # what a user must install to run it
    imports: tuple[str, ...]        # the generated module's import lines
    fuses: bool                     # elementwise groups (and optimiser updates) become single kernels
    scalars: bool                   # 0-d results are numpy scalars, as numpy's ufuncs return (CuPy: 0-d arrays)
    traces: bool                    # can emit trace() for nncompile's eval and render
    ufunc_order: bool = False       # its ufuncs take order='C' (else a C-ordered result is made with empty, out=)
    to_device: str = "{}"           # wraps init_params' host arrays
    reductions: tuple[tuple[str, str], ...] | None = None
    host_names: frozenset[str] = frozenset()

    def reduction(self, ufunc: str) -> str:
        """The function reducing with ``ufunc`` ("add", "maximum")."""
        if self.reductions is None:
            return f"{self.xp}.{ufunc}.reduce"
        return f"{self.xp}.{dict(self.reductions)[ufunc]}"

    def elementwise_kernel(self, inputs: str, outputs: str, body: str, name: str) -> str:
        """An expression defining a fused kernel: ``inputs`` and ``outputs`` are C parameter
        lists ("T x0, T x1"), ``body`` C statements. Only a fusing backend has kernels."""
        if not self.fuses:
            raise ValueError(f"the {self.name} backend has no elementwise kernels")
        return f"{self.xp}.ElementwiseKernel({inputs!r}, {outputs!r}, {body!r}, {name!r})"

    def retarget(self, text: str) -> str:
        """Helper source written once, for numpy, as this backend runs it.

        The helpers (the module's converters, the ops' ``helpers=``) call numpy and CuPy's
        numpy-compatible API alike, so one text serves both: what differs is only which
        module the calls go to. That is a fact about the code, not about its characters, so
        the rename works on the parsed code: every attribute of the name ``np`` becomes an
        attribute of this backend's module, except ``host_names``. Strings, comments and
        docstrings are prose and stay as written (a regex over the text rewrote them too),
        and the rest of the text is untouched, so numpy's modules are the text itself.
        Helpers that really differ per backend would be declared once per backend instead.
        """
        return _rename_module(text, "np", self.xp, self.host_names)

    def array_module(self) -> ModuleType:
        """The array library itself, imported (ImportError where it is not installed)."""
        return importlib.import_module(self.module)


@functools.lru_cache(maxsize=None)
def _rename_module(text: str, old: str, new: str, keep: frozenset[str]) -> str:
    """``text`` with each ``old.ATTR`` in its code (not its strings) written ``new.ATTR``."""
    if old == new:
        return text
    spots = sorted({(node.value.lineno, node.value.col_offset) for node in ast.walk(ast.parse(text))
                    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == old and node.attr not in keep}, reverse=True)
    lines = [line.encode() for line in text.split("\n")]
    for lineno, col in spots:   # ast columns count UTF-8 bytes
        line = lines[lineno - 1]
        assert line[col:col + len(old.encode())] == old.encode(), (text, lineno, col)
        lines[lineno - 1] = line[:col] + new.encode() + line[col + len(old.encode()):]
    return "\n".join(line.decode() for line in lines)


NUMPY = Backend(name="numpy", xp="np", module="numpy", needs="numpy", imports=("import numpy as np",),
                fuses=False, scalars=True, traces=True, ufunc_order=True)

CUPY = Backend(name="cupy", xp="cp", module="cupy", needs="CuPy and an NVIDIA GPU: pip install cupy-cuda12x",
               imports=("import numpy as np", "import cupy as cp"), fuses=True, scalars=False, traces=False,
               to_device="cp.asarray({})", reductions=(("add", "sum"), ("maximum", "max"), ("minimum", "min")),
               # np.ndarray asks about a host array; np.int64 is a dtype, the same object in both
               host_names=frozenset({"ndarray", "int64"}))

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (NUMPY, CUPY)}
