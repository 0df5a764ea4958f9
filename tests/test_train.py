"""Training (nncompile/train): schedules, the trainer and its sanity checks, checkpoints that
resume exactly, and ``nncompile train`` end to end on tiny runs."""
from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import EXAMPLES, ROOT, cli, write_nn
from test_gradcheck import DEEP

from nncompile.compiler import compile_file, load_module
from nncompile.errors import NNError
from nncompile.train import TrainConfig, Trainer, make_schedule, run
from nncompile.train.checkpoint import load_checkpoint
from nncompile.train.data import bind, load_source
from nncompile.train.trainer import Objective

MLP = """
    const D = 4, H = 16, C = 3
    input X: float[N, D]
    input y: int[N]
    layer affine(x: [B, K], out: int) -> [B, out] {
        param W: [K, out] = he()
        param b: [out] = zeros()
        return x @ W + b
    }
    h = relu(affine(X, out=H) as fc1)
    scores = affine(h, out=C) as fc2
    output scores
    data_loss = softmax_cross_entropy(scores, y)
    loss = data_loss + 1e-4 * sum(fc1.W ** 2)
    output data_loss
    minimize loss
"""

# Batch norm (running statistics as model state) and dropout (masks from the caller's generator).
BN_DROPOUT = """
    const D = 4, H = 16, C = 3
    input X: float[N, D]
    input y: int[N]
    param W1: [D, H] = he()
    param gamma: [H] = ones()
    param beta: [H] = zeros()
    state running_mean: [H] = zeros()
    state running_var: [H] = ones()
    a = X @ W1
    train {
        mu = mean(a, axis=0)
        var = mean((a - mu) ** 2, axis=0)
        update running_mean = 0.9 * running_mean + 0.1 * mu
        update running_var = 0.9 * running_var + 0.1 * var
    }
    eval {
        mu = running_mean
        var = running_var
    }
    h = dropout(relu(gamma * (a - mu) / sqrt(var + 1e-5) + beta), p=0.3)
    param W2: [H, C] = normal(std=0.01)
    scores = h @ W2
    output scores
    loss = softmax_cross_entropy(scores, y)
    minimize loss
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two small models and a 3-class data set of Gaussian blobs (240 examples)."""
    root = tmp_path_factory.mktemp("train")
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 2.0, (3, 4))
    y = np.repeat(np.arange(3), 80)
    X = centres[y] + rng.standard_normal((240, 4))
    np.savez(root / "blobs.npz", X=X, y=y)
    return {"mlp": write_nn(root, "mlp.nn", MLP), "bn": write_nn(root, "bn.nn", BN_DROPOUT),
            "data": root / "blobs.npz", "root": root}


def small(**changes: Any) -> TrainConfig:
    settings: dict[str, Any] = {"epochs": 4, "batch_size": 16, "test_split": 0.25, "lr": 1e-2}
    settings.update(changes)
    return TrainConfig(**settings)


def npz_dict(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files}


def without_times(path: Path) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# ---- schedules -----------------------------------------------------------------------------------

def test_schedules_follow_their_formulas() -> None:
    lr, spe = 0.1, 10        # 10 steps per epoch
    constant = make_schedule("constant", lr, spe, 20)
    assert constant(0) == constant(199) == lr
    step = make_schedule("step:every=5,gamma=0.5", lr, spe, 20)
    assert [step(s) for s in (0, 49, 50, 99, 100, 150)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125]
    exp = make_schedule("exp:gamma=0.9", lr, spe, 20)
    assert exp(0) == lr and math.isclose(exp(25), lr * 0.9 ** 2.5)
    inv = make_schedule("1/t:k=0.5", lr, spe, 20)
    assert math.isclose(inv(40), lr / (1 + 0.5 * 4))
    cosine = make_schedule("cosine:min_lr=0.01", lr, spe, 20)
    assert cosine(0) == lr and math.isclose(cosine(100), 0.055) and math.isclose(cosine(200), 0.01)
    cyclic = make_schedule("cyclic:min_lr=0.02,half=1", lr, spe, 20)
    values = [cyclic(s) for s in (0, 5, 10, 15, 20, 30)]
    np.testing.assert_allclose(values, [0.02, 0.06, 0.1, 0.06, 0.02, 0.1])


def test_schedule_defaults_and_aliases() -> None:
    assert make_schedule("step", 1.0, 1, 30).describe() == "step:every=10,gamma=0.1"
    assert make_schedule("triangular", 1.0, 1, 30).describe() == "cyclic:min_lr=0.1,half=2"
    assert make_schedule("exponential", 1.0, 1, 30).name == "exp"
    assert make_schedule("cosine", 1.0, 1, 30).depends_on_length


@pytest.mark.parametrize("spec, message", [
    ("warmup", "unknown schedule 'warmup'"),
    ("step:gama=0.5", "bad schedule parameter 'gama=0.5': the step schedule takes every, gamma"),
    ("step:gamma=x", "schedule parameter gamma must be a number"),
    ("step:gamma=2", "gamma must lie in (0, 1]"),
    ("cosine:min_lr=5", "min_lr must lie in [0, lr = 0.1]"),
    ("constant:k=1", "the constant schedule takes no parameters"),
])
def test_bad_schedules(spec: str, message: str) -> None:
    with pytest.raises(NNError) as info:
        make_schedule(spec, 0.1, 10, 10)
    assert message in str(info.value)


# ---- the trainer -------------------------------------------------------------------------------------

def test_a_run_learns_and_writes_its_files(files: dict[str, Path], tmp_path: Path) -> None:
    lines: list[str] = []
    report = run(files["mlp"], data=str(files["data"]), config=small(epochs=6), out=tmp_path / "run",
                 log=lines.append, progress=True)
    assert report.ok and report.test is not None and report.test.acc is not None and report.test.acc > 0.9
    assert (report.train_examples, report.val_examples, report.test_examples) == (162, 18, 60)
    assert sorted(report.files) == sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "normalization.npz" not in report.files     # files are used as they are unless asked
    history = without_times(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert set(history[0]) == {"epoch", "step", "lr", "loss", "acc"}    # 11 steps an epoch: validated every 2nd
    assert set(history[1]) == {"epoch", "step", "lr", "loss", "acc", "val_loss", "val_acc", "val_data_loss"}
    assert history[-1]["loss"] < history[0]["loss"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test"]["acc"] == report.test.acc and summary["epochs"] == 6
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(line.startswith("sanity: initial loss without regularisation") for line in lines)
    assert any(line.startswith("test: loss") for line in lines)


def test_arrays_passed_without_one_the_model_needs_are_asked_for_by_name(files: dict[str, Path]) -> None:
    trainer = Trainer(files["mlp"], small())
    X = bind(load_source(str(files["data"])), trainer.module).arrays["X"]
    with pytest.raises(NNError) as caught:
        trainer.evaluate(trainer.init_state().params, {"X": X})
    assert "no data for the model's input 'y' (int[N]): the arrays given are 'X'; pass one named 'y'" in str(caught.value)
    assert "--map" not in str(caught.value)


def test_initial_loss_is_near_log_c_with_regularisation_off(files: dict[str, Path]) -> None:
    trainer = Trainer(files["mlp"], small())
    data = bind(load_source(str(files["data"])), trainer.module)
    state = trainer.init_state()
    check = trainer.initial_loss_check(state.params, data)
    assert check is not None and check.classes == 3 and check.how == "the model's data_loss output"
    assert math.isclose(check.expected, math.log(3))
    assert check.total_loss > check.data_loss        # the L2 term only adds
    bn = Trainer(files["bn"], small())
    bn_state = bn.init_state()
    check = bn.initial_loss_check(bn_state.params, bind(load_source(str(files["data"])), bn.module), bn_state.model_state)
    assert check is not None and check.ok and check.how == "softmax cross-entropy of the scores"
    assert abs(check.data_loss - math.log(3)) < 0.05


def test_overfit_check_memorises_a_few_examples(files: dict[str, Path]) -> None:
    trainer = Trainer(files["mlp"], small(epochs=200, lr=3e-2))
    data = bind(load_source(str(files["data"])), trainer.module)
    result = trainer.overfit(data, 12)
    assert result.reached and result.examples == 12 and result.epochs < 200
    assert "PASS" in result.show()


SVM = """
    const D = 4, C = 3
    input X: float[N, D]
    input y: int[N]
    param W: [D, C] = normal(std=0.001)
    scores = X @ W
    output scores
    loss = svm_loss(scores, y, delta=DELTA) + 1e-3 * l2(W)
    minimize loss
"""

BINARY = """
    input X: float[N, 4]
    input t: float[N]
    param W: [4, 8] = he()
    param w: [8] = normal(std=0.001)
    logits = relu(X @ W) @ w
    output logits
    loss = sigmoid_cross_entropy(logits, t)
    minimize loss
"""

REGRESSION = """
    input X: float[N, 4]
    input t: float[N]
    param w: [4] = normal(std=0.1)
    param b: [1] = zeros()
    prediction = X @ w + b
    output prediction
    loss = mse(prediction, t)
    minimize loss
"""


def synthetic(tmp_path: Path, name: str, **columns: np.ndarray) -> Any:
    np.savez(tmp_path / f"{name}.npz", **columns)
    return load_source(str(tmp_path / f"{name}.npz"))


@pytest.mark.parametrize("delta", [1.0, 2.5])
def test_the_initial_svm_loss_is_expected_near_c_minus_one_times_delta(tmp_path: Path, files, delta: float) -> None:
    model = write_nn(tmp_path, "svm.nn", SVM.replace("DELTA", str(delta)))
    trainer = Trainer(model, small())
    check = trainer.initial_loss_check(trainer.init_state().params, bind(load_source(str(files["data"])), trainer.module))
    assert check is not None and check.expected == pytest.approx(2 * delta) and check.ok, check.show()
    assert f"expected (3 - 1) * {delta:g} = {2 * delta:.4f} (SVM loss of the scores): ok" in check.show()
    assert check.total_loss > check.data_loss   # the l2 term


def test_a_loss_of_several_loss_ops_has_no_single_expected_initial_loss(tmp_path: Path, files) -> None:
    model = write_nn(tmp_path, "both.nn", SVM.replace("DELTA", "1.0").replace(
        "+ 1e-3 * l2(W)", "+ softmax_cross_entropy(scores, y)"))
    trainer = Trainer(model, small())
    data = bind(load_source(str(files["data"])), trainer.module)
    assert trainer.initial_loss_check(trainer.init_state().params, data) is None
    assert trainer.evaluate(trainer.init_state().params, data).acc is not None   # still a classifier


def test_a_binary_model_expects_log_2_and_gets_an_accuracy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4))
    t = (X[:, 0] + X[:, 1] > 0).astype(np.float64)
    trainer = Trainer(write_nn(tmp_path, "binary.nn", BINARY), small(epochs=30, lr=3e-2))
    data = bind(synthetic(tmp_path, "binary", X=X, t=t), trainer.module)
    state = trainer.init_state()
    check = trainer.initial_loss_check(state.params, data)
    assert check is not None and check.classes == 2 and check.ok, check
    assert "expected log 2 = 0.6931 (sigmoid cross-entropy of the logits)" in check.show()
    before = trainer.evaluate(state.params, data)
    logits = trainer.module.forward(state.params, X=X, t=t)["logits"]
    assert before.acc == pytest.approx(np.mean((logits > 0) == (t > 0.5)))
    trainer.fit(data)
    after = trainer.evaluate(trainer.params, data)
    assert after.acc is not None and after.acc > 0.9 > before.acc


@pytest.mark.parametrize("source", [BINARY, REGRESSION], ids=["binary", "regression"])
def test_normalisation_leaves_a_losss_targets_as_they_are(tmp_path: Path, source: str) -> None:
    """0/1 labels and regression targets reach the loss unscaled; the features are normalised."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 4)) * 5 + 3
    t = (X[:, 0] > 3).astype(np.float64) if source is BINARY else X @ np.array([1.0, -2.0, 0.5, 0.0]) + 7
    data = tmp_path / "d.npz"
    np.savez(data, X=X, t=t)
    report = run(write_nn(tmp_path, "m.nn", source), data=str(data), out=tmp_path / "run",
                 config=small(epochs=1, normalize="standardize"))
    stats = np.load(tmp_path / "run" / "normalization.npz")
    assert set(stats.files) == {"mean/X", "scale/X"}, stats.files
    assert report.ok


def test_accuracy_compares_the_scores_the_loss_reads(tmp_path: Path) -> None:
    """Not the first [N, C] output: here that is a layer of features, of the same shape."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((60, 4)), rng.integers(0, 3, 60)
    trainer = Trainer(write_nn(tmp_path, "m.nn", """
        input X: float[N, 4]
        input y: int[N]
        param W1: [4, 3] = he()
        param W2: [3, 3] = he()
        features = X @ W1
        scores = relu(features) @ W2
        output features, scores
        loss = softmax_cross_entropy(scores, y)
        minimize loss
    """), small())
    params = trainer.init_state().params
    out = trainer.module.forward(params, X=X, y=y)
    assert trainer.evaluate(params, bind(synthetic(tmp_path, "d", X=X, y=y), trainer.module)).acc == \
        pytest.approx(np.mean(out["scores"].argmax(axis=1) == y))
    assert not np.array_equal(out["scores"].argmax(axis=1), out["features"].argmax(axis=1))


def test_overfit_goes_on_until_the_loss_is_small_too(files: dict[str, Path]) -> None:
    """100% accuracy comes long before a small loss: memorised means both."""
    trainer = Trainer(files["mlp"], small(epochs=300, lr=3e-2))
    result = trainer.overfit(bind(load_source(str(files["data"])), trainer.module), 12)
    assert result.reached and result.acc == 1.0
    assert result.loss is not None and result.loss <= 0.05 * math.log(3) == result.target
    assert f"(loss {result.loss:.4f}, the target {result.target:.4f})" in result.show()


def test_overfit_checks_a_regression_model_by_its_loss(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4))
    t = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.3
    trainer = Trainer(write_nn(tmp_path, "regression.nn", REGRESSION), small(epochs=500, lr=5e-2))
    data = bind(synthetic(tmp_path, "regression", X=X, t=t), trainer.module)
    assert trainer.initial_loss_check(trainer.init_state().params, data) is None   # no chance level
    result = trainer.overfit(data, 10)
    assert result.reached and result.acc is None, result.show()
    assert result.loss is not None and result.loss <= 0.05 * np.var(t[np.sort(np.random.default_rng((0, 2)).permutation(40)[:10])])
    assert result.show().startswith("overfit check: training loss ")


def test_overfit_of_a_regression_model_that_cannot_fit_fails(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 4))
    trainer = Trainer(write_nn(tmp_path, "regression.nn", REGRESSION), small(epochs=20, lr=5e-2))
    data = bind(synthetic(tmp_path, "noise", X=X, t=rng.standard_normal(40)), trainer.module)
    result = trainer.overfit(data, 20)   # 20 random targets, 5 parameters
    assert not result.reached and not result.falling
    assert "FAIL: the model cannot even memorise a handful of examples" in result.show()


def test_an_overfit_check_cut_short_while_the_loss_falls_says_to_train_harder(tmp_path: Path) -> None:
    """Too few epochs at too small a rate is not a broken model: the verdict says what to try."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 4))
    trainer = Trainer(write_nn(tmp_path, "regression.nn", REGRESSION), small(epochs=20, lr=1e-2))
    data = bind(synthetic(tmp_path, "line", X=X, t=X @ np.array([1.0, -2.0, 0.5, 3.0])), trainer.module)
    result = trainer.overfit(data, 10)
    assert not result.reached and result.falling
    assert result.show().endswith("FAIL: not memorised yet, but the loss is still falling: train longer (--epochs) "
                                  "or faster (a larger --lr than 0.01) before suspecting the model")
    assert Trainer(write_nn(tmp_path, "regression.nn", REGRESSION), small(epochs=500, lr=5e-2)).overfit(data, 10).reached



@pytest.mark.parametrize("losses, falling", [
    ([1.0, 0.8, 0.6, 0.5, 0.4, 0.3], True),             # cut short: at this pace the target is near
    ([1.0, 0.5, 0.41, 0.4, 0.4, 0.4], False),            # a plateau
    ([1.0, 0.08, 0.3, 0.25, 0.22, 0.21], False),         # a rate too high: bounced back above its best
])
def test_an_overfit_run_counts_as_cut_short_only_while_its_loss_falls_from_its_best(losses, falling) -> None:
    from nncompile.train.trainer import _still_falling

    assert _still_falling(losses, 0.05) is falling

def test_gradient_check_before_training(files: dict[str, Path]) -> None:
    for model in ("mlp", "bn"):
        trainer = Trainer(files[model], small())
        data = bind(load_source(str(files["data"])), trainer.module)
        check = trainer.gradient_check(trainer.init_state().params, data)
        assert check.ok, check.errors
        assert {"fc1.W", "fc2.b"} <= set(check.errors) if model == "mlp" else {"W1", "gamma"} <= set(check.errors)


def test_gradient_check_passes_a_deep_batchnorm_net(tmp_path: Path) -> None:
    """Thirty dense + batch-norm blocks: a fixed step of 1e-6 crosses relu kinks there."""
    model = write_nn(tmp_path, "deep.nn", DEEP)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((16, 8)), y=rng.integers(0, 3, 16))
    trainer = Trainer(model, small(batch_size=8))
    check = trainer.gradient_check(trainer.init_state().params, bind(load_source(str(tmp_path / "data.npz")),
                                                                     trainer.module))
    assert check.ok, check.show()
    assert len(check.errors) == 93 and "worst relative error" in check.show()


def test_gradient_check_fails_a_gradient_that_is_one_percent_off(files: dict[str, Path], monkeypatch) -> None:
    from nncompile.train import trainer as trainer_module

    trainer = Trainer(files["mlp"], small())
    data = bind(load_source(str(files["data"])), trainer.module)
    load = trainer_module.load_module

    def wrong_fc1_W(source: str, name: str) -> ModuleType:
        module = load(source, name)
        right = module.value_and_grad

        def value_and_grad(params, state=None, rng=None, /, **inputs):
            outputs, grads = right(params, state, rng, **inputs)
            return outputs, {**grads, "fc1.W": 1.01 * grads["fc1.W"]}
        module.value_and_grad = value_and_grad
        return module
    monkeypatch.setattr(trainer_module, "load_module", wrong_fc1_W)
    check = trainer.gradient_check(trainer.init_state().params, data)
    assert not check.ok and check.failed == ["fc1.W"], check.show()
    assert "FAILED for fc1.W" in check.show()


def test_early_stopping_keeps_the_best_params(files: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    noise = tmp_path / "noise.npz"      # random labels: the validation loss can only get worse
    np.savez(noise, X=rng.standard_normal((120, 4)), y=rng.integers(0, 3, 120))
    report = run(files["mlp"], data=str(noise), config=small(epochs=40, patience=3, lr=3e-2, val_split=0.3, val_every=1),
                 out=tmp_path / "run")
    assert report.stopped_early and report.epochs == report.best_epoch + 3 < 40
    history = without_times(tmp_path / "run" / "metrics.jsonl")
    best = min(history, key=lambda r: r["val_loss"])
    assert best["epoch"] == report.best_epoch
    assert report.val is not None and math.isclose(report.val.loss, best["val_loss"], rel_tol=1e-6)


def test_a_diverging_run_stops_with_a_clear_error(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(NNError, match="training diverged; try a smaller --lr"):
        run(files["mlp"], data=str(files["data"]), config=small(optimizer="sgd", lr=1e30), out=tmp_path / "run")


# ---- checkpoints and exact resumption --------------------------------------------------------------

class Interrupt(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("model, config", [
    ("mlp", small(epochs=5, optimizer="adam", schedule="cosine", clip_norm=1.0)),
    ("bn", small(epochs=5, optimizer="nesterov", schedule="step:every=2,gamma=0.5")),
])
def test_interrupted_and_resumed_equals_uninterrupted(files: dict[str, Path], tmp_path: Path, model: str,
                                                      config: TrainConfig) -> None:
    whole = run(files[model], data=str(files["data"]), config=config, out=tmp_path / "whole")

    def interrupt(state: Any) -> None:
        if state.step == 27:          # in the middle of epoch 3 (11 steps per epoch)
            raise Interrupt

    with pytest.raises(Interrupt):
        run(files[model], data=str(files["data"]), config=config, out=tmp_path / "cut", on_step=interrupt)
    state, _ = load_checkpoint(tmp_path / "cut" / "checkpoint.npz", ("m", "v"))
    assert state.epoch == 2 and len(without_times(tmp_path / "cut" / "metrics.jsonl")) == 2
    resumed = run(files[model], data=str(files["data"]), config=config, out=tmp_path / "cut", resume=True)

    for name in ("params.npz", "checkpoint.npz") + (("state.npz",) if model == "bn" else ()):
        a, b = npz_dict(tmp_path / "whole" / name), npz_dict(tmp_path / "cut" / name)
        assert a.keys() == b.keys()
        for key in a:
            if key not in ("meta", "history"):   # these hold the seconds each epoch took
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")
    assert without_times(tmp_path / "whole" / "metrics.jsonl") == without_times(tmp_path / "cut" / "metrics.jsonl")
    assert whole.test == resumed.test


def test_resume_refuses_other_settings_or_a_missing_checkpoint(files: dict[str, Path], tmp_path: Path) -> None:
    run(files["mlp"], data=str(files["data"]), config=small(epochs=1), out=tmp_path / "run")
    with pytest.raises(NNError, match=r"settings differ from the checkpoint's \(lr: was 0.01, now 0.02\)"):
        run(files["mlp"], data=str(files["data"]), config=small(epochs=2, lr=2e-2), out=tmp_path / "run", resume=True)
    with pytest.raises(NNError, match=r"\(optimizer: was 'adam', now 'sgd'\)$"):   # not the modules' digests
        run(files["mlp"], data=str(files["data"]), config=small(epochs=2, optimizer="sgd"), out=tmp_path / "run",
            resume=True)
    changed = tmp_path / "changed.nn"
    changed.write_text(files["mlp"].read_text() + "\n# a comment the module quotes\n")
    with pytest.raises(NNError, match=r"\(the model compiles to another module: its .nn file, or a file it imports"):
        run(changed, data=str(files["data"]), config=small(epochs=2), out=tmp_path / "run", resume=True)
    with pytest.raises(NNError, match="no checkpoint to resume from"):
        run(files["mlp"], data=str(files["data"]), config=small(), out=tmp_path / "empty", resume=True)


# ---- the command line ---------------------------------------------------------------------------------

def load_run_module(run_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("trained", run_dir / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_trains_the_digits_example_end_to_end(tmp_path: Path) -> None:
    result = cli("train", EXAMPLES / "digits_mlp.nn", "--data", "digits", "--epochs", "3", "--out", "run",
                 cwd=tmp_path)
    assert result.returncode == 0, result
    assert "Traceback" not in result.stderr
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([
        "checkpoint.npz", "config.json", "curves.png", "metrics.jsonl", "model.py", "normalization.npz",
        "params.npz", "summary.json", "model.nn", "predict.json", "README.txt"])
    out = result.stdout
    assert "data: the digits dataset: 1295 training, 143 validation, 359 test examples" in out
    assert "expected -log(1/10) = 2.3026" in out and ": ok;" in out
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["initial_loss_check"]["ok"] and summary["test"]["n"] == 359 and summary["test"]["acc"] > 0.9

    # The run directory is self-contained: its model, params and normalisation reproduce the test score.
    module = load_run_module(run_dir)
    params, norm = npz_dict(run_dir / "params.npz"), npz_dict(run_dir / "normalization.npz")
    assert set(params) == set(module.PARAMS) and set(norm) == {"mean/X", "scale/X"}
    from nncompile.train.data import load_digits, split

    trainer_view = bind(load_digits(), module)
    test = split(trainer_view, 0.2, salt=1)[1]
    X = ((test.arrays["X"] - norm["mean/X"]) / norm["scale/X"]).astype(np.float32)
    acc = float(np.mean(module.forward(params, X=X, y=test.arrays["y"])["scores"].argmax(axis=1) == test.arrays["y"]))
    assert math.isclose(acc, summary["test"]["acc"])


def test_cli_resume_continues_exactly(files: dict[str, Path], tmp_path: Path) -> None:
    common = ["train", files["mlp"], "--data", files["data"], "--batch-size", "16", "--test-split", "0.25",
              "--lr", "0.01", "--optimizer", "rmsprop"]
    assert cli(*common, "--epochs", "4", "--out", "whole", cwd=tmp_path).returncode == 0
    assert cli(*common, "--epochs", "2", "--out", "cut", cwd=tmp_path).returncode == 0
    result = cli(*common, "--epochs", "4", "--out", "cut", "--resume", cwd=tmp_path)
    assert result.returncode == 0, result
    assert "resuming cut after epoch 2 (step 22)" in result.stdout
    a, b = npz_dict(tmp_path / "whole" / "params.npz"), npz_dict(tmp_path / "cut" / "params.npz")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_cli_sanity_checks(files: dict[str, Path], tmp_path: Path) -> None:
    result = cli("train", files["mlp"], "--data", files["data"], "--overfit", "10", "--lr", "0.03", cwd=tmp_path)
    assert result.returncode == 0, result
    assert "overfit check: training accuracy 100.0%" in result.stdout and "on 10 examples" in result.stdout
    assert not (tmp_path / "runs").exists()         # a check, not a run: no files
    result = cli("train", files["mlp"], "--data", files["data"], "--grad-check", "--epochs", "1", "--out", "run",
                 cwd=tmp_path)
    assert result.returncode == 0, result
    assert "gradient check on one mini-batch (float64, extrapolated central differences): worst relative error" in result.stdout


@pytest.mark.parametrize("folder", ["nothere", "empty"])
def test_cli_resume_without_a_model_where_there_is_no_run_says_so(tmp_path: Path, folder: str) -> None:
    (tmp_path / "empty").mkdir()
    result = cli("train", "--resume", "--out", folder, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == (f"nncompile: error: there is no run to resume in {folder} (expected config.json, "
                             "which nncompile train writes); give MODEL.nn to start a new run there\n")

@pytest.mark.parametrize("make, args, message", [
    (None, ["--data", "missing.npz"], "missing.npz: data file not found"),
    (lambda X, y: {"X": X, "y": np.where(np.arange(len(y)) == 3, 7, y)}, [],
     "row 3 holds the label 7, but the model has 3 classes: labels must lie in [0, 3)"),
    (lambda X, y: {"X": np.where(np.arange(len(y))[:, None] == 1, np.nan, X), "y": y}, [],
     "row 1 holds nan (4 NaN or infinite value(s) in all)"),
    (lambda X, y: {"X": X[:, :2], "y": y}, [], "has shape [240, 2], but X is float[N, 4]"),
    (lambda X, y: {"inputs": X, "y": y}, [], "no data for the model's input 'X'"),
    (lambda X, y: {"X": X, "y": y}, ["--map", "X=pixels"], "--map X=pixels: the file has no array 'pixels'"),
    (lambda X, y: {"X": X, "y": y}, ["--optimizer", "sgd", "--beta1", "0.8"],
     "has no hyperparameter '--beta1' (it takes no hyperparameters); adam, adamw have it"),
    (lambda X, y: {"X": X, "y": y}, ["--clip-norm", "-1"], "--clip-norm must be a positive number, not -1.0"),
    (lambda X, y: {"X": X, "y": y}, ["--schedule", "cosine:min_lr=1"], "min_lr must lie in [0, lr = 0.001]"),
    (lambda X, y: {"X": X, "y": y}, ["--batch-size", "0"], "--batch-size must be a positive whole number"),
    (lambda X, y: {"X": X, "y": y}, ["--checkpoint-every", "0"], "--checkpoint-every takes a number of epochs"),
    (lambda X, y: {"X": X, "y": y}, ["--log-every", "soon"], "--log-every takes a number of epochs"),
    (lambda X, y: {"X": X, "y": y}, ["--val-every", "0"], "--val-every must be a positive whole number"),
])
def test_cli_bad_data_and_settings_fail_cleanly_before_training(files: dict[str, Path], tmp_path: Path, make,
                                                                 args: list[str], message: str) -> None:
    data = tmp_path / "data.npz"
    if make is not None:
        blobs = npz_dict(files["data"])
        np.savez(data, **make(blobs["X"], blobs["y"]))
    result = cli("train", files["mlp"], "--data", "data.npz", *args, "--out", "run", cwd=tmp_path)
    assert result.returncode == 1, result
    assert "error: " in result.stderr and message in result.stderr, result
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("inputs", "loss"), [
    ("input s: float[N, 3]\ninput y: int[N]", "softmax_cross_entropy(s, y)"),
    ("input s: float[N, 3]\ninput y: int[N]", "svm_loss(s, y, delta=2.5)"),
    ("input s: float[N]\ninput t: float[N]", "sigmoid_cross_entropy(s, t)"),
    ("input s: float[N]\ninput t: float[N]", "mse(s, t)"),
], ids=["softmax_cross_entropy", "svm_loss", "sigmoid_cross_entropy", "mse"])
def test_the_data_loss_is_what_the_loss_op_computes(tmp_path: Path, inputs: str, loss: str) -> None:
    """The trainer names no loss: it finds the one the model minimises by the op's declared
    ``loss``, and computes its value with the op's own code, attributes included."""
    path = write_nn(tmp_path, "m.nn", f"{inputs}\nloss = {loss}\nminimize loss\n")
    objective = Objective.of_file(path)
    assert objective.op == loss.split("(")[0]
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 3) if "y" in inputs else 6)
    targets = {"y": rng.integers(0, 3, 6)} if "y" in inputs else {"t": rng.uniform(size=6)}
    module = load_module(compile_file(path, dtype="float64"), "m")
    expected = module.value_and_grad({}, s=s, **targets)[0]["loss"]
    assert objective.data_loss(s.astype(np.float32), *targets.values()) == pytest.approx(float(expected), rel=1e-6)


def test_the_quick_start_prints_what_docs_training_md_shows(tmp_path: Path) -> None:
    """The page's first command, run as a user runs it: its output is the page's, line for line,
    but for timings (and the page's '...' for the lines between the first epoch and the last)."""
    page = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    shown = page.split("## Quick start", 1)[1].split("```\n")[3].splitlines()
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "digits_mlp.nn").write_bytes((EXAMPLES / "digits_mlp.nn").read_bytes())
    done = cli("train", "examples/digits_mlp.nn", "--data", "digits", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done

    def untimed(lines: list[str]) -> list[str]:
        return [re.sub(r"\d+\.\d+s$", "TIME", line) for line in lines if line != "..."]
    assert untimed(done.stdout.splitlines()) == untimed(shown)
