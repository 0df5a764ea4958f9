"""The ``%%nn NAME`` cell magic (``%load_ext nncompile``): a model written in a notebook cell.

The cell is compiled as ``nncompile compile`` would compile a file, and the module is bound
to NAME in the notebook (it shows as a table of its inputs, params and outputs).
``--render`` shows its diagram, ``--check`` runs ``nncompile check`` on it. A mistake in the
cell is reported as the command line reports it, ``<cell NAME>:LINE:COL: error: ...`` with
the line and a caret, and no Python traceback; lines are counted as the notebook counts
them, the ``%%nn`` line being line 1.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import keyword
import shlex
import sys

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, magics_class
from IPython.display import display

from . import cli
from .compiler import DTYPES, compile_and_load
from .draw import render, source_file
from .errors import NNError
from .evaluate import parse_sets

USAGE = "%%nn NAME [--render] [--check] [--dtype float32|float64] [--set NAME=VALUE ...] [--seed S] [--rankdir auto|LR|TB]"


class CellError(NNError):
    """A mistake in an ``%%nn`` cell, shown as every NNError is in IPython (its
    ``_render_traceback_``): the error as the command line prints it, no traceback."""

    def __init__(self, error: NNError):
        super().__init__(error.message, error.loc, error.file, error.notes)


class _Options(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message}\nusage: {USAGE}")


def _options() -> argparse.ArgumentParser:
    p = _Options(prog="%%nn", add_help=False)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--render", action="store_true", help="show the diagram of values and gradients")
    p.add_argument("--check", action="store_true", help="run the gradient check of nncompile check")
    p.add_argument("--dtype", choices=DTYPES, default=None)
    p.add_argument("--set", action="append", metavar="NAME=VALUE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rankdir", choices=("auto", "LR", "TB"), default="auto")
    return p


@magics_class
class NNMagics(Magics):
    """``%%nn``: see the module docstring."""

    @cell_magic
    def nn(self, line: str, cell: str) -> None:
        """Compile the cell's .nn model and bind it to NAME: ``%%nn NAME [--render] [--check]``."""
        try:
            options = _options().parse_args(shlex.split(line))
        except ValueError as exc:   # an unclosed quote
            raise UsageError(f"{exc}\nusage: {USAGE}") from None
        name = options.name
        if not name.isidentifier() or keyword.iskeyword(name):
            raise UsageError(f"%%nn {name}: NAME must be a Python name, as the module is bound to it\nusage: {USAGE}")
        shown = f"<cell {name}>"
        try:
            with source_file("\n" + cell, name, shown) as path:   # "\n": the %%nn line is line 1
                module = compile_and_load(path, dtype=options.dtype)
                diagram = render(path, sets=parse_sets(options.set), seed=options.seed, dtype=options.dtype,
                                 rankdir=options.rankdir) if options.render else None
                check = _check(str(path), shown, options) if options.check else None
        except NNError as exc:
            raise CellError(exc) from None
        self.shell.user_ns[name] = module
        if diagram is not None:
            display(diagram)
        if check is not None:
            out, err = check
            sys.stdout.write(out)
            sys.stderr.write(err)


def _check(path: str, shown: str, options: argparse.Namespace) -> tuple[str, str]:
    """``nncompile check`` on the cell's file: what it prints on stdout and stderr, the file
    called ``shown``."""
    argv = ["check", path, "--seed", str(options.seed), *[f"--set={item}" for item in options.set or ()]]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        cli.main(argv)
    return out.getvalue().replace(path, shown), err.getvalue().replace(path, shown)


def load_ipython_extension(ipython) -> None:
    """``%load_ext nncompile``: register ``%%nn``."""
    ipython.register_magics(NNMagics)
