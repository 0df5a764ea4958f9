"""The command line, run as a user runs it: ``python -m nncompile ...`` in a subprocess."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLE_FILES, EXAMPLES, ROOT, cli, write_nn


def load_path(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eval_json(run_cli, *args) -> dict:
    result = run_cli("eval", *args, "--json")
    assert result.returncode == 0, result
    return json.loads(result.stdout)


# ---- compile --------------------------------------------------------------------------

def test_compile_writes_a_module(tmp_path: Path, run_cli) -> None:
    result = run_cli("compile", EXAMPLES / "circuit.nn", "-o", "circuit.py")
    assert result.returncode == 0, result
    assert result.stdout == "" and "circuit.py" in result.stderr
    module = load_path(tmp_path / "circuit.py")
    outputs, grads = module.value_and_grad({})
    assert float(outputs["f"]) == -12.0 and float(grads["z"]) == 3.0
    assert [p.name for p in tmp_path.iterdir()] == ["circuit.py"], "temporary files were left behind"


def test_compile_creates_the_output_directory(tmp_path: Path, run_cli) -> None:
    assert run_cli("compile", EXAMPLES / "neuron.nn", "-o", "build/gen/neuron.py").returncode == 0
    assert (tmp_path / "build" / "gen" / "neuron.py").is_file()


def test_compile_dtype_option(tmp_path: Path, run_cli) -> None:
    assert run_cli("compile", EXAMPLES / "circuit.nn", "-o", "c64.py", "--dtype", "float64").returncode == 0
    assert "DTYPE = np.float64" in (tmp_path / "c64.py").read_text()
    assert run_cli("compile", EXAMPLES / "circuit.nn", "-o", "c32.py").returncode == 0
    assert "DTYPE = np.float32" in (tmp_path / "c32.py").read_text()


def test_failed_compile_leaves_no_output_and_keeps_an_old_one(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "bad.nn", "input x = 1\ny = x + nope\noutput y\n")
    result = run_cli("compile", "bad.nn", "-o", "bad.py")
    assert result.returncode == 1 and "bad.nn:2:9: error: unknown name 'nope'" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nn"]
    # an earlier good module stays as it was: the output is replaced whole or not at all
    (tmp_path / "bad.py").write_text("# from an earlier compile\n")
    assert run_cli("compile", "bad.nn", "-o", "bad.py").returncode == 1
    assert (tmp_path / "bad.py").read_text() == "# from an earlier compile\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.nn", "bad.py"]


def test_python_dash_m_and_version(run_cli) -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("nncompile ")


def test_usage_errors_exit_nonzero_without_traceback(run_cli) -> None:
    for args in ([], ["frobnicate", "x.nn"], ["compile", "x.nn"], ["eval", "x.nn", "--dtype", "float16"]):
        result = run_cli(*args)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result
        assert "usage:" in result.stderr


def test_a_mistyped_option_gets_the_commands_closest_one_and_its_usage(run_cli) -> None:
    result = run_cli("train", EXAMPLES / "digits_mlp.nn", "--bach-size", "32", "--zzz")
    assert result.returncode == 1 and result.stderr.startswith("usage: nncompile train "), result
    assert result.stderr.endswith("nncompile: error: unrecognized arguments: --bach-size 32 --zzz "
                                  "(--bach-size: did you mean --batch-size?)\n"), result.stderr
    result = run_cli("eval", EXAMPLES / "circuit.nn", "--jsn=1")
    assert "(--jsn: did you mean --json?)" in result.stderr and result.returncode == 1, result
    result = run_cli("eval", EXAMPLES / "circuit.nn", "extra")
    assert result.stderr.endswith("nncompile: error: unrecognized arguments: extra\n"), result.stderr


# ---- eval -----------------------------------------------------------------------------

def test_eval_circuit_json(run_cli) -> None:
    """The lecture's numbers, exactly: f = -12, df/dx = df/dy = -4, df/dz = 3."""
    data = eval_json(run_cli, EXAMPLES / "circuit.nn")
    assert set(data) == {"values", "grads"}
    assert data["values"] == {"x": -2.0, "y": 5.0, "z": -4.0, "q": 3.0, "f": -12.0}
    assert data["grads"] == {"x": -4.0, "y": -4.0, "z": 3.0}


def test_eval_neuron_json(run_cli) -> None:
    data = eval_json(run_cli, EXAMPLES / "neuron.nn")
    assert round(data["values"]["f"], 2) == 0.73
    assert {k: round(v, 2) for k, v in data["grads"].items()} == \
        {"w0": -0.20, "x0": 0.39, "w1": -0.39, "x1": -0.59, "w2": 0.20}
    for gate in ("a", "b", "s", "dot", "e", "den"):          # every gate's value is shown
        assert gate in data["values"]


def test_eval_json_is_strict_json_a_nan_or_an_infinity_is_null(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", """
        input x = [-1.0, 0.0, 4.0]
        y = log(x)
        output y
    """)
    result = run_cli("eval", "m.nn", "--json")
    assert result.returncode == 0, result
    strict = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert strict["values"]["y"] == [None, None, pytest.approx(np.log(4.0))]


def test_the_readmes_eval_session_is_what_eval_prints() -> None:
    """The first console session of the README, command by command (stdout, then stderr)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    session = readme.split("```console\n", 1)[1].split("```", 1)[0]
    runs = [chunk.split("\n", 1) for chunk in session.split("$ nncompile ")[1:]]
    evals = [(command.split(), shown) for command, shown in runs if command.startswith("eval ")]
    assert len(evals) == 2
    for args, shown in evals:
        done = cli(*args, cwd=ROOT)
        assert done.returncode == 0 and done.stdout + done.stderr == shown, (args, done)


def test_eval_text(run_cli) -> None:
    result = run_cli("eval", EXAMPLES / "circuit.nn")
    assert result.returncode == 0, result
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["f", "=", "-12"] in lines and ["q", "=", "3"] in lines
    assert ["d/dx", "=", "-4"] in lines and ["d/dz", "=", "3"] in lines


def test_eval_text_lines_up_matrices(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", "input x: float[2, 2]\nloss = sum(x * x)\nminimize loss\n")
    result = run_cli("eval", "m.nn", "--set", "x=[[1, 2], [3, 4]]")
    assert result.returncode == 0, result
    assert "  x    = [[1., 2.],\n          [3., 4.]]\n" in result.stdout
    assert "  d/dx    = [[2., 4.],\n             [6., 8.]]\n" in result.stdout


def test_eval_set_scalar(run_cli) -> None:
    data = eval_json(run_cli, EXAMPLES / "circuit.nn", "--set", "x=1")
    assert data["values"]["f"] == (1 + 5) * -4
    assert data["grads"] == {"x": -4.0, "y": -4.0, "z": 6.0}
    data = eval_json(run_cli, EXAMPLES / "neuron.nn", "--set", "w0=0", "--set", "x1=0.5")
    assert data["values"]["w0"] == 0.0 and data["values"]["x1"] == 0.5


def test_eval_set_batch_dim(run_cli) -> None:
    data = eval_json(run_cli, EXAMPLES / "mlp.nn", "--set", "N=8")
    assert np.shape(data["values"]["X"]) == (8, 64)
    assert np.shape(data["values"]["scores"]) == (8, 10)
    assert np.shape(data["grads"]["X"]) == (8, 64)
    assert np.shape(data["grads"]["h1.W"]) == (64, 128)
    labels = np.array(data["values"]["y"])
    assert labels.dtype.kind == "i" and labels.min() >= 0 and labels.max() < 10
    assert "y" not in data["grads"]


def test_eval_set_value_fixes_the_batch_for_random_inputs(tmp_path: Path, run_cli) -> None:
    data = eval_json(run_cli, EXAMPLES / "mlp.nn", "--set", "y=[0, 9, 3]")
    assert np.shape(data["values"]["X"]) == (3, 64) and data["values"]["y"] == [0, 9, 3]


def test_eval_set_tensor_as_json(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", """
        input X: float[N, 2]
        param w: [2] = ones()
        loss = sum(X * w)
        minimize loss
    """)
    data = eval_json(run_cli, "m.nn", "--set", "X=[[1, 2], [3, 4], [5, 6]]", "--set", "w=[0.5, -1]")
    assert data["values"]["X"] == [[1, 2], [3, 4], [5, 6]]
    assert data["values"]["loss"] == 0.5 * 9 - 12
    assert data["grads"] == {"X": [[0.5, -1.0]] * 3, "w": [9.0, 12.0]}


@pytest.mark.parametrize("text", ["[nan, 1, -inf]", "[NaN, 1, -Infinity]", "[nan, 1, -1e999]"])
def test_eval_set_takes_nan_and_inf_as_numpy_prints_them(tmp_path: Path, text: str) -> None:
    """1e999 was inf and nan was refused: a non-finite input (to see what a model's health check
    says of it) is written as numpy prints it, or as JSON's NaN and Infinity."""
    from nncompile.evaluate import evaluate_file

    path = write_nn(tmp_path, "m.nn", "input X: float[3]\ny = sum(X * X)\noutput y\nminimize y\n")
    X = evaluate_file(path, {"X": text}).inputs["X"]
    assert np.isnan(X[0]) and X[1] == 1 and X[2] == -np.inf


def test_eval_random_inputs_are_seeded(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", "input X: float[N, 3]\nparam W: [3] = normal(std=1)\nl = sum(X * W)\nminimize l\n")
    a = eval_json(run_cli, "m.nn")
    b = eval_json(run_cli, "m.nn")
    c = eval_json(run_cli, "m.nn", "--seed", "1")
    assert a == b
    assert a["values"]["X"] != c["values"]["X"] and a["values"]["W"] != c["values"]["W"]


def test_eval_float64(run_cli) -> None:
    data = eval_json(run_cli, EXAMPLES / "neuron.nn", "--dtype", "float64")
    f = 1 / (1 + np.exp(-1.0))
    assert data["values"]["f"] == pytest.approx(f, rel=1e-15)
    assert data["grads"]["w2"] == pytest.approx(f * (1 - f), rel=1e-15)


def test_eval_output_can_be_cut_short(run_cli, tmp_path: Path) -> None:
    """`nncompile eval big.nn | head -1` must not print a BrokenPipeError traceback."""
    import subprocess
    import sys
    script = (f"{sys.executable} -m nncompile eval {EXAMPLES / 'two_layer.nn'} --json | head -c 10")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout == '{"values":'
    assert "Traceback" not in done.stderr, done.stderr


# ---- check ----------------------------------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_check_passes_on_examples(example: Path, run_cli) -> None:
    result = run_cli("check", example)
    assert result.returncode == 0, result
    assert "gradient check passed" in result.stdout
    assert "FAIL" not in result.stdout


def test_check_reports_each_gradient(run_cli) -> None:
    result = run_cli("check", EXAMPLES / "two_layer.nn")
    for name in ("fc1.W", "fc1.b", "fc2.W", "fc2.b", "X"):
        assert any(line.split()[2:3] == [name] and line.rstrip().endswith("ok")
                   for line in result.stdout.splitlines() if line.strip().startswith("gradient of")), name


def test_check_without_a_loss_still_shape_checks(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", "input x: float[N, 3]\ny = x * 2\noutput y\n")
    result = run_cli("check", "m.nn")
    assert result.returncode == 0, result
    assert "shape-checked: 1 input, 0 params, 1 output" in result.stdout and "skipped" in result.stdout


def test_check_fails_on_a_shape_error(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", "input x: float[N, 3]\ny = sum(x @ x)\nminimize y\n")
    result = run_cli("check", "m.nn")
    assert result.returncode == 1
    assert result.stderr.startswith("m.nn:2:9: error: cannot multiply [N, 3] @ [N, 3]")


def test_check_passes_a_gradient_that_is_exactly_zero(tmp_path: Path, run_cli) -> None:
    """A bias right before batch norm gets a zero gradient: round-off, not a failure."""
    model = write_nn(tmp_path, "bn.nn", """
        import nn
        input X: float[N, 4]
        input y: int[N]
        param W: [4, 6] = he()
        param b: [6] = zeros()
        h = batchnorm(X @ W + b) as bn
        scores = linear(relu(h), out=3) as out
        loss = softmax_cross_entropy(scores, y)
        minimize loss
    """)
    result = run_cli("check", model)
    assert result.returncode == 0, result.stderr
    assert "gradient of b" in result.stdout and "passed" in result.stdout


# ---- the boundary: arguments, the files the commands read and write ---------------------

SQUARES = "input x: float[3]\ny = sum(x * x)\noutput y\n"


@pytest.mark.parametrize("verb", ["eval", "render", "check", "train"])
def test_a_negative_seed_is_a_usage_error(verb: str, tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", SQUARES)
    result = run_cli(verb, "m.nn", "--seed", "-1", *(["-o", "m.svg"] if verb == "render" else []))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert "nncompile: error: argument --seed: '-1': a seed is a whole number from 0 up" in result.stderr


@pytest.mark.parametrize("verb", ["eval", "render", "check"])
def test_a_set_value_nested_beyond_reason_is_a_clean_error(verb: str, tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "m.nn", SQUARES)
    deep = "[" * 5000 + "]" * 5000
    result = run_cli(verb, "m.nn", "--set", f"x={deep}", *(["-o", "m.dot"] if verb == "render" else []))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert result.stderr.startswith(f"nncompile: error: --set x={'[' * 37}...: the list is nested too deeply\n")


@pytest.mark.parametrize("verb, output", [("compile", "m.nn"), ("compile", "./sub/../m.nn"), ("render", "m.nn")])
def test_the_output_is_never_the_model_itself(verb: str, output: str, tmp_path: Path, run_cli) -> None:
    (tmp_path / "sub").mkdir()
    write_nn(tmp_path, "m.nn", SQUARES)
    result = run_cli(verb, "m.nn", "-o", output)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert result.stderr.startswith(f"nncompile: error: -o {output}: that is the model file;")
    assert (tmp_path / "m.nn").read_text() == SQUARES


@pytest.mark.parametrize("args, message", [
    (["compile", "gone.nn", "-o", "gone.py"], "nncompile: error: gone.nn: no such file\n"),
    (["eval", "."], "nncompile: error: .: is a directory, not a .nn file\n"),
    (["eval", "m.nn", "--set", "z=1"], "nncompile: error: --set z: the model has no input, param or dim of that name"),
    (["train", "m.nn", "--data", "gone.npz"], "nncompile: error: gone.npz: data file not found"),
])
def test_an_error_with_no_place_in_a_file_has_no_made_up_position(args: list[str], message: str, tmp_path: Path,
                                                                  run_cli) -> None:
    write_nn(tmp_path, "m.nn", SQUARES)
    result = run_cli(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert result.stderr.startswith(message), result


def test_train_refuses_an_out_that_is_a_file(tmp_path: Path, run_cli) -> None:
    (tmp_path / "results").write_text("mine\n")
    for out in ("results", "results/run"):
        result = run_cli("train", EXAMPLES / "digits_mlp.nn", "--data", "digits", "--out", out)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result
        assert result.stderr.startswith(f"nncompile: error: cannot use {out} as the run directory: results is a "
                                        "file, not a folder")
    assert (tmp_path / "results").read_text() == "mine\n"


@pytest.mark.parametrize("meta, flip, message", [
    ('{"format": 1}', True, "not a readable .npz file: Bad CRC-32"),
    ('{"format": 1, "step": 3}', False, "cannot read the checkpoint (KeyError: 'rng'): it is damaged"),
    ('[1]', False, "cannot read the checkpoint (AttributeError:"),
])
def test_train_reports_a_damaged_checkpoint_cleanly(meta: str, flip: bool, message: str, tmp_path: Path,
                                                    run_cli) -> None:
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    checkpoint.parent.mkdir()
    np.savez(checkpoint, meta=np.array(meta), **{"param/W": np.zeros(500)})
    if flip:
        blob = bytearray(checkpoint.read_bytes())
        blob[len(blob) // 3] ^= 0xFF
        checkpoint.write_bytes(bytes(blob))
    result = run_cli("train", EXAMPLES / "digits_mlp.nn", "--data", "digits", "--out", "run", "--resume")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert result.stderr.startswith(f"nncompile: error: run/checkpoint.npz: {message}"), result
