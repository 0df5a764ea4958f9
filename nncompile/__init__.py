"""nncompile: a declarative graph compiler for neural networks.

A .nn file is parsed (Lark), elaborated into a networkx graph, differentiated in reverse
mode, optimised, and emitted as a standalone numpy module; ``render`` draws the graph with
each edge's value and gradient, as in the CS231n lectures.
"""
__version__ = "0.1.0"

from .compiler import compile_and_load, compile_file, load_module  # noqa: E402
from .errors import NNError  # noqa: E402

__all__ = ["NNError", "compile_and_load", "compile_file", "load_module", "__version__"]
