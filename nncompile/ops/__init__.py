"""The op registry: every primitive op, declared once.

An :class:`OpDef` carries everything the pipeline needs to know about an op: its name in
the language, its operands and attributes, its shape/dtype rule, its numpy emitter, its
scalar form for elementwise fusion, and its gradient rule (a VJP that builds graph nodes
from other registry ops). Adding an op means adding one ``op(...)`` call in :mod:`.basic`
or :mod:`.toolkit`; the test suite generates a float64 finite-difference gradient check
from each op's ``samples``.
"""
from . import basic, toolkit  # noqa: F401 - declaring the ops fills REGISTRY
from .registry import REGISTRY, EmitContext, OpDef, Sample, broadcast, constant, elementwise, literal, op, sum_to

__all__ = ["REGISTRY", "EmitContext", "OpDef", "Sample", "broadcast", "constant", "elementwise", "literal", "op", "sum_to"]
