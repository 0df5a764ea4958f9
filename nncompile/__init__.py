"""nncompile: a declarative graph compiler for neural networks.

A .nn file is parsed (Lark), elaborated into a networkx graph, differentiated in reverse
mode, optimised, and emitted as a standalone numpy module; ``render`` draws the graph with
each edge's value and gradient, as in the CS231n lectures.
"""
from .compiler import compile_and_load, compile_file, load_module
from .errors import NNError
from .export import export_onnx
from .runs import Run, load_run
from .version import __version__

__all__ = ["NNError", "Run", "compile_and_load", "compile_file", "export_onnx", "load_module", "load_run", "__version__"]
