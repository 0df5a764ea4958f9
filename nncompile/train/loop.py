"""The epoch loop: the only code that runs between two calls of the compiled ``step``.

It must cost next to nothing, even for a small model trained full-batch, where one step
takes tens of microseconds. So per step it only reads the loss, counts hits, and asks a
clock whether a checkpoint is due; everything slow happens on a schedule
(:mod:`nncompile.train.cadence`): checkpoints and metrics lines (``checkpoint_every``), log
lines (``log_every``), validation (``val_every`` epochs, by default as often as keeps it a
small share of the steps), and the progress bar (a few times a second). A single batch that
covers the training set is not reshuffled (its order changes nothing but rounding), so a
full-batch epoch copies no data.

A checkpoint can be taken between any two steps. Ctrl-C (SIGINT) is deferred to the end of
the step under way, a checkpoint of that exact point is written, and only then is
``KeyboardInterrupt`` raised; a second Ctrl-C interrupts at once (the last checkpoint
stands). Any other exception raised between steps (by ``on_step``) also leaves a checkpoint
of the point it was raised at. Resuming continues in the middle of the epoch, so an
interrupted and resumed run is bit for bit the run that was never interrupted.
"""
from __future__ import annotations

import json
import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import NNError
from .cadence import Cadence
from .checkpoint import TrainState, save_checkpoint
from .data import Dataset

if TYPE_CHECKING:
    from .trainer import Trainer

VAL_STEPS = 20           # by default, validate once at least this many steps have passed
PROGRESS_SECONDS = 0.2   # the progress bar's refresh interval

OnStep = Callable[[TrainState], None]
OnEpoch = Callable[[TrainState, dict[str, Any]], None]   # after each epoch, with its record (val_loss where validated)


@dataclass
class Stop:
    """``requested`` is set by a deferred Ctrl-C: the loop stops at the next step boundary.
    ``mid_step`` is true while ``step`` runs: the params are half updated, nothing to save."""

    requested: bool = False
    mid_step: bool = False


@contextmanager
def deferred_interrupts() -> Iterator[Stop]:
    """Turn the first SIGINT into a request the loop honours between steps (main thread only;
    elsewhere Python delivers no signals anyway). Inside another ``deferred_interrupts`` (a
    sweep's, around its trials) the request is the outer one's."""
    current = signal.getsignal(signal.SIGINT)
    outer = getattr(current, "stop", None)
    if isinstance(outer, Stop):
        outer.mid_step = False
        yield outer
        return
    stop = Stop()
    if threading.current_thread() is not threading.main_thread() or current is not signal.default_int_handler:
        yield stop      # a caller with its own SIGINT handler keeps it
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.requested:   # the second Ctrl-C: now
            raise KeyboardInterrupt
        stop.requested = True

    handler.stop = stop   # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class RunBook:
    """The run directory's checkpoint.npz and metrics.jsonl, written together, so that
    metrics.jsonl always lists the epochs of the checkpoint beside it."""

    def __init__(self, run_dir: Path | None, fingerprint: dict[str, Any] | None, state: TrainState):
        self.run_dir, self.fingerprint = run_dir, fingerprint or {}
        self.lines = [_json_lines(state.history)] if state.history else []   # metrics.jsonl's text, in parts
        self.written = len(state.history)   # records already in metrics.jsonl
        self.saved_at = (state.step, state.epoch) if run_dir is not None else None

    def save(self, state: TrainState) -> float:
        """Write both, unless this very point is saved already; returns the seconds it took.
        Each record is encoded once, for metrics.jsonl and every later checkpoint alike."""
        if self.run_dir is None or self.saved_at == (state.step, state.epoch):
            return 0.0
        started = perf_counter()
        new = _json_lines(state.history[self.written:]) if len(state.history) > self.written else ""
        if new:
            self.lines.append(new)
        save_checkpoint(self.run_dir / "checkpoint.npz", state, self.fingerprint, "".join(self.lines))
        if new:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(new)
            self.written = len(state.history)
        self.saved_at = (state.step, state.epoch)
        return perf_counter() - started


def _json_lines(records: list[dict[str, Any]]) -> str:
    """One JSON object per line. A record holds numbers and None only, so the list is dumped
    at once (twice as fast as a dump per record) and cut at the records' boundaries."""
    return json.dumps(records)[1:-1].replace("}, {", "}\n{") + "\n" if records else ""


def val_every(trainer: Trainer, examples: int) -> int:
    """Validate every this many epochs: the config's, or enough epochs for VAL_STEPS steps."""
    if trainer.config.val_every is not None:
        return trainer.config.val_every
    return max(1, math.ceil(VAL_STEPS / trainer.steps_per_epoch(examples)))


def validated(trainer: Trainer, epoch: int, every: int, epochs: int | None) -> bool:
    """Whether the run validates after ``epoch`` (1-based) of ``epochs``: every ``every`` epochs,
    and the last one too unless --val-every is set, so that the params a run ends with can be kept."""
    return epoch % every == 0 or (epochs is not None and epoch >= epochs and trainer.config.val_every is None)


def train_epochs(trainer: Trainer, train: Dataset, val: Dataset | None, state: TrainState, epochs: int, *,
                 run_dir: Path | None = None, fingerprint: dict[str, Any] | None = None,
                 on_step: OnStep | None = None, on_epoch: OnEpoch | None = None) -> TrainState:
    """Train ``state`` until ``epochs`` epochs are done or early stopping fires. ``on_epoch``
    runs at each epoch's end, once its checkpoint is due or written: an exception it raises
    (a sweep pruning the trial) stops the run like an interrupt, resumable from that epoch."""
    cfg = trainer.config
    schedule = trainer.schedule(len(train), epochs)
    val = val if val is not None and len(val) else None
    every = val_every(trainer, len(train))
    patience = cfg.patience or None
    checkpoints, lines = Cadence.parse(cfg.checkpoint_every, "--checkpoint-every"), \
        Cadence.parse(cfg.log_every, "--log-every")
    checkpoints.start()
    lines.start()
    book = RunBook(run_dir, fingerprint, state)
    bar = _Bar(trainer, state, len(train), epochs) if trainer.progress else None
    monitor = trainer.health_monitor(train)   # gradient health, on a small share of the run's time
    try:
        with deferred_interrupts() as stop, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            runner = Epochs(trainer, train, schedule, epochs, on_step=on_step, stop=stop, checkpoints=checkpoints,
                            book=book, bar=bar)
            try:
                history, started = state.history, perf_counter()
                while state.epoch < epochs and not state.stopped_early:
                    lr = schedule(state.step - state.position)   # the rate at the epoch's first step
                    loss, acc = runner.run(state)
                    epoch = state.epoch + 1
                    record: dict[str, Any] = {"epoch": epoch, "step": state.step, "lr": lr, "loss": loss, "acc": acc}
                    stop.mid_step = True   # an epoch half closed is no point to resume from
                    if val is not None and validated(trainer, epoch, every, epochs):
                        _validate(trainer, state, val, record, epoch, patience)
                    ended = perf_counter()
                    record["seconds"], started = round(ended - started, 4), ended
                    last = epoch >= epochs or state.stopped_early
                    logged = epoch == 1 or last or lines.due_after(epoch)
                    note = ""
                    if logged and monitor is not None and monitor.due():   # into the record, and a word if off
                        health = monitor.measure(state.params, state.model_state, state.opt, trainer.config.lr)
                        record.update(health.record())
                        note = health.note()
                    history.append(record)
                    state.epoch, state.position, state.order, state.partial = epoch, 0, None, (0.0, 0)
                    stop.mid_step = False
                    if checkpoints.due_after(epoch):
                        checkpoints.done(book.save(state))
                    if logged:
                        trainer.log(_epoch_line(record, epochs) + note)
                        lines.done()
                    if on_epoch is not None:
                        on_epoch(state, record)
                    if stop.requested:
                        raise KeyboardInterrupt
            except NNError:
                raise   # training diverged: the last checkpoint stands, this point is worth nothing
            except BaseException:
                if not stop.mid_step:
                    book.save(state)   # a step boundary: resumable exactly from here
                raise
    finally:
        if bar is not None:
            bar.close()
    book.save(state)
    if state.stopped_early:
        trainer.log(f"early stopping: no better validation loss for {patience} validations; the best was "
                    f"{state.best_loss:.4f} at epoch {state.best_epoch}")
    return state


def _validate(trainer: Trainer, state: TrainState, val: Dataset, record: dict[str, Any], epoch: int,
              patience: int | None) -> None:
    """Measure ``val``, keep the best params, count validations without improvement."""
    evaluate = trainer.evaluate if trainer.parallel is None else trainer.parallel.evaluate   # shared out: distributed.py
    measured = evaluate(state.params, val, state.model_state)
    record.update(val_loss=measured.loss, val_acc=measured.acc)
    if measured.data_loss is not None:   # without regularisation: what a sweep ranks by
        record["val_data_loss"] = measured.data_loss
    if measured.loss is None:
        return
    if not math.isfinite(measured.loss):
        raise NNError(f"the validation loss is {measured.loss} after epoch {epoch}: training diverged; "
                      "try a smaller --lr or --clip-norm")
    if measured.loss < state.best_loss:
        state.best_loss, state.best_epoch, state.bad_epochs = measured.loss, epoch, 0
        state.best_params = {k: v.copy() for k, v in state.params.items()}
        state.best_model_state = None if state.model_state is None else \
            {k: v.copy() for k, v in state.model_state.items()}
    else:
        state.bad_epochs += 1
        if patience is not None and state.bad_epochs >= patience:
            state.stopped_early = True


class Epochs:
    """Runs epochs over one dataset: everything that does not change from one epoch to the
    next is looked up once, here, not in the loop."""

    def __init__(self, trainer: Trainer, data: Dataset, schedule: Callable[[int], float],
                 epochs: int | None = None, *,
                 on_step: OnStep | None = None, stop: Stop | None = None, checkpoints: Cadence | None = None,
                 book: RunBook | None = None, bar: _Bar | None = None):
        self.trainer, self.data, self.schedule, self.on_step = trainer, data, schedule, on_step
        self.stop = stop if stop is not None else Stop()
        self.bar = bar
        self.n = len(data)
        self.size = min(trainer.config.batch_size, self.n)
        self.steps = math.ceil(self.n / self.size)
        # A timed checkpoint may fall due within an epoch; a one-step epoch asks at its end anyway.
        self.book = book if checkpoints is not None and checkpoints.timed and self.steps > 1 else None
        self.checkpoints = checkpoints
        self.whole = trainer.device_arrays(data) if self.steps == 1 else None   # one batch: the set as it is
        parallel = trainer.parallel   # several workers: each step is theirs (nncompile/train/distributed.py)
        self.count = trainer.hit_counter() if parallel is None else parallel.hit_counter()
        self.every, self.epochs = val_every(trainer, self.n), epochs
        self.sizes = [min(self.n, (b + 1) * self.size) - b * self.size for b in range(self.steps)]
        # What each step needs, looked up once; on the CPU the run's generator is passed as it is.
        self.call = (trainer.module.step if parallel is None else parallel.step_function(self.stop),
                     trainer.loss, trainer.has_state,
                     None if trainer.xp is np else trainer.generator, trainer.scores or "", trainer.labels or "")

    def run(self, state: TrainState) -> tuple[float, float | None]:
        """One pass over the data (the rest of it, for an epoch resumed in its middle); the
        mean batch loss and accuracy over the whole epoch. The caller silences numpy's
        overflow warnings: a diverging run is reported as an error with advice."""
        trainer, n, size, steps, stop = self.trainer, self.n, self.size, self.steps, self.stop
        # Accuracy costs an argmax a step: it is counted in the epochs that are validated.
        hits = self.count if validated(trainer, state.epoch + 1, self.every, self.epochs) else None
        if self.whole is not None:
            arrays = self.whole
        else:
            if state.position == 0 or state.order is None:
                state.order = state.rng.permutation(n)
            # One shuffled copy of the data per epoch, moved to the device once; batches are slices.
            arrays = {k: trainer.xp.asarray(v[state.order]) for k, v in self.data.arrays.items()}
        step, loss_name, has_state, generator, scores, labels = self.call
        schedule, on_step, bar, book, losses, sizes = \
            self.schedule, self.on_step, self.bar, self.book, state.step_losses, self.sizes
        total, correct = state.partial
        for b in range(state.position, steps):
            batch = arrays if steps == 1 else {k: v[b * size:(b + 1) * size] for k, v in arrays.items()}
            stop.mid_step = True   # params are half updated until step returns
            outputs = step(state.params, state.opt, schedule(state.step), state.model_state,
                           state.noise if generator is None else generator(state.noise), **batch)
            if has_state:
                outputs, state.model_state = outputs
            stop.mid_step = False
            loss = float(outputs[loss_name])
            if not math.isfinite(loss):
                raise NNError(f"the training loss became {loss} at step {state.step}: training diverged; "
                              "try a smaller --lr or --clip-norm")
            losses.append(loss)
            total += loss * sizes[b]
            if hits is not None:
                correct += hits(outputs[scores], batch[labels])
            state.position, state.partial = b + 1, (total, correct)
            if bar is not None:
                bar.update(state)
            if stop.requested:
                raise KeyboardInterrupt
            if on_step is not None:
                on_step(state)
            if book is not None and self.checkpoints.due_now():   # type: ignore[union-attr]
                self.checkpoints.done(book.save(state))   # type: ignore[union-attr]
        return total / n, (correct / n if hits is not None else None)


def run_epoch(trainer: Trainer, state: TrainState, data: Dataset, schedule: Callable[[int], float]) -> None:
    """One epoch, as the overfit check runs them: no checkpoints, no interrupts, no position kept."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        Epochs(trainer, data, schedule).run(state)
    state.position, state.order, state.partial = 0, None, (0.0, 0)


class _Bar:
    """One tqdm bar for the whole run on stderr, counting steps, refreshed a few times a second
    (None-like where tqdm is not installed)."""

    def __init__(self, trainer: Trainer, state: TrainState, examples: int, epochs: int):
        self.epochs, self.examples, self.next = epochs, examples, 0.0
        self.per_epoch = trainer.steps_per_epoch(examples)
        self.size = min(trainer.config.batch_size, max(1, examples))
        self.classify = trainer.hit_counter() is not None
        self.every, self.trainer = val_every(trainer, examples), trainer
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped]
        except ImportError:
            self.bar = None
            return
        self.first = state.epoch * self.per_epoch + state.position
        self.bar = tqdm(total=epochs * self.per_epoch, initial=self.first, unit="step", leave=False,
                        dynamic_ncols=True)

    def update(self, state: TrainState) -> None:
        if self.bar is None or perf_counter() < self.next:
            return
        self.next = perf_counter() + PROGRESS_SECONDS
        seen = min(self.examples, state.position * self.size) or 1
        total, correct = state.partial
        counted = self.classify and validated(self.trainer, state.epoch + 1, self.every, self.epochs)
        acc = f" acc {100 * correct / seen:.1f}%" if counted else ""
        self.bar.set_description_str(f"epoch {state.epoch + 1}/{self.epochs}", refresh=False)
        self.bar.set_postfix_str(f"loss {total / seen:.4f}{acc}", refresh=False)
        self.bar.update(state.epoch * self.per_epoch + state.position - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    def part(prefix: str) -> str:
        loss, acc = record.get(prefix + "loss"), record.get(prefix + "acc")
        return (f"loss {loss:.4f}" if loss is not None else "loss -") + (f" acc {100 * acc:5.1f}%" if acc is not None else "")

    line = f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  train {part('')}"
    if "val_loss" in record:
        line += f"  | val {part('val_')}"
    return line + f"  | lr {record['lr']:.2e}  {record['seconds']:.2f}s"
