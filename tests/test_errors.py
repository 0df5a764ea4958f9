"""Every mistake a user can make is reported against their own text.

Each case runs the CLI (its main(), as ``python -m nncompile`` does; a sample of the cases
also as a real process) in a fresh directory, with relative paths so the messages are the
same on every machine, and compares stderr with tests/golden/CASE.txt exactly. Each message must be
``FILE:LINE:COL: error: MESSAGE``, then the source line and a caret under ``points_at``; an error
with no place in a file's text (a missing file, a bad --set) is ``nncompile: error: MESSAGE``,
perhaps with a note that quotes the declaration it is about. The exit code is 1 and there is
never a traceback.

To regenerate the golden files after changing a message on purpose:

    NNCOMPILE_UPDATE_GOLDENS=1 python -m pytest tests/test_errors.py

and review the diff of tests/golden/ like any other change.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import nncompile
from nncompile.cli import main

from conftest import GOLDEN, CliResult, write_nn

UPDATE = os.environ.get("NNCOMPILE_UPDATE_GOLDENS") == "1"
STDLIB = str(Path(nncompile.__file__).parent / "stdlib")   # written <nncompile>/stdlib in the goldens, for any checkout

AFFINE = """
        layer affine(x: [B, K], out: int) -> [B, out] {
            param W: [K, out] = he()
            param b: [out] = zeros()
            return x @ W + b
        }
"""


@dataclass
class Case:
    files: dict[str, str]
    args: list[str]
    points_at: str | None          # the text the caret must be under; None: no source line to show
    line: int | None = None        # where the error is, when not in the first file's first match
    located: bool = True           # False: no place in a file (nncompile: error: ...); points_at is then a note's
    extra: dict = field(default_factory=dict)


CASES: dict[str, Case] = {
    "syntax_error": Case({"m.nn": """
        input x = 1
        y = x +
        output y
    """}, ["check", "m.nn"], points_at="\n"),
    "unexpected_token": Case({"m.nn": """
        input x = 1
        y = x + 2 3
        output y
    """}, ["check", "m.nn"], points_at="3"),
    "unknown_name": Case({"m.nn": """
        input x = 1
        input y = 2
        f = (x + y) * z
        output f
    """}, ["check", "m.nn"], points_at="z"),
    "unknown_name_suggestion": Case({"m.nn": """
        input scores: float[N, 10]
        loss = sum(score)
        minimize loss
    """}, ["check", "m.nn"], points_at="score)"),
    "unknown_member_differs_in_case": Case({"m.nn": """
        input X: float[N, 4]
        layer dense(x: [B, K], out: int) -> [B, out] {
            param W: [K, out] = he()
            return x @ W
        }
        a = dense(X, out=4) as fc
        loss = sum(fc.w ** 2)
        minimize loss
    """}, ["check", "m.nn"], points_at="fc.w"),
    "star_where_a_matrix_product_fits": Case({"m.nn": """
        input X: float[N, 4]
        param W: [4, 3] = xavier()
        scores = X * W
        loss = sum(scores)
        minimize loss
    """}, ["check", "m.nn"], points_at="X * W"),
    "initialiser_not_called": Case({"m.nn": """
        input X: float[N, 4]
        param W: [4, 3] = he
        loss = sum(X @ W)
        minimize loss
    """}, ["check", "m.nn"], points_at="he"),
    "unknown_op": Case({"m.nn": """
        input x: float[3]
        y = sum(rellu(x))
        output y
    """}, ["check", "m.nn"], points_at="rellu(x)"),
    "matmul_mismatch": Case({"m.nn": """
        const D = 3072, H = 100, C = 10
        input X: float[N, D]
        param W1: [D, H] = he()
        param W2: [D, C] = he()
        h = relu(X @ W1)
        scores = h @ W2
        output scores
    """}, ["check", "m.nn"], points_at="h @ W2"),
    "matmul_mismatch_in_layer": Case({"m.nn": """
        const D = 3072, H = 100, C = 10
        input X: float[N, D]
        layer affine(x: [B, K], out: int) -> [B, out] {
            param W: [K, out] = he()
            return x @ W
        }
        h = relu(affine(X, out=H) as fc1)
        scores = affine(X, out=C) as fc2
        s2 = h @ fc2.W
        output s2
    """}, ["check", "m.nn"], points_at="h @ fc2.W"),
    "shape_mismatch_inside_layer": Case({"m.nn": """
        layer affine(x: [B, K], out: int) -> [B, out] {
            param W: [out, K] = he()
            return x @ W
        }
        input X: float[N, 3]
        h = affine(X, out=4)
        output h
    """}, ["check", "m.nn"], points_at="x @ W"),
    "dim_that_is_a_typo_of_a_const": Case({"m.nn": """
        const D = 4, H = 3
        input X: float[N, Dd]
        param W: [D, H] = he()
        h = X @ W
        output h
    """}, ["check", "m.nn"], points_at="X @ W"),
    "dims_that_differ_only_in_case": Case({"m.nn": """
        input X: float[n, 4]
        input y: int[N]
        param W: [4, 3] = he()
        loss = softmax_cross_entropy(X @ W, y)
        minimize loss
    """}, ["check", "m.nn"], points_at="y)"),
    "shape_error_only_eval_mode_meets": Case({"m.nn": """
        input X: float[N, 4]
        param W: [4, 3] = he()
        train {
            h = X @ W
        }
        eval {
            h = X @ W.T
        }
        loss = sum(h)
        minimize loss
    """}, ["check", "m.nn"], points_at="X @ W.T"),
    "name_only_a_train_block_defines": Case({"m.nn": """
        input X: float[N, 4]
        train {
            h = X * 2
        }
        output h
    """}, ["check", "m.nn"], points_at="h", line=5),
    "stdlib_layer_without_its_import": Case({"m.nn": """
        input X: float[N, 4]
        h = dense(X, out=3)
        output h
    """}, ["check", "m.nn"], points_at="dense", line=2),
    "layer_local_only_its_train_block_defines": Case({"m.nn": """
        import nn
        input X: float[N, 4]
        h = batchnorm(X) as bn
        output h
        output bn.mu
    """}, ["check", "m.nn"], points_at="bn.mu", line=5),
    "const_of_a_dim_an_input_declares_later": Case({"m.nn": """
        const M = N
        input X: float[N, 4]
        y = sum(X) / M
        output y
    """}, ["check", "m.nn"], points_at="N"),
    "slice_with_a_step": Case({"m.nn": """
        input Z: float[N, 4, 4]
        w = Z[:, 1:3, ::2]
        output w
    """}, ["check", "m.nn"], points_at=":2"),
    "reshape_of_a_symbolic_dim_times_a_number": Case({"m.nn": """
        input a: float[N, 2, 3]
        b = reshape(a, [-1, 3])
        output b
    """}, ["check", "m.nn"], points_at="reshape"),
    "mismatch_beside_a_const_that_resembles_the_batch_dim": Case({"m.nn": """
        const NC = 10
        input X: float[N, 4]
        param W: [3, NC] = he()
        h = X @ W
        output h
    """}, ["check", "m.nn"], points_at="X @ W"),
    "param_shape_of_a_dim_an_input_declares_below": Case({"m.nn": """
        param W: [K, 3] = he()
        input X: float[N, K]
        h = X @ W
        output h
    """}, ["check", "m.nn"], points_at="K"),
    "add_mismatch": Case({"m.nn": """
        input a: float[N, 3]
        input b: float[N, 4]
        c = a + b
        output c
    """}, ["check", "m.nn"], points_at="a + b"),
    "int_where_float": Case({"m.nn": """
        input y: int[N]
        z = y * 2
        output z
    """}, ["check", "m.nn"], points_at="y * 2"),
    "float_labels": Case({"m.nn": """
        input scores: float[N, 10]
        input y: float[N]
        loss = softmax_cross_entropy(scores, y)
        minimize loss
    """}, ["check", "m.nn"], points_at="y)"),
    "layer_wrong_argument": Case({"m.nn": AFFINE + """
        input X: float[N, 3]
        h = affine(X, outs=4)
        output h
    """}, ["check", "m.nn"], points_at="outs=4"),
    "layer_argument_wrong_shape": Case({"m.nn": AFFINE + """
        input X: float[N, 3, 2]
        h = affine(X, out=4)
        output h
    """}, ["check", "m.nn"], points_at="X, out"),
    "layer_too_many_arguments": Case({"m.nn": AFFINE + """
        input X: float[N, 3]
        h = affine(X, 4, 5)
        output h
    """}, ["check", "m.nn"], points_at="5)"),
    "layer_missing_argument": Case({"m.nn": AFFINE + """
        input X: float[N, 3]
        h = affine(X)
        output h
    """}, ["check", "m.nn"], points_at="affine(X)"),
    "layer_shape_vars_disagree": Case({"m.nn": """
        layer pair(a: [B, K], b: [B, K]) -> [B, K] {
            return a + b
        }
        input X: float[N, 4]
        input M: float[5, 4]
        z = pair(X, M)
        output z
    """}, ["check", "m.nn"], points_at="M)"),
    "defined_twice": Case({"m.nn": """
        input x = 1
        y = x * 2
        y = x + 1
        output y
    """}, ["check", "m.nn"], points_at="y = x + 1", line=3),
    "keyword_as_name": Case({"m.nn": """
        input x = 1
        output = x * 2
        output output
    """}, ["check", "m.nn"], points_at="output = x"),
    "missing_file": Case({}, ["check", "missing.nn"], points_at=None, located=False),
    "missing_file_compile": Case({}, ["compile", "nowhere/missing.nn", "-o", "out.py"], points_at=None, located=False),
    "empty_file": Case({"m.nn": ""}, ["check", "m.nn"], points_at=None, located=False),
    "comments_only_file": Case({"m.nn": "# nothing here yet\n\n"}, ["check", "m.nn"], points_at="# nothing"),
    "no_output": Case({"m.nn": """
        input x = 1
        y = x * 2
    """}, ["check", "m.nn"], points_at="y = x * 2"),
    "unclosed_bracket": Case({"m.nn": """
        input x = 1
        y = (x + 2
        output y
    """}, ["check", "m.nn"], points_at="(x + 2"),
    "unclosed_bracket_in_shape": Case({"m.nn": """
        input x: float[N, 3
        y = sum(x)
        output y
    """}, ["check", "m.nn"], points_at="[N, 3"),
    "unclosed_brace": Case({"m.nn": """
        layer double(x) {
            return 2 * x
        input x = 1
        output x
    """}, ["check", "m.nn"], points_at="{"),
    "unmatched_bracket": Case({"m.nn": """
        input x = 1
        y = (x + 2))
        output y
    """}, ["check", "m.nn"], points_at=")\n"),
    "mismatched_bracket": Case({"m.nn": """
        input x = 1
        y = [x + 2)
        output y
    """}, ["check", "m.nn"], points_at=")\n"),
    "bad_character": Case({"m.nn": """
        input x = 1
        y = x $ 2
        output y
    """}, ["check", "m.nn"], points_at="$"),
    "power_written_with_a_caret": Case({"m.nn": """
        input x = 3
        y = x ^ 2
        output y
    """}, ["check", "m.nn"], points_at="^"),
    "non_ascii_name": Case({"m.nn": """
        input α = 1
        output α
    """}, ["check", "m.nn"], points_at="α"),
    "import_missing": Case({"m.nn": """
        import "layers.nn"
        input x = 1
        output x
    """}, ["check", "m.nn"], points_at='import "layers.nn"'),
    "import_cycle": Case({"m.nn": """
        import "lib/a.nn"
        input x = 1
        output x
    """, "lib/a.nn": """
        import "../m.nn"
    """}, ["check", "m.nn"], points_at='import "../m.nn"', extra={"file": "lib/a.nn"}),
    "error_in_imported_file": Case({"m.nn": """
        import "lib/layers.nn"
        input x: float[2]
        y = sum(double(x))
        output y
    """, "lib/layers.nn": """
        layer double(v) {
            return v * 2 +
        }
    """}, ["check", "m.nn"], points_at="\n", extra={"file": "lib/layers.nn"}),
    "bad_set_value": Case({"m.nn": """
        input x: float[3]
        y = sum(x)
        output y
    """}, ["eval", "m.nn", "--set", "x=abc"], points_at="input x", located=False),
    "bad_set_boolean": Case({"m.nn": """
        input x: float[3]
        y = sum(x)
        output y
    """}, ["eval", "m.nn", "--set", "x=[true, 2, 3]"], points_at="input x", located=False),
    "bad_set_too_large_for_float32": Case({"m.nn": """
        input x: float[3]
        y = sum(x)
        output y
    """}, ["eval", "m.nn", "--set", "x=[1e39, 1, 1]"], points_at="input x", located=False),
    "bad_set_shape": Case({"m.nn": """
        input x: float[3]
        y = sum(x)
        output y
    """}, ["eval", "m.nn", "--set", "x=[1, 2]"], points_at="input x", located=False),
    "bad_set_int": Case({"m.nn": """
        input labels: int[2]
        input s: float[2, 3]
        loss = softmax_cross_entropy(s, labels)
        minimize loss
    """}, ["eval", "m.nn", "--set", "labels=[0.5, 1]"], points_at="input labels", located=False),
    "bad_set_dim": Case({"m.nn": """
        input x: float[N, 3]
        y = sum(x)
        output y
    """}, ["eval", "m.nn", "--set", "N=0"], points_at="input x", located=False),
    "bad_set_label_out_of_range": Case({"m.nn": """
        input s: float[N, 3]
        input y: int[N]
        loss = softmax_cross_entropy(s, y)
        minimize loss
    """}, ["eval", "m.nn", "--set", "y=[0, 3]", "--set", "N=2"], points_at="input y", located=False),
    "set_unknown_name": Case({"m.nn": """
        input x: float[3]
        y = sum(x)
        output y
    """}, ["eval", "m.nn", "--set", "z=1"], points_at=None, located=False),
    "set_without_value": Case({"m.nn": """
        input x = 1
        output x
    """}, ["eval", "m.nn", "--set", "x"], points_at=None, located=False),
    "param_of_symbolic_shape": Case({"m.nn": """
        input x: float[N, 3]
        param W: [N, 3] = zeros()
        y = sum(x * W)
        output y
    """}, ["check", "m.nn"], points_at="N, 3]"),
    "loss_not_scalar": Case({"m.nn": """
        input x: float[N, 3]
        loss = x * 2
        minimize loss
    """}, ["check", "m.nn"], points_at="minimize loss"),
    "labels_do_not_match_scores": Case({"m.nn": """
        input s: float[N, 10]
        input y: int[M]
        loss = softmax_cross_entropy(s, y)
        minimize loss
    """}, ["check", "m.nn"], points_at="y)"),
    "number_overflows_float64": Case({"m.nn": """
        input x = 1e400
        output x
    """}, ["eval", "m.nn"], points_at="1e400"),
    "constant_too_large": Case({"m.nn": """
        const A = 10 ** 10 ** 9
        input x = 1
        y = x * A
        output y
    """}, ["compile", "m.nn", "-o", "m.py"], points_at="10 ** 10"),
    "recursive_layer": Case({"m.nn": """
        layer f(a: [K]) -> [K] {
            return g(a)
        }
        layer g(a: [K]) -> [K] {
            return f(a) * 2
        }
        input x: float[3]
        y = sum(f(x))
        output y
    """}, ["check", "m.nn"], points_at="f(a)"),
    "imported_layer_called_by_dotted_name": Case({"m.nn": """
        import nn
        input X: float[N, 4]
        h = nn.dense(X, out=3)
        output h
    """}, ["check", "m.nn"], points_at="nn.dense"),
    "dotted_name_called": Case({"m.nn": """
        input X: float[N, 4]
        h = fc1.W(X)
        output h
    """}, ["check", "m.nn"], points_at="fc1.W"),
    "used_before_defined": Case({"m.nn": """
        input X: float[N, 4]
        h = X @ W
        param W: [4, 3] = he()
        output h
    """}, ["check", "m.nn"], points_at="W"),
    "layer_used_before_defined": Case({"m.nn": """
        input X: float[N, 4]
        h = repeat 3 block(X)
        layer block(x: [B, K]) -> [B, K] {
            return tanh(x)
        }
        output h
    """}, ["check", "m.nn"], points_at="block(X)"),
    "python_def": Case({"m.nn": """
        def f(x):
            return x
    """}, ["check", "m.nn"], points_at="def"),
    "unknown_initialiser": Case({"m.nn": """
        param W: [3, 2] = xaiver()
        y = sum(W)
        minimize y
    """}, ["check", "m.nn"], points_at="xaiver()"),
}


def run_in_process(args: list[str], cwd: Path, monkeypatch) -> CliResult:
    """What ``python -m nncompile ARGS`` does (it only calls main), without starting Python."""
    monkeypatch.chdir(cwd)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return CliResult(code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_message(name: str, tmp_path: Path, monkeypatch) -> None:
    case = CASES[name]
    for file, text in case.files.items():
        write_nn(tmp_path, file, text)
    result = run_in_process(case.args, tmp_path, monkeypatch)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr, result
    assert result.stdout == "", result

    lines = result.stderr.rstrip("\n").split("\n")
    if case.located:
        header = re.fullmatch(r"(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.+)", lines[0])
        assert header, f"first line is not FILE:LINE:COL: error: MESSAGE\n{result.stderr}"
    else:   # no place in a file's text: no made-up position; a note may show what it is about
        assert re.fullmatch(r"nncompile: error: .+", lines[0]), \
            f"first line is not nncompile: error: MESSAGE\n{result.stderr}"
        lines = lines[1:]
        header = re.fullmatch(r"(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+): note: (?P<message>.+)", lines[0]) \
            if lines else None
        assert (header is None) == (case.points_at is None), result.stderr
    if header:
        expected_file = case.extra.get("file") or (next(iter(case.files), None) or case.args[1])
        assert header["file"] == expected_file
    if case.points_at is None:
        assert len(lines) <= 1 or "note:" in lines[1], result.stderr
    else:
        assert len(lines) >= 3, f"no source line and caret:\n{result.stderr}"
        source_file = tmp_path / header["file"]
        source = source_file.read_text().split("\n")[int(header["line"]) - 1]
        col = int(header["col"])
        assert lines[1] == "    " + source, "the second line quotes the source line"
        caret = re.fullmatch(r"    ( *)\^~*", lines[2])
        assert caret and len(caret[1]) == col - 1, "the caret sits under the reported column"
        assert (source + "\n")[col - 1:].startswith(case.points_at), \
            f"caret at column {col} of {source!r}, expected under {case.points_at!r}"
        if case.line is not None:
            assert int(header["line"]) == case.line

    golden = GOLDEN / f"{name}.txt"
    stderr = result.stderr.replace(STDLIB, "<nncompile>/stdlib")
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(stderr)
    assert golden.exists(), f"no golden file {golden}; run with NNCOMPILE_UPDATE_GOLDENS=1 to create it"
    assert stderr == golden.read_text(), f"stderr differs from {golden.name}"


@pytest.mark.parametrize("name", ["syntax_error", "matmul_mismatch", "layer_missing_argument", "missing_file",
                                  "bad_set_value", "import_cycle"])
def test_error_message_from_a_real_process(name: str, tmp_path: Path, run_cli) -> None:
    """The same bytes on stderr, and exit code 1, when the CLI runs as its own process."""
    case = CASES[name]
    for file, text in case.files.items():
        write_nn(tmp_path, file, text)
    result = run_cli(*case.args, cwd=tmp_path)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (GOLDEN / f"{name}.txt").read_text()


def test_every_golden_file_has_a_case() -> None:
    """A stale golden file (its case renamed or removed) is an error, not silent clutter."""
    assert {p.stem for p in GOLDEN.glob("*.txt")} == set(CASES)


def test_failed_compile_leaves_nothing_behind(tmp_path: Path, run_cli) -> None:
    write_nn(tmp_path, "bad.nn", "input x: float[2, 3]\ninput y: float[4]\nz = x + y\noutput z\n")
    before = set(tmp_path.iterdir())
    result = run_cli("compile", "bad.nn", "-o", "out/bad.py")
    assert result.returncode == 1 and "bad.nn:3:5: error:" in result.stderr
    assert set(tmp_path.rglob("*")) == before, "a failed compile wrote files"


def test_the_suggested_name_differs_in_case_first_then_is_the_closest_with_the_longest_common_start() -> None:
    from nncompile.errors import closest

    assert closest("wt", ["X", "Wt", "w"]) == "Wt"
    assert closest("fc.w", ["fc.x", "fc.W", "fc.b"]) == "fc.W"
    assert closest("fc.Wx", ["fc.x", "fc.W"]) == "fc.W"
    assert closest("scroes", ["scores", "loss"]) == "scores"
    assert closest("zzz", ["scores", "loss"]) is None
