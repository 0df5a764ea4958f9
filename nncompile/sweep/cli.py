"""``nncompile sweep``: a hyperparameter search over runs of the trainer, shared through Optuna.

nncompile/cli.py calls :func:`add_sweep_parser`. The sweep takes ``nncompile train``'s data
and training flags as they are (the same actions, borrowed from the train parser, so the two
never disagree); those fix a setting for every trial, ``--space`` varies the others.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import NNError
from ..train.cli import DEFAULTS, add_train_parser, given_settings
from .report import OBJECTIVES
from .space import DISTRIBUTIONS, EXAMPLE, Space
from .study import STALE_AFTER

SAMPLERS = ("tpe", "random")
BORROWED = ("data", "training")   # the train parser's argument groups a sweep takes too


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``sweep`` on the top-level parser's subparsers."""
    p = subparsers.add_parser(
        "sweep", help="search hyperparameters over many training runs, on one machine or several (needs "
                      "nncompile[sweep])",
        description="Train MODEL.nn once per trial with hyperparameters drawn from --space (Optuna: TPE or random "
                    "sampling, median pruning on the same objective). Start the same command on several machines "
                    "sharing --storage to run trials side by side. Any data or training flag of nncompile train "
                    "fixes that setting for every trial.",
        epilog=f"example: nncompile sweep examples/digits_mlp.nn --trials 20 --epochs 10 --space \"{EXAMPLE}\". "
               "Distributions: " + "; ".join(DISTRIBUTIONS.values()) + ".")
    p.add_argument("model", metavar="MODEL.nn", nargs="?", help="the model (not needed with --show)")
    g = p.add_argument_group("sweep")
    g.add_argument("--space", metavar="NAME=DIST(ARGS),...",
                   help="what to vary: training settings by their flag names (lr, batch-size, optimizer, ...) and "
                        "the model's top-level consts (reg, H, ...)")
    g.add_argument("--trials", type=int, metavar="N",
                   help="finished trials the study should hold, counted over all workers (default: 20)")
    g.add_argument("--storage", metavar="URL|FILE",
                   help="where the study lives: a journal file (default: SWEEP_DIR/journal.log; on a shared "
                        "filesystem for several hosts), or a database: sqlite:///FILE, postgresql://...")
    g.add_argument("--study", metavar="NAME", help="the study's name in the storage (default: the model's name)")
    g.add_argument("--out", metavar="SWEEP_DIR", help="the trials' run directories, trials.csv and trials.png "
                                                      "(default: sweeps/MODEL)")
    g.add_argument("--objective", choices=tuple(OBJECTIVES),
                   help="rank trials by " + "; or ".join(f"{name}: {what}" for name, (what, _) in OBJECTIVES.items())
                        + " (default: the study's, or for a new one data-loss where the model has one, else loss)")
    g.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="(default: tpe)")
    g.add_argument("--startup-trials", type=int, default=5, metavar="K",
                   help="trials drawn at random before TPE models the space and before pruning starts (default: 5)")
    g.add_argument("--no-prune", action="store_true", help="train every trial to the end")
    g.add_argument("--sampler-seed", type=int, default=0, metavar="S",
                   help="seed of the sampler; trial k draws from seed S + k (default: 0)")
    g.add_argument("--stale-after", type=float, default=STALE_AFTER, metavar="SECONDS",
                   help=f"fail (and retry) a running trial whose worker has sent no heartbeat for this long "
                        f"(default: {STALE_AFTER:g})")
    g.add_argument("--show", action="store_true", help="only summarise the study: counts by state, the best trial")
    _borrow_training_flags(p)
    p.set_defaults(run=run_sweep)
    return p


def _borrow_training_flags(p: argparse.ArgumentParser) -> None:
    """The train parser's data and training arguments, added to the sweep's parser as they are."""
    train = add_train_parser(argparse.ArgumentParser(add_help=False).add_subparsers())
    for group in train._action_groups:
        if group.title in BORROWED:
            mine = p.add_argument_group(f"{group.title} (as in nncompile train)")
            for action in group._group_actions:
                mine._add_action(action)


def run_sweep(args: argparse.Namespace) -> int:
    """Run ``nncompile sweep`` for parsed ``args``; returns the exit status."""
    from .report import summary, write_outputs
    from .settings import Model, check_bounds
    from .study import describe_storage, join_study, load_study, open_storage, optuna_module
    from .worker import Sweep, work

    stem = Path(args.model).stem if args.model else None
    out = Path(args.out) if args.out else (Path("sweeps") / stem if stem else None)
    if args.show:
        if out is None and args.storage is None:
            raise NNError("--show needs the study's --storage, --out SWEEP_DIR or MODEL.nn")
        where = describe_storage(args.storage, out or Path("."))
        if "://" not in where and not Path(where).is_file():   # --show only reads: it creates no journal
            raise NNError(f"no study here: {where} does not exist (a sweep writes it; --out or --storage says where)")
        print(summary(load_study(open_storage(args.storage, out or Path(".")), args.study), where))
        return 0
    if args.model is None:
        raise NNError("give the model to sweep (MODEL.nn), or --show to summarise a study")
    if args.space is None:
        raise NNError(f"give the space to search with --space, e.g. --space \"{EXAMPLE}\"")
    trials = 20 if args.trials is None else args.trials
    if trials < 1:
        raise NNError(f"--trials must be a positive whole number, not {trials}")
    if args.startup_trials < 0 or not args.stale_after > 0:
        raise NNError("--startup-trials must be 0 or more, and --stale-after above 0")
    optuna = optuna_module()   # before any work: a missing Optuna is the first thing to hear about
    model = Model.read(args.model)
    space = Space.parse(args.space, model.hyperparameters())
    fixed = _fixed_settings(args)
    check_bounds(fixed, [{d.name: a} for d in space.dimensions for a in d.args])
    if not fixed.get("val_split", DEFAULTS["val_split"]):
        raise NNError("a sweep ranks its trials on the validation split: --val-split must be above 0")

    def sampler(number: int) -> Any:
        seed = args.sampler_seed + number
        if args.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(n_startup_trials=args.startup_trials, seed=seed)

    pruner = optuna.pruners.NopPruner() if args.no_prune else \
        optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials)
    storage = open_storage(args.storage, out, say=lambda line: print(line, file=sys.stderr, flush=True))
    marks = {"nncompile:space": str(space), "nncompile:model": hashlib.sha256(model.path.read_bytes()).hexdigest(),
             "nncompile:settings": json.dumps(fixed, sort_keys=True)}
    if args.objective is not None:   # asked for: the study must have been started with it
        marks["nncompile:objective"] = args.objective
    study = join_study(storage, args.study or stem, sampler(0), pruner, marks)
    objective = _objective(study, model, fixed)
    where = describe_storage(args.storage, out)
    print(f"sweep {study.study_name}: {trials} trials of {args.model}, {args.sampler} sampler, study in {where}; "
          f"run directories in {out}", flush=True)
    try:
        status = work(Sweep(model, space, fixed, trials, out, sampler, args.stale_after, objective,
                            say=lambda line: print(line, flush=True)), study)
    except KeyboardInterrupt:   # the table only: the plot takes a while, and a user who pressed Ctrl-C is waiting
        write_outputs(study, space, out, draw=False)
        print(f"interrupted: the study is kept; run the same command to continue it ({where})", file=sys.stderr)
        return 130
    print(summary(study, where))
    print(f"wrote {out}/trials.csv and trials.png")
    return status


def _objective(study: Any, model: Any, fixed: dict[str, Any]) -> str:
    """The objective the study ranks by (as its first worker recorded it); for a new study without
    --objective, the data loss where the model has one, else its loss (said on stderr)."""
    from ..train.trainer import Trainer
    from .settings import trial_settings

    recorded = study.user_attrs.get("nncompile:objective")
    if recorded is not None:
        return str(recorded)
    objective = "data-loss"
    if not Trainer(model.path, trial_settings(fixed, {})[1]).reports_data_loss():
        objective = "loss"
        print(f"note: {model.path} has no data_loss output and no loss op the trainer knows: trials are ranked "
              "by its loss (--objective)", file=sys.stderr, flush=True)
    study.set_user_attr("nncompile:objective", objective)
    return objective


def _fixed_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The training settings given as flags (as nncompile train reads them); validation every
    epoch unless --val-every says otherwise, so that every trial reports at the same epochs."""
    fixed = given_settings(args)
    fixed.setdefault("val_every", 1)
    return fixed
