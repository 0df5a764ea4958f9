"""Param initialisers: fan-in and fan-out read from the param's shape, drawn values whose
statistics match the formulas, seeding that reproduces, and streams that differ per param."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nncompile
from nncompile.elaborate import elaborate_file
from nncompile.errors import NNError
from nncompile.initializers import INITIALIZERS, fans

from conftest import write_nn

FAN_IN, FAN_OUT = 300, 200   # a [300, 200] weight: 60 000 draws, so statistics are tight


def _draw(tmp_path: Path, init: str, shape: str = f"[{FAN_IN}, {FAN_OUT}]", seed: int = 0, name: str = "W",
          dtype: str = "float64") -> np.ndarray:
    path = write_nn(tmp_path, f"{abs(hash((init, shape, name)))}.nn",
                    f"input x: float[{FAN_OUT}]\nparam {name}: {shape} = {init}\ny = sum({name}) + sum(x)\noutput y\n")
    return nncompile.compile_and_load(path, dtype=dtype).init_params(seed)[name]


def test_fans_follow_the_papers() -> None:
    assert fans((FAN_IN, FAN_OUT)) == (FAN_IN, FAN_OUT)       # [K, out]: fan-in K
    assert fans((3, 5, 7)) == (15, 7)                          # all but the last dim feed one output
    assert fans((10,)) == (1, 10)                              # a bias
    assert fans(()) == (1, 1)


GAUSSIAN = {   # initialiser -> the standard deviation it must draw with
    "normal()": 0.01,
    "normal(0.5)": 0.5,
    "normal(std=0.2, mean=3.0)": 0.2,
    "randn(0.1)": 0.1,
    "xavier()": np.sqrt(2 / (FAN_IN + FAN_OUT)),
    "glorot_normal()": np.sqrt(2 / (FAN_IN + FAN_OUT)),
    "xavier_normal()": np.sqrt(2 / (FAN_IN + FAN_OUT)),
    "he()": np.sqrt(2 / FAN_IN),
    "kaiming()": np.sqrt(2 / FAN_IN),
    "he_normal()": np.sqrt(2 / FAN_IN),
    "kaiming_normal()": np.sqrt(2 / FAN_IN),
    "lecun()": np.sqrt(1 / FAN_IN),
    "lecun_normal()": np.sqrt(1 / FAN_IN),
}

UNIFORM = {    # initialiser -> (low, high)
    "uniform()": (-0.05, 0.05),
    "uniform(-1, 3)": (-1.0, 3.0),
    "uniform(a=0.5, b=0.75)": (0.5, 0.75),
    "xavier_uniform()": (-np.sqrt(6 / (FAN_IN + FAN_OUT)), np.sqrt(6 / (FAN_IN + FAN_OUT))),
    "glorot_uniform()": (-np.sqrt(6 / (FAN_IN + FAN_OUT)), np.sqrt(6 / (FAN_IN + FAN_OUT))),
    "he_uniform()": (-np.sqrt(6 / FAN_IN), np.sqrt(6 / FAN_IN)),
    "kaiming_uniform()": (-np.sqrt(6 / FAN_IN), np.sqrt(6 / FAN_IN)),
    "lecun_uniform()": (-np.sqrt(3 / FAN_IN), np.sqrt(3 / FAN_IN)),
}


@pytest.mark.parametrize("init", list(GAUSSIAN))
def test_gaussian_initialisers_draw_with_the_formulas_std(init: str, tmp_path: Path) -> None:
    W = _draw(tmp_path, init)
    mean = 3.0 if "mean=3.0" in init else 0.0
    std = GAUSSIAN[init]
    assert W.shape == (FAN_IN, FAN_OUT) and W.dtype == np.float64
    # 60 000 draws: the sample std is within 1.5% and the mean within 5 standard errors
    assert abs(W.std() / std - 1) < 0.015, (W.std(), std)
    assert abs(W.mean() - mean) < 5 * std / np.sqrt(W.size)


@pytest.mark.parametrize("init", list(UNIFORM))
def test_uniform_initialisers_fill_their_interval(init: str, tmp_path: Path) -> None:
    W = _draw(tmp_path, init)
    low, high = UNIFORM[init]
    width = high - low
    assert W.min() >= low and W.max() < high
    assert W.min() - low < width * 1e-3 and high - W.max() < width * 1e-3   # reaches both ends
    assert abs(W.std() / (width / np.sqrt(12)) - 1) < 0.015


@pytest.mark.parametrize(("init", "value"), [("zeros()", 0.0), ("ones()", 1.0), ("constant(0.25)", 0.25),
                                             ("constant(value=-2)", -2.0), ("0.5", 0.5)])
def test_constant_initialisers(init: str, value: float, tmp_path: Path) -> None:
    W = _draw(tmp_path, init, shape="[3, 4]")
    np.testing.assert_array_equal(W, np.full((3, 4), value))


def test_a_literal_value_initialises_exactly(tmp_path: Path) -> None:
    W = _draw(tmp_path, "[[1, 2], [3, 4]]", shape="[2, 2]")
    np.testing.assert_array_equal(W, [[1, 2], [3, 4]])


def test_he_reads_fan_in_from_a_3d_shape(tmp_path: Path) -> None:
    W = _draw(tmp_path, "he()", shape="[20, 30, 100]")
    assert abs(W.std() / np.sqrt(2 / 600) - 1) < 0.015


def test_same_seed_same_params_and_new_seed_new_params(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", """
        input x: float[N, 8]
        param W1: [8, 8] = he()
        param W2: [8, 8] = he()
        param b: [8] = uniform(-1, 1)
        y = sum(x @ W1 @ W2 + b)
        output y
    """)
    m = nncompile.compile_and_load(path)
    again = nncompile.compile_and_load(path)          # a fresh compile: nothing cached in between
    a, b, c = m.init_params(0), again.init_params(0), m.init_params(1)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name]), name
    assert not np.array_equal(a["W1"], a["W2"]), "two params with one shape and initialiser must differ"
    assert a["W1"].dtype == np.float32     # the model's dtype


def test_adding_a_param_leaves_the_others_unchanged(tmp_path: Path) -> None:
    """Each param draws from its own stream, keyed by its name."""
    before = _draw(tmp_path, "normal(1.0)", shape="[5, 5]", seed=3)
    path = write_nn(tmp_path, "more.nn", "input x: float[5]\nparam A: [7] = normal(1.0)\n"
                                         "param W: [5, 5] = normal(1.0)\ny = sum(W) + sum(A) + sum(x)\noutput y\n")
    after = nncompile.compile_and_load(path, dtype="float64").init_params(3)["W"]
    np.testing.assert_array_equal(before, after)


def test_layer_params_are_drawn_per_instance(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", """
        import nn
        input x: float[N, 6]
        h = dense(x, out=6) as fc1
        g = dense(h, out=6) as fc2
        y = sum(g)
        output y
    """)
    p = nncompile.compile_and_load(path).init_params(0)
    assert not np.array_equal(p["fc1.W"], p["fc2.W"])
    np.testing.assert_array_equal(p["fc1.b"], np.zeros(6))


def test_model_records_each_params_fans(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", "input x: float[N, 6]\nparam W: [6, 4] = xavier()\nparam b: [4] = zeros()\n"
                                      "y = sum(x @ W + b)\noutput y\n")
    inits = elaborate_file(path).param_inits
    assert (inits["W"].init, inits["W"].fan_in, inits["W"].fan_out) == ("xavier", 6, 4)
    assert (inits["b"].fan_in, inits["b"].fan_out) == (1, 4)


@pytest.mark.parametrize(("init", "message"), [
    ("normal(-0.1)", "normal(): std must be >= 0, not -0.1"),
    ("uniform(1, -1)", "uniform(): needs a < b, but a = 1 and b = -1"),
    ("uniform(0.5, 0.5)", "uniform(): needs a < b"),
    ("normal(scale=2)", "normal() has no argument 'scale'; it takes std, mean"),
    ("he(2)", "he() takes 0 argument(s)"),
    ("normal(std=[1, 2])", "normal(): std must be a number, not [1, 2]"),
    ("normal(std=N)", "normal(): std must be a number, not 'N'"),
    ("normal(std=1e999)", "the number 1e999 overflows float64"),
    ("xaiver()", "unknown initialiser 'xaiver'; did you mean 'xavier'?"),
    ("gaussian()", "unknown initialiser 'gaussian'; the initialisers are constant, glorot, "),
])
def test_bad_initialiser_arguments_are_compile_errors(init: str, message: str, tmp_path: Path) -> None:
    path = write_nn(tmp_path, "m.nn", f"input x: float[3]\ninput z: float[N]\nparam W: [3] = {init}\n"
                    "y = sum(W * x) + sum(z)\noutput y\n")
    with pytest.raises(NNError) as info:
        elaborate_file(path)
    assert message in info.value.message and info.value.loc.line == 3


def test_every_initialiser_has_a_doc() -> None:
    for name, spec in INITIALIZERS.items():
        assert spec.doc, name
