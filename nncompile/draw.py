"""``nncompile.render(model, ...)``: a model drawn from Python, as ``nncompile render`` draws it.

The model is a .nn file, .nn source text or an :class:`~nncompile.evaluate.Evaluation`; the
keywords are the command's options (``--set``, ``--seed``, ``--dtype``, ``--rankdir``, and a
trained run's ``--params``, ``--data``, ``--map``, ``--batch``/``--index``, ``--mode``).
Source text is compiled from a file in a private temporary folder (the compiler reads
files), and its errors name the text as the caller chose (``<string>``, ``<cell net>``),
never that folder.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .display import Diagram
from .errors import NNError, Sources
from .evaluate import Evaluation, evaluate_file
from .render import MAX_NODES
from .runs import trained_options


def render(model: str | Path | Evaluation, *, sets: Mapping[str, Any] | None = None, seed: int = 0,
           dtype: str | None = None, rankdir: str = "auto", params: str | Path | None = None, data: str | None = None,
           mapping: Sequence[str] | Mapping[str, str] | None = None, batch: int | None = None,
           index: int | None = None, mode: str = "train", max_nodes: int = MAX_NODES) -> Diagram:
    """The diagram of ``model`` with every value and gradient; in a notebook it shows as SVG.

    ``model`` is a path, .nn source text (a string with a line break in it), or an Evaluation
    (which is drawn as it is: the other options would change what it holds). ``sets`` gives
    inputs, params and dims their values (``{"x": 3, "W": [[1, 2]], "N": 8}``), as ``--set``
    does; ``params``/``data``/``mapping``/``batch``/``index``/``mode`` are ``nncompile render``'s
    options for a trained model (``params="runs/digits_mlp", data="digits"``).
    """
    if isinstance(model, Evaluation):
        given = {"sets": sets, "params": params, "data": data, "mapping": mapping, "batch": batch, "index": index,
                 "dtype": dtype}
        ignored = [name for name, value in given.items() if value is not None] + \
            [name for name, value, default in (("seed", seed, 0), ("mode", mode, "train")) if value != default]
        if ignored:
            raise NNError(f"{', '.join(ignored)} cannot change an Evaluation, which holds its values already: "
                          "pass the .nn file instead (or evaluate_file with these options)")
        return Diagram(model, rankdir, max_nodes=max_nodes)
    if isinstance(model, str) and is_source_text(model):
        with source_file(model, "model", "<string>") as path:
            return render(path, sets=sets, seed=seed, dtype=dtype, rankdir=rankdir, params=params, data=data,
                          mapping=mapping, batch=batch, index=index, mode=mode, max_nodes=max_nodes)
    trained, where = trained_options(model, params=params, data=data, mapping=mapping, batch=batch, index=index,
                                     mode=mode, seed=seed, dtype=dtype)
    evaluation = evaluate_file(model, set_texts(sets), seed=seed, dtype=dtype, **trained)
    return Diagram(evaluation, rankdir, max_nodes=max_nodes, where=where)


def is_source_text(model: str) -> bool:
    """A string is .nn text when it has a line break, or is no file and does not end in .nn
    (so that a mistyped ``model.nn`` is "no such file", not a syntax error)."""
    return "\n" in model or not (model.endswith(".nn") or Path(model).is_file())


def set_texts(sets: Mapping[str, Any] | None) -> dict[str, str]:
    """``{"x": 3, "W": [[1, 2]]}`` (numbers, lists, arrays, or the text ``--set`` takes) as
    ``--set``'s ``NAME=VALUE`` texts, so that a value is checked as on the command line."""
    return {name: value if isinstance(value, str) else json.dumps(np.asarray(value).tolist())
            for name, value in (sets or {}).items()}


@contextmanager
def source_file(text: str, stem: str, shown: str) -> Iterator[Path]:
    """.nn ``text`` as the file ``STEM.nn`` in a private temporary folder, for as long as the
    ``with`` lasts; an NNError raised meanwhile names the text ``shown`` instead, and quotes it."""
    with tempfile.TemporaryDirectory(prefix="nncompile-") as folder:
        path = Path(folder) / f"{stem}.nn"
        path.write_text(text, encoding="utf-8")
        try:
            yield path
        except NNError as exc:
            raise renamed(exc, str(path), shown, text) from None


def renamed(error: NNError, file: str, shown: str, text: str) -> NNError:
    """``error`` with the file ``file`` called ``shown``, wherever it is named. A file it
    names beside ``file`` (an import the text cannot reach) is named as the text wrote it."""
    Sources.add(shown, text)
    folder = str(Path(file).parent) + os.sep

    def move(loc):
        return replace(loc, file=shown) if loc is not None and loc.file == file else loc

    error.loc = move(error.loc)
    error.notes = tuple((note, move(where)) for note, where in error.notes)
    error.file = shown if error.file == file else error.file
    message = error.message.replace(file, shown)
    if folder in message:
        message = message.replace(folder, "") + (f"; {shown} is compiled on its own, so it can import the standard "
                                                 "library but no file: write the model to a file beside the ones "
                                                 "it imports")
    error.message = message
    error.args = (error.message,)
    return error
