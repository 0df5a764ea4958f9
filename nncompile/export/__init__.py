"""ONNX export: the eval-mode graph of a .nn file as an ONNX model that ONNX Runtime runs.

Each op's ONNX form is declared in its registry entry (``OpDef.onnx``, see
nncompile/ops/onnx_helpers.py); this package chooses the outputs (the predictions of :mod:`nncompile.predictions`, as
``predict()`` computes them),
lowers the graph (:mod:`.builder`) and checks and writes the model (:mod:`.model`).
onnx is optional: it is imported only when a model is exported.
"""
from .model import DEFAULT_OPSET, Export, export_model, export_onnx, require_onnx

__all__ = ["DEFAULT_OPSET", "Export", "export_model", "export_onnx", "require_onnx"]
