"""The optimisation passes: each does its one job, on the forward and backward graph alike,
and none changes what the model computes."""
from __future__ import annotations

import dataclasses
import shutil
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import fake_cupy
import nncompile
from nncompile.codegen import emit_module
from nncompile.compiler import build, load_module
from nncompile.elaborate import elaborate, elaborate_file
from nncompile.ir import Graph, Node
from nncompile.parser import parse
from nncompile.ops import REGISTRY, constant, new_graph
from nncompile.ops.rewrites import drop_redundant_broadcasts, is_const
from nncompile.passes import Roots, eliminate_common_subexpressions, eliminate_dead_code, fold_constants, simplify

from conftest import EXAMPLE_FILES, EXAMPLES, example_inputs, value_and_grad


def program_of(text: str, optimized: bool = True):
    model = elaborate(parse(textwrap.dedent(text).lstrip("\n"), "p.nn"), "float64")
    return build(model, optimized=optimized)


def ops(program) -> Counter:
    G = program.graph
    return Counter(G[n].op for n in G.nodes() if G[n].op not in ("input", "param", "const"))


def module_of(program):
    return load_module(emit_module(program), "p")


def test_common_subexpressions_are_computed_once() -> None:
    program = program_of("""
        input x: float[3]
        input y: float[3]
        a = exp(x * y)
        b = exp(x * y)
        f = a + b
        output f
    """)
    assert ops(program) == {"mul": 1, "exp": 1, "add": 1}
    out = module_of(program).forward({}, x=np.array([1.0, 2, 3]), y=np.array([0.5, 0, -1]))
    np.testing.assert_allclose(out["f"], 2 * np.exp([0.5, 0, -3]))


def test_constants_are_folded() -> None:
    program = program_of("""
        const k = 3
        input x: float[3]
        f = x * (2 * k) + exp(0) * 4
        output f
    """)
    G = program.graph
    assert ops(program) == {"mul": 1, "add": 1}
    assert not [n for n in G.nodes() if G[n].args and all(G[a].op == "const" for a in G[n].args)]
    values = sorted(float(G[n].attr("value")) for n in G.nodes() if G[n].op == "const")
    assert values == [4.0, 6.0]
    np.testing.assert_allclose(module_of(program).forward({}, x=np.ones(3))["f"], np.full(3, 10.0))


def test_dead_code_is_removed_but_inputs_and_params_stay() -> None:
    program = program_of("""
        input x: float[3]
        input unused: float[2]
        param p: [2] = ones()
        waste = exp(unused) * p
        f = x * 2
        output f
    """)
    assert ops(program) == {"mul": 1}
    m = module_of(program)
    assert set(m.INPUTS) == {"x", "unused"} and set(m.PARAMS) == {"p"}


# Regression: a pass may replace a declared output node (`f = x * 1` becomes x itself;
# below, CSE merges two outputs); the module must still return every output by name.
@pytest.mark.parametrize(("expr", "remaining"), [
    ("x * 1", {}),
    ("1 * x + 0", {}),
    ("(x - 0) / 1", {}),
    ("-(-x)", {}),
    ("x ** 1", {}),
    ("x ** 2", {"mul": 1}),
])
def test_algebraic_identities(expr: str, remaining: dict) -> None:
    program = program_of(f"""
        input x: float[3]
        f = {expr}
        output f
    """)
    assert ops(program) == remaining
    x = np.array([1.0, -2.0, 3.0])
    out = module_of(program).forward({}, x=x)["f"]
    np.testing.assert_allclose(out, eval(expr.replace("x", "xv"), {"xv": x}))
    assert out is not x, "an output must not alias the caller's input"


def test_outputs_merged_by_cse_are_each_returned() -> None:
    program = program_of("""
        input x: float[2]
        a = x * 3
        b = x * 3
        output a, b
    """)
    assert ops(program) == {"mul": 1}
    out = module_of(program).forward({}, x=np.array([1.0, 2.0]))
    assert set(out) == {"a", "b"} and out["a"] is not out["b"]
    np.testing.assert_array_equal(out["a"], [3.0, 6.0])
    np.testing.assert_array_equal(out["b"], [3.0, 6.0])


def test_identities_never_lose_broadcasting() -> None:
    program = program_of("""
        input x: float[3]
        f = x * [[1], [1]]
        output f
    """)
    out = module_of(program).forward({}, x=np.array([1.0, 2.0, 3.0]))["f"]
    assert out.shape == (2, 3)


def test_the_backward_graph_is_optimised_too() -> None:
    """(x + y) * z: after simplification df/dx = df/dy = z and df/dz = q, with no arithmetic
    left in the backward pass (the seed 1.0 multiplies away, the two equal adjoints merge)."""
    model = elaborate_file(EXAMPLES / "circuit.nn", "float64")
    program = build(model)
    assert ops(program) == {"add": 1, "mul": 1}
    G = program.graph
    assert program.grads["x"] == program.grads["y"] == model.inputs["z"]
    assert G[program.grads["z"]].op == "add" and G[program.grads["z"]].name == "q"


def test_unoptimised_build_keeps_every_gate() -> None:
    program = program_of("""
        input x: float[3]
        f = x * 1 + 0
        output f
    """, optimized=False)
    assert ops(program) == {"mul": 1, "add": 1}


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_optimisation_preserves_values_and_gradients(example: Path) -> None:
    fast = load_module(emit_module(build(elaborate_file(example, "float64"))), "fast")
    plain = load_module(emit_module(build(elaborate_file(example, "float64"), optimized=False)), "plain")
    inputs = example_inputs(fast)
    params = fast.init_params(1)
    out_fast, grads_fast = value_and_grad(fast, params, inputs)
    out_plain, grads_plain = value_and_grad(plain, params, inputs)
    assert out_fast.keys() == out_plain.keys() and grads_fast.keys() == grads_plain.keys()
    for k in out_fast:
        np.testing.assert_allclose(out_fast[k], out_plain[k], rtol=1e-12, atol=1e-14, err_msg=k)
    for k in grads_fast:
        np.testing.assert_allclose(grads_fast[k], grads_plain[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_optimised_graph_is_smaller() -> None:
    fast = build(elaborate_file(EXAMPLES / "two_layer.nn", "float64"))
    plain = build(elaborate_file(EXAMPLES / "two_layer.nn", "float64"), optimized=False)
    assert sum(ops(fast).values()) < sum(ops(plain).values())


def test_passes_are_deterministic() -> None:
    def listing():
        program = build(elaborate_file(EXAMPLES / "mlp.nn", "float64"))
        G = program.graph
        return [(G[n].op, G[n].args, G[n].attrs, G[n].name) for n in G.topological()]
    assert listing() == listing()


# ---- the passes one at a time, on a hand-built graph ----------------------------------

def _graph():
    model = elaborate(parse("input x: float[2]\na = x * 2\nb = x * 2\nc = a + b\nd = exp(x)\noutput c\n", "g.nn"))
    return model, model.graph


def test_cse_merges_and_keeps_roots_pointing_at_the_survivor() -> None:
    model, G = _graph()
    roots = Roots({("out", "c"): model.outputs["c"]})
    eliminate_common_subexpressions(G, roots)
    c = roots[("out", "c")]
    assert G[c].args[0] == G[c].args[1]           # a and b are one value now
    assert Counter(G[n].op for n in G.nodes())["mul"] == 1


def test_dce_keeps_exactly_what_the_roots_need() -> None:
    model, G = _graph()
    roots = Roots({("out", "c"): model.outputs["c"]})
    eliminate_dead_code(G, roots)
    assert "exp" not in {G[n].op for n in G.nodes()}
    assert model.inputs["x"] in G


def test_folding_leaves_non_constant_work_alone() -> None:
    model, G = _graph()
    before = Counter(G[n].op for n in G.nodes())
    fold_constants(G, Roots({("out", "c"): model.outputs["c"]}))
    assert Counter(G[n].op for n in G.nodes()) == before


FUSED_MODELS = ["activations.nn", "losses.nn", "mlp.nn", "batchnorm_mlp.nn", "neuron.nn"]
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler (gcc) on the PATH")


def compare_fused_kernels(path: Path, dtype: str, monkeypatch) -> None:
    """The CuPy module's values and gradients, its fused kernels compiled as C with gcc (as
    CuPy compiles them with nvcc), against the numpy module's."""
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    gpu = load_module(nncompile.compile_file(path, dtype=dtype, backend="cupy"), f"{path.stem}_c")
    cpu = nncompile.compile_and_load(path, dtype=dtype)
    params, inputs = cpu.init_params(1), example_inputs(cpu)
    want, want_grads = value_and_grad(cpu, params, inputs)
    with fake_cupy.compiled_kernels():
        got, got_grads = value_and_grad(gpu, params, inputs)
    tol = 1e-10 if dtype == "float64" else 1e-4
    for key in want:
        assert np.asarray(got[key]).dtype == np.asarray(want[key]).dtype, key
        np.testing.assert_allclose(got[key], want[key], rtol=tol, atol=tol, err_msg=key)
    for key in want_grads:
        assert got_grads[key].dtype == dtype, f"d {key}"
        np.testing.assert_allclose(got_grads[key], want_grads[key], rtol=tol, atol=tol, err_msg=f"d {key}")


@needs_gcc
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", FUSED_MODELS)
def test_fused_kernels_compiled_as_c_compute_what_numpy_computes(name: str, dtype: str, monkeypatch) -> None:
    compare_fused_kernels(EXAMPLES / name, dtype, monkeypatch)


@needs_gcc
def test_the_fused_kernel_check_catches_what_only_c_gets_wrong(tmp_path: Path, monkeypatch) -> None:
    """C's integer division makes 1/2 zero: translated to numpy the kernel is right, compiled
    as C it is wrong, and only the compiled check sees it."""
    path = tmp_path / "t.nn"
    path.write_text("input x: float[4, 3]\nloss = sum(tanh(x * 2) * x)\nminimize loss\n")
    tanh = REGISTRY["tanh"]
    monkeypatch.setitem(REGISTRY, "tanh", dataclasses.replace(tanh, scalar="(tanh({0}) * (1/2 + 1/2))"))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    translated = load_module(nncompile.compile_file(path, dtype="float64", backend="cupy"), "t_numpy")
    x = np.linspace(-1, 1, 12).reshape(4, 3)
    np.testing.assert_allclose(translated.forward({}, x=x)["loss"], np.sum(np.tanh(2 * x) * x))
    with pytest.raises(AssertionError):
        compare_fused_kernels(path, "float64", monkeypatch)


# ---- the simplification rules, one by one (nncompile/ops/rewrites.py) -------------------
# Each rule is declared with its op (OpDef.rewrites); ``simplified`` runs the simplify pass
# on a tiny graph and says what now stands for its result.

def tiny(*shapes: tuple) -> tuple[Graph, list[int]]:
    """A graph of float inputs x0, x1, ... of the given shapes."""
    G = new_graph()
    return G, [G.add("input", (), {"name": f"x{i}", "shape": s, "dtype": "float"}) for i, s in enumerate(shapes)]


def simplified(G: Graph, n: int) -> Node:
    roots = Roots({"out": n})
    simplify(G, roots)
    eliminate_common_subexpressions(G, roots)
    return G[roots["out"]]


def test_power_of_one() -> None:
    G, (x,) = tiny((3,))
    assert simplified(G, G.add("pow", [x, constant(G, 1.0)])) == G[x]


def test_square_is_mul() -> None:
    G, (x,) = tiny((3,))
    node = simplified(G, G.add("pow", [x, constant(G, 2.0)]))
    assert (node.op, node.args) == ("mul", (x, x))


def test_half_power_is_sqrt() -> None:
    G, (x,) = tiny((3,))
    node = simplified(G, G.add("pow", [x, constant(G, 0.5)]))
    assert (node.op, node.args) == ("sqrt", (x,))
    G, (x,) = tiny((3,))
    assert simplified(G, G.add("pow", [x, constant(G, 3.0)])).op == "pow"   # other powers stay


def test_mul_by_one() -> None:
    G, (x,) = tiny((3,))
    assert simplified(G, G.add("mul", [x, constant(G, 1.0)])) == G[x]
    assert simplified(G, G.add("mul", [constant(G, 1.0), x])) == G[x]
    wider = simplified(G, G.add("mul", [x, constant(G, 1.0, (2, 3))]))
    assert wider.op == "mul" and wider.shape == (2, 3)   # x alone would lose the broadcast


def test_scale_of_scale() -> None:
    G, (x,) = tiny((3,))
    node = simplified(G, G.add("mul", [constant(G, 0.5), G.add("mul", [x, constant(G, 4.0)])]))
    assert node.op == "mul" and node.args[1] == x and G[node.args[0]].attr("value") == 2.0
    G, (x,) = tiny((3,))
    node = simplified(G, G.add("mul", [G.add("mul", [constant(G, 3.0), x]), constant(G, 2.0)]))
    assert node.args[1] == x and G[node.args[0]].attr("value") == 6.0
    G, (x,) = tiny((3,))   # a scale that broadcasts x stays apart: the product is wider than x
    node = simplified(G, G.add("mul", [constant(G, 2.0), G.add("mul", [x, constant(G, 3.0, (2, 3))])]))
    assert node.shape == (2, 3) and G[node.args[1]].op == "mul"


def test_add_zero() -> None:
    G, (x,) = tiny((3,))
    assert simplified(G, G.add("add", [x, constant(G, 0.0)])) == G[x]
    assert simplified(G, G.add("add", [constant(G, 0.0), x])) == G[x]
    assert simplified(G, G.add("add", [x, constant(G, 1.0)])).op == "add"


def test_subtract_zero() -> None:
    G, (x,) = tiny((3,))
    assert simplified(G, G.add("sub", [x, constant(G, 0.0)])) == G[x]
    assert simplified(G, G.add("sub", [constant(G, 0.0), x])).op == "sub"   # 0 - x is -x, not x


def test_divide_by_one() -> None:
    G, (x,) = tiny((3,))
    assert simplified(G, G.add("div", [x, constant(G, 1.0)])) == G[x]
    assert simplified(G, G.add("div", [constant(G, 1.0), x])).op == "div"


def test_double_negation() -> None:
    G, (x,) = tiny((3,))
    assert simplified(G, G.add("neg", [G.add("neg", [x])])) == G[x]
    assert simplified(G, G.add("neg", [x])).op == "neg"


def test_share_log_softmax() -> None:
    """The loss becomes nll of a log_softmax node; its gradient reads that very node."""
    G, (scores,) = tiny((5, 4))
    labels = G.add("input", (), {"name": "y", "shape": (5,), "dtype": "int"})
    loss = G.add("softmax_cross_entropy", [scores, labels])
    grad = G.add("softmax_cross_entropy_grad", [scores, labels, constant(G, 1.0)])
    roots = Roots({"loss": loss, "grad": grad})
    simplify(G, roots)
    eliminate_common_subexpressions(G, roots)
    loss, grad = G[roots["loss"]], G[roots["grad"]]
    assert (loss.op, grad.op) == ("nll", "softmax_nll_grad")
    assert loss.args[0] == grad.args[0] and G[loss.args[0]].op == "log_softmax"
    assert G[loss.args[0]].args == (scores,) and G[loss.args[0]].attr("axis") == 1


def test_share_log_softmax_in_gradient() -> None:
    G, (scores,) = tiny((5, 4))
    labels = G.add("input", (), {"name": "y", "shape": (5,), "dtype": "int"})
    node = simplified(G, G.add("softmax_cross_entropy_grad", [scores, labels, constant(G, 1.0)]))
    assert node.op == "softmax_nll_grad" and G[node.args[0]].op == "log_softmax"
    assert node.args[1] == labels and G[node.args[2]].op == "const"


def test_sum_of_squares_is_l2() -> None:
    """sum(x * x) over every axis is one dot (the L2 term); a partial sum, a sum that keeps its
    dims, or a product of two different tensors stays as it is."""
    G, (x,) = tiny((3, 4))
    node = simplified(G, G.add("sum", [G.add("mul", [x, x])]))
    assert (node.op, node.args, node.attrs) == ("l2", (x,), ())
    G, (x,) = tiny((3, 4))
    assert simplified(G, G.add("sum", [G.add("mul", [x, x])], {"axis": (1, 0)})).op == "l2"
    G, (x,) = tiny((3, 4))
    assert simplified(G, G.add("sum", [G.add("pow", [x, constant(G, 2.0)])])).op == "l2"   # x ** 2 is x * x first
    for attrs in ({"axis": 0}, {"keepdims": True}):
        G, (x,) = tiny((3, 4))
        assert simplified(G, G.add("sum", [G.add("mul", [x, x])], attrs)).op == "sum"
    G, (x, y) = tiny((3, 4), (3, 4))
    assert simplified(G, G.add("sum", [G.add("mul", [x, y])])).op == "sum"
    G, (x,) = tiny((4,))   # x times x broadcast to [3, 4] sums 3 copies: not l2(x)
    wide = G.add("mul", [x, G.add("broadcast_to", [x], {"shape": (3, 4)})])
    assert simplified(G, G.add("sum", [wide])).op == "sum"



def test_per_channel_sum() -> None:
    """A sum, mean or sum_to of an image batch over all but its channels is a channel_sum (of
    x itself where it sums a negation); over other axes, or of a 3-D array, it stays."""
    G, (x,) = tiny((2, 3, 4, 5))
    node = simplified(G, G.add("mean", [x], {"axis": (0, 2, 3)}))
    assert (node.op, node.args, dict(node.attrs)) == ("channel_sum", (x,), {"mean": True, "negate": False, "shape": (3,)})
    G, (x,) = tiny((2, 3, 4, 5))
    node = simplified(G, G.add("sum_to", [G.add("neg", [x])], {"dropped": (0,), "kept": (2, 3), "shape": (3, 1, 1)}))
    assert (node.op, node.args, dict(node.attrs)) == ("channel_sum", (x,), {"mean": False, "negate": True,
                                                                             "shape": (3, 1, 1)})
    G, (x,) = tiny((2, 3, 4, 5))
    node = simplified(G, G.add("sum", [x], {"axis": (-4, 2, -1), "keepdims": True}))
    assert (node.op, node.shape) == ("channel_sum", (1, 3, 1, 1))
    for shape, axis in (((2, 3, 4, 5), (0, 2)), ((2, 3, 4, 5), (1, 2, 3)), ((2, 3, 4), (0, 2))):
        G, (x,) = tiny(shape)
        assert simplified(G, G.add("sum", [x], {"axis": axis})).op == "sum"

def test_the_l2_term_is_one_dot_with_the_same_value_and_gradient() -> None:
    text = """
        param W: [3, 4] = normal(std=1.0)
        loss = 0.5 * sum(W ** 2)
        minimize loss
    """
    program = program_of(text)
    G = program.graph
    assert ops(program)["l2"] == 1 and ops(program)["sum"] == 0
    assert not any(G[n].op == "mul" and G[n].args[0] == G[n].args[1] for n in G.nodes()), "W * W is not formed"
    params = module_of(program).init_params(0)
    outputs, grads = module_of(program).value_and_grad(params)
    plain = module_of(program_of(text, optimized=False)).value_and_grad(params)
    np.testing.assert_allclose(outputs["loss"], plain[0]["loss"], rtol=1e-14)
    np.testing.assert_allclose(grads["W"], params["W"], rtol=1e-14)


def test_drop_redundant_broadcasts() -> None:
    """Every elementwise op: an operand broadcast_to a shape numpy's own broadcasting reaches
    is used as it is, before the op's own rules run (here x * broadcast_to(1) -> x)."""
    G, (x, c) = tiny((3, 4), (4,))
    node = simplified(G, G.add("add", [x, G.add("broadcast_to", [c], {"shape": (3, 4)})]))
    assert (node.op, node.args) == ("add", (x, c))
    G, (x,) = tiny((3, 4))
    one = G.add("broadcast_to", [constant(G, 1.0)], {"shape": (3, 4)})
    assert simplified(G, G.add("mul", [x, one])) == G[x]
    G, (x, c) = tiny((4,), (4,))
    node = simplified(G, G.add("mul", [x, G.add("broadcast_to", [c], {"shape": (3, 4)})]))
    assert G[node.args[1]].op == "broadcast_to"   # without it the product would be [4], not [3, 4]


def test_a_per_channel_broadcast_is_a_reshape_that_numpy_broadcasts() -> None:
    """broadcast_to(expand_dims(v, (0, 2, 3)), [N, C, H, W]) read by an elementwise op with a
    full-sized operand is v as [C, 1, 1] (a view, no [N, C, H, W] array); alone, or where the
    other operand is smaller, the broadcast stays; a scalar is left as it is."""
    G, (x, v) = tiny(("N", 3, 4, 5), (3,))
    wide = G.add("broadcast_to", [v], {"shape": ("N", 3, 4, 5), "axes": (0, 2, 3)})
    node = simplified(G, G.add("mul", [wide, x]))
    assert (node.op, node.args[1], G[node.args[0]].op, G[node.args[0]].shape) == ("mul", x, "reshape", (3, 1, 1))
    assert G[node.args[0]].args == (v,)
    G, (x, v) = tiny((2, 3), (2,))
    node = simplified(G, G.add("add", [x, G.add("broadcast_to", [v], {"shape": (2, 3), "axes": (1,)})]))
    assert (G[node.args[1]].op, G[node.args[1]].shape) == ("reshape", (2, 1))   # trailing unit dims are kept
    G, (x, v) = tiny((4, 5), (3,))
    node = simplified(G, G.add("mul", [x, G.add("broadcast_to", [v], {"shape": (3, 4, 5), "axes": (1, 2)})]))
    assert G[node.args[1]].shape == (3, 1, 1)   # [3, 1, 1] * [4, 5] is [3, 4, 5] too
    G, (x, v) = tiny((3,), (3,))
    node = simplified(G, G.add("mul", [x, G.add("broadcast_to", [v], {"shape": (4, 3), "axes": (0,)})]))
    assert G[node.args[1]].op == "broadcast_to"   # without it the product would be [3], not [4, 3]
    G, (x,) = tiny((2, 3))
    node = simplified(G, G.add("mul", [x, G.add("broadcast_to", [constant(G, 2.0)], {"shape": (2, 3), "axes": (0, 1)})]))
    assert G[node.args[1]].op == "broadcast_to"


def test_batch_norm_gradients_broadcast_no_per_channel_vector_to_an_image() -> None:
    """The digits CNN's batch-norm backward reads its per-channel factors as [C, 1, 1] views,
    with the unoptimized module's gradients."""
    path = Path(__file__).parents[1] / "benchmarks" / "models" / "digits_cnn_plain.nn"
    model = elaborate_file(str(path), "float64")
    program = build(model, input_grads=False)
    G = program.graph
    assert not any(G[n].op == "broadcast_to" and G[n].attr("axes") and len(G[n].shape) == 4 for n in G.nodes())
    fast, plain = module_of(program), module_of(build(elaborate_file(str(path), "float64"), optimized=False,
                                                      input_grads=False))
    rng = np.random.default_rng(0)
    inputs = {"X": rng.standard_normal((5, 1, 8, 8)), "y": rng.integers(0, 10, 5)}
    params = fast.init_params(0)
    got = fast.value_and_grad(params, fast.init_state(), None, **inputs)[1]
    want = plain.value_and_grad(params, plain.init_state(), None, **inputs)[1]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_every_rule_is_declared_with_its_op_and_specified_here() -> None:
    """A rewrite is a named function in an op's ``rewrites``, and has its own test above."""
    rules = {rule for opdef in REGISTRY.values() for rule in opdef.rewrites} | {drop_redundant_broadcasts}
    tests = {name for name in globals() if name.startswith("test_")}
    assert {f"test_{rule.__name__}" for rule in rules} <= tests
    assert all(rule.__doc__ for rule in rules)


POOLED_RELU = """
    input x: float[N, 3, 6, 6]
    param w: [3, 6, 6] = normal(std=1.0)
    r = relu(x * w)
    h = max_pool2d(r, {pool})
    loss = sum(h * h) + sum(h)
    minimize loss
"""


def test_relu_after_max_pool() -> None:
    """max_pool2d(relu(x)) is relu(max_pool2d(x)) where only the pool and its gradient read
    the relu: the relu then runs on the pooled array, and nothing on x's shape remains. A relu
    that is also a result stays for it; one that another op reads, or before an average pool,
    is not moved."""
    program = program_of(POOLED_RELU.format(pool=2))
    G = program.graph
    relus = [n for n in G.nodes() if G[n].op == "relu"]
    assert [G[n].shape for n in relus] == [("N", 3, 3, 3)] and G[G[relus[0]].args[0]].op == "max_pool2d"
    output = program_of(POOLED_RELU.format(pool=2).replace("    minimize", "    output r\n    minimize"))
    assert ("N", 3, 6, 6) in [output.graph[n].shape for n in output.graph.nodes() if output.graph[n].op == "relu"]
    for other in ("avg_pool2d(r, 2)", "max_pool2d(r, 2) + max_pool2d(exp(r), 2)"):
        moved = program_of(POOLED_RELU.format(pool=2).replace("max_pool2d(r, 2)", other))
        assert [moved.graph[n].shape for n in moved.graph.nodes() if moved.graph[n].op == "relu"] == [("N", 3, 6, 6)]


def test_relu_mask_after_max_pool() -> None:
    """relu's backward mask runs on the pooled gradient, before it is routed back through the
    pool: every step (the mask) is pooled-sized, and only the pool's gradient is image-sized."""
    for pool in ("2", "4, stride=2, padding=1", "[2, 3], stride=[2, 3]"):
        G = program_of(POOLED_RELU.format(pool=pool)).graph
        masks = [n for n in G.nodes() if G[n].op == "step"]
        relu = next(n for n in G.nodes() if G[n].op == "relu")
        assert masks and all(G[n].shape == G[relu].shape and G[n].args[0] == relu for n in masks), pool


@pytest.mark.parametrize("pool, torch_pool", [
    ("2", {"kernel_size": 2}), ("4, stride=2, padding=1", {"kernel_size": 4, "stride": 2, "padding": 1}),
    ("[2, 3], stride=[2, 3]", {"kernel_size": (2, 3)}), ("3, stride=1", {"kernel_size": 3, "stride": 1})])
def test_pooling_a_relu_first_or_last_gives_the_same_bits_ties_included(pool: str, torch_pool: dict) -> None:
    """Small integers and zeros tie inside most windows, positive and not: the rewritten
    module's loss and gradients equal the unrewritten one's exactly, and PyTorch's relu then
    max_pool2d (float64), which routes a tie to its first entry too."""
    torch = pytest.importorskip("torch")
    text = POOLED_RELU.format(pool=pool)
    fast, plain = module_of(program_of(text)), module_of(program_of(text, optimized=False))
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(4, 3, 6, 6)).astype(np.float64)
    params = {"w": rng.integers(0, 2, size=(3, 6, 6)).astype(np.float64)}
    (out, grads), (want_out, want) = fast.value_and_grad(params, x=x), plain.value_and_grad(params, x=x)
    assert out["loss"] == want_out["loss"]
    np.testing.assert_array_equal(grads["w"], want["w"])
    np.testing.assert_array_equal(grads["x"], want["x"])
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(params["w"], requires_grad=True)
    h = torch.nn.functional.max_pool2d(torch.relu(tx * tw), **torch_pool)
    ((h * h).sum() + h.sum()).backward()
    np.testing.assert_array_equal(grads["x"], tx.grad.numpy())
    np.testing.assert_array_equal(grads["w"], tw.grad.numpy())


def test_the_gradient_of_a_pooled_relu_matches_finite_differences_and_its_hvp(tmp_path: Path) -> None:
    """Away from ties (distinct random values) the rewritten gradient is the derivative of the
    loss, and H v, computed from the rewritten graphs, is the gradient's change along v."""
    path = tmp_path / "p.nn"
    path.write_text(textwrap.dedent(POOLED_RELU.format(pool=2)).lstrip("\n"))
    module = nncompile.compile_and_load(path, dtype="float64")
    rng = np.random.default_rng(5)
    x, w, v = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((3, 6, 6)), rng.standard_normal((3, 6, 6))
    loss = lambda w: module.value_and_grad({"w": w}, x=x)[0]["loss"]
    grad = lambda w: module.value_and_grad({"w": w}, x=x)[1]["w"]
    eps = 1e-6
    numeric = [(loss(w + eps * e) - loss(w - eps * e)) / (2 * eps) for e in np.eye(w.size).reshape(-1, *w.shape)]
    np.testing.assert_allclose(grad(w).ravel(), numeric, rtol=1e-6, atol=1e-6)
    hv = module.hvp({"w": w}, {"w": v}, x=x)["w"]
    np.testing.assert_allclose(hv, (grad(w + eps * v) - grad(w - eps * v)) / (2 * eps), rtol=1e-5, atol=1e-6)


def test_twice_added_scaled() -> None:
    """(a + s * x) + s * x, s smaller than x, is a + (2 * s) * x: the 2 meets the small factor.
    Not where the product has another reader, where s is as big as x, or for two products."""
    G, (a, x, s) = tiny((2, 3, 4, 5), (2, 3, 4, 5), (3, 1, 1))
    twice = G.add("add", [G.add("add", [a, G.add("mul", [s, x])]), G.add("mul", [x, s])])
    node = simplified(G, twice)
    doubled, big = G[node.args[1]].args
    assert (node.op, node.args[0], G[node.args[1]].op, big) == ("add", a, "mul", x)
    assert G[doubled].op == "mul" and G[doubled].args[0] == s and is_const(G, G[doubled].args[1], 2.0)
    G, (a, x, s) = tiny((2, 3, 4, 5), (2, 3, 4, 5), (3, 1, 1))
    b = G.add("mul", [s, x])
    twice = G.add("add", [G.add("add", [a, b]), b])
    roots = Roots({"out": twice, "b": G.add("exp", [b])})
    simplify(G, roots)
    assert G[roots["out"]].args[1] == b   # s * x is needed anyway
    for s_shape, other in (((2, 3, 4, 5), False), ((3, 1, 1), True)):
        G, (a, x, s, y) = tiny((2, 3, 4, 5), (2, 3, 4, 5), s_shape, (2, 3, 4, 5))
        second = G.add("mul", [s, y if other else x])
        node = simplified(G, G.add("add", [G.add("add", [a, G.add("mul", [s, x])]), second]))
        assert G[node.args[0]].op == "add", (s_shape, other)


def test_batch_norm_adds_its_centred_input_to_the_gradient_once() -> None:
    """The digits CNN's xc gradient: the variance's term, reaching xc through both factors of
    xc * xc, is one product with the 2 in its per-channel factor."""
    path = Path(__file__).parents[1] / "benchmarks" / "models" / "digits_cnn_plain.nn"
    G = build(elaborate_file(str(path), "float64"), input_grads=False).graph
    sums = [n for n in G.nodes() if G[n].op == "add" and len(G[n].shape) == 4]
    assert not any(G[a].op == "add" and set(G[a].args) & set(G[n].args) for n in sums for a in G[n].args)
    assert sum(is_const(G, G[n].args[1], 2.0) for n in G.nodes() if G[n].op == "mul" and G[n].shape in ((16, 1, 1), (32, 1, 1))) == 2
