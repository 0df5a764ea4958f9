"""One sweep worker: takes trials from the shared study until it holds N finished ones.

Each trial is a run of the trainer (:func:`nncompile.train.command.run`) with the trial's
values, written to its own run directory SWEEP_DIR/trial-NNNN. The objective (by default the
validation data loss, without regularisation) after each validated epoch is reported to
Optuna, whose pruner may stop the trial there (PRUNED). A trial that raises is FAIL with its
error recorded, and the worker goes on, unless its last FAILURES_IN_A_ROW trials all failed:
then it stops (exit 1), for a space none of whose trials train never ends. A Ctrl-C or SIGTERM stops the trial under way at its next step (a second one at once), marks it FAIL,
enqueues its params again and stops the worker (exit 130); restarting the same command
continues the study.

N counts COMPLETE and PRUNED trials across all workers. A worker asks for a trial only while
fewer than N are finished or under way; should two ask at once for the last one, the trial
with the higher number is the surplus and is failed unrun (recorded as such). When the last
trials are under way elsewhere, a worker waits for them rather than leave: one may die, and
its trial (failed by the heartbeat watch, nncompile/sweep/study.py) must be run again.
"""
from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NNError
from ..train.checkpoint import write_text
from ..train.loop import Stop, deferred_interrupts
from .report import OBJECTIVES, words, write_outputs
from .settings import Model, trial_settings
from .space import Space, Value
from .study import Watch, optuna_module, retry

FAILURES_IN_A_ROW = 10   # a worker whose last this many trials all failed stops: its space does not train
POLL_SECONDS = 0.5     # how often a worker waiting for other workers' last trials looks again
PLOT_SECONDS = 30.0    # trials.png is drawn again after a trial at most this often (trials.csv after each)
SURPLUS = "nncompile:surplus"


@dataclass
class Sweep:
    """What every trial of this worker shares."""

    model: Model
    space: Space
    fixed: dict[str, Any]          # the training settings given as flags, the same for every trial
    trials: int                    # N: the study's COMPLETE and PRUNED trials, counted across workers
    out: Path
    sampler: Callable[[int], Any]  # the sampler for a trial number (seeded by it)
    stale_after: float
    objective: str = "data-loss"   # what trials are ranked by (see OBJECTIVES)
    say: Callable[[str], None] = print
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


def work(sweep: Sweep, study: Any) -> int:
    """Run trials until the study has N finished ones; returns the exit status.

    Ctrl-C and SIGTERM only ask the worker to stop (the trainer's ``deferred_interrupts``,
    which the trial's training loop shares): the trial stops at its next step, and no other
    trial starts; a second one stops it at once. A KeyboardInterrupt raised by the signal
    itself could land anywhere, and is lost where Python drops it (in an import lock's
    weakref callback, say)."""
    optuna = optuna_module()
    state = optuna.trial.TrialState
    waited, drawn, failures = False, -math.inf, 0
    with deferred_interrupts() as stop, _terminate_as_interrupt(), Watch(study, sweep.stale_after) as watch:
        while True:
            if stop.requested:
                raise KeyboardInterrupt
            trials = study.get_trials(deepcopy=False)
            done = sum(t.state in (state.COMPLETE, state.PRUNED) for t in trials)
            waiting = sum(t.state == state.WAITING for t in trials)
            running = sum(t.state == state.RUNNING for t in trials)
            if done >= sweep.trials:
                break
            if done + running >= sweep.trials and not waiting:
                if not waited:
                    sweep.say(f"waiting for the last {running} trial(s) of other workers")
                    waited = True
                time.sleep(POLL_SECONDS)
                continue
            trial = study.ask()
            watch.own(trial._trial_id)
            try:
                if _surplus(study, trial, sweep.trials):
                    study.tell(trial, state=state.FAIL)
                    continue
                why = run_trial(sweep, study, trial, stop)
            finally:
                watch.own(None)
            failures = failures + 1 if why is not None else 0
            if failures >= FAILURES_IN_A_ROW:
                write_outputs(study, sweep.space, sweep.out)
                raise NNError(f"the last {failures} trials all failed, the last one with: {why}; a space whose "
                              "trials fail cannot be swept: fix --space or the settings (trials.csv lists each "
                              "trial's error)")
            draw = time.monotonic() >= drawn + PLOT_SECONDS
            write_outputs(study, sweep.space, sweep.out, draw=draw)
            drawn = time.monotonic() if draw else drawn
    write_outputs(study, sweep.space, sweep.out)
    return 0


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler ending the job) handled as Ctrl-C is."""
    if not _main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, handler if hasattr(handler, "stop") else _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _surplus(study: Any, trial: Any, n: int) -> bool:
    """Whether ``trial`` would be one more than N: trials numbered before it already make N."""
    state = optuna_module().trial.TrialState
    live = (state.COMPLETE, state.PRUNED, state.RUNNING, state.WAITING)
    before = sum(t.state in live and t.number < trial.number for t in study.get_trials(deepcopy=False))
    if before < n:
        return False
    study._storage.set_trial_system_attr(trial._trial_id, SURPLUS, "another worker took the last trial")
    return True


def run_trial(sweep: Sweep, study: Any, trial: Any, stop: Stop | None = None) -> str | None:
    """Train one trial and tell the study how it went: returns why it failed, None where it
    did not. A Ctrl-C asked for (``stop``) while the trial was under way fails it, however far
    it had come."""
    from ..train.command import run

    optuna = optuna_module()
    state = optuna.trial.TrialState
    study.sampler = sweep.sampler(trial.number)   # seeded by the trial's number: the same trial draws the same values
    values = sweep.space.suggest(trial)
    name = f"trial-{trial.number:04d}"
    run_dir = sweep.out / name
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    trial.set_user_attr("worker", sweep.worker)
    shown = f"trial {trial.number}: " + ", ".join(f"{k}={_show(v)}" for k, v in values.items())
    lines: list[str] = []
    started = time.perf_counter()

    def on_epoch(_: Any, record: dict[str, Any]) -> None:
        value = objective(sweep.objective, record.get("val_data_loss"), record.get("val_loss"), record.get("val_acc"))
        if value is not None:
            trial.report(value, record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {record['epoch']}: validation {words(sweep.objective)} "
                                         f"{value:.4f}, worse than the median of the trials so far")

    try:
        model = sweep.model.with_values(values, sweep.out / "models" / f"{name}.nn")
        settings, config = trial_settings(sweep.fixed, values)
        report = run(model, data=settings["data"], mapping=settings["map"], test_data=settings["test_data"],
                     config=config, out=run_dir, log=lines.append, on_epoch=on_epoch)
        if stop is not None and stop.requested:   # after its training: the trial is still the one interrupted
            raise KeyboardInterrupt
    except optuna.TrialPruned as pruned:
        _tell(study, trial, state=state.PRUNED)
        sweep.say(f"{shown}: {pruned}")
        return None
    except KeyboardInterrupt:
        _interrupted(sweep, study, trial, shown)
        raise
    except Exception as exc:   # NNError: the user's; another: a bug; either way the trial fails, the sweep goes on
        if stop is not None and stop.requested:   # ... unless the user stopped it meanwhile: then as a Ctrl-C
            _interrupted(sweep, study, trial, shown)
            raise KeyboardInterrupt from exc
        return _failed(study, trial, exc.message if isinstance(exc, NNError) else f"{type(exc).__name__}: {exc}",
                       sweep.say, shown)
    finally:
        if run_dir.is_dir():
            write_text(run_dir / "train.log", "".join(line + "\n" for line in lines))
    seconds = time.perf_counter() - started
    value = objective(sweep.objective, *((report.val.data_loss, report.val.loss, report.val.acc) if report.val
                                         else (None, None, None)))
    if value is None:
        return _failed(study, trial, f"no validation {words(sweep.objective)} to rank the trial by"
                       + f" ({OBJECTIVES[sweep.objective][1]})", sweep.say, shown)
    trial.set_user_attr("val_acc", report.val.acc)
    trial.set_user_attr("epochs", report.epochs)
    trial.set_user_attr("seconds", round(seconds, 3))
    _tell(study, trial, values=value)
    acc = f", accuracy {100 * report.val.acc:.2f}%" if report.val.acc is not None else ""
    loss = f"validation {words(sweep.objective)} {value:.4f}" if sweep.objective != "error" else \
        f"validation loss {report.val.loss:.4f}" if report.val.loss is not None else "no validation loss"
    sweep.say(f"{shown}: {loss}{acc} after {report.epochs} epochs ({seconds:.1f}s)")
    return None


def objective(kind: str, data_loss: float | None, loss: float | None, acc: float | None) -> float | None:
    """The number a trial is ranked by (lower is better; see OBJECTIVES), None where the
    model has none."""
    if kind == "data-loss":
        return data_loss
    if kind == "loss":
        return loss
    return None if acc is None else 1.0 - acc



def _interrupted(sweep: Sweep, study: Any, trial: Any, shown: str) -> None:
    """A trial stopped by Ctrl-C or SIGTERM: FAIL, and its values queued again."""
    _tell(study, trial, state=optuna_module().trial.TrialState.FAIL)
    retry(study, study._storage.get_trial(trial._trial_id))
    sweep.say(f"{shown}: interrupted; its values are queued again: run the same command to continue the sweep")


def _failed(study: Any, trial: Any, why: str, say: Callable[[str], None], shown: str) -> str:
    trial.set_user_attr("error", why)
    _tell(study, trial, state=optuna_module().trial.TrialState.FAIL)
    say(f"{shown}: failed: {why}")
    return why


def _tell(study: Any, trial: Any, **outcome: Any) -> None:
    """Tell the study; a trial that a watcher already failed (this worker was silent too long,
    say suspended) keeps that verdict."""
    optuna = optuna_module()
    try:
        study.tell(trial, **outcome)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError):
        if study._storage.get_trial(trial._trial_id).state != optuna.trial.TrialState.FAIL:
            raise


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM where Ctrl-C is not deferred (SIGINT ignored, as in a background job): at once."""
    raise KeyboardInterrupt


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _show(value: Value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
