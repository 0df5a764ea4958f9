"""The trainer: mini-batch training of a compiled .nn model, with the lectures' sanity checks.

Everything numeric happens in the generated module: ``step`` runs forward, backward and the
compiled optimiser update in one call. This file only feeds it mini-batches and keeps
score. Two entry points:

* :class:`Trainer` — the Python API: ``fit`` on a :class:`~nncompile.train.data.Dataset`
  (or a mapping of arrays) returning the :class:`~nncompile.train.history.History`,
  ``evaluate``, and the sanity checks ``initial_loss_check``, ``overfit`` and
  ``gradient_check``; the epoch loop itself is nncompile/train/loop.py;
* :func:`nncompile.train.command.run` — what ``nncompile train`` does: load and split the
  data, check, train, checkpoint, evaluate on the test split, and write the run directory.

Conventions the trainer relies on (see docs/training.md): the loss is the module's LOSS
output, and the loss op it is built on (:class:`~nncompile.train.objective.Objective`: softmax_cross_entropy, svm_loss,
sigmoid_cross_entropy, mse, each declaring its ``loss`` in nncompile/ops) sets what the
sanity checks expect.
Classification accuracy uses the first output of shape [N, C] as the class scores and the
integer input with a class bound (BOUNDS) as the labels, or a binary model's logits and
targets. Training steps run the model in train mode (dropout on, running statistics
updated, masks drawn from a seeded, checkpointed generator); evaluation runs ``forward``,
the eval mode. Where the eval mode has no loss (a loss written inside ``train { }``), the
validation loss is the loss op computed by the trainer.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends import BACKENDS
from ..compiler import compile_file, load_module
from ..errors import NNError
from ..gradcheck import TOLERANCE
from ..monitor import Monitor
from ..optim import Optimizer, check_optimizer
from .checkpoint import TrainState
from .cadence import CHECKPOINT_EVERY, LOG_EVERY, Cadence
from .data import (
    NORMALIZE,
    Dataset,
    RawData,
    bind,
    label_input,
    scores_output,
)
from .history import History
from .loop import run_epoch, train_epochs
from .objective import Objective
from .schedules import Schedule, make_schedule, steps_per_epoch

if TYPE_CHECKING:
    from .distributed import DataParallel

Log = Callable[[str], None]
EVAL_CHUNK = 2048          # examples per forward call when evaluating
LOSS_CHECK_EXAMPLES = 2048  # examples used for the initial-loss check


@dataclass
class TrainConfig:
    """The settings of a run; the CLI flags map one to one onto these fields."""

    epochs: int = 50
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    hyper: dict[str, float] = field(default_factory=dict)   # optimiser hyperparameters (momentum, beta1, ...)
    clip_norm: float | None = None
    schedule: str = "constant"
    seed: int = 0
    val_split: float = 0.1
    test_split: float | None = None    # None: the dataset's default (0.2 for digits, 0 for files)
    patience: int | None = 10          # early stopping on validation loss; None or 0: off
    normalize: str | None = None       # none, center, standardize, image; None: the dataset's default
    dtype: str | None = None
    backend: str = "numpy"             # numpy (CPU) or cupy (NVIDIA GPU)
    val_every: int | None = None       # validate every this many epochs; None: often enough for 20 steps between
    checkpoint_every: str = CHECKPOINT_EVERY   # N epochs, or a time: "10s", "2m" (and always at the end)
    log_every: str = LOG_EVERY         # the same for the printed epoch lines

    def check(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise NNError(f"--epochs must be a positive whole number, not {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise NNError(f"--batch-size must be a positive whole number, not {self.batch_size!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise NNError(f"--lr must be a positive number, not {self.lr!r}")
        if not 0 <= self.val_split < 1:
            raise NNError(f"--val-split must lie in [0, 1), not {self.val_split!r}")
        if self.test_split is not None and not 0 <= self.test_split < 1:
            raise NNError(f"--test-split must lie in [0, 1), not {self.test_split!r}")
        if self.patience is not None and self.patience < 0:
            raise NNError(f"--patience must not be negative, not {self.patience!r}")
        if self.normalize is not None and self.normalize not in NORMALIZE:
            raise NNError(f"--normalize must be one of {', '.join(NORMALIZE)}, not {self.normalize!r}")
        make_schedule(self.schedule, self.lr, 1, self.epochs)   # a bad --schedule fails before any work
        check_optimizer(self.optimizer, self.hyper, self.clip_norm, spelled=lambda key: "--" + key.replace("_", "-"))
        if self.backend not in BACKENDS:
            raise NNError(f"--backend must be {' or '.join(BACKENDS)}, not {self.backend!r}")
        if self.val_every is not None and (not isinstance(self.val_every, int) or self.val_every < 1):
            raise NNError(f"--val-every must be a positive whole number of epochs, not {self.val_every!r}")
        Cadence.parse(self.checkpoint_every, "--checkpoint-every")
        Cadence.parse(self.log_every, "--log-every")


@dataclass(frozen=True)
class Metrics:
    """Mean loss and accuracy over ``n`` examples; either is None when the model cannot say.
    ``data_loss`` leaves regularisation out (see ``Trainer._data_loss``)."""

    loss: float | None
    acc: float | None
    n: int
    data_loss: float | None = None

    def show(self) -> str:
        loss = f"loss {self.loss:.4f}" if self.loss is not None else "no loss in eval mode"
        acc = f", accuracy {100 * self.acc:.2f}%" if self.acc is not None else ""
        return f"{loss}{acc} ({self.n} example{'s' * (self.n != 1)})"


@dataclass(frozen=True)
class LossCheck:
    """The lecture's first check: with regularisation off, the initial loss is the loss of a
    model that knows nothing yet, -log(1/C) for softmax, (C - 1) * delta for the SVM, log 2
    for a binary classifier."""

    classes: int
    expected: float          # the chance-level loss, e.g. -log(1 / classes)
    data_loss: float         # initial loss without regularisation
    total_loss: float        # initial loss as the model defines it (with regularisation)
    how: str                 # where data_loss came from
    ok: bool
    formula: str = ""        # how ``expected`` was derived, e.g. "-log(1/10)"

    def show(self) -> str:
        verdict = "ok" if self.ok else "WARNING: far from the expected value; check the initialisation scale"
        line = (f"initial loss without regularisation {self.data_loss:.4f}, expected {self.formula} = "
                f"{self.expected:.4f} ({self.how}): {verdict}")
        reg = self.total_loss - self.data_loss
        if abs(reg) > 1e-6 * max(1.0, abs(self.total_loss)):
            line += f"; with regularisation {self.total_loss:.4f} ({reg:+.4f})"
        return line


@dataclass(frozen=True)
class OverfitResult:
    """The lecture's second check: can the model memorise a tiny training set? A classifier
    must classify every example and bring its loss near zero; a regression model, the loss."""

    examples: int
    epochs: int
    acc: float | None        # None for a regression model
    loss: float | None       # the data loss (without regularisation where the trainer can tell)
    target: float | None = None   # the loss that counts as memorised: OVERFIT_FRACTION of chance level
    falling: bool = False    # whether the loss was still falling when the epochs ran out (_still_falling)
    lr: float | None = None

    @property
    def reached(self) -> bool:
        small = self.target is None or (self.loss is not None and self.loss <= self.target)
        return (self.acc is None or self.acc >= 1.0) and small

    def show(self) -> str:
        if self.reached:
            verdict = "PASS"
        elif self.falling:   # under-trained, not broken: the lecture's advice is to train harder first
            faster = f"a larger --lr than {self.lr:g}" if self.lr is not None else "a larger --lr"
            verdict = (f"FAIL: not memorised yet, but the loss is still falling: train longer (--epochs) or "
                       f"faster ({faster}) before suspecting the model")
        else:
            verdict = "FAIL: the model cannot even memorise a handful of examples" + (
                " (it classifies every one, but its loss stays above the target)"
                if self.acc is not None and self.acc >= 1.0 else "")
        loss = f"loss {self.loss:.4f}" if self.loss is not None else ""
        if loss and self.target is not None:
            loss += f", the target {self.target:.4f}"
        measured = (f"training accuracy {100 * self.acc:.1f}%" + (f" ({loss})" if loss else "")
                    if self.acc is not None else f"training {loss}")
        return f"overfit check: {measured} on {self.examples} examples after {self.epochs} epochs: {verdict}"


def _still_falling(losses: list[float | None], target: float | None) -> bool:
    """Whether the loss, falling as fast as over the last tenth of the epochs (two at least),
    would reach the target within ten times the epochs run, from about the lowest it has been:
    a run cut short, not a plateau, nor a rate so high that the loss bounced back up."""
    if None in losses or target is None or len(losses) < 3:
        return False
    recent = max(2, (len(losses) - 1) // 10)
    first, best, last = losses[0], min(losses), losses[-1]   # type: ignore[type-var]
    rate = (losses[-1 - recent] - last) / recent   # type: ignore[operator]
    near_best = last <= best + 0.01 * (first - best)   # type: ignore[operator]   # not a rate too high, bouncing back
    return bool(rate > 0 and near_best and last - target <= rate * 10 * (len(losses) - 1))   # type: ignore[operator]


@dataclass(frozen=True)
class GradCheck:
    """Analytic against finite-difference gradients on one mini-batch, per param (float64)."""

    errors: dict[str, float | None]   # worst relative error per param or input; None where not judged
    threshold: float
    failed: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)   # why a param failed, was not judged, or is unused

    @property
    def ok(self) -> bool:
        return not self.failed

    def show(self) -> str:
        worst = max((e for e in self.errors.values() if e is not None), default=0.0)
        verdict = "ok" if self.ok else f"FAILED for {', '.join(self.failed)}"
        notes = "".join(f"; {name}: {note}" for name, note in self.notes.items())
        return (f"gradient check on one mini-batch (float64, extrapolated central differences): worst relative error "
                f"{worst:.1e}: {verdict}{notes}")


class Trainer:
    """A compiled model and its optimiser, ready to train on Datasets."""

    def __init__(self, model: str | Path, config: TrainConfig | None = None, *, log: Log | None = None,
                 progress: bool = False):
        self.path = Path(model)
        self.config = config if config is not None else TrainConfig()
        self.config.check()
        self.optimizer = Optimizer(self.config.optimizer, dict(self.config.hyper), self.config.clip_norm)
        # Training never needs gradients with respect to the inputs.
        self.xp = array_module(self.config.backend)
        self.source = compile_file(self.path, dtype=self.config.dtype, input_grads=False, optimizer=self.optimizer,
                                   backend=self.config.backend)
        self.module: ModuleType = load_module(self.source, self.path.stem)
        self.loss: str = self.module.LOSS
        self.has_state = hasattr(self.module, "STATE")   # running statistics (batch norm)
        self.objective = Objective.of_file(self.path)
        self.scores, self.labels = self._classified()
        self.log: Log = log or (lambda line: None)
        self.progress = progress
        self.state: TrainState | None = None   # what ``fit`` has trained so far
        self._on_device: tuple[Dataset, dict[str, Any]] | None = None
        self.parallel: DataParallel | None = None   # data-parallel over MPI workers (distributed.py) when set

    def generator(self, noise: np.random.Generator) -> Any:
        """The generator the module draws dropout masks from. On the GPU it is a CuPy one,
        seeded from the run's numpy generator, so checkpoints (which save that) stay exact."""
        if self.xp is np:   # arrays stay on the host
            return noise
        return self.xp.random.default_rng(int(noise.integers(2 ** 63)))

    def laid_out(self, state: TrainState, where: Path) -> TrainState:
        """A state read from a checkpoint (an array per param and slot), copied into the
        module's own layout: init_params makes the params views of one buffer and init_opt_state
        each slot alike, so the resumed run takes the optimiser's one-buffer path too. The values
        are the same bit for bit; a checkpoint whose arrays do not fit the model is refused."""
        params = self.module.init_params(0)
        opt = self.module.init_opt_state(params)
        for group, fresh, what in [(state.params, params, "params"),
                                   *((state.opt.get(slot, {}), opt[slot], f"{slot} slots") for slot in self.module.SLOTS)]:
            wrong = sorted(set(group) ^ set(fresh)) or [k for k in fresh if np.shape(group[k]) != fresh[k].shape]
            if wrong:
                raise NNError(f"the checkpoint's {what} do not fit this model ({', '.join(wrong)}): it is damaged, "
                              "or was written for another model", file=str(where))
            for name, value in group.items():
                fresh[name][...] = value
        opt["step"] = state.opt["step"]
        state.params, state.opt = params, opt
        return state

    def to_device(self, state: TrainState) -> TrainState:
        """Params, optimiser slots and model state where the module computes (no-op on the CPU)."""
        if self.xp is np:   # arrays stay on the host
            return state
        place = lambda group: None if group is None else {k: self.xp.asarray(v) for k, v in group.items()}  # noqa: E731
        state.params = place(state.params)
        state.opt = {k: place(v) if isinstance(v, dict) else v for k, v in state.opt.items()}
        state.model_state = place(state.model_state)
        return state

    def _classified(self) -> tuple[str | None, str | None]:
        """The output and input that accuracy compares: class scores [N, C] and integer labels,
        or a binary model's logits [N] (or [N, 1]) and 0/1 targets; (None, None) for neither."""
        module, objective = self.module, self.objective
        if objective.binary:
            shape = module.OUTPUTS[objective.predictions][0] if objective.predictions in module.OUTPUTS else ()
            per_example = len(shape) > 0 and isinstance(shape[0], str) and tuple(shape[1:]) in ((), (1,))
            return (objective.predictions, objective.targets) if per_example and objective.targets else (None, None)
        if objective.kind == "classes" and objective.predictions and objective.targets:
            scores, labels = objective.predictions, objective.targets   # what the loss itself reads
        else:
            scores, labels = scores_output(module), label_input(module)
        if objective.kind == "regression" or scores not in module.OUTPUTS or labels not in module.BOUNDS \
                or len(module.OUTPUTS[scores][0]) != 2 or module.OUTPUTS[scores][0][1] != module.BOUNDS[labels]:
            return None, None   # no classes, or scores and labels disagree on how many
        return scores, labels

    @property
    def classes(self) -> int | None:
        if self.scores is None:
            return None
        return 2 if self.objective.binary else int(self.module.OUTPUTS[self.scores][0][1])

    def _hits(self, predicted: Any, truth: Any) -> int:
        """How many examples are classified right: the argmax of the scores, or the logit's sign."""
        if self.objective.binary:
            n = len(truth)
            return int(((predicted.reshape(n, -1)[:, 0] > 0) == (truth.reshape(n, -1)[:, 0] > 0.5)).sum())
        return int((predicted.argmax(axis=1) == truth).sum())

    def _data_loss(self, outputs: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[float, str] | None:
        """The loss without regularisation: the model's ``data_loss`` output where it has one, else
        its loss op computed here from the op's output and targets (softmax cross-entropy of the
        scores where no loss op is recognised); None where neither is at hand."""
        if "data_loss" in outputs and self._data_loss_output():
            return float(outputs["data_loss"]), "the model's data_loss output"
        predictions, targets = self._scored()
        if predictions not in outputs or targets not in arrays:
            return None
        return self.objective.data_loss(to_host(outputs[predictions]), to_host(arrays[targets])), \
            self.objective.describe()

    def reports_data_loss(self) -> bool:
        """Whether validation reports a data loss (``_data_loss``): what a sweep checks before its first trial."""
        predictions, targets = self._scored()
        return self._data_loss_output() or (predictions in self.module.OUTPUTS and targets in self.module.INPUTS)

    def eval_loss_op(self) -> dict[str, Any] | None:
        """How :meth:`evaluate` computes the loss where eval mode has no LOSS output (a loss
        written in a train { } block): the loss op, the output it scores, the input holding its
        targets and its attrs, as JSON for the run directory; None where eval mode has the LOSS."""
        predictions, targets = self._scored()
        if self.loss in self.module.OUTPUTS or predictions not in self.module.OUTPUTS or targets is None:
            return None
        return {"op": self.objective.op_or_assumed, "predictions": predictions, "targets": targets,
                "attrs": dict(self.objective.attrs)}

    def _data_loss_output(self) -> bool:
        declared = {**self.module.OUTPUTS, **getattr(self.module, "TRAIN_OUTPUTS", {})}   # either mode's outputs
        return "data_loss" != self.loss and declared.get("data_loss", [None])[0] == ()

    def _scored(self) -> tuple[str | None, str | None]:
        """The output and input the data loss is computed from: its loss op's, or the class scores'."""
        objective = self.objective
        return (objective.predictions, objective.targets) if objective.op else (self.scores, self.labels)

    # ---- state -------------------------------------------------------------------------

    def init_state(self) -> TrainState:
        """Fresh params and model state, zeroed optimiser state, seeded shuffling and dropout."""
        seed = self.config.seed
        params = self.module.init_params(seed)
        return TrainState(params, self.module.init_opt_state(params), np.random.default_rng((seed, 1)),
                          np.random.default_rng((seed, 3)),
                          self.module.init_state(seed) if self.has_state else None)

    # ---- training ----------------------------------------------------------------------

    def fit(self, train: Dataset | Mapping[str, Any], val: Dataset | Mapping[str, Any] | None = None, *,
            epochs: int | None = None, on_step: Callable[[TrainState], None] | None = None) -> History:
        """Train on ``train`` until ``epochs`` epochs are done in all (default: the config's);
        returns the history so far. The trainer keeps the state (``trainer.state``,
        ``trainer.params``), so calling ``fit`` again with more epochs continues the run.

        ``train`` and ``val`` are Datasets (:meth:`Dataset.from_arrays`) or plain mappings of
        input names to arrays; either is checked against the model's inputs first. Without a
        run directory nothing is written; lines go to the trainer's ``log``.
        """
        epochs = self.config.epochs if epochs is None else epochs
        if not isinstance(epochs, int) or epochs < 1:
            raise NNError(f"epochs must be a positive whole number, not {epochs!r}")
        state = self.state if self.state is not None else self.init_state()
        if epochs < state.epoch:
            raise NNError(f"this trainer has already trained {state.epoch} epochs; ask for more than that to "
                          f"continue, not epochs={epochs}")
        train, val = self.prepare(train), (self.prepare(val) if val is not None else None)
        self.state = self.to_device(state)   # kept as it goes: after a Ctrl-C, fit continues where it stopped
        self.train(train, val, state=self.state, epochs=epochs, on_step=on_step)
        return self.history()

    def history(self) -> History:
        """The epochs and steps trained so far, as data."""
        state = self.state
        if state is None:
            return History()
        return History.of(state.history, state.step_losses, state.best_epoch, state.stopped_early)

    @property
    def params(self) -> dict[str, Any] | None:
        """The params as of the last ``fit`` (the last epoch's, not the best)."""
        return None if self.state is None else self.state.params

    @property
    def model_state(self) -> dict[str, Any] | None:
        """The model's state (batch norm's running statistics) as of the last ``fit``, beside
        :attr:`params`; None for a model without state, or before ``fit``."""
        return None if self.state is None else self.state.model_state

    def prepare(self, data: Dataset | Mapping[str, Any]) -> Dataset:
        """A Dataset checked against the model's inputs (dtype, shape, class labels)."""
        if isinstance(data, Dataset) and data.bound:
            return data
        arrays = data.arrays if isinstance(data, Dataset) else dict(data)
        return bind(RawData(dict(arrays), "the arrays given", flat=False, passed=True), self.module)

    def train(self, train: Dataset, val: Dataset | None = None, *, state: TrainState | None = None,
              epochs: int | None = None, run_dir: Path | None = None, fingerprint: dict[str, Any] | None = None,
              on_step: Callable[[TrainState], None] | None = None,
              on_epoch: Callable[[TrainState, dict[str, Any]], None] | None = None) -> TrainState:
        """Train ``state`` (default: a fresh one) until ``epochs`` epochs are done (default: the
        config's) or early stopping fires; returns the state. See nncompile/train/loop.py.

        With ``run_dir``, checkpoints and metrics lines are written there on the config's
        schedule, at the end and when interrupted. ``on_step`` is called after each optimiser
        step (tests use it to interrupt a run); ``on_epoch`` after each epoch, with its record.
        """
        state = self.to_device(state if state is not None else self.init_state())
        return train_epochs(self, train, val, state, self.config.epochs if epochs is None else epochs,
                            run_dir=run_dir, fingerprint=fingerprint, on_step=on_step, on_epoch=on_epoch)

    def schedule(self, examples: int, epochs: int | None = None) -> Schedule:
        return make_schedule(self.config.schedule, self.config.lr, self.steps_per_epoch(examples),
                             self.config.epochs if epochs is None else epochs)

    def steps_per_epoch(self, examples: int) -> int:
        return steps_per_epoch(examples, self.config.batch_size)

    def device_arrays(self, data: Dataset) -> dict[str, Any]:
        """``data``'s arrays where the module computes; kept for the next call on the same data."""
        if self.xp is np:
            return data.arrays
        if self._on_device is None or self._on_device[0] is not data:
            self._on_device = (data, {k: self.xp.asarray(v) for k, v in data.arrays.items()})
        return self._on_device[1]

    def hit_counter(self) -> Callable[[Any, Any], int] | None:
        """How many of a batch are classified right (see ``_hits``), or None for no classes."""
        if self.scores is None or self.labels is None:
            return None
        if self.objective.binary:
            return self._hits
        count = self.xp.count_nonzero
        return lambda predicted, truth: int(count(predicted.argmax(axis=1) == truth))

    # ---- measuring ---------------------------------------------------------------------

    def health_monitor(self, data: Dataset) -> Monitor | None:
        """Gradient health on a fixed batch of ``data`` (nncompile/health.py); None without a loss."""
        if self.loss is None or not len(data) or (self.parallel is not None and not self.parallel.world.root):
            return None
        return Monitor(self.path, self.config.dtype, self.module, data.arrays)

    def evaluate(self, params: dict[str, np.ndarray], data: Dataset | Mapping[str, Any],
                 model_state: dict[str, np.ndarray] | None = None) -> Metrics:
        """Mean loss and accuracy of ``params`` on ``data``: forward (eval mode) in chunks.

        The loss is the model's LOSS output, or where eval mode has none, its data loss
        (see ``_data_loss``); None if neither exists. ``data_loss`` is the data loss alone.
        ``model_state`` (running statistics) defaults to the trainer's own as of the last
        ``fit`` (:attr:`model_state`), so ``evaluate(trainer.params, val)`` measures what
        ``fit`` trained; before any ``fit``, the initial state.
        """
        if model_state is None:
            model_state = self.model_state
        data = self.prepare(data)
        n = len(data)
        classify = self.scores is not None and self.labels in data.arrays
        scores, labels = self.scores or "", self.labels or ""
        total, data_total, correct, has_loss, has_data_loss = 0.0, 0.0, 0, True, True
        for start in range(0, n, EVAL_CHUNK):
            chunk = {k: v[start:start + EVAL_CHUNK] for k, v in data.arrays.items()}
            outputs = self.module.forward(params, model_state, **{k: self.xp.asarray(v) for k, v in chunk.items()})
            size = len(next(iter(chunk.values())))
            predicted = to_host(outputs[scores]) if classify else None
            data_loss = self._data_loss(outputs, chunk)
            has_data_loss = has_data_loss and data_loss is not None
            data_total += data_loss[0] * size if data_loss is not None else 0.0
            if self.loss in outputs:
                total += float(outputs[self.loss]) * size
            elif data_loss is not None:
                total += data_loss[0] * size
            else:
                has_loss = False
            if classify:
                correct += self._hits(predicted, chunk[labels])
        return Metrics(total / max(1, n) if has_loss else None, correct / n if classify and n else None, n,
                       data_total / max(1, n) if has_data_loss else None)

    def initial_loss_check(self, params: dict[str, np.ndarray], data: Dataset,
                           model_state: dict[str, np.ndarray] | None = None) -> LossCheck | None:
        """Compare the initial loss without regularisation with the chance-level loss that the
        model's loss op declares: -log(1/C) for softmax cross-entropy over C classes, say.

        The loss is the training loss before the first step (train mode, as training sees it;
        no state is updated and the dropout generator of the run is not touched).
        "Regularisation off" is the model's scalar output ``data_loss`` when it declares one;
        otherwise the loss op computed here. Either way the model's full loss is reported
        beside it. ``ok`` means within 20% of the expectation. None when the model is no
        classifier (a regression model has no chance level independent of its data).
        """
        chance = self.objective.chance(self.classes)
        if chance is None:
            return None
        subset = {k: v[:LOSS_CHECK_EXAMPLES] for k, v in data.arrays.items()}
        outputs = self.module.value_and_grad(params, model_state, self.generator(np.random.default_rng(0)),
                                             **{k: self.xp.asarray(v) for k, v in subset.items()})[0]
        total = float(outputs[self.loss])
        data_loss, how = self._data_loss(outputs, subset) or (total, "the model's loss, regularisation included")
        expected, formula = chance
        return LossCheck(self.classes or 2, expected, data_loss, total, how,
                         abs(data_loss - expected) <= 0.2 * expected, formula)

    def overfit(self, data: Dataset, examples: int) -> OverfitResult:
        """Train fresh params on ``examples`` examples of ``data`` until they are memorised.

        Runs up to ``config.epochs`` epochs, stopping once every example is classified right
        (for a classifier) and the data loss is below OVERFIT_FRACTION of its chance level
        (log C for softmax; for a regression model, the targets' variance: the loss of
        predicting their mean). No validation, no early stopping, no files.
        """
        if self.scores is None and self.objective.kind != "regression":
            raise NNError("--overfit needs a classifier (class scores [N, C] and integer labels, or logits and "
                          "targets for sigmoid_cross_entropy) or a regression model (mse)", file=str(self.path))
        if not 1 <= examples <= len(data):
            raise NNError(f"--overfit takes between 1 and {len(data)} examples (the training split), "
                          f"not {examples}")
        state = self.init_state()
        subset = data.take(np.sort(np.random.default_rng((self.config.seed, 2)).permutation(len(data))[:examples]))
        schedule = self.schedule(examples)
        target = self._overfit_target(subset)
        result = self._memorised(state, subset, 0, target)
        losses = [result.loss]
        while result.epochs < self.config.epochs and not result.reached:
            run_epoch(self, state, subset, schedule)
            result = self._memorised(state, subset, result.epochs + 1, target)
            losses.append(result.loss)
        return replace(result, falling=_still_falling(losses, target), lr=self.config.lr)

    def _overfit_target(self, data: Dataset) -> float | None:
        chance = self.objective.chance(self.classes)
        if chance is not None:
            return OVERFIT_FRACTION * chance[0]
        targets = data.arrays.get(self.objective.targets or "")
        if targets is None:
            return None
        spread = float(np.var(targets)) or float(np.mean(np.square(targets.astype(np.float64)))) or 1.0
        return OVERFIT_FRACTION * spread

    def _memorised(self, state: TrainState, data: Dataset, epochs: int, target: float | None) -> OverfitResult:
        """Accuracy and data loss on the examples being memorised (eval mode)."""
        measured = self.evaluate(state.params, data, state.model_state)
        outputs = self.module.forward(state.params, state.model_state,
                                      **{k: self.xp.asarray(v) for k, v in data.arrays.items()})
        data_loss = self._data_loss(outputs, data.arrays)
        return OverfitResult(len(data), epochs, measured.acc, data_loss[0] if data_loss else measured.loss, target)

    def gradient_check(self, params: dict[str, np.ndarray], data: Dataset, *, threshold: float = TOLERANCE) -> GradCheck:
        """Check value_and_grad against central differences on the first mini-batch, in float64.

        The model is compiled again in float64 (float32 differences are too noisy to judge);
        ``nncompile.gradcheck`` probes each gradient along random directions, clear of kinks.
        """
        from ..gradcheck import Kinks, check_gradients, summarize

        module64 = load_module(compile_file(self.path, dtype="float64"), self.path.stem + "_float64")
        size = min(self.config.batch_size, len(data))
        batch = {k: (v[:size].astype(np.float64) if v.dtype.kind == "f" else v[:size]) for k, v in data.arrays.items()}
        params64 = {k: np.asarray(to_host(v), dtype=np.float64) for k, v in params.items()}
        results = summarize(check_gradients(module64, params64, batch, seed=self.config.seed, tolerance=threshold,
                                            kinks=Kinks.of_file(self.path, self.config.seed)))
        return GradCheck({k: r.error if math.isfinite(r.error) else None for k, r in results.items()}, threshold,
                         [k for k, r in results.items() if not r.ok],
                         {k: f"{r.status}: {r.note}" for k, r in results.items() if r.status != "ok"})


def array_module(backend: str) -> ModuleType:
    """numpy, or CuPy for the GPU backend (with a clear error where it is not installed)."""
    try:
        return BACKENDS[backend].array_module()
    except ImportError:
        raise NNError(f"the {backend} backend needs {BACKENDS[backend].needs}") from None


def to_host(array: Any) -> np.ndarray:
    """A numpy array, copying from the GPU where the array lives there."""
    return array.get() if hasattr(array, "__cuda_array_interface__") else np.asarray(array)


OVERFIT_FRACTION = 0.05   # --overfit passes once the data loss is below this fraction of chance level
