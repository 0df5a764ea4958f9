"""The search space of a sweep: ``lr=loguniform(1e-4,1e-1),batch-size=choice(32,64,128)``.

A space is parsed once, checked against the hyperparameters that exist (the trainer's
numeric and named settings, and the model file's own top-level constants such as ``reg``),
and turned into Optuna's ``suggest_*`` calls for each trial. Its text form round-trips:
``Space.parse(str(space), ...) == space``. Nothing here imports Optuna.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import NNError, closest

Value = int | float | str
# The distributions, as the user writes them, with what their arguments mean.
DISTRIBUTIONS = {
    "uniform": "uniform(LOW,HIGH): a real number, evenly spread",
    "loguniform": "loguniform(LOW,HIGH): a positive real number, evenly spread on a log scale",
    "int": "int(LOW,HIGH): a whole number from LOW to HIGH",
    "logint": "logint(LOW,HIGH): a whole number from LOW to HIGH, on a log scale",
    "choice": "choice(A,B,...): one of the values listed",
}
EXAMPLE = "lr=loguniform(1e-4,1e-1),reg=loguniform(1e-5,1e-2),batch-size=choice(32,64,128)"
HINT = f"write NAME=DISTRIBUTION(ARGS) separated by commas, e.g. {EXAMPLE}"
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_WHOLE = re.compile(r"[+-]?\d+$")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Kind:
    """What values a hyperparameter takes: real numbers, whole numbers, or one of some words."""

    name: str                           # "real", "whole" or "word"
    words: tuple[str, ...] = ()         # the words a "word" hyperparameter may be

    def admits(self, value: Value) -> bool:
        if self.name == "word":
            return isinstance(value, str) and value in self.words
        if self.name == "whole":
            return isinstance(value, int)
        return isinstance(value, (int, float))


REAL, WHOLE = Kind("real"), Kind("whole")


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter's distribution: ``name=kind(args)``."""

    name: str
    kind: str                  # one of DISTRIBUTIONS
    args: tuple[Value, ...]

    @property
    def log(self) -> bool:
        return self.kind in ("loguniform", "logint")

    def __str__(self) -> str:
        return f"{self.name}={self.kind}({','.join(_show(a) for a in self.args)})"

    def suggest(self, trial: Any) -> Value:
        """The value Optuna's ``trial`` draws for this dimension."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.args))
        low, high = self.args
        if self.kind in ("int", "logint"):
            return trial.suggest_int(self.name, int(low), int(high), log=self.log)
        return trial.suggest_float(self.name, float(low), float(high), log=self.log)


@dataclass(frozen=True)
class Space:
    """The dimensions of a sweep, in the order written."""

    dimensions: tuple[Dimension, ...]

    def __str__(self) -> str:
        return ",".join(str(d) for d in self.dimensions)

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def suggest(self, trial: Any) -> dict[str, Value]:
        return {d.name: d.suggest(trial) for d in self.dimensions}

    @classmethod
    def parse(cls, text: str, known: dict[str, Kind]) -> Space:
        """The space ``text`` describes; ``known`` names every hyperparameter that exists.
        Each mistake is reported with the part of the text at fault quoted."""
        items = _split(text)
        if not items:
            raise NNError(f"--space is empty; {HINT}")
        dimensions: list[Dimension] = []
        for item in items:
            dimension = _dimension(item, known)
            if dimension.name in [d.name for d in dimensions]:
                raise NNError(f"--space: {dimension.name} is given twice (in \"{item}\"); "
                              "give each hyperparameter once")
            dimensions.append(dimension)
        return cls(tuple(dimensions))


def _split(text: str) -> list[str]:
    """The items of ``text``: split at the commas outside parentheses."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth < 0:
            raise NNError(f"--space: a ')' without its '(' in \"{text[:i + 1]}\"; {HINT}")
        if c == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    if depth:
        raise NNError(f"--space: a '(' is never closed in \"{text[start:].strip()}\"; {HINT}")
    items.append(text[start:].strip())
    if any(not item for item in items) and text.strip():
        raise NNError(f"--space: an empty item in \"{text}\" (two commas in a row, or one at an end); {HINT}")
    return [item for item in items if item]


def _dimension(item: str, known: dict[str, Kind]) -> Dimension:
    match = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\w+)\s*\((.*)\)\s*", item, flags=re.S)
    if match is None:
        raise NNError(f"--space: cannot read \"{item}\"; {HINT}")
    name, kind, inside = match.groups()
    if name not in known:
        hint = _did_you_mean(name.replace("_", "-"), known)
        raise NNError(f"--space: there is no hyperparameter '{name}' (in \"{item}\"){hint}; "
                      f"the ones that exist: {', '.join(sorted(known))}")
    if kind not in DISTRIBUTIONS:
        raise NNError(f"--space: no distribution '{kind}' (in \"{item}\"){_did_you_mean(kind, DISTRIBUTIONS)}; "
                      "there is " + "; ".join(DISTRIBUTIONS.values()))
    args = tuple(_value(arg.strip(), item) for arg in inside.split(","))
    dimension = Dimension(name, kind, args)
    _check(dimension, known[name], item)
    return dimension


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = closest(name, known, cutoff=0.75)
    return f" (did you mean {close}?)" if close else ""


def _value(text: str, item: str) -> Value:
    if _WHOLE.match(text):
        return int(text)
    if _NUMBER.match(text):
        value = float(text)
        if math.isfinite(value):
            return value
    elif _WORD.match(text):
        return text
    raise NNError(f"--space: \"{text}\" in \"{item}\" is neither a finite number nor a name; {HINT}")


def _check(d: Dimension, kind: Kind, item: str) -> None:
    """The arguments fit the distribution, and its values fit the hyperparameter."""
    where = f"(in \"{item}\")"
    if d.kind == "choice":
        bad = [a for a in d.args if not kind.admits(a)]
        if bad:
            raise NNError(f"--space: {d.name} cannot be {_show(bad[0])} {where}; it takes {_takes(kind)}")
        if len(set(d.args)) != len(d.args):
            raise NNError(f"--space: choice lists a value twice {where}")
        return
    if kind.name == "word":
        raise NNError(f"--space: {d.name} is a name, not a number {where}; use choice({','.join(kind.words)})")
    if len(d.args) != 2 or not all(isinstance(a, (int, float)) for a in d.args):
        raise NNError(f"--space: {d.kind} takes two numbers, LOW and HIGH {where}; {DISTRIBUTIONS[d.kind]}")
    low, high = d.args
    if d.kind in ("int", "logint") and not all(isinstance(a, int) for a in d.args):
        raise NNError(f"--space: {d.kind} takes whole numbers {where}; for real numbers use uniform or loguniform")
    if kind.name == "whole" and d.kind not in ("int", "logint"):
        raise NNError(f"--space: {d.name} is a whole number {where}; use int(LOW,HIGH), logint(LOW,HIGH) or choice")
    if not low < high:
        raise NNError(f"--space: LOW must be below HIGH {where}")
    if d.log and low <= 0:
        raise NNError(f"--space: a log scale needs LOW above 0 {where}")


def _takes(kind: Kind) -> str:
    return {"real": "numbers", "whole": "whole numbers"}.get(kind.name, "one of " + ", ".join(kind.words))


def _show(value: Value) -> str:
    """A value as the space writes it: repr of a float round-trips exactly."""
    return repr(value) if isinstance(value, float) else str(value)
