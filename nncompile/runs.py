"""A trained run, loaded: its params, state and input normalisation around the module's predict().

``nncompile train`` leaves a run directory that describes itself (nncompile/train/runfiles.py):
the compiled module (model.py), the .nn source (model.nn), the params, the state, the
normalisation, predict.json (which output holds the class scores and of what kind) and a
README.txt that shows how to predict with numpy alone. :func:`load_run` reads it back for
Python users; ``nncompile predict`` is its command-line face.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

import numpy as np

from .compiler import load_module
from .errors import NNError
from .train.checkpoint import read_npz
from .train.data import Dataset, RawData, bind, load_source, mapping_for, parse_mapping, split
from .train.objective import Objective
from .train.runfiles import PREDICT_FILE
from .train.trainer import EVAL_CHUNK

PARTS = ("all", "train", "val", "test")
DEFAULT_BATCH = 4   # examples --data gives eval and render without --batch or --index


@dataclass
class Run:
    """A trained model ready to predict: ``predict(X)`` normalises X as training did."""

    directory: Path
    module: ModuleType
    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray] | None
    normalization: dict[str, tuple[np.ndarray, np.ndarray]]   # input -> (mean, scale)
    config: dict[str, Any] = field(default_factory=dict)
    scores: str | None = None    # the output holding class scores (or a binary model's logits)
    kind: str | None = None      # the loss's kind of targets: "classes", "binary", "regression", ...
    labels: str | None = None    # the input holding the labels accuracy compares with
    loss_op: dict[str, Any] | None = None   # how training computed a loss eval mode lacks (predict.json)

    @property
    def inputs(self) -> dict[str, tuple]:
        """What predict takes: PREDICT_INPUTS, name -> (shape, dtype)."""
        return dict(self.module.PREDICT_INPUTS)

    def normalize(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """The inputs in the module's dtype, normalised with the training split's statistics
        (the same arithmetic as the trainer's: float64 statistics, the result in the module's dtype)."""
        out = {}
        declared = {name: shape for name, (shape, _) in self.module.INPUTS.items()}
        for name, value in inputs.items():
            array = np.asarray(value)
            if name in self.normalization and array.dtype.kind in "fiu" and _fits(array.shape, declared.get(name)):
                mean, scale = self.normalization[name]
                array = array.astype(self.module.DTYPE)
                array = ((array - mean) / scale).astype(self.module.DTYPE)
            out[name] = array
        return out

    def outputs(self, X: Any = None, /, **inputs: Any) -> dict[str, np.ndarray]:
        """Every prediction output (PREDICT_OUTPUTS) for raw, unnormalised inputs."""
        if X is not None:
            if len(self.inputs) != 1:
                raise NNError(f"this model's predict takes {', '.join(self.inputs)}: pass them by name")
            inputs = {next(iter(self.inputs)): X, **inputs}
        try:
            return self.module.predict(self.params, self.state, **self.normalize(inputs))
        except (TypeError, ValueError) as exc:   # the module's own message: a missing input, a wrong shape
            raise NNError(f"{exc}", file=str(self.directory / "model.py")) from None

    def accuracy(self, predicted: np.ndarray, data: Dataset | RawData | Mapping[str, Any]) -> float | None:
        """The fraction of ``data``'s examples classified right; None without classes or labels."""
        data = self.dataset(data)
        if self.kind not in ("classes", "binary") or self.labels not in data.arrays or not len(data):
            return None
        truth = data.arrays[self.labels]
        if self.kind == "binary":
            truth = (truth.reshape(len(truth), -1)[:, 0] > 0.5).astype(np.int64)
        return float((np.asarray(predicted) == truth).mean())

    def loss(self, data: Dataset | RawData | Mapping[str, Any]) -> float | None:
        """The model's mean loss on ``data``'s examples, as training reports its val loss: the
        LOSS output in eval mode over the same chunks, or where eval mode has none (a loss
        written in a train { } block), the data loss as the trainer computed it (a scalar
        ``data_loss`` output, else the loss op of predict.json's ``loss_op`` on its output and
        targets). None where the data lacks an input the model reads (the targets)."""
        data = self.dataset(data)
        name = getattr(self.module, "LOSS", None)
        needed = [k for k in self.module.INPUTS if k in data.arrays or k not in self.module.DEFAULTS]
        if name is None or not len(data) or any(k not in data.arrays for k in needed):
            return None
        total = 0.0
        for start in range(0, len(data), EVAL_CHUNK):
            chunk = {k: data.arrays[k][start:start + EVAL_CHUNK] for k in needed}
            try:
                outputs = self.module.forward(self.params, self.state, **self.normalize(chunk))
            except (TypeError, ValueError) as exc:   # the module's own message, as outputs() reports it
                raise NNError(f"{exc}", file=str(self.directory / "model.py")) from None
            loss = self._chunk_loss(name, outputs, chunk)
            if loss is None:
                return None
            total += loss * len(next(iter(chunk.values())))
        return total / len(data)

    def dataset(self, data: Dataset | RawData | Mapping[str, Any]) -> Dataset:
        """``data`` as a Dataset: arrays keyed by the model's input names (a dict of them works),
        or what ``load_digits()`` and ``load_source()`` return, bound as the run's training read it."""
        if isinstance(data, Dataset):
            return data
        if isinstance(data, RawData):
            return bind_for(self, data)
        if isinstance(data, Mapping):
            return Dataset.from_arrays(data)
        raise NNError(f"give a Dataset, a dict of arrays by input name or what load_digits() returns, "
                      f"not {type(data).__name__}")

    def _chunk_loss(self, name: str, outputs: dict[str, Any], chunk: dict[str, np.ndarray]) -> float | None:
        """One chunk's loss, as ``Trainer.evaluate`` takes it."""
        if name in outputs:
            return float(outputs[name])
        if name != "data_loss" and np.ndim(outputs.get("data_loss", [])) == 0:
            return float(outputs["data_loss"])
        how = self.loss_op
        if how is None or how["predictions"] not in outputs or how["targets"] not in chunk:
            return None
        objective = Objective(how["op"], how["predictions"], how["targets"], tuple(how["attrs"].items()))
        return objective.data_loss(outputs[how["predictions"]], chunk[how["targets"]])

    def predict(self, X: Any = None, /, **inputs: Any) -> Any:
        """Class labels for a classifier (the argmax of the scores, or a logit's sign), else
        the single prediction output (or all of them, as a dict, where there are several)."""
        outputs = self.outputs(X, **inputs)
        if self.kind in ("classes", "binary") and self.scores in outputs:
            scores = outputs[self.scores]
            if self.kind == "binary":
                return (scores.reshape(len(scores), -1)[:, 0] > 0).astype(np.int64)
            return scores.argmax(axis=-1)
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    def predict_proba(self, X: Any = None, /, **inputs: Any) -> np.ndarray:
        """Class probabilities: the softmax of the class scores (for a binary model, the
        sigmoid of its logit, as the probability of class 1)."""
        if self.kind not in ("classes", "binary") or self.scores is None:
            why = f"its loss is a {self.kind} loss" if self.kind else "it has no loss that compares with labels"
            raise NNError(f"this model has no class scores ({why}), so it has no probabilities: use predict()",
                          file=str(self.directory))
        scores = np.asarray(self.outputs(X, **inputs)[self.scores], dtype=np.float64)
        if self.kind == "binary":
            return (1.0 / (1.0 + np.exp(-scores.reshape(len(scores), -1)[:, 0]))).astype(self.module.DTYPE)
        shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(self.module.DTYPE)


def _fits(shape: tuple, declared: tuple | None) -> bool:
    """Whether an array of ``shape`` fits an input declared ``declared`` (a dim like N fits any
    size): one that does not is left for the module to refuse with its own message, rather
    than broadcast against the normalisation's statistics first."""
    return declared is not None and len(shape) == len(declared) and \
        all(isinstance(d, str) or d == s for s, d in zip(shape, declared))


def load_run(directory: str | Path) -> Run:
    """The run ``nncompile train`` wrote to ``directory``, ready to predict."""
    folder = Path(directory)
    if folder.is_file():
        raise NNError("is a file, not a run directory (nncompile train writes one, by default runs/MODEL)",
                      file=str(folder))
    if not folder.is_dir():
        raise NNError("no such run directory (nncompile train writes one, by default runs/MODEL)", file=str(folder))
    for needed in ("model.py", "params.npz"):
        if not (folder / needed).exists():
            raise NNError(f"not a finished run directory: {needed} is missing (a run writes it when it ends)",
                          file=str(folder))
    module = load_module((folder / "model.py").read_text(encoding="utf-8"), "model")
    if not hasattr(module, "predict"):
        raise NNError("this model has no outputs to predict from its data inputs alone (every output needs the "
                      "labels or is a loss), or was compiled by an nncompile without predict(): train it again",
                      file=str(folder / "model.py"))
    params = read_npz(folder / "params.npz")
    state = read_npz(folder / "state.npz") if (folder / "state.npz").exists() else None
    normalization: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if (folder / "normalization.npz").exists():
        saved = read_npz(folder / "normalization.npz")
        normalization = {k[len("mean/"):]: (v, saved["scale/" + k[len("mean/"):]])
                         for k, v in saved.items() if k.startswith("mean/")}
    config = _json(folder / "config.json")
    described = _json(folder / PREDICT_FILE)
    return Run(folder, module, params, state, normalization, config, described.get("scores"), described.get("kind"),
               described.get("labels"), described.get("loss_op"))


def bind_for(run: Run, raw: RawData, mapping: dict[str, str] | None = None) -> Dataset:
    """``raw`` bound to the run's inputs: with its labels where it has them (checked as
    training checks them: a bad label is an error), else the data inputs alone; by default
    with the run's own --map, as training read --test-data with it."""
    if mapping is None:
        mapping = mapping_for(raw, dict(run.config.get("map") or {}),
                              str(run.config.get("data")).lower().endswith(".csv"))
    targets = [name for name in run.module.INPUTS if name not in run.module.PREDICT_INPUTS]   # labels, say
    if any(mapping.get(name, name) in raw.arrays for name in targets) or raw.roles.get("labels"):
        return bind(raw, run.module, mapping)
    return bind(raw, _PredictInputs(run.module), {k: v for k, v in mapping.items() if k in run.inputs})


def read_data(run: Run, spec: str | None = None, mapping: dict[str, str] | None = None, part: str = "all") -> Dataset:
    """Examples to predict, read as ``nncompile train`` reads ``--data`` (raw, not yet
    normalised), with their labels where the source has them. ``part`` (train, val or test)
    picks the run's own split of its own data, drawn as the trainer drew it."""
    config = run.config
    spec = spec if spec is not None else config.get("data", "digits")
    if part not in PARTS:
        raise NNError(f"--split must be one of {', '.join(PARTS)}, not {part!r}")
    if part != "all" and not _same_data(spec, config.get("data")):
        raise NNError(f"--split {part} picks the run's own split of its data ({config.get('data')!r}), "
                      f"but --data is {spec!r}: leave out --data, or use --split all")
    raw = load_source(config["test_data"] if part == "test" and config.get("test_data") else spec)
    data = bind_for(run, raw, mapping)
    if part == "all" or (part == "test" and config.get("test_data")):
        return data
    if run.labels is not None and run.labels not in data.arrays:
        raise NNError(f"--split {part} draws the split as training did, by class, so the data needs its labels "
                      f"{run.labels!r}")
    test_split = config.get("test_split")
    if config.get("test_data"):   # the trainer split its validation set off all of --data
        pool = data
    else:
        pool, test = split(data, raw.default_test_split if test_split is None else test_split, salt=1)
        if part == "test":
            return _held(test, "test", "no test split" if test_split is None else f"--test-split {test_split:g}",
                         "--test-split 0.2 or --test-data FILE")
    val_split = config.get("val_split", 0.1)
    train, val = split(pool, val_split, salt=2)
    return train if part == "train" else _held(val, "val", f"--val-split {val_split:g}", "--val-split 0.1")


def _held(part: Dataset, flag: str, asked: str, fix: str) -> Dataset:
    """The run's test or validation split, which must hold examples to predict."""
    if not len(part):
        name = "validation" if flag == "val" else flag
        raise NNError(f"--split {flag}: the run has no {name} examples (it was trained with {asked}); "
                      f"use --split all or --split train, or train with {fix}")
    return part


class _PredictInputs:
    """A module seen as predict() sees it, for :func:`bind`: PREDICT_INPUTS are its inputs."""

    def __init__(self, module: ModuleType):
        self.INPUTS = module.PREDICT_INPUTS
        self.DEFAULTS = {k: v for k, v in module.DEFAULTS.items() if k in self.INPUTS}
        self.BOUNDS = {k: v for k, v in module.BOUNDS.items() if k in self.INPUTS}


def _json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise NNError(f"cannot read this JSON file: {exc}", file=str(path)) from None


def trained_values(spec: str | Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None,
                                              dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """``--params``: a run directory's params, state and normalisation, or one .npz file of
    params; and how to name where they came from."""
    path = Path(spec)
    if path.is_dir():
        run = load_run(path)
        return run.params, run.state, run.normalization, f"the trained params of {path}"
    if not path.exists():
        raise NNError("no such params file or run directory", file=str(path))
    return read_npz(path), None, {}, f"the params in {path}"


def examples(spec: str, module: ModuleType, *, batch: int | None = None, index: int | None = None,
             normalization: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
             mapping: dict[str, str] | None = None) -> tuple[dict[str, np.ndarray], str]:
    """``--data`` with ``--batch K`` (the first K examples) or ``--index I`` (that one), read as
    training reads it and normalised as a run's training normalised it; and how to name them."""
    data = bind(load_source(spec), module, mapping)
    if index is not None:
        if not 0 <= index < len(data):
            raise NNError(f"--index {index}: {data.source} has examples 0 to {len(data) - 1}")
        chosen, what = np.array([index]), f"example {index} of {data.source}"
    else:
        count = min(batch if batch is not None else DEFAULT_BATCH, len(data))
        if count < 1:
            raise NNError(f"--batch must be a positive whole number, not {batch}")
        chosen, what = np.arange(count), f"the first {count} examples of {data.source}"
    arrays = data.take(chosen).arrays
    if normalization:
        for name, (mean, scale) in normalization.items():
            if name in arrays:
                arrays[name] = ((arrays[name] - mean) / scale).astype(arrays[name].dtype)
        what += ", normalised as in training"
    return arrays, what


def _same_data(spec: str, trained: str | None) -> bool:
    """Whether ``--data`` names the run's own data: ``digits``, or the same file however it is
    written (the run records an absolute path; a user types a relative one)."""
    if trained is None or spec == trained:
        return spec == trained
    return spec != "digits" and trained != "digits" and Path(spec).resolve() == Path(trained).resolve()


MODE_NOTES = {"train": "dropout on, batch statistics", "eval": "dropout off, running statistics"}


def trained_options(model: str | Path, *, params: str | Path | None = None, data: str | None = None,
                    mapping: Sequence[str] | Mapping[str, str] | None = None, batch: int | None = None,
                    index: int | None = None, mode: str = "train", seed: int = 0,
                    dtype: str | None = None) -> tuple[dict, str]:
    """What ``--params``, ``--data``, ``--batch``/``--index``, ``--map`` and ``--mode`` ask of
    evaluate_file (``eval`` and ``render`` on the command line, ``nncompile.render`` in Python),
    and a line saying what was run: the mode (stated even when it is the default), the params,
    the inputs. ``mapping`` is ``--map``'s ``INPUT=ARRAY[,...]`` strings, or a dict."""
    if (batch is not None or index is not None or mapping) and data is None:
        raise NNError("--batch, --index and --map pick examples of --data: give --data FILE (or digits)")
    options: dict = {"mode": mode}
    normalization: dict = {}
    params_from = "params from the initialisers (seed %d)" % seed
    if params is not None:
        options["params"], options["state"], normalization, params_from = trained_values(params)
    inputs_from = "inputs from the file's defaults, --set values or seeded random numbers"
    if data is not None:
        from .compiler import compile_and_load

        chosen = dict(mapping) if isinstance(mapping, Mapping) else parse_mapping(mapping)
        module = compile_and_load(model, dtype=dtype)
        options["inputs"], inputs_from = examples(data, module, batch=batch, index=index,
                                                  normalization=normalization, mapping=chosen)
    default = " (the default)" if mode == "train" else ""
    return options, f"{mode} mode{default}: {MODE_NOTES.get(mode, mode)}; {params_from}; {inputs_from}"
