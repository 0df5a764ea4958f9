"""No crash and no hang, whatever the input: the grammar-driven fuzz suite.

Every text, written from the language or mutated from the examples and the standard
library, must end as a clean diagnostic or as a module that imports and runs (the property
is :func:`fuzzing.run_case`). The hypothesis tests run the bounded CI profile by default
(a fixed, derandomized set of examples); ``NNCOMPILE_FUZZ=long`` runs many more, and
``bash scripts/fuzz.sh N`` is the long standalone profile (see docs/testing.md).
"""
from __future__ import annotations

import os
import time
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzing
from conftest import write_nn
from fuzzing import SEEDS, HypothesisChoices, Outcome, RandomChoices, mutate, run_case, write_program

settings.register_profile("fuzz-ci", max_examples=150, derandomize=True, deadline=None, database=None,
                          print_blob=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz-long", parent=settings.get_profile("fuzz-ci"), max_examples=5000,
                          derandomize=False)
PROFILE = settings.get_profile(f"fuzz-{os.environ.get('NNCOMPILE_FUZZ', 'ci')}")
TIMEOUT = float(os.environ.get("NNCOMPILE_FUZZ_TIMEOUT", "20"))

pytestmark = [pytest.mark.fuzz,
              pytest.mark.skipif(not hasattr(os, "fork"), reason="each case runs in a forked child")]


@st.composite
def programs(draw, ill_typed: float = 0.08) -> str:
    """A .nn program written from the language, well-typed unless a statement breaks a rule."""
    return write_program(HypothesisChoices(draw), ill_typed)[0]


@st.composite
def mutants(draw) -> str:
    """An example or the standard library with one to three random edits."""
    c = HypothesisChoices(draw)
    return mutate(SEEDS[c.choice(sorted(SEEDS))], c)


def assert_property(text: str, verbs: tuple[str, ...] = ("compile", "eval")) -> Outcome:
    outcome = run_case(text, verbs=verbs, timeout=TIMEOUT)
    assert not outcome.failed, f"{outcome.kind} in {outcome.stage} ({outcome.signature})\n{outcome.detail}"
    return outcome


@PROFILE
@given(programs())
def test_every_generated_program_gives_a_clean_diagnostic_or_a_module_that_runs(text: str) -> None:
    assert_property(text)


@PROFILE
@given(mutants())
def test_every_mutation_of_the_examples_and_the_stdlib_gives_a_clean_diagnostic_or_a_module_that_runs(
        text: str) -> None:
    assert_property(text)


def mid_statement_cuts() -> list[str]:
    """Every example and the standard library cut in the middle of each statement line."""
    cuts = []
    for text in SEEDS.values():
        offset = 0
        for line in text.split("\n"):
            if line.strip() and not line.lstrip().startswith("#"):
                cuts.append(text[:offset + len(line) // 2])
            offset += len(line) + 1
    return cuts


def test_every_example_cut_in_the_middle_of_any_statement_gives_a_clean_diagnostic_or_a_module() -> None:
    failures = [(text[-80:], outcome) for text in mid_statement_cuts()
                if (outcome := run_case(text, verbs=("compile",), timeout=TIMEOUT)).failed]
    assert failures == []


# The edges outside checks found: each must end as a clean diagnostic or a module that runs.
EDGES = {
    "an overflowing input default": "input x = 1e400\noutput x\n",
    "an overflowing param value": "param w = 1e400\ny = w * 2\noutput y\n",
    "an infinite attribute": "input x: float[3]\ny = leaky_relu(x, alpha=1e999)\noutput y\n",
    "a nan attribute": "input x: float[3]\ny = elu(x, alpha=1e999 - 1e999)\noutput y\n",
    "an infinite initialiser argument": "param W: [3] = normal(std=1e999)\ny = sum(W)\noutput y\n",
    "a 400-digit const": "const A = " + "9" * 400 + "\ninput x: float[3]\ny = x * A\noutput y\n",
    "a 5000-digit literal": "input x = " + "9" * 5000 + "\noutput x\n",
    "a dim past int64": "input X: float[9223372036854775808]\ny = sum(X)\noutput y\n",
    "a param of int64-max rows": "param P: [9223372036854775807, 4] = zeros()\ny = sum(P)\noutput y\n",
    "a param of 2 ** 1000 rows": "param P: [2 ** 1000, 2] = zeros()\ny = sum(P)\noutput y\n",
    "a slice bound past int64": "input X: float[4, 3]\ny = sum(X[0:" + "9" * 30 + "])\noutput y\n",
    "a tower of powers": "const A = 10 ** 10 ** 9\ninput x = 1\ny = x * A\noutput y\n",
    "a million repeats": "import nn\ninput X: float[N, 4]\nh = repeat 1000000 dense(X, out=4)\noutput h\n",
    "a repeat count past int64": "import nn\ninput X: float[N, 4]\nh = repeat 9223372036854775808 dense(X, out=4)\n"
                                 "output h\n",
    "a depth of 2 ** 1000": "import nn\ninput X: float[N, 4]\nh = mlp(X, hidden=4, out=2, depth=2 ** 1000)\n"
                            "output h\n",
    "a complex const": "const c = (-8) ** 0.5\ninput x = 1\ny = x * c\noutput y\n",
    "a ragged list": "input v: float[2, 2] = [[1, 2], [3]]\ny = sum(v)\noutput y\n",
    "a list past numpy's 64 dims": "input v = " + "[" * 70 + "1" + "]" * 70 + "\noutput v\n",
    "a dim name in a default": "input u: float[1] = [N]\noutput u\n",
    "a 600-term sum": "input x = 1\ny = " + " + ".join(["x"] * 600) + "\noutput y\n",
    "500 unary minuses": "input x = 1\ny = " + "-" * 500 + "x\noutput y\n",
    "a list nested 600 deep": "input x = 1\ny = x * sum(" + "[" * 600 + "1" + "]" * 600 + ")\noutput y\n",
    "10,000 nested parentheses": "input x = 1\ny = " + "(" * 10000 + "x" + ")" * 10000 + "\noutput y\n",
    "a recursive layer": "layer f(x) {\n    return f(x)\n}\ninput x: float[3]\ny = f(x)\noutput y\n",
    "mutually recursive layers": "layer f(x) {\n    return g(x)\n}\nlayer g(x) {\n    return f(x)\n}\n"
                                 "input x: float[3]\ny = f(x)\noutput y\n",
    "an import of a 300-character name": "import " + "a" * 300 + "\ninput x = 1\noutput x\n",
    "a missing import": 'import "missing.nn"\ninput x = 1\noutput x\n',
    "an index past the default batch": "input X: float[N, 3]\ny = sum(X[7])\noutput y\n",
    "a symbolic class count": "input s: float[N, C]\ninput y: int[N]\nloss = softmax_cross_entropy(s, y)\n"
                              "minimize loss\n",
    "labels of a symbolic class count used as indices": "input s: float[N, C]\ninput y: int[N]\n"
                                                        "loss = sum(s[arange(N), y])\nminimize loss\n",
    "a state the loss does not use": "input x: float[N, 2]\nstate s: [2] = zeros()\nloss = sum(x)\n"
                                     "minimize loss\n",
    "a positional attribute under repeat": "layer L(x: [B, K], out: int) -> [B, out] {\n"
                                           "    param W: [K, out] = he()\n    return x @ W\n}\n"
                                           "input X: float[N, 3]\nh = repeat 2 L(X, 3)\nloss = sum(h)\n"
                                           "minimize loss\n",
    "a list const in an expression": "const v = [1, 2, 3, 4]\ninput x: float[4]\ny = sum(x * v)\noutput y\n",
    "the gradient of relu": "input x: float[3]\nloss = sum(relu(x))\nminimize loss\n",
    "the gradient of a negation": "input x: float[3]\nloss = sum(-x)\nminimize loss\n",
    "the gradient of max": "input X: float[3]\nparam W: [3] = ones()\nloss = max(X - W)\nminimize loss\n",
    "the gradient of a scalar maximum": "input x = 1.5\nloss = maximum(x, 0)\nminimize loss\n",
    "the gradient of leaky_relu with alpha 0": "input x: float[3]\nloss = sum(leaky_relu(x, alpha=0))\n"
                                               "minimize loss\n",
    "a character reference in a comment": "# &#1; &#xFFFE; &#55296;\ninput x = 1\noutput x\n",
    "CRLF line endings": "input x = 1\r\ny = x * 2\r\noutput y\r\n",
    "a NUL byte": "input x = 1\x00\noutput x\n",
    "a byte that is not UTF-8": "input x = 1 # \udcff\noutput x\n",
    "a BOM": "\ufeffinput x = 1\noutput x\n",
    "an empty file": "",
    "a Python def": "def f(x):\n    return x\n",
}


@pytest.mark.parametrize("text", EDGES.values(), ids=EDGES.keys())
def test_inputs_at_the_edges_of_the_language_give_a_clean_diagnostic_or_a_module_that_runs(text: str) -> None:
    assert_property(text)


SIMPLE = "input x: float[2] = [1, 2]\nloss = sum(x * x)\nminimize loss\n"
COMMANDS = {
    "a negative seed for eval": "eval --seed -1",
    "a negative seed for check": "check --seed -1",
    "an empty --set": "eval --set x=",
    "a --set nested 5000 deep": "eval --set x=" + "[" * 5000 + "]" * 5000,
    "a --set of an unknown name": "eval --set nope=3",
    "a --set that is not JSON": "eval --set x=[1,",
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_command_line_arguments_at_the_edges_give_a_clean_diagnostic(command: str) -> None:
    assert_property(SIMPLE, ("compile", command))


# ---- the machinery tells the truth --------------------------------------------------------

def test_the_generator_calls_every_public_op_and_every_stdlib_layer() -> None:
    from nncompile.ops import REGISTRY
    used: set[str] = set()
    for seed in range(400):
        used |= write_program(RandomChoices(seed))[1]
    wanted = {name for name, op in REGISTRY.items() if op.public} | set(fuzzing.STDLIB_LAYERS) \
        | {"layer", "repeat", "state"}
    assert wanted - used == set()


def test_well_typed_generated_programs_are_accepted_by_the_compiler() -> None:
    """The generator knows the language: what it writes as well-typed compiles (a diagnostic
    here is a bug in the generator or in the compiler's type rules, never noise)."""
    outcomes = [run_case(write_program(RandomChoices(seed), ill_typed=0.0)[0], verbs=("compile",),
                         timeout=TIMEOUT) for seed in range(40)]
    diagnostics = [o.detail for o in outcomes if o.kind == "diagnostic"]
    assert diagnostics == []


def test_the_long_profile_is_reproducible_case_by_case() -> None:
    assert fuzzing.long_case(1234) == fuzzing.long_case(1234)
    assert fuzzing.long_case(1234) != fuzzing.long_case(1235)


def test_mutations_change_the_text() -> None:
    c = RandomChoices(0)
    changed = [mutate(text, c, rounds=1) != text for text in SEEDS.values() for _ in range(5)]
    assert sum(changed) >= 0.8 * len(changed)


def test_a_clean_diagnostic_is_not_a_failure() -> None:
    outcome = run_case("input x = 1\ny = x +\noutput y\n", timeout=TIMEOUT)
    assert outcome.kind == "diagnostic" and not outcome.failed


def test_a_module_that_runs_is_not_a_failure() -> None:
    assert run_case(SIMPLE, timeout=TIMEOUT) == Outcome("module", "run")


@pytest.mark.parametrize("stderr, problem", [
    ("{f}:2:5: error: unexpected '+'\n    y = + 1\n        ^\n", None),
    ("nncompile: error: no such file\n", None),
    ("{f}:2:5: error: unexpected '+'\n", "FILE:LINE:COL without the source line and a caret"),
    ("{f}:9:1: error: unexpected end\n    \n    ^\n", "a line past the end of the file"),
    ("{f}:1:1: error: bad\n    y = + 1\n    ^\n", "the quoted line is not the line of the position"),
    ("Traceback (most recent call last):\n  ...\nValueError\n", "a traceback in the diagnostic"),
    ("error: something\n", "the error line is neither FILE:LINE:COL: error: nor nncompile: error:"),
    ("{f}: warning: w is unused\n{f}:2:5: error: unexpected '+'\n    y = + 1\n        ^\n", None),
    ("gradient check FAILED\n", "no line says error:"),
    ("{f}:2:5: error: bad\n    y  =  +  1\n        ^^^\n", None),          # spacing and a longer caret
    ("{f}:2:1: error: bad\n    y = ...\n    ^\n", None),                   # a long line cut short
])
def test_a_diagnostic_must_name_the_place_and_quote_it(tmp_path: Path, stderr: str, problem: str | None) -> None:
    model = tmp_path / "m.nn"
    assert fuzzing.diagnostic_problem(stderr.format(f=model), model, "input x = 1\ny = + 1\n") == problem


def test_the_modules_own_error_for_bad_inputs_is_not_a_failure_but_a_numpy_error_is(tmp_path: Path) -> None:
    import importlib.util

    from nncompile.compiler import compile_file
    path = tmp_path / "m.py"
    path.write_text(compile_file(write_nn(tmp_path, "m.nn", """
        input s: float[N, 3]
        input y: int[N]
        loss = softmax_cross_entropy(s, y)
        minimize loss
    """)))
    spec = importlib.util.spec_from_file_location("fuzz_probe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError) as own:
        module.forward({}, s=np.zeros((2, 3), np.float32), y=np.array([0, 7]))
    assert fuzzing.raised_by_module(own.value, path)
    other = tmp_path / "other.py"      # numpy's errors surface on the module's line that called numpy
    other.write_text("import numpy as np\n\ndef add(a, b):\n    return np.add(a, b)\n")
    spec = importlib.util.spec_from_file_location("fuzz_probe_other", other)
    numpy_caller = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(numpy_caller)
    with pytest.raises(ValueError) as numpy_error:
        numpy_caller.add(np.zeros(2), np.zeros(3))
    assert not fuzzing.raised_by_module(numpy_error.value, other)


def test_an_exception_that_escapes_the_command_line_is_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import nncompile.compiler
    fuzzing.warm_up()

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(nncompile.compiler, "compile_file", broken)   # the forked child inherits it
    outcome = run_case(SIMPLE, verbs=("compile",), timeout=TIMEOUT)
    assert (outcome.kind, outcome.stage) == ("traceback", "cli")
    assert outcome.signature.startswith("traceback:cli:ZeroDivisionError:")


def test_a_hang_is_cut_off_at_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import nncompile.compiler
    fuzzing.warm_up()
    monkeypatch.setattr(nncompile.compiler, "compile_file", lambda *a, **k: time.sleep(60))
    outcome = run_case(SIMPLE, verbs=("compile",), timeout=1.0)
    assert (outcome.kind, outcome.stage) == ("hang", "compile")


def test_a_runaway_allocation_is_stopped_by_the_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import nncompile.compiler
    fuzzing.warm_up()
    monkeypatch.setattr(nncompile.compiler, "compile_file", lambda *a, **k: bytearray(1 << 34))
    outcome = run_case(SIMPLE, verbs=("compile",), timeout=TIMEOUT, memory=1 << 28)
    assert outcome.kind == "traceback" and "MemoryError" in outcome.signature


def test_a_gradient_of_another_dtype_than_the_modules_is_a_failure() -> None:
    module = types.SimpleNamespace(DTYPE=np.float32, OUTPUTS={"loss": ((), "float32")},
                                   PARAMS={"W": ((2,), "float32")}, INPUTS={"x": (("N",), "float32")})
    good = {"W": np.zeros(2, np.float32), "x": np.zeros(3, np.float32)}
    assert fuzzing.dtype_problems(module, [{"loss": np.float32(1)}], good, {"N": 3}) == {}
    assert fuzzing.dtype_problems(module, [{"loss": np.float64(1)}], good, {"N": 3}) == \
        {"output float32 float64": "loss"}
    assert fuzzing.dtype_problems(module, [{}], {**good, "W": np.zeros(2, bool)}, {"N": 3}) == \
        {"grad float32 bool": "W"}
    assert fuzzing.dtype_problems(module, [{}], {**good, "x": np.zeros(4, np.float32)}, {"N": 3}) == \
        {"grad shape": "x"}


def test_the_minimiser_keeps_the_failure_and_drops_the_rest() -> None:
    def check(text: str) -> Outcome:
        return Outcome("traceback", signature="boom") if "boom" in text else Outcome("module")
    text = "a = 1\nb = 2\nc = boom\nd = 4\n"
    assert fuzzing.minimise(text, "boom", check) == "boom"


def test_int_inputs_are_drawn_below_their_bounds_even_a_symbolic_one() -> None:
    module = types.SimpleNamespace(DEFAULTS={}, BOUNDS={"y": 3, "z": "C"},
                                   INPUTS={"y": (("N",), "int64"), "z": (("N",), "int64"), "w": ((5,), "int64")})
    inputs = fuzzing.random_inputs(module, {"N": 50, "C": 2}, np.random.default_rng(0))
    assert inputs["y"].max() == 2 and inputs["z"].max() == 1 and inputs["w"].max() == 0
