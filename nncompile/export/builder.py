"""The ONNX graph of an eval-mode nncompile graph, built by the ops' own lowerings.

Nodes are lowered from the outputs back (reverse topological order): a node is lowered only
once some lowering has read its tensor, so what a lowering folds into one node of its own
(``x @ W + b`` as Gemm, batch norm as BatchNormalization) is never written. Each tensor's
name is reserved when it is first read and the node that makes it is renamed to it, so the
ONNX graph carries the user's names (``scores``, ``fc1.W``); each node is named after the
layer it sits in (``fc1/Gemm``), which is how Netron shows layers, and its doc string quotes
the .nn line it came from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import NNError, Sources
from ..ir import Graph, Model
from ..ops import REGISTRY
from ..ops.onnx_helpers import OnnxContext


class Operands(Sequence[str]):
    """A node's operands as tensor names, each reserved (and so lowered) only when read."""

    def __init__(self, builder: "GraphBuilder", ids: tuple[int, ...]):
        self.builder = builder
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Operands(self.builder, self.ids[i])
        return self.builder.value(self.ids[i])


class GraphBuilder(OnnxContext):
    """Lowers the part of ``model.graph`` that ``outputs`` need into ONNX nodes and initializers."""

    def __init__(self, onnx: Any, model: Model, outputs: dict[str, int], opset: int, dtype: str,
                 params: dict[str, np.ndarray], state: dict[str, np.ndarray],
                 normalization: dict[str, tuple[np.ndarray, np.ndarray]] | None = None):
        self.onnx = onnx
        self.model = model
        self.graph: Graph = model.graph
        self.outputs = outputs
        self.opset = opset
        self.dtype = np.dtype(dtype)
        self.float_type = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.int_type = onnx.TensorProto.INT64
        self.params, self.state = params, state
        self.normalization = normalization or {}   # input -> (mean, scale): the model takes raw inputs
        self.names: dict[int, str] = {}            # graph node -> the tensor holding it
        self.taken: set[str] = set()
        self.node_names: set[str] = set()
        self.groups: dict[int, list[Any]] = {}     # graph node -> the ONNX nodes that compute it
        self.prologue: list[Any] = []              # symbolic sizes, read once from the inputs
        self.initializers: list[Any] = []
        self.graph_inputs: dict[int, Any] = {}
        self.dims: dict[str, str] = {}
        self.current = -1
        self._base = "dims"
        self._group: list[Any] = self.prologue
        self._outputs_of = {n: name for name, n in reversed(list(outputs.items()))}
        self._results = set(outputs.values())

    # -- what lowerings ask (OnnxContext)

    def node(self, op_type: str, inputs: Sequence[str], *, outputs: int = 1, **attributes: Any) -> Any:
        names = [self._fresh(f"{self._base}/{op_type}") for _ in range(outputs)]
        node = self.onnx.helper.make_node(op_type, list(inputs), names, name=self._node_name(op_type), **attributes)
        doc = self._where(self.current)
        if doc:
            node.doc_string = doc
        self._group.append(node)
        return names[0] if outputs == 1 else names

    def constant(self, value: Any, dtype: str = "float") -> str:
        array = np.asarray(value, dtype=self.dtype if dtype == "float" else np.int64)
        return self._initializer(self._fresh(f"{self._base}/const"), array)

    def dim(self, symbol: str) -> str:
        """Read once, from the first input that has it, into the prologue."""
        if symbol not in self.dims:
            for n in self.model.inputs.values():
                if symbol in self.graph[n].shape:
                    axis = self.graph[n].shape.index(symbol)
                    x = self.value(n)
                    saved = (self._group, self._base, self.current)
                    self._group, self._base, self.current = self.prologue, symbol, -1
                    size = self.node("Shape", [x], start=axis, end=axis + 1)
                    self.dims[symbol] = self.node("Squeeze", [size, self.ints([0])])
                    self._group, self._base, self.current = saved
                    break
            else:  # pragma: no cover - the checker binds every symbolic dim to an input
                raise NNError(f"the size {symbol} is not the dim of any input", file=self.model.file)
        return self.dims[symbol]

    def value(self, n: int) -> str:
        if n not in self.names:
            node = self.graph[n]
            preferred = self._outputs_of.get(n) or node.name or (".".join(node.scope + (node.op,)))
            self.names[n] = self._fresh(preferred) if node.op not in ("input", "param", "state") else node.name
            self.taken.add(self.names[n])
            self._leaf(n)
            if node.op == "input" and node.name in self.normalization:
                self.names[n] = self._normalized(node.name)
        return self.names[n]

    def _normalized(self, name: str) -> str:
        """(x - mean) / scale, the training split's statistics, as the trainer fed the model."""
        mean, scale = self.normalization[name]
        saved = (self._group, self._base, self.current)
        self._group, self._base, self.current = self.prologue, f"{name}.normalized", -1
        centred = self.node("Sub", [name, self._initializer(f"{name}.mean", mean.astype(self.dtype))])
        result = self.node("Div", [centred, self._initializer(f"{name}.scale", scale.astype(self.dtype))])
        self._group, self._base, self.current = saved
        return result

    def sole_use(self, n: int) -> bool:
        return n not in self._results and len(self.graph.users(n)) == 1

    # -- the walk

    def build(self) -> None:
        for name in self.outputs.values():
            self.value(name)
        for n in reversed(self.graph.topological()):
            if n in self.names and n not in self.groups and not self.graph[n].is_leaf:
                self._lower(n)

    def ordered_nodes(self) -> list[Any]:
        """The prologue, then each node's group in topological order, then the outputs' Identities."""
        nodes = list(self.prologue)
        for n in self.graph.topological():
            nodes += self.groups.get(n, [])
        for name, n in self.outputs.items():
            if self.names[n] != name:   # an output that is a leaf, or a second name for one value
                nodes.append(self.onnx.helper.make_node("Identity", [self.names[n]], [name], name=f"{name}/Identity"))
        return nodes

    def _lower(self, n: int) -> None:
        node = self.graph[n]
        opdef = REGISTRY[node.op]
        if opdef.onnx is None:
            # A gradient's node is located at the value it is the gradient of: say so, or the
            # line (h = X @ W) would seem to need the op (the scatter of h[i]'s gradient).
            part = ""
            if node.grad_of is not None:   # (the forward value itself may be gone: dead in an export of grad())
                of = self.graph[node.grad_of].name if node.grad_of in self.graph.nx else None
                part = f", which the gradient of {repr(of) if of else 'the value made here'} needs,"
            raise NNError(f"{node.op}{part} cannot be exported to ONNX: it has no ONNX lowering in the op registry"
                          f"{self._why_not(node.op)}", node.loc, file=self.model.file)
        self.current, self._base, self._group = n, self.names[n], []
        result = opdef.onnx(self, Operands(self, node.args), dict(node.attrs))
        target = self.names[n]
        made = {out for made in self._group for out in made.output}
        if result in made:   # the lowering's last tensor takes the reserved name
            for made_node in self._group:
                made_node.output[:] = [target if o == result else o for o in made_node.output]
                made_node.input[:] = [target if i == result else i for i in made_node.input]
        else:                # it returned a tensor that exists already (x[:, :] is x)
            self.node("Identity", [result])
            self._group[-1].output[:] = [target]
        self.groups[n] = self._group
        self._group, self._base, self.current = self.prologue, "dims", -1

    @staticmethod
    def _why_not(op: str) -> str:
        return "; export the eval-mode graph of a model without it, or add an 'onnx=' lowering to its entry"

    def _leaf(self, n: int) -> None:
        node = self.graph[n]
        helper = self.onnx.helper
        if node.op == "input":
            elem = self.float_type if node.dtype == "float" else self.int_type
            # An input with a value in the file is an input all the same: the value is the
            # file's example, and ONNX Runtime would not fold an overridable initializer anyway.
            self.graph_inputs[n] = helper.make_tensor_value_info(node.name, elem, list(node.shape))
        elif node.op == "param":
            self._initializer(node.name, self._array(node, self.params[node.name]))
        elif node.op == "state":
            self._initializer(node.name, self._array(node, self.state[node.name]))
        elif node.op == "const":
            value = np.broadcast_to(np.asarray(node.attr("value"), dtype=np.float64), node.shape)
            self._initializer(self.names[n], self._array(node, value))

    def _array(self, node, value: Any) -> np.ndarray:
        return np.array(value, dtype=self.dtype if node.dtype == "float" else np.int64, order="C")

    def _initializer(self, name: str, array: np.ndarray) -> str:
        self.taken.add(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def _fresh(self, base: str) -> str:
        return _unique(base, self.taken)

    def _node_name(self, op_type: str) -> str:
        """``fc1/bn/BatchNormalization``: the layer path, so the graph reads by layer; outside
        any layer, the value's own name (``probs/Softmax``)."""
        scope = self.graph[self.current].scope if self.current >= 0 else ()
        base = "/".join((*scope, op_type)) if scope else f"{self._base}/{op_type}"
        return _unique(base, self.node_names)

    def _where(self, n: int) -> str | None:
        loc = self.graph[n].loc if n >= 0 else None
        if loc is None:
            return None
        where = f"{Path(loc.file).name}:{loc.line}:{loc.col}"   # no folder: the same model from any checkout
        text = Sources.line(loc.file, loc.line)
        return f"{where}: {text.strip()}" if text else where


def _unique(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... the first not in ``taken``, which it joins."""
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name
