"""ONNX export, checked against the world: every exported model passes the ONNX checker in
full (strict) mode, and ONNX Runtime (CPUExecutionProvider) computes what the compiled
module's eval-mode ``forward`` does, to float32 tolerance, for every example and every op
that can be exported (cases generated from the registry's samples, as tests/test_ops.py
does), at batch sizes 1 and 7.

Needs onnx and onnxruntime (``bash scripts/export_check.sh`` installs them and runs this
file); without them those tests are skipped, and the ones that check the export works
without onnx still run.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import zlib
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from nncompile.codegen import emit_module
from nncompile.compiler import build, compile_and_load, load_module
from nncompile.elaborate import elaborate_file
from nncompile.errors import NNError
from nncompile.evaluate import concrete_values
from nncompile.export import export_model, export_onnx
from nncompile.ir import Model
from nncompile.predictions import prediction_outputs, prediction_roles
from nncompile.ops import REGISTRY, OpDef, Sample, new_graph
from nncompile.shapes import ShapeError

from conftest import EXAMPLE_FILES, ROOT, cli, write_nn
from test_ops import apply_op, draw

HAVE_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="onnx and onnxruntime are not installed "
                                "(optional: bash scripts/export_check.sh installs them and runs these tests)")
if os.environ.get("NNCOMPILE_EXPORT_CHECK") and not HAVE_ONNX:   # scripts/export_check.sh: never skip
    raise RuntimeError("scripts/export_check.sh runs the export check, but onnx or onnxruntime did not install")
BATCHES = (1, 7)
RTOL, ATOL = 1e-5, 1e-5   # float32: a few units in the last place of values of order 1


def run_onnx(proto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run an exported model in ONNX Runtime on the CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: np.asarray(v) for k, v in feeds.items()})))


def assert_matches(got: dict[str, np.ndarray], want: dict[str, np.ndarray], what: str) -> None:
    assert set(got) == set(want), what
    for name in want:
        reference = np.asarray(want[name])
        assert got[name].shape == reference.shape, f"{what}: {name}"
        assert got[name].dtype == reference.dtype, f"{what}: {name}"
        scale = max(1.0, float(np.abs(reference).max(initial=0)))
        np.testing.assert_allclose(got[name], reference, rtol=RTOL, atol=ATOL * scale, err_msg=f"{what}: {name}")


# ---- every example -----------------------------------------------------------------------

@lru_cache(maxsize=None)
def _compiled(path: Path):
    return compile_and_load(path)


def trained_like(module, model: Model, seed: int) -> tuple[dict, dict | None]:
    """Params and state away from their initialisers (biases 0, gamma 1, running variance 1
    would hide a swapped operand): each entry moved by a seeded random amount."""
    rng = np.random.default_rng(seed)
    params = {k: (v + rng.normal(0.0, 0.3, np.shape(v))).astype(v.dtype) for k, v in module.init_params(seed).items()}
    if not model.state:
        return params, None
    state = {}
    for name, value in module.init_state().items():
        moved = rng.uniform(0.5, 2.0, value.shape) if "var" in name else rng.normal(0.0, 0.5, value.shape)
        state[name] = moved.astype(value.dtype)
    return params, state


def example_case(path: Path, batch: int, seed: int = 0):
    """(module, train model, params, state, inputs) at batch size ``batch``: labels in range."""
    module = _compiled(path)
    model = elaborate_file(path)
    symbols = {d for n in model.inputs.values() for d in model.graph[n].shape if isinstance(d, str)}
    _, inputs = concrete_values(model, module, {d: str(batch) for d in symbols}, seed)
    for name, value in model.defaults.items():   # an input the file gives a value: a value of our own
        inputs[name] = (np.asarray(value) + np.random.default_rng(seed).normal(0, 1, np.shape(value))
                        ).astype(module.DTYPE)
    params, state = trained_like(module, model, seed)
    return module, model, params, state, inputs


EXAMPLE_CASES = [pytest.param(path, which, batch, id=f"{path.stem}-{which}-N={batch}")
                 for path in EXAMPLE_FILES for which in ("predictions", "every output") for batch in BATCHES]


@needs_onnx
@pytest.mark.parametrize("path, which, batch", EXAMPLE_CASES)
def test_every_example_exports_and_onnx_runtime_matches_forward(path: Path, which: str, batch: int) -> None:
    import onnx

    module, model, params, state, inputs = example_case(path, batch, seed=zlib.crc32(path.name.encode()))
    evaluation = elaborate_file(path, mode="eval")
    names = list(prediction_outputs(evaluation)) if which == "predictions" else list(evaluation.outputs)
    if not names:   # losses.nn: every head is a loss, so the default has nothing to export
        with pytest.raises(NNError, match="no output of this model is a prediction"):
            export_onnx(path, params=params, state=state)
        return
    exported = export_onnx(path, params=params, state=state, outputs=None if which == "predictions" else names)
    onnx.checker.check_model(exported.model, full_check=True)
    assert exported.outputs == tuple(names)
    want = module.forward(params, state, **inputs)
    got = run_onnx(exported.model, {name: inputs[name] for name in exported.inputs})
    assert_matches(got, {name: want[name] for name in names}, f"{path.name} at N={batch}")


def test_the_predictions_are_the_outputs_free_of_labels_and_loss() -> None:
    expected = {
        "digits_mlp": ["scores"], "two_layer": ["scores"], "batchnorm_mlp": ["scores"], "dropout_mlp": ["scores"],
        "svm_vs_softmax": ["scores", "probs"], "indexing": ["scores", "first_row", "last_class"],
        "circuit": ["f"], "neuron": ["f"], "losses": [],
    }
    for stem, names in expected.items():
        model = elaborate_file(ROOT / "examples" / f"{stem}.nn", mode="eval")
        assert list(prediction_outputs(model)) == names, stem


def test_labels_are_inputs_that_only_feed_a_loss_s_targets(tmp_path: Path) -> None:
    model = elaborate_file(ROOT / "examples" / "losses.nn", mode="eval")
    assert set(prediction_roles(model).labels) == {"is_cat", "price", "teacher"}
    # An autoencoder's X is its own target and its input: data, so the reconstruction is a prediction.
    path = write_nn(tmp_path, "autoencoder.nn", """
        input X: float[N, 4]
        param W: [4, 4] = xavier()
        recon = X @ W
        output recon
        loss = mse(recon, X)
        minimize loss
    """)
    model = elaborate_file(path, mode="eval")
    assert prediction_roles(model).labels == ()
    assert list(prediction_outputs(model)) == ["recon"]


# ---- every op that can be exported -------------------------------------------------------

def _exportable(opdef: OpDef) -> bool:
    return opdef.onnx is not None or opdef.composite is not None


def _batched(sample: Sample) -> tuple[tuple, int] | None:
    """The sample with its leading dim made the symbolic N: dim 0 of the first operand that
    has one, and of every operand with the same dim 0 (labels [N] beside scores [N, C])."""
    first = next((s for s in sample.shapes if s), None)
    if first is None:
        return None
    size = first[0]
    return tuple(("N", *s[1:]) if s and s[0] == size else tuple(s) for s in sample.shapes), size


def _op_model(opdef: OpDef, sample: Sample, shapes: tuple, dtype: str = "float32") -> Model:
    G = new_graph()
    leaves = []
    for i, shape in enumerate(shapes):
        kind = "int" if i in sample.ints else "float"
        leaves.append(G.add("input", (), {"name": f"x{i}", "shape": tuple(shape), "dtype": kind}, name=f"x{i}"))
    out = apply_op(G, opdef, leaves, {**dict(opdef.attrs), **sample.attrs})
    G.set(out, name="out")
    return Model(G, f"{opdef.name}.nn", inputs={G[n].name: n for n in leaves}, outputs={"out": out}, dtype=dtype,
                 mode="eval")


def _op_cases() -> list:
    cases = []
    for name, opdef in REGISTRY.items():
        if not _exportable(opdef):
            continue
        for i, sample in enumerate(opdef.samples):
            # unoptimised too, as the passes rewrite some ops (softmax_cross_entropy) into others
            for variant in ("fixed", "unoptimised", "float64"):
                cases.append(pytest.param(opdef, sample, None, variant, id=f"{name}-{i}-{variant}"))
            batched = _batched(sample)
            if batched is None or "shape" in sample.attrs:   # no dim: or the result's shape is an attribute
                continue
            try:
                _op_model(opdef, sample, batched[0])
            except ShapeError:   # its shape rule wants that dim fixed (concat along it, a reshape)
                continue
            cases += [pytest.param(opdef, sample, b, "batched", id=f"{name}-{i}-N={b}") for b in BATCHES]
    return cases


@needs_onnx
@pytest.mark.parametrize("opdef, sample, batch, variant", _op_cases())
def test_every_exportable_op_matches_onnx_runtime(opdef: OpDef, sample: Sample, batch: int | None,
                                                  variant: str) -> None:
    dtype = "float64" if variant == "float64" else "float32"
    shapes, size = (tuple(sample.shapes), None) if batch is None else _batched(sample)
    concrete = [tuple(batch if d == "N" else d for d in s) for s in shapes]
    seed = zlib.crc32(f"{opdef.name}{sample}{batch}".encode())
    rng = np.random.default_rng(seed)
    floats = [i for i in range(len(concrete)) if i not in sample.ints]
    drawn = draw(rng, opdef.domain, [concrete[i] for i in floats])
    values = {f"x{i}": v.astype(dtype) for i, v in zip(floats, drawn)}
    for i, bound in sample.ints.items():   # indices into the batched axis lie below the batch
        values[f"x{i}"] = rng.integers(0, batch if batch is not None and bound == size else bound, concrete[i])
    module = load_module(emit_module(build(_op_model(opdef, sample, shapes, dtype), differentiate=False)),
                         f"op_{opdef.name}")
    try:
        want = module.forward({}, **values)
    except IndexError as exc:   # x[1] of a batch of one: numpy itself refuses this batch size
        pytest.skip(f"numpy refuses this sample at N={batch}: {exc}")
    exported = export_model(_op_model(opdef, sample, shapes, dtype), ["out"], params={}, state={},
                            optimized=variant != "unoptimised")
    if exported.float32_only:   # the export's warning holds: ONNX Runtime refuses the file
        with pytest.raises(Exception, match="NOT_IMPLEMENTED|Could not find an implementation"):
            run_onnx(exported.model, {name: values[name] for name in exported.inputs})
        return
    got = run_onnx(exported.model, {name: values[name] for name in exported.inputs})
    assert_matches(got, want, f"{opdef.name} {sample}")


# Ops with no gradient samples (an int result cannot be weighted into a loss): exported in a model.
WITHOUT_SAMPLES = """
input s: float[N, 4]
input y: int[N]
predicted = argmax(s, axis=1)
kept = argmax(s, axis=0, keepdims=true)
flat = argmax(s)
flat_kept = argmax(s, keepdims=true)
accuracy = mean(predicted == y)
wrong = sum(predicted != y)
targets = one_hot(y, 4)
picked = where(s != 0, s, targets)
output predicted, kept, flat, flat_kept, accuracy, wrong, targets, picked
"""


@needs_onnx
@pytest.mark.parametrize("batch", BATCHES)
def test_argmax_one_hot_and_masks_match_onnx_runtime(batch: int, tmp_path: Path) -> None:
    import onnx

    path = write_nn(tmp_path, "accuracy.nn", WITHOUT_SAMPLES)
    module = compile_and_load(path)
    rng = np.random.default_rng(batch)
    scores = rng.standard_normal((batch, 4)).astype(np.float32)
    scores[0, 1] = 0.0   # where's mask is 0 there
    inputs = {"s": scores, "y": rng.integers(0, 4, batch)}
    exported = export_onnx(path, params={}, state=None, outputs=list(module.OUTPUTS))
    onnx.checker.check_model(exported.model, full_check=True)
    got = run_onnx(exported.model, {name: inputs[name] for name in exported.inputs})
    assert_matches(got, module.forward({}, **inputs), f"argmax, one_hot and masks at N={batch}")


def test_every_op_with_a_lowering_is_exported_by_some_test(tmp_path: Path) -> None:
    seen: set[str] = set()
    for path in [*EXAMPLE_FILES, write_nn(tmp_path, "accuracy.nn", WITHOUT_SAMPLES)]:
        model = elaborate_file(path, mode="eval")
        graph = build(model, differentiate=False).graph
        seen |= {graph[n].op for n in graph.nodes()}
    for opdef in REGISTRY.values():
        if _exportable(opdef):
            for sample in opdef.samples:
                for optimized in (True, False):
                    graph = build(_op_model(opdef, sample, sample.shapes), optimized=optimized,
                                  differentiate=False).graph
                    seen |= {graph[n].op for n in graph.nodes()}
    lowered = {name for name, opdef in REGISTRY.items() if opdef.onnx is not None}
    assert lowered - seen == set(), "ops whose ONNX lowering no test exports: give them samples"


def test_what_cannot_be_exported_is_said() -> None:
    """The ops with no lowering are the graph's leaves (written as inputs and initializers),
    composites and dropout (never in a graph: the elaborator expands them), and what only
    gradients, train mode or the GPU backend's fusion build; docs/export.md lists each."""
    leaves = {"input", "param", "state", "const"}
    missing = {name for name, opdef in REGISTRY.items() if opdef.onnx is None and opdef.composite is None
               and opdef.lower is None} - leaves
    assert missing == {"dropout_mask", "fused", "scatter", "svm_loss_grad", "conv2d_input_grad", "conv2d_weight_grad", "max_pool2d_grad",
                       "max_pool2d_select", "avg_pool2d_grad"}
    doc = (ROOT / "docs" / "export.md").read_text(encoding="utf-8")
    for name in missing | {n for n, d in REGISTRY.items() if d.onnx is not None}:
        assert f"`{name}`" in doc, f"docs/export.md does not say whether {name} exports"


# ---- what the exported graph looks like --------------------------------------------------

@needs_onnx
def test_affine_layers_become_gemm_and_labels_and_losses_drop_out() -> None:
    exported = export_onnx(ROOT / "examples" / "digits_mlp.nn")
    graph = exported.model.graph
    assert Counter(n.op_type for n in graph.node) == {"Gemm": 2, "Relu": 1}
    assert exported.inputs == ("X",) and exported.unused == ("y",)
    assert exported.outputs == ("scores",) and set(exported.dropped) == {"data_loss", "loss"}
    assert sorted(i.name for i in graph.initializer) == ["fc1.W", "fc1.b", "fc2.W", "fc2.b"]


@needs_onnx
def test_batchnorm_in_eval_mode_becomes_one_batch_normalization() -> None:
    exported = export_onnx(ROOT / "examples" / "batchnorm_mlp.nn")
    ops = [n.op_type for n in exported.model.graph.node]
    assert ops.count("BatchNormalization") == 2 and not {"Sqrt", "Div", "Sub"} & set(ops)
    bn = next(n for n in exported.model.graph.node if n.op_type == "BatchNormalization")
    assert list(bn.input)[1:] == ["fc1.bn.gamma", "fc1.bn.beta", "fc1.bn.running_mean", "fc1.bn.running_var"]
    assert bn.name == "fc1/bn/BatchNormalization"
    assert abs(next(a.f for a in bn.attribute if a.name == "epsilon") - 1e-5) < 1e-12


@needs_onnx
def test_a_batchnorm_look_alike_that_shares_a_part_stays_as_written(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "shared.nn", """
        input x: float[N, 3]
        param g: [3] = ones()
        param b: [3] = zeros()
        param m: [3] = zeros()
        param v: [3] = ones()
        xc = x - m
        y = g * (xc / sqrt(v + 1e-5)) + b
        output y, xc
    """)
    exported = export_onnx(path)
    assert "BatchNormalization" not in {n.op_type for n in exported.model.graph.node}
    module, rng = compile_and_load(path), np.random.default_rng(0)
    params = {k: rng.uniform(0.5, 2, v.shape).astype(np.float32) for k, v in module.init_params(0).items()}
    x = rng.standard_normal((5, 3)).astype(np.float32)
    assert_matches(run_onnx(export_onnx(path, params=params).model, {"x": x}), module.forward(params, x=x), "shared")


@needs_onnx
def test_layers_are_named_groups_and_tensors_carry_the_users_names() -> None:
    exported = export_onnx(ROOT / "examples" / "stdlib_mlp.nn")
    graph = exported.model.graph
    names = {n.name for n in graph.node}
    assert {"stem/Gemm", "body.1/Gemm", "body.3/Relu", "mx/ReduceMax", "scores/h.2/Gemm", "scores/scores/Gemm"} <= names
    assert {"stem.W", "body.1.W", "mx.W", "scores.scores.W"} <= {i.name for i in graph.initializer}
    docs = {n.name: n.doc_string for n in graph.node}
    assert docs["stem/Gemm"] == "nn.nn:27:17: return relu(x @ W + b)"   # the line of the layer it came from
    sliced = {n.name: n.doc_string for n in export_onnx(ROOT / "examples" / "indexing.nn").model.graph.node}
    assert sliced["colour/Slice"].startswith("indexing.nn:14:10: colour = X[:, 0:3]")


@needs_onnx
def test_symbolic_dims_stay_dynamic_and_the_versions_are_what_onnx_runtime_reads() -> None:
    proto = export_onnx(ROOT / "examples" / "mlp.nn").model
    (x,) = proto.graph.input
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["N", 64]
    (scores,) = proto.graph.output
    assert [d.dim_param or d.dim_value for d in scores.type.tensor_type.shape.dim] == ["N", 10]
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 20)]
    assert proto.ir_version == 9
    assert proto.producer_name == "nncompile"


@needs_onnx
def test_an_older_opset_writes_gelu_as_its_formula() -> None:
    path = ROOT / "examples" / "activations.nn"
    module, model, params, state, inputs = example_case(path, 1)
    at_18 = export_onnx(path, opset=18)
    assert "Gelu" not in {n.op_type for n in at_18.model.graph.node}
    assert "Gelu" in {n.op_type for n in export_onnx(path).model.graph.node}
    want = module.forward(params, **inputs)
    assert_matches(run_onnx(at_18.model, {"x": inputs["x"]}), {k: want[k] for k in at_18.outputs}, "opset 18")


@needs_onnx
def test_the_activations_stay_finite_and_agree_far_from_zero() -> None:
    """Where a naive formula overflows (softplus, sigmoid, softmax at |x| = 100), ONNX
    Runtime's nodes agree with the module's stable forms."""
    path = ROOT / "examples" / "activations.nn"
    x = np.array([-100.0, -30.0, -1.0, 1.0, 30.0, 100.0], dtype=np.float32)
    exported = export_onnx(path)
    got = run_onnx(exported.model, {"x": x})
    want = _compiled(path).forward(_compiled(path).init_params(0), x=x)
    assert all(np.isfinite(v).all() for v in got.values())
    assert_matches(got, {k: want[k] for k in exported.outputs}, "far from zero")


@needs_onnx
def test_the_export_is_deterministic() -> None:
    path = ROOT / "examples" / "indexing.nn"
    assert export_onnx(path).model.SerializeToString() == export_onnx(path).model.SerializeToString()


# ---- errors ----------------------------------------------------------------------------------

@needs_onnx
def test_an_op_without_a_lowering_is_a_located_error_naming_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(REGISTRY, "tanh", dataclasses.replace(REGISTRY["tanh"], onnx=None))
    path = write_nn(tmp_path, "m.nn", """
        input x: float[N, 3]
        h = tanh(x)
        output h
    """)
    with pytest.raises(NNError) as caught:
        export_onnx(path)
    text = caught.value.format()
    assert text.startswith(f"{path}:2:5: error: tanh cannot be exported to ONNX")
    assert text.splitlines()[1:] == ["    h = tanh(x)", "        ^~~~~~~"]


@needs_onnx
def test_an_op_a_gradient_needs_is_reported_as_the_gradients(tmp_path: Path, monkeypatch) -> None:
    """A gradient's node is located at the value it is the gradient of (h = X @ W, whose
    gradient through h[i] is a scatter): the error says it is the gradient that needs the op."""
    monkeypatch.setitem(REGISTRY, "scatter", dataclasses.replace(REGISTRY["scatter"], onnx=None))
    path = write_nn(tmp_path, "m.nn", """
        input X: float[N, 4]
        input idx: int[N]
        param W: [4, 3] = xavier()
        h = X @ W
        score = sum(h[arange(N), idx])
        s = grad(score, X)
        output s
    """)
    with pytest.raises(NNError) as caught:
        export_onnx(path)
    text = caught.value.format()
    assert text.startswith(f"{path}:4:5: error: scatter, which the gradient of the value made here needs, cannot "
                           "be exported to ONNX")
    assert text.splitlines()[1:] == ["    h = X @ W", "        ^~~~~"]


def _main(capsys, *args) -> tuple[int, str]:
    """``nncompile ARGS`` in this process: (exit code, stderr)."""
    from nncompile.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@needs_onnx
@pytest.mark.parametrize("activation, dtype, warned", [("elu", "float64", True), ("elu", "float32", False),
                                                       ("relu", "float64", False)])
def test_a_float64_export_that_onnx_runtime_cannot_load_warns(tmp_path: Path, capsys, activation: str, dtype: str,
                                                               warned: bool) -> None:
    path = write_nn(tmp_path, "m.nn", f"""
        input X: float[N, 4]
        param W: [4, 3] = xavier()
        scores = {activation}(X @ W)
        output scores
    """)
    code, err = _main(capsys, "export", path, "-o", tmp_path / "m.onnx", "--dtype", dtype)
    assert code == 0 and (tmp_path / "m.onnx").exists()
    warning = ("nncompile: warning: ONNX Runtime runs Elu in float32 only, so it will not load this float64 file "
               "(other ONNX runtimes may); for ONNX Runtime export with --dtype float32")
    assert (warning in err) == warned and ("warning" in err) == warned, err


@needs_onnx
def test_export_errors_are_for_people(tmp_path: Path, capsys) -> None:
    digits = ROOT / "examples" / "digits_mlp.nn"
    out = tmp_path / "m.onnx"
    result = cli("export", digits, "-o", out, "--output", "probs")   # once as a user runs it: no traceback
    assert result.returncode == 1 and "no output named 'probs'" in result.stderr and "Traceback" not in result.stderr
    np.savez(tmp_path / "bad.npz", **{"fc1.W": np.zeros((3, 3), np.float32)})
    np.savez(tmp_path / "shape.npz", **{k: np.zeros(3, np.float32) for k in ("fc1.W", "fc1.b", "fc2.W", "fc2.b")})
    for args, message in [
        ((ROOT / "examples" / "batchnorm_mlp.nn", "--output", "loss"), "'loss' is only an output in train mode"),
        ((digits, "--opset", "11"), "choose an opset from 18"),
        ((digits, "--params", tmp_path / "bad.npz"), "the params lack fc1.b, fc2.W, fc2.b"),
        ((digits, "--params", tmp_path / "shape.npz"), "'fc1.W' has shape [3], but the model declares [64, 256]"),
        ((digits, "--params", tmp_path / "missing.npz"), "no such file"),
        ((digits, "--normalization", tmp_path / "bad.npz"), "expected mean/NAME and scale/NAME"),
        ((ROOT / "examples" / "losses.nn",), "Choose them with --output NAME"),
    ]:
        code, err = _main(capsys, "export", *args, "-o", out)
        assert code == 1 and err.startswith("nncompile: error: ") and message in err, err
    assert not out.exists(), "a failed export leaves no file"
    code, err = _main(capsys, "export", digits, "-o", tmp_path / "model.txt")   # as predict refuses -o preds.txt
    assert code == 1 and f"-o {tmp_path / 'model.txt'}: write the ONNX model to a .onnx file" in err, err
    assert not (tmp_path / "model.txt").exists()


def test_without_onnx_the_package_works_and_export_says_how_to_install_it(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        sys.modules["onnx"] = None          # as if not installed: importing it fails
        sys.modules["onnxruntime"] = None
        import nncompile
        from nncompile.export import export_onnx
        assert nncompile.compile_file({str(ROOT / "examples" / "mlp.nn")!r})
        try:
            export_onnx({str(ROOT / "examples" / "mlp.nn")!r})
        except nncompile.NNError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "pip install 'nncompile[export]'" in done.stdout


# ---- the command line --------------------------------------------------------------------------

@needs_onnx
def test_the_export_verb_writes_a_model_onnx_runtime_runs_with_trained_params(tmp_path: Path) -> None:
    path = ROOT / "examples" / "digits_mlp.nn"
    module, model, params, state, inputs = example_case(path, 7)
    np.savez(tmp_path / "params.npz", **params)
    out = tmp_path / "digits.onnx"
    result = cli("export", path, "-o", out, "--params", tmp_path / "params.npz")
    assert result.returncode == 0, result
    assert f"wrote {out}" in result.stderr
    assert "input  X: float32[N, 64]" in result.stderr and "output scores: float32[N, 10]" in result.stderr
    assert "left out: data_loss, loss (labels or loss), input y" in result.stderr
    import onnx

    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert_matches(run_onnx(proto, {"X": inputs["X"]}), {"scores": module.forward(params, **inputs)["scores"]},
                   "trained params")


@needs_onnx
def test_the_export_verb_takes_the_running_statistics_and_chosen_outputs(tmp_path: Path) -> None:
    path = ROOT / "examples" / "svm_vs_softmax.nn"
    module, model, params, state, inputs = example_case(path, 7)
    np.savez(tmp_path / "params.npz", **params)
    out = tmp_path / "svm.onnx"
    result = cli("export", path, "-o", out, "--params", tmp_path / "params.npz", "--output", "probs", "svm")
    assert result.returncode == 0, result
    import onnx

    proto = onnx.load(out)
    assert [i.name for i in proto.graph.input] == ["X", "y"]
    want = module.forward(params, **inputs)
    got = run_onnx(proto, {"X": inputs["X"], "y": inputs["y"]})
    assert_matches(got, {k: want[k] for k in ("probs", "svm")}, "chosen outputs")

    path = ROOT / "examples" / "batchnorm_mlp.nn"
    module, model, params, state, inputs = example_case(path, 7)
    np.savez(tmp_path / "params.npz", **params)
    np.savez(tmp_path / "state.npz", **state)
    result = cli("export", path, "-o", out, "--params", tmp_path / "params.npz", "--state", tmp_path / "state.npz")
    assert result.returncode == 0, result
    want = module.forward(params, state, **inputs)
    assert_matches(run_onnx(onnx.load(out), {"X": inputs["X"]}), {"scores": want["scores"]}, "running statistics")


# ---- docs/export.md ------------------------------------------------------------------------------

DOC = ROOT / "docs" / "export.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S) if DOC.exists() else []


@needs_onnx
def test_the_docs_python_snippets_run(tmp_path: Path, monkeypatch) -> None:
    assert SNIPPETS, "docs/export.md has a runnable Python example"
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    for snippet in SNIPPETS:
        exec(compile(snippet.replace("model.onnx", str(tmp_path / "model.onnx")), str(DOC), "exec"), scope)  # noqa: S102


# ---- from nncompile train to ONNX Runtime ---------------------------------------------------------

@needs_onnx
def test_a_trained_run_exports_with_its_normalization_folded_in(tmp_path: Path) -> None:
    """The worked example of docs/export.md: train on the digits, export with the run's
    params and normalisation, and ONNX Runtime on unnormalised pixels gives the trained module's
    scores on normalised ones, and so its predictions."""
    pytest.importorskip("sklearn", reason="the digits data set comes with the train extra (scikit-learn)")
    path, run = ROOT / "examples" / "digits_mlp.nn", tmp_path / "run"
    done = cli("train", path, "--data", "digits", "--epochs", "10", "--out", run, "--seed", "0", timeout=300)
    assert done.returncode == 0, done
    out = tmp_path / "digits.onnx"
    done = cli("export", path, "-o", out, "--params", run / "params.npz", "--normalization", run / "normalization.npz")
    assert done.returncode == 0, done
    import onnx
    from sklearn.datasets import load_digits

    from nncompile.train.checkpoint import read_npz

    digits = load_digits()
    X, y = (digits.data / 16).astype(np.float32), digits.target.astype(np.int64)   # as the trainer reads them
    norm = read_npz(run / "normalization.npz")
    params = read_npz(run / "params.npz")
    module = _compiled(path)
    expected = module.forward(params, X=((X - norm["mean/X"]) / norm["scale/X"]).astype(np.float32), y=y)["scores"]
    proto = onnx.load(out)
    assert {"X.mean", "X.scale"} <= {i.name for i in proto.graph.initializer}
    (got,) = run_onnx(proto, {"X": X}).values()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert (got.argmax(1) == y).mean() > 0.9   # it learned: chance is 0.1
    # The run directory itself brings the same params and normalisation: the same bytes.
    whole = tmp_path / "whole.onnx"
    done = cli("export", path, "-o", whole, "--params", run)
    assert done.returncode == 0, done
    assert whole.read_bytes() == out.read_bytes()
    np.testing.assert_allclose(module.predict(params, X=((X - norm["mean/X"]) / norm["scale/X"]))["scores"], expected)
