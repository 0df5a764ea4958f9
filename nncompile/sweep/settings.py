"""What a sweep can vary, and a trial's values turned into a model file and a training config.

Two sorts of hyperparameter exist: the trainer's settings, spelled as ``nncompile train``'s
flags (``lr``, ``batch-size``, ``optimizer``...), and the model file's own top-level
constants whose value is a number (``const reg = 1e-3``). A trial that varies a constant
trains a copy of the model with that constant's number replaced in the text, so the trial's
run directory holds (in model.nn) the exact model it trained.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import syntax
from ..errors import NNError
from ..files import write_atomic
from ..optim import OPTIMIZERS
from ..parser import parse_file
from ..train.cli import DEFAULTS, HYPER_FLAGS, train_config
from ..train.data import NORMALIZE
from ..train.trainer import TrainConfig
from .space import REAL, WHOLE, Kind, Value

# The trainer's settings a sweep may vary, by flag name: the setting and the values it takes.
TRAINING: dict[str, tuple[str, Kind]] = {
    "lr": ("lr", REAL), "batch-size": ("batch_size", WHOLE), "epochs": ("epochs", WHOLE),
    "clip-norm": ("clip_norm", REAL), "patience": ("patience", WHOLE),
    "optimizer": ("optimizer", Kind("word", tuple(OPTIMIZERS))), "normalize": ("normalize", Kind("word", NORMALIZE)),
    **{name.replace("_", "-"): (name, REAL) for name in HYPER_FLAGS},
}


@dataclass(frozen=True)
class Constant:
    """A top-level ``const NAME = NUMBER`` of the model file, and where its number is written."""

    name: str
    whole: bool
    number: syntax.Number


@dataclass(frozen=True)
class Model:
    """The model file a sweep trains, and the constants in it that a trial may set."""

    path: Path
    constants: dict[str, Constant]

    @classmethod
    def read(cls, path: str | Path) -> Model:
        path = Path(path)
        if not path.is_file():
            raise NNError("no such model file", file=str(path))
        constants = {}
        for stmt in parse_file(path).body:
            if isinstance(stmt, syntax.Const) and isinstance(stmt.value, syntax.Number) \
                    and stmt.value.loc.end_col is not None:
                constants[stmt.name] = Constant(stmt.name, isinstance(stmt.value.value, int), stmt.value)
        return cls(path, constants)

    def hyperparameters(self) -> dict[str, Kind]:
        """Every name a space may use, with the values it takes."""
        clash = sorted(set(self.constants) & set(TRAINING))
        if clash:
            raise NNError(f"the model's const {clash[0]} has the name of a training setting; rename the const to "
                          "sweep it", file=str(self.path))
        return {**{name: kind for name, (_, kind) in TRAINING.items()},
                **{name: WHOLE if c.whole else REAL for name, c in self.constants.items()}}

    def with_values(self, values: dict[str, Value], where: Path) -> Path:
        """The model with the constants in ``values`` set, written to ``where`` (the file itself
        where none is set). Relative imports are made absolute, as the copy lives elsewhere."""
        chosen = {name: v for name, v in values.items() if name in self.constants}
        if not chosen:
            return self.path
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        edits = [(c.number.loc, _number(v, c.whole)) for name, v in chosen.items() for c in [self.constants[name]]]
        for stmt in parse_file(self.path).body:
            if isinstance(stmt, syntax.Import) and stmt.is_path:
                edits.append(self._absolute_import(stmt, lines))
        for loc, text in sorted(edits, key=lambda e: (e[0].line, e[0].col), reverse=True):
            line = lines[loc.line - 1]
            lines[loc.line - 1] = line[:loc.col - 1] + text + line[(loc.end_col or loc.col) - 1:]
        write_atomic(where, "".join(lines))
        return where

    def _absolute_import(self, stmt: syntax.Import, lines: list[str]) -> tuple[Any, str]:
        target = (self.path.parent / stmt.target).resolve()
        quoted = json.dumps(str(target))
        if "\\" in quoted:
            raise NNError(f"cannot import {target} from a trial's copy of the model: its path has a character that "
                          "a .nn string cannot hold", stmt.loc)
        start = lines[stmt.loc.line - 1].index('"', stmt.loc.col - 1) + 1
        return type(stmt.loc)(stmt.loc.file, stmt.loc.line, start, start + len(stmt.target) + 2), quoted


def _number(value: Value, whole: bool) -> str:
    return str(int(value)) if whole else repr(float(value))


def trial_settings(fixed: dict[str, Any], values: dict[str, Value]) -> tuple[dict[str, Any], TrainConfig]:
    """The settings of one trial (the sweep's fixed flags, then the trial's values), and its
    training config, built as ``nncompile train`` builds it from its flags."""
    given = {TRAINING[name][0]: value for name, value in values.items() if name in TRAINING}
    settings = {**DEFAULTS, **fixed, **given}
    return settings, train_config(settings)


def check_bounds(fixed: dict[str, Any], space_values: list[dict[str, Value]]) -> None:
    """Each end of each range (and each choice) is a setting the trainer accepts: a space
    that could only fail is refused before the first trial."""
    for values in space_values:
        try:
            trial_settings(fixed, values)[1].check()
        except NNError as exc:
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            raise NNError(f"--space: {shown} is no setting the trainer takes: {exc.message}") from None
