"""Learning-rate schedules: the learning rate of each optimiser step.

A schedule is named on the command line as ``NAME`` or ``NAME:KEY=VALUE,...``, for
instance ``--schedule step:every=10,gamma=0.5``. Time is measured in epochs, fractional
within an epoch (``e = step / steps_per_epoch``), so a schedule means the same thing
whatever the batch size; ``lr`` is the base rate given by ``--lr``.

    constant              lr
    step      every, gamma    lr * gamma ** floor(e / every)          (every: epochs // 3, gamma: 0.1)
    exp       gamma           lr * gamma ** e                         (gamma: 0.95 per epoch)
    inv       k               lr / (1 + k * e)          the "1/t" decay (k: 0.1)
    cosine    min_lr          min_lr + (lr - min_lr) * (1 + cos(pi * step / total)) / 2   (min_lr: 0)
    cyclic    min_lr, half    triangular (Smith 2017): from min_lr up to lr and back down,
                              each leg ``half`` epochs long (min_lr: lr / 10, half: 2)

Step decay changes only at whole epochs, as in the lectures; the others move every step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import NNError

ALIASES = {"exponential": "exp", "1/t": "inv", "inverse": "inv", "triangular": "cyclic", "none": "constant"}
PARAMS: dict[str, tuple[str, ...]] = {
    "constant": (),
    "step": ("every", "gamma"),
    "exp": ("gamma",),
    "inv": ("k",),
    "cosine": ("min_lr",),
    "cyclic": ("min_lr", "half"),
}
NAMES = tuple(PARAMS)


@dataclass(frozen=True)
class Schedule:
    """The learning rate at each optimiser step (0-based) of a run."""

    name: str
    lr: float
    steps_per_epoch: int
    total_steps: int
    every: float = 1.0
    gamma: float = 1.0
    k: float = 0.0
    min_lr: float = 0.0
    half: float = 2.0

    def __call__(self, step: int) -> float:
        e = step / self.steps_per_epoch
        if self.name == "constant":
            return self.lr
        if self.name == "step":
            return self.lr * self.gamma ** math.floor(step // self.steps_per_epoch / self.every)
        if self.name == "exp":
            return self.lr * self.gamma ** e
        if self.name == "inv":
            return self.lr / (1.0 + self.k * e)
        if self.name == "cosine":
            progress = min(1.0, step / max(1, self.total_steps))
            return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        # cyclic, triangular: x runs 1 -> 0 -> 1 over each cycle of two legs
        leg = e / self.half
        x = abs(leg - 2.0 * math.floor(leg / 2.0) - 1.0)
        return self.min_lr + (self.lr - self.min_lr) * (1.0 - x)

    @property
    def depends_on_length(self) -> bool:
        """Whether the rate at a step changes with the length of the run (so resuming must keep it)."""
        return self.name == "cosine"

    def describe(self) -> str:
        shown = {key: getattr(self, key) for key in PARAMS[self.name]}
        return self.name + (":" + ",".join(f"{k}={v:g}" for k, v in shown.items()) if shown else "")


def steps_per_epoch(examples: int, batch_size: int) -> int:
    """Optimiser steps in one pass over ``examples`` (the last batch may be short)."""
    return math.ceil(examples / min(batch_size, max(1, examples)))


def make_schedule(spec: str, lr: float, steps_per_epoch: int, epochs: int) -> Schedule:
    """Parse ``NAME[:KEY=VALUE,...]`` into a Schedule for a run of ``epochs`` epochs."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise NNError(f"the learning rate must be a positive number, not {lr!r}")
    name, _, rest = spec.strip().partition(":")
    name = ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in PARAMS:
        raise NNError(f"unknown schedule {spec!r}; choose one of {', '.join(NAMES)} (e.g. step:every=10,gamma=0.5)")
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, text = part.partition("=")
        key = key.strip()
        if not eq or key not in PARAMS[name]:
            takes = ", ".join(PARAMS[name]) or "no parameters"
            raise NNError(f"bad schedule parameter {part!r}: the {name} schedule takes {takes}")
        try:
            values[key] = float(text)
        except ValueError:
            raise NNError(f"schedule parameter {key} must be a number, not {text.strip()!r}") from None
        if not math.isfinite(values[key]):
            raise NNError(f"schedule parameter {key} must be finite, not {text.strip()!r}")
    steps_per_epoch = max(1, steps_per_epoch)
    schedule = Schedule(
        name, float(lr), steps_per_epoch, steps_per_epoch * max(1, epochs),
        every=values.get("every", max(1, epochs // 3)),
        gamma=values.get("gamma", 0.1 if name == "step" else 0.95),
        k=values.get("k", 0.1),
        min_lr=values.get("min_lr", lr / 10 if name == "cyclic" else 0.0),
        half=values.get("half", 2.0),
    )
    _check(schedule)
    return schedule


def _check(s: Schedule) -> None:
    if s.every <= 0:
        raise NNError(f"schedule parameter every must be positive (epochs), not {s.every:g}")
    if not 0 < s.gamma <= 1:
        raise NNError(f"schedule parameter gamma must lie in (0, 1], not {s.gamma:g}")
    if s.k < 0:
        raise NNError(f"schedule parameter k must not be negative, not {s.k:g}")
    if s.half <= 0:
        raise NNError(f"schedule parameter half must be positive (epochs), not {s.half:g}")
    if not 0 <= s.min_lr <= s.lr:
        raise NNError(f"schedule parameter min_lr must lie in [0, lr = {s.lr:g}], not {s.min_lr:g}")
