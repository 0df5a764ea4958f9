"""Loss and accuracy curves as a PNG, the first thing the lectures say to look at.

matplotlib is imported lazily (it is in the optional ``train`` extra) and driven through
its object API with the Agg canvas, so plotting never needs a display and never changes
the backend of a caller's interactive session.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import write_atomic


def plot_curves(history: Sequence[dict[str, Any]], path: Path, *, title: str = "",
                best_epoch: int | None = None, step_losses: Sequence[float] = ()) -> bool:
    """Draw train/validation loss and accuracy per epoch into ``path``, and under the loss the
    loss of every step (faint: its noise is the batch's); False without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    epochs = [h["epoch"] for h in history]
    has_acc = any(h.get("acc") is not None for h in history)
    fig = Figure(figsize=(10 if has_acc else 5.5, 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
    panels = [("loss", "loss", 1.0)] + ([("acc", "accuracy (%)", 100.0)] if has_acc else [])
    if len(step_losses) and history and history[-1]["step"]:
        per_epoch = history[-1]["step"] / history[-1]["epoch"]   # steps per epoch, to plot steps on the epoch axis
        steps = [(i + 1) / per_epoch for i in range(len(step_losses))]
        axes[0].plot(steps, list(step_losses), "-", color="tab:blue", alpha=0.25, linewidth=0.8, label="train, per step")
    for ax, (key, label, scale) in zip(axes, panels):
        for prefix, name, style in (("", "train", "-"), ("val_", "validation", "--")):
            points = [(e, h[prefix + key] * scale) for e, h in zip(epochs, history) if h.get(prefix + key) is not None]
            if points:
                ax.plot(*zip(*points), style, marker="o" if len(points) <= 200 else None, markersize=3, label=name)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right" if key == "loss" else "lower right")   # "best" is slow with many points
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    write_atomic(path, lambda handle: fig.savefig(handle, format="png"))
    return True
