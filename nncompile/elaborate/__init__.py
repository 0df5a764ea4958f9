"""Elaboration: syntax tree -> IR graph.

Resolves names, evaluates constants, instantiates layers (each call gets its own params,
scoped by the name it is bound to: ``fc1.W``), unrolls ``repeat``, follows imports, and
checks shapes as each node is built, so every error points at the user's text.

One object per job, sharing the :class:`Elaborator` (the graph, the model, ``op()``):
``constants`` evaluates what is known when compiling, ``imports`` reads other files,
``layers`` defines and inlines layers, ``statements`` and ``expressions`` build the graph.
"""
from __future__ import annotations

from pathlib import Path

from .. import syntax
from ..errors import Loc, NNError
from ..ir import Model
from ..parser import parse_file
from .constants import Constants
from .core import MODES, Context, Scope
from .expressions import Expressions
from .imports import STDLIB, Imports
from .layers import Layers
from .statements import ParamInit, Statements

__all__ = ["MODES", "STDLIB", "Elaborator", "ParamInit", "Scope", "elaborate", "elaborate_file"]


def elaborate_file(path: str | Path, dtype: str | None = None, mode: str = "train",
                   shorten: tuple[int, int] | None = None) -> Model:
    """Parse and elaborate a .nn file (and what it imports) for train or eval mode.

    ``shorten=(k, long)`` elaborates each ``repeat`` of more than ``long`` instances with only
    k of them, the first and the last ones, for a compile that stretches the module to the
    full count (stretch.py)."""
    module = parse_file(path)
    return Elaborator(module.file, dtype, mode, shorten).run(module)


def elaborate(module: syntax.Module, dtype: str | None = None, mode: str = "train") -> Model:
    """Elaborate a parsed module (what ``parse`` returns) for train or eval mode."""
    return Elaborator(module.file, dtype, mode).run(module)


class Elaborator(Context):
    """Builds the graph of one mode: ``train { }`` blocks count in train mode, ``eval { }``
    blocks in eval mode, and mode-dependent ops (dropout) lower accordingly."""

    def __init__(self, file: str, dtype: str | None, mode: str = "train",
                 shorten: tuple[int, int] | None = None):
        super().__init__(file, mode)
        self.dtype_override = dtype
        self.shorten = shorten
        self.instance_results: set[int] = set()   # layer results named after their instance, until assigned
        self.consts = Constants(self)
        self.imports = Imports(self)
        self.layers = Layers(self)
        self.statements = Statements(self)
        self.exprs = Expressions(self)

    def run(self, module: syntax.Module) -> Model:
        self.imports.begin(module.file)
        try:
            self.statements.body(module.body, Scope((), {}))
        except NNError as error:   # a line train mode accepts may fail here: say which mode it fails in
            if self.mode != "eval" or not self.model.mode_dependent or "eval mode" in error.message:
                raise
            raise type(error)(f"in eval mode (the eval {{ }} blocks count): {error.message}", error.loc, error.file,
                          error.notes) from None
        if self.dtype_override:
            self.model.dtype = self.dtype_override
        if not self.model.outputs and self.model.loss is None:
            last = module.body[-1] if module.body else None
            raise NNError("the model has no 'output' or 'minimize' statement, so nothing would be computed",
                          last.loc if last else Loc(module.file, 1, 1))
        return self.model
