"""Finite-difference gradient checks, as the CS231n notes recommend: centred differences
in float64, compared with the analytic gradient by relative error."""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Mapping

import numpy as np


@dataclass(frozen=True)
class GradResult:
    name: str
    analytic: float   # <grad, direction>
    numeric: float    # (f(x + eps d) - f(x - eps d)) / 2 eps
    error: float      # relative error

    @property
    def ok(self) -> bool:
        # A gradient that is exactly zero (a bias before batch norm) has only round-off to
        # compare with, so tiny absolute differences pass too.
        return self.error < 1e-6 or abs(self.analytic - self.numeric) < 1e-9


def relative_error(a: float, b: float) -> float:
    return abs(a - b) / max(1e-7, abs(a) + abs(b))


def check_gradients(module: ModuleType, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                    *, seed: int = 0, eps: float = 1e-6, directions: int = 2) -> list[GradResult]:
    """Compare value_and_grad with centred differences of the loss along random directions.

    Random directions (PyTensor's verify_grad does the same) check every entry of a big
    tensor in a couple of loss evaluations instead of one per entry.
    """
    rng = np.random.default_rng(seed)

    def train_step(p: Mapping[str, np.ndarray], i: Mapping[str, np.ndarray]):
        # The same seed every call: dropout draws the same mask, so the loss is one function.
        return module.value_and_grad(p, None, np.random.default_rng(seed), **i)

    grads = train_step(params, inputs)[1]
    loss_name = module.LOSS
    results = []
    for name, grad in grads.items():
        is_param = name in params
        point = np.asarray(params[name] if is_param else inputs.get(name, module.DEFAULTS.get(name)), dtype=float)
        for _ in range(directions):
            direction = rng.standard_normal(point.shape)

            def loss_at(x: np.ndarray) -> float:
                p, i = dict(params), dict(inputs)
                (p if is_param else i)[name] = x
                return float(train_step(p, i)[0][loss_name])

            numeric = (loss_at(point + eps * direction) - loss_at(point - eps * direction)) / (2 * eps)
            analytic = float(np.sum(np.asarray(grad, dtype=float) * direction))
            results.append(GradResult(name, analytic, numeric, relative_error(analytic, numeric)))
    return results
