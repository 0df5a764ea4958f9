"""A trained run directory is a product: loadable with nncompile.load_run, with numpy alone by
following its README.txt, and from the command line with ``nncompile predict``; its predictions
reproduce the accuracy the trainer reported."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nncompile
from nncompile.errors import NNError

from conftest import EXAMPLES, cli, write_nn

pytest.importorskip("sklearn")


# A regression: a line through the origin fitted to (X, t).
LINE = """
    input X: float[N, 2]
    input t: float[N]
    param w: [2] = zeros()
    pred = sum(X * reshape(w, [1, 2]), axis=1)
    output pred
    loss = mse(pred, t)
    minimize loss
"""


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits example trained for a few epochs by ``nncompile train``, as a user runs it."""
    run_dir = tmp_path_factory.mktemp("runs") / "digits"
    done = cli("train", EXAMPLES / "digits_mlp.nn", "--data", "digits", "--epochs", "4", "--out", run_dir,
               timeout=300)
    assert done.returncode == 0, done
    (run_dir / "train.log").write_text(done.stdout)
    return run_dir


def _reported(run_dir: Path, split: str) -> float:
    return json.loads((run_dir / "summary.json").read_text())[split]["acc"]


def test_a_run_directory_describes_itself(digits_run: Path) -> None:
    for name in ("config.json", "model.nn", "model.py", "params.npz", "normalization.npz", "predict.json", "README.txt"):
        assert (digits_run / name).is_file(), name
    assert (digits_run / "model.nn").read_bytes() == (EXAMPLES / "digits_mlp.nn").read_bytes()
    described = json.loads((digits_run / "predict.json").read_text())
    assert described == {"inputs": ["X"], "outputs": ["scores"], "scores": "scores", "labels": "y",
                         "kind": "classes", "normalized": ["X"], "loss_op": None}
    readme = (digits_run / "README.txt").read_text()
    assert "nncompile.load_run" in readme and "# --- numpy recipe ---" in readme


def test_load_run_predicts_the_accuracy_the_trainer_reported(digits_run: Path) -> None:
    from nncompile.runs import read_data

    run = nncompile.load_run(digits_run)
    assert run.scores == "scores" and run.kind == "classes" and set(run.normalization) == {"X"}
    for split in ("test", "val"):
        data = read_data(run, part=split)
        predicted = run.predict(data.arrays["X"])
        assert predicted.dtype.kind == "i" and predicted.shape == (len(data),)
        assert run.accuracy(predicted, data) == pytest.approx(_reported(digits_run, split), abs=1e-12)
    probabilities = run.predict_proba(data.arrays["X"][:7])
    assert probabilities.shape == (7, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(probabilities.argmax(axis=1), predicted[:7])


def test_predict_normalises_as_training_did(digits_run: Path) -> None:
    """Raw pixels in, the trainer's normalised inputs to the module: the same scores as calling
    the module by hand on (x - mean) / scale."""
    run = nncompile.load_run(digits_run)
    X = np.random.default_rng(0).uniform(0, 1, (5, 64))
    with np.load(digits_run / "normalization.npz") as norm:
        by_hand = ((X.astype(np.float32) - norm["mean/X"]) / norm["scale/X"]).astype(np.float32)
    expected = run.module.predict(run.params, None, X=by_hand)["scores"]
    np.testing.assert_array_equal(run.outputs(X)["scores"], expected)


def _numpy_only_python(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """A Python that can import numpy and nothing of this project: isolated (-I), no site
    packages (-S), and a path holding numpy alone."""
    site = tmp_path / "numpy_only"
    site.mkdir()
    numpy_dir = Path(np.__file__).parent
    for entry in numpy_dir.parent.iterdir():   # numpy itself, and the shared libraries its wheel ships
        if entry.name == "numpy" or entry.name.startswith("numpy.libs") or entry.name == "numpy.libs":
            (site / entry.name).symlink_to(entry)
    prelude = f"import sys; sys.path[:] = [p for p in sys.path if 'site-packages' not in p] + [{str(site)!r}]; "
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return [sys.executable, "-I", "-S", "-c", prelude], env


@pytest.mark.parametrize("shape", [(3, 63), (3, 1, 8, 8), (3,)])
def test_a_wrongly_shaped_input_is_named_as_the_module_names_it_not_broadcast_against_the_statistics(
        digits_run: Path, shape: tuple) -> None:
    run = nncompile.load_run(digits_run)
    assert set(run.normalization) == {"X"}
    with pytest.raises(NNError, match=r"input 'X' must have (shape|2 dims) \['N', 64\]"):
        run.predict(np.zeros(shape))


def test_a_run_loads_with_numpy_alone_by_following_its_readme(digits_run: Path, tmp_path: Path) -> None:
    from nncompile.runs import read_data

    readme = (digits_run / "README.txt").read_text()
    recipe = re.search(r"# --- numpy recipe ---\n(.*?)# --- end of recipe ---", readme, re.S).group(1)
    run = nncompile.load_run(digits_run)
    data = read_data(run, part="test")
    np.save(tmp_path / "X.npy", data.arrays["X"])
    check = ("\ntry:\n    import nncompile\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('nncompile is importable')\n"
             f"np.save({str(tmp_path / 'labels.npy')!r}, predict(np.load({str(tmp_path / 'X.npy')!r})))\n"
             "assert 'nncompile' not in sys.modules\n")
    python, env = _numpy_only_python(tmp_path)
    python[-1] += "exec(sys.stdin.read())"
    done = subprocess.run(python, input="import sys\n" + recipe + check, cwd=digits_run, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    labels = np.load(tmp_path / "labels.npy")
    np.testing.assert_array_equal(labels, run.predict(data.arrays["X"]))
    assert (labels == data.arrays["y"]).mean() == pytest.approx(_reported(digits_run, "test"), abs=1e-12)


def test_loss_and_accuracy_take_a_dict_of_arrays_or_what_load_digits_returns(digits_run: Path) -> None:
    from nncompile.runs import read_data
    from nncompile.train.data import load_digits

    run = nncompile.load_run(digits_run)
    digits = load_digits()
    loss = run.loss(read_data(run))
    assert run.loss(digits) == run.loss(dict(digits.arrays)) == loss
    assert run.loss({"X": digits.arrays["X"]}) is None   # no labels: no loss
    labels = run.predict(digits.arrays["X"])
    truth = digits.arrays["y"]
    assert run.accuracy(labels, digits) == run.accuracy(labels, dict(digits.arrays)) == (labels == truth).mean()
    with pytest.raises(NNError, match="give a Dataset, a dict of arrays by input name"):
        run.loss([1, 2, 3])


def test_cli_predict_writes_predictions_and_prints_the_reported_accuracy(digits_run: Path, tmp_path: Path) -> None:
    reported = _reported(digits_run, "test")
    done = cli("predict", digits_run, "--data", "digits", "--split", "test", "-o", tmp_path / "preds.csv")
    assert done.returncode == 0, done
    assert f"accuracy {100 * reported:.2f}%" in done.stdout and "359 examples" in done.stdout
    loss = json.loads((digits_run / "summary.json").read_text())["test"]["loss"]
    assert f"accuracy {100 * reported:.2f}%, loss {loss:.4f}\n" in done.stdout   # the trainer's test loss
    assert f"accuracy {100 * reported:.2f}%" in (digits_run / "train.log").read_text()
    rows = (tmp_path / "preds.csv").read_text().splitlines()
    assert rows[0].split(",") == ["prediction", *(f"probability_{c}" for c in range(10))] and len(rows) == 360
    done = cli("predict", digits_run, "--split", "test", "-o", tmp_path / "preds.npz")
    assert done.returncode == 0, done
    with np.load(tmp_path / "preds.npz") as saved:
        assert saved["prediction"].tolist() == [int(r.split(",")[0]) for r in rows[1:]]
        assert saved["scores"].shape == (359, 10) and saved["probabilities"].shape == (359, 10)


def test_cli_predict_without_labels_predicts_and_reports_no_accuracy(digits_run: Path, tmp_path: Path) -> None:
    X = np.random.default_rng(1).uniform(0, 1, (6, 64))
    np.savez(tmp_path / "unlabelled.npz", X=X)
    done = cli("predict", digits_run, "--data", tmp_path / "unlabelled.npz")
    assert done.returncode == 0, done
    lines = done.stdout.splitlines()
    assert len(lines) == 6 and [int(line.split(",")[0]) for line in lines] == \
        nncompile.load_run(digits_run).predict(X).tolist()
    assert "accuracy" not in done.stderr and "loss" not in done.stderr and "6 examples" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["predict", "nowhere"], "nowhere: no such run directory"),
    (["predict", "{data}"], "data.npz: is a file, not a run directory"),
    (["predict", "{run}", "--split", "test", "--data", "{data}"], "picks the run's own split"),
    (["predict", "{run}", "--data", "{data}", "-o", "out.txt"], "write predictions to a .csv or .npz file"),
    (["predict", "{run}", "--data", "{wrong}"], "has shape [2, 5], but X is float[N, 64] (axis 1 must be 64)"),
    # With labels beside the features, the file is checked as training checks it, labels and all:
    (["predict", "{run}", "--data", "{labelled}"], "array 'y' for input 'y': row 1 holds the label 12"),
    (["predict", "{run}", "--data", "{short}"], "has shape [2, 5], but X is float[N, 64] (axis 1 must be 64)"),
])
def test_cli_predict_errors_are_for_people(digits_run: Path, tmp_path: Path, args: list[str], message: str) -> None:
    np.savez(tmp_path / "data.npz", X=np.zeros((2, 64)))
    np.savez(tmp_path / "wrong.npz", X=np.zeros((2, 5)))
    np.savez(tmp_path / "labelled.npz", X=np.zeros((2, 64)), y=np.array([3, 12]))
    np.savez(tmp_path / "short.npz", X=np.zeros((2, 5)), y=np.array([3, 1]))
    args = [a.format(run=digits_run, data=tmp_path / "data.npz", wrong=tmp_path / "wrong.npz",
                     labelled=tmp_path / "labelled.npz", short=tmp_path / "short.npz") for a in args]
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done


def test_with_test_data_the_train_and_val_splits_are_the_trainers(tmp_path: Path) -> None:
    """With --test-data the trainer splits validation off all of --data (no test split of it)."""
    from nncompile.runs import read_data

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "test.npz", X=rng.random((20, 64)) * 16, y=rng.integers(0, 10, 20))
    done = cli("train", EXAMPLES / "digits_mlp.nn", "--data", "digits", "--test-data", "test.npz", "--epochs", "1",
               "--out", "run", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done
    run = nncompile.load_run(tmp_path / "run")
    assert len(read_data(run, part="train")) == run.config["train_examples"] == 1618
    assert len(read_data(run, part="val")) == 179 and len(read_data(run, part="test")) == 20


def test_predicting_a_split_the_run_does_not_have_says_so(tmp_path: Path) -> None:
    """A file's data has no test split unless asked for, and --val-split 0 leaves no validation."""
    model = write_nn(tmp_path, "line.nn", LINE)
    np.savez(tmp_path / "line.npz", X=np.ones((8, 2)), t=np.ones(8))
    assert cli("train", model, "--data", "line.npz", "--epochs", "1", "--val-split", "0", "--out", "run",
               cwd=tmp_path).returncode == 0
    for split, said in [("test", "the run has no test examples (it was trained with no test split); use --split all"),
                        ("val", "the run has no validation examples (it was trained with --val-split 0)")]:
        done = cli("predict", "run", "--split", split, cwd=tmp_path)
        assert done.returncode == 1 and f"nncompile: error: --split {split}: {said}" in done.stderr, done
    assert cli("predict", "run", "--split", "train", cwd=tmp_path).returncode == 0



def test_a_run_whose_target_was_mapped_predicts_a_file_without_it(tmp_path: Path) -> None:
    model = write_nn(tmp_path, "line.nn", LINE)
    np.savez(tmp_path / "train.npz", X=np.ones((8, 2)), height=np.ones(8))
    assert cli("train", model, "--data", "train.npz", "--map", "t=height", "--epochs", "1", "--out", "run",
               cwd=tmp_path).returncode == 0
    np.savez(tmp_path / "new.npz", X=np.ones((3, 2)), ids=np.arange(3))
    done = cli("predict", "run", "--data", "new.npz", cwd=tmp_path)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 3, done

def test_a_csv_runs_map_leaves_an_npz_test_file_named_after_the_inputs_to_bind_by_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.random((60, 64)) * 16, rng.integers(0, 10, 60)
    header = ",".join([*(f"p{i}" for i in range(64)), "digit"])
    (tmp_path / "train.csv").write_text(header + "\n" + "\n".join(
        ",".join([*map(str, row), str(label)]) for row, label in zip(X[:40], y[:40])) + "\n")
    np.savez(tmp_path / "test.npz", X=X[40:], y=y[40:])
    done = cli("train", EXAMPLES / "digits_mlp.nn", "--data", "train.csv", "--map", "X=p0:p63,y=digit",
               "--test-data", "test.npz", "--epochs", "2", "--out", "run", cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "20 test examples" in done.stdout, done
    reported = json.loads((tmp_path / "run" / "summary.json").read_text())["test"]
    for args in (["--split", "test"], ["--data", "test.npz"]):
        done = cli("predict", "run", *args, "-o", "preds.csv", cwd=tmp_path)
        assert done.returncode == 0 and f"accuracy {100 * reported['acc']:.2f}%, loss {reported['loss']:.4f}\n" \
            in done.stdout, (args, done)


def test_a_csv_test_file_without_a_mapped_column_is_an_error_as_the_training_file_would_be(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a,b,z,label\n" + "1,2,3,0\n4,5,6,1\n" * 10)
    (tmp_path / "test.csv").write_text("p,q,label\n1,2,0\n4,5,1\n")
    write_nn(tmp_path, "two.nn", "input X: float[N, 2]\ninput y: int[N]\nparam W: [2, 2] = he()\n"
                                 "loss = softmax_cross_entropy(X @ W, y)\nminimize loss\n")
    done = cli("train", "two.nn", "--data", "train.csv", "--map", "X=a:b", "--test-data", "test.csv", "--epochs", "1",
               "--out", "run", cwd=tmp_path)
    assert done.returncode == 1 and "--map X=a:b: no column 'a'" in done.stderr, done


def test_a_regression_run_predicts_values_and_has_no_probabilities(tmp_path: Path) -> None:
    model = write_nn(tmp_path, "line.nn", LINE)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 2))
    np.savez(tmp_path / "line.npz", X=X, t=X @ np.array([2.0, -1.0]))
    # Every epoch validated, so the kept params are the best of all 40 (the default validates a
    # full-batch run every 20 epochs, and 6 validation examples can favour epoch 20).
    done = cli("train", model, "--data", tmp_path / "line.npz", "--epochs", "40", "--lr", "0.1", "--val-every", "1",
               "--out", tmp_path / "run", timeout=120)
    assert done.returncode == 0, done
    run = nncompile.load_run(tmp_path / "run")
    assert run.kind == "regression"
    np.testing.assert_allclose(run.predict(np.array([[1.0, 0.0]])), [2.0], atol=0.1)
    with pytest.raises(NNError, match="no class scores"):
        run.predict_proba(np.array([[1.0, 0.0]]))
    # The run's own data named as a user types it, relative to where they stand: its own split.
    done = cli("predict", tmp_path / "run", "--data", "line.npz", "--split", "val", "-o", "val.npz", cwd=tmp_path)
    assert done.returncode == 0 and "(val split)" in done.stdout, done
    loss = json.loads((tmp_path / "run" / "summary.json").read_text())["val"]["loss"]
    assert done.stdout.endswith(f"(val split): loss {loss:.4f}\n"), (done.stdout, loss)   # its val loss, as trained
    np.savez(tmp_path / "no_targets.npz", X=X)
    done = cli("predict", tmp_path / "run", "--data", "no_targets.npz", cwd=tmp_path)
    assert done.returncode == 0 and "loss" not in done.stderr, done


def test_predict_reports_the_loss_training_reported_where_the_loss_is_written_in_a_train_block(tmp_path: Path) -> None:
    """Eval mode computes no loss written in a train { } block; training then reports its loss op
    on the scores, and so does predict (from predict.json's loss_op), with the op's attrs."""
    model = write_nn(tmp_path, "margin.nn", """
        input X: float[N, 4]
        input y: int[N]
        param W: [4, 3] = randn(std=0.1)
        scores = X @ W
        output scores
        train {
            loss = svm_loss(scores, y, delta=2) + 0.01 * sum(W * W)
            minimize loss
        }
    """)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((90, 4))
    np.savez(tmp_path / "data.npz", X=X, y=(X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0))
    done = cli("train", model, "--data", tmp_path / "data.npz", "--epochs", "3", "--test-split", "0.2",
               "--out", tmp_path / "run", timeout=120)
    assert done.returncode == 0, done
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    run = nncompile.load_run(tmp_path / "run")
    assert run.loss_op == {"op": "svm_loss", "predictions": "scores", "targets": "y", "attrs": {"delta": 2.0}}
    for part in ("val", "test"):
        done = cli("predict", tmp_path / "run", "--split", part)
        assert done.returncode == 0, done
        reported = summary[part]
        assert done.stderr.endswith(f"accuracy {100 * reported['acc']:.2f}%, loss {reported['loss']:.4f}\n"), \
            (done.stderr, reported)
    from nncompile.runs import read_data
    assert run.loss(read_data(run, part="test")) == pytest.approx(summary["test"]["loss"], rel=1e-6)


# ---- eval and render of the trained model ------------------------------------------------------


def test_cli_eval_of_a_run_shows_its_params_on_real_examples_in_the_mode_asked(digits_run: Path) -> None:
    from nncompile.runs import read_data

    run = nncompile.load_run(digits_run)
    done = cli("eval", EXAMPLES / "digits_mlp.nn", "--params", digits_run, "--data", "digits", "--index", "3",
               "--mode", "eval", "--json")
    assert done.returncode == 0, done
    assert done.stderr.startswith("eval mode: dropout off") and "example 3 of the digits dataset" in done.stderr
    values = json.loads(done.stdout)["values"]
    X = read_data(run).arrays["X"][3:4]
    np.testing.assert_allclose(values["scores"], run.outputs(X)["scores"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(values["fc1.W"], run.params["fc1.W"], rtol=1e-6)
    assert values["y"] == [3]
    done = cli("eval", EXAMPLES / "digits_mlp.nn", "--params", digits_run / "params.npz", "--data", "digits",
               "--batch", "5")
    assert done.returncode == 0, done
    first = done.stdout.splitlines()[0]
    assert first.startswith("train mode (the default): dropout on") and "the first 5 examples" in first
    assert f"the params in {digits_run / 'params.npz'}" in first and "  scores    = [5, 10]" in done.stdout


def test_cli_eval_without_a_run_states_the_default_mode(tmp_path: Path) -> None:
    done = cli("eval", EXAMPLES / "circuit.nn")
    assert done.returncode == 0 and done.stdout.splitlines()[0].startswith("train mode (the default)"), done


def test_cli_render_of_a_run_draws_its_values(digits_run: Path, tmp_path: Path) -> None:
    done = cli("render", EXAMPLES / "digits_mlp.nn", "--params", digits_run, "--data", "digits", "--batch", "2",
               "--mode", "eval", "-o", tmp_path / "run.dot")
    assert done.returncode == 0, done
    assert "eval mode" in done.stderr and "the first 2 examples" in done.stderr
    assert "[2, 10]" in (tmp_path / "run.dot").read_text() or "2×10" in (tmp_path / "run.dot").read_text()


@pytest.mark.parametrize("args, message", [
    (["--batch", "3"], "--batch, --index and --map pick examples of --data"),
    (["--data", "digits", "--index", "5000"], "--index 5000: the digits dataset has examples 0 to 1796"),
    (["--data", "digits", "--batch", "0"], "--batch must be a positive whole number"),
    (["--params", "missing.npz"], "missing.npz: no such params file or run directory"),
    (["--mode", "test"], "invalid choice: 'test'"),
])
def test_cli_eval_trained_options_errors_are_for_people(tmp_path: Path, args: list[str], message: str) -> None:
    done = cli("eval", EXAMPLES / "digits_mlp.nn", *args, cwd=tmp_path)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done


def test_cli_eval_refuses_params_of_another_model(digits_run: Path) -> None:
    done = cli("eval", EXAMPLES / "mlp.nn", "--params", digits_run)
    assert done.returncode == 1 and "--params do not fit this model" in done.stderr, done


# ---- docs/shipping.md ---------------------------------------------------------------------------

SHIPPING = Path(__file__).resolve().parent.parent / "docs" / "shipping.md"


def _blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", SHIPPING.read_text(encoding="utf-8"), re.S)


def test_the_shipping_pages_python_snippets_run(digits_run: Path, tmp_path: Path, monkeypatch) -> None:
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits_mlp").symlink_to(digits_run)
    (tmp_path / "examples").symlink_to(root / "examples")
    monkeypatch.chdir(tmp_path)
    snippets = _blocks("python")
    assert len(snippets) >= 2
    for snippet in snippets:
        exec(compile(snippet, str(SHIPPING), "exec"), {"__name__": "shipping"})  # noqa: S102 - our own docs


def test_the_shipping_pages_recipe_is_the_one_the_readme_writes(digits_run: Path) -> None:
    readme = (digits_run / "README.txt").read_text()
    recipe = re.search(r"# --- numpy recipe ---\n(.*?)# --- end of recipe ---", readme, re.S).group(1)
    assert recipe in _blocks("text")


def test_the_shipping_pages_commands_name_real_options() -> None:
    from nncompile.cli import build_parser

    for block in _blocks("sh"):
        for line in block.splitlines():
            if line.startswith("nncompile "):
                args = build_parser().parse_args(line.split()[1:])
                assert args.run is not None
