"""grad() in a .nn file: d f / d x built where it is written, usable by what follows, and
differentiated again by the model's own backward pass (double backprop).

The oracles are independent of grad(): the same model's value_and_grad() (the first-order
gradient the compiler has always made), central differences of the compiled module, and, in
tests/test_differential.py, PyTorch's double backward.
"""
from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from nncompile.compiler import compile_and_load
from nncompile.errors import NNError, NNWarning
from nncompile.elaborate import elaborate_file
from nncompile.ops import REGISTRY

from conftest import ROOT, numeric_grad, write_nn

MLP = """
    input X: float[N, 3]
    input y: int[N]
    param W1: [3, 5] = xavier()
    param b1: [5] = normal(0.3)
    param W2: [5, 2] = xavier()
    h = tanh(X @ W1 + b1)
    scores = h @ W2
    data_loss = softmax_cross_entropy(scores, y)
"""


def _inputs(rng: np.random.Generator, n: int = 4) -> dict:
    return {"X": rng.standard_normal((n, 3)), "y": rng.integers(0, 2, n)}


def _compile(tmp_path: Path, text: str, name: str = "m.nn"):
    return compile_and_load(write_nn(tmp_path, name, text), dtype="float64")


def test_the_saliency_map_is_the_gradient_value_and_grad_gives(tmp_path: Path) -> None:
    """grad(data_loss, X) as an output equals d data_loss / d X of the plain model."""
    plain = _compile(tmp_path, MLP + "    minimize data_loss\n", "plain.nn")
    saliency = _compile(tmp_path, MLP + "    s = grad(data_loss, X)\n    output s\n    minimize data_loss\n")
    rng = np.random.default_rng(0)
    params, inputs = plain.init_params(1), _inputs(rng)
    expected = plain.value_and_grad(params, **inputs)[1]["X"]
    np.testing.assert_allclose(saliency.forward(params, **inputs)["s"], expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(saliency.value_and_grad(params, **inputs)[0]["s"], expected, rtol=1e-12, atol=1e-14)


def test_a_gradient_penalty_is_differentiated_again(tmp_path: Path) -> None:
    """loss = data_loss + lam * sum(grad(data_loss, X) ** 2): its gradient (a second
    derivative of data_loss) against central differences of the compiled loss."""
    module = _compile(tmp_path, MLP + """
    penalty = sum(grad(data_loss, X) ** 2)
    loss = data_loss + 0.5 * penalty
    output penalty
    minimize loss
""")
    rng = np.random.default_rng(1)
    params, inputs = module.init_params(2), _inputs(rng)
    outputs, grads = module.value_and_grad(params, **inputs)
    assert outputs["penalty"] > 0
    for name in ("W1", "b1", "W2"):
        numeric = numeric_grad(lambda: float(module.value_and_grad(params, **inputs)[0]["loss"]), params[name])
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-9, err_msg=name)
    numeric = numeric_grad(lambda: float(module.value_and_grad(params, **inputs)[0]["loss"]), inputs["X"])
    np.testing.assert_allclose(grads["X"], numeric, rtol=1e-6, atol=1e-9)


def test_the_second_derivative_of_a_small_mlp_with_respect_to_its_input(tmp_path: Path) -> None:
    """A physics-style residual: u(x) an MLP of a scalar x, u'' from grad() twice, against
    central differences of u' (itself checked against differences of u)."""
    module = _compile(tmp_path, """
        input x: float[N, 1]
        param W1: [1, 8] = normal(1.0)
        param b1: [8] = normal(0.5)
        param W2: [8, 1] = normal(1.0)
        u = tanh(x @ W1 + b1) @ W2
        du = grad(sum(u), x)
        d2u = grad(sum(du), x)
        residual = mean((d2u + u) ** 2)
        output u, du, d2u
        minimize residual
    """)
    params = module.init_params(3)
    x = np.linspace(-1, 1, 5).reshape(5, 1)
    out = module.forward(params, x=x)

    def at(name: str, shift: float) -> np.ndarray:
        return module.forward(params, x=x + shift)[name]
    eps = 1e-5
    np.testing.assert_allclose(out["du"], (at("u", eps) - at("u", -eps)) / (2 * eps), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(out["d2u"], (at("du", eps) - at("du", -eps)) / (2 * eps), rtol=1e-7, atol=1e-9)
    grads = module.value_and_grad(params, x=x)[1]
    numeric = numeric_grad(lambda: float(module.forward(params, x=x)["residual"]), params["W1"])
    np.testing.assert_allclose(grads["W1"], numeric, rtol=1e-6, atol=1e-9)


def test_grad_of_a_list_is_the_gradients_flattened_and_concatenated(tmp_path: Path) -> None:
    module = _compile(tmp_path, MLP + """
    g = grad(data_loss, [W1, b1])
    norm2 = sum(g ** 2)
    output g, norm2
    minimize data_loss
""")
    rng = np.random.default_rng(4)
    params, inputs = module.init_params(5), _inputs(rng)
    outputs, grads = module.value_and_grad(params, **inputs)
    expected = np.concatenate([grads["W1"].reshape(-1), grads["b1"]])
    assert outputs["g"].shape == (20,)
    np.testing.assert_allclose(outputs["g"], expected, rtol=1e-12, atol=1e-15)
    assert float(outputs["norm2"]) == pytest.approx(float(np.sum(expected ** 2)), rel=1e-12)


def test_grad_with_respect_to_an_intermediate_value(tmp_path: Path) -> None:
    module = _compile(tmp_path, MLP + "    gh = grad(data_loss, h)\n    output gh\n    minimize data_loss\n")
    rng = np.random.default_rng(6)
    params, inputs = module.init_params(7), _inputs(rng)
    gh = module.forward(params, **inputs)["gh"]
    scores_grad = module.value_and_grad(params, **inputs)[1]   # d/d W2 = h^T (d/d scores) ...
    assert gh.shape == (4, 5)
    # ... and d/d h = (d/d scores) W2^T: so h^T gh = (d/dW2) W2^T
    h = np.tanh(inputs["X"] @ params["W1"] + params["b1"])
    np.testing.assert_allclose(h.T @ gh, scores_grad["W2"] @ params["W2"].T, rtol=1e-10, atol=1e-12)


def test_a_gradient_the_expression_does_not_depend_on_is_zero_with_a_warning(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", """
        input x: float[3]
        input z: float[2]
        s = sum(x * x)
        g = grad(s, z)
        output g
    """)
    with pytest.warns(NNWarning) as caught:
        module = compile_and_load(path, dtype="float64")
    text = str(caught[0].message)
    assert text.startswith(f"{path}:4:13: warning: this does not depend on 'z': its gradient is zero"), text
    assert text.splitlines()[1:] == ["    g = grad(s, z)", "                ^"]
    assert np.array_equal(module.forward({}, x=np.ones(3), z=np.ones(2))["g"], np.zeros(2))


def test_a_warning_is_printed_once_though_check_elaborates_the_model_more_than_once(tmp_path: Path,
                                                                                    run_cli) -> None:
    write_nn(tmp_path, "m.nn", "input x: float[3]\ninput z: float[2]\ng = grad(sum(x), z)\n"
                               "loss = sum(x * x) + sum(g)\nminimize loss\n")
    result = run_cli("check", "m.nn")
    assert result.returncode == 0 and result.stderr.count("warning: this does not depend on 'z'") == 1, result


def test_the_warning_is_printed_like_an_error_by_the_cli(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", "input x: float[3]\ninput z: float[2]\ng = grad(sum(x), z)\noutput g\n")
    result = run_cli("check", "m.nn")
    assert result.returncode == 0, result
    assert result.stderr == "m.nn:3:18: warning: this does not depend on 'z': its gradient is zero\n" \
                            "    g = grad(sum(x), z)\n                     ^\n", result


ERRORS = {
    "grad of a non-scalar": ("g = grad(x * 2, x)", "grad() differentiates a float scalar, but this is float[3]; "
                             "take sum() or mean() of it first", "x * 2"),
    "with respect to an int": ("g = grad(sum(x), k)", "'k' is int[2]: only floats have gradients", "k)"),
    "with respect to an expression": ("g = grad(sum(x), x * 2)", "grad() differentiates with respect to a name",
                                      "x * 2)"),
    "one argument": ("g = grad(sum(x))", "grad() takes 2 arguments", "grad("),
    "a keyword": ("g = grad(sum(x), x, order=2)", "grad() takes no keyword arguments", "order"),
    "an empty list": ("g = grad(sum(x), [])", "grad() needs something to differentiate", "[]"),
    "a list with a batch dim": ("g = grad(sum(X) + sum(x), [x, X])", "each needs a fixed shape, but 'X' is [N, 3]", "X])"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_a_wrong_grad_call_is_a_located_error(case: str, tmp_path: Path) -> None:
    line, message, points_at = ERRORS[case]
    path = write_nn(tmp_path, "m.nn", f"input x: float[3]\ninput k: int[2]\ninput X: float[N, 3]\n{line}\noutput g\n")
    with pytest.raises(NNError) as caught:
        elaborate_file(path)
    error = caught.value
    assert error.loc is not None and error.loc.line == 4, error.format()
    assert message in error.message, error.message
    assert line[error.loc.col - 1:].startswith(points_at), error.format()


def test_a_second_derivative_an_op_declares_it_lacks_is_a_located_error(tmp_path: Path, monkeypatch) -> None:
    """An op without a gradient rule of its own that says why (``no_second_order``): the
    model that needs its derivative is told where, not an internal assertion."""
    tanh = REGISTRY["tanh"]
    monkeypatch.setitem(REGISTRY, "tanh", dataclasses.replace(tanh, vjp=None, no_second_order="a test says so"))
    path = write_nn(tmp_path, "m.nn", "input x: float[3]\nt = tanh(x)\ng = grad(sum(t), x)\noutput g\n")
    with pytest.raises(NNError, match="needs the second derivative of tanh, which has none: a test says so") as caught:
        elaborate_file(path)
    assert caught.value.loc.line == 2 and re.match(r"tanh", "t = tanh(x)"[caught.value.loc.col - 1:])


def test_a_layer_named_grad_is_called_as_a_layer(tmp_path: Path) -> None:
    module = _compile(tmp_path, """
        layer grad(x: [K]) -> [K] {
            return x * 2
        }
        input x: float[3]
        y = grad(x)
        output y
    """)
    np.testing.assert_array_equal(module.forward({}, x=np.arange(3.0))["y"], [0.0, 2.0, 4.0])


def test_the_gradient_penalty_example_is_checked() -> None:
    """examples/gradient_penalty.nn: double backprop, its gradient against differences."""
    from nncompile.gradcheck import Kinks, check_gradients, summarize

    path = ROOT / "examples" / "gradient_penalty.nn"
    module = compile_and_load(path, dtype="float64")
    rng = np.random.default_rng(0)
    inputs = {"X": rng.standard_normal((6, 8)), "y": rng.integers(0, 3, 6)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no warning: every grad() has a dependence
        results = summarize(check_gradients(module, module.init_params(0), inputs, kinks=Kinks.of_file(path)))
    assert set(results) == {"W1", "b1", "W2", "b2", "X"}
    assert all(r.status == "ok" for r in results.values()), results


def test_eval_lists_a_named_grad_among_the_values() -> None:
    from nncompile.evaluate import evaluate_file

    ev = evaluate_file(ROOT / "examples" / "gradient_penalty.nn")
    values = ev.named_values()
    assert list(values)[-4:] == ["data_loss", "saliency", "penalty", "loss"]
    np.testing.assert_allclose(values["penalty"], np.sum(values["saliency"] ** 2) / values["X"].shape[0], rtol=1e-6)
