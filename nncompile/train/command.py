"""The whole of ``nncompile train``: load and split the data, check the model, train it,
evaluate it and write the run directory (what :func:`run` does, and :class:`RunReport` tells).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import NNError
from ..health import Health
from .checkpoint import (
    TrainState,
    load_checkpoint,
    write_npz,
    write_text,
)
from .data import (
    Normalizer,
    bind,
    load_source,
    mapping_for,
    parse_mapping,
    split,
)
from .plots import plot_curves
from .runfiles import PREDICT_FILE, README, write_run_files
from .trainer import (
    GradCheck,
    Log,
    LossCheck,
    Metrics,
    OverfitResult,
    TrainConfig,
    Trainer,
)

if TYPE_CHECKING:
    from .distributed import World

@dataclass
class RunReport:
    """What a run did: the numbers a user (or a test) wants at the end."""

    ok: bool
    run_dir: Path | None
    train_examples: int = 0
    val_examples: int = 0
    test_examples: int = 0
    epochs: int = 0
    best_epoch: int = 0
    stopped_early: bool = False
    val: Metrics | None = None
    test: Metrics | None = None
    loss_check: LossCheck | None = None
    grad_check: GradCheck | None = None
    overfit: OverfitResult | None = None
    health: Health | None = None   # the kept params' gradient health (nncompile/health.py)
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)


def run(model: str | Path, *, data: str = "digits", mapping: dict[str, str] | str | None = None,
        test_data: str | None = None, config: TrainConfig | None = None, out: str | Path | None = None,
        resume: bool = False, overfit: int | None = None, grad_check: bool = False, log: Log | None = None,
        progress: bool = False, on_step: Callable[[TrainState], None] | None = None,
        on_epoch: Callable[[TrainState, dict[str, Any]], None] | None = None,
        world: World | None = None) -> RunReport:
    """Load, split, check, train, evaluate and write RUN_DIR: the whole of ``nncompile train``.

    RUN_DIR (``out``, default runs/MODEL_STEM) receives config.json, model.py (the compiled
    module), checkpoint.npz (resumable state after the last epoch), metrics.jsonl,
    params.npz (the params evaluated on the test split: the best by validation loss),
    curves.png and summary.json, and what makes it self-describing: model.nn, predict.json and a
    README.txt on predicting with numpy alone (nncompile/train/runfiles.py). ``overfit`` and
    ``grad_check`` run the sanity checks.

    With ``world`` (nncompile/train/distributed.py) this process is one of several workers
    training the model together: rank 0 alone reads the checkpoint, writes the run directory
    and says what happens; the others return once the training is done.
    """
    started = perf_counter()
    say: Log = log or (lambda line: None)
    config = config if config is not None else TrainConfig()
    writes = world is None or world.root
    if world is not None:
        say, progress = world.say(say), progress and writes
        if overfit is not None:
            raise NNError("--overfit is a check on one process: run it without mpiexec or --workers")
        if config.backend == "cupy":
            from .distributed import use_device

            use_device(world)
    trainer = Trainer(model, config, log=say, progress=progress)
    if world is not None:
        from .distributed import DataParallel

        trainer.parallel = DataParallel(trainer, world, timeout=world.timeout)
    module = trainer.module
    if isinstance(mapping, str):
        mapping = parse_mapping([mapping])
    raw = load_source(data)
    dataset = bind(raw, module, mapping)
    test_split = config.test_split
    if test_data is not None:
        if test_split:
            raise NNError("give either --test-data or --test-split, not both")
        test_raw = load_source(test_data)
        test = bind(test_raw, module, mapping_for(test_raw, mapping, raw.csv))
        pool = dataset
    else:
        pool, test = split(dataset, raw.default_test_split if test_split is None else test_split, salt=1)
    train, val = split(pool, config.val_split, salt=2)
    normalizer = Normalizer.fit(config.normalize or raw.default_normalize, train, keep=trainer.objective.target_inputs)
    train, val, test = (normalizer.apply(part) for part in (train, val, test))
    say(f"data: {raw.source}: {len(train)} training, {len(val)} validation, {len(test)} test examples"
        + ("" if normalizer.method == "none" else f"; inputs normalised ({normalizer.method}, training statistics)"))
    report = RunReport(ok=True, run_dir=None, train_examples=len(train), val_examples=len(val),
                       test_examples=len(test))

    if overfit is not None:
        report.overfit = trainer.overfit(train, overfit)
        say(report.overfit.show())
        report.ok = report.overfit.reached
        report.seconds = perf_counter() - started
        return report

    run_dir = Path(out) if out is not None else Path("runs") / Path(model).stem
    report.run_dir = run_dir
    fingerprint = _fingerprint(trainer, data, mapping, test_data, test_split, len(train), normalizer.method)
    state: TrainState | None = None
    error: NNError | None = None
    if resume and not writes:
        pass   # rank 0 reads the checkpoint and sends the state
    elif resume:
        try:
            state = _resumed(trainer, run_dir, fingerprint, config, say)
        except NNError as exc:
            if world is None:
                raise
            error = exc   # raised on every worker alike
        else:
            _rewrite_metrics(run_dir / "metrics.jsonl", state.history)
            _record_settings(run_dir / "config.json", _settings(model, data, mapping, test_data, config))
    else:
        state = trainer.init_state()
        report.loss_check = trainer.initial_loss_check(state.params, train, state.model_state)
        if report.loss_check is not None:
            say("sanity: " + report.loss_check.show())
        if grad_check:
            report.grad_check = trainer.gradient_check(state.params, train)
            say("sanity: " + report.grad_check.show())
            if not report.grad_check.ok:
                report.ok = False
                report.seconds = perf_counter() - started
                return report
        if writes:
            _start_run_dir(trainer, run_dir, {"model": str(model), **fingerprint, "settings": _settings(
                model, data, mapping, test_data, config)}, normalizer)
    if world is not None:
        state = world.share(state, error, trainer)
    assert state is not None

    state = trainer.train(train, val, state=state, run_dir=run_dir if writes else None, fingerprint=fingerprint,
                          on_step=on_step, on_epoch=on_epoch)
    if world is not None:
        if not world.same(state.params):
            say("warning: the workers' params differ after training: their all-reduce did not give every "
                "worker the same sum; the run directory holds rank 0's")
        world.finished = True
        if not writes:
            report.epochs, report.best_epoch, report.stopped_early = state.epoch, state.best_epoch, state.stopped_early
            return report
    if state.best_params is not None:
        final, final_state = state.best_params, state.best_model_state
        chosen = f"the best validation loss (epoch {state.best_epoch})"
    else:
        final, final_state = state.params, state.model_state
        chosen = f"the last epoch ({state.epoch})"
    write_npz(run_dir / "params.npz", final)
    if final_state is not None:
        write_npz(run_dir / "state.npz", final_state)
    report.epochs, report.best_epoch, report.stopped_early = state.epoch, state.best_epoch, state.stopped_early
    if len(val):
        report.val = trainer.evaluate(final, val, final_state)
    if len(test):
        report.test = trainer.evaluate(final, test, final_state)
        say(f"test: {report.test.show()}, with the params of {chosen}")
    elif test_split:
        say(f"no test examples: one example is too few to split; kept the params of {chosen}")
    else:
        say(f"no test split (use --test-split or --test-data); kept the params of {chosen}")
    files = ["config.json", "model.py", "checkpoint.npz", "metrics.jsonl", "params.npz"]
    files += write_run_files(run_dir, module, Path(model), scores=trainer.scores, labels=trainer.labels,
                             kind=trainer.objective.kind or ("classes" if trainer.scores else None),
                             normalized=normalizer.mean, has_state=final_state is not None,
                             loss_op=trainer.eval_loss_op())
    if final_state is not None:
        files.append("state.npz")
    if normalizer.mean:
        files.append("normalization.npz")
    if plot_curves(state.history, run_dir / "curves.png", title=f"{Path(model).name} on {raw.source}",
                   best_epoch=state.best_epoch or None, step_losses=state.step_losses):
        files.append("curves.png")
    else:
        say("matplotlib is not installed, so no curves.png (pip install 'nncompile[train]')")
    monitor = trainer.health_monitor(train)   # once the run's files are written: a last look at its params
    health = None if monitor is None else monitor.measure(final, final_state, state.opt, trainer.config.lr)
    report.health = health
    if health is not None:
        say(f"health of the kept params on {monitor.examples} training examples: {health.summary()} "
            f"(the table: nncompile diagnose {run_dir})")
    report.seconds = perf_counter() - started
    summary = {
        "model": str(model), "data": data, "normalize": normalizer.method, "epochs": state.epoch, "steps": state.step,
        "best_epoch": state.best_epoch, "stopped_early": state.stopped_early,
        "train_examples": len(train), "val_examples": len(val), "test_examples": len(test),
        "val": asdict(report.val) if report.val else None, "test": asdict(report.test) if report.test else None,
        "initial_loss_check": asdict(report.loss_check) if report.loss_check else None,
        "grad_check": asdict(report.grad_check) if report.grad_check else None,
        "health": health.record() if health is not None else None,
        "seconds": round(report.seconds, 3),
    }
    write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    report.files = [*files, "summary.json"]
    say(f"wrote {run_dir}/{{{','.join(report.files)}}} in {report.seconds:.1f}s")
    return report


def _resumed(trainer: Trainer, run_dir: Path, fingerprint: dict[str, Any], config: TrainConfig,
             say: Log) -> TrainState:
    """The state of RUN_DIR's checkpoint, once it is known to belong to this run."""
    state, saved = load_checkpoint(run_dir / "checkpoint.npz", trainer.module.SLOTS)
    state = trainer.laid_out(state, run_dir / "checkpoint.npz") if trainer.xp is np else state
    changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
    if changed:
        # The module's digest changes with the optimiser too: said alone, where nothing else explains it.
        details = "; ".join(f"{k}: was {saved.get(k)!r}, now {fingerprint.get(k)!r}"
                            for k in changed if k != "module_sha256") \
            or "the model compiles to another module: its .nn file, or a file it imports, has changed"
        raise NNError(f"cannot resume: this run's settings differ from the checkpoint's ({details})",
                      file=str(run_dir / "checkpoint.npz"))
    _check_more_epochs(state, config.epochs, say)
    within = f", {state.position} steps into epoch {state.epoch + 1}" if state.position else ""
    say(f"resuming {run_dir} after epoch {state.epoch} (step {state.step}{within})")
    return state


def _start_run_dir(trainer: Trainer, run_dir: Path, config: dict[str, Any], normalizer: Normalizer) -> None:
    """A fresh RUN_DIR: the files of an earlier run there removed, config.json and model.py written."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("checkpoint.npz", "metrics.jsonl", "params.npz", "state.npz", "normalization.npz",
                  "curves.png", "summary.json", "model.nn", PREDICT_FILE, README):
        (run_dir / stale).unlink(missing_ok=True)
    (run_dir / "metrics.jsonl").touch()
    write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    write_text(run_dir / "model.py", trainer.source)
    if normalizer.mean:
        write_npz(run_dir / "normalization.npz", normalizer.arrays())


def _fingerprint(trainer: Trainer, data: str, mapping: dict[str, str] | None, test_data: str | None,
                 test_split: float | None, train_examples: int, normalize: str) -> dict[str, Any]:
    """The settings a resumed run must share with the run it continues."""
    cfg = trainer.config
    schedule = trainer.schedule(train_examples)
    fingerprint: dict[str, Any] = {
        "module_sha256": hashlib.sha256(trainer.source.encode("utf-8")).hexdigest(),
        "data": _where(data), "map": dict(mapping or {}), "test_data": _where(test_data), "test_split": test_split,
        "val_split": cfg.val_split, "train_examples": train_examples, "normalize": normalize, "batch_size": cfg.batch_size,
        "optimizer": cfg.optimizer, "hyper": dict(cfg.hyper), "clip_norm": cfg.clip_norm, "lr": cfg.lr,
        "schedule": schedule.describe(), "seed": cfg.seed, "patience": cfg.patience, "dtype": cfg.dtype,
    }
    if schedule.depends_on_length:
        fingerprint["epochs"] = cfg.epochs
    return fingerprint


def _settings(model: str | Path, data: str, mapping: dict[str, str] | None, test_data: str | None,
              config: TrainConfig) -> dict[str, Any]:
    """What ``nncompile train --resume`` reads back: the model, the data and every setting,
    with paths made absolute so that the run continues from any folder."""
    return {"model": _where(str(model)), "data": _where(data), "map": dict(mapping or {}),
            "test_data": _where(test_data), "config": asdict(config)}


def _where(spec: str | None) -> str | None:
    """A data or model file as an absolute path (so a run resumes from any folder); 'digits' as it is."""
    return str(Path(spec).resolve()) if spec is not None and Path(spec).exists() else spec


def _record_settings(path: Path, settings: dict[str, Any]) -> None:
    """config.json with the settings of the run as resumed (more epochs, another cadence)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return   # a run that predates config.json's settings keeps what it has
    if isinstance(saved, dict):
        write_text(path, json.dumps({**saved, "settings": settings}, indent=2) + "\n")


def _check_more_epochs(state: TrainState, epochs: int, say: Log) -> None:
    """Resuming with fewer epochs than are done would silently do nothing: refuse it; say
    plainly when nothing is left to do."""
    if epochs < state.epoch:
        raise NNError(f"this run has already trained {state.epoch} epochs, more than --epochs {epochs}: give "
                      f"--epochs above {state.epoch} to train on (the trained params are in params.npz)")
    if state.stopped_early:
        say(f"the run stopped early after epoch {state.epoch}: nothing more to train")
    elif epochs == state.epoch and not state.position:
        say(f"the run has already trained all {epochs} epochs: nothing more to train; give --epochs above "
            f"{epochs} to go on")


def _rewrite_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl as of the checkpoint: drops lines of an epoch that was cut short."""
    write_text(path, "".join(json.dumps(record) + "\n" for record in history))
