"""The op registry: every op, declared once.

An :class:`OpDef` carries everything the pipeline needs to know about an op: its name in
the language, its operands and attributes, its shape/dtype rule, its numpy emitter, its
scalar form for elementwise fusion (derived from its numpy chain), and its gradient rule,
written over values (:mod:`.value`) as the formula it is: ``g * (1 - out * out)`` for tanh.
A composite (``silu``, ``hardswish``) is declared as a composition of other ops instead, and
the elaborator expands it. Adding an op means adding one entry in :mod:`.basic` (the core
ops) or in the family it belongs to, :mod:`.activations`, :mod:`.losses`, :mod:`.indexing` or :mod:`.compare`
(docs/adding-an-op.md); from each op's ``samples`` the test suite
(tests/test_ops.py) generates float64 finite-difference checks of its first and second
derivatives, fed leaves and intermediate values, optimised and not, dtype checks in float32
and float64, and a comparison of its C scalar form, compiled with gcc, with its numpy form.
"""
from . import basic, activations, losses, indexing, compare, conv  # noqa: F401 - declaring the ops fills REGISTRY
from .registry import REGISTRY, EmitContext, OpDef, Sample, composite, elementwise, literal, new_graph, op
from .value import Value, constant, sum_to

__all__ = ["REGISTRY", "EmitContext", "OpDef", "Sample", "Value", "composite", "constant", "elementwise", "literal",
           "new_graph", "op", "sum_to"]
