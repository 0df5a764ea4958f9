"""The intermediate representation: a networkx DAG of primitive ops.

Every node is a :class:`Node`; operand order lives in ``Node.args`` and the DiGraph edges
mirror it so networkx can answer reachability and ordering questions. Shapes and dtypes are
inferred by the op registry as each node is added, so a shape error is reported at the
user's text the moment the offending expression is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

import networkx as nx

from .errors import Loc
from .shapes import Shape

Attrs = tuple[tuple[str, Any], ...]
Infer = Callable[[str, list["Node"], dict[str, Any]], tuple[Shape, str]]   # (op, operands, attrs) -> shape, dtype
ARGUMENTS = frozenset({"input", "param", "state"})   # the leaves a caller passes in: never merged or removed
LEAVES = ARGUMENTS | {"const"}


@dataclass(frozen=True)
class Node:
    op: str
    args: tuple[int, ...]
    attrs: Attrs
    shape: Shape
    dtype: str                        # "float", "int" or "bool"; made concrete at emission
    name: str | None = None           # the user's name, scoped: "fc1.W"
    loc: Loc | None = None            # where the user wrote it
    scope: tuple[str, ...] = ()       # enclosing layer instances, outermost first
    grad_of: int | None = None        # set on adjoints: the forward node this is d(loss)/d(.) of

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def is_leaf(self) -> bool:
        return self.op in LEAVES


def freeze(attrs: dict[str, Any]) -> Attrs:
    """Attributes as a sorted, hashable tuple (lists become tuples)."""
    def hashable(v):
        if isinstance(v, list):
            return tuple(hashable(x) for x in v)
        return v
    return tuple(sorted((k, hashable(v)) for k, v in attrs.items()))


class Graph:
    """A DAG of :class:`Node`, numbered in creation order (the tie-breaker for scheduling)."""

    def __init__(self, infer: Infer) -> None:
        self.infer = infer                  # the op registry's shape rules: the IR itself knows no op
        self.nx = nx.DiGraph()
        self._nodes: dict[int, Node] = {}   # the same nodes, for O(1) lookups on hot paths
        self._next = 0

    def __getitem__(self, n: int) -> Node:
        return self._nodes[n]

    def __contains__(self, n: int) -> bool:
        return n in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def nodes(self) -> Iterable[int]:
        return self._nodes.keys()

    def add(self, op: str, args: Iterable[int] = (), attrs: dict[str, Any] | Attrs = (), **meta: Any) -> int:
        """Add a node, inferring its shape and dtype with the op's rule."""
        args = tuple(args)
        attrs = attrs if isinstance(attrs, tuple) else freeze(attrs)
        shape, dtype = self.infer(op, [self[a] for a in args], dict(attrs))
        return self.insert(Node(op, args, attrs, tuple(shape), dtype, **meta))

    def insert(self, node: Node) -> int:
        n = self._next
        self._next += 1
        self._nodes[n] = node
        self.nx.add_node(n, node=node)
        for a in node.args:
            self.nx.add_edge(a, n)
        return n

    def set(self, n: int, **changes: Any) -> None:
        """Replace fields of a node (its args too, rewiring the edges)."""
        old = self[n]
        new = replace(old, **changes)
        if new.args != old.args:
            for a in set(old.args) - set(new.args):
                self.nx.remove_edge(a, n)
            for a in new.args:
                self.nx.add_edge(a, n)
        self.nx.nodes[n]["node"] = new
        self._nodes[n] = new

    def copy(self) -> Graph:
        """An independent copy (the nodes themselves are immutable, so they are shared)."""
        other = Graph(self.infer)
        other.nx = self.nx.copy()
        other._nodes = dict(self._nodes)
        other._next = self._next
        return other

    def users(self, n: int) -> list[int]:
        return sorted(self.nx.successors(n))

    def remove(self, n: int) -> None:
        self.nx.remove_node(n)
        del self._nodes[n]

    def replace_uses(self, old: int, new: int) -> None:
        """Point every user of ``old`` at ``new``."""
        for user in self.users(old):
            node = self[user]
            self.set(user, args=tuple(new if a == old else a for a in node.args))

    def topological(self, among: Iterable[int] | None = None) -> list[int]:
        """A deterministic topological order (a depth-first post-order, roots in creation
        order), in linear time: passes call this on every compile of every model."""
        nodes = self._nodes
        keep = nodes if among is None else set(among)
        order: list[int] = []
        done: set[int] = set()
        for root in sorted(keep):
            if root in done:
                continue
            stack = [(root, False)]
            while stack:
                n, expanded = stack.pop()
                if expanded:
                    if n not in done:
                        done.add(n)
                        order.append(n)
                    continue
                if n in done:
                    continue
                stack.append((n, True))
                stack.extend((a, False) for a in reversed(nodes[n].args) if a in keep and a not in done)
        return order


@dataclass
class Model:
    """An elaborated .nn file: the graph plus the names the outside world sees."""

    graph: Graph
    file: str
    inputs: dict[str, int] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, int] = field(default_factory=dict)
    loss: int | None = None
    dtype: str = "float32"
    defaults: dict[str, Any] = field(default_factory=dict)      # input name -> default value
    int_bounds: dict[str, int] = field(default_factory=dict)    # int input -> exclusive upper bound
    dim_bounds: dict[str, tuple[str, ...]] = field(default_factory=dict)  # int input -> symbolic dims it lies below
    min_dims: dict[str, int] = field(default_factory=dict)      # symbolic dim -> least size (fixed indices into it)
    layers: dict[tuple[str, ...], str] = field(default_factory=dict)  # scope -> layer type name
    param_inits: dict[str, Any] = field(default_factory=dict)          # param or state name -> ParamInit
    state: dict[str, int] = field(default_factory=dict)       # carried between calls, not trained
    updates: dict[str, int] = field(default_factory=dict)     # state name -> its new value (train mode)
    mode: str = "train"
    mode_dependent: bool = False   # has train/eval blocks or mode-dependent ops: the modes differ
    dropout_count: int = 0
    repeats: dict[tuple[str, ...], Loc] = field(default_factory=dict)   # each `repeat`'s scope and base name -> where
    gaps: dict[tuple[str, ...], tuple[int, int]] = field(default_factory=dict)   # a short compile's (stretch.py):
    # repeat -> (instances elaborated before its gap, instances left out there)

    @property
    def target(self) -> int | None:
        """What value_and_grad differentiates: the minimized loss, or the single scalar output."""
        if self.loss is not None:
            return self.loss
        scalars = [n for n in self.outputs.values() if self.graph[n].shape == () and self.graph[n].dtype == "float"]
        return scalars[0] if len(self.outputs) == 1 and scalars else None
