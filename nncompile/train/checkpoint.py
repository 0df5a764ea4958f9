"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is one .npz file (no pickle): the params (``param/NAME``), the optimiser's
state (``opt/SLOT/NAME``), the model's own state if it has any (running statistics,
``state/NAME``), the best params and model state so far (``best/NAME``,
``best_state/NAME``), the loss of every step so far (``steps/loss``), the order of an
epoch cut short (``epoch/order``), and a JSON ``meta`` entry with the epoch and step
counters, how far into the current epoch the run is, the states of the shuffling and
dropout generators, the early-stopping bookkeeping, the metrics history and the run's
fingerprint. A checkpoint may be taken between any two steps, so a run resumed from it
continues exactly where it stopped. It is written to a temporary
file and renamed, so an interrupted write never leaves a half checkpoint behind.
"""
from __future__ import annotations

import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import NNError
from ..files import write_atomic

FORMAT = 1


@dataclass
class TrainState:
    """The whole state of a run between two epochs."""

    params: dict[str, np.ndarray]
    opt: dict[str, Any]                      # the module's init_opt_state(): {'step': int, slot: {name: array}}
    rng: np.random.Generator                 # shuffles the training set each epoch
    noise: np.random.Generator               # draws the dropout masks
    model_state: dict[str, np.ndarray] | None = None   # the model's running statistics, if it has any
    epoch: int = 0                           # epochs completed
    best_loss: float = math.inf              # best validation loss so far
    best_epoch: int = 0                      # the epoch that reached it (0: none yet)
    best_params: dict[str, np.ndarray] | None = None
    best_model_state: dict[str, np.ndarray] | None = None
    bad_epochs: int = 0                      # epochs since the last improvement
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)   # the training loss of every step so far
    position: int = 0                        # batches done of the epoch under way (0: at an epoch's start)
    order: np.ndarray | None = None          # that epoch's order of the examples (None: not shuffled)
    partial: tuple[float, int] = (0.0, 0)    # its loss summed over the examples so far, and their hits

    @property
    def step(self) -> int:
        """Optimiser steps taken (the schedule's clock)."""
        return int(self.opt["step"])


def save_checkpoint(path: Path, state: TrainState, fingerprint: dict[str, Any], history: str | None = None) -> None:
    """Write ``state`` to ``path``. ``history``, where given, is ``state.history`` already
    written as JSON lines (metrics.jsonl's text): stored as it is, it is not encoded again."""
    arrays: dict[str, np.ndarray] = {f"param/{k}": v for k, v in state.params.items()}
    for slot, value in state.opt.items():
        if isinstance(value, dict):
            arrays.update({f"opt/{slot}/{k}": v for k, v in value.items()})
    for prefix, group in (("state/", state.model_state), ("best/", state.best_params),
                          ("best_state/", state.best_model_state)):
        arrays.update({prefix + k: v for k, v in (group or {}).items()})
    arrays["steps/loss"] = np.array(state.step_losses, dtype=np.float64)
    if state.position and state.order is not None:
        arrays["epoch/order"] = state.order
    meta = {
        "format": FORMAT,
        "epoch": state.epoch,
        "step": state.step,
        "rng": state.rng.bit_generator.state,
        "noise": state.noise.bit_generator.state,
        "best_loss": state.best_loss if math.isfinite(state.best_loss) else None,
        "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs,
        "stopped_early": state.stopped_early,
        "history": state.history if history is None else None,
        "position": state.position,
        "partial": list(state.partial),
        "fingerprint": fingerprint,
    }
    if history is not None:
        arrays["history"] = np.frombuffer(history.encode("utf-8"), dtype=np.uint8)
    arrays["meta"] = np.array(json.dumps(meta))
    write_npz(path, arrays)


def load_checkpoint(path: Path, slots: tuple[str, ...]) -> tuple[TrainState, dict[str, Any]]:
    """The state saved at ``path`` and the fingerprint of the run that saved it."""
    if not path.exists():
        raise NNError(f"there is no checkpoint to resume from in {path.parent} (expected {path.name}); "
                      "run without --resume to start a new run")
    entries = read_npz(path)
    try:
        meta = json.loads(str(entries.pop("meta")))
        if meta.get("format") != FORMAT:
            raise NNError(f"the checkpoint has format {meta.get('format')!r}; this nncompile reads format {FORMAT}",
                          file=str(path))
        return _state(entries, meta, slots), dict(meta["fingerprint"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:   # a damaged or foreign meta entry
        raise NNError(f"cannot read the checkpoint ({type(exc).__name__}: {exc}): it is damaged, or was not "
                      "written by nncompile train", file=str(path)) from None


def _state(entries: dict[str, np.ndarray], meta: dict[str, Any], slots: tuple[str, ...]) -> TrainState:
    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in entries.items() if k.startswith(prefix)}

    opt: dict[str, Any] = {"step": int(meta["step"])}
    for slot in slots:
        opt[slot] = group(f"opt/{slot}/")
    state = TrainState(
        params=group("param/"), opt=opt, rng=_generator(meta["rng"]), noise=_generator(meta["noise"]),
        model_state=group("state/") or None, epoch=int(meta["epoch"]),
        best_loss=math.inf if meta["best_loss"] is None else float(meta["best_loss"]),
        best_epoch=int(meta["best_epoch"]), best_params=group("best/") or None,
        best_model_state=group("best_state/") or None, bad_epochs=int(meta["bad_epochs"]),
        stopped_early=bool(meta["stopped_early"]),
        history=list(meta["history"]) if meta["history"] is not None else
        [json.loads(line) for line in entries["history"].tobytes().decode("utf-8").splitlines()],
        step_losses=entries["steps/loss"].tolist() if "steps/loss" in entries else [], position=int(meta.get("position", 0)),
        order=entries.get("epoch/order"), partial=(float(meta.get("partial", (0.0, 0))[0]),
                                                   int(meta.get("partial", (0.0, 0))[1])))
    return state


def _generator(saved: dict[str, Any]) -> np.random.Generator:
    """A PCG64 generator in exactly the saved state."""
    generator = np.random.Generator(np.random.PCG64())
    generator.bit_generator.state = saved
    return generator


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, by name, or an NNError for a damaged one: a corrupted
    member, a pickle, or a header that claims more data than its member holds (np.load would
    first try to allocate all of it: a billion rows is a MemoryError, not a message)."""
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".npy"):
                    name = info.filename[:-len(".npy")]
                    with archive.open(info) as member:
                        _check_npy_header(member, info.file_size, name)
                    with archive.open(info) as member:
                        arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        raise NNError(f"not a readable .npz file: {exc}", file=str(path)) from None
    except MemoryError:
        raise NNError("the arrays of this .npz file do not fit in memory", file=str(path)) from None
    return arrays


def _check_npy_header(member: Any, size: int, name: str) -> None:
    """Refuse an array whose header promises more bytes than the member has, or objects."""
    version = np.lib.format.read_magic(member)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(member)
    if dtype.hasobject:
        raise ValueError(f"array {name!r} holds Python objects, and object arrays (pickles) are never "
                         "loaded: save plain numeric arrays instead")
    needed = math.prod(shape) * dtype.itemsize
    if needed > size - member.tell():
        raise ValueError(f"array {name!r} claims shape {list(shape)} ({needed:,} bytes), but its member holds "
                         f"{size - member.tell():,} bytes: the file is damaged")


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez, atomically and durably: a power cut leaves the old file or the new one."""
    arrays = {k: v.get() if hasattr(v, "__cuda_array_interface__") else v for k, v in arrays.items()}  # GPU -> host
    write_atomic(path, lambda handle: np.savez(handle, **arrays), durable=True)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, text)
