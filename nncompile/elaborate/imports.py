"""Imports: files named by path or from the standard library, each read once, cycles refused."""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .. import syntax
from ..errors import NNError
from ..parser import parse_file
from .core import Scope

if TYPE_CHECKING:
    from . import Elaborator

STDLIB = Path(__file__).resolve().parent.parent / "stdlib"


class Imports:
    """Follows ``import`` statements; an imported file may only define consts and layers."""

    def __init__(self, el: Elaborator):
        self.el = el
        self.importing: list[str] = []   # the files being read, the main one first
        self.imported: set[str] = set()

    def begin(self, file: str) -> None:
        """The main file counts as being read, so a file importing it back is a cycle."""
        self.importing.append(str(Path(file).resolve()))

    def follow(self, stmt: syntax.Import, scope: Scope) -> None:
        if stmt.is_path:
            # Shown (in errors, in the generated code's comments) relative to the importing
            # file as the user wrote it; resolved only to recognise a file seen before.
            shown = Path(os.path.normpath(Path(stmt.loc.file).parent / stmt.target))
            try:
                path = shown.resolve()
            except (OSError, ValueError) as exc:   # a name too long for the file system, a NUL byte
                shown_name = "".join(c if c.isprintable() else "?" for c in stmt.target[:40])
                raise NNError(f"cannot import \"{shown_name}\": "
                              f"{getattr(exc, 'strerror', None) or exc}", stmt.loc) from None
        else:
            shown = path = (STDLIB / f"{stmt.target}.nn").resolve()
            if not _is_file(path):
                known = sorted(p.stem for p in STDLIB.glob("*.nn"))
                raise NNError(f"no standard library module '{stmt.target}'"
                              + (f"; there is {', '.join(known)}" if known else ""), stmt.loc)
        if str(path) in self.importing:
            chain = [*self.importing[self.importing.index(str(path)):], str(path)]
            raise NNError("import cycle: " + " imports ".join(Path(p).name for p in chain), stmt.loc)
        if str(path) in self.imported:
            return
        if not _is_file(path):
            raise NNError(f"cannot import \"{stmt.target}\": there is no file {shown}", stmt.loc)
        module = parse_file(shown)
        self.importing.append(str(path))
        # The imported file has its own consts: its layers see those, never the importer's.
        own = Scope((), {})
        for inner in module.body:
            match inner:
                case syntax.Const() | syntax.Layer() | syntax.Import():
                    self.el.statements.statement(inner, own)
                case _:
                    raise NNError("an imported file may only define consts and layers, and import others",
                                  inner.loc)
        for name, value in own.consts.items():   # and the importer gets them too
            scope.define(name, own.defined.get(name, stmt.loc))
            scope.consts[name] = value
        self.importing.pop()
        self.imported.add(str(path))


@functools.lru_cache(maxsize=None)
def stdlib_layers() -> dict[str, str]:
    """Each layer the standard library defines -> its module ('dense' -> 'nn'), for the hint
    where a file calls one without importing it."""
    return {stmt.name: path.stem for path in sorted(STDLIB.glob("*.nn")) for stmt in parse_file(path).body
            if isinstance(stmt, syntax.Layer)}


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a name too long for the file system (or with a NUL byte) is no file."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
