"""The files that make a run directory self-describing: the model's source, predict.json (what
predict takes and returns, and whether its output is class scores), and a README.txt that shows
how to predict with numpy alone. :func:`nncompile.load_run` reads them back."""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from ..files import write_atomic

PREDICT_FILE = "predict.json"
README = "README.txt"


def write_run_files(folder: Path, module: ModuleType, model_path: Path, *, scores: str | None, labels: str | None,
                    kind: str | None, normalized: dict[str, Any], has_state: bool,
                    loss_op: dict[str, Any] | None = None) -> list[str]:
    """What makes a run directory self-describing: model.nn (the source), predict.json and
    README.txt. Returns the names written. ``loss_op`` (the op, the output it scores, the input
    holding its targets, its attrs) is how the trainer computed the loss where eval mode has
    no LOSS output: a loss written in a train { } block."""
    write_atomic(folder / "model.nn", model_path.read_bytes())
    predicts = hasattr(module, "predict")
    description = {"inputs": list(getattr(module, "PREDICT_INPUTS", {})),
                   "outputs": list(getattr(module, "PREDICT_OUTPUTS", {})),
                   "scores": scores if predicts else None, "labels": labels, "kind": kind,
                   "normalized": sorted(normalized), "loss_op": loss_op}
    write_atomic(folder / PREDICT_FILE, json.dumps(description, indent=2) + "\n")
    write_atomic(folder / README, readme(module, model_path.name, scores=scores if predicts else None, kind=kind,
                                         normalized=sorted(normalized), has_state=has_state))
    return ["model.nn", PREDICT_FILE, README]


def readme(module: ModuleType, model_name: str, *, scores: str | None, kind: str | None, normalized: list[str],
           has_state: bool) -> str:
    """README.txt: what the files are, and a numpy-only recipe that a test runs as written."""
    lines = [f"A model trained by nncompile from {model_name}.", "",
             "Files:",
             "  model.nn           the model's source",
             "  model.py           the compiled module: imports numpy only, never nncompile",
             "  params.npz         the trained params (the best by validation loss)"]
    if has_state:
        lines.append("  state.npz          the model's state (running statistics), used in eval mode")
    if normalized:
        lines.append("  normalization.npz  mean/NAME and scale/NAME: inputs are (x - mean) / scale, as in training")
    lines += ["  config.json        the training settings", "  predict.json       what predict takes and returns",
              "  checkpoint.npz     everything needed to resume training (nncompile train --resume)",
              "  metrics.jsonl, summary.json, curves.png  how training went", ""]
    if not hasattr(module, "predict"):
        lines.append("This model has no outputs computed from its data inputs alone, so it has no predict().")
        return "\n".join(lines) + "\n"
    inputs = list(module.PREDICT_INPUTS)
    lines += ["With nncompile installed:", "",
              "    import nncompile",
              "    run = nncompile.load_run('THIS_DIRECTORY')",
              f"    run.predict({inputs[0] if len(inputs) == 1 else ', '.join(f'{n}={n}' for n in inputs)})"
              + ("   # class labels; run.predict_proba(...) gives probabilities" if kind in ("classes", "binary")
                 and scores else ""),
              "", "or on the command line: nncompile predict THIS_DIRECTORY --data FILE -o predictions.csv", "",
              "With numpy alone, run this in this directory (it defines predict):", "",
              "# --- numpy recipe ---",
              "import importlib.util",
              "",
              "import numpy as np",
              "",
              'spec = importlib.util.spec_from_file_location("model", "model.py")',
              "model = importlib.util.module_from_spec(spec)",
              "spec.loader.exec_module(model)",
              'params = dict(np.load("params.npz"))',
              f'state = {"dict(np.load(" + chr(34) + "state.npz" + chr(34) + "))" if has_state else "None"}',
              f'normalization = {"dict(np.load(" + chr(34) + "normalization.npz" + chr(34) + "))" if normalized else "{}"}',
              "",
              "",
              f"def predict({', '.join(inputs)}):",
              f'    """{"Class labels" if kind == "classes" and scores else "The predictions"} for raw '
              'inputs, normalised as in training."""']
    for name in inputs:
        if name in normalized:
            lines += [f"    {name} = np.asarray({name}).astype(model.DTYPE)",
                      f'    {name} = (({name} - normalization["mean/{name}"]) / normalization["scale/{name}"])'
                      ".astype(model.DTYPE)"]
    call = f"model.predict(params, state, {', '.join(f'{n}={n}' for n in inputs)})"
    if scores and kind == "classes":
        lines.append(f"    return {call}[{scores!r}].argmax(axis=1)")
    elif scores and kind == "binary":
        lines.append(f"    return ({call}[{scores!r}].reshape(-1) > 0).astype(np.int64)")
    else:
        lines.append(f"    return {call}   # a dict: {', '.join(module.PREDICT_OUTPUTS)}")
    lines += ["# --- end of recipe ---", "",
              f"predict(...) takes {', '.join(f'{n}: {d}[{_dims(s)}]' for n, (s, d) in module.PREDICT_INPUTS.items())}"
              " (raw values, as in the training data)."]
    return "\n".join(lines) + "\n"


def _dims(shape: tuple) -> str:
    return ", ".join(str(d) for d in shape)
