"""How often a run writes a checkpoint and prints a line: every N epochs, or every so many seconds.

Writing a checkpoint (an fsync'ed .npz) or printing a line costs far more than one step of a
small model, so a trainer that did either after every epoch would spend most of its time
on them. A :class:`Cadence` says when they are due; the trainer also does both at the end
of a run and when it is interrupted, whatever the cadence.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from time import perf_counter

from ..errors import NNError

CHECKPOINT_EVERY = "10s"   # the defaults: at most this often, and at the end and on interrupt
LOG_EVERY = "2s"
SHARE = 0.05               # a timed checkpoint waits long enough to cost at most this share of the run

_SPEC = re.compile(r"^\s*(?:(?P<epochs>\d+)|(?P<time>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>s|m|min))\s*$")


@dataclass
class Cadence:
    """``N`` (every N epochs) or ``Xs`` / ``Xm`` (at most every X seconds / minutes)."""

    spec: str
    epochs: int | None = None      # every this many epochs, or
    seconds: float | None = None   # at most every this many seconds
    _due: float = 0.0              # when (perf_counter) the next timed one is due

    @classmethod
    def parse(cls, spec: str, flag: str) -> Cadence:
        match = _SPEC.match(str(spec))
        if match is None or (match["epochs"] is not None and int(match["epochs"]) < 1):
            raise NNError(f"{flag} takes a number of epochs (e.g. 5) or a time (e.g. 10s or 2m), not {spec!r}")
        if match["epochs"] is not None:
            return cls(str(spec), epochs=int(match["epochs"]))
        seconds = float(match["time"]) * (60 if match["unit"] != "s" else 1)
        if not math.isfinite(seconds):
            raise NNError(f"{flag} takes a finite time, not {spec!r}")
        return cls(str(spec), seconds=seconds)

    def start(self) -> None:
        """Start the clock: the first timed one falls due one interval from now."""
        self._due = perf_counter() + (self.seconds or 0.0)

    @property
    def timed(self) -> bool:
        return self.seconds is not None

    def due_now(self) -> bool:
        """For a timed cadence: has its interval passed? (Cheap enough to ask after every step.)"""
        return self.seconds is not None and perf_counter() >= self._due

    def due_after(self, epoch: int) -> bool:
        """At the end of ``epoch``: is one due?"""
        return epoch % self.epochs == 0 if self.epochs is not None else self.due_now()

    def done(self, cost: float = 0.0) -> None:
        """One was just written (taking ``cost`` seconds): the next timed one waits an interval,
        or longer where writing it takes more than SHARE of that."""
        if self.seconds is not None:
            self._due = perf_counter() + max(self.seconds, cost / SHARE)
