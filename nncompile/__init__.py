"""nncompile: a declarative graph compiler for neural networks.

A .nn file is parsed (Lark), elaborated into a networkx graph, differentiated in reverse
mode, optimised, and emitted as a standalone numpy module; ``render`` draws the graph with
each edge's value and gradient, as in the CS231n lectures. In Jupyter, ``%load_ext nncompile``
adds the ``%%nn NAME`` cell magic (nncompile/notebook.py).
"""
import types as _types

from . import render as _render_module
from .compiler import compile_and_load, compile_file, load_module
from .errors import NNError
from .export import export_onnx
from .runs import Run, load_run
from .version import __version__


class _Render(_types.ModuleType):
    """``nncompile.render`` stays the module (``to_dot``, ``render_file``) and is also
    ``nncompile.render(model, ...)``, which returns a Diagram (nncompile/draw.py)."""

    def __call__(self, model, **options):
        from .draw import render

        return render(model, **options)


_render_module.__class__ = _Render


def load_ipython_extension(ipython) -> None:
    """``%load_ext nncompile``: register the ``%%nn`` cell magic."""
    from .notebook import load_ipython_extension as load

    load(ipython)


__all__ = ["NNError", "Run", "compile_and_load", "compile_file", "export_onnx", "load_module", "load_run", "render",
           "__version__"]
