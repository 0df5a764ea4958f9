"""The --space text of nncompile sweep (nncompile/sweep/space.py) and what a trial may vary
(nncompile/sweep/settings.py): parsing, its round trip, and errors that say what is wrong
and quote where. None of it needs Optuna."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from nncompile.compiler import compile_and_load
from nncompile.errors import NNError
from nncompile.sweep.settings import Model, check_bounds, trial_settings
from nncompile.sweep.space import REAL, WHOLE, Dimension, Kind, Space

from conftest import write_nn

KNOWN = {"lr": REAL, "reg": REAL, "batch-size": WHOLE, "optimizer": Kind("word", ("sgd", "adam"))}


def test_the_example_space_parses_into_its_dimensions() -> None:
    space = Space.parse("lr=loguniform(1e-4,1e-1), reg=uniform(0,1e-2),batch-size=choice(32,64,128)", KNOWN)
    assert space.dimensions == (Dimension("lr", "loguniform", (1e-4, 1e-1)), Dimension("reg", "uniform", (0, 1e-2)),
                                Dimension("batch-size", "choice", (32, 64, 128)))
    assert [d.log for d in space.dimensions] == [True, False, False]
    assert Space.parse("optimizer=choice(sgd,adam),batch-size=logint(8,512)", KNOWN).names == ["optimizer",
                                                                                                "batch-size"]


finite = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)


@st.composite
def dimensions(draw: st.DrawFn, name: str) -> Dimension:
    kind = KNOWN[name]
    if kind is WHOLE:
        low = draw(st.integers(1, 10 ** 6))
        dist = draw(st.sampled_from(["int", "logint", "choice"]))
        if dist == "choice":
            return Dimension(name, "choice", tuple(draw(st.lists(st.integers(1, 10 ** 6), min_size=1, max_size=5,
                                                                 unique=True))))
        return Dimension(name, dist, (low, low + draw(st.integers(1, 10 ** 6))))
    if kind is REAL:
        low, width = draw(finite), draw(finite)
        high = low + width
        if not low < high or not math.isfinite(high):
            high = low * 2
        dist = draw(st.sampled_from(["uniform", "loguniform", "choice"]))
        if dist == "choice":
            return Dimension(name, "choice", tuple(draw(st.lists(finite, min_size=1, max_size=5, unique=True))))
        return Dimension(name, dist, (low, high))
    return Dimension(name, "choice", tuple(draw(st.lists(st.sampled_from(kind.words), min_size=1, unique=True))))


@st.composite
def spaces(draw: st.DrawFn) -> Space:
    names = draw(st.lists(st.sampled_from(sorted(KNOWN)), min_size=1, unique=True))
    return Space(tuple(draw(dimensions(name)) for name in names))


@given(spaces())
def test_a_space_written_out_parses_back_to_itself(space: Space) -> None:
    assert Space.parse(str(space), KNOWN) == space


@pytest.mark.parametrize("text, quoted, says", [
    ("lr=logunifrm(1e-4,1e-1)", '"lr=logunifrm(1e-4,1e-1)"',
     "no distribution 'logunifrm' (in \"lr=logunifrm(1e-4,1e-1)\") (did you mean loguniform?); there is uniform("),
    ("learning_rate=uniform(0,1)", "'learning_rate'", "the ones that exist: batch-size, lr, optimizer, reg"),
    ("lr=loguniform(1e-4,1e-1", '"lr=loguniform(1e-4,1e-1"', "a '(' is never closed"),
    ("lr=loguniform(0,1e-1)", '"lr=loguniform(0,1e-1)"', "a log scale needs LOW above 0"),
    ("lr=uniform(0.1,0.01)", '"lr=uniform(0.1,0.01)"', "LOW must be below HIGH"),
    ("lr=uniform(0.1)", '"lr=uniform(0.1)"', "uniform takes two numbers, LOW and HIGH"),
    ("batch-size=uniform(8,64)", '"batch-size=uniform(8,64)"', "batch-size is a whole number"),
    ("batch-size=choice(32,6.5)", '"batch-size=choice(32,6.5)"', "batch-size cannot be 6.5"),
    ("optimizer=choice(sgd,adamm)", '"optimizer=choice(sgd,adamm)"', "it takes one of sgd, adam"),
    ("optimizer=uniform(0,1)", '"optimizer=uniform(0,1)"', "optimizer is a name, not a number"),
    ("lr=choice(0.1,1e999)", '"1e999"', "neither a finite number nor a name"),
    ("lr=uniform(0,1),lr=uniform(0,2)", '"lr=uniform(0,2)"', "lr is given twice"),
    ("lr=uniform(0,1),,reg=uniform(0,1)", '"lr=uniform(0,1),,reg=uniform(0,1)"', "an empty item"),
    ("lr 0.1", '"lr 0.1"', "cannot read"),
])
def test_a_mistake_in_the_space_is_quoted_and_explained(text: str, quoted: str, says: str) -> None:
    with pytest.raises(NNError) as error:
        Space.parse(text, KNOWN)
    message = error.value.format()
    assert message.startswith("nncompile: error: --space") and quoted in message and says in message, message


def test_a_flag_spelled_with_an_underscore_is_pointed_to_its_dash_spelling() -> None:
    with pytest.raises(NNError, match=r"did you mean batch-size\?"):
        Space.parse("batch_size=choice(32,64)", KNOWN)


MODEL = """
    const D = 4, C = 3
    const reg = 1e-3
    const H = 8
    const name_of = -1
    import "layers.nn"
    input X: float[N, D]
    input y: int[N]
    h = relu(dense(X, out=H) as fc1)
    scores = dense(h, out=C) as fc2
    output scores
    loss = softmax_cross_entropy(scores, y) + reg * sum(fc1.W ** 2)
    minimize loss
"""
LAYERS = """
    layer dense(x: [B, K], out: int) -> [B, out] {
        param W: [K, out] = he()
        param b: [out] = zeros()
        return x @ W + b
    }
"""


def test_the_model_constants_that_are_numbers_are_hyperparameters_beside_the_training_flags(tmp_path) -> None:
    write_nn(tmp_path / "lib", "layers.nn", LAYERS)
    known = Model.read(write_nn(tmp_path / "lib", "model.nn", MODEL)).hyperparameters()
    assert known["reg"] is REAL and known["H"] is WHOLE and known["D"] is WHOLE
    assert "name_of" not in known   # -1 is an expression, not a number written as it is
    assert {"lr", "batch-size", "optimizer", "momentum", "weight-decay", "epochs"} <= set(known)


def test_a_trial_trains_a_copy_with_its_constants_set_and_its_imports_still_found(tmp_path) -> None:
    write_nn(tmp_path / "lib", "layers.nn", LAYERS)
    model = Model.read(write_nn(tmp_path / "lib", "model.nn", MODEL))
    assert model.with_values({"lr": 0.1}, tmp_path / "unused.nn") == model.path   # no constant: the file itself
    copy = model.with_values({"reg": 0.25, "H": 5, "lr": 0.1}, tmp_path / "elsewhere" / "trial.nn")
    text = copy.read_text()
    assert "const reg = 0.25\n" in text and "const H = 5\n" in text and "const D = 4, C = 3" in text
    module = compile_and_load(copy, dtype="float64")
    assert module.PARAMS["fc1.W"][0] == (4, 5)   # H = 5 reached the layer


def test_a_trials_values_override_the_fixed_flags_as_nncompile_train_reads_them() -> None:
    settings, config = trial_settings({"epochs": 3, "lr": 0.5, "optimizer": "sgd"},
                                      {"lr": 0.01, "batch-size": 16, "momentum": 0.8, "reg": 1.0})
    assert (config.epochs, config.lr, config.batch_size, config.optimizer) == (3, 0.01, 16, "sgd")
    assert config.hyper == {"momentum": 0.8} and settings["data"] == "digits"


def test_a_space_whose_end_the_trainer_refuses_is_refused_before_any_trial() -> None:
    with pytest.raises(NNError, match="--space: batch-size=0 is no setting the trainer takes: --batch-size must"):
        check_bounds({}, [{"batch-size": 0}, {"batch-size": 8}])


def test_a_trial_trains_with_the_config_nncompile_train_builds_from_the_same_flags(monkeypatch, tmp_path) -> None:
    import nncompile.train.command as command
    from nncompile.cli import build_parser, main
    from nncompile.sweep.cli import _fixed_settings

    given: dict = {}

    def run(model, **kwargs):
        given.update(kwargs)
        raise KeyboardInterrupt   # nncompile train ends there, with 130

    monkeypatch.setattr(command, "run", run)
    flags = ["--optimizer", "nesterov", "--momentum", "0.8", "--epochs", "7", "--batch-size", "16", "--map",
             "X=pixels", "--val-split", "0.2", "--schedule", "step:every=2,gamma=0.5", "--clip-norm", "1.5",
             "--seed", "3", "--dtype", "float64"]
    assert main(["train", "m.nn", *flags, "--lr", "0.05", "--val-every", "1", "--out", str(tmp_path / "run")]) == 130
    args = build_parser().parse_args(["sweep", "m.nn", "--space", "lr=uniform(0.01,0.1)", *flags])
    settings, config = trial_settings(_fixed_settings(args), {"lr": 0.05})
    assert config == given["config"] and config.hyper == {"momentum": 0.8}
    assert (settings["data"], settings["map"], settings["test_data"]) == \
        (given["data"], given["mapping"], given["test_data"])
