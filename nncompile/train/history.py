"""A run's history as plain data: one record per epoch, and the loss of every step.

:meth:`Trainer.fit <nncompile.train.trainer.Trainer.fit>` returns it. The records are the
lines of metrics.jsonl (``epoch``, ``step``, ``lr``, ``loss``, ``acc``, ``val_loss``,
``val_acc``, ``val_data_loss``, ``seconds``); ``history["loss"]`` is one of them as a numpy array over the
epochs (NaN where an epoch has no value, e.g. no validation that epoch), ``as_dict()``
all of them, and ``step_loss`` the training loss of each optimiser step. No pandas needed;
``pandas.DataFrame(history.records)`` works where it is installed.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

COLUMNS = ("epoch", "step", "lr", "loss", "acc", "val_loss", "val_acc", "val_data_loss", "seconds")


@dataclass(frozen=True)
class History:
    """What a run did, epoch by epoch and step by step."""

    records: list[dict[str, Any]] = field(default_factory=list)
    step_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    best_epoch: int = 0                 # the epoch with the best validation loss (0: no validation)
    stopped_early: bool = False

    @classmethod
    def of(cls, records: Sequence[dict[str, Any]], step_losses: Sequence[float], best_epoch: int = 0,
           stopped_early: bool = False) -> History:
        return cls([dict(r) for r in records], np.asarray(step_losses, dtype=np.float64), best_epoch, stopped_early)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, column: str) -> np.ndarray:
        """One column over the epochs; NaN where an epoch has no value, as for val_acc before the
        first validation (a known column is all NaN rather than missing)."""
        if column not in self.columns() and (column not in COLUMNS or column in ("epoch", "step")):
            raise KeyError(f"no column {column!r} in this history (it has {', '.join(self.columns())})")
        kind = np.int64 if column in ("epoch", "step") else np.float64
        values = [r.get(column) for r in self.records]
        if kind is np.int64:
            return np.array(values, dtype=np.int64)
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    def columns(self) -> list[str]:
        seen = {k for r in self.records for k in r}
        return [c for c in COLUMNS if c in seen] + sorted(seen - set(COLUMNS))

    def as_dict(self) -> dict[str, np.ndarray]:
        """Every column as an array over the epochs, and ``step_loss`` over the steps."""
        return {**{c: self[c] for c in self.columns()}, "step_loss": self.step_loss.copy()}
