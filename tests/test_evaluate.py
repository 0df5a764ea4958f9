"""Running a model on concrete numbers (eval, render, check): the inputs it draws itself
respect every bound the model implies, so a valid model never fails on them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLE_FILES, write_nn
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


def test_drawn_targets_are_what_their_loss_reads(tmp_path: Path) -> None:
    """Binary targets lie in [0, 1]; soft labels are distributions (rows that sum to 1)."""
    path = write_nn(tmp_path, "m.nn", """
        input logits: float[N]
        input t: float[N]
        input scores: float[N, 3]
        input q: float[N, 3]
        loss = sigmoid_cross_entropy(logits, t) + softmax_cross_entropy(scores, q)
        minimize loss
    """)
    ev = evaluate_file(path, {"N": "50"})
    assert 0 <= ev.inputs["t"].min() and ev.inputs["t"].max() <= 1
    assert np.allclose(ev.inputs["q"].sum(axis=1), 1) and ev.inputs["q"].min() >= 0
    assert ev.inputs["logits"].min() < 0 < ev.inputs["logits"].max()   # the scores stay normal draws


@pytest.mark.parametrize("command", [["eval"], ["render", "-o", "g.dot"], ["check"]])
@pytest.mark.parametrize("name", BOUNDED)
def test_eval_render_and_check_run_on_what_they_draw(name: str, command: list[str], tmp_path: Path,
                                                     run_cli) -> None:
    path = write_nn(tmp_path, f"{name}.nn", BOUNDED[name])
    result = run_cli(command[0], path, *command[1:])
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["eval"], ["render", "-o", "g.dot"], ["check"]])
@pytest.mark.parametrize("given, message", [
    ("y=[0, 1, 2, 3, 0, 9]", "nncompile: error: --set y=[0, 1, 2, 3, 0, 9]: input 'y' holds 9: its entries are class labels or indices, "
                             "which must lie in [0, C) = [0, 4)\nm.nn:2:1: note: 'y' is declared here"),
    ("N=3", "nncompile: error: --set N=3: input 'X' has N = 3, but the model takes a fixed entry of that axis "
            "that needs N >= 6\nm.nn:1:1: note: 'X' is declared here"),
])
def test_values_the_module_refuses_are_reported_where_they_were_given(command: list[str], given: str, message: str,
                                                                      tmp_path: Path, run_cli) -> None:
    """A --set value is the command line's mistake, of the input itself or of the dim that
    makes it too small (N=3 for X); a note shows the declaration it is about."""
    write_nn(tmp_path, "m.nn", """
        input X: float[N, C]
        input y: int[N]
        loss = softmax_cross_entropy(X, y) + sum(X[5])
        minimize loss
    """)
    result = run_cli(command[0], "m.nn", *command[1:], "--set", given)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert message in result.stderr


# ---- memory: refused up front, never a MemoryError halfway through -----------------------

WIDE = """
    input X: float[N, 1000]
    param W: [1000, 1000] = normal()
    h = X @ W
    loss = sum(h * h)
    minimize loss
"""


@pytest.mark.parametrize("command", [["eval"], ["render", "-o", "g.dot"], ["check"]])
def test_a_run_too_large_for_any_machine_is_refused_with_the_estimate(command: list[str], tmp_path: Path,
                                                                      run_cli) -> None:
    path = write_nn(tmp_path, "wide.nn", WIDE)
    result = run_cli(command[0], path, *command[1:], "--set", "N=1000000000000")
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    assert "wide.nn:1:1: error: running this model with N = 1000000000000 would allocate about" in result.stderr
    assert "of memory this machine has; the largest array, X [N, 1000], takes" in result.stderr


def test_the_estimate_counts_params_inputs_and_every_value(tmp_path: Path, monkeypatch) -> None:
    import nncompile.evaluate as evaluate

    path = write_nn(tmp_path, "wide.nn", WIDE)
    ev = evaluate_file(path, {"N": "2"}, dtype="float64")
    arrays = {id(a): a for a in [*ev.params.values(), *ev.inputs.values(), *ev.values.values(), *ev.grads.values()]}
    held = sum(a.nbytes for a in arrays.values() if isinstance(a, np.ndarray) and a.base is None)
    monkeypatch.setattr(evaluate, "memory_limit", lambda: held - 1)
    with pytest.raises(evaluate.NNError, match=r"would allocate about .* more than the .* of memory"):
        evaluate_file(path, {"N": "2"}, dtype="float64")
    monkeypatch.setattr(evaluate, "memory_limit", lambda: 3 * held)   # a fair estimate: within 3x
    evaluate_file(path, {"N": "2"}, dtype="float64")


def test_a_huge_param_is_refused_where_it_is_declared(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "p.nn", """
        input x: float[500]
        param W: [500, 2000000000] = normal()   # 10**12 entries: within the size limits, not in memory
        loss = sum(x @ W)
        minimize loss
    """)
    with pytest.raises(Exception) as info:
        evaluate_file(path)
    assert type(info.value).__name__ == "NNError" and info.value.loc is not None
    assert "of memory this machine has" in info.value.message


# ---- a trained model's values, in the mode asked for -------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_eval_mode_values_are_what_forward_computes_and_train_mode_draws_dropout() -> None:
    from nncompile.compiler import compile_and_load

    module = compile_and_load(EXAMPLES / "batchnorm_mlp.nn")
    params, state = module.init_params(5), module.init_state(5)
    state = {k: v + 0.25 for k, v in state.items()}   # running statistics unlike the batch's own
    rng = np.random.default_rng(0)
    inputs = {"X": rng.standard_normal((3, 32)).astype(np.float32), "y": np.array([0, 1, 2])}
    evaluated = evaluate_file(EXAMPLES / "batchnorm_mlp.nn", mode="eval", params=params, state=state, inputs=inputs)
    assert evaluated.mode == "eval"
    named = evaluated.named_values()
    np.testing.assert_allclose(named["scores"], module.forward(params, state, **inputs)["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(named["X"], inputs["X"])
    training = evaluate_file(EXAMPLES / "batchnorm_mlp.nn", params=params, state=state, inputs=inputs)
    assert training.mode == "train" and not np.allclose(training.named_values()["scores"], named["scores"])


def test_given_params_and_inputs_replace_the_initialisers_and_random_tensors() -> None:
    from nncompile.compiler import compile_and_load

    module = compile_and_load(EXAMPLES / "digits_mlp.nn")
    params = {k: v + 1.0 for k, v in module.init_params(1).items()}
    X = np.linspace(0, 1, 2 * 64, dtype=np.float32).reshape(2, 64)
    evaluated = evaluate_file(EXAMPLES / "digits_mlp.nn", params=params, inputs={"X": X, "y": np.array([3, 4])},
                              sets={"fc2.b": "[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]"})
    named = evaluated.named_values()
    np.testing.assert_array_equal(named["fc1.W"], params["fc1.W"])
    np.testing.assert_array_equal(named["fc2.b"], np.eye(10, dtype=np.float32)[9])   # --set still wins
    assert named["X"].shape == (2, 64) and named["y"].tolist() == [3, 4]


def test_params_that_do_not_fit_the_model_are_refused() -> None:
    from nncompile.errors import NNError

    with pytest.raises(NNError, match=r"--params do not fit this model \(missing .*fc2.b; unknown W\)"):
        evaluate_file(EXAMPLES / "digits_mlp.nn", params={"W": np.zeros(3), "fc1.W": np.zeros((64, 256)),
                                                         "fc1.b": np.zeros(256), "fc2.W": np.zeros((256, 10))})
    with pytest.raises(NNError, match="--mode must be train or eval"):
        evaluate_file(EXAMPLES / "digits_mlp.nn", mode="test")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_every_traced_value_and_gradient_has_the_module_dtype(example: Path, dtype: str) -> None:
    """The trace is unoptimised, so constants are not folded: an op on two numbers must
    still give a value of the module's dtype (0.5 * reg was float64 in a float32 model)."""
    ev = evaluate_file(example, dtype=dtype)
    floats = {str(v.dtype) for v in [*ev.values.values(), *ev.grads.values()] if np.asarray(v).dtype.kind == "f"}
    assert floats == {dtype}


@pytest.mark.parametrize("loss", ["s / 0", "div(s, 0)", "s ** 2 / 0", "exp(s) / 0"])
def test_a_traced_op_on_two_numbers_gives_inf_where_python_would_raise(tmp_path: Path, loss: str) -> None:
    """Unfolded, the gradient of ``s / 0`` is the seed 1.0 over the literal 0: numpy's inf, as
    the compiled module's, not Python's ZeroDivisionError out of ``nncompile eval``."""
    ev = evaluate_file(write_nn(tmp_path, "m.nn", f"input s = 3\nv = {loss}\nminimize v\n"))
    assert np.isinf(ev.named_values()["v"]) and np.isinf(ev.input_and_param_grads()["s"])
    assert {np.asarray(g).dtype for g in ev.grads.values()} == {np.dtype("float32")}


def test_an_output_that_is_another_name_for_a_value_is_printed_after_it(tmp_path: Path, run_cli) -> None:
    path = write_nn(tmp_path, "alias.nn", """
        input X: float[N, 4]
        param W: [4, 2] = ones()
        scores = X @ W
        out = scores
        loss = sum(out)
        output out
        minimize loss
    """)
    named = evaluate_file(path, {"N": "1"}).named_values()
    assert list(named) == ["X", "W", "scores", "out", "loss"]
    assert np.array_equal(named["out"], named["scores"])
    result = run_cli("eval", path, "--set", "N=1")
    assert result.returncode == 0 and "  out    = [[" in result.stdout, result


def test_a_set_dim_the_given_examples_contradict_is_refused(tmp_path: Path) -> None:
    """The examples fix their batch: N=3 against 5 of them was dropped without a word."""
    from nncompile.errors import NNError

    path = write_nn(tmp_path, "m.nn", """
        input X: float[N, 2]
        param w: [2] = ones()
        loss = sum(X * w)
        minimize loss
    """)
    examples = {"X": np.ones((5, 2))}
    with pytest.raises(NNError, match=r"--set N=3: N is 5 here, the number of examples given; --batch chooses"):
        evaluate_file(path, {"N": "3"}, inputs=examples)
    assert evaluate_file(path, {"N": "05"}, inputs=examples).inputs["X"].shape == (5, 2)
    with pytest.raises(NNError, match=r"--set N=x: the dim N must be a positive integer"):
        evaluate_file(path, {"N": "x"}, inputs=examples)
