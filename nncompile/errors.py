"""Errors a user can cause, reported against their own text.

Every stage raises :class:`NNError` with the location of the offending source; the CLI
prints it as ``FILE:LINE:COL: error: MESSAGE`` followed by the line and a caret. An error
with no place in a file's text (a missing file, a bad ``--set``, bad data) is printed as
``nncompile: error: [FILE: ]MESSAGE``: a made-up position would send the reader to line 1.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Loc:
    """A position in a .nn file (1-based line and column)."""

    file: str
    line: int
    col: int
    end_col: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class Sources:
    """The text of every file read during a compile, so errors can quote it."""

    _lines: dict[str, list[str]] = {}   # split once: codegen quotes a line for every statement

    @classmethod
    def add(cls, file: str, text: str) -> None:
        # Only "\n" ends a line, as in the lexer: a form feed or a lone carriage return in a
        # comment must not shift the line numbers of everything after it.
        cls._lines[file] = text.split("\n") if text else []

    @classmethod
    def line(cls, file: str, line: int) -> str | None:
        if file not in cls._lines:
            if not Path(file).is_file():   # a pipe holds its text no more once read
                return None
            try:
                cls.add(file, Path(file).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError):
                return None
        lines = cls._lines[file]
        return lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else None


class NNError(Exception):
    """A mistake in the user's model, inputs or files."""

    def __init__(self, message: str, loc: Loc | None = None, file: str | None = None,
                 notes: tuple[tuple[str, Loc], ...] = ()):
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.file = file if file is not None else (loc.file if loc else None)
        self.notes = notes

    def format(self) -> str:
        if self.loc is None:   # about a whole file, or about no file at all
            text = [f"nncompile: error: {f'{self.file}: ' if self.file else ''}{self.message}"]
        else:
            text = [f"{self.loc}: error: {self.message}", *_quote(self.loc)]
        for note, where in self.notes:   # each note quotes its own line too, as compilers do
            text += [f"{where}: note: {note}", *_quote(where)]
        return "\n".join(text)

    def __str__(self) -> str:
        return self.format()

    def _render_traceback_(self) -> list[str]:
        """What IPython (a notebook, the shell) shows for it: the diagnostic, not a traceback."""
        return self.format().split("\n")


class NoSecondDerivative(NNError):
    """A model asks for the second derivative of an op that declares it has none
    (``OpDef.no_second_order``): a compile error where the language asks for it (``grad()``),
    and the reason ``hvp()`` and ``hessian()`` raise where only the module's hvp needs it."""


class NNWarning(UserWarning):
    """Something legal in the user's model that is probably not meant, at its place (issued
    with ``warnings.warn``; the CLI prints it like an error, as ``FILE:LINE:COL: warning: ...``)."""

    def __init__(self, message: str, loc: Loc):
        super().__init__(message)
        self.message = message
        self.loc = loc

    def __str__(self) -> str:
        return "\n".join([f"{self.loc}: warning: {self.message}", *_quote(self.loc)])


def _quote(loc: Loc) -> list[str]:
    """The source line of ``loc`` and a caret (with ~ under the rest of the span) below it."""
    source = Sources.line(loc.file, loc.line)
    if source is None:
        return []
    # One column per character, as the lexer counts them, so the caret lines up; control
    # characters (a tab, a form feed, a stray carriage return) are shown as spaces.
    printable = "".join(c if c.isprintable() else " " for c in source)
    width = max(1, (loc.end_col or loc.col + 1) - loc.col)
    width = min(width, max(1, len(printable) - loc.col + 1))
    return [f"    {printable}", "    " + " " * (loc.col - 1) + "^" + "~" * (width - 1)]


def closest(name: str, known: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The known name a typo most likely meant, for "did you mean": one that differs only in
    case first (``wt`` for ``Wt``), else the most similar ignoring case, ties going to the
    longer common start (``fc.w`` means ``fc.W``, not ``fc.x``)."""
    folded: dict[str, str] = {}
    for option in known:
        folded.setdefault(option.lower(), option)
    key = name.lower()
    if key in folded:
        return folded[key]
    close = difflib.get_close_matches(key, list(folded), n=5, cutoff=cutoff)
    if not close:
        return None
    ratio = {c: difflib.SequenceMatcher(None, key, c).ratio() for c in close}
    return folded[max(close, key=lambda c: (ratio[c], len(os.path.commonprefix([key, c]))))]
