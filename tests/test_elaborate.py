"""Elaboration: names, constants, layers (scoping, shape variables), repeat, imports."""
from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from nncompile.elaborate import elaborate, elaborate_file
from nncompile.errors import NNError
from nncompile.ops import REGISTRY
from nncompile.parser import parse

from conftest import EXAMPLES, write_nn

AFFINE = """
layer affine(x: [B, K], out: int) -> [B, out] {
    param W: [K, out] = he()
    param b: [out] = zeros()
    return x @ W + b
}
"""


def model_of(text: str, dtype: str | None = None):
    return elaborate(parse(textwrap.dedent(text).lstrip("\n"), "m.nn"), dtype)


def error_of(text: str) -> NNError:
    with pytest.raises(NNError) as info:
        model_of(text)
    return info.value


def shape_of(model, name: str):
    G = model.graph
    node = next(n for n in G.nodes() if G[n].name == name)
    return G[node].shape


# ---- names and values -----------------------------------------------------------------

def test_circuit_graph() -> None:
    m = elaborate_file(EXAMPLES / "circuit.nn")
    G = m.graph
    assert list(m.inputs) == ["x", "y", "z"] and m.params == {}
    assert m.defaults == {"x": -2.0, "y": 5.0, "z": -4.0}
    f = m.outputs["f"]
    assert G[f].op == "mul" and G[f].name == "f" and G[f].shape == () and m.target == f
    q, z = G[f].args
    assert G[q].op == "add" and G[q].name == "q" and G[z].name == "z"
    assert (G[f].loc.line, G[f].loc.col) == (8, 5)


def test_names_are_bound_in_order_and_reported_when_unknown() -> None:
    err = error_of("""
        y = x * 2
        input x = 1
        output y
    """)
    assert err.message == "'x' is used before it is defined (at line 2): move its definition above this line"
    assert (err.loc.line, err.loc.col) == (1, 5) and err.notes[0][1].line == 2
    err = error_of("""
        input scores: float[3]
        l = sum(score)
        output l
    """)
    assert err.message == "unknown name 'score'; did you mean 'scores'?"


def test_a_name_is_defined_once() -> None:
    err = error_of("""
        input x = 1
        const x = 2
        output x
    """)
    assert err.message == "'x' is already defined" and err.notes[0][1].line == 1


def test_inputs_defaults_and_types() -> None:
    m = model_of("""
        input a = 3
        input v: float[3] = [1, 2, 3]
        input M = [[1, 2], [3, 4]]
        input k: int = 2
        input X: float[N, 5]
        s = a + sum(v) + sum(M) + sum(X)
        output s
    """)
    G = m.graph
    assert {n: G[i].shape for n, i in m.inputs.items()} == {"a": (), "v": (3,), "M": (2, 2), "k": (), "X": ("N", 5)}
    assert G[m.inputs["k"]].dtype == "int" and G[m.inputs["X"]].dtype == "float"
    assert m.defaults == {"a": 3.0, "v": [1.0, 2.0, 3.0], "M": [[1.0, 2.0], [3.0, 4.0]], "k": 2}


@pytest.mark.parametrize(("text", "message"), [
    ("input x: float[3] = [1, 2]\noutput x\n", "the default of 'x' has shape [2], but the input is declared [3]"),
    ("input x: int[2] = [1.5, 2]\noutput x\n", "input 'x' is int, but its default is not an integer"),
    ("input x\noutput x\n", "input 'x' needs a type (like float[N, 3]) or a default value"),
    ("input x: float[3, 0]\noutput x\n", "a dimension must be a positive integer, not 0"),
    ("param W: int[3] = zeros()\noutput W\n", "so they must be float"),
    ("param W: [2] = [1, 2, 3]\noutput W\n", "the initial value has shape [3], but the param is [2]"),
    ("input x: float[N]\nparam W: [N] = zeros()\noutput W\n", "a param's shape must be known when compiling"),
    ("input x = 1\ny = he() * x\noutput y\n", "he() is an initialiser: use it in a param declaration"),
    ("param W: [2] = normal(sd=1)\noutput W\n", "normal() has no argument 'sd'; it takes std, mean"),
    ("input x = 1\ny = x\n", "the model has no 'output' or 'minimize' statement"),
    ("input x: float[3]\nminimize x\n", "the loss must be a float scalar, but 'x' is float[3]"),
    ("input x = 1\nminimize x\nminimize x\n", "only one 'minimize' statement is allowed"),
    ("input x = 1\nreturn x\n", "'return' is only allowed inside a layer"),
    ("input x = 1\ny = true\noutput y\n", "true and false are only allowed as op attributes"),
    ("input x: float[3]\ny = x[0, 1]\noutput y\n", "too many subscripts: the value has shape [3] (1 axes), but 2 are given"),
    ("const D = 2 / 0\n", "cannot evaluate this constant: division by zero"),
    ("input x: float[3]\ny = sum(x, axis=x)\noutput y\n", "'x' is a tensor, but a constant is needed here"),
    ("input x: float[3]\ny = sum(x, axs=0)\noutput y\n", "sum() has no argument 'axs'; it takes axis, keepdims"),
    ("input x: float[3]\ny = sum(x, 0, axis=0)\noutput y\n", "sum() got 'axis' twice"),
    ("input x: float[3]\ny = exp(x, 2)\noutput y\n", "exp() takes at most 1 argument, got 2"),
    ("input x: float[3]\ny = maximum(x)\noutput y\n", "maximum() takes 2 tensor argument(s), got 1"),
    ("input x: float[3]\ny = reshape(x)\noutput y\n", "reshape() needs a shape, like reshape(x, [2, 3])"),
    ("input x: float[3]\ny = reshape(x, shape=1.5)\noutput y\n", "reshape() needs a shape, like reshape(x, [2, 3]), "
     "not 1.5"),
    ("input x: float[3]\ny = relu(x) as r\noutput y\n", "'as r' names a layer instance, but relu is not a layer"),
    ("input x: float[3]\ny = rellu(x)\noutput y\n", "unknown op or layer 'rellu'; did you mean 'relu'?"),
    ("input x: float[3]\ny = step(x, x)\noutput y\n", "unknown op or layer 'step'"),
])
def test_elaboration_errors(text: str, message: str) -> None:
    with pytest.raises(NNError) as info:
        elaborate(parse(text, "m.nn"))
    assert message in info.value.message, info.value.message
    assert info.value.loc is not None and info.value.loc.file == "m.nn"


# ---- constants ------------------------------------------------------------------------

def test_consts_in_shapes_and_expressions() -> None:
    m = model_of("""
        const D = 4, H = D * 2, half = H / 2, third = D / 3, reg = 1e-3
        input X: float[N, D]
        param W: [D, H] = zeros()
        param V: [H, half] = zeros()
        y = sum(X @ W @ V) * reg + third
        output y
    """)
    G = m.graph
    assert G[m.inputs["X"]].shape == ("N", 4)
    assert G[m.params["W"]].shape == (4, 8) and G[m.params["V"]].shape == (8, 4)   # 8 / 2 stays an int
    consts = sorted(G[n].attr("value") for n in G.nodes() if G[n].op == "const")
    assert consts == sorted([1e-3, 4 / 3])


def test_a_dimension_must_be_a_whole_number() -> None:
    err = error_of("""
        const D = 3 / 2
        input x: float[D]
        output x
    """)
    assert err.message == "a dimension must be a positive integer, not 1.5" and err.loc.line == 2


def test_dtype_statement_and_override() -> None:
    assert model_of("input x = 1\noutput x\n").dtype == "float32"
    assert model_of("dtype float64\ninput x = 1\noutput x\n").dtype == "float64"
    assert model_of("dtype float64\ninput x = 1\noutput x\n", dtype="float32").dtype == "float32"


# ---- layers ---------------------------------------------------------------------------

def test_layer_params_are_scoped_by_the_bound_name() -> None:
    m = elaborate_file(EXAMPLES / "two_layer.nn")
    assert list(m.params) == ["fc1.W", "fc1.b", "fc2.W", "fc2.b"]
    G = m.graph
    assert G[m.params["fc1.W"]].shape == (3072, 100) and G[m.params["fc2.W"]].shape == (100, 10)
    assert G[m.params["fc1.W"]].scope == ("fc1",)
    assert m.layers == {("fc1",): "affine", ("fc2",): "affine"}
    init = m.param_inits["fc1.W"]
    assert (init.init, init.fan_in, init.fan_out) == ("he", 3072, 100)
    assert m.param_inits["fc2.b"].init == "zeros"
    assert G[m.outputs["scores"]].shape == ("N", 10)


def test_scoped_names_are_visible_after_the_call() -> None:
    m = model_of(AFFINE + """
        input X: float[N, 3]
        h = affine(X, out=4) as fc1
        penalty = sum(fc1.W * fc1.W) + sum(fc1.b)
        output penalty
    """)
    G = m.graph
    assert m.params["fc1.W"] in nx.ancestors(G.nx, m.outputs["penalty"])


def test_unnamed_layer_calls_get_numbered_names() -> None:
    m = model_of(AFFINE + """
        input X: float[N, 3]
        y = relu(affine(X, out=4)) + relu(affine(X, out=4))
        output y
    """)
    assert list(m.params) == ["affine_1.W", "affine_1.b", "affine_2.W", "affine_2.b"]


def test_instance_names_must_be_unique() -> None:
    err = error_of(AFFINE + """
        input X: float[N, 3]
        a = affine(X, out=4) as fc
        b = affine(a, out=4) as fc
        output b
    """)
    assert "the layer instance name 'fc' is already used" in err.message


def test_shape_variables_are_bound_from_arguments_and_checked() -> None:
    m = model_of("""
        layer pair(a: [B, K], b: [B, K], scale: float = 2) -> [B, K] {
            param w: [K] = ones()
            return (a + b) * w * scale
        }
        input X: float[N, 4]
        input Y: float[N, 4]
        z = pair(X, Y)
        output z
    """)
    assert m.graph[m.params["z.w"]].shape == (4,)          # K bound to 4
    assert m.graph[m.outputs["z"]].shape == ("N", 4)       # B bound to the symbolic N
    err = error_of("""
        layer pair(a: [B, K], b: [B, K]) -> [B, K] {
            return a + b
        }
        input X: float[N, 4]
        input M: float[5, 4]
        z = pair(X, M)
        output z
    """)
    assert err.message == ("argument 'b' of pair() must have shape [B, K], but it has shape [5, 4]: "
                           "dim 1 is 5, expected B = N")
    assert (err.loc.line, err.loc.col) == (6, 13)


def test_layer_result_is_checked_against_its_declared_shape() -> None:
    err = error_of("""
        layer f(x: [K]) -> [K] {
            return sum(x)
        }
        input x: float[3]
        y = f(x)
        output y
    """)
    assert err.message == "the result of f() must have shape [K] (rank 1), but it has shape []"


def test_layer_arguments_defaults_and_attributes() -> None:
    m = model_of("""
        layer dense(x: [B, K], out: int = 3, std: float = 0.5) -> [B, out] {
            param W: [K, out] = normal(std=std)
            return x @ W
        }
        input X: float[N, 2]
        a = dense(X)
        b = dense(a, 5, std=0.1)
        output b
    """)
    assert m.graph[m.params["a.W"]].shape == (2, 3)
    assert m.graph[m.params["b.W"]].shape == (3, 5)
    assert dict(m.param_inits["a.W"].args)["std"] == 0.5 and dict(m.param_inits["b.W"].args)["std"] == 0.1


@pytest.mark.parametrize(("call", "message"), [
    ("affine(X, outs=4)", "affine() has no argument 'outs'; did you mean 'out'?"),
    ("affine(X)", "affine() is missing argument 'out'"),
    ("affine(X, 4, 5)", "affine() takes 2 argument(s) but 3 were given"),
    ("affine(X, 4, out=4)", "affine() got argument 'out' twice"),
    ("affine(X, out=2.5)", "affine() needs an int for 'out', not 2.5"),
    ("affine(X, out=X)", "'X' is a tensor, but a constant is needed here"),
    ("affine(L, out=4)", "'@' needs floats, but 'L' is int[N, 3]: int values are labels and indices, for the ops "
                         "that take them (softmax_cross_entropy, svm_loss, x[idx], one_hot); to compute with the "
                         "numbers, declare the input float"),
    ("affine(V, out=4)", "argument 'x' of affine() must have shape [B, K] (rank 2), but it has shape [3]"),
])
def test_layer_call_errors(call: str, message: str) -> None:
    err = error_of(AFFINE + f"""
        input X: float[N, 3]
        input L: int[N, 3]
        input V: float[3]
        h = {call}
        output h
    """)
    assert err.message == message


def test_layers_see_consts_but_not_outer_tensors() -> None:
    m = model_of("""
        const scale = 3
        layer f(x) {
            return x * scale
        }
        input a = 2
        y = f(a)
        output y
    """)
    assert m.outputs
    err = error_of("""
        input t = 1
        layer f(x) {
            return x * t
        }
        input a = 2
        y = f(a)
        output y
    """)
    assert err.message == "unknown name 't'" and err.loc.line == 3
    assert err.notes == (("in layer 'f' called here as 'y'", err.notes[0][1]),) and err.notes[0][1].line == 6


@pytest.mark.parametrize(("text", "message"), [
    ("layer relu(x) {\n  return x\n}\ninput x = 1\noutput x\n", "'relu' is a built-in op"),
    ("layer f(x) {\n  return x\n}\nlayer f(y) {\n  return y\n}\ninput x = 1\noutput x\n", "layer 'f' is already defined"),
    ("layer f(x, x) {\n  return x\n}\ninput x = 1\noutput x\n", "layer 'f' has two arguments named 'x'"),
    ("layer f(x) {\n  y = x\n}\ninput a = 1\nb = f(a)\noutput b\n", "layer 'f' has no 'return' statement"),
    ("layer f(x) {\n  return x\n  y = x\n}\ninput a = 1\nb = f(a)\noutput b\n", "statements after 'return' are never run"),
    ("layer f(x) {\n  input z = 1\n  return x\n}\ninput a = 1\nb = f(a)\noutput b\n",
     "input statements are not allowed inside layer 'f'"),
])
def test_layer_definition_errors(text: str, message: str) -> None:
    with pytest.raises(NNError) as info:
        elaborate(parse(text, "m.nn"))
    assert message in info.value.message


# ---- repeat ---------------------------------------------------------------------------

def test_repeat_unrolls_with_numbered_scopes() -> None:
    m = model_of("""
        const L = 3
        layer block(x: [B, K]) -> [B, K] {
            param W: [K, K] = xavier()
            return relu(x @ W)
        }
        input X: float[N, 4]
        h = repeat L block(X)
        output h
    """)
    assert list(m.params) == ["h.1.W", "h.2.W", "h.3.W"]
    assert set(m.layers) == {("h.1",), ("h.2",), ("h.3",)}
    G = m.graph
    # a chain: each block's matmul takes the previous block's result
    matmuls = sorted((n for n in G.nodes() if G[n].op == "matmul"), key=lambda n: G[n].scope)
    assert [G[n].scope for n in matmuls] == [("h.1",), ("h.2",), ("h.3",)]
    assert G[matmuls[0]].args[0] == m.inputs["X"]
    for prev, nxt in zip(matmuls, matmuls[1:]):
        relu = G[nxt].args[0]
        assert G[relu].op == "relu" and G[relu].args[0] == prev


def test_repeat_passes_the_other_arguments_to_every_copy() -> None:
    m = elaborate_file(EXAMPLES / "mlp.nn")
    assert list(m.params) == ["h1.W", "h1.b", "h2.W", "h2.b", "h3.1.W", "h3.1.b", "h3.2.W", "h3.2.b",
                              "scores.W", "scores.b"]
    assert all(m.graph[m.params[f"h3.{i}.W"]].shape == (128, 128) for i in (1, 2))


@pytest.mark.parametrize(("line", "message"), [
    ("h = repeat 0 block(X)", "repeat needs a positive whole number of times, not 0"),
    ("h = repeat 1.5 block(X)", "repeat needs a positive whole number of times, not 1.5"),
    ("h = repeat 2 relu(X)", "repeat applies a layer, but 'relu' is not one"),
    ("h = repeat 2 block()", "repeat feeds each result into the layer's first argument"),
])
def test_repeat_errors(line: str, message: str) -> None:
    err = error_of(f"""
        layer block(x: [B, K]) -> [B, K] {{
            return x
        }}
        input X: float[N, 4]
        {line}
        output h
    """)
    assert message in err.message


# ---- imports --------------------------------------------------------------------------

def test_import_a_file_of_layers(tmp_path: Path) -> None:
    write_nn(tmp_path, "layers.nn", """
        const HIDDEN = 5
        layer affine(x: [B, K], out: int) -> [B, out] {
            param W: [K, out] = he()
            return x @ W
        }
    """)
    path = write_nn(tmp_path, "model.nn", """
        import "layers.nn"
        input X: float[N, 3]
        h = affine(X, out=HIDDEN) as fc
        output h
    """)
    m = elaborate_file(path)
    assert list(m.params) == ["fc.W"] and m.graph[m.params["fc.W"]].shape == (3, 5)


def test_imports_nest_relative_to_the_importing_file_and_load_once(tmp_path: Path) -> None:
    write_nn(tmp_path, "lib/base.nn", "const D = 2\n")
    write_nn(tmp_path, "lib/a.nn", 'import "base.nn"\nlayer twice(x) {\n    return 2 * x\n}\n')
    write_nn(tmp_path, "lib/b.nn", 'import "base.nn"\nlayer thrice(x) {\n    return 3 * x\n}\n')
    path = write_nn(tmp_path, "model.nn", """
        import "lib/a.nn"
        import "lib/b.nn"
        input x: float[D]
        y = twice(thrice(x))
        output y
    """)
    m = elaborate_file(path)
    assert m.graph[m.inputs["x"]].shape == (2,)


def test_errors_in_imported_files_point_into_them(tmp_path: Path) -> None:
    write_nn(tmp_path, "lib/bad.nn", "layer f(x) {\n    return x +\n}\n")
    path = write_nn(tmp_path, "model.nn", 'import "lib/bad.nn"\ninput x = 1\noutput x\n')
    with pytest.raises(NNError) as info:
        elaborate_file(path)
    assert Path(info.value.loc.file) == tmp_path / "lib" / "bad.nn" and info.value.loc.line == 2


@pytest.mark.parametrize(("files", "message"), [
    ({"model.nn": 'import "model.nn"\ninput x = 1\noutput x\n'}, "import cycle: model.nn imports model.nn"),
    ({"model.nn": 'import "a.nn"\ninput x = 1\noutput x\n', "a.nn": 'import "b.nn"\n', "b.nn": 'import "model.nn"\n'},
     "import cycle: model.nn imports a.nn imports b.nn imports model.nn"),
    ({"model.nn": 'import "nope.nn"\ninput x = 1\noutput x\n'}, 'cannot import "nope.nn": there is no file'),
    ({"model.nn": 'import "a.nn"\ninput x = 1\noutput x\n', "a.nn": "input y = 2\n"},
     "an imported file may only define consts and layers, and import others"),
    ({"model.nn": 'import "a.nn"\nconst D = 1\ninput x = 1\noutput x\n', "a.nn": "const D = 2\n"},
     "'D' is already defined"),
    ({"model.nn": "import nosuchlib\ninput x = 1\noutput x\n"}, "no standard library module 'nosuchlib'"),
])
def test_import_errors(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        write_nn(tmp_path, name, text)
    with pytest.raises(NNError) as info:
        elaborate_file(tmp_path / "model.nn")
    assert message in info.value.message


# ---- what the model records -----------------------------------------------------------

def test_int_bounds_come_from_the_scores() -> None:
    m = elaborate_file(EXAMPLES / "two_layer.nn")
    assert m.int_bounds == {"y": 10}
    m = model_of("""
        input s: float[N, 7]
        input labels: int[N]
        loss = softmax_cross_entropy(s, labels)
        minimize loss
    """)
    assert m.int_bounds == {"labels": 7}


def test_outputs_and_target() -> None:
    m = elaborate_file(EXAMPLES / "two_layer.nn")
    assert list(m.outputs) == ["scores", "loss"] and m.target == m.loss == m.outputs["loss"]
    m = model_of("input x: float[3]\ny = x * 2\noutput y\n")
    assert m.target is None                               # no loss, and the output is not a scalar
    m = model_of("input x: float[3]\ny = sum(x)\nz = x\noutput y, z\n")
    assert m.target is None                               # two outputs and no 'minimize'


def test_every_node_keeps_the_users_location() -> None:
    m = elaborate_file(EXAMPLES / "two_layer.nn")
    G = m.graph
    for n in G.nodes():
        node = G[n]
        if node.op in ("const",) and node.loc is None:
            continue
        assert node.loc is not None and node.loc.file.endswith("two_layer.nn"), node
    matmul_lines = {G[n].loc.line for n in G.nodes() if G[n].op == "matmul"}
    assert matmul_lines == {12}                           # inside the layer body, where the user wrote '@'


def test_shapes_are_inferred_as_nodes_are_built() -> None:
    m = elaborate_file(EXAMPLES / "two_layer.nn")
    assert shape_of(m, "h") == ("N", 100)
    assert shape_of(m, "data_loss") == ()
    assert np.all([m.graph[n].dtype in ("float", "int") for n in m.graph.nodes()])


def test_repeat_can_name_its_copies_and_outputs_can_be_scoped_names() -> None:
    model = model_of("""
        input X: float[N, 4]
        layer block(x: [B, K]) -> [B, K] {
            param W: [K, K] = xavier()
            return tanh(x @ W)
        }
        h = repeat 2 block(X) as blocks
        output h, blocks.2.W
    """)
    assert list(model.params) == ["blocks.1.W", "blocks.2.W"]
    assert set(model.outputs) == {"h", "blocks.2.W"}
    assert model.outputs["blocks.2.W"] == model.params["blocks.2.W"]


def test_an_imported_layer_sees_its_own_files_consts_not_the_importers(tmp_path: Path) -> None:
    write_nn(tmp_path, "layers.nn", """
        const width = 3
        layer widen(x: [B, D]) -> [B, width] {
            param W: [D, width] = zeros()
            return x @ W
        }
    """)
    main = write_nn(tmp_path, "main.nn", """
        import "layers.nn"
        const D = 99          # must not leak into the pattern [B, D] of widen()
        input X: float[N, 5]
        h = widen(X)
        output h
        s = X * width         # the importer does get the imported consts
        output s
    """)
    model = elaborate_file(main)
    assert model.graph[model.outputs["h"]].shape == ("N", 3)
    assert model.graph[model.params["h.W"]].shape == (5, 3)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_an_op_that_lowers_itself_builds_through_the_graph_the_mode_the_model_and_op(mode: str,
                                                                                    monkeypatch) -> None:
    """The hook of mode-dependent and composite ops, ``OpDef.lower(el, args, attrs, loc, scope)``:
    it reads ``el.G``, ``el.mode`` and ``el.model``, and adds its nodes with ``el.op()``."""
    seen = []

    def lower(el, args, attrs, loc, scope):
        seen.append((el.mode, el.G[args[0]].shape, list(el.model.inputs), attrs, loc.line, scope.prefix))
        return el.op("mul", [args[0], args[0]], {}, loc, scope)

    monkeypatch.setitem(REGISTRY, "selfmul", replace(REGISTRY["dropout"], name="selfmul", lower=lower))
    text = textwrap.dedent("""
        layer sq(x: [B, K]) -> [B, K] {
            return selfmul(x, p=0.25)
        }
        input X: float[N, 3]
        h = sq(X)
        output h
    """).lstrip("\n")
    m = elaborate(parse(text, "m.nn"), mode=mode)
    assert seen == [(mode, ("N", 3), ["X"], {"p": 0.25}, 2, ("h",))]
    h = m.graph[m.outputs["h"]]
    assert h.op == "mul" and h.args == (m.inputs["X"],) * 2 and h.name == "h" and h.scope == ("h",)
    assert m.mode_dependent


# ---- bounds: no input crashes or hangs the elaborator ----------------------------------

def located_error(text: str, points_at: str) -> str:
    """The message of the error ``text`` raises, checking that it points at ``points_at``."""
    text = textwrap.dedent(text).lstrip("\n")
    err = error_of(text)
    line = text.split("\n")[err.loc.line - 1]
    assert line[err.loc.col - 1:].startswith(points_at), (err.format(), points_at)
    return err.message


@pytest.mark.parametrize(("const", "message", "points_at"), [
    ("10 ** 10 ** 9", "10 ** 1000000000 is too large, whole numbers must fit in int64", "10 ** 10"),
    ("2 ** 1000", "2 ** 1000 is too large, whole numbers must fit in int64 (at most 9223372036854775807)", "2 **"),
    ("2 ** 63", "the result is too large, whole numbers must fit in int64", "2 **"),
    ("9223372036854775807 + 1", "the result is too large", "9223372036854775807 +"),
    ("3037000500 * 3037000500", "the result is too large", "3037000500 *"),
    ("1e308 * 10", "the result overflows float64", "1e308"),
    ("10.0 ** 400", "the result overflows float64", "10.0"),
    ("(-8) ** 0.5", "(-8) ** 0.5 is a complex number", "(-8)"),
])
def test_compile_time_arithmetic_is_bounded(const: str, message: str, points_at: str) -> None:
    got = located_error(f"""
        const A = {const}
        input x: float[3]
        y = sum(x) * A
        output y
    """, points_at)
    assert "cannot evaluate this constant: " + message in got, got


@pytest.mark.parametrize(("expr", "message", "points_at"), [
    ("x * (1 / 0)", "division by zero", "1 / 0"),
    ("x * (1e308 * 10)", "the result overflows float64", "1e308"),
    ("x * 10 ** 10 ** 9", "10 ** 1000000000 is too large", "10 ** 10"),
    ("x * (-8) ** 0.5", "(-8) ** 0.5 is a complex number", "(-8)"),
])
def test_arithmetic_on_numbers_in_an_expression_is_checked_like_a_const(expr: str, message: str,
                                                                        points_at: str) -> None:
    got = located_error(f"""
        input x: float[3]
        y = sum({expr})
        output y
    """, points_at)
    assert got.startswith("cannot evaluate this constant: " + message), got


def test_arithmetic_up_to_the_bounds_is_exact() -> None:
    m = model_of("""
        const A = 2 ** 62 + (2 ** 62 - 1), B = 1e154 * 1e154, C = (-8) ** 2, D = - - - 5
        input x = 1
        y = x * A * B * C * D
        output y
    """)
    values = sorted(m.graph[n].attr("value") for n in m.graph.nodes() if m.graph[n].op == "const")
    assert values == sorted([float(2**63 - 1), 1e308, 64.0, -5.0])


def test_long_sums_and_negations_elaborate_in_a_loop() -> None:
    """5,000 terms on one line are deeper than Python's recursion limit of 1,000."""
    m = model_of("const A = " + " + ".join(["1"] * 5000) + "\ninput x = 1\n"
                 "y = " + " + ".join(["x"] * 5000) + " + " + "-" * 3001 + "x * A\noutput y\n")
    G = m.graph
    assert sum(G[n].op == "add" for n in G.nodes()) == 5000 and sum(G[n].op == "neg" for n in G.nodes()) == 3001
    assert [G[n].attr("value") for n in G.nodes() if G[n].op == "const"] == [5000.0]


def test_long_matrix_product_chains_elaborate_in_a_loop() -> None:
    m = model_of("input x: float[2, 2]\nparam W: [2, 2] = normal()\nh = x" + " @ W" * 3000 + "\noutput h\n")
    assert sum(m.graph[n].op == "matmul" for n in m.graph.nodes()) == 3000


def test_a_matrix_product_of_numbers_is_not_a_constant() -> None:
    assert error_of("const A = 2 @ 3\ninput x = 1\noutput x\n").message.startswith("a constant is needed here")


@pytest.mark.parametrize(("shape", "message", "points_at"), [
    ("[9223372036854775807, 4]", "a dimension can be at most 2147483647 (2**31 - 1), not 9223372036854775807",
     "9223372036854775807"),
    ("[2 ** 31, 2]", "a dimension can be at most 2147483647", "2 ** 31"),
    ("[2 ** 20, 2 ** 21]", "this tensor would have 2199023255552 elements, more than the limit of "
     "1099511627776 (2**40)", "[2 ** 20"),
    ("[" + ", ".join(["1"] * 33) + "]", "a tensor can have at most 32 axes, but this one has 33", "[1, 1"),
])
def test_tensor_sizes_are_bounded(shape: str, message: str, points_at: str) -> None:
    got = located_error(f"""
        param W: {shape} = zeros()
        y = sum(W)
        minimize y
    """, points_at)
    assert message in got, got


def test_ops_cannot_build_tensors_past_the_bounds() -> None:
    got = located_error("""
        input x: float[2097152]
        y = reshape(x, [2097152, 1]) * reshape(x, [1, 2097152]) * 2
        output y
    """, "reshape(x, [2097152, 1]) *")
    assert "this tensor would have 4398046511104 elements, more than the limit of 1099511627776 (2**40)" in got


@pytest.mark.parametrize(("value", "message", "points_at"), [
    ("[[1, 2], [3]]", "the items of a list must all have the same shape, but this one has shape [1] and "
     "the first [2]", "[3]"),
    ("[1, [2]]", "but this one has shape [1] and the first []", "[2]"),
    ("[" * 40 + "1" + "]" * 40, "a tensor can have at most 32 axes, but this list is nested 33 deep",
     "[" * 33 + "1"),
])
def test_list_literals_are_rectangular_tensors(value: str, message: str, points_at: str) -> None:
    got = located_error(f"""
        input u = {value}
        y = sum(u)
        output y
    """, points_at)
    assert message in got, got


def test_a_default_cannot_hold_a_symbolic_dim() -> None:
    got = located_error("""
        input x: float[N]
        input u: float[1] = [N]
        y = sum(u) + sum(x)
        output y
    """, "[N]")
    assert got == "the default of 'u' must be made of numbers, but N is a symbolic dim, known only when " \
                  "the module is called"


@pytest.mark.parametrize(("line", "message", "points_at"), [
    ("h = repeat 1000000 block(X)", "repeat can unroll at most 10000 copies, not 1000000", "1000000"),
    ("h = repeat R block(X)", "repeat can unroll at most 10000 copies, not 4611686018427387904", "R block"),
])
def test_repeat_counts_are_bounded(line: str, message: str, points_at: str) -> None:
    got = located_error(f"""
        const R = 2 ** 62
        layer block(x: [B, K]) -> [B, K] {{
            return x * 2
        }}
        input X: float[N, 4]
        {line}
        output h
    """, points_at)
    assert got == message


def test_the_graph_size_is_bounded(monkeypatch) -> None:
    import nncompile.elaborate.layers as layers_module
    monkeypatch.setattr(layers_module, "MAX_NODES", 50)
    got = located_error("""
        layer block(x: [B, K]) -> [B, K] {
            return x * 2
        }
        input X: float[N, 4]
        h = repeat 100 block(X)
        output h
    """, "block(X)")
    assert got == "the model grows past 50 graph nodes, the limit, at this layer call"


@pytest.mark.parametrize(("layers", "message"), [
    ("layer f(a: [K]) -> [K] {\n return f(a)\n}\n", "layer f calls itself: f -> f"),
    ("layer f(a: [K]) -> [K] {\n return g(a) * 2\n}\nlayer g(a: [K]) -> [K] {\n return f(a)\n}\n",
     "layer f calls itself: f -> g -> f"),
])
def test_a_layer_cannot_call_itself(layers: str, message: str) -> None:
    got = located_error(layers + "input x: float[3]\ny = sum(f(x))\noutput y\n", "f(a)")
    assert got.startswith(message + "; a layer cannot be recursive"), got


def test_layers_nest_at_most_to_the_limit() -> None:
    chain = "".join(f"layer f{i}(a: [K]) -> [K] {{\n return f{i + 1}(a)\n}}\n" for i in range(150))
    got = located_error(chain + "layer f150(a: [K]) -> [K] {\n return a\n}\n"
                        "input x: float[3]\ny = sum(f0(x))\noutput y\n", "f32(a)")
    assert got == "layers are called inside one another more than 32 deep, the limit"


def test_import_of_a_name_the_file_system_refuses_is_a_located_error(tmp_path: Path) -> None:
    for target in ("a" * 300, '"' + "a" * 300 + '.nn"', '"a\x00b.nn"'):
        path = write_nn(tmp_path, "m.nn", f"import {target}\ninput x = 1\noutput x\n")
        with pytest.raises(NNError) as info:
            elaborate_file(path)
        assert (info.value.loc.line, info.value.loc.col) == (1, 1)
        assert info.value.message.startswith(("no standard library module", "cannot import"))


# ---- values a newcomer writes -----------------------------------------------------------

def test_repeat_binds_positional_attributes_like_a_call() -> None:
    m = model_of("""
        layer scale(x: [B, K], by: int) -> [B, K] {
            return x * by
        }
        input X: float[2, 3]
        h = repeat 2 scale(X, 3)
        g = scale(X, 3)
        output h, g
    """)
    G = m.graph
    assert [G[n].attr("value") for n in G.nodes() if G[n].op == "const"] == [3.0, 3.0, 3.0]


def test_repeat_builds_its_other_tensor_arguments_once() -> None:
    m = model_of("""
        layer shift(x: [B, K], by: [K], scale: float = 1.0) -> [B, K] {
            return x * scale + by
        }
        input X: float[2, 3]
        input Y: float[3]
        h = repeat 3 shift(X, relu(Y), 2.0)
        g = repeat 2 shift(h, scale=0.5, by=exp(Y))
        output g
    """)
    G = m.graph
    assert sum(G[n].op == "relu" for n in G.nodes()) == 1 and sum(G[n].op == "exp" for n in G.nodes()) == 1
    assert sorted(G[n].attr("value") for n in G.nodes() if G[n].op == "const") == [0.5, 0.5, 2.0, 2.0, 2.0]


def test_repeat_of_a_layer_without_arguments_says_so() -> None:
    got = located_error("""
        layer f() -> [3] {
            param W: [3] = zeros()
            return W
        }
        input X: float[3]
        h = repeat 2 f(X)
        output h
    """, "X)")
    assert got == "f() takes 0 argument(s) but 1 were given"


def test_list_consts_are_constant_tensors_in_expressions() -> None:
    m = model_of("""
        const v = [1, 2, 3, 4]
        input x: float[N, 4]
        y = x * v
        output y
    """)
    G = m.graph
    v = G[m.outputs["y"]].args[1]
    assert (G[v].op, G[v].name, G[v].shape, G[v].attr("value")) == ("const", "v", (4,), (1.0, 2.0, 3.0, 4.0))
    got = located_error("""
        const v = [1, 2, 3]
        input x: float[N, 4]
        y = x * v
        output y
    """, "x * v")
    assert got == "cannot apply '*' to [N, 4] and [3]: dims 4 and 3 differ (axis -1)"


def test_max_of_two_tensors_points_to_maximum() -> None:
    got = located_error("""
        input z: float[3]
        input w: float[3]
        y = sum(max(z, w))
        output y
    """, "w))")
    assert got == "max() takes 1 tensor argument(s), then 'axis', which must be a constant, but this is a " \
                  "tensor; for the elementwise max of two tensors use maximum(a, b)"


def test_reusing_an_instance_name_says_how_to_share_weights() -> None:
    got = located_error(AFFINE + """
        input X: float[N, 3]
        h = affine(X, out=3) as fc
        g = affine(X, out=3) as fc
        output g
    """, "affine(X, out=3) as fc")
    assert "to share weights, declare them with 'param' outside the layer and pass them in as arguments" in got


def test_params_passed_as_layer_arguments_are_shared() -> None:
    m = model_of("""
        layer tied(x: [B, K], W: [K, M]) -> [B, M] {
            return x @ W
        }
        input a: float[N, 3]
        param W: [3, 2] = xavier()
        loss = sum(tied(a, W) + tied(a * 2, W))
        minimize loss
    """)
    G = m.graph
    assert list(m.params) == ["W"]
    assert [G[n].args[1] for n in G.nodes() if G[n].op == "matmul"] == [m.params["W"]] * 2


def test_nesting_at_every_limit_at_once_elaborates() -> None:
    """Layers 31 deep, the innermost calling a layer through calls nested to the limit: no RecursionError."""
    deep = "g(" * 97 + "a" + ")" * 97
    chain = "".join(f"layer f{i}(a: [K]) -> [K] {{\n return f{i + 1}(a)\n}}\n" for i in range(30))
    m = model_of("layer g(a: [K]) -> [K] {\n return a * 2\n}\n" + chain +
                 f"layer f30(a: [K]) -> [K] {{\n return {deep}\n}}\ninput x: float[3]\ny = sum(f0(x))\noutput y\n")
    assert sum(m.graph[n].op == "mul" for n in m.graph.nodes()) == 97


def test_dot_t_reads_a_layer_member_named_t_and_transposes_anything_else() -> None:
    model = model_of("""
        layer temp(x) {
            param T: [3, 2] = ones()
            return x @ T
        }
        input X: float[N, 3]
        h = temp(X) as fc
        member = fc.T
        flipped = h.T
        output member
        output flipped
    """)
    G = model.graph
    assert model.outputs["member"] == model.params["fc.T"]
    assert G[model.outputs["flipped"]].op == "transpose" and shape_of(model, "flipped") == (2, "N")


def test_dot_t_of_a_name_that_is_a_value_and_an_instance_with_a_member_t_is_an_error() -> None:
    """y = f(X) names the result and the instance: y.T could be the transpose or the member T,
    and was silently the member."""
    with pytest.raises(NNError, match=r"'y.T' is both the transpose of y and the member T of the layer instance y"):
        model_of("""
            layer f(x: [B, K]) -> [B, K] {
                T = x * 3
                return x * 2
            }
            input X: float[2, 4]
            y = f(X)
            z = y.T
            output z
        """)
    model = model_of("""
        layer f(x: [B, K]) -> [B, K] {
            T = x * 3
            return x * 2
        }
        input X: float[2, 4]
        y = f(X)
        z = transpose(y)
        output z
    """)
    assert model.graph[model.outputs["z"]].shape == (4, 2)


def test_a_second_dtype_statement_is_an_error_that_points_at_the_first() -> None:
    with pytest.raises(NNError, match=r"the dtype is set already \(to float64\)") as info:
        model_of("dtype float64\ndtype float32\ninput x = 2\noutput x\n")
    assert info.value.loc.line == 2 and info.value.notes[0][1].line == 1
