"""Lark front end: .nn text -> :mod:`nncompile.syntax` tree, with a location on every node."""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Iterator

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import syntax as S
from .errors import Loc, NNError, Sources

_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB"}
_CLOSE = {"RPAR", "RSQB"}

# Readable names for the terminals Lark reports in "expected ..." messages.
_TERMINAL_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a quoted path", "_NL": "end of line",
    "SEMICOLON": "';'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'",
    "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='",
    "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "AT": "'@'", "DOT": "'.'",
    "__ANON_0": "'**'", "$END": "end of file",
}


def grammar_text() -> str:
    """The grammar ships in the wheel as ``nncompile/grammar/nn.lark``; in a checkout it is ``grammar/nn.lark``."""
    try:
        shipped = resources.files("nncompile.grammar").joinpath("nn.lark")
        if shipped.is_file():
            return shipped.read_text(encoding="utf-8")
    except ModuleNotFoundError:
        pass
    return (Path(__file__).resolve().parent.parent / "grammar" / "nn.lark").read_text(encoding="utf-8")


class BracketPostLex:
    """Drops newlines inside ( ) and [ ], so expressions may span lines there."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for token in stream:
            if token.type in _OPEN:
                depth += 1
            elif token.type in _CLOSE:
                depth = max(0, depth - 1)
            elif token.type == "_NL" and depth:
                continue
            yield token


@functools.cache
def _lark() -> Lark:
    return Lark(grammar_text(), parser="lalr", postlex=BracketPostLex(), propagate_positions=True,
                maybe_placeholders=True)


def parse(text: str, file: str = "<string>") -> S.Module:
    """Parse one file. Raises :class:`NNError` pointing at the first syntax error."""
    Sources.add(file, text)
    if not text.strip():
        raise NNError("empty file: a model needs at least one statement", Loc(file, 1, 1))
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    try:
        body = _ToAst(file).transform(tree)
    except VisitError as exc:
        raise exc.orig_exc from None
    return S.Module(file, tuple(body))


def parse_file(path: str | Path) -> S.Module:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NNError(f"no such file: {path}", file=str(path)) from None
    except IsADirectoryError:
        raise NNError(f"{path} is a directory, not a .nn file", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise NNError(f"{path} is not UTF-8 text ({exc.reason})", file=str(path)) from None
    except OSError as exc:
        raise NNError(f"cannot read {path}: {exc.strerror}", file=str(path)) from None
    return parse(text, str(path))


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> NNError:
    lines = text.splitlines() or [""]
    if isinstance(exc, UnexpectedEOF) or getattr(exc, "line", -1) in (-1, None):
        unclosed = _unclosed_bracket(text)
        line = len(lines)
        loc = Loc(file, line, len(lines[-1]) + 1)
        if unclosed:
            char, (l, c) = unclosed
            return NNError(f"'{char}' opened here was never closed", Loc(file, l, c))
        return NNError("unexpected end of file", loc)
    loc = Loc(file, exc.line, exc.column)
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        return NNError(f"unexpected character {char!r}", loc)
    assert isinstance(exc, UnexpectedToken)
    token = exc.token
    if token.type == "$END":
        unclosed = _unclosed_bracket(text)
        if unclosed:
            char, (l, c) = unclosed
            return NNError(f"'{char}' opened here was never closed", Loc(file, l, c))
        return NNError("unexpected end of file", Loc(file, len(lines), len(lines[-1]) + 1))
    got = "end of line" if token.type == "_NL" else repr(str(token))
    loc = Loc(file, token.line, token.column, token.column + max(1, len(str(token))) if token.type != "_NL" else None)
    expected = sorted({_TERMINAL_NAMES.get(t, repr(t.lower()) if t.isupper() else t) for t in exc.expected})
    hint = ""
    if len(expected) <= 6:
        hint = f"; expected {', '.join(expected[:-1]) + ' or ' + expected[-1] if len(expected) > 1 else expected[0]}"
    return NNError(f"unexpected {got}{hint}", loc)


def _unclosed_bracket(text: str) -> tuple[str, tuple[int, int]] | None:
    """Find the innermost bracket still open at the end of the file, for a useful EOF message."""
    stack: list[tuple[str, tuple[int, int]]] = []
    line, col = 1, 1
    in_comment = False
    for ch in text:
        if ch == "\n":
            line, col, in_comment = line + 1, 1, False
            continue
        if not in_comment:
            if ch == "#":
                in_comment = True
            elif ch in "([{":
                stack.append((ch, (line, col)))
            elif ch in ")]}" and stack:
                stack.pop()
        col += 1
    return stack[-1] if stack else None


def _loc(file: str, meta) -> Loc:
    return Loc(file, meta.line, meta.column, meta.end_column if meta.end_line == meta.line else None)


def _tok_loc(file: str, token: Token) -> Loc:
    return Loc(file, token.line, token.column, token.end_column)


@v_args(meta=True)
class _ToAst(Transformer):
    """Bottom-up conversion of Lark's parse tree into syntax dataclasses."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def L(self, meta) -> Loc:  # noqa: N802 - short on purpose, used everywhere below
        return _loc(self.file, meta)

    # statements
    def start(self, meta, items):
        return _flatten(items)

    def const_stmt(self, meta, items):
        return items

    def const_item(self, meta, items):
        return S.Const(self.L(meta), str(items[0]), items[1])

    def input_stmt(self, meta, items):
        return S.Input(self.L(meta), str(items[0]), items[1], items[2])

    def param_stmt(self, meta, items):
        return S.Param(self.L(meta), str(items[0]), items[1], items[2])

    def assign(self, meta, items):
        return S.Assign(self.L(meta), str(items[0]), items[1])

    def output_stmt(self, meta, items):
        return S.Output(self.L(meta), tuple((str(t), _tok_loc(self.file, t)) for t in items))

    def minimize_stmt(self, meta, items):
        return S.Minimize(self.L(meta), str(items[0]))

    def return_stmt(self, meta, items):
        return S.Return(self.L(meta), items[0])

    def import_stmt(self, meta, items):
        token = items[0]
        if token.type == "STRING":
            return S.Import(self.L(meta), str(token)[1:-1], True)
        return S.Import(self.L(meta), str(token), False)

    def dtype_stmt(self, meta, items):
        return S.DType(self.L(meta), str(items[0].children[0]))

    def phase_block(self, meta, items):
        return S.Phase(self.L(meta), str(items[0].children[0]), tuple(_flatten(items[1:])))

    def layer_def(self, meta, items):
        name, args, returns, *body = items
        return S.Layer(self.L(meta), str(name), tuple(args or ()), returns, tuple(_flatten(body)))

    def layer_args(self, meta, items):
        return [a for a in items if a is not None]

    def layer_arg(self, meta, items):
        return S.LayerArg(self.L(meta), str(items[0]), items[1], items[2])

    # types
    def typed(self, meta, items):
        return S.Type(self.L(meta), str(items[0].children[0]), items[1])

    def shaped(self, meta, items):
        return S.Type(self.L(meta), None, items[0])

    def shape(self, meta, items):
        return tuple(i for i in items if i is not None)

    # expressions
    def _binop(self, op: str, meta, items) -> S.BinOp:
        return S.BinOp(self.L(meta), op, items[0], items[1])

    def add(self, meta, items):
        return self._binop("add", meta, items)

    def sub(self, meta, items):
        return self._binop("sub", meta, items)

    def mul(self, meta, items):
        return self._binop("mul", meta, items)

    def div(self, meta, items):
        return self._binop("div", meta, items)

    def matmul(self, meta, items):
        return self._binop("matmul", meta, items)

    def pow(self, meta, items):
        return self._binop("pow", meta, items)

    def neg(self, meta, items):
        return S.Neg(self.L(meta), items[0])

    def unary(self, meta, items):  # unary plus
        return items[0]

    def number(self, meta, items):
        text = str(items[0])
        value = int(text) if text.isdigit() else float(text)
        return S.Number(self.L(meta), value)

    def true(self, meta, items):
        return S.Bool(self.L(meta), True)

    def false(self, meta, items):
        return S.Bool(self.L(meta), False)

    def ref(self, meta, items):
        return S.Ref(self.L(meta), tuple(str(t) for t in items))

    def list(self, meta, items):
        return S.ListExpr(self.L(meta), tuple(i for i in items if i is not None))

    def call(self, meta, items):
        name, *args = items
        positional, keywords = [], []
        for arg in args:
            if arg is None:
                continue
            if isinstance(arg, tuple):
                keywords.append(arg)
            else:
                positional.append(arg)
        return S.Call(self.L(meta), str(name), tuple(positional), tuple(keywords))

    def kwarg(self, meta, items):
        return (str(items[0]), items[1], _tok_loc(self.file, items[0]))

    def scoped(self, meta, items):
        call, name = items
        return S.Call(self.L(meta), call.func, call.args, call.kwargs, str(name))

    def repeat(self, meta, items):
        return S.Repeat(self.L(meta), items[0], items[1])

    def index(self, meta, items):
        return S.Index(self.L(meta), items[0], tuple(i for i in items[1:] if i is not None))

    def slice(self, meta, items):
        return S.Slice(self.L(meta), items[0], items[1])


def _flatten(items) -> list:
    out = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, list):
            out.extend(_flatten(item))
        else:
            out.append(item)
    return out
