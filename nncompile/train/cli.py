"""``nncompile train``: the command-line face of :func:`nncompile.train.command.run`.

nncompile/cli.py calls :func:`add_train_parser` to register the verb; the parser's ``run``
default is :func:`run_train`, which returns the exit status: 0 on success, 1 for a user
error (printed as ``nncompile: error: ...``, never a traceback) or a failed sanity check, 130
when interrupted (the point it stopped at is checkpointed; ``--resume`` continues it).

Every setting defaults to None here, so that ``--resume`` can tell the flags given from the
ones left out: those left out come from the run's own config.json, the others from
:data:`DEFAULTS`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backends import BACKENDS
from ..compiler import DTYPES
from ..errors import NNError
from ..optim import OPTIMIZERS
from .cadence import CHECKPOINT_EVERY, LOG_EVERY
from .data import NORMALIZE
from .schedules import NAMES as SCHEDULES

if TYPE_CHECKING:
    from .trainer import TrainConfig

OVERFIT_EPOCHS = 200     # --overfit without --epochs: long enough to memorise a handful of examples
HYPER_FLAGS = ("momentum", "beta1", "beta2", "eps", "decay_rate", "weight_decay")
DATA_SETTINGS = ("data", "map", "test_data")   # the settings that say what to train on, not how
# The settings a run takes from its flags: TrainConfig's fields and the data flags.
DEFAULTS: dict[str, Any] = {
    "data": "digits", "map": None, "test_data": None, "val_split": 0.1, "test_split": None, "normalize": None,
    "epochs": 50, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "schedule": "constant", "seed": 0,
    "patience": 10, "clip_norm": None, "backend": "numpy", "dtype": None, "val_every": None,
    "checkpoint_every": CHECKPOINT_EVERY, "log_every": LOG_EVERY, **{name: None for name in HYPER_FLAGS},
}


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the top-level parser's subparsers."""
    p = subparsers.add_parser(
        "train", help="train the model on a dataset with a compiled optimiser",
        description="Train MODEL.nn with mini-batch gradient descent. The optimiser is compiled into the "
                    "model's module; checkpoints, metrics, curves and the trained params go to RUN_DIR.",
        epilog="example: nncompile train examples/digits_mlp.nn --data digits")
    p.add_argument("model", metavar="MODEL.nn", nargs="?",
                   help="the model (with --resume: by default the run's own, from its config.json)")

    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="digits|FILE",
                   help="'digits' (scikit-learn's bundled 8x8 digits), or a .npz or .csv file (default: digits)")
    g.add_argument("--map", action="append", metavar="INPUT=ARRAY[,...]",
                   help="feed a model input from a named array (npz) or column (csv; INPUT=FIRST:LAST for a "
                        "range); by default inputs take the arrays of the same name")
    g.add_argument("--test-data", metavar="FILE", help="a separate test set, mapped like --data")
    g.add_argument("--val-split", type=float, metavar="F",
                   help="fraction of the training data held out for validation (default: 0.1)")
    g.add_argument("--test-split", type=float, metavar="F",
                   help="fraction held out for the final test (default: 0.2 for digits, 0 for files)")
    g.add_argument("--normalize", choices=NORMALIZE,
                   help="normalise float inputs with training-split statistics (default: image for digits, "
                        "none for files)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int,
                   help=f"passes over the training data, in all (default: 50; {OVERFIT_EPOCHS} with --overfit; "
                        "with --resume: the run's, or more to train on)")
    g.add_argument("--batch-size", type=int, metavar="B", help="examples per step (default: 64)")
    g.add_argument("--optimizer", choices=tuple(OPTIMIZERS), help="(default: adam)")
    g.add_argument("--lr", type=float, help="base learning rate (default: 1e-3)")
    g.add_argument("--schedule", metavar="NAME[:K=V,...]",
                   help=f"learning-rate schedule: {', '.join(SCHEDULES)}, e.g. step:every=10,gamma=0.5 "
                        "(default: constant)")
    g.add_argument("--seed", type=seed,
                   help="seed for the initial params, the shuffling and dropout (default: 0)")
    g.add_argument("--patience", type=int,
                   help="stop after this many validations without a better validation loss; 0 never stops "
                        "(default: 10)")
    g.add_argument("--val-every", type=int, metavar="K",
                   help="validate every K epochs (default: every epoch, or for epochs of fewer than 20 steps "
                        "often enough that 20 steps pass in between)")
    g.add_argument("--clip-norm", type=float, metavar="C",
                   help="clip the gradients to a global norm of at most C")
    g.add_argument("--momentum", type=float, help="momentum, nesterov (default: 0.9)")
    g.add_argument("--beta1", type=float, help="adam, adamw (default: 0.9)")
    g.add_argument("--beta2", type=float, help="adam, adamw (default: 0.999)")
    g.add_argument("--eps", type=float, help="adagrad, rmsprop, adam, adamw (default: 1e-8)")
    g.add_argument("--decay-rate", type=float, help="rmsprop (default: 0.99)")
    g.add_argument("--weight-decay", type=float, help="adamw, decoupled (default: 0.01)")
    g.add_argument("--backend", choices=tuple(BACKENDS),
                   help="numpy (CPU) or cupy (NVIDIA GPU: the data goes to the device once per epoch)")
    g.add_argument("--dtype", choices=DTYPES,
                   help="float precision (default: the file's, else float32)")

    g = p.add_argument_group("run directory")
    g.add_argument("--out", metavar="RUN_DIR", default=None, help="where the run's files go (default: runs/MODEL)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in RUN_DIR from its checkpoint, with the settings in its config.json")
    g.add_argument("--checkpoint-every", metavar="N|TIME",
                   help=f"write checkpoint.npz and metrics.jsonl every N epochs or at most every TIME (e.g. 30s, "
                        f"5m), and always at the end and on Ctrl-C (default: {CHECKPOINT_EVERY})")
    g.add_argument("--log-every", metavar="N|TIME",
                   help=f"print an epoch's line every N epochs or at most every TIME, and the first and last "
                        f"(default: {LOG_EVERY})")

    g = p.add_argument_group("sanity checks (the initial-loss check always runs)")
    g.add_argument("--overfit", type=int, metavar="N",
                   help="only train on N training examples and report whether they reach 100%% accuracy")
    g.add_argument("--grad-check", action="store_true",
                   help="check the gradients on one mini-batch with finite differences before training")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")

    g = p.add_argument_group("data-parallel training (docs/distributed.md; pip install 'nncompile[mpi]')")
    g.add_argument("--workers", type=int, metavar="K",
                   help="train over K processes on this machine: starts mpiexec -n K nncompile train ... (for "
                        "several hosts, run mpiexec yourself); the global batch is --batch-size")
    g.add_argument("--worker-timeout", type=float, metavar="SECONDS",
                   help="stop the run when a worker waits this long for the others in one step (default: 300)")
    p.set_defaults(run=run_train, train_parser=p)
    return p


def run_train(args: argparse.Namespace) -> int:
    """Run ``nncompile train`` for parsed ``args``; returns the exit status. Under mpiexec this
    process is one worker of several (nncompile/train/distributed.py); ``--workers K`` starts them."""
    from .distributed import World, launch

    world = World.detect()
    workers, timeout = getattr(args, "workers", None), getattr(args, "worker_timeout", None)
    if world is None and workers is not None and workers != 1:
        return launch(workers, _argv(args), Path(args.out) if args.out is not None else None)
    if world is None:
        return _train(args, None)
    try:
        if workers is not None and workers != world.size:
            raise NNError(f"--workers {workers}, but mpiexec started {world.size} workers: give one or the other")
        if timeout is not None:
            if not timeout > 0:
                raise NNError(f"--worker-timeout must be a positive number of seconds, not {timeout!r}")
            world.timeout = timeout
        return _train(args, world)
    except BaseException as exc:   # one worker's failure must not leave the others waiting for it
        return world.fail(exc)


def _train(args: argparse.Namespace, world: Any) -> int:
    from .command import run

    run_dir = Path(args.out) if args.out is not None else Path("runs") / Path(args.model or "").stem
    earlier = _identity(run_dir / "checkpoint.npz")   # an earlier run's, which this one may not get to replace
    try:  # NNError goes up to nncompile.cli.main, which reports every command's errors alike
        if args.model is None and not args.resume:
            raise NNError("give the model to train (MODEL.nn), or --resume --out RUN_DIR to continue a run")
        if args.model is None and args.out is None:
            raise NNError("--resume without MODEL.nn needs --out RUN_DIR: the run to continue")
        _check_run_dir(run_dir)
        saved = read_settings(run_dir) if args.resume else {}
        model = args.model if args.model is not None else saved.get("model")
        if model is None and not (run_dir / "config.json").exists():
            raise NNError(f"there is no run to resume in {run_dir} (expected config.json, which nncompile train "
                          "writes); give MODEL.nn to start a new run there")
        if model is None:
            raise NNError(f"{run_dir / 'config.json'} does not say which model the run trained: give MODEL.nn")
        given = given_settings(args)
        settings = {**DEFAULTS, **saved.get("config", {}), **{k: saved[k] for k in DATA_SETTINGS if k in saved},
                    **given}
        if args.overfit is not None and "epochs" not in given:
            settings["epochs"] = OVERFIT_EPOCHS
        config = train_config(settings, saved.get("config", {}).get("hyper", {}))
        progress = args.progress if args.progress is not None else sys.stderr.isatty()
        report = run(model, data=settings["data"], mapping=settings["map"] or None,
                     test_data=settings["test_data"], config=config, out=run_dir, resume=args.resume,
                     overfit=args.overfit, grad_check=args.grad_check, log=lambda line: print(line, flush=True),
                     progress=progress, world=world)
    except (KeyboardInterrupt, BrokenPipeError) as stop:   # Ctrl-C, or `nncompile train ... | head`
        if isinstance(stop, BrokenPipeError):   # no more output: stdout goes nowhere, so exiting flushes nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if world is not None and not world.root:
            return 130
        why = "interrupted" if isinstance(stop, KeyboardInterrupt) else "the output pipe closed, so training stopped"
        latest = _identity(run_dir / "checkpoint.npz")
        if args.overfit is not None:   # an overfit check keeps no run
            print(why, file=sys.stderr)
        elif latest is not None and (args.resume or latest != earlier):
            print(f"{why}: the run is checkpointed where it stopped; continue it with "
                  f"nncompile train --resume --out {run_dir}", file=sys.stderr)
        else:
            print(f"{why} before its first checkpoint: there is nothing to resume", file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 1
    return 0 if report.ok else 1


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings of :data:`DEFAULTS` given as flags in ``args`` (``--map`` parsed)."""
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    if "map" in given:
        from .data import parse_mapping

        given["map"] = parse_mapping(given["map"])
    return given


def train_config(settings: dict[str, Any], hyper: dict[str, float] | None = None) -> TrainConfig:
    """The TrainConfig of ``settings`` (keys of :data:`DEFAULTS`; those left out take their
    default): how ``nncompile train`` and each trial of ``nncompile sweep`` build theirs. The
    optimiser's hyperparameters given there override ``hyper`` (a resumed run's own)."""
    from .trainer import TrainConfig

    settings = {**DEFAULTS, **settings}
    given = {name: settings[name] for name in HYPER_FLAGS if settings.get(name) is not None}
    fields = {k: settings[k] for k in DEFAULTS if k not in DATA_SETTINGS and k not in HYPER_FLAGS}
    return TrainConfig(hyper={**(hyper or {}), **given}, **fields)


def _argv(args: argparse.Namespace) -> list[str]:
    """The arguments of ``nncompile train`` that give ``args`` again, less ``--workers``: what
    each worker that ``--workers`` starts is given."""
    positional: list[str] = []
    flags: list[str] = []
    for action in args.train_parser._actions:
        value = getattr(args, action.dest, None)
        if action.dest in ("help", "workers") or value is None:
            continue
        if not action.option_strings:
            positional.append(str(value))
        elif isinstance(action, argparse.BooleanOptionalAction):
            flags.append(action.option_strings[0] if value else "--no-" + action.option_strings[0][2:])
        elif action.nargs == 0:   # store_true
            flags += [action.option_strings[0]] if value else []
        else:
            flags += [f"{action.option_strings[0]}={item}" for item in (value if isinstance(value, list) else [value])]
    return [*flags, *positional]


def read_settings(run_dir: Path) -> dict[str, Any]:
    """The settings a run was started with, from its config.json ({} for a run that predates them)."""
    path = run_dir / "config.json"
    if not path.exists():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise NNError(f"cannot read the run's settings: {exc}", file=str(path)) from None
    return settings if isinstance(settings, dict) else {}


def seed(text: str) -> int:
    """The type of every ``--seed``: numpy's generators take any whole number from 0 up."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is a whole number from 0 up")
    return value


def _identity(path: Path) -> tuple[int, int] | None:
    """(inode, modification time) of a file, None where there is none: a checkpoint written
    since (renamed into place) has another."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that is a file (or lies under one) before any work is done."""
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NNError(f"cannot use {run_dir} as the run directory: {folder} is a file, not a folder; "
                              "choose another with --out")
            return
