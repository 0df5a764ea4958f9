"""The abstract syntax tree of a .nn file. Every node keeps the location it came from."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Loc


@dataclass(frozen=True)
class Node:
    loc: Loc


# ---- expressions ----------------------------------------------------------------------

@dataclass(frozen=True)
class Number(Node):
    value: int | float


@dataclass(frozen=True)
class Bool(Node):
    value: bool


@dataclass(frozen=True)
class Ref(Node):
    """A name, possibly scoped: ``x``, ``fc1.W``, ``h.3.b``."""

    parts: tuple[str, ...]

    @property
    def name(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class ListExpr(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # the op the operator is: add sub mul div matmul pow
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Compare(Node):
    """``a < b``: the mask 1 where it holds, else 0 (no gradient flows through it)."""

    cmp: str  # < > <= >= == !=
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Neg(Node):
    operand: Expr


@dataclass(frozen=True)
class Transposed(Node):
    """``x.T``: the axes reversed, as numpy's ``.T``."""

    operand: Expr


@dataclass(frozen=True)
class Call(Node):
    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[tuple[str, Expr, Loc], ...]
    scope: str | None = None  # from ``call(...) as name``


@dataclass(frozen=True)
class Repeat(Node):
    count: Expr
    call: Call


@dataclass(frozen=True)
class Slice(Node):
    start: Expr | None
    stop: Expr | None


@dataclass(frozen=True)
class EllipsisIndex(Node):
    """``...`` among subscripts: as many ``:`` as the axes not written."""


@dataclass(frozen=True)
class Index(Node):
    target: Expr
    subscripts: tuple[Expr | Slice | EllipsisIndex, ...]


Expr = Number | Bool | Ref | ListExpr | BinOp | Compare | Neg | Transposed | Call | Repeat | Index


# ---- types ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Type(Node):
    """``float[N, D]``, ``int[N]``, ``float`` (a scalar) or ``[B, K]`` (dtype left open)."""

    dtype: str | None
    shape: tuple[Expr, ...] | None


# ---- statements -----------------------------------------------------------------------

@dataclass(frozen=True)
class Const(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Input(Node):
    name: str
    type: Type | None
    default: Expr | None


@dataclass(frozen=True)
class Param(Node):
    name: str
    type: Type | None
    init: Expr


@dataclass(frozen=True)
class State(Node):
    """Values a model carries between calls without training them (batch norm's running
    statistics): declared like a param, changed only by ``update`` in train mode."""

    name: str
    type: Type | None
    init: Expr


@dataclass(frozen=True)
class Update(Node):
    target: Ref
    value: Expr


@dataclass(frozen=True)
class Assign(Node):
    name: str
    value: Expr


@dataclass(frozen=True)
class Output(Node):
    names: tuple[tuple[str, Loc], ...]


@dataclass(frozen=True)
class Minimize(Node):
    name: str


@dataclass(frozen=True)
class Return(Node):
    value: Expr


@dataclass(frozen=True)
class LayerArg(Node):
    name: str
    type: Type | None
    default: Expr | None

    @property
    def is_attribute(self) -> bool:
        """``out: int`` and ``std: float = 0.1`` are compile-time attributes, not tensors."""
        return self.type is not None and self.type.dtype is not None and self.type.shape is None


@dataclass(frozen=True)
class Layer(Node):
    name: str
    args: tuple[LayerArg, ...]
    returns: tuple[Expr, ...] | None  # the shape after ``->``: ``[B, out]``
    body: tuple[Stmt, ...]


@dataclass(frozen=True)
class Import(Node):
    target: str
    is_path: bool


@dataclass(frozen=True)
class DType(Node):
    dtype: str


@dataclass(frozen=True)
class Phase(Node):
    phase: str  # "train" or "eval"
    body: tuple[Stmt, ...]


Stmt = Const | Input | Param | State | Update | Assign | Output | Minimize | Return | Layer | Import | DType | Phase


@dataclass(frozen=True)
class Module:
    file: str
    body: tuple[Stmt, ...] = field(default_factory=tuple)
