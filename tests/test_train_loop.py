"""The epoch loop (nncompile/train/loop.py, cadence.py, history.py): checkpoints, lines and
validation on a schedule, Ctrl-C that saves the exact point it stopped at, resuming from
the run's own config.json, and the Python API (``Dataset.from_arrays``, ``Trainer.fit``
returning the history as data). How fast the loop is lives in benchmarks/trainer_overhead.py."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, as_a_shell_starts_it, cli
from test_train import Interrupt, files, npz_dict, small, without_times  # noqa: F401 (files: the fixture)

import nncompile.train.loop as loop
from nncompile.errors import NNError
from nncompile.train import Dataset, History, TrainConfig, Trainer, run
from nncompile.train.cadence import Cadence
from nncompile.train.checkpoint import load_checkpoint


def blobs(files: dict[str, Path]) -> dict[str, np.ndarray]:
    return npz_dict(files["data"])


@pytest.fixture
def saves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(epoch, position) of every checkpoint the loop writes."""
    seen: list[tuple[int, int]] = []
    real = loop.save_checkpoint

    def spy(path: Path, state: Any, *args: Any) -> None:
        seen.append((state.epoch, state.position))
        real(path, state, *args)

    monkeypatch.setattr(loop, "save_checkpoint", spy)
    return seen


@pytest.mark.parametrize("spec, epochs, seconds", [("5", 5, None), ("10s", None, 10.0), ("1.5s", None, 1.5),
                                                   ("2m", None, 120.0), (" 3 ", 3, None)])
def test_a_cadence_is_a_number_of_epochs_or_a_time(spec: str, epochs: int | None, seconds: float | None) -> None:
    cadence = Cadence.parse(spec, "--log-every")
    assert (cadence.epochs, cadence.seconds) == (epochs, seconds)


@pytest.mark.parametrize("spec", ["0", "-2", "fast", "5h", "s", ""])
def test_a_bad_cadence_is_refused_with_the_flag_named(spec: str) -> None:
    with pytest.raises(NNError, match=r"--checkpoint-every takes a number of epochs \(e.g. 5\) or a time"):
        TrainConfig(checkpoint_every=spec).check()


def test_checkpoints_and_lines_follow_their_schedule_and_come_at_the_end(files, tmp_path, saves) -> None:
    lines: list[str] = []
    run(files["mlp"], data=str(files["data"]), config=small(epochs=7, checkpoint_every="3", log_every="3"),
        out=tmp_path / "run", log=lines.append)
    assert saves == [(3, 0), (6, 0), (7, 0)]
    printed = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("epoch ")]
    assert printed == [1, 3, 6, 7]
    assert len(without_times(tmp_path / "run" / "metrics.jsonl")) == 7


def test_by_default_a_short_run_writes_one_checkpoint_and_few_lines(files, tmp_path, saves) -> None:
    lines: list[str] = []
    run(files["mlp"], data=str(files["data"]), config=small(epochs=30), out=tmp_path / "run", log=lines.append)
    assert saves == [(30, 0)]                       # at most every 10 s, and at the end
    assert 2 <= sum(line.startswith("epoch ") for line in lines) < 30
    assert len(without_times(tmp_path / "run" / "metrics.jsonl")) == 30   # every epoch is still recorded


def test_an_exception_between_steps_leaves_a_checkpoint_of_that_exact_step(files, tmp_path, saves) -> None:
    def interrupt(state: Any) -> None:
        if state.step == 27:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(files["mlp"], data=str(files["data"]), config=small(epochs=5), out=tmp_path / "run", on_step=interrupt)
    assert saves == [(2, 5)]    # 11 steps an epoch: 5 steps into epoch 3
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoint.npz", ("m", "v"))
    assert (state.step, state.epoch, state.position, len(state.step_losses)) == (27, 2, 5, 27)
    assert state.order is not None and sorted(state.order) == list(range(162))


def test_a_full_batch_run_validates_every_twentieth_epoch_and_patience_counts_validations(files, tmp_path) -> None:
    config = small(epochs=60, batch_size=1000, lr=1e-3)
    run(files["mlp"], data=str(files["data"]), config=config, out=tmp_path / "run")
    history = without_times(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in history if "val_loss" in r] == [20, 40, 60]
    assert [r["epoch"] for r in history if r["acc"] is not None] == [20, 40, 60]   # counted when validated
    rng = np.random.default_rng(1)
    noise = tmp_path / "noise.npz"     # random labels: the validation loss soon only gets worse
    np.savez(noise, X=rng.standard_normal((120, 4)), y=rng.integers(0, 3, 120))
    report = run(files["mlp"], data=str(noise), config=small(epochs=800, batch_size=1000, lr=0.1, patience=2,
                                                            val_split=0.3), out=tmp_path / "noise")
    assert report.stopped_early and report.epochs == report.best_epoch + 40


def test_resuming_with_fewer_epochs_than_done_is_an_error_and_with_as_many_a_notice(files, tmp_path) -> None:
    common = ["train", files["mlp"], "--data", files["data"], "--batch-size", "16", "--test-split", "0.25",
              "--out", "run"]
    assert cli(*common, "--epochs", "3", cwd=tmp_path).returncode == 0
    fewer = cli("train", "--resume", "--out", "run", "--epochs", "2", cwd=tmp_path)
    assert fewer.returncode == 1 and "Traceback" not in fewer.stderr
    assert "error: this run has already trained 3 epochs, more than --epochs 2: give --epochs above 3" in fewer.stderr
    same = cli("train", "--resume", "--out", "run", cwd=tmp_path)
    assert same.returncode == 0, same
    assert "the run has already trained all 3 epochs: nothing more to train" in same.stdout
    assert cli("train", cwd=tmp_path).returncode == 1


@pytest.mark.parametrize("stop, code, why", [
    ("ctrl-c", 130, "interrupted"),
    ("closed pipe", 1, "the output pipe closed, so training stopped"),   # `nncompile train ... | head`
])
def test_a_stopped_run_then_the_printed_command_equals_the_run_never_stopped(files, tmp_path, stop, code,
                                                                              why) -> None:
    """A real SIGINT to ``nncompile train``, or the reader of its output leaving: it stops at
    a step boundary, checkpoints that point and prints how to continue; that command (from
    the run's config.json) ends where an uninterrupted run ends, bit for bit."""
    settings = ["--data", files["data"], "--batch-size", "16", "--test-split", "0.25", "--lr", "0.01",
                "--patience", "0", "--log-every", "1", "--checkpoint-every", "1000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nncompile", "train", str(files["mlp"]), *map(str, settings),
                             "--epochs", "100000", "--out", "cut"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=as_a_shell_starts_it)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.split()[:2] == ["epoch", "3/100000"]:
            break
    if stop == "ctrl-c":
        proc.send_signal(signal.SIGINT)
    else:
        proc.stdout.close()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == code, err
    assert "Traceback" not in err
    hint = err.strip().splitlines()[-1]
    assert hint.startswith(f"{why}: the run is checkpointed where it stopped; continue it with nncompile train")
    command = hint.split("continue it with ")[1].split()
    assert command == ["nncompile", "train", "--resume", "--out", "cut"]
    state, _ = load_checkpoint(tmp_path / "cut" / "checkpoint.npz", ("m", "v"))
    epochs = str(state.epoch + 2)
    resumed = cli(*command[1:], "--epochs", epochs, cwd=tmp_path)
    assert resumed.returncode == 0, resumed
    assert cli("train", files["mlp"], *settings, "--epochs", epochs, "--out", "whole", cwd=tmp_path).returncode == 0
    for name in ("params.npz", "checkpoint.npz"):
        a, b = npz_dict(tmp_path / "whole" / name), npz_dict(tmp_path / "cut" / name)
        for key in a.keys() - {"meta", "history"}:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}: {key}")
    assert without_times(tmp_path / "whole" / "metrics.jsonl") == without_times(tmp_path / "cut" / "metrics.jsonl")



def test_output_closed_before_the_first_checkpoint_says_there_is_nothing_to_resume(files, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nncompile", "train", str(files["mlp"]), "--data",
                             str(files["data"]), "--out", "cut"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()   # before its first line: the data's
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1, err
    assert err.strip() == "the output pipe closed, so training stopped before its first checkpoint: there is nothing to resume"
    assert not (tmp_path / "cut" / "checkpoint.npz").exists()


def test_output_closed_before_a_new_run_replaces_an_earlier_checkpoint_points_at_no_run(files, tmp_path) -> None:
    """The earlier run's checkpoint is not this run's: resuming it would continue the old run."""
    assert cli("train", files["mlp"], "--data", files["data"], "--epochs", "1", "--out", "cut",
               cwd=tmp_path).returncode == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "nncompile", "train", str(files["mlp"]), "--data",
                             str(files["data"]), "--lr", "0.5", "--out", "cut"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1, err
    assert err.strip().endswith("before its first checkpoint: there is nothing to resume"), err

# ---- the Python API -------------------------------------------------------------------------------------

def test_fit_on_arrays_returns_the_history_as_data_and_continues(files) -> None:
    data = blobs(files)
    train, val = Dataset.from_arrays(X=data["X"][:200], y=data["y"][:200]), {"X": data["X"][200:], "y": data["y"][200:]}
    trainer = Trainer(files["mlp"], TrainConfig(batch_size=50, lr=1e-2, val_every=1))
    history = trainer.fit(train, val, epochs=3)
    assert isinstance(history, History) and len(history) == 3
    assert history["epoch"].tolist() == [1, 2, 3] and history["step"].tolist() == [4, 8, 12]
    assert history.step_loss.shape == (12,) and history["val_loss"].shape == (3,)
    sizes = np.array([50, 50, 50, 50])    # an epoch's loss is the mean of its steps' losses, by examples
    np.testing.assert_allclose(history["loss"], history.step_loss.reshape(3, 4) @ sizes / 200, rtol=1e-12)
    assert set(history.as_dict()) == {"epoch", "step", "lr", "loss", "acc", "val_loss", "val_acc", "val_data_loss",
                                      "seconds", "step_loss"}
    assert history.records[0].keys() == history.as_dict().keys() - {"step_loss"}
    with pytest.raises(KeyError, match="no column 'val_accuracy'"):
        history["val_accuracy"]
    more = trainer.fit(train, val, epochs=5)       # epochs in all: two more
    assert more["epoch"].tolist() == [1, 2, 3, 4, 5] and len(more.step_loss) == 20
    np.testing.assert_array_equal(more.step_loss[:12], history.step_loss)
    assert trainer.evaluate(trainer.params, trainer.prepare(val)).acc > 0.8
    with pytest.raises(NNError, match="has already trained 5 epochs"):
        trainer.fit(train, epochs=4)


@pytest.mark.parametrize("epochs", [3, 5])
def test_by_default_the_last_epoch_is_validated_so_its_params_can_be_kept(files, epochs: int) -> None:
    """Four steps an epoch validate every five epochs by default (20 steps), and the run's own
    last epoch too: its params, the latest, are a candidate for the best."""
    data = blobs(files)
    train, val = Dataset.from_arrays(X=data["X"][:200], y=data["y"][:200]), {"X": data["X"][200:], "y": data["y"][200:]}
    trainer = Trainer(files["mlp"], TrainConfig(batch_size=50, lr=1e-2))
    history = trainer.fit(train, val, epochs=epochs)
    validated = [int(e) for e, loss in zip(history["epoch"], history["val_loss"]) if not np.isnan(loss)]
    assert validated == [epochs]
    counted = [int(e) for e, acc in zip(history["epoch"], history["acc"]) if not np.isnan(acc)]
    assert counted == [epochs]   # the training accuracy is counted in the epochs that are validated


def test_validation_columns_are_nan_before_the_first_validation(files) -> None:
    data = blobs(files)
    train, val = Dataset.from_arrays(X=data["X"][:200], y=data["y"][:200]), {"X": data["X"][200:], "y": data["y"][200:]}
    history = Trainer(files["mlp"], TrainConfig(batch_size=50, lr=1e-2, val_every=4)).fit(train, val, epochs=2)
    for column in ("val_loss", "val_acc", "val_data_loss"):
        assert np.isnan(history[column]).all() and history[column].shape == (2,)
    with pytest.raises(KeyError, match="no column 'step'"):   # an int column is never NaN: absent is an error
        History.of([{"epoch": 1, "loss": 0.5}], [])["step"]


def test_evaluate_after_fit_uses_the_running_statistics_fit_trained(files) -> None:
    data = blobs(files)
    train, val = Dataset.from_arrays(X=data["X"][:200], y=data["y"][:200]), {"X": data["X"][200:], "y": data["y"][200:]}
    trainer = Trainer(files["bn"], TrainConfig(batch_size=50, lr=1e-2, val_every=1))
    assert trainer.model_state is None
    history = trainer.fit(train, val, epochs=3)
    assert set(trainer.model_state) == set(trainer.module.STATE)
    measured = trainer.evaluate(trainer.params, val)           # as docs/training.md calls it
    assert measured.loss == pytest.approx(history["val_loss"][-1], rel=1e-6)
    assert measured == trainer.evaluate(trainer.params, val, trainer.model_state)
    initial = trainer.evaluate(trainer.params, val, trainer.module.init_state())
    assert initial.loss != pytest.approx(measured.loss, rel=1e-3)   # the initial statistics are another model


def test_fit_checks_the_arrays_against_the_model(files) -> None:
    data = blobs(files)
    trainer = Trainer(files["mlp"], TrainConfig(epochs=1))
    with pytest.raises(NNError, match=r"has shape \[240, 2\], but X is float\[N, 4\]"):
        trainer.fit(Dataset.from_arrays(X=data["X"][:, :2], y=data["y"]))
    with pytest.raises(NNError, match="holds the label 7"):
        trainer.fit({"X": data["X"], "y": np.full(240, 7)})
    with pytest.raises(NNError, match="no data for the model's input 'y'"):
        trainer.fit(Dataset.from_arrays(X=data["X"]))


def test_the_python_snippets_of_docs_training_md_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ```python block under *Python API*, in order, in one namespace, in a fresh folder."""
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 3
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block, "docs/training.md", "exec"), namespace)
    assert namespace["history"]["val_acc"][-1] > 0.9
    assert (tmp_path / "runs" / "digits" / "params.npz").exists()


def test_fit_interrupted_between_steps_continues_where_it_stopped(files) -> None:
    data = blobs(files)
    train = Dataset.from_arrays(X=data["X"], y=data["y"])
    whole = Trainer(files["mlp"], TrainConfig(batch_size=50, lr=1e-2))
    whole.fit(train, epochs=3)

    def interrupt(state: Any) -> None:
        if state.step == 7:       # in the middle of epoch 2 (5 steps an epoch)
            raise Interrupt

    cut = Trainer(files["mlp"], TrainConfig(batch_size=50, lr=1e-2))
    with pytest.raises(Interrupt):
        cut.fit(train, epochs=3, on_step=interrupt)
    assert cut.state is not None and (cut.state.epoch, cut.state.position) == (1, 2)
    history = cut.fit(train, epochs=3)
    for name in whole.params:
        np.testing.assert_array_equal(whole.params[name], cut.params[name])
    np.testing.assert_array_equal(history.step_loss, whole.history().step_loss)


def test_a_resumed_state_is_laid_out_as_the_module_lays_it_out_and_a_foreign_one_refused(files, tmp_path) -> None:
    """A checkpoint holds an array per param and slot; resuming copies them into the module's
    one-buffer layout (the optimiser's fast path) without changing a bit, and refuses arrays
    that do not fit the model."""
    run(files["mlp"], data=str(files["data"]), config=small(epochs=2), out=tmp_path / "run")
    where = tmp_path / "run" / "checkpoint.npz"
    trainer = Trainer(files["mlp"], small(epochs=2))
    state, _ = load_checkpoint(where, trainer.module.SLOTS)
    saved = {k: v.copy() for k, v in state.params.items()}
    laid = trainer.laid_out(state, where)
    assert all(laid.params[k].tobytes() == saved[k].tobytes() for k in saved)
    assert len({id(v.base) for v in laid.params.values()}) == 1 and next(iter(laid.params.values())).base is not None
    state, _ = load_checkpoint(where, trainer.module.SLOTS)
    first = next(iter(state.params))
    state.params[first] = state.params[first][:1]
    with pytest.raises(NNError, match=f"the checkpoint's params do not fit this model \\({first}\\)"):
        trainer.laid_out(state, where)


def test_on_epoch_sees_each_epochs_record_and_an_exception_it_raises_leaves_that_epochs_checkpoint(files,
                                                                                                   tmp_path) -> None:
    seen: list[dict[str, Any]] = []

    def prune(state: Any, record: dict[str, Any]) -> None:   # what nncompile sweep's pruner does
        seen.append(dict(record))
        assert state.epoch == record["epoch"] and state.position == 0
        if record["epoch"] == 2:
            raise RuntimeError("pruned")

    with pytest.raises(RuntimeError, match="pruned"):
        run(files["mlp"], data=str(files["data"]), config=small(epochs=5, val_every=1), out=tmp_path / "run",
            on_epoch=prune)
    assert [r["epoch"] for r in seen] == [1, 2] and all(r["val_loss"] is not None for r in seen)
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoint.npz", ("m", "v"))
    assert (state.epoch, state.position) == (2, 0) and [r["val_loss"] for r in state.history] == \
        [r["val_loss"] for r in seen]
