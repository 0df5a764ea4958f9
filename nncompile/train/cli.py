"""``nncompile train``: the command-line face of :func:`nncompile.train.trainer.run`.

nncompile/cli.py calls :func:`add_train_parser` to register the verb; the parser's ``run``
default is :func:`run_train`, which returns the exit status: 0 on success, 1 for a user
error (printed as ``nncompile: error: ...``, never a traceback) or a failed sanity check, 130
when interrupted (the last finished epoch is checkpointed; ``--resume`` continues it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..backends import BACKENDS
from ..compiler import DTYPES
from ..errors import NNError
from ..optim import OPTIMIZERS
from .data import NORMALIZE
from .schedules import NAMES as SCHEDULES

OVERFIT_EPOCHS = 200     # --overfit without --epochs: long enough to memorise a handful of examples
HYPER_FLAGS = ("momentum", "beta1", "beta2", "eps", "decay_rate", "weight_decay")


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``train`` on the top-level parser's subparsers."""
    p = subparsers.add_parser(
        "train", help="train the model on a dataset with a compiled optimiser",
        description="Train MODEL.nn with mini-batch gradient descent. The optimiser is compiled into the "
                    "model's module; checkpoints, metrics, curves and the trained params go to RUN_DIR.",
        epilog="example: nncompile train examples/digits_mlp.nn --data digits")
    p.add_argument("model", metavar="MODEL.nn")

    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", metavar="digits|FILE",
                   help="'digits' (scikit-learn's bundled 8x8 digits), or a .npz or .csv file (default: digits)")
    g.add_argument("--map", action="append", metavar="INPUT=ARRAY[,...]",
                   help="feed a model input from a named array (npz) or column (csv; INPUT=FIRST:LAST for a "
                        "range); by default inputs take the arrays of the same name")
    g.add_argument("--test-data", metavar="FILE", help="a separate test set, mapped like --data")
    g.add_argument("--val-split", type=float, default=0.1, metavar="F",
                   help="fraction of the training data held out for validation (default: 0.1)")
    g.add_argument("--test-split", type=float, default=None, metavar="F",
                   help="fraction held out for the final test (default: 0.2 for digits, 0 for files)")
    g.add_argument("--normalize", choices=NORMALIZE, default=None,
                   help="normalise float inputs with training-split statistics (default: image for digits, "
                        "none for files)")

    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=None,
                   help=f"passes over the training data (default: 50; {OVERFIT_EPOCHS} with --overfit)")
    g.add_argument("--batch-size", type=int, default=64, metavar="B", help="examples per step (default: 64)")
    g.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adam", help="(default: adam)")
    g.add_argument("--lr", type=float, default=1e-3, help="base learning rate (default: 1e-3)")
    g.add_argument("--schedule", default="constant", metavar="NAME[:K=V,...]",
                   help=f"learning-rate schedule: {', '.join(SCHEDULES)}, e.g. step:every=10,gamma=0.5 "
                        "(default: constant)")
    g.add_argument("--seed", type=seed, default=0,
                   help="seed for the initial params, the shuffling and dropout (default: 0)")
    g.add_argument("--patience", type=int, default=10,
                   help="stop after this many epochs without a better validation loss; 0 never stops (default: 10)")
    g.add_argument("--clip-norm", type=float, default=None, metavar="C",
                   help="clip the gradients to a global norm of at most C")
    g.add_argument("--momentum", type=float, help="momentum, nesterov (default: 0.9)")
    g.add_argument("--beta1", type=float, help="adam, adamw (default: 0.9)")
    g.add_argument("--beta2", type=float, help="adam, adamw (default: 0.999)")
    g.add_argument("--eps", type=float, help="adagrad, rmsprop, adam, adamw (default: 1e-8)")
    g.add_argument("--decay-rate", type=float, help="rmsprop (default: 0.99)")
    g.add_argument("--weight-decay", type=float, help="adamw, decoupled (default: 0.01)")
    g.add_argument("--backend", choices=tuple(BACKENDS), default="numpy",
                   help="numpy (CPU) or cupy (NVIDIA GPU: the data goes to the device once per epoch)")
    g.add_argument("--dtype", choices=DTYPES, default=None,
                   help="float precision (default: the file's, else float32)")

    g = p.add_argument_group("run directory")
    g.add_argument("--out", metavar="RUN_DIR", default=None, help="where the run's files go (default: runs/MODEL)")
    g.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")

    g = p.add_argument_group("sanity checks (the initial-loss check always runs)")
    g.add_argument("--overfit", type=int, metavar="N",
                   help="only train on N training examples and report whether they reach 100%% accuracy")
    g.add_argument("--grad-check", action="store_true",
                   help="check the gradients on one mini-batch with finite differences before training")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.set_defaults(run=run_train)
    return p


def run_train(args: argparse.Namespace) -> int:
    """Run ``nncompile train`` for parsed ``args``; returns the exit status."""
    from .trainer import TrainConfig, run

    run_dir = Path(args.out) if args.out is not None else Path("runs") / Path(args.model).stem
    try:  # NNError goes up to nncompile.cli.main, which reports every command's errors alike
        _check_run_dir(run_dir)
        hyper = {name: getattr(args, name) for name in HYPER_FLAGS if getattr(args, name) is not None}
        epochs = args.epochs if args.epochs is not None else (OVERFIT_EPOCHS if args.overfit is not None else 50)
        config = TrainConfig(
            epochs=epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr, hyper=hyper,
            clip_norm=args.clip_norm, schedule=args.schedule, seed=args.seed, val_split=args.val_split,
            test_split=args.test_split, patience=args.patience, normalize=args.normalize, dtype=args.dtype,
            backend=args.backend)
        progress = args.progress if args.progress is not None else sys.stderr.isatty()
        from .data import parse_mapping

        report = run(args.model, data=args.data, mapping=parse_mapping(args.map), test_data=args.test_data,
                     config=config, out=args.out, resume=args.resume, overfit=args.overfit,
                     grad_check=args.grad_check, log=lambda line: print(line, flush=True), progress=progress)
    except KeyboardInterrupt:
        print(f"interrupted: the last finished epoch is checkpointed; continue with --resume --out {run_dir}",
              file=sys.stderr)
        return 130
    return 0 if report.ok else 1


def seed(text: str) -> int:
    """The type of every ``--seed``: numpy's generators take any whole number from 0 up."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a seed is a whole number from 0 up")
    return value


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that is a file (or lies under one) before any work is done."""
    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NNError(f"cannot use {run_dir} as the run directory: {folder} is a file, not a folder; "
                              "choose another with --out")
            return
