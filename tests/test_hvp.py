"""The module's hvp() and hessian(), and ``nncompile check --hessian``.

Oracles: central differences of the module's own compiled gradient (float64), the dense
Hessian built entry by entry from them, and (tests/test_differential.py) PyTorch's double
backward. The check itself must fail on a wrong product.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from nncompile.codegen.hvp import HESSIAN_LIMIT
from nncompile.codegen import emit_module
from nncompile.compiler import build, compile_and_load, compile_file, load_module
from nncompile.evaluate import concrete_values
from nncompile.elaborate import elaborate_file
from nncompile.gradcheck import Kinks, check_gradients, check_hessian, summarize

from conftest import EXAMPLE_FILES, ROOT, write_nn

TINY = """
    input X: float[N, 2]
    input y: int[N]
    param W: [2, 3] = normal(0.7)
    param b: [3] = normal(0.3)
    scores = tanh(X @ W) + b
    loss = softmax_cross_entropy(scores, y) + 0.1 * l2(W)
    minimize loss
"""


def _tiny(tmp_path: Path, dtype: str = "float64"):
    module = compile_and_load(write_nn(tmp_path, "tiny.nn", TINY), dtype=dtype)
    rng = np.random.default_rng(0)
    return module, module.init_params(1), {"X": rng.standard_normal((5, 2)), "y": rng.integers(0, 3, 5)}


def _fd_hessian(module, params: dict, inputs: dict, eps: float = 1e-5) -> np.ndarray:
    """Central differences of the compiled gradient, one flat param entry at a time."""
    names = list(module.PARAMS)
    flat = np.concatenate([params[k].reshape(-1) for k in names])
    sizes = [params[k].size for k in names]

    def grad(x: np.ndarray) -> np.ndarray:
        parts = np.split(x, np.cumsum(sizes)[:-1])
        p = {k: part.reshape(params[k].shape) for k, part in zip(names, parts)}
        g = module.value_and_grad(p, **inputs)[1]
        return np.concatenate([g[k].reshape(-1) for k in names])
    columns = []
    for j in range(flat.size):
        step = np.zeros_like(flat)
        step[j] = eps
        columns.append((grad(flat + step) - grad(flat - step)) / (2 * eps))
    return np.stack(columns, axis=1)


def test_hessian_matches_central_differences_of_the_gradient_entry_by_entry(tmp_path: Path) -> None:
    module, params, inputs = _tiny(tmp_path)
    H = module.hessian(params, **inputs)
    assert H.shape == (9, 9) and H.dtype == np.float64
    np.testing.assert_allclose(H, _fd_hessian(module, params, inputs), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-14)


def test_the_hessian_of_a_model_with_dropout_is_of_one_set_of_masks(tmp_path: Path) -> None:
    """Every column draws the same masks: the matrix is symmetric, each column is the hvp of
    those masks, and a seeded rng gives the same matrix each time."""
    path = write_nn(tmp_path, "drop.nn", """
        input X: float[N, 4]
        input y: int[N]
        layer blk(x) {
            param W: [4, 3] = xavier()
            return dropout(tanh(x @ W), 0.5)
        }
        h = blk(X) as fc
        param W0: [3, 3] = xavier()
        loss = softmax_cross_entropy(h @ W0, y)
        minimize loss
    """)
    module = compile_and_load(path, dtype="float64")
    params = module.init_params(0)
    inputs = {"X": np.random.default_rng(1).standard_normal((6, 4)), "y": np.array([0, 1, 2, 0, 1, 2])}
    H = module.hessian(params, None, np.random.default_rng(7), **inputs)
    np.testing.assert_allclose(H, H.T, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(H, module.hessian(params, None, np.random.default_rng(7), **inputs))
    assert np.abs(H).max() > 0


# Two dropouts whose loss reads the second first, and a repeat of dropout layers (a loop):
# each function's own dependencies would reach the masks in different orders.
TWO_DROPOUTS = """
    dtype float64
    input X: float[N, 3]
    param a: [3] = ones()
    param b: [3] = ones()
    layer noisy(x) {
        param w: [3] = ones()
        return dropout(x * w, p=0.3)
    }
    h = dropout(X * a, p=0.5)
    k = dropout(X * b, p=0.2)
    r = repeat 3 noisy(k)
    loss = sum(r * r) + sum(k * k * k) + sum(h * h * h)
    output h, k
    minimize loss
"""


@pytest.mark.parametrize("loops", [True, False])
def test_every_function_given_one_seed_draws_the_masks_value_and_grad_draws(tmp_path: Path, loops: bool) -> None:
    """hvp, hessian and trace draw their dropout masks in source order, as value_and_grad
    does: with one seed they differentiate the same function of the params."""
    module = load_module(compile_file(write_nn(tmp_path, "two.nn", TWO_DROPOUTS), loops=loops), f"two_{loops}")
    params = {k: 1 + 0.1 * np.arange(p.size, dtype=float).reshape(p.shape) for k, p in module.init_params(0).items()}
    X = np.random.default_rng(1).uniform(0.5, 1.5, (8, 3))

    def loss_and_grad(p: dict) -> tuple[float, np.ndarray]:
        values, grads = module.value_and_grad(p, None, 5, X=X)
        return values["loss"], np.concatenate([grads[k].reshape(-1) for k in module.PARAMS])

    flat = np.concatenate([params[k].reshape(-1) for k in module.PARAMS])
    sizes = np.cumsum([params[k].size for k in module.PARAMS])[:-1]

    def at(x: np.ndarray) -> dict:
        return {k: part.reshape(params[k].shape) for k, part in zip(module.PARAMS, np.split(x, sizes))}
    eps = 1e-6   # the masks are fixed by the seed, so the gradient is smooth in the params
    fd = np.stack([(loss_and_grad(at(flat + eps * e))[1] - loss_and_grad(at(flat - eps * e))[1]) / (2 * eps)
                   for e in np.eye(flat.size)], axis=1)
    H = module.hessian(params, None, 5, X=X)
    np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-6)
    v = at(np.random.default_rng(2).standard_normal(flat.size))
    hv = module.hvp(params, v, None, 5, X=X)
    np.testing.assert_allclose(np.concatenate([hv[k].reshape(-1) for k in module.PARAMS]),
                               H @ np.concatenate([v[k].reshape(-1) for k in module.PARAMS]), rtol=1e-10)
    generator, once = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(module.hessian(params, None, generator, X=X), H)   # a Generator: copied per column
    module.hvp(params, v, None, once, X=X)
    assert generator.bit_generator.state == once.bit_generator.state   # and left where one hvp() leaves it

    values = module.value_and_grad(params, None, 5, X=X)[0]
    model = elaborate_file(tmp_path / "two.nn")
    program = build(model, optimized=False, trace=True, differentiate=False)   # eval's and the gradient check's
    traced = load_module(emit_module(program, trace=True), f"two_trace_{loops}").trace(params, None, 5, X=X)[0]
    for name in ("h", "k", "loss"):
        np.testing.assert_array_equal(traced[model.outputs[name]], values[name], err_msg=name)


def test_hvp_is_the_hessian_times_v_and_leaves_its_arguments_alone(tmp_path: Path) -> None:
    module, params, inputs = _tiny(tmp_path)
    rng = np.random.default_rng(2)
    v = {k: rng.standard_normal(p.shape) for k, p in params.items()}
    kept = {k: a.copy() for k, a in {**params, **v}.items()}
    hv = module.hvp(params, v, **inputs)
    assert all(np.array_equal(a, kept[k]) for k, a in {**params, **v}.items())
    assert {k: a.shape for k, a in hv.items()} == {k: p.shape for k, p in params.items()}
    flat_v = np.concatenate([v[k].reshape(-1) for k in module.PARAMS])
    expected = module.hessian(params, **inputs) @ flat_v
    np.testing.assert_allclose(np.concatenate([hv[k].reshape(-1) for k in module.PARAMS]), expected,
                               rtol=1e-12, atol=1e-14)
    again = module.hvp(params, {k: 2 * a for k, a in v.items()}, **inputs)   # linear in v
    for k in hv:
        np.testing.assert_allclose(again[k], 2 * hv[k], rtol=1e-12, atol=1e-14)



@pytest.mark.parametrize("kind", ["param", "input"])
def test_a_param_or_input_named_v_leaves_hvps_own_v_alone(tmp_path: Path, kind: str) -> None:
    """hvp(params, v, ...) reads its direction from its argument v: a value of the model named
    v is another variable in the module, so hvp, hessian and check --hessian still work."""
    declared = "param v: [3] = normal(0.5)\n    input X: float[N, 3]" if kind == "param" else \
        "param b: [3] = normal(0.5)\n    input v: float[N, 3]"
    data, scale = ("X", "v") if kind == "param" else ("v", "b")
    module = compile_and_load(write_nn(tmp_path, "v.nn", f"""
    {declared}
    param W: [3, 3] = normal(0.5)
    loss = sum(tanh({data} @ W) * {scale}) + 0.1 * l2(W)
    minimize loss
    """), dtype="float64")
    params = module.init_params(0)
    inputs = {data: np.random.default_rng(0).standard_normal((4, 3))}
    H = module.hessian(params, **inputs)
    np.testing.assert_allclose(H, _fd_hessian(module, params, inputs), rtol=1e-6, atol=1e-8)
    v = {k: np.ones_like(a) for k, a in params.items()}
    hv = module.hvp(params, v, **inputs)
    np.testing.assert_allclose(np.concatenate([hv[k].ravel() for k in module.PARAMS]), H.sum(axis=1), rtol=1e-12,
                               atol=1e-14)

def test_hvp_returns_the_module_dtype(tmp_path: Path) -> None:
    module, params, inputs = _tiny(tmp_path, "float32")
    v = {k: np.ones(p.shape, np.float32) for k, p in params.items()}
    inputs["X"] = inputs["X"].astype(np.float32)
    assert {a.dtype for a in module.hvp(params, v, **inputs).values()} == {np.dtype(np.float32)}
    assert module.hessian(params, **inputs).dtype == np.float32


def test_a_v_of_the_wrong_shape_is_refused_as_v(tmp_path: Path) -> None:
    module, params, inputs = _tiny(tmp_path)
    with pytest.raises(ValueError, match=r"^v, the direction: param 'W' must have shape \[2, 3\]"):
        module.hvp(params, {"W": np.ones((3, 2)), "b": np.ones(3)}, **inputs)
    with pytest.raises(TypeError, match=r"^v, the direction: missing param\(s\) \['b'\]"):
        module.hvp(params, {"W": np.ones((2, 3))}, **inputs)
    with pytest.raises(TypeError, match=r"^missing param\(s\) \['b'\]"):   # the params themselves
        module.hvp({"W": params["W"]}, params, **inputs)


def test_a_wrong_v_is_refused_as_v_where_loops_read_it(tmp_path: Path) -> None:
    source = compile_file(write_nn(tmp_path, "deep.nn", """
        input X: float[N, 4]
        layer block(x: [B, 4]) -> [B, 4] {
            param W: [4, 4] = xavier()
            param b: [4] = zeros()
            return tanh(x @ W + b)
        }
        h = repeat 20 block(X)
        loss = sum(h ** 2)
        minimize loss
    """), dtype="float64")
    hvp = source[source.index("def hvp("):source.index("HESSIAN_LIMIT =")]
    assert "for i in range(" in hvp and "v_arrays = _read_params(v)" in hvp, "the loop form reads v"
    module = load_module(source, "deep_hvp")
    params, X = module.init_params(0), np.ones((3, 4))
    v = {k: np.ones_like(a) for k, a in params.items()}
    with pytest.raises(ValueError, match=r"^v, the direction: param 'h.3.W' must have shape \[4, 4\]"):
        module.hvp(params, {**v, "h.3.W": np.ones((2, 2))}, X=X)
    with pytest.raises(TypeError, match=r"^v, the direction: missing param\(s\) \['h.3.b'\]"):
        module.hvp(params, {k: a for k, a in v.items() if k != "h.3.b"}, X=X)


def test_hessian_of_a_model_past_the_limit_says_to_use_hvp(tmp_path: Path) -> None:
    side = int(np.sqrt(HESSIAN_LIMIT)) + 1
    module = compile_and_load(write_nn(tmp_path, "big.nn", f"""
        input x: float[{side}]
        param W: [{side}, {side}] = normal(0.1)
        loss = sum(tanh(x @ W))
        minimize loss
    """))
    with pytest.raises(ValueError, match=rf"{side * side} param elements, more than HESSIAN_LIMIT = "
                                         rf"{HESSIAN_LIMIT}; use hvp\(params, v, ...\)"):
        module.hessian(module.init_params(), x=np.ones(side, np.float32))


def test_a_model_without_a_loss_has_no_hvp(tmp_path: Path) -> None:
    module = compile_and_load(write_nn(tmp_path, "m.nn", "input x: float[3]\ny = x * 2\noutput y\n"))
    assert not hasattr(module, "hvp") and not hasattr(module, "hessian")
    assert "def hvp" not in compile_file(ROOT / "examples" / "mlp.nn", hvp=False)


def test_the_hvp_function_is_written_like_the_others() -> None:
    """Named after the user's params (v_W), its .nn lines in comments, numpy only, and the
    same text every time."""
    path = ROOT / "examples" / "two_layer.nn"
    source = compile_file(path)
    assert source == compile_file(path)
    hvp = source[source.index("def hvp("):source.index("HESSIAN_LIMIT =")]
    assert "_read_params(v)" in hvp and "# two_layer.nn:" in hvp
    assert "import torch" not in source and "import jax" not in source


@pytest.mark.parametrize("path", [p for p in EXAMPLE_FILES if elaborate_file(p).params and
                                  elaborate_file(p).target is not None], ids=lambda p: p.stem)
def test_every_example_passes_the_hessian_check(path: Path) -> None:
    """A kink anywhere reaches every H v (digits_cnn's relus and max pools meet one at some
    points): the first of a few random points where the check can conclude is checked."""
    module = compile_and_load(path, dtype="float64")
    model = elaborate_file(path, "float64")
    for seed in range(4):
        params, inputs = concrete_values(model, module, {}, seed)
        results = summarize(check_hessian(module, params, inputs, kinks=Kinks.of_file(path)))
        assert set(results) == set(module.PARAMS)
        assert all(r.ok for r in results.values()), {k: r.show() for k, r in results.items()}
        if any(r.status == "ok" for r in results.values()):
            break
    assert any(r.status == "ok" for r in results.values())


def test_the_hessian_check_fails_on_a_wrong_product(tmp_path: Path) -> None:
    module, params, inputs = _tiny(tmp_path)
    right = module.hvp
    module.hvp = lambda p, v, *rest, **kw: {k: a * (1 + 1e-4) for k, a in right(p, v, *rest, **kw).items()}
    results = summarize(check_hessian(module, params, inputs))
    assert all(r.status == "FAIL" for r in results.values()), {k: r.show() for k, r in results.items()}


def test_a_deep_tanh_nets_hessian_passes_and_a_wrong_one_fails(tmp_path: Path) -> None:
    """benchmarks/models/deep_tanh.nn at 400 layers (1000 there): its gradient bends within
    the longest step clear of kinks, so differences from that step alone were wrong while
    their error estimate looked small (5 correct products FAILed here, 12 at 1000 layers).
    Shorter steps are tried too: every product passes, and 0.1% off fails wherever it is
    above round-off."""
    source = (ROOT / "benchmarks" / "models" / "deep_tanh.nn").read_text().replace("repeat 1000", "repeat 400")
    path = write_nn(tmp_path, "deep.nn", source)
    module = compile_and_load(path, dtype="float64")
    params, inputs = concrete_values(elaborate_file(path, "float64"), module, {}, 0)
    kinks = Kinks.of_file(path)
    results = summarize(check_hessian(module, params, inputs, kinks=kinks))
    assert len(results) == 800 and all(r.status == "ok" for r in results.values()), \
        {k: r.show() for k, r in results.items() if r.status != "ok"}
    right = module.hvp
    module.hvp = lambda p, v, *rest, **kw: {k: a * 1.001 for k, a in right(p, v, *rest, **kw).items()}
    wrong = summarize(check_hessian(module, params, inputs, kinks=kinks))
    assert all(r.status == "FAIL" for r in wrong.values() if abs(r.analytic) > 1e-7)
    assert sum(r.status == "FAIL" for r in wrong.values()) > 0.95 * len(wrong)


def test_check_hessian_from_the_command_line(run_cli) -> None:
    result = run_cli("check", "--hessian", ROOT / "examples" / "gradient_penalty.nn")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    assert [line.split()[3] for line in lines if line.startswith("  Hessian-vector product of")] == \
        ["W1", "b1", "W2", "b2"]
    assert lines[-1].startswith("Hessian check passed (float64, hvp against extrapolated central differences")


def test_the_curvature_example_finds_the_largest_eigenvalue_with_hvp() -> None:
    """examples/curvature.py as a user runs it: power iteration on hvp() agrees with the
    eigenvalues of hessian() to the digits it prints."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "examples" / "curvature.py")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    found = re.search(r"power iteration on hvp\(\): (\S+) \(largest eigenvalue of hessian\(\): (\S+)\)", done.stdout)
    assert found and found[1] == found[2], done.stdout
    assert float(found[1]) > 0


@pytest.mark.parametrize("name", ["curvature", "batchnorm_mlp"])
def test_the_cupy_module_computes_the_hvp_and_hessian_numpy_computes(name: str, monkeypatch) -> None:
    """The CuPy backend (on the CPU stand-in): the same hvp() and hessian() as numpy's."""
    from conftest import example_inputs
    from test_cupy_backend import _load_on_fake_cupy

    path = ROOT / "examples" / f"{name}.nn"
    reference = compile_and_load(path, dtype="float64")
    gpu = _load_on_fake_cupy(compile_file(path, dtype="float64", backend="cupy"), name, monkeypatch)
    params, inputs = reference.init_params(1), example_inputs(reference)
    v = {k: np.random.default_rng(3).standard_normal(p.shape) for k, p in params.items()}
    want = reference.hvp(params, v, None, np.random.default_rng(0), **inputs)
    got = gpu.hvp(params, v, None, np.random.default_rng(0), **inputs)
    for key in want:
        np.testing.assert_allclose(np.asarray(got[key]), want[key], rtol=1e-10, atol=1e-12, err_msg=key)
    if sum(p.size for p in params.values()) <= 64:
        np.testing.assert_allclose(np.asarray(gpu.hessian(params, **inputs)), reference.hessian(params, **inputs),
                                   rtol=1e-10, atol=1e-12)


def test_a_model_without_params_has_an_empty_hvp_and_hessian(tmp_path: Path) -> None:
    module = compile_and_load(write_nn(tmp_path, "m.nn", "input x: float[3]\nloss = sum(x * x)\nminimize loss\n"))
    assert module.hvp({}, {}, x=np.ones(3, np.float32)) == {}
    assert module.hessian({}, x=np.ones(3, np.float32)).shape == (0, 0)


# ---- a model with an op that has no second derivative -------------------------------------

POOLED = """
    input X: float[2, 1, 4, 4]
    param w: [1] = ones()
    q = max_pool2d(X * w, 2)
    loss = sum(q * q)
    minimize loss
"""
MISSING = "this needs the second derivative of max_pool2d_grad, which has none: a test says so"


@pytest.fixture
def no_second_order(monkeypatch) -> None:
    """max_pool2d's gradient, max_pool2d_grad, without a gradient rule of its own, saying why
    (``OpDef.no_second_order``): max_pool2d has a first derivative and no second."""
    import dataclasses

    from nncompile.ops import REGISTRY

    grad = REGISTRY["max_pool2d_grad"]
    monkeypatch.setitem(REGISTRY, "max_pool2d_grad", dataclasses.replace(grad, vjp=None, no_second_order="a test says so"))


def test_a_model_whose_op_has_no_second_derivative_compiles_and_its_hvp_says_why(tmp_path: Path,
                                                                                no_second_order) -> None:
    """The default compile builds hvp(): it must not stop the model compiling. Its gradient
    is checked as ever; hvp() and hessian() raise, naming the op and its line (the file's
    name, quotes and all, is a string in the module, never code)."""
    path = write_nn(tmp_path, "it's \"pooled\".nn", POOLED)
    source = compile_file(path, dtype="float64")
    module = compile_and_load(path, dtype="float64")
    params, inputs = module.init_params(0), {"X": np.random.default_rng(0).standard_normal((2, 1, 4, 4))}
    results = summarize(check_gradients(module, params, inputs, kinks=Kinks.of_file(path)))
    assert all(r.status == "ok" for r in results.values()), results
    where = "it's \"pooled\".nn:3:16: "
    assert module.HVP_MISSING == where + MISSING
    with pytest.raises(NotImplementedError, match=re.escape(f"hvp() cannot be computed for this model: {where}{MISSING}")):
        module.hvp(params, {"w": np.ones(1)}, **inputs)
    with pytest.raises(NotImplementedError, match=re.escape(f"hessian() cannot be computed for this model: {where}")):
        module.hessian(params, **inputs)
    assert source == compile_file(path, dtype="float64") and "import torch" not in source
    assert "HVP_MISSING" not in compile_file(ROOT / "examples" / "two_layer.nn")


def test_check_hessian_reports_a_missing_second_derivative_as_a_located_error(tmp_path: Path, no_second_order,
                                                                            capsys) -> None:
    from nncompile import cli

    path = write_nn(tmp_path, "m.nn", POOLED)
    assert cli.main(["check", "--hessian", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "gradient check passed" in out and "Traceback" not in err
    assert err.splitlines() == [f"{path}:3:16: error: {MISSING}", "    q = max_pool2d(X * w, 2)",
                                "                   ^~~~~"]


def test_grad_of_it_in_the_language_stays_a_located_compile_error(tmp_path: Path, no_second_order) -> None:
    """A loss that holds the gradient needs the second derivative itself: no module then."""
    from nncompile.errors import NNError

    path = write_nn(tmp_path, "m.nn", """
        input X: float[2, 1, 4, 4]
        param w: [1] = ones()
        g = grad(sum(max_pool2d(X * w, 2)), X)
        loss = sum(g * g) * sum(w)
        minimize loss
    """)
    with pytest.raises(NNError, match=re.escape(MISSING)) as caught:
        compile_file(path, hvp=False)
    assert caught.value.loc is not None and caught.value.loc.line == 3


def test_any_other_error_building_the_hvp_still_stops_the_compile(tmp_path: Path, monkeypatch) -> None:
    """Only a missing second derivative becomes an hvp() that raises; a mistake of any other
    kind met while building hvp() is not hidden in the module."""
    from nncompile import compiler
    from nncompile.errors import NNError

    def failing(*args, **kwargs):
        raise NNError("something else went wrong")

    monkeypatch.setattr(compiler, "hvp_program", failing)
    with pytest.raises(NNError, match="something else went wrong"):
        compile_file(write_nn(tmp_path, "m.nn", POOLED))
