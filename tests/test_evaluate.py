"""Running a model on concrete numbers (eval, render, check): the inputs it draws itself
respect every bound the model implies, so a valid model never fails on them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import write_nn
from nncompile.evaluate import evaluate_file

# Each model indexes or labels in a way the old draws (N = 4, ints below 10) broke.
BOUNDED = {
    "fixed_index_past_the_default_batch": """
        input X: float[N, 3]
        top = X[7]
        back = X[-6]
        loss = sum(top * back)
        minimize loss
    """,
    "int_index_into_a_symbolic_axis": """
        input X: float[N, 3]
        input i: int[K]
        rows = X[i]
        loss = sum(rows * rows)
        minimize loss
    """,
    "int_index_into_a_small_fixed_axis": """
        input X: float[N, 3]
        input j: int[N]
        picked = X[arange(N), j]
        loss = sum(picked * picked)
        minimize loss
    """,
    "labels_with_a_symbolic_class_count": """
        input scores: float[N, C]
        input y: int[N]
        loss = softmax_cross_entropy(scores, y) + svm_loss(scores, y)
        minimize loss
    """,
    "labels_below_a_class_count_and_an_axis": """
        input X: float[N, 5]
        input scores: float[M, C]
        input y: int[M]
        loss = softmax_cross_entropy(scores, y) + sum(X[y])
        minimize loss
    """,
}


@pytest.mark.parametrize("name", BOUNDED)
def test_drawn_inputs_respect_every_bound_the_model_implies(name: str, tmp_path: Path) -> None:
    path = write_nn(tmp_path, f"{name}.nn", BOUNDED[name])
    for seed in range(5):
        ev = evaluate_file(path, seed=seed, dtype="float64")
        assert np.isfinite(ev.named_values()["loss"])
        assert set(ev.input_and_param_grads()) == {k for k, v in ev.inputs.items() if v.dtype.kind == "f"}


def test_a_fixed_index_makes_the_default_dim_large_enough(tmp_path: Path) -> None:
    ev = evaluate_file(write_nn(tmp_path, "m.nn", BOUNDED["fixed_index_past_the_default_batch"]))
    assert ev.inputs["X"].shape == (8, 3)
    small = evaluate_file(write_nn(tmp_path, "small.nn", "input X: float[N, 3]\ntop = X[1]\noutput top\n"))
    assert small.inputs["X"].shape == (4, 3)   # the usual default, when it suffices


def test_drawn_labels_cover_a_symbolic_class_count_given_by_set(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", BOUNDED["labels_with_a_symbolic_class_count"])
    ev = evaluate_file(path, {"C": "3", "N": "64"})
    assert ev.inputs["scores"].shape == (64, 3) and set(ev.inputs["y"].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("command", [["eval"], ["render", "-o", "g.dot"], ["check"]])
@pytest.mark.parametrize("name", BOUNDED)
def test_eval_render_and_check_run_on_what_they_draw(name: str, command: list[str], tmp_path: Path,
                                                     run_cli) -> None:
    path = write_nn(tmp_path, f"{name}.nn", BOUNDED[name])
    result = run_cli(command[0], path, *command[1:])
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
