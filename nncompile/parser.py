"""Lark front end: .nn text -> :mod:`nncompile.syntax` tree, with a location on every node."""
from __future__ import annotations

import dataclasses
import functools
import io
import math
import re
from importlib import resources
from pathlib import Path
from typing import Iterator

from lark import Lark, Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import syntax
from .errors import Loc, NNError, Sources
from .limits import MAX_INT, MAX_NESTING, MAX_SOURCE

_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB"}
_CLOSE = {"RPAR", "RSQB"}


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
    options = dict(parser="lalr", postlex=BracketPostLex(), propagate_positions=True, maybe_placeholders=True)
    try:
        # Lark keeps the LALR tables in the temp directory, keyed by the grammar's hash: every
        # command after the first starts in milliseconds instead of a quarter of a second.
        return Lark(grammar_text(), cache=True, **options)
    except OSError:  # no writable temp directory: build the tables each time
        return Lark(grammar_text(), **options)


def parse(text: str, file: str = "<string>") -> syntax.Module:
    """Parse one file. Raises :class:`NNError` pointing at the first syntax error."""
    Sources.add(file, text)
    if not text.strip():
        raise NNError("empty file: a model needs at least one statement", file=file)   # no line to point at
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    try:
        body = _ToAst(file).transform(tree)
    except VisitError as exc:
        raise exc.orig_exc from None
    deep = _too_deep(body)
    if deep is not None:
        raise NNError(f"this is nested more than {MAX_NESTING} levels deep (brackets, calls and operands "
                      "inside one another), the limit; name the inner parts with assignments", deep.loc)
    return syntax.Module(file, tuple(body))


def parse_file(path: str | Path) -> syntax.Module:
    path = Path(path)
    try:
        with path.open("rb") as handle:   # at most one byte past the limit: /dev/zero never ends
            data = handle.read(MAX_SOURCE + 1)
        if len(data) > MAX_SOURCE:
            raise NNError(f"larger than {MAX_SOURCE} bytes, the limit for a .nn file", file=str(path))
        # As Path.read_text reads it: a BOM tolerated, \r\n and a lone \r read as \n
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig").read()
    except FileNotFoundError:
        raise NNError("no such file", file=str(path)) from None
    except IsADirectoryError:
        raise NNError("is a directory, not a .nn file", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise NNError(f"not UTF-8 text ({exc.reason})", file=str(path)) from None
    except OSError as exc:
        raise NNError(f"cannot be read: {exc.strerror}", file=str(path)) from None
    return parse(text, str(path))


def _character_hint(char: str) -> str:
    """What a character the language lacks is usually meant as, where that is known."""
    if char == "^":
        return ": for a power write '**', as in x ** 2"
    if char.isalpha():   # a letter outside ASCII: names are ASCII, as Python's keywords are
        return ": names are ASCII letters, digits and '_'"
    return ""


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> NNError:
    lines = text.split("\n")
    eof = Loc(file, len(lines), len(lines[-1].rstrip("\r")) + 1)
    token = getattr(exc, "token", None)
    if isinstance(exc, UnexpectedEOF) or getattr(exc, "line", -1) in (-1, None) or \
            (token is not None and token.type == "$END"):
        unclosed = _open_brackets(text)
        if unclosed:
            return _never_closed(unclosed[-1], file)
        return NNError("unexpected end of file", eof)
    loc = Loc(file, exc.line, exc.column)
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        if char == '"':
            return NNError("unterminated string: the closing '\"' is missing on this line", loc)
        return NNError(f"unexpected character {char!r}{_character_hint(char)}", loc)
    assert isinstance(exc, UnexpectedToken)
    tok_loc = Loc(file, token.line, token.column,
                  token.column + max(1, len(str(token))) if token.type != "_NL" else None)
    opened = _open_brackets(text, token.start_pos)
    if token.type in _CLOSERS:
        want = _CLOSERS[token.type]
        if not any(char == want for char, *_ in opened):
            if opened and opened[-1][0] in "([":
                char, line, col, _ = opened[-1]
                return NNError(f"'{token}' does not match the '{char}' opened at line {line}, column {col}: "
                               f"close it with '{_PAIRS[char]}'", tok_loc)
            return NNError(f"unmatched '{token}': no '{want}' is open here", tok_loc)
        char, line, col, _ = opened[-1]
        if char != want:
            return NNError(f"'{token}' cannot close the '{char}' opened at line {line}, column {col}; "
                           f"expected '{_PAIRS[char]}'", tok_loc,
                           notes=((f"'{char}' opened here", Loc(file, line, col, col + 1)),))
    if opened and opened[-1][0] in "([" and opened[-1][1] < token.line and \
            opened[-1] in _open_brackets(text):
        # Newlines are dropped inside ( and [, so a bracket left open swallows the next
        # statements and the parser only notices later; the bracket is the real mistake.
        return _never_closed(opened[-1], file)
    accepts = set(getattr(exc, "accepts", None) or exc.expected)
    if token.type == "COMPARE" and "PLUS" in accepts and "NAME" not in accepts:   # after a whole operand
        return NNError(f"comparisons do not chain: '{token}' follows another comparison; for 'a < b and b < c' "
                       "multiply the masks, (a < b) * (b < c)", tok_loc)
    if token.type == "COLON" and opened and opened[-1][0] == "[" and \
            ":" in re.split(r"[\[,]", text[:token.start_pos])[-1]:   # a second ':' in one subscript entry
        return NNError("a slice takes no step: write start:stop (numpy's start:stop:step has no counterpart "
                       "here)", tok_loc)
    keyword = _misused_keyword(text, token)
    if keyword is not None:
        word, start = keyword
        col = start - text.rfind("\n", 0, start)
        return NNError(f"'{word}' is a keyword of the language, so it cannot be used as a name; "
                       "choose another name", Loc(file, token.line, col, col + len(word)))
    python = _python_statement(text, token, file)
    if python is not None:
        return python
    member_call = _member_call(text, token, file)
    if member_call is not None:
        return member_call
    if token.type == "DOT" and re.match(r"[ \t\f]*import\b", text[text.rfind("\n", 0, token.start_pos) + 1:]):
        return NNError('to import a file, quote its path, like: import "layers.nn"', tok_loc)
    got = "end of line" if token.type == "_NL" else repr(str(token))
    expected = _describe_expected(getattr(exc, "accepts", None) or exc.expected)
    hint = ""
    if expected and len(expected) <= 6:
        hint = "; expected " + (", ".join(expected[:-1]) + " or " + expected[-1] if len(expected) > 1 else expected[0])
    return NNError(f"unexpected {got}{hint}", tok_loc)


_PAIRS = {"(": ")", "[": "]", "{": "}"}
_CLOSERS = {"RPAR": "(", "RSQB": "[", "RBRACE": "{"}
_EXPRESSION_START = {"NAME", "NUMBER", "LPAR", "LSQB", "MINUS", "PLUS", "TRUE", "FALSE", "REPEAT"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "AT", "LSQB", "AS", "COMPARE", "DOT_T"}
_END = {"_NL", "SEMICOLON", "$END"}
# Tokens that may follow a name but never a keyword: a keyword right before one was meant as a name.
_AFTER_NAME = {"EQUAL", "STAR", "SLASH", "AT", "RPAR", "RSQB", "COMMA", "DOT", "COLON"}
_SPECIAL = {"NAME": "a name", "NUMBER": "a number", "STRING": 'a quoted path like "layers.nn"',
            "_NL": "end of line", "SEMICOLON": "end of line", "$END": "end of file"}


def _terminal(name: str) -> str:
    """How a terminal reads in a message: ``'='``, ``'float'``, ``a name``."""
    if name in _SPECIAL:
        return _SPECIAL[name]
    for term in _lark().terminals:
        if term.name == name and term.pattern.type == "str":
            return repr(term.pattern.value)
    return name.lower()


def _keywords() -> set[str]:
    return {t.pattern.value for t in _lark().terminals if t.pattern.type == "str" and t.pattern.value.isidentifier()}


def _describe_expected(accepts) -> list[str]:
    names = set(accepts)
    out = []
    if {"NAME", "NUMBER", "LPAR"} <= names:
        out.append("an expression")
        names -= _EXPRESSION_START
    if {"STAR", "SLASH", "AT"} <= names:
        out.append("an operator")
        names -= _OPERATORS | {name for name in names if _terminal(name) == "'**'"}
    rest = sorted({_terminal(name) for name in names if name not in _END})
    return out + rest + (["end of line"] if names & {"_NL", "SEMICOLON"} else
                         ["end of file"] if "$END" in names else [])


def _misused_keyword(text: str, token: Token) -> tuple[str, int] | None:
    """A keyword written where a name belongs (``output = 3``): the word and its offset."""
    if token.type not in _AFTER_NAME:
        return None
    line_start = text.rfind("\n", 0, token.start_pos) + 1
    match = re.search(r"([A-Za-z_][A-Za-z0-9_]*)[ \t\f]*$", text[line_start:token.start_pos])
    if match is None or match.group(1) not in _keywords():
        return None
    return match.group(1), line_start + match.start(1)


_PYTHON = {"def": "layers are written `layer name(args) -> shape { ... }`, with `return` inside",
           "class": "layers are written `layer name(args) -> shape { ... }`",
           "for": "there are no loops: to apply a layer n times write `repeat n layer(x)`",
           "while": "there are no loops: to apply a layer n times write `repeat n layer(x)`"}


def _python_statement(text: str, token: Token, file: str) -> NNError | None:
    """A line that starts like Python (``def f(x):``): say how the language writes it."""
    line_start = text.rfind("\n", 0, token.start_pos) + 1
    match = re.match(r"[ \t\f]*(def|class|for|while)[ \t\f]+[A-Za-z_(]", text[line_start:token.start_pos + 1])
    if match is None:
        return None
    word = match.group(1)
    col = match.start(1) + 1
    return NNError(f"'{word}' is Python, not part of the .nn language: {_PYTHON[word]}",
                   Loc(file, token.line, col, col + len(word)))


def _member_call(text: str, token: Token, file: str) -> NNError | None:
    """``nn.dense(x)``: a call of a dotted name. Imported layers and ops are called by their
    bare name; a dotted name only reads a layer instance's member (``fc1.W``)."""
    if token.type != "LPAR":
        return None
    match = re.search(r"\b([A-Za-z_]\w*)\.([A-Za-z_]\w*)[ \t\f]*$", text[:token.start_pos])
    if match is None:
        return None
    base, member = match.groups()
    col = token.column - (token.start_pos - match.start())
    where = Loc(file, token.line, col, col + len(match.group(0).rstrip()))
    if re.search(rf"^[ \t\f]*import[ \t\f]+{re.escape(base)}[ \t\f]*(#.*)?$", text, re.MULTILINE):
        return NNError(f"layers imported from '{base}' are called by their bare name: write '{member}(...)', "
                       f"not '{base}.{member}(...)'", where)
    return NNError(f"'{base}.{member}' cannot be called: layers and ops are called by their bare name; "
                   "a dotted name reads a member of a layer instance, such as fc1.W", where)


def _never_closed(bracket: tuple[str, int, int, int], file: str) -> NNError:
    char, line, col, _ = bracket
    return NNError(f"'{char}' opened here was never closed", Loc(file, line, col, col + 1))


def _open_brackets(text: str, upto: int | None = None) -> list[tuple[str, int, int, int]]:
    """The brackets still open at offset ``upto`` (default: the end), innermost last, as
    (char, line, column, offset). Comments and quoted paths are skipped."""
    stack: list[tuple[str, int, int, int]] = []
    line, line_start = 1, 0
    in_comment = in_string = False
    for i, ch in enumerate(text[:upto]):
        if ch == "\n":
            line, line_start, in_comment, in_string = line + 1, i + 1, False, False
        elif in_comment:
            continue
        elif in_string:
            in_string = ch != '"'
        elif ch == "#":
            in_comment = True
        elif ch == '"':
            in_string = True
        elif ch in _PAIRS:
            stack.append((ch, line, i - line_start + 1, i))
        elif ch in ")]}" and stack and _PAIRS[stack[-1][0]] == ch:
            stack.pop()
    return stack


def _loc(file: str, meta) -> Loc:
    return Loc(file, meta.line, meta.column, meta.end_column if meta.end_line == meta.line else None)


def _tok_loc(file: str, token: Token) -> Loc:
    return Loc(file, token.line, token.column, token.end_column)


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """Bottom-up conversion of Lark's parse tree into syntax dataclasses, without recursion,
    so a 600-term sum on one line converts like a short one."""

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
        return syntax.Const(self.L(meta), str(items[0]), items[1])

    def input_stmt(self, meta, items):
        return syntax.Input(self.L(meta), str(items[0]), items[1], items[2])

    def param_stmt(self, meta, items):
        return syntax.Param(self.L(meta), str(items[0]), items[1], items[2])

    def state_stmt(self, meta, items):
        return syntax.State(self.L(meta), str(items[0]), items[1], items[2])

    def update_stmt(self, meta, items):
        return syntax.Update(self.L(meta), items[0], items[1])

    def assign(self, meta, items):
        return syntax.Assign(self.L(meta), str(items[0]), items[1])

    def output_stmt(self, meta, items):
        return syntax.Output(self.L(meta), tuple((ref.name, ref.loc) for ref in items))

    def minimize_stmt(self, meta, items):
        return syntax.Minimize(self.L(meta), str(items[0]))

    def return_stmt(self, meta, items):
        return syntax.Return(self.L(meta), items[0])

    def import_stmt(self, meta, items):
        token = items[0]
        if token.type == "STRING":
            return syntax.Import(self.L(meta), str(token)[1:-1], True)
        return syntax.Import(self.L(meta), str(token), False)

    def dtype_stmt(self, meta, items):
        return syntax.DType(self.L(meta), str(items[0].children[0]))

    def phase_block(self, meta, items):
        return syntax.Phase(self.L(meta), str(items[0].children[0]), tuple(_flatten(items[1:])))

    def layer_def(self, meta, items):
        name, args, returns, *body = items
        return syntax.Layer(self.L(meta), str(name), tuple(args or ()), returns, tuple(_flatten(body)))

    def layer_args(self, meta, items):
        return [a for a in items if a is not None]

    def layer_arg(self, meta, items):
        return syntax.LayerArg(self.L(meta), str(items[0]), items[1], items[2])

    # types
    def typed(self, meta, items):
        return syntax.Type(self.L(meta), str(items[0].children[0]), items[1])

    def shaped(self, meta, items):
        return syntax.Type(self.L(meta), None, items[0])

    def shape(self, meta, items):
        return tuple(i for i in items if i is not None)

    # expressions
    def _binop(self, op: str, meta, items) -> syntax.BinOp:
        return syntax.BinOp(self.L(meta), op, items[0], items[1])

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

    def comparison(self, meta, items):
        return syntax.Compare(self.L(meta), str(items[1]), items[0], items[2])

    def neg(self, meta, items):
        return syntax.Neg(self.L(meta), items[0])

    def transposed(self, meta, items):
        return syntax.Transposed(self.L(meta), items[0])

    def unary(self, meta, items):  # unary plus
        return items[0]

    def number(self, meta, items):
        text = str(items[0])
        shown = text if len(text) <= 24 else text[:20] + "..."
        if text.isdigit():   # checked before int(): Python refuses to convert 4,300 digits
            if len(text.lstrip("0")) > len(str(MAX_INT)) or int(text) > MAX_INT:
                raise NNError(f"the whole number {shown} is too large: whole numbers must fit in int64 "
                              f"(at most {MAX_INT}); for a real number write one like 1e20", self.L(meta))
            return syntax.Number(self.L(meta), int(text))
        value = float(text)
        if not math.isfinite(value):
            raise NNError(f"the number {shown} overflows float64 (the largest is about 1.8e308)", self.L(meta))
        return syntax.Number(self.L(meta), value)

    def true(self, meta, items):
        return syntax.Bool(self.L(meta), True)

    def false(self, meta, items):
        return syntax.Bool(self.L(meta), False)

    def ref(self, meta, items):
        return syntax.Ref(self.L(meta), tuple(str(t) for t in items))

    def list(self, meta, items):
        return syntax.ListExpr(self.L(meta), tuple(i for i in items if i is not None))

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
        return syntax.Call(self.L(meta), str(name), tuple(positional), tuple(keywords))

    def kwarg(self, meta, items):
        return (str(items[0]), items[1], _tok_loc(self.file, items[0]))

    def scoped(self, meta, items):
        call, name = items
        return syntax.Call(self.L(meta), call.func, call.args, call.kwargs, str(name))

    def repeat(self, meta, items):
        count, call, scope = items
        if scope is not None:   # repeat 3 block(x) as blocks
            call = syntax.Call(call.loc, call.func, call.args, call.kwargs, str(scope))
        return syntax.Repeat(self.L(meta), count, call)

    def index(self, meta, items):
        return syntax.Index(self.L(meta), items[0], tuple(i for i in items[1:] if i is not None))

    def slice(self, meta, items):
        return syntax.Slice(self.L(meta), items[0], items[1])

    def ellipsis(self, meta, items):
        return syntax.EllipsisIndex(self.L(meta))


def _too_deep(body: list[syntax.Stmt]) -> syntax.Node | None:
    """The first node nested more than MAX_NESTING levels deep, if any. An operator chain read
    left to right (a + b - c, - - x) counts as one level: the elaborator walks it in a loop."""
    stack = [(stmt, 0) for stmt in body]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            return node
        for child in _children(node):
            chained = (isinstance(node, syntax.BinOp) and child is node.left and isinstance(child, syntax.BinOp)) or \
                (isinstance(node, syntax.Neg) and isinstance(child, syntax.Neg))
            stack.append((child, depth if chained else depth + 1))
    return None


def _children(node: syntax.Node) -> list[syntax.Node]:
    out: list[syntax.Node] = []
    items = [getattr(node, f.name) for f in dataclasses.fields(node)]
    while items:
        item = items.pop()
        if isinstance(item, syntax.Node):
            out.append(item)
        elif isinstance(item, tuple):
            items.extend(item)
    return out


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
