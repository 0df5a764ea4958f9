"""Compile-time constants: the dims, attributes, defaults and indices that must be known
before the module runs, evaluated with checks that no tensor could pass (1 / 0, 10 ** 400)."""
from __future__ import annotations

import math
from typing import Any

from .. import syntax
from ..errors import NNError
from ..limits import MAX_INT, MAX_RANK
from ..shapes import show
from .core import Context, Scope

NEEDS_CONSTANT = "a constant is needed here (a number, a const, or arithmetic on them)"


class Constants:
    """Evaluates and classifies static expressions in a scope."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def eval(self, expr: syntax.Expr, scope: Scope) -> Any:
        """Evaluate an expression that must be known at compile time (dims, attributes)."""
        match expr:
            case syntax.BinOp(op=op) if op != "matmul":
                chain = left_chain(expr)   # a + b + c + ... in a loop, however long
                value = self.eval(chain[0].left, scope)
                for binop in chain:
                    value = _arith(binop, value, self.eval(binop.right, scope))
                return value
            case syntax.Neg():
                negs, operand = neg_chain(expr)
                value = self.eval(operand, scope)
                if is_number(value):
                    return -value if negs % 2 else value
            case syntax.Number(value=value) | syntax.Bool(value=value):
                return value
            case syntax.Ref() if is_none(expr, scope):   # an attribute not given: axis=None
                return None
            case syntax.Ref(parts=[name]):
                if name in scope.consts:
                    return scope.consts[name]
                if name in scope.dims:
                    return scope.dims[name]
                if name in self.ctx.model.inputs or name in scope.values:
                    raise NNError(f"'{name}' is a tensor, but a constant is needed here", expr.loc)
                if name in self.ctx.symbolic_dims():   # a dim like N, known only at each call: arange(N)
                    return name
                raise self.ctx.unknown(name, expr.loc, scope, consts_only=True)
            case syntax.ListExpr(items=items):
                values = [self.eval(item, scope) for item in items]
                _check_rectangular(values, expr)
                return values
        raise NNError(NEEDS_CONSTANT, expr.loc)

    def attribute(self, expr: syntax.Expr, scope: Scope) -> Any:
        """An op's attribute: a constant, with lists as tuples (attributes are hashable)."""
        value = self.eval(expr, scope)
        if isinstance(value, list):
            return tuple(value)
        return value

    def number(self, expr: syntax.Expr, scope: Scope, what: str) -> float:
        value = self.eval(expr, scope)
        if not is_number(value):
            raise NNError(f"{what} must be a number, not {value!r}", expr.loc)
        return float(value)

    def index(self, expr: syntax.Expr, scope: Scope) -> int:
        value = self.eval(expr, scope)
        if isinstance(value, bool) or not isinstance(value, int):
            raise NNError(f"an index must be a whole number (or an int tensor), not {value!r}", expr.loc)
        return value

    def tensor_value(self, expr: syntax.Expr, scope: Scope, what: str) -> Any:
        """A constant that becomes a tensor: a number or a (rectangular) list of numbers."""
        value = self.eval(expr, scope)
        pending = [value]
        while pending:
            item = pending.pop()
            if isinstance(item, list):
                pending.extend(item)
            elif isinstance(item, str):
                raise NNError(f"{what} must be made of numbers, but {item} is a symbolic dim, "
                              "known only when the module is called", expr.loc)
            elif not isinstance(item, (int, float)):
                raise NNError(f"{what} must be made of numbers, not {item!r}", expr.loc)
        return value

    def is_static(self, expr: syntax.Expr, scope: Scope) -> bool:
        """Whether a subscript is known when compiling (a number or a const), not a tensor."""
        match expr:
            case syntax.Number():
                return True
            case syntax.Ref(parts=[name]):
                return name not in scope.values and \
                    (name in scope.consts or isinstance(scope.dims.get(name), int))
            case syntax.Neg():
                return self.is_static(neg_chain(expr)[1], scope)
            case syntax.BinOp():
                chain = left_chain(expr)
                return all(b.op != "matmul" for b in chain) and self.is_static(chain[0].left, scope) and \
                    all(self.is_static(b.right, scope) for b in chain)
        return False

    def is_arithmetic(self, expr: syntax.Expr, scope: Scope) -> bool:
        """Whether an expression is arithmetic on numbers and numeric consts alone."""
        pending = [expr]
        while pending:
            match pending.pop():
                case syntax.BinOp(op=op, left=left, right=right) if op != "matmul":
                    pending += [left, right]
                case syntax.Neg(operand=operand):
                    pending.append(operand)
                case syntax.Ref(name=name):
                    if not is_number(scope.consts.get(name) if name not in scope.values else None):
                        return False
                case syntax.Number():
                    pass
                case _:
                    return False
        return True

    def is_tensor(self, expr: syntax.Expr, scope: Scope) -> bool:
        """Whether an expression names or computes a tensor (so it cannot be an attribute)."""
        pending = [expr]
        while pending:
            match pending.pop():
                case syntax.Call() | syntax.Repeat() | syntax.Index():
                    return True
                case syntax.Ref(name=name) if name in scope.values:
                    return True
                case syntax.BinOp(left=left, right=right):
                    pending += [left, right]
                case syntax.Neg(operand=operand):
                    pending.append(operand)
        return False


def is_number(value: Any) -> bool:
    """An int or a float, and not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def left_chain(expr: syntax.BinOp) -> list[syntax.BinOp]:
    """``a + b - c`` as [a + b, (a + b) - c]: the operators of a left-nested chain, innermost first."""
    chain = [expr]
    while isinstance(chain[-1].left, syntax.BinOp):
        chain.append(chain[-1].left)
    return chain[::-1]


def neg_chain(expr: syntax.Neg) -> tuple[int, syntax.Expr]:
    """``- - - x`` as (3, x)."""
    count = 0
    while isinstance(expr, syntax.Neg):
        count, expr = count + 1, expr.operand
    return count, expr


def show_expr(expr: syntax.Expr) -> str:
    """A dim of a shape pattern as the user wrote it: a name or a number."""
    match expr:
        case syntax.Ref(name=name):
            return name
        case syntax.Number(value=value):
            return str(value)
    return "?"


def _arith(binop: syntax.BinOp, left: Any, right: Any) -> int | float:
    """One step of compile-time arithmetic, refusing results that no tensor could use."""
    if not (is_number(left) and is_number(right)) or binop.op == "matmul":
        raise NNError(NEEDS_CONSTANT, binop.loc)
    op = binop.op
    if op == "pow" and isinstance(left, int) and isinstance(right, int) and right > 0 and \
            (abs(left).bit_length() - 1) * right > MAX_INT.bit_length():   # too big before computing it
        real = (abs(left).bit_length() - 1) * right < 1000   # would 2.0 ** 1000 still be finite?
        hint = f"; for a real number write {left}.0 ** {right}" if real else ""
        raise NNError(f"cannot evaluate this constant: {left} ** {right} is too large, whole numbers must fit in "
                      f"int64 (at most {MAX_INT}){hint}", binop.loc)
    try:
        if op == "div" and isinstance(left, int) and isinstance(right, int) and left % right == 0:
            value = left // right
        else:
            value = {"add": lambda: left + right, "sub": lambda: left - right, "mul": lambda: left * right,
                     "div": lambda: left / right, "pow": lambda: left ** right}[op]()
    except ZeroDivisionError:
        raise NNError("cannot evaluate this constant: division by zero", binop.loc) from None
    except OverflowError:
        value = math.inf
    if isinstance(value, complex):
        raise NNError(f"cannot evaluate this constant: ({left}) ** {right} is a complex number", binop.loc)
    if isinstance(value, int) and abs(value) > MAX_INT:
        raise NNError(f"cannot evaluate this constant: the result is too large, whole numbers must fit "
                      f"in int64 (at most {MAX_INT}); write the numbers as reals (2.0, 1e20) for a real result",
                      binop.loc)
    if isinstance(value, float) and not math.isfinite(value):
        raise NNError("cannot evaluate this constant: the result overflows float64 (the largest is about "
                      "1.8e308)", binop.loc)
    return value


def _list_shape(value: Any) -> tuple[int, ...]:
    """The shape of a nested list whose items were already checked to be rectangular."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _check_rectangular(items: list[Any], expr: syntax.ListExpr) -> None:
    """A list literal is a tensor: every item has the same shape, and it has at most MAX_RANK axes."""
    shapes = [_list_shape(item) for item in items]
    for item, shape in zip(expr.items, shapes):
        if shape != shapes[0]:
            raise NNError(f"the items of a list must all have the same shape, but this one has shape "
                          f"{show(shape)} and the first {show(shapes[0])}", item.loc)
    if shapes and len(shapes[0]) + 1 > MAX_RANK:
        raise NNError(f"a tensor can have at most {MAX_RANK} axes, but this list is nested "
                      f"{len(shapes[0]) + 1} deep", expr.loc)


def is_none(expr: syntax.Expr, scope: Scope) -> bool:
    """Whether ``expr`` is numpy's ``None``: the predefined name, unless the file defines its own."""
    return isinstance(expr, syntax.Ref) and expr.parts == ("None",) and \
        not any("None" in names for names in (scope.values, scope.consts, scope.dims))
