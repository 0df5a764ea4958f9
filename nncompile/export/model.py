"""A .nn file as an ONNX model: its eval-mode graph, optimised (no autodiff, no fusion), cut
to the chosen outputs, with the params (and running statistics) as initializers and the
symbolic dims (the batch N) left dynamic. onnx is imported only here, and only when a model
is exported: it is an optional dependency (``pip install 'nncompile[export]'``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..compiler import DTYPES, build, compile_and_load
from ..elaborate import elaborate_file
from ..errors import NNError
from ..files import write_atomic
from ..ir import Model
from ..predictions import prediction_outputs
from ..version import __version__
from .builder import GraphBuilder

DEFAULT_OPSET = 20
OLDEST_OPSET = 18   # reductions take their axes as an input from opset 18 on
Arrays = Mapping[str, Any] | str | Path
# ONNX ops that ONNX Runtime's CPU provider runs in float32 only (1.32.0): a float64 file
# with one of them is valid ONNX that ONNX Runtime refuses to load.
ONNXRUNTIME_FLOAT32_ONLY = frozenset({"LeakyRelu", "Elu", "Softplus", "Conv", "AveragePool"})


@dataclass
class Export:
    """An exported model and what the export chose."""

    model: Any                     # onnx.ModelProto
    outputs: tuple[str, ...]       # the graph's outputs, in the file's order
    dropped: tuple[str, ...]       # the file's outputs left out (labels or loss, or not asked for)
    inputs: tuple[str, ...]        # the graph's inputs: the ones the outputs need
    unused: tuple[str, ...]        # the file's inputs the outputs do not need (labels)
    float32_only: tuple[str, ...] = ()   # a float64 graph's ops that ONNX Runtime runs in float32 only


def require_onnx() -> Any:
    """The onnx package, or an error that says how to install it."""
    try:
        import onnx
    except ImportError:
        raise NNError("exporting to ONNX needs the onnx package, which is not installed; "
                      "install it with: pip install 'nncompile[export]'  (or: pip install onnx)") from None
    return onnx


def export_onnx(path: str | Path, output: str | Path | None = None, *, params: Arrays | None = None,
                state: Arrays | None = None, outputs: Sequence[str] | None = None, opset: int = DEFAULT_OPSET,
                seed: int = 0, dtype: str | None = None, normalization: Arrays | None = None) -> Export:
    """Export the eval-mode graph of the .nn file at ``path`` to ONNX (and write it to ``output``).

    ``params`` (a dict of arrays, an .npz file, or a run directory, which also brings its
    running statistics and input normalisation) default to the file's initialisers with
    ``seed``; ``state`` (running statistics) to the module's initial state. ``outputs``
    defaults to the predictions (:func:`prediction_outputs`): labels and losses drop out.
    ``normalization`` (a run's normalization.npz: ``mean/X``, ``scale/X``) is folded in, so
    the model takes raw inputs. The model passes ``onnx.checker.check_model(full_check=True)``
    before it is written."""
    onnx = require_onnx()
    check_opset(onnx, opset)
    if isinstance(params, (str, Path)) and Path(params).is_dir():   # a run directory: what nncompile train wrote
        run = Path(params)
        params = run / "params.npz"
        state = state if state is not None or not (run / "state.npz").is_file() else run / "state.npz"
        normalization = normalization if normalization is not None or not (run / "normalization.npz").is_file() \
            else run / "normalization.npz"
    if dtype is not None and dtype not in DTYPES:
        raise NNError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    model = elaborate_file(path, dtype, mode="eval")
    chosen = _choose_outputs(model, path, outputs)
    module = compile_and_load(path, dtype=dtype)   # its initialisers, exactly as training starts from them
    if params is None:
        params = module.init_params(seed)
    if state is None and model.state:
        state = module.init_state()
    exported = export_model(model, chosen, params=_read(params, "params"), state=_read(state, "state"), opset=opset,
                            normalization=_normalization(model, _read(normalization, "normalization")))
    if output is not None:
        write_atomic(output, exported.model.SerializeToString(), durable=True)   # a deliverable, like params
    return exported


def export_model(model: Model, outputs: Sequence[str], *, params: Mapping[str, Any], state: Mapping[str, Any],
                 opset: int = DEFAULT_OPSET, optimized: bool = True,
                 normalization: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Export:
    """The ONNX model of an eval-mode ``model`` (elaborated, not yet built: this runs the
    passes on its graph) cut to ``outputs``, with ``params`` and ``state`` as initializers.
    ``optimized=False`` skips the passes (a test of the lowerings of ops they rewrite)."""
    onnx = require_onnx()
    check_opset(onnx, opset)
    dropped = tuple(name for name in model.outputs if name not in outputs)
    model.outputs = {name: n for name, n in model.outputs.items() if name in outputs}
    program = build(model, optimized=optimized, differentiate=False)   # the numpy passes: nothing is fused
    live = set(program.graph.nodes())
    values = _checked("params", params, model.params, live, model)
    stats = _checked("state", state, model.state, live, model)
    builder = GraphBuilder(onnx, model, program.outputs, opset, model.dtype, values, stats, normalization)
    builder.build()
    proto = _model_proto(onnx, builder, model, Path(model.file), opset)
    inputs = tuple(name for name, n in model.inputs.items() if n in builder.graph_inputs)
    float32_only = {node.op_type for node in proto.graph.node} & ONNXRUNTIME_FLOAT32_ONLY
    return Export(proto, tuple(program.outputs), dropped, inputs,
                  tuple(name for name in model.inputs if name not in inputs),
                  tuple(sorted(float32_only)) if model.dtype == "float64" else ())


def check_opset(onnx: Any, opset: Any) -> None:
    latest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not OLDEST_OPSET <= opset <= latest:
        raise NNError(f"--opset {opset}: choose an opset from {OLDEST_OPSET} to {latest} "
                      f"(the installed onnx {onnx.__version__} knows up to {latest}); the default is {DEFAULT_OPSET}")


def _choose_outputs(model: Model, path: str | Path, names: Sequence[str] | None) -> dict[str, int]:
    if not names:
        chosen = prediction_outputs(model)
        if not chosen:
            listed = ", ".join(model.outputs) or "none"
            raise NNError("no output of this model is a prediction (one that depends on a data input but on no "
                          f"label and no loss), so there is nothing to export by default; its eval-mode outputs "
                          f"are: {listed}. Choose them with --output NAME", file=str(path))
        return chosen
    for name in names:
        if name not in model.outputs:
            train = elaborate_file(path, model.dtype)
            why = (f"'{name}' is only an output in train mode (an export is the eval-mode graph)"
                   if name in train.outputs else f"the model has no output named '{name}'")
            raise NNError(f"--output {name}: {why}; its eval-mode outputs are: {', '.join(model.outputs)}",
                          file=str(path))
    return {name: n for name, n in model.outputs.items() if name in names}


def _read(given: Arrays | None, kind: str) -> dict[str, Any]:
    """Arrays by name, from a dict or an .npz file."""
    if given is None:
        return {}
    if isinstance(given, (str, Path)):
        from ..train.checkpoint import read_npz
        if not Path(given).is_file():
            raise NNError(f"--{kind} {given}: no such file")
        return read_npz(Path(given))
    return dict(given)


def _normalization(model: Model, arrays: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``mean/X`` and ``scale/X`` (the trainer's normalization.npz) as X -> (mean, scale),
    checked against X's declaration: one value per feature, or one for all."""
    out = {}
    for key in arrays:
        kind, _, name = key.partition("/")
        if kind not in ("mean", "scale") or not name:
            raise NNError(f"the normalization holds '{key}'; expected mean/NAME and scale/NAME, as the trainer writes")
        if name not in model.inputs or model.graph[model.inputs[name]].dtype != "float":
            raise NNError(f"the normalization is for '{name}', which is not a float input of the model")
        if f"mean/{name}" not in arrays or f"scale/{name}" not in arrays:
            raise NNError(f"the normalization of '{name}' needs both mean/{name} and scale/{name}")
        mean, scale = (np.asarray(arrays[f"{k}/{name}"], dtype=np.float64) for k in ("mean", "scale"))
        features = tuple(model.graph[model.inputs[name]].shape[1:])
        for array in (mean, scale):
            if array.shape not in ((), features):
                raise NNError(f"the normalization of '{name}' has shape {list(array.shape)}; "
                              f"'{name}' has features of shape {list(features)}")
        out[name] = (mean, scale)
    return out


def _checked(kind: str, arrays: Mapping[str, Any], table: dict[str, int], live: set[int],
             model: Model) -> dict[str, np.ndarray]:
    """The ``kind`` arrays (params or state) that the exported graph reads, checked against
    their declarations."""
    needed = {name: n for name, n in table.items() if n in live}
    missing = [name for name in needed if name not in arrays]
    if missing:
        raise NNError(f"the {kind} lack {', '.join(missing)}, which the exported graph reads; "
                      f"they hold: {', '.join(arrays) or 'nothing'}")
    out = {}
    for name, n in needed.items():
        array = np.asarray(arrays[name])
        want = model.graph[n].shape
        if array.dtype.kind not in "fiu":
            raise NNError(f"the {kind}: '{name}' holds {array.dtype}, not numbers")
        if array.shape != tuple(want):
            raise NNError(f"the {kind}: '{name}' has shape {list(array.shape)}, but the model declares {list(want)}")
        out[name] = array
    return out


def _model_proto(onnx: Any, builder: GraphBuilder, model: Model, path: Path, opset: int) -> Any:
    helper = onnx.helper
    G = model.graph
    outputs = []
    for name, n in builder.outputs.items():
        elem = builder.float_type if G[n].dtype == "float" else builder.int_type
        outputs.append(helper.make_tensor_value_info(name, elem, list(G[n].shape)))
    inputs = [builder.graph_inputs[n] for n in model.inputs.values() if n in builder.graph_inputs]
    graph = helper.make_graph(builder.ordered_nodes(), path.stem, inputs, outputs, builder.initializers,
                              doc_string=f"{path.name}, eval mode, exported by nncompile {__version__}")
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="nncompile", producer_version=__version__,
                              ir_version=helper.find_min_ir_version_for(opsets))
    helper.set_model_props(proto, {"source": path.name, "mode": "eval"})
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise NNError(f"internal error: the exported model fails the ONNX checker ({exc}); "
                      "this is a bug in nncompile's export, please report it with the .nn file",
                      file=str(path)) from None
    return proto
