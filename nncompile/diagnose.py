"""Gradient health on the command line: ``nncompile diagnose RUN_DIR`` (the figures of a
trained run as a table) and ``render --health``'s options. The figures themselves are
nncompile/health.py's; this module only finds the params, the batch and the optimiser step
a user means, and prints.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .errors import NNError
from .health import Health, Thresholds, check
from .monitor import plain_step, run_step
from .optim import OPTIMIZERS

DIAGNOSE_BATCH = 256   # examples diagnose measures on by default


def add_health_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options render --health and diagnose share."""
    p.add_argument("--health-thresholds", metavar="KEY=VALUE[,...]",
                   help="override health thresholds, e.g. dead_warn=0.2,update_warn_above=0.05 (docs/rendering.md)")
    p.add_argument("--lr", type=float, default=None,
                   help="the learning rate of the optimiser step whose update/weight ratios are shown "
                        "(default: a run directory's own)")


def add_render_health_options(p: argparse.ArgumentParser) -> None:
    """render's ``--health`` group."""
    g = p.add_argument_group("gradient health")
    g.add_argument("--health", action="store_true",
                   help="colour params, activations and wires by gradient health (ok, warn, bad), with a legend")
    add_health_options(g)
    g.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="sgd",
                   help="the optimiser of the --lr step for a model without a run directory (default: sgd)")


def render_health(args: argparse.Namespace, ev) -> Health | None:
    """render --health: the findings, with an optimiser step from --params RUN_DIR or --lr."""
    from .runs import load_run

    if not args.health:
        if args.lr is not None or args.health_thresholds is not None:
            raise NNError("--lr and --health-thresholds belong to --health: add --health")
        return None
    thresholds = Thresholds.parse(args.health_thresholds)
    if args.params is not None and Path(args.params).is_dir():
        step = run_step(load_run(args.params), args.lr)
    else:
        step = plain_step(args.model, args.lr, args.optimizer, args.dtype) if args.lr is not None else None
    return check(ev, step, thresholds)


def health_lines(health: Health) -> str:
    """What render says of the findings on stderr: the worst, and whether the batch was too small."""
    lines = [f"health: {health.summary()}"]
    if health.small_batch():
        lines.append(f"health: note: dead units were counted on only {health.examples} examples; use 64 or more "
                     "(--set N=64, or --data with --batch 256)")
    return "\n".join(lines)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """The health figures of a trained run on a batch of its data, as a table."""
    from .evaluate import evaluate_file
    from .runs import examples, load_run, read_data
    from .train.data import parse_mapping

    thresholds = Thresholds.parse(args.health_thresholds)
    if args.batch < 1:
        raise NNError(f"--batch must be a positive whole number, not {args.batch}")
    run = load_run(args.run_dir)
    step = run_step(run, args.lr)
    mapping = parse_mapping(args.map) if args.map else None
    if args.data is None:   # the run's own training split, drawn and normalised as training did
        train = read_data(run, None, mapping, "train")
        count = min(args.batch, len(train))
        inputs = run.normalize(train.take(np.arange(count)).arrays)
        what = f"the first {count} examples of the run's training split"
    else:
        inputs, what = examples(args.data, run.module, batch=args.batch, normalization=run.normalization,
                                mapping=mapping if mapping is not None else dict(run.config.get("map") or {}))
    dtype = run.config.get("settings", {}).get("config", {}).get("dtype")
    ev = evaluate_file(_model_file(run), dtype=dtype, params=run.params, state=run.state, inputs=inputs, mode="train")
    health = check(ev, step, thresholds)
    print(f"{args.run_dir}: train mode on {what}; the params of params.npz; update/weight from {step.describe()}")
    print(health.table())
    off = health.off()
    counts = ", ".join(f"{sum(f.level == level for f in off)} {level}" for level in ("bad", "warn")
                       if any(f.level == level for f in off))
    print(f"health: {health.level}" + (f" ({counts})" if counts else ": every figure within its ok band"))
    return 1 if args.strict and health.level == "bad" else 0


def _model_file(run) -> Path:
    """The run's .nn source: the file it was trained from where that is unchanged (its imports
    resolve beside it), else the copy in the run directory."""
    copy = Path(run.directory) / "model.nn"
    trained = run.config.get("settings", {}).get("model")
    if trained and Path(trained).is_file() and copy.is_file() and Path(trained).read_bytes() == copy.read_bytes():
        return Path(trained)
    if not copy.is_file():
        raise NNError("not a finished run directory: model.nn is missing (a run writes it when it ends)",
                      file=str(run.directory))
    return copy


def add_diagnose_parser(sub) -> None:
    """``nncompile diagnose RUN_DIR``: the gradient-health table of a trained run."""
    p = sub.add_parser("diagnose", help="print the gradient health of a trained run (a directory nncompile train wrote)",
                       description="Update/weight ratios, gradient ratios per layer, dead ReLU units and tanh/sigmoid "
                                   "saturation of the run's params on a batch of its data (docs/rendering.md).",
                       epilog="example: nncompile diagnose runs/digits_mlp --batch 512 --strict")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", default=None, metavar="digits|FILE",
                   help="the examples, read as nncompile train reads them (default: the run's own training split)")
    p.add_argument("--map", action="append", metavar="INPUT=ARRAY[,...]", help="feed an input from a named array")
    p.add_argument("--batch", type=int, default=DIAGNOSE_BATCH, metavar="K",
                   help=f"the first K examples of the data (default: {DIAGNOSE_BATCH})")
    p.add_argument("--strict", action="store_true", help="exit 1 when any figure is bad")
    add_health_options(p)
    p.set_defaults(run=cmd_diagnose)
