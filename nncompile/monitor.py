"""Where gradient-health figures come from (nncompile/health.py computes and judges them):
the next optimiser step of a trained run or of a plain model, and a training run's own,
measured now and then without slowing it or changing it.

Kept apart from health.py because it compiles and evaluates models, while health.py is what
the renderer draws with: one module per job, and no import cycle.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from time import perf_counter
from types import ModuleType
from typing import Any

import numpy as np

from .errors import NNError
from .health import Health, OptimiserStep, Thresholds, check


def run_step(run: Any, lr: float | None = None) -> OptimiserStep:
    """The optimiser step a trained run (:func:`nncompile.runs.load_run`) would take next: its
    module, its optimiser state (the checkpoint's: the last epoch's, while params.npz may hold
    the best epoch's) and its learning rate (the run's --lr, or ``lr``): a schedule's rate,
    annealed to 0 at the end of a cosine run, would make every trained run's step look too slow."""
    from .train.checkpoint import load_checkpoint

    folder = Path(run.directory)
    if not hasattr(run.module, "apply_update"):
        raise NNError("this run's model.py has no optimiser (apply_update): train it again", file=str(folder))
    opt = None
    if (folder / "checkpoint.npz").exists():
        opt = load_checkpoint(folder / "checkpoint.npz", run.module.SLOTS)[0].opt
    if lr is not None:
        if not (math.isfinite(lr) and lr > 0):
            raise NNError(f"--lr must be a positive number, not {lr!r}")
        return OptimiserStep(run.module, lr, opt)
    settings = run.config.get("settings", {}).get("config", {})
    return OptimiserStep(run.module, float(settings.get("lr", run.config.get("lr", 1e-3))), opt)


def plain_step(model: str | Path, lr: float, optimizer: str = "sgd", dtype: str | None = None) -> OptimiserStep:
    """A first step of ``optimizer`` with learning rate ``lr`` on a model not yet trained."""
    from .compiler import compile_file, load_module
    from .optim import Optimizer

    if not (math.isfinite(lr) and lr > 0):
        raise NNError(f"--lr must be a positive number, not {lr!r}")
    source = compile_file(model, dtype=dtype, optimizer=Optimizer(optimizer), input_grads=False)
    return OptimiserStep(load_module(source, Path(model).stem + "_step"), lr)


MONITOR_EXAMPLES = 256   # the batch a training run's health is measured on
MONITOR_SHARE = 0.05     # measuring takes at most this share of a run's time
MONITOR_GUESS = 0.25     # seconds the first measurement is assumed to take (compiling its trace included): none before 5 s


class Monitor:
    """The health of a training run, measured now and then on a fixed batch of its training
    data: only when the time spent on it stays under MONITOR_SHARE of the run's, so a short
    run is never slowed. Its own random generator and copies: the run is left bit for bit as it was."""

    def __init__(self, path: str | Path, dtype: str | None, module: ModuleType, arrays: Mapping[str, np.ndarray],
                 thresholds: Thresholds | None = None):
        self.path, self.dtype, self.module = Path(path), dtype, module
        count = min(MONITOR_EXAMPLES, len(next(iter(arrays.values())))) if arrays else 0
        self.inputs, self.examples = {k: np.asarray(v[:count]) for k, v in arrays.items()}, count
        self.thresholds = thresholds or Thresholds()
        self.started = perf_counter()
        self.spent, self.cost = 0.0, MONITOR_GUESS
        self._trace: tuple[Any, Any, ModuleType] | None = None

    def due(self) -> bool:
        return self.spent + self.cost <= MONITOR_SHARE * (perf_counter() - self.started)

    def measure(self, params: Mapping[str, Any], model_state: Mapping[str, Any] | None, opt: dict[str, Any],
                lr: float) -> Health:
        """The figures for these params, the optimiser state and this step's learning rate."""
        from .evaluate import Evaluation

        began = perf_counter()
        model, program, trace = self._traced()
        host = {k: _host(v) for k, v in params.items()}
        state = {k: _host(v) for k, v in model_state.items()} if model_state is not None and model.state else None
        with np.errstate(all="ignore"):
            values, grads = trace.trace(host, state, np.random.default_rng(0), **self.inputs)
        ev = Evaluation(model, program, trace, host, self.inputs, values, grads)
        opt_host = {k: ({n: _host(a) for n, a in v.items()} if isinstance(v, dict) else v) for k, v in opt.items()}
        health = check(ev, OptimiserStep(_HostOptimiser(self.module), lr, opt_host), self.thresholds)
        self.cost = perf_counter() - began
        self.spent += self.cost
        return health

    def _traced(self) -> tuple[Any, Any, ModuleType]:
        if self._trace is None:
            from .codegen import emit_module
            from .compiler import build, load_module
            from .elaborate import elaborate_file

            model = elaborate_file(self.path, self.dtype, mode="train")
            program = build(model, optimized=False, trace=True)
            self._trace = (model, program, load_module(emit_module(program, trace=True), self.path.stem + "_health"))
        return self._trace


def _host(array: Any) -> np.ndarray:
    return array.get() if hasattr(array, "__cuda_array_interface__") else np.asarray(array)


class _HostOptimiser:
    """A trainer's module as OptimiserStep sees it, on host copies (a GPU module's apply_update
    wants device arrays: they are moved there and back)."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.DTYPE, self.TRAINABLE, self.OPTIMIZER = module.DTYPE, module.TRAINABLE, module.OPTIMIZER
        self.init_opt_state = module.init_opt_state

    def apply_update(self, params: dict, grads: dict, state: dict, lr: float) -> None:
        np_module = getattr(self.module, "cp", None)
        if np_module is None:
            self.module.apply_update(params, grads, state, lr)
            return
        place = lambda group: {k: np_module.asarray(v) for k, v in group.items()}  # noqa: E731
        device = place(params)
        self.module.apply_update(device, place(grads), {k: place(v) if isinstance(v, dict) else v
                                                       for k, v in state.items()}, lr)
        params.update({k: _host(v) for k, v in device.items()})

