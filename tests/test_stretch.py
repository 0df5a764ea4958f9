"""A long ``repeat`` compiled short and stretched (nncompile/stretch.py): the module is byte for
byte the one the full compile writes (``stretch=False``), for every option and model where
the stretch is taken, and where it is not valid the full compile runs and says the same."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLES, write_nn
from test_codegen_loops import (
    DEEP,
    DEEP_TEXT,
    NESTED,
    RESIDUAL,
    RandomChoices,
    write_program,
)

from nncompile import compiler, stretch
from nncompile.compiler import compile_file
from nncompile.elaborate import elaborate_file
from nncompile.errors import NNError


@pytest.fixture
def taken(monkeypatch) -> list[bool]:
    """Whether each compile since took the stretch (True) or compiled every instance."""
    outcomes: list[bool] = []
    real = compiler.stretched

    def spy(compile_short):
        source = real(compile_short)
        outcomes.append(source is not None)
        return source

    monkeypatch.setattr(compiler, "stretched", spy)
    return outcomes


def same_as_full(path: Path, **options) -> str:
    """The module, after checking that the full compile writes the very same text."""
    source = compile_file(path, **options)
    full = compile_file(path, stretch=False, **options)
    assert source == full, _first_difference(source, full)
    return source


def _first_difference(a: str, b: str) -> str:
    for i, (x, y) in enumerate(zip(a.splitlines(), b.splitlines())):
        if x != y:
            return f"line {i + 1}:\n  stretched: {x}\n  full:      {y}"
    return f"lengths {len(a)} and {len(b)}"


def same_error_as_full(path: Path, match: str | None = None) -> str:
    """The stretched compile's error, after checking that the full compile gives the very same."""
    errors = []
    for full in (False, True):
        with pytest.raises(NNError, match=match) as info:
            compile_file(path, stretch=not full)
        errors.append(info.value.format())
    assert errors[0] == errors[1]
    return errors[0]


def deep_file(tmp_path: Path, count: int, text: str = DEEP_TEXT) -> Path:
    return write_nn(tmp_path, f"deep{count}", text.replace("COUNT", str(count)))


@pytest.mark.parametrize("count", [30, 100, 1000])
@pytest.mark.parametrize("hvp", [True, False])
def test_the_deep_tanh_module_is_the_full_compiles_at_any_depth(tmp_path: Path, taken, count: int, hvp: bool) -> None:
    path = write_nn(tmp_path, "deep_tanh", DEEP.read_text().replace("repeat 1000", f"repeat {count}"))
    source = same_as_full(path, hvp=hvp)
    assert taken == [True]
    assert f"h.1 ... h.{count}, forward" in source and source.count("\n") < 2000


def test_a_repeat_just_past_the_short_count_stretches_the_same(tmp_path: Path, taken, monkeypatch) -> None:
    monkeypatch.setattr(stretch, "LONG", 0)   # else ten instances compile whole: as fast as two short compiles
    for count in (9, 10, 11):
        same_as_full(deep_file(tmp_path, count))
    assert taken == [True] * 3


@pytest.mark.parametrize("options", [
    {"dtype": "float64"}, {"dtype": "float32", "hvp": False}, {"backend": "cupy"},
    {"backend": "cupy", "dtype": "float64", "hvp": False}, {"optimizer": "adam"},
    {"optimizer": "momentum", "backend": "cupy"}, {"optimized": False}, {"input_grads": False},
])
def test_every_option_gives_the_full_compiles_module(tmp_path: Path, taken, options: dict) -> None:
    same_as_full(deep_file(tmp_path, 40), **options)
    assert taken == [True]


def test_a_compile_without_loops_or_with_trace_compiles_every_instance(tmp_path: Path, taken) -> None:
    path = deep_file(tmp_path, 30)
    for options in ({"loops": False}, {"trace": True}):
        source = compile_file(path, **options)
        assert "h_30_W" in source and "h_17_W" in source
    assert taken == []


def test_the_examples_with_a_repeat_made_long_are_the_full_compiles(tmp_path: Path, taken) -> None:
    for name in ("mlp.nn", "stdlib_mlp.nn"):
        text = re.sub(r"repeat \d+ ", "repeat 40 ", (EXAMPLES / name).read_text())
        same_as_full(write_nn(tmp_path, name, text), dtype="float64")
    assert taken == [True, True]


SCOPED = {
    "a repeat in a layer called twice": """
input X: float[N, 3]
layer block(x: [B, K]) -> [B, K] {
    param W: [K, K] = randn()
    return relu(x @ W) + x
}
layer tower(x: [B, K]) -> [B, K] {
    h = repeat 30 block(x)
    return h
}
a = tower(X)
b = tower(a)
loss = mean(b ** 2)
minimize loss
""",
    "a repeat of a layer with a repeat inside": NESTED.replace("repeat 4 outer", "repeat 30 outer"),
    "two repeats of different lengths, one named": """
import nn
input X: float[N, 6]
input y: int[N]
layer block(x: [B, K]) -> [B, K] {
    param W: [K, K] = xavier()
    param b: [K] = zeros()
    return tanh(x @ W + b)
}
h = repeat 50 block(X) as first
g = repeat 27 block(h)
logits = dense(g, out=3)
output logits
loss = softmax_cross_entropy(logits, y)
minimize loss
""",
    "a residual block with dropout and a shared input": RESIDUAL.replace("repeat 5 res", "repeat 33 res"),
}


@pytest.mark.parametrize("name", list(SCOPED))
def test_repeats_in_layers_and_nested_scopes_are_the_full_compiles(tmp_path: Path, taken, name: str) -> None:
    path = write_nn(tmp_path, "nested", SCOPED[name])
    same_as_full(path, dtype="float64", hvp=False)
    same_as_full(path, dtype="float64")
    assert taken == STRETCHED[name]


STRETCHED = {   # without hvp, with it
    "a repeat in a layer called twice": [True, False],   # hvp's passes over the first tower form no loops
    "a repeat of a layer with a repeat inside": [True, True],   # its backward is a loop too
    "two repeats of different lengths, one named": [True, True],
    "a residual block with dropout and a shared input": [True, True],
}


def test_only_the_outermost_repeat_is_compiled_short(tmp_path: Path) -> None:
    """An inner repeat is written out in its outer instance's loop body, all of it."""
    text = SCOPED["a repeat of a layer with a repeat inside"].replace("repeat 3 ", "repeat 30 ")
    model = elaborate_file(write_nn(tmp_path, "nested", text), shorten=(stretch.SHORT, stretch.LONG))
    assert model.gaps == {("y",): (4, 22)}
    assert "y.2.h.30.W" in model.params and "y.30.h.17.W" in model.params and "y.5.s" not in model.params


def test_generated_programs_with_long_repeats_are_the_full_compiles(tmp_path: Path, taken) -> None:
    compiled = 0
    for seed in range(60):
        text = write_program(RandomChoices(seed), ill_typed=0.0)[0]
        if "repeat" not in text:
            continue
        path = write_nn(tmp_path, f"fuzz{seed}", re.sub(r"repeat \d+ ", f"repeat {25 + seed % 7} ", text))
        try:
            full = compile_file(path, stretch=False, hvp=seed % 2 == 0)
        except NNError as exc:   # a generated program may be ill-typed only when repeated more
            with pytest.raises(NNError) as info:
                compile_file(path, hvp=seed % 2 == 0)
            assert info.value.format() == exc.format()
            continue
        assert compile_file(path, hvp=seed % 2 == 0) == full, seed
        compiled += 1
    assert compiled >= 10 and sum(taken) >= 5, (compiled, taken)


FALLBACKS = {
    "instances that differ: each one narrower": ("""
input X: float[N, 40]
layer shrink(x: [B, K]) {
    param s: [] = ones()
    return x[:, 1:] * s
}
h = repeat 30 shrink(X)
loss = sum(h ** 2)
minimize loss
""", None),
    "a loss that names an instance next to the gap": (DEEP_TEXT.replace("COUNT", "30").replace(
        "loss = sum(h ** 2)", "loss = sum(h ** 2) + sum(h.4.W ** 2)"), None),
    "a loss that names an instance the short compile leaves out": (DEEP_TEXT.replace("COUNT", "30").replace(
        "loss = sum(h ** 2)", "loss = sum(h ** 2) + sum(h.17.W ** 2)"), None),
    "state in the repeated layer": ("""
import nn
input X: float[N, 4]
layer bn_block(x: [B, K]) -> [B, K] {
    return batchnorm(tanh(x)) + x
}
h = repeat 30 bn_block(X)
loss = mean(h ** 2)
minimize loss
""", None),
}


@pytest.mark.parametrize("name", list(FALLBACKS))
def test_a_model_the_stretch_does_not_fit_compiles_every_instance(tmp_path: Path, taken, name: str) -> None:
    same_as_full(write_nn(tmp_path, "m", FALLBACKS[name][0]), dtype="float64")
    assert taken == [False]


def test_an_error_at_an_instance_the_short_compile_leaves_out_is_reported_there(tmp_path: Path, taken) -> None:
    path = write_nn(tmp_path, "m", FALLBACKS["instances that differ: each one narrower"][0].replace("30", "45"))
    assert "in layer 'shrink' called here as 'h.40'" in same_error_as_full(path)
    assert taken == [False]


def test_a_model_past_the_node_limit_is_refused_as_by_the_full_compile(tmp_path: Path, monkeypatch, taken) -> None:
    import nncompile.elaborate.layers as layers_module
    monkeypatch.setattr(layers_module, "MAX_NODES", 400)
    same_as_full(deep_file(tmp_path, 60))   # 304 nodes: within the limit, and stretched
    assert taken == [True]
    same_error_as_full(deep_file(tmp_path, 100), "the model grows past 400 graph nodes")


def test_a_nested_repeat_past_the_node_limit_is_refused_before_any_pipeline_runs(tmp_path: Path, monkeypatch,
                                                                                  taken) -> None:
    """A short compile counts the nodes of the instances it leaves out as it elaborates: a repeat
    of repeats past the limit stops there (a repeat 1000 of a repeat 1000 ran two short
    compiles of 8000 instances each, minutes, before the full compile said it is too big)."""
    import nncompile.elaborate.layers as layers_module
    monkeypatch.setattr(layers_module, "MAX_NODES", 2000)
    built = []
    real_build = compiler.build
    monkeypatch.setattr(compiler, "build", lambda *a, **k: built.append(1) or real_build(*a, **k))
    path = write_nn(tmp_path, "nested", """
input X: float[N, 4]
layer inner(x: [B, 4]) -> [B, 4] {
    param W: [4, 4] = xavier()
    return tanh(x @ W)
}
layer outer(x: [B, 4]) -> [B, 4] {
    return repeat 30 inner(x)
}
h = repeat 30 outer(X)
loss = sum(h)
minimize loss
""")
    assert "in layer 'outer' called here as 'h.23'" in same_error_as_full(path, "the model grows past 2000 graph nodes")
    assert taken == [False] and built == []


def test_a_grad_of_a_long_repeat_past_the_node_limit_is_refused_as_by_the_full_compile(tmp_path: Path, monkeypatch,
                                                                                       taken) -> None:
    """grad() adds each instance's backward nodes as the file is elaborated: the short compile's
    count of its forward nodes does not see them, the comparison of the two short compiles does."""
    import nncompile.elaborate.layers as layers_module
    monkeypatch.setattr(layers_module, "MAX_NODES", 1060)   # the full graph has 1110 nodes
    path = write_nn(tmp_path, "gradrep", """
input X: float[N, 4]
layer blk(x: [B, 4]) -> [B, 4] {
    param W: [4, 4] = xavier()
    return tanh(x @ W)
}
layer fin(x: [B, 4]) -> [B, 4] {
    return x * 2.0
}
h = repeat 100 blk(X)
g = grad(sum(h * h), X)
o = fin(g)
output o
""")
    same_error_as_full(path, "the model grows past 1060 graph nodes")
    assert taken == [False]


def test_warnings_are_given_as_by_the_full_compile(tmp_path: Path, taken) -> None:
    path = write_nn(tmp_path, "warn", DEEP_TEXT.replace("COUNT", "30").replace(
        "output h", "g = grad(sum(X), h.30.b)\noutput h, g"))
    shown = []
    for full in (False, True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compile_file(path, stretch=not full)
        shown.append(sorted({str(w.message) for w in caught}))
    assert shown[0] == shown[1] and "its gradient is zero" in shown[0][0]
    assert taken == [True]


def test_the_command_line_writes_the_full_compiles_module(tmp_path: Path, run_cli) -> None:
    path = deep_file(tmp_path, 200)
    result = run_cli("compile", path, "-o", tmp_path / "deep.py")
    assert result.returncode == 0, result
    assert (tmp_path / "deep.py").read_text() == compile_file(path, stretch=False)


def test_the_graph_tools_see_every_instance_of_a_long_repeat(tmp_path: Path, taken) -> None:
    """eval, render, check and trace() elaborate the model whole: nothing of theirs is stretched."""
    from nncompile.evaluate import evaluate_file
    from nncompile.render import to_dot

    path = deep_file(tmp_path, 30)
    evaluation = evaluate_file(path, dtype="float64")
    assert list(evaluation.model.params) == [f"h.{k}.{role}" for k in range(1, 31) for role in ("W", "b")]
    assert not evaluation.model.gaps and "h.17" in to_dot(evaluation, max_nodes=10_000)
    module = compiler.load_module(compile_file(path, dtype="float64"))
    outputs, grads = module.value_and_grad(evaluation.params, X=evaluation.inputs["X"])
    assert float(outputs["loss"]) == pytest.approx(float(evaluation.named_values()["loss"]), rel=1e-12)
    for name, grad in evaluation.input_and_param_grads().items():
        if name in grads:
            np.testing.assert_allclose(grads[name], grad, rtol=1e-10, atol=1e-12, err_msg=name)
    assert taken == [True]
