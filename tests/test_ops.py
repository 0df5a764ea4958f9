"""The op registry, checked op by op with cases generated from the registry itself.

For every op with a gradient rule and every ``Sample`` it declares, a tiny graph
``loss = sum(op(inputs...) * fixed random weights)`` is compiled to a float64 module, and its
gradient is compared with central differences for every entry of every float operand, with
the operands fed as inputs and as intermediate values (another op's output, in a buffer the
op may overwrite), and the optimised module is compared with the unoptimised one. Every
sample also checks dtypes in float32 and float64, the C scalar form (compiled with gcc)
against the numpy form, and second-order gradients.
An op added to the registry is picked up here without anyone writing a test for it; an op
added without samples (or without a gradient rule and without saying why) fails the suite.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import shutil
import zlib

import numpy as np
import pytest

from nncompile.autodiff import differentiate
from nncompile.codegen import emit_module
from nncompile.compiler import build, load_module
from nncompile import passes
from nncompile.ir import Graph, Model
from nncompile.ops import REGISTRY, OpDef, Sample, Value, composite, constant, elementwise, new_graph
from nncompile.shapes import ShapeError
from nncompile.ops.registry import c_form
from nncompile.ops.basic import UNARY

import fake_cupy
from conftest import ROOT, numeric_grad

# Public ops (callable from a .nn file) allowed to have no gradient rule, and why: anything
# else a user can write is differentiable. Internal ops that gradient rules emit have rules
# too (second-order gradients need them) or are masks declared differentiable=False; what
# the passes fuse things into is built after autodiff, so it needs none.
PUBLIC_NON_DIFFERENTIABLE: dict[str, str] = {
    "arange": "integer-valued: it makes indices, which carry no gradient",
    "argmax": "integer-valued: an index, piecewise constant in its operand",
    "one_hot": "a function of integer labels, which carry no gradient",
}
DOMAINS = {"real", "positive", "nonzero", "separated"}


def _cases() -> list:
    cases = []
    for name, opdef in REGISTRY.items():
        if opdef.vjp is None and opdef.composite is None:
            continue
        for i, sample in enumerate(opdef.samples):
            cases.append(pytest.param(opdef, sample, id=f"{name}-{i}"))
    return cases


def draw(rng: np.random.Generator, domain: str, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Operand values for a gradient check, away from kinks (|x|, relu) and ties (max, min)."""
    return [np.array(v, dtype=np.float64) for v in _draw(rng, domain, shapes)]


def _draw(rng: np.random.Generator, domain: str, shapes: list[tuple[int, ...]]) -> list:
    if domain == "real":
        return [rng.standard_normal(s) for s in shapes]
    if domain == "positive":
        return [rng.uniform(0.5, 2.0, s) for s in shapes]
    if domain == "nonzero":
        return [rng.uniform(0.2, 1.5, s) * rng.choice([-1.0, 1.0], s) for s in shapes]
    if domain == "separated":
        # Every entry of every operand distinct and at least 0.1 from every other, so no
        # comparison between any two of them flips under a finite-difference step.
        sizes = [int(np.prod(s)) for s in shapes]
        pool = rng.permutation(np.arange(sum(sizes)) - sum(sizes) / 2) * 0.1 + rng.uniform(-0.02, 0.02)
        out, start = [], 0
        for s, size in zip(shapes, sizes):
            out.append(pool[start:start + size].reshape(s))
            start += size
        return out
    raise AssertionError(f"unknown gradient-check domain {domain!r}: teach tests/test_ops.py:draw() about it")


FEEDS = ("leaves", "intermediates")


def op_graph(opdef: OpDef, sample: Sample, weights_seed: int, feed: str = "leaves"):
    """The graph of loss = sum(op(x0, x1, ...) * w) for fixed random w: (G, leaves, out, loss, w).

    With ``feed="intermediates"`` each float operand is ``xi * 2``, the output of another op
    in a workspace buffer that dies at this op (which it may then overwrite), not a leaf."""
    G = new_graph()
    leaves, operands = [], []
    for i, shape in enumerate(sample.shapes):
        dtype = "int" if i in sample.ints else "float"
        leaves.append(G.add("input", (), {"name": f"x{i}", "shape": tuple(shape), "dtype": dtype}, name=f"x{i}"))
        if feed == "intermediates" and dtype == "float":
            operands.append(G.add("mul", [leaves[-1], constant(G, 2.0)]))
        else:
            operands.append(leaves[-1])
    out = apply_op(G, opdef, operands, {**dict(opdef.attrs), **sample.attrs})
    G.set(out, name="out")
    weights = np.random.default_rng(weights_seed).uniform(0.5, 1.5, G[out].shape)
    loss = G.add("sum", [G.add("mul", [out, _const(G, weights)])], {"axis": None, "keepdims": False}, name="loss")
    return G, leaves, out, loss, weights


def apply_op(G: Graph, opdef: OpDef, operands: list[int], attrs: dict) -> int:
    """The op applied to ``operands``: a composite expanded into its parts, as the elaborator does."""
    if opdef.composite is not None:
        return opdef.composite(*(Value(G, n) for n in operands), **attrs).n
    return G.add(opdef.name, operands, attrs)


def _const(G: Graph, value: np.ndarray) -> int:
    return G.add("const", (), {"value": value.tolist() if value.shape else float(value), "shape": value.shape,
                               "dtype": "float"})


def compile_op(opdef: OpDef, sample: Sample, weights_seed: int, *, feed: str = "leaves", optimized: bool = True,
               dtype: str = "float64"):
    """The module of :func:`op_graph`'s loss. Fed intermediates, the op's own result is not
    returned, so it may live in its operand's buffer."""
    G, leaves, out, loss, weights = op_graph(opdef, sample, weights_seed, feed)
    names = [G[n].name for n in leaves]
    outputs = {"loss": loss} if feed == "intermediates" else {"out": out, "loss": loss}
    model = Model(G, f"{opdef.name}.nn", inputs=dict(zip(names, leaves)), outputs=outputs, loss=loss, dtype=dtype)
    return load_module(emit_module(build(model, optimized=optimized)), f"op_{opdef.name}"), names, weights


def sample_values(opdef: OpDef, sample: Sample, names: list[str], feed: str, seed: int) -> dict[str, np.ndarray]:
    """Inputs that put the op's operands in its domain (halved when they are doubled first)."""
    rng = np.random.default_rng(seed)
    float_names = [n for i, n in enumerate(names) if i not in sample.ints]
    drawn = draw(rng, opdef.domain, [s for i, s in enumerate(sample.shapes) if i not in sample.ints])
    values = {n: np.array(v / 2) if feed == "intermediates" else v for n, v in zip(float_names, drawn)}
    for i, bound in sample.ints.items():
        values[names[i]] = np.array(rng.integers(0, bound, sample.shapes[i]))
    return values


def check_op(opdef: OpDef, sample: Sample, feed: str = "leaves") -> None:
    """The generated check of one op on one sample: its gradient matches central differences,
    and the optimised module computes what the unoptimised one does."""
    seed = zlib.crc32(f"{opdef.name}{sample}".encode())
    module, names, weights = compile_op(opdef, sample, seed + 1, feed=feed)
    values = sample_values(opdef, sample, names, feed, seed)
    float_names = [n for i, n in enumerate(names) if i not in sample.ints]

    outputs, grads = module.value_and_grad({}, **values)
    assert set(grads) == set(float_names)
    if feed == "leaves":
        np.testing.assert_allclose(outputs["loss"], np.sum(outputs["out"] * weights), rtol=1e-12)
    for name in float_names:
        assert grads[name].shape == tuple(sample.shapes[names.index(name)])
        assert grads[name].dtype == np.float64
        expected = numeric_grad(lambda: float(module.forward({}, **values)["loss"]), values[name])
        np.testing.assert_allclose(grads[name], expected, rtol=1e-6, atol=1e-8,
                                   err_msg=f"d loss / d {name} for {opdef.name}{sample}, fed {feed}")
    compare_with_unoptimised(opdef, sample, feed)


def compare_with_unoptimised(opdef: OpDef, sample: Sample, feed: str) -> None:
    """The optimised module's outputs and gradients are the unoptimised module's."""
    seed = zlib.crc32(f"{opdef.name}{sample}".encode())
    fast, names, _ = compile_op(opdef, sample, seed + 1, feed=feed)
    plain, _, _ = compile_op(opdef, sample, seed + 1, feed=feed, optimized=False)
    values = sample_values(opdef, sample, names, feed, seed)
    results = zip(fast.value_and_grad({}, **values), plain.value_and_grad({}, **values), ("output", "gradient"))
    for got, want, what in results:
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-12, atol=1e-14,
                                       err_msg=f"{what} {name} of {opdef.name}{sample}, fed {feed}: "
                                               "the optimised module differs from the unoptimised one")


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize(("opdef", "sample"), _cases())
def test_gradient_matches_central_differences(opdef: OpDef, sample: Sample, feed: str) -> None:
    check_op(opdef, sample, feed)


def _sampled_cases() -> list:
    return [pytest.param(opdef, sample, id=f"{name}-{i}") for name, opdef in REGISTRY.items()
            for i, sample in enumerate(opdef.samples)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("opdef", "sample"), _sampled_cases())
def test_values_and_gradients_have_the_module_dtype(opdef: OpDef, sample: Sample, dtype: str) -> None:
    seed = zlib.crc32(f"{opdef.name}{sample}".encode())
    for feed in FEEDS:
        module, names, _ = compile_op(opdef, sample, seed + 1, feed=feed, dtype=dtype)
        outputs, grads = module.value_and_grad({}, **sample_values(opdef, sample, names, feed, seed))
        for name, value in [*outputs.items(), *grads.items()]:
            assert isinstance(value, np.generic if np.shape(value) == () else np.ndarray), \
                f"{name} is a {type(value).__name__} of shape {np.shape(value)}"
            assert value.dtype == dtype, f"{name} of {opdef.name}{sample} is {value.dtype} in a {dtype} module"


def test_every_op_is_covered() -> None:
    """Each public op is gradient-checked (a VJP and samples) or explicitly non-differentiable."""
    for name, opdef in REGISTRY.items():
        if opdef.vjp is not None or opdef.composite is not None:
            assert opdef.samples, f"op {name} has a gradient rule (or parts) but no samples to check it with"
            assert opdef.domain in DOMAINS, f"op {name} has unknown domain {opdef.domain!r}"
        elif opdef.public and opdef.lower is None:  # lowered ops are checked through what they lower to
            assert name in PUBLIC_NON_DIFFERENTIABLE, \
                f"op {name} can be called from a .nn file but has no gradient rule; give it one and samples"
    for name in ("step", "split", "sign"):  # the masks of the max gate, relu and abs carry no gradient
        assert REGISTRY[name].vjp is None and not REGISTRY[name].differentiable and not REGISTRY[name].public


def test_issue_ops_are_public_and_checked() -> None:
    """The ops issue 2 asks for are callable from .nn files (or spelled as operators)."""
    for name in ("exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "maximum", "minimum", "sum", "mean",
                 "max", "reshape", "transpose", "softmax_cross_entropy", "matmul"):
        assert REGISTRY[name].public, name
    for name in ("add", "sub", "mul", "div", "pow", "neg", "matmul"):   # + - * / ** unary- @
        assert REGISTRY[name].vjp is not None and REGISTRY[name].samples, name


def test_samples_are_well_formed() -> None:
    for name, opdef in REGISTRY.items():
        for sample in opdef.samples:
            assert opdef.arity < 0 or len(sample.shapes) == opdef.arity, \
                f"{name}: {sample} gives {len(sample.shapes)} operands"   # arity -1: any number
            assert set(sample.attrs) <= {a for a, _ in opdef.attrs}, f"{name}: unknown attribute in {sample}"
            assert all(0 <= i < len(sample.shapes) and bound > 0 for i, bound in sample.ints.items()), name


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_drawn_inputs_respect_the_domain(domain: str) -> None:
    a, b = draw(np.random.default_rng(0), domain, [(3, 4), (4,)])
    assert a.shape == (3, 4) and b.shape == (4,)
    if domain == "positive":
        assert (a > 0).all() and (b > 0).all()
    if domain == "nonzero":
        assert (abs(a) >= 0.2).all() and (abs(b) >= 0.2).all()
    if domain == "separated":
        values = np.sort(np.concatenate([a.ravel(), b.ravel()]))
        assert np.diff(values).min() > 0.09


def test_softmax_cross_entropy_is_stable_for_huge_scores() -> None:
    """The fused rule shifts by the row max: scores of 1000 give finite loss and gradient."""
    opdef = REGISTRY["softmax_cross_entropy"]
    module, _, _ = compile_op(opdef, Sample(((2, 3), (2,)), ints={1: 3}), 0)
    scores = np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 0.0]])
    outputs, grads = module.value_and_grad({}, x0=scores, x1=np.array([0, 2]))
    assert np.isfinite(outputs["out"]) and np.isfinite(grads["x0"]).all()
    np.testing.assert_allclose(outputs["out"], (0.0 + 1000.0) / 2)


# ---- in-place chains: a contributor's op, checked the way the registry checks its own ------

SWISH = (("negative", "0"), ("exp", "$"), ("add", "$", "1.0"), ("divide", "0", "$"))   # x / (1 + exp(-x))


def _vjp_swish(g: Value, out: Value, x: Value) -> Value:
    s = x.sigmoid()    # swish' = s + swish * (1 - s)
    return g * (s + out * (1.0 - s))


@pytest.fixture
def swish():
    """A swish op written as a chain, as a contributor would add it; removed afterwards."""
    opdef = elementwise("swish_for_test", 1, SWISH, "{0} / ((T)1 + exp(-{0}))", vjp=_vjp_swish, samples=UNARY)
    yield opdef
    del REGISTRY[opdef.name]


class _AlwaysInPlace(OpDef):
    """The old default: trust every chain to run over its operand's buffer."""

    def may_overwrite(self, attrs: dict) -> bool:
        return True


def test_a_chain_runs_in_place_only_if_no_later_step_reads_an_operand(swish) -> None:
    assert not swish.may_overwrite({})                     # its last step reads x again
    assert REGISTRY["relu"].may_overwrite({}) and REGISTRY["exp"].may_overwrite({})
    assert not REGISTRY["gelu"].may_overwrite({}) and not REGISTRY["leaky_relu"].may_overwrite({"alpha": 0.1})
    for sample in swish.samples:
        check_op(swish, sample, "intermediates")
    module, _, weights = compile_op(swish, Sample(((3, 4),)), 0, feed="intermediates")
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    np.testing.assert_allclose(module.forward({}, x0=x)["loss"], np.sum(weights * 2 * x / (1 + np.exp(-2 * x))),
                               rtol=1e-12)


def test_the_generated_check_catches_a_chain_wrongly_run_in_place(swish) -> None:
    """Fed leaves, a wrong in-place flag goes unnoticed (leaves are never overwritten); fed
    intermediate values, the generated check fails."""
    wrong = _AlwaysInPlace(**{f.name: getattr(swish, f.name) for f in dataclasses.fields(swish)})
    REGISTRY[swish.name] = wrong
    check_op(wrong, wrong.samples[0], "leaves")
    with pytest.raises(AssertionError, match=f"{swish.name}.*fed intermediates"):
        check_op(wrong, wrong.samples[0], "intermediates")


def test_values_build_the_nodes_their_operators_name() -> None:
    """A rule's formula is the graph it builds: operands in the order written, numbers as
    constants, comparisons as the step mask, and ``==`` still Python's identity of objects."""
    G = new_graph()
    x = Value(G, G.add("input", (), {"name": "x", "shape": (3, 4), "dtype": "float"}))
    y = 1.0 - x * x
    assert G[y.n].op == "sub" and G[G[y.n].args[0]].op == "const" and G[G[y.n].args[0]].attr("value") == 1.0
    assert G[G[y.n].args[1]].op == "mul" and G[G[y.n].args[1]].args == (x.n, x.n)
    mask = x >= 0.0
    assert G[mask.n].op == "step" and G[mask.n].attr("cmp") == ">=" and G[x.eq(y).n].attr("cmp") == "=="
    assert (x == x) is True and (x == y) is False
    assert G[(2.0 / x).n].args[1] == x.n and G[(x @ x.mT).n].shape == (3, 3)
    assert x.sum(1, keepdims=True).broadcast((3, 4), 1, True).shape == (3, 4)
    assert x.sum_to((3, 4)) is x and x.sum_to((4,)).shape == (4,)


def test_a_value_cannot_be_mistaken_for_a_number() -> None:
    """What reads right in a formula but means something else is refused when the rule is
    built: a truth value (`if x > 0`, max(x, 0)), and `x == 0`'s False used as a mask."""
    G = new_graph()
    x = Value(G, G.add("input", (), {"name": "x", "shape": (3,), "dtype": "float"}))
    with pytest.raises(TypeError, match="graph node, not a number"):
        bool(x > 0.0)
    with pytest.raises(TypeError, match="graph node, not a number"):
        max(x, 0.0)
    with pytest.raises(ShapeError, match=r"write a\.eq\(b\)"):
        x * (x == 0.0)
    with pytest.raises(ShapeError, match="a number is needed here, not 'N'"):
        x + "N"


def test_a_chains_c_form_is_derived_from_the_chain() -> None:
    """Each elementwise op is stated once: its C form follows from its numpy chain, step by
    step in the chain's order, through one ufunc -> C table."""
    assert REGISTRY["add"].scalar == "{0} + {1}" and REGISTRY["relu"].scalar == "max({0}, (T)0)"
    chain = (("multiply", "0", "0"), ("add", "$", "1.0"), ("tanh", "$"), ("multiply", "$", "0"), ("negative", "$"))
    assert c_form(chain) == "-(tanh(({0} * {0}) + (T)1) * {0})"
    with pytest.raises(TypeError, match="needs its C form written out"):
        elementwise("never_registered", 1, lambda attrs: SWISH)
    assert "never_registered" not in REGISTRY


def test_an_elementwise_op_cannot_declare_its_own_in_place_flag() -> None:
    with pytest.raises(TypeError, match="follows from its chain"):
        elementwise("never_registered", 1, SWISH, "{0}", in_place=True)
    assert "never_registered" not in REGISTRY


def _reference_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_adding_an_op_is_one_entry(swish) -> None:
    """One declaration, and nothing else, puts an op in every generated check: gradients
    (leaves and intermediates, second order), dtypes, the C form against numpy, the docs
    table and the PyTorch comparison (which then asks for its independent reference)."""
    from differential.opcases import VARIANTS, missing_references, op_cases
    cube = composite("cube_for_test", 1, lambda x: x * x * x, samples=UNARY, doc="x^3", example="h = cube_for_test(x)")
    try:
        for opdef in (swish, cube):
            assert [c.values[1] for c in _cases() if c.values[0] is opdef] == list(opdef.samples)
            assert [c.values[1] for c in _sampled_cases() if c.values[0] is opdef] == list(opdef.samples)
            assert [c.sample for c in op_cases() if c.opdef is opdef] == [
                sample for sample in opdef.samples for _ in VARIANTS]
            assert f"`{opdef.name}(x)`" in "\n".join(_reference_generator().op_tables())
        assert [c.values[0] for c in _scalar_cases()].count(swish) == len(swish.samples)
        assert missing_references() == sorted([swish.name, cube.name])
        check_op(cube, cube.samples[0], "intermediates")
    finally:
        del REGISTRY[cube.name]


# ---- the C scalar forms (what the CuPy backend fuses), compiled and run on the CPU ---------

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler (gcc) on the PATH")
C_TOLERANCE = {"float64": 1e-12, "float32": 4e-6}


def _scalar_cases() -> list:
    return [case for case in _sampled_cases() if case.values[0].scalar is not None]


def check_scalar_form(opdef: OpDef, sample: Sample, dtype: str) -> None:
    """The op's C form, compiled with gcc, computes what its numpy form computes: on the
    sample's draw, on it scaled by 10 (where the domain allows), at 0, and, for two operands
    of one shape, on ties."""
    seed = zlib.crc32(f"{opdef.name}{sample}".encode())
    module, names, _ = compile_op(opdef, sample, seed + 1, dtype=dtype)
    drawn = sample_values(opdef, sample, names, "leaves", seed)
    trials = {"drawn": drawn, "at 0": {n: np.zeros_like(v) for n, v in drawn.items()}}
    if opdef.domain in ("real", "nonzero"):
        trials["scaled"] = {n: v * 10 for n, v in drawn.items()}
    if len(names) == 2 and sample.shapes[0] == sample.shapes[1]:
        trials["tied"] = {names[0]: drawn[names[0]], names[1]: drawn[names[0]]}
    expr = opdef.c_expression(names, {**dict(opdef.attrs), **sample.attrs})
    for trial, values in trials.items():
        values = {n: np.asarray(v, dtype=dtype) for n, v in values.items()}
        with np.errstate(all="ignore"):
            want = module.forward({}, **values)["out"]
        got = fake_cupy.run_c(expr, dtype, *(values[n] for n in names))
        np.testing.assert_allclose(got, want, rtol=C_TOLERANCE[dtype], atol=C_TOLERANCE[dtype],
                                   err_msg=f"C form {expr!r} of {opdef.name}{sample}, {trial}, {dtype}")


@needs_gcc
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("opdef", "sample"), _scalar_cases())
def test_the_c_scalar_form_computes_what_numpy_computes(opdef: OpDef, sample: Sample, dtype: str) -> None:
    check_scalar_form(opdef, sample, dtype)


def test_every_fusable_op_has_samples_for_its_c_form() -> None:
    for name, opdef in REGISTRY.items():
        if opdef.scalar is not None:
            assert opdef.samples, f"op {name} has a C form but no samples to compare it with numpy on"


@needs_gcc
def test_the_c_check_catches_a_wrong_sign(monkeypatch) -> None:
    tanh = REGISTRY["tanh"]
    monkeypatch.setitem(REGISTRY, "tanh", dataclasses.replace(tanh, scalar="-tanh({0})"))
    with pytest.raises(AssertionError, match="C form"):
        check_scalar_form(REGISTRY["tanh"], tanh.samples[0], "float64")


# ---- the gradient rules' own ops: differentiable again, or declared masks ---------------

@pytest.mark.parametrize(("opdef", "sample"), _cases())
def test_every_op_a_gradient_rule_emits_has_a_gradient_rule_itself(opdef: OpDef, sample: Sample) -> None:
    """Second-order gradients differentiate the backward graph: every op a VJP adds has a
    VJP too, or is declared non-differentiable (a mask), or has no operands (a constant)."""
    G, leaves, _, loss, _ = op_graph(opdef, sample, 0)
    wrt = [n for n in leaves if G[n].dtype == "float"]
    before = set(G.nodes())
    adjoints = differentiate(G, loss, wrt)
    for n in set(G.nodes()) - before:
        emitted = REGISTRY[G[n].op]
        assert emitted.vjp is not None or not emitted.differentiable or not G[n].args or emitted.no_second_order, \
            f"{opdef.name}'s gradient rule emits {emitted.name}, which has no gradient rule and is not a mask"


def test_an_op_without_a_second_derivative_says_why_and_has_no_rule() -> None:
    """``no_second_order`` is the reason an op a gradient rule emits cannot be differentiated
    again (a model that needs it gets a located error: tests/test_grad_builtin.py)."""
    for name, opdef in REGISTRY.items():
        if opdef.no_second_order:
            assert opdef.vjp is None and opdef.differentiable, f"{name} declares no second derivative, yet has one"


@pytest.mark.parametrize(("opdef", "sample"), _cases())
def test_second_order_gradients_match_central_differences(opdef: OpDef, sample: Sample) -> None:
    """d/dx of sum(w2 * d loss/dx), built by differentiating the backward graph, against
    central differences of the first-order gradient."""
    seed = zlib.crc32(f"{opdef.name}{sample}2".encode())
    G, leaves, _, loss, _ = op_graph(opdef, sample, seed)
    wrt = [n for n in leaves if G[n].dtype == "float"]
    adjoints = differentiate(G, loss, wrt)
    terms = [G.add("sum", [G.add("mul", [adjoints[n], _const(G, np.random.default_rng(seed + i).uniform(
        0.5, 1.5, G[n].shape))])], {"axis": None, "keepdims": False}) for i, n in enumerate(wrt) if n in adjoints]
    if not terms:
        pytest.skip("the op's gradient does not depend on its operands")
    total = terms[0]
    for term in terms[1:]:
        total = G.add("add", [total, term])
    names = [G[n].name for n in leaves]
    model = Model(G, f"{opdef.name}2.nn", inputs=dict(zip(names, leaves)), outputs={"total": total}, loss=total,
                  dtype="float64")
    module = load_module(emit_module(build(model)), f"op2_{opdef.name}")
    values = sample_values(opdef, sample, names, "leaves", seed)
    _, grads = module.value_and_grad({}, **values)
    for name in (G[n].name for n in wrt):
        expected = numeric_grad(lambda: float(module.forward({}, **values)["total"]), values[name])
        np.testing.assert_allclose(grads[name], expected, rtol=1e-5, atol=1e-7,
                                   err_msg=f"second-order d / d {name} for {opdef.name}{sample}")


def test_the_generated_check_catches_a_wrong_optimisation(monkeypatch) -> None:
    """A simplification that drops multiplications by constants (x * 2 -> x): the optimised
    module no longer computes what the unoptimised one does."""
    def drop_scaling(G: Graph, n: int):
        node = G[n]
        if node.op == "mul" and G[node.args[1]].op == "const" and G[node.args[0]].shape == node.shape:
            return node.args[0]
        return passes._simplify_node(G, n)

    simplify = passes.simplify
    monkeypatch.setattr(passes, "simplify", lambda G, roots: simplify(G, roots, drop_scaling))
    with pytest.raises(AssertionError, match="differs from the unoptimised"):
        compare_with_unoptimised(REGISTRY["exp"], REGISTRY["exp"].samples[0], "intermediates")
