"""The generated module: standalone (numpy only), deterministic, readable, and correct.

Its API is a fixed contract (ARCHITECTURE.md): INPUTS, PARAMS, OUTPUTS, init_params,
forward, value_and_grad.
"""
from __future__ import annotations

import ast
import importlib.util
import subprocess
import textwrap
import sys
from pathlib import Path

import numpy as np
import pytest

from nncompile.codegen import emit_module
from nncompile.compiler import build, compile_and_load, compile_file, load_module
from nncompile.elaborate import elaborate
from nncompile.parser import parse

from conftest import EXAMPLE_FILES, EXAMPLES, assert_grads_match, cli, write_nn

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def imported_modules(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("__import__", "exec", "eval"):
            found.add(node.func.id)
    return found


def load_path(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- standalone and deterministic ----------------------------------------------------

@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_module_imports_only_numpy(example: Path) -> None:
    source = compile_file(example)
    assert imported_modules(source) == {"numpy"}
    assert "nncompile." not in source.replace("compiled by nncompile", "")


def test_module_runs_without_nncompile(tmp_path: Path) -> None:
    """Import the written module in a fresh interpreter and check nncompile never gets loaded."""
    out = tmp_path / "circuit_mod.py"
    out.write_text(compile_file(EXAMPLES / "circuit.nn"))
    script = ("import sys, circuit_mod; out, g = circuit_mod.value_and_grad({}); "
              "assert 'nncompile' not in sys.modules, 'the module imported nncompile'; "
              "print(float(out['f']), float(g['x']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["-12.0", "-4.0"]


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_two_compiles_are_byte_identical(example: Path) -> None:
    assert compile_file(example) == compile_file(example)
    assert compile_file(example, dtype="float64") == compile_file(example, dtype="float64")


def test_compiles_in_separate_processes_are_byte_identical(tmp_path: Path) -> None:
    """Nothing depends on hash seeds, dict or set order of one run."""
    outputs = []
    for seed in ("0", "12345"):
        out = tmp_path / f"mlp_{seed}.py"
        result = cli("compile", EXAMPLES / "mlp.nn", "-o", out, cwd=tmp_path, env={"PYTHONHASHSEED": seed})
        assert result.returncode == 0, result
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0].decode() == compile_file(EXAMPLES / "mlp.nn")


# ---- the API contract -----------------------------------------------------------------

def test_tables_describe_inputs_params_outputs() -> None:
    m = compile_and_load(EXAMPLES / "two_layer.nn")
    assert m.INPUTS == {"X": (("N", 3072), "float32"), "y": (("N",), "int64")}
    assert m.PARAMS == {"fc1.W": ((3072, 100), "float32"), "fc1.b": ((100,), "float32"),
                        "fc2.W": ((100, 10), "float32"), "fc2.b": ((10,), "float32")}
    assert m.OUTPUTS == {"scores": (("N", 10), "float32"), "loss": ((), "float32")}


def test_init_params_is_seeded_and_follows_the_initialisers() -> None:
    m = compile_and_load(EXAMPLES / "two_layer.nn")
    a, b, c = m.init_params(0), m.init_params(0), m.init_params(1)
    assert set(a) == set(m.PARAMS)
    for name in a:
        assert a[name].shape == m.PARAMS[name][0] and a[name].dtype == np.float32
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["fc1.W"], c["fc1.W"])
    np.testing.assert_array_equal(a["fc1.b"], np.zeros(100))
    # he(): N(0, 2 / fan_in), fan_in = 3072
    assert abs(a["fc1.W"].std() - np.sqrt(2 / 3072)) < 0.05 * np.sqrt(2 / 3072)
    assert abs(a["fc1.W"].mean()) < 0.01 * np.sqrt(2 / 3072)


def test_forward_returns_every_output_and_matches_numpy() -> None:
    m = compile_and_load(EXAMPLES / "two_layer.nn", dtype="float64")
    p = m.init_params(0)
    p = {k: v + 0.01 for k, v in p.items()}
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((5, 3072)), np.array([0, 1, 9, 3, 3])
    out = m.forward(p, X=X, y=y)
    assert set(out) == {"scores", "loss"}
    h = np.maximum(X @ p["fc1.W"] + p["fc1.b"], 0)
    scores = h @ p["fc2.W"] + p["fc2.b"]
    shifted = scores - scores.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(5), y].mean() + 0.5 * 1e-3 * ((p["fc1.W"] ** 2).sum() + (p["fc2.W"] ** 2).sum())
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-10)
    np.testing.assert_allclose(out["loss"], loss, rtol=1e-10)
    out2, _ = m.value_and_grad(p, X=X, y=y)
    np.testing.assert_allclose(out2["loss"], loss, rtol=1e-10)


def test_symbolic_batch_size_varies_between_calls() -> None:
    m = compile_and_load(EXAMPLES / "mlp.nn", dtype="float64")
    p = m.init_params(0)
    for n in (1, 7, 3):
        out, grads = m.value_and_grad(p, X=np.ones((n, 64)), y=np.zeros(n, dtype=int))
        assert out["scores"].shape == (n, 10) and grads["X"].shape == (n, 64)


def test_one_condition_binds_each_dim_after_the_ndim_test_that_makes_it_safe(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "square.nn", "input x: float[N, N]\ninput y: float[N]\nloss = sum(x @ y)\nminimize loss\n")
    source = compile_file(path, dtype="float64")
    reader = next(f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef) and f.name == "_read_inputs")
    condition = next(node for node in ast.walk(reader) if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And))
    tests = [ast.unparse(test) for test in condition.values]
    assert tests[2:5] == ["x.ndim == 2", "(N := x.shape[0]) >= 1", "x.shape[1] == N"]
    assert sum(":=" in test for test in tests) == 1 and tests.index("y.shape[0] == N") > tests.index("y.ndim == 1")
    m = load_module(source)
    assert m.value_and_grad({}, x=np.ones((3, 3)), y=np.ones(3))[1]["y"].shape == (3,)
    with pytest.raises(ValueError, match="N = 2"):
        m.value_and_grad({}, x=np.ones((3, 3)), y=np.ones(2))


def test_results_are_not_overwritten_by_later_calls() -> None:
    """Outputs and gradients are fresh arrays: the next call (which may reuse workspace
    buffers) must not change what an earlier call returned, nor the caller's arrays."""
    m = compile_and_load(EXAMPLES / "mlp.nn", dtype="float64")
    p = m.init_params(0)
    rng = np.random.default_rng(0)
    X1, X2 = rng.standard_normal((4, 64)), rng.standard_normal((4, 64))
    y = np.array([1, 2, 3, 4])
    snapshot = {k: v.copy() for k, v in p.items()}
    X1_copy = X1.copy()
    out1, grads1 = m.value_and_grad(p, X=X1, y=y)
    kept_out = {k: np.array(v, copy=True) for k, v in out1.items()}
    kept_grads = {k: np.array(v, copy=True) for k, v in grads1.items()}
    fwd1 = m.forward(p, X=X1, y=y)
    kept_fwd = {k: np.array(v, copy=True) for k, v in fwd1.items()}
    m.value_and_grad(p, X=X2, y=y)
    m.forward(p, X=X2, y=y)
    for k in kept_out:
        np.testing.assert_array_equal(out1[k], kept_out[k], err_msg=k)
    for k in kept_grads:
        np.testing.assert_array_equal(grads1[k], kept_grads[k], err_msg=k)
    for k in kept_fwd:
        np.testing.assert_array_equal(fwd1[k], kept_fwd[k], err_msg=k)
    for k in p:
        np.testing.assert_array_equal(p[k], snapshot[k], err_msg=f"param {k} was modified")
    np.testing.assert_array_equal(X1, X1_copy)


def test_intermediate_outputs_are_not_overwritten_by_later_calls(compile_nn) -> None:
    m = compile_nn("""
        input x: float[N, 3]
        param W: [3, 3] = normal(std=1)
        h = relu(x @ W)
        g = h * 2
        loss = sum(g * g)
        output h, g
        minimize loss
    """, dtype="float64")
    p = m.init_params(0)
    out1, grads1 = m.value_and_grad(p, x=np.ones((2, 3)))
    kept = {k: v.copy() for k, v in out1.items()}, {k: v.copy() for k, v in grads1.items()}
    m.value_and_grad(p, x=np.full((2, 3), -5.0))
    for k in out1:
        np.testing.assert_array_equal(out1[k], kept[0][k], err_msg=k)
    for k in grads1:
        np.testing.assert_array_equal(grads1[k], kept[1][k], err_msg=k)


def test_bad_inputs_are_rejected_clearly() -> None:
    m = compile_and_load(EXAMPLES / "two_layer.nn")
    p = m.init_params(0)
    with pytest.raises(TypeError, match=r"missing input 'y': int64\['N'\], passed by name \(y=\.\.\.\)"):
        m.forward(p, X=np.ones((2, 3072)))
    with pytest.raises(TypeError, match=r"missing input 'X': .*, passed by name \(X=\.\.\.\)"):
        m.forward(p, np.ones((2, 3072)))   # X given by position: the inputs come by name only
    with pytest.raises(TypeError, match="unknown input"):
        m.forward(p, X=np.ones((2, 3072)), y=np.zeros(2, dtype=int), z=1)
    with pytest.raises(ValueError, match="'X'"):
        m.forward(p, X=np.ones((2, 30)), y=np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="N"):
        m.forward(p, X=np.ones((2, 3072)), y=np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"class labels.*\[0, 10\)"):
        m.forward(p, X=np.ones((2, 3072)), y=np.array([0, 10]))
    with pytest.raises(TypeError, match="integers"):
        m.forward(p, X=np.ones((2, 3072)), y=np.array([0.5, 1.0]))


def _fast_and_slow(**inputs) -> list[dict]:
    """The same inputs as exact int64/float32 arrays (the fast path) and as lists (the converter)."""
    fast = {k: np.asarray(v, dtype=np.int64 if np.asarray(v).dtype.kind == "i" else np.float32)
            for k, v in inputs.items()}
    return [fast, {k: np.asarray(v).tolist() for k, v in inputs.items()}]


def test_int_indices_into_a_symbolic_axis_are_checked_on_every_call(compile_nn) -> None:
    m = compile_nn("""
        input X: float[N, 3]
        input i: int[K]
        rows = X[i]
        output rows
    """)
    for given in _fast_and_slow(X=np.ones((4, 3)), i=[0, 3]):
        assert m.forward({}, **given)["rows"].shape == (2, 3)
    for bad, shown in (([0, 4], "holds 4"), ([-1, 2], "holds -1")):
        for given in _fast_and_slow(X=np.ones((4, 3)), i=bad):
            with pytest.raises(ValueError, match=rf"input 'i' {shown}: .* \[0, N\) = \[0, 4\)"):
                m.forward({}, **given)


def test_labels_are_checked_against_a_symbolic_class_count(compile_nn) -> None:
    m = compile_nn("""
        input scores: float[N, C]
        input y: int[N]
        loss = softmax_cross_entropy(scores, y) + svm_loss(scores, y)
        minimize loss
    """)
    assert m.DIM_BOUNDS == {"y": ("C",)} and m.BOUNDS == {}
    for given in _fast_and_slow(scores=np.zeros((2, 5)), y=[4, 0]):
        assert np.isfinite(m.value_and_grad({}, **given)[0]["loss"])
    for bad in ([5, 0], [0, -1]):
        for given in _fast_and_slow(scores=np.zeros((2, 5)), y=bad):
            with pytest.raises(ValueError, match=r"input 'y' holds -?\d: .*class labels.* \[0, C\) = \[0, 5\)"):
                m.value_and_grad({}, **given)


def test_labels_lie_below_both_a_fixed_and_a_symbolic_bound(compile_nn) -> None:
    m = compile_nn("""
        input X: float[N, 3]
        input y: int[N]
        picked = X[y, y]
        output picked
    """)
    assert m.BOUNDS == {"y": 3} and m.DIM_BOUNDS == {"y": ("N",)}
    for given in _fast_and_slow(X=np.ones((2, 3)), y=[1, 0]):
        assert m.forward({}, **given)["picked"].shape == (2,)
    for given in _fast_and_slow(X=np.ones((2, 3)), y=[2, 0]):   # below 3, but not below N = 2
        with pytest.raises(ValueError, match=r"input 'y' holds 2: .* \[0, N\) = \[0, 2\)"):
            m.forward({}, **given)


def test_a_fixed_index_into_a_symbolic_axis_needs_the_axis_that_long(compile_nn) -> None:
    m = compile_nn("""
        input X: float[N, 3]
        eighth = X[7]
        second_last = X[-2]
        output eighth, second_last
    """)
    assert m.MIN_DIMS == {"N": 8}
    for given in _fast_and_slow(X=np.arange(24.0).reshape(8, 3)):
        np.testing.assert_array_equal(m.forward({}, **given)["eighth"], [21, 22, 23])
    for given in _fast_and_slow(X=np.ones((7, 3))):
        with pytest.raises(ValueError, match=r"input 'X' has N = 7, but .* needs N >= 8"):
            m.forward({}, **given)


def test_params_are_checked_and_converted_like_inputs() -> None:
    m = compile_and_load(EXAMPLES / "two_layer.nn")
    good, X, y = m.init_params(0), np.ones((2, 3072)), np.array([1, 2])
    want = m.forward(good, X=X, y=y)["loss"]
    with pytest.raises(TypeError, match=r"missing param\(s\) \['fc1.b'\]; unknown param\(s\) \['fc1.bias'\]"):
        m.forward({**{k: v for k, v in good.items() if k != "fc1.b"}, "fc1.bias": good["fc1.b"]}, X=X, y=y)
    with pytest.raises(TypeError, match=r"missing param\(s\) \['fc2.W'\]: this model's params are"):
        m.value_and_grad({k: v for k, v in good.items() if k != "fc2.W"}, X=X, y=y)
    with pytest.raises(ValueError, match=r"param 'fc1.b' must have shape \[100\], not \[1\]"):
        m.value_and_grad({**good, "fc1.b": np.zeros(1, dtype=np.float32)}, X=X, y=y)
    with pytest.raises(TypeError, match="params must be a dict"):
        m.forward(None, X=X, y=y)
    # float64 arrays, lists and other mappings are converted, as inputs are
    as_lists = {k: v.astype(np.float64).tolist() for k, v in good.items()}
    assert m.forward(as_lists, X=X, y=y)["loss"] == want
    out, grads = m.value_and_grad({k: v.astype(np.float64) for k, v in good.items()}, X=X, y=y)
    assert out["loss"].dtype == np.float32 and out["loss"] == want


def test_right_params_take_the_fast_path() -> None:
    """Arrays of the module's dtype and shape are used as they are: no copy, no conversion."""
    source = compile_file(EXAMPLES / "two_layer.nn")
    m = load_module(source, "fast")
    calls = []
    m._convert = lambda values, *table: calls.append(values) or ()
    m.forward(m.init_params(0), X=np.ones((2, 3072), dtype=np.float32), y=np.array([1, 2]))
    assert calls == []


def test_state_is_checked_and_converted_like_params() -> None:
    m = compile_and_load(EXAMPLES / "batchnorm_mlp.nn")
    params, state = m.init_params(0), m.init_state()
    X = np.ones((4, m.INPUTS["X"][0][1]), dtype=m.DTYPE)
    y = np.zeros(4, dtype=np.int64)
    first = next(iter(state))
    with pytest.raises(TypeError, match=f"missing state\\(s\\) \\[{first!r}"):
        m.forward(params, {k: v for k, v in state.items() if k != first}, X=X, y=y)
    with pytest.raises(ValueError, match=f"state {first!r} must have shape"):
        m.forward(params, {**state, first: np.zeros(1)}, X=X, y=y)
    as_lists = {k: v.tolist() for k, v in state.items()}
    assert np.array_equal(m.forward(params, as_lists, X=X, y=y)["scores"], m.forward(params, state, X=X, y=y)["scores"])
    calls = []
    m._convert = lambda values, *table: calls.append(values) or ()
    m.forward(params, state, X=X, y=y)
    assert calls == [], "a right state takes the fast path"


# ---- gradients ------------------------------------------------------------------------

def test_gradients_match_finite_differences(tmp_path: Path, run_cli) -> None:
    """A model using most ops, compiled by the CLI to a file and imported from it."""
    write_nn(tmp_path, "many.nn", """
        const D = 3
        dtype float64
        input x: float[N, D]
        input labels: int[N]
        param W: [D, 4] = xavier()
        param v: [4] = uniform(a=0.5, b=1.5)
        layer block(t: [B, K]) -> [B, K] {
            param s: [K] = normal(std=0.5)
            return tanh(t) * s + t
        }
        a = x @ W + v
        b = repeat 2 block(a)
        c = sigmoid(b) + exp(-abs(b)) / sqrt(v * v + 1) + log(v) ** 2
        d = transpose(reshape(c, [-1, 2, 2]), [0, 2, 1])
        e = mean(d, axis=1) - max(maximum(d, 0.5), axis=2) + minimum(sum(d, axis=2), 1)
        loss = softmax_cross_entropy(reshape(e, [-1, 2]), labels) + mean(e ** 2)
        minimize loss
    """)
    result = run_cli("compile", "many.nn", "-o", "many.py")
    assert result.returncode == 0, result
    m = load_path(tmp_path / "many.py", "many_generated")
    assert m.DTYPE == np.float64
    rng = np.random.default_rng(0)
    params = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in m.init_params(2).items()}
    assert_grads_match(m, params, {"x": rng.standard_normal((3, 3)), "labels": np.array([0, 1, 1])})


# ---- readable -------------------------------------------------------------------------

def test_names_follow_the_users_names() -> None:
    source = compile_file(EXAMPLES / "two_layer.nn")
    for name in ("d_fc1_W", "d_fc2_b", "scores", "data_loss", "reg_loss", "d_X"):
        assert f"    {name} = " in source, name
    assert "    fc1_W, fc1_b, fc2_W, fc2_b = _read_params(params)" in source
    assert "params.get('fc1.W')" in source


def test_a_name_taken_again_is_numbered_not_lengthened() -> None:
    """The second h is h_ (as PEP 8 writes class_), the next ones h__2, h__3: a name a hundred
    layers reuse stays short, and is not taken for an instance's (h.2 is h_2)."""
    from nncompile.codegen.names import Names

    names = Names()
    assert [names.fresh("h") for _ in range(4)] == ["h", "h_", "h__2", "h__3"]
    assert names.fresh("h.2") == "h_2" and names.fresh("h__4") == "h__4" and names.fresh("h") == "h__5"
    assert names.fresh("class") == "class_" and names.fresh("_x") == "v_x"
    assert max(len(names.fresh("t")) for _ in range(1000)) == len("t__999")


def test_each_statement_is_commented_with_its_line_and_shape() -> None:
    source = compile_file(EXAMPLES / "two_layer.nn")
    assert "# two_layer.nn:16: h = relu(fc1)" in source
    assert "# two_layer.nn:22: loss = data_loss + reg_loss" in source
    assert "  # [N, 100]" in source and "  # scalar" in source


def test_python_keywords_builtins_and_generated_names_are_fine(compile_nn) -> None:
    names = ["lambda", "print", "np", "params", "grads", "inputs", "DTYPE", "_read_inputs", "outputs", "forward",
             "buffers", "buf0", "t1", "d_lambda", "None", "sum", "len", "class", "def", "self", "value_and_grad",
             "init_params", "INPUTS", "LOSS", "_empty", "_convert_inputs", "__name__"]
    lines = [f"input {n} = {i + 1}" for i, n in enumerate(names)]
    lines += ["layer import_(x) {", "    param return_ = 2", "    return x * return_", "}",
              "total = " + " + ".join(f"{n} * {n}" for n in names) + " + import_(lambda) as if"]
    lines += ["output total"]
    m = compile_nn("\n".join(lines), dtype="float64")
    values = {n: float(i + 1) for i, n in enumerate(names)}
    outputs, grads = m.value_and_grad(m.init_params())
    expected = sum(v * v for v in values.values()) + 2 * values["lambda"]
    assert float(outputs["total"]) == expected
    assert set(grads) == set(names) | {"if.return_"}
    for n, v in values.items():
        assert float(grads[n]) == 2 * v + (2 if n == "lambda" else 0), n
    assert float(grads["if.return_"]) == values["lambda"]
    # and nothing of the module was shadowed by them
    assert m.np is np and m.LOSS == "total" and callable(m.forward)
    outputs = m.forward(m.init_params(), **{n: 1.0 for n in names})
    assert float(outputs["total"]) == len(names) + 2


def test_hostile_text_cannot_break_comment_lines(tmp_path: Path) -> None:
    """Comments quote .nn lines; control characters in them must not end the comment early."""
    clean = (EXAMPLES / "circuit.nn").read_text()
    hostile = clean.replace("q = x + y", "q = x + y  # sum\x0c\x0b print('boom') \u2028 \x85 import os \\")
    hostile = hostile.replace("\n", "\r\n")                       # and Windows line endings
    path = tmp_path / "hostile.nn"
    path.write_bytes(hostile.encode("utf-8"))
    source = compile_file(path)
    ast.parse(source)
    assert imported_modules(source) == {"numpy"}
    assert not any(c in source for c in "\x0c\x0b\r\u2028\x85")
    m = load_module(source, "hostile")
    assert float(m.forward({})["f"]) == -12.0
    assert {k: float(v) for k, v in m.value_and_grad({})[1].items()} == {"x": -4.0, "y": -4.0, "z": 3.0}
    assert "# hostile.nn:8: f = q * z" in source          # later lines keep their numbers


def test_carriage_return_inside_a_comment_given_as_text() -> None:
    """Through the API a lone carriage return can reach the lexer; it stays inside the comment."""
    text = "input x = 2  # note\rprint('boom')\ny = x * 3  # a\x0cb\noutput y\n"
    source = emit_module(build(elaborate(parse(text, "cr.nn"), "float64")))
    ast.parse(source)
    assert "print('boom')" not in source.replace("\\rprint('boom')", "")
    m = load_module(source, "cr")
    assert float(m.forward({})["y"]) == 6.0
    assert "# cr.nn:2: y = x * 3" in source


def test_file_name_cannot_break_the_module(tmp_path: Path) -> None:
    # The module docstring quotes the file name: three double quotes or a backslash escape
    # such as \N in the name must neither end that string early nor break it.
    path = tmp_path / 'tricky"""\\N{x}.nn'
    path.write_text((EXAMPLES / "circuit.nn").read_text())
    source = compile_file(path)
    ast.parse(source)
    assert float(load_module(source, "tricky").forward({})["f"]) == -12.0


# ---- dtypes ---------------------------------------------------------------------------

def test_float32_by_default_float64_on_request(tmp_path: Path, run_cli) -> None:
    m32 = compile_and_load(EXAMPLES / "two_layer.nn")
    assert m32.DTYPE == np.float32
    out, grads = m32.value_and_grad(m32.init_params(), X=np.ones((2, 3072)), y=np.array([1, 2]))
    assert out["loss"].dtype == np.float32 and out["scores"].dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads.values())

    assert run_cli("compile", EXAMPLES / "two_layer.nn", "--dtype", "float64", "-o", "m64.py").returncode == 0
    m64 = load_path(tmp_path / "m64.py", "m64")
    assert m64.DTYPE == np.float64 and m64.PARAMS["fc1.W"] == ((3072, 100), "float64")
    out, grads = m64.value_and_grad(m64.init_params(), X=np.ones((2, 3072)), y=np.array([1, 2]))
    assert out["loss"].dtype == np.float64 and all(g.dtype == np.float64 for g in grads.values())
    # float32 inputs are converted, not rejected
    out, _ = m64.value_and_grad(m64.init_params(), X=np.ones((2, 3072), dtype=np.float32), y=np.array([1, 2]))
    assert out["loss"].dtype == np.float64


def test_dtype_statement_and_option(compile_nn) -> None:
    text = """
        dtype float64
        input x = 1.5
        y = x * x
        output y
    """
    assert compile_nn(text).DTYPE == np.float64
    assert compile_nn(text, dtype="float32").DTYPE == np.float32    # the option wins over the file
    assert compile_nn(text.replace("dtype float64", "")).DTYPE == np.float32


# ---- whatever reaches the emitter, the module imports -----------------------------------

_EVERY_KIND_OF_NUMBER = """
    input x: float[2, 3] = [[1, 2, 3], [4, 5, 6]]
    input y: int[2]
    param W: [3, 4] = normal(std=0.5)
    param b: [4] = constant(value=0.5)
    param c: [4] = [1, 2, 3, 4]
    h = elu(leaky_relu(x @ W + b, alpha=0.2), alpha=1.5) * 2.5 + c
    scores = h + [1, 2, 3, 4]
    loss = svm_loss(scores, y, delta=1.0) + elastic_net(W, beta=0.5) + sum(leaky_relu(x * 3, alpha=0.2))
    output scores
    minimize loss
"""


def with_every_number(value: float, dtype: str = "float64"):
    """A model with every float it holds (constants, attributes, defaults, initialiser
    arguments that numpy takes any float for) replaced by ``value``: what the emitter must
    survive, whatever the front end lets by."""
    def swap(v):
        if isinstance(v, (list, tuple)):
            return type(v)(swap(e) for e in v)
        return value if isinstance(v, (int, float)) else v

    model = elaborate(parse(textwrap.dedent(_EVERY_KIND_OF_NUMBER), "odd.nn"), dtype)
    G = model.graph
    for n in list(G.nodes()):
        node = G[n]
        G.set(n, attrs=tuple((k, swap(v) if k in ("value", "alpha", "delta", "beta") else v) for k, v in node.attrs))
    model.defaults = {k: swap(v) for k, v in model.defaults.items()}
    for name, spec in model.param_inits.items():
        args = tuple((k, swap(v) if k in ("value", "mean") else v) for k, v in spec.args)
        model.param_inits[name] = type(spec)(spec.init, args, spec.fan_in, spec.fan_out)
    return model


@pytest.mark.parametrize("backend", ["numpy", "cupy"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
def test_non_finite_numbers_are_emitted_so_the_module_imports(backend: str, value: float, monkeypatch) -> None:
    if backend == "cupy":
        monkeypatch.syspath_prepend(str(Path(__file__).parent))
        import fake_cupy
        monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    source = emit_module(build(with_every_number(value), fuse=backend == "cupy"), backend=backend)
    m = load_module(source, "odd")
    np.testing.assert_array_equal(m.DEFAULTS["x"], np.full((2, 3), value))
    with np.errstate(all="ignore"):
        params = m.init_params(0)
        outputs, grads = m.value_and_grad(params, y=np.array([0, 3]))
    np.testing.assert_array_equal(params["b"], np.full(4, value))
    np.testing.assert_array_equal(params["c"], np.full(4, value))
    assert set(outputs) == {"scores", "loss"} and set(grads) == {"W", "b", "c", "x"}


# ---- predict: the outputs computed from the data inputs alone ---------------------------------


def _predict_inputs(module, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(tuple(5 if isinstance(d, str) else d for d in shape)).astype(dtype)
            for name, (shape, dtype) in module.PREDICT_INPUTS.items()}


@pytest.mark.parametrize("example", ["digits_mlp", "batchnorm_mlp", "dropout_mlp", "indexing", "svm_vs_softmax"])
def test_predict_needs_no_labels_and_equals_forward_in_eval_mode(example: str) -> None:
    module = compile_and_load(EXAMPLES / f"{example}.nn")
    assert "y" in module.INPUTS and "y" not in module.PREDICT_INPUTS
    assert module.LOSS not in module.PREDICT_OUTPUTS
    params = module.init_params(3)
    state = module.init_state(3) if hasattr(module, "STATE") else None
    inputs = _predict_inputs(module)
    labels = {"y": np.arange(5) % module.BOUNDS["y"]}
    predicted = module.predict(params, state, **inputs)
    forward = module.forward(params, state, **inputs, **labels) if state is not None else \
        module.forward(params, **inputs, **labels)
    assert set(predicted) == set(module.PREDICT_OUTPUTS) and set(predicted) <= set(forward)
    for name, value in predicted.items():
        np.testing.assert_array_equal(value, forward[name])
        declared = module.PREDICT_OUTPUTS[name][0]
        assert value.dtype == np.float32 and value.shape == tuple(5 if isinstance(d, str) else d for d in declared)


def test_predict_drops_outputs_that_read_the_labels_and_computes_no_loss() -> None:
    source = compile_file(EXAMPLES / "indexing.nn")
    module = load_module(source)
    # correct = scores[arange(N), y] reads the labels; builtin is a loss: neither is a prediction
    assert list(module.PREDICT_OUTPUTS) == ["scores", "first_row", "last_class"]
    predict = source[source.index("def predict("):]
    predict = predict[:predict.index("\n\n\n")] if "\n\n\n" in predict else predict
    assert "log" not in predict and "exp" not in predict and "y" not in module.PREDICT_INPUTS
    with pytest.raises(TypeError, match=r"unknown input\(s\) \['y'\]; predict takes \['X'\]"):
        module.predict(module.init_params(), X=np.zeros((2, 6), np.float32), y=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="must have shape"):
        module.predict(module.init_params(), X=np.zeros((2, 5), np.float32))


@pytest.mark.parametrize("name", ["two_layer", "losses", "svm_vs_softmax"])
def test_an_empty_batch_is_refused_as_a_value_error(name: str) -> None:
    """N = 0 has no mean: softmax cross-entropy's 1 / len(labels) raised ZeroDivisionError, a
    sigmoid one gave nan with warnings. Every function refuses it as it refuses a wrong shape."""
    module = load_module(compile_file(EXAMPLES / f"{name}.nn"), f"empty_{name}")
    params = module.init_params(0)
    empty = {k: np.zeros([0 if isinstance(d, str) else d for d in shape], dtype) for k, (shape, dtype) in
             module.INPUTS.items()}
    calls = [lambda: module.forward(params, **empty), lambda: module.value_and_grad(params, **empty)]
    if hasattr(module, "predict"):   # (a model whose outputs all read the labels has none)
        calls.append(lambda: module.predict(params, **{k: empty[k] for k in module.PREDICT_INPUTS}))
    for call in calls:
        with pytest.raises(ValueError, match=r"has \w+ = 0: every dim must be at least 1"):
            call()


def test_an_input_that_only_a_hand_written_loss_reads_is_a_label(compile_nn) -> None:
    module = compile_nn("""
        input X: float[N, 3]
        input t: float[N, 2]
        param W: [3, 2] = he()
        pred = X @ W
        output pred
        loss = mean((pred - t) ** 2)
        minimize loss
    """)
    assert list(module.PREDICT_INPUTS) == ["X"] and list(module.PREDICT_OUTPUTS) == ["pred"]
    X = np.ones((4, 3), np.float32)
    np.testing.assert_array_equal(module.predict(module.init_params(), X=X)["pred"],
                                  module.forward(module.init_params(), X=X, t=np.zeros((4, 2), np.float32))["pred"])


def test_a_model_whose_every_output_is_a_loss_has_no_predict() -> None:
    module = compile_and_load(EXAMPLES / "losses.nn")
    assert not hasattr(module, "predict") and not hasattr(module, "PREDICT_INPUTS")


def test_predict_is_byte_identical_between_compiles_and_imports_only_numpy() -> None:
    first, second = (compile_file(EXAMPLES / "batchnorm_mlp.nn", optimizer="adam") for _ in range(2))
    assert first == second and "def predict(params, state=None, /, **inputs):" in first
    assert imported_modules(first) == {"numpy"}


def test_an_output_that_needs_a_dim_only_the_labels_have_is_no_prediction(compile_nn) -> None:
    module = compile_nn("""
        input X: float[B, 3]
        input t: float[N]
        param W: [3, 2] = he()
        scores = X @ W
        steps = arange(N)
        output scores, steps
        loss = sum(scores) + mean(t)
        minimize loss
    """)
    assert list(module.PREDICT_INPUTS) == ["X"] and list(module.PREDICT_OUTPUTS) == ["scores"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ufunc", sorted(__import__("nncompile.ops.registry", fromlist=["PYTHON_FORMS"]).PYTHON_FORMS))
def test_an_operator_on_numpy_scalars_rounds_as_its_ufunc(ufunc: str, dtype: type) -> None:
    """Scalar arithmetic is emitted with Python's operators: on numpy scalars (and a Python
    number beside one) they must give the ufunc's result, bit for bit and in its dtype."""
    from nncompile.ops.registry import PYTHON_FORMS

    fn = getattr(np, ufunc)
    rng = np.random.default_rng(0)
    arity = PYTHON_FORMS[ufunc].count("{")
    for _ in range(200):
        values = [dtype(v) for v in rng.uniform(0.1, 3.0, arity) * rng.choice([-1, 1], arity)]
        if rng.random() < 0.3:   # and the values where rounding rules show: zeros, infinities, NaN, subnormals
            values[rng.integers(arity)] = dtype(rng.choice([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, 3e38]))
        # and a folded constant (a Python number) on either side of a value
        literal = [[*values[:-1], float(values[-1])], [float(values[0]), *values[1:]]] if arity > 1 else []
        for operands in [values, *literal]:
            with np.errstate(all="ignore"):
                want = fn(*operands)
                got = eval(PYTHON_FORMS[ufunc].format(*(f"v{i}" for i in range(arity))),
                           {f"v{i}": v for i, v in enumerate(operands)})
            assert type(got) is type(want) and np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_a_scalar_circuit_is_written_with_operators() -> None:
    source = compile_file(EXAMPLES / "circuit.nn")
    assert "    q = x + y  # scalar" in source and "    f = q * z  # scalar" in source
    outputs, grads = load_module(source).value_and_grad({}, x=np.float32(-2), y=np.float32(5), z=np.float32(-4))
    assert outputs["f"] == -12 and type(outputs["f"]) is np.float32
    assert {k: float(v) for k, v in grads.items()} == {"x": -4.0, "y": -4.0, "z": 3.0}


def test_scalar_inputs_go_on_as_numpy_scalars_and_come_back_unaliased() -> None:
    """On the fast path a 0-d input is read as a numpy scalar (cheap operators); what is
    returned for it is never the caller's own array."""
    module = load_module(compile_file(EXAMPLES / "circuit.nn"))
    x, y, z = (np.asarray(v, np.float32) for v in (-2.0, 5.0, -4.0))
    assert module._read_inputs({"x": x, "y": y, "z": z}) == (np.float32(-2), np.float32(5), np.float32(-4))
    assert all(type(v) is np.float32 for v in module._read_inputs({"x": x, "y": y, "z": z}))
    outputs, grads = module.value_and_grad({}, x=x, y=y, z=z)
    assert all(g is not a for g in grads.values() for a in (x, y, z))
    assert (float(outputs["f"]), float(grads["x"]), float(grads["z"])) == (-12.0, -4.0, 3.0)


@pytest.mark.parametrize("given", [float, np.float32, np.float64, lambda v: np.asarray(v, np.float64),
                                   lambda v: np.asarray(v, np.int64)])
def test_scalar_inputs_the_converter_takes_go_on_as_numpy_scalars_of_the_modules_dtype(given) -> None:
    """Off the fast path (Python numbers, numpy scalars, 0-d arrays of another dtype) a 0-d input
    is converted and then read as a numpy scalar too, so a gradient that is an input (df/dx = z)
    is returned as it is: a numpy scalar of the module's dtype, never the caller's array."""
    module = load_module(compile_file(EXAMPLES / "circuit.nn", dtype="float32"))
    x, y, z = (given(v) for v in (-2, 5, -4))
    assert all(type(v) is np.float32 for v in module._read_inputs({"x": x, "y": y, "z": z}))
    outputs, grads = module.value_and_grad({}, x=x, y=y, z=z)
    assert all(type(v) is np.float32 for v in (*outputs.values(), *grads.values()))
    assert all(g is not a for g in grads.values() for a in (x, y, z))
    assert {k: float(v) for k, v in grads.items()} == {"x": -4.0, "y": -4.0, "z": 3.0}
