"""What a sweep shows: the table of trials (trials.csv), the objective against each
hyperparameter (trials.png: the lectures' "coarse to fine" picture, on a log axis where the
space is log), and the summary ``nncompile sweep --show`` prints. Each is drawn from the
study alone, so any worker can write it, at any time, whole (``write_atomic``).
"""
from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

from ..files import write_atomic
from .space import Space

TABLE, PLOT = "trials.csv", "trials.png"
# What --objective ranks trials by (lower is better): what it is, and what to do when a model has none.
OBJECTIVES = {
    "data-loss": ("the validation data loss: the model's data_loss output, or else its loss op's value, without the "
                  "regularisation its loss may add", "the model has no data_loss output, and no loss op the "
                  "trainer knows: --objective loss ranks by the model's loss"),
    "loss": ("the model's validation loss as nncompile train reports it, with any regularisation its eval mode adds",
             "the model computes no loss in eval mode"),
    "error": ("a classifier's validation error, 1 - accuracy", "--objective error needs a classifier"),
}
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def write_outputs(study: Any, space: Space, out: Path, *, draw: bool = True) -> list[str]:
    """trials.csv, and (with ``draw``) trials.png where matplotlib is installed; returns the
    names written. Drawing takes a good part of a second, the table a millisecond."""
    trials = study.get_trials(deepcopy=False)
    write_atomic(out / TABLE, table(trials, space.names), durable=True)
    drawn = draw and plot(trials, space, out / PLOT, title=study.study_name, label=f"validation {objective_of(study)}")
    return [TABLE, PLOT] if drawn else [TABLE]


def objective_of(study: Any) -> str:
    """What the study ranks its trials by, in words (a study that predates the mark: the loss)."""
    return words(str(study.user_attrs.get("nncompile:objective", "loss")))


def words(kind: str) -> str:
    """An objective's name as a sentence has it: data loss, loss, error."""
    return kind.replace("-", " ")


def table(trials: list[Any], names: list[str]) -> str:
    """One row per trial: its number, state, objective (the last one reported, for a pruned
    trial) and validation accuracy, its values, run directory and worker."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["number", "state", "value", "val_acc", *names, "epochs", "seconds", "run_dir", "worker",
                     "retry_of", "note"])
    for t in sorted(trials, key=lambda t: t.number):
        last = _last_value(t)
        writer.writerow([t.number, t.state.name, _cell(last), _cell(t.user_attrs.get("val_acc")),
                         *(_cell(t.params.get(name)) for name in names), _cell(t.user_attrs.get("epochs")),
                         _cell(t.user_attrs.get("seconds")), t.user_attrs.get("run_dir", ""),
                         t.user_attrs.get("worker", ""), _cell(t.system_attrs.get("failed_trial")), note(t)])
    return buffer.getvalue()


def note(trial: Any) -> str:
    """Why a trial failed or was cut short, in a few words."""
    if trial.state.name == "PRUNED":
        return f"pruned after epoch {max(trial.intermediate_values)}" if trial.intermediate_values else "pruned"
    if trial.state.name != "FAIL":
        return ""
    for key in ("nncompile:surplus", "nncompile:stale"):
        if key in trial.system_attrs:
            return str(trial.system_attrs[key])
    return str(trial.user_attrs.get("error", "interrupted or killed"))


def _last_value(trial: Any) -> float | None:
    """The trial's validation loss: its value, or the last one reported before it stopped."""
    if trial.value is not None:
        return trial.value
    if trial.intermediate_values:
        return trial.intermediate_values[max(trial.intermediate_values)]
    return None


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def plot(trials: list[Any], space: Space, path: Path, *, title: str = "", label: str = "validation loss") -> bool:
    """The objective of each finished trial against each hyperparameter (pruned trials
    hollow, at their last reported loss; the best one marked); False without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    shown = [(t, _last_value(t)) for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    shown = [(t, loss) for t, loss in shown if loss is not None and math.isfinite(loss)]
    fig = Figure(figsize=(4.2 * len(space.dimensions), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(space.dimensions), squeeze=False)[0]
    best = min((t for t, _ in shown if t.state.name == "COMPLETE"), key=lambda t: t.value, default=None)
    losses = [loss for _, loss in shown]
    for ax, d in zip(axes, space.dimensions):
        categories = [str(a) for a in d.args] if d.kind == "choice" else None
        for state, style in (("COMPLETE", dict(color="tab:blue")), ("PRUNED", dict(facecolors="none",
                                                                                   edgecolors="tab:grey"))):
            points = [(t.params[d.name], loss) for t, loss in shown if t.state.name == state and d.name in t.params]
            if points:
                xs = [categories.index(str(x)) for x, _ in points] if categories else [x for x, _ in points]
                ax.scatter(xs, [y for _, y in points], s=22, label=state.lower(), **style)
        if best is not None and d.name in best.params:
            x = categories.index(str(best.params[d.name])) if categories else best.params[d.name]
            ax.scatter([x], [best.value], marker="*", s=140, color="tab:red", label=f"best (trial {best.number})")
        if categories:
            ax.set_xticks(range(len(categories)), categories)
            ax.set_xlim(-0.5, len(categories) - 0.5)
        else:   # the whole range searched, so the picture shows where to search next
            if d.log:
                ax.set_xscale("log")
            ax.set_xlim(*d.args)
        if losses and min(losses) > 0 and max(losses) / min(losses) > 10:
            ax.set_yscale("log")
        ax.set_xlabel(d.name + (" (log scale)" if d.log else ""))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    if shown:
        axes[0].legend(loc="best", fontsize="small")
    fig.suptitle(f"{title}: {len(shown)} trials" if title else f"{len(shown)} trials")
    fig.tight_layout()
    write_atomic(path, lambda handle: fig.savefig(handle, format="png"))
    return True


def summary(study: Any, where: str) -> str:
    """``nncompile sweep --show``: the counts by state, and the best trial with its values."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    tally = ", ".join(f"{counts[s]} {s.lower()}" for s in STATES if counts[s])
    lines = [f"study {study.study_name} in {where}: {len(trials)} trials" + (f" ({tally})" if tally else "")]
    space = study.user_attrs.get("nncompile:space")
    if space:
        lines.append(f"space: {space}")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        lines.append("no trial has completed yet")
        return "\n".join(lines)
    best = min(complete, key=lambda t: t.value)
    acc = best.user_attrs.get("val_acc")
    lines.append(f"best: trial {best.number}, validation {objective_of(study)} {best.value:.4f}"
                 + (f", accuracy {100 * acc:.2f}%" if acc is not None else "")
                 + (f", {best.user_attrs['epochs']} epochs" if "epochs" in best.user_attrs else ""))
    width = max(len(k) for k in best.params) if best.params else 0
    lines += [f"  {k:<{width}} = {v:.6g}" if isinstance(v, float) else f"  {k:<{width}} = {v}"
              for k, v in best.params.items()]
    if "run_dir" in best.user_attrs:
        lines.append(f"run directory: {best.user_attrs['run_dir']} (worker {best.user_attrs.get('worker', '?')}); "
                     f"predict with: nncompile predict {best.user_attrs['run_dir']}")
    return "\n".join(lines)
