"""The .nn grammar: every statement and expression form, with the location of every node."""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompile import syntax
from nncompile.errors import Loc, NNError
from nncompile.parser import parse


def parse_text(text: str) -> tuple:
    return parse(textwrap.dedent(text).lstrip("\n"), "t.nn").body


def only(text: str):
    body = parse_text(text)
    assert len(body) == 1, body
    return body[0]


def value_of(text: str):
    """The expression of ``y = TEXT``."""
    stmt = only(f"y = {text}")
    assert isinstance(stmt, syntax.Assign)
    return stmt.value


def at(node) -> tuple[int, int]:
    return node.loc.line, node.loc.col


# ---- statements -----------------------------------------------------------------------

def test_every_statement_form() -> None:
    body = parse_text("""
        import "layers.nn"
        import nn
        dtype float64
        const D = 3072, H = 100
        input x = -2
        input X: float[N, D]
        input y: int[N]
        input v: float[3] = [1, 2, 3]
        param s = 0.5
        param W: [D, H] = he()
        layer affine(x: [B, K], out: int, scale: float = 1.0) -> [B, out] {
            param b: [out] = zeros()
            return x @ W + b
        }
        q = x + 1
        output q, X
        minimize q
        train {
            q2 = q
        }
    """)
    kinds = [type(s).__name__ for s in body]
    assert kinds == ["Import", "Import", "DType", "Const", "Const", "Input", "Input", "Input", "Input", "Param",
                     "Param", "Layer", "Assign", "Output", "Minimize", "Phase"]
    imp, std, dtype, d, h, x, X, y, v, s, W, layer, q, out, mini, phase = body
    assert (imp.target, imp.is_path) == ("layers.nn", True) and (std.target, std.is_path) == ("nn", False)
    assert dtype.dtype == "float64"
    assert (d.name, d.value.value, h.name, h.value.value) == ("D", 3072, "H", 100)
    assert x.type is None and isinstance(x.default, syntax.Neg) and x.default.operand.value == 2
    assert X.type.dtype == "float" and [e.name for e in X.type.shape] == ["N", "D"] and X.default is None
    assert y.type.dtype == "int" and [e.name for e in y.type.shape] == ["N"]
    assert isinstance(v.default, syntax.ListExpr) and [i.value for i in v.default.items] == [1, 2, 3]
    assert s.type is None and s.init.value == 0.5
    assert W.type.dtype is None and isinstance(W.init, syntax.Call) and W.init.func == "he"
    assert layer.name == "affine" and [a.name for a in layer.args] == ["x", "out", "scale"]
    assert [a.is_attribute for a in layer.args] == [False, True, True]
    assert layer.args[2].default.value == 1.0 and [e.name for e in layer.returns] == ["B", "out"]
    assert [type(st).__name__ for st in layer.body] == ["Param", "Return"]
    assert [n for n, _ in out.names] == ["q", "X"] and mini.name == "q"
    assert phase.phase == "train" and isinstance(phase.body[0], syntax.Assign)


def test_statement_locations() -> None:
    body = parse_text("""
        input x = 1   # a comment
          q = x * 2
        layer f(a) {
            return a
        }
        output q,  x
    """)
    x, q, layer, out = body
    assert at(x) == (1, 1) and x.loc == Loc("t.nn", 1, 1, 12)
    assert at(q) == (2, 3) and at(q.value) == (2, 7) and at(q.value.left) == (2, 7) and at(q.value.right) == (2, 11)
    assert at(layer) == (3, 1) and at(layer.args[0]) == (3, 9) and at(layer.body[0]) == (4, 5)
    assert at(layer.body[0].value) == (4, 12)
    assert [(name, loc.line, loc.col, loc.end_col) for name, loc in out.names] == [("q", 6, 8, 9), ("x", 6, 12, 13)]


def test_every_node_has_a_location() -> None:
    body = parse_text("""
        const C = 2 * (3 + 1)
        input X: float[N, C]
        layer l(x: [B, K], k: int = 2) -> [B, K] {
            param W: [K, K] = normal(std=0.1)
            return relu(x @ W) + -x ** 2
        }
        h = repeat 2 l(X, k=3)
        g = l(h) as last
        s = sum(h, axis=1)
        output s
    """)

    def walk(node):
        if isinstance(node, (list, tuple)):
            for item in node:
                yield from walk(item)
        elif isinstance(node, syntax.Node):
            yield node
            for value in vars(node).values():
                yield from walk(value)

    nodes = list(walk(body))
    assert len(nodes) > 30
    for node in nodes:
        assert isinstance(node.loc, Loc) and node.loc.file == "t.nn" and node.loc.line >= 1 and node.loc.col >= 1, node


def test_semicolons_separate_statements() -> None:
    body = parse_text("input x = 1; y = x * 2;; output y;")
    assert [type(s).__name__ for s in body] == ["Input", "Assign", "Output"]
    assert [at(s) for s in body] == [(1, 1), (1, 14), (1, 26)]


def test_newlines_inside_brackets_are_ignored() -> None:
    body = parse_text("""
        y = f(
            a,
            b=[1,
               2],
        )
        input x: float[
            N,
            3]
        z = (1 +
             2) * 3
    """)
    call, x, z = body
    assert call.value.func == "f" and len(call.value.args) == 1 and call.value.kwargs[0][0] == "b"
    assert [e.name if isinstance(e, syntax.Ref) else e.value for e in x.type.shape] == ["N", 3]
    assert isinstance(z.value, syntax.BinOp) and z.value.op == "mul" and at(z.value.right) == (10, 11)


def test_newlines_separate_statements_in_layer_bodies() -> None:
    layer = only("""
        layer f(x) {
            a = x

            b = a * 2   # comment
            return b
        }
    """)
    assert [type(s).__name__ for s in layer.body] == ["Assign", "Assign", "Return"]


def test_line_continuation_with_backslash() -> None:
    stmt = only("y = 1 + \\\n    2")
    assert stmt.value.op == "add" and at(stmt.value.right) == (2, 5)


def test_comments_and_blank_lines() -> None:
    body = parse_text("""
        # a header comment

        input x = 1  # trailing # with another hash
        # output x
        output x     #
    """)
    assert [type(s).__name__ for s in body] == ["Input", "Output"]
    assert parse("# only a comment\n", "c.nn").body == ()


def test_windows_line_endings() -> None:
    body = parse("input x = 1\r\ny = x\r\n\r\noutput y\r\n", "w.nn").body
    assert [at(s) for s in body] == [(1, 1), (2, 1), (4, 1)]


# ---- expressions ----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ("3", 3), ("0", 0), ("3.0", 3.0), ("1e-3", 1e-3), ("2.5E+4", 2.5e4), (".5", 0.5), ("1e3", 1000.0),
    ("6.02e23", 6.02e23), ("007", 7),
])
def test_number_literals(text: str, value) -> None:
    number = value_of(text)
    assert isinstance(number, syntax.Number) and number.value == value and type(number.value) is type(value)


def test_precedence_follows_python() -> None:
    e = value_of("a + b * c ** 2 @ d - -e")
    assert e.op == "sub" and isinstance(e.right, syntax.Neg)
    add = e.left
    assert add.op == "add" and add.left.name == "a"
    matmul = add.right
    assert matmul.op == "matmul" and matmul.right.name == "d"
    mul = matmul.left
    assert mul.op == "mul" and mul.right.op == "pow"
    neg = value_of("-x ** 2")
    assert isinstance(neg, syntax.Neg) and neg.operand.op == "pow"       # -(x ** 2), as in Python
    power = value_of("2 ** 3 ** 2")
    assert power.op == "pow" and power.right.op == "pow"             # right-associative
    assert value_of("a - b - c").left.op == "sub"                    # left-associative


def test_comparisons_bind_looser_than_arithmetic_and_do_not_chain() -> None:
    for cmp in ("<", ">", "<=", ">=", "==", "!="):
        e = value_of(f"a + 1 {cmp} 2 * b")
        assert isinstance(e, syntax.Compare) and e.cmp == cmp and e.left.op == "add" and e.right.op == "mul"
    assert isinstance(value_of("(a < b) * (b < c)"), syntax.BinOp)
    assert isinstance(value_of("f(x == y, k=a != b)").args[0], syntax.Compare)
    err = error_of("y = a < b <= c\n")
    assert "comparisons do not chain: '<=' follows another comparison" in err.message
    assert (err.loc.line, err.loc.col, err.loc.end_col) == (1, 11, 13)


def test_dot_t_is_a_postfix_transpose_and_a_longer_member_is_a_member() -> None:
    t = value_of("x.T")
    assert isinstance(t, syntax.Transposed) and t.operand.name == "x"
    assert isinstance(value_of("(a @ b).T").operand, syntax.BinOp)
    assert isinstance(value_of("x.T.T").operand, syntax.Transposed)
    assert value_of("x[0].T").operand.subscripts[0].value == 0
    assert value_of("fc.Tx").parts == ("fc", "Tx") and value_of("h.3.T").operand.parts == ("h", "3")
    assert value_of("x.T ** 2").op == "pow"          # binds tighter than any operator


def test_ellipsis_in_subscripts_and_none_is_a_name() -> None:
    """None is numpy's, resolved by the elaborator (a new axis, an attribute not given), not a keyword."""
    subs = value_of("x[None, ..., 0:2, None]").subscripts
    assert [type(s).__name__ for s in subs] == ["Ref", "EllipsisIndex", "Slice", "Ref"] and subs[0].name == "None"
    assert only("y = sum(x, axis=None)").value.kwargs[0][1].name == "None"


def test_calls_with_positional_and_keyword_arguments() -> None:
    call = value_of("sum(x * 2, axis=1, keepdims=true)")
    assert isinstance(call, syntax.Call) and call.func == "sum" and call.scope is None
    assert call.args[0].op == "mul"
    assert [(k, type(v).__name__) for k, v, _ in call.kwargs] == [("axis", "Number"), ("keepdims", "Bool")]
    assert call.kwargs[0][2] == Loc("t.nn", 1, 16, 20)                # the keyword's own location
    assert value_of("f()").args == ()
    assert [a.value for a in value_of("reshape(x, [-1, 4])").args[1].items[1:]] == [4]


def test_scoped_names() -> None:
    assert value_of("fc1.W").parts == ("fc1", "W")
    assert value_of("h.3.b").parts == ("h", "3", "b")
    assert value_of("fc1.W").name == "fc1.W"


def test_as_names_a_layer_instance() -> None:
    call = value_of("affine(h, out=C) as fc2")
    assert call.func == "affine" and call.scope == "fc2"
    inner = value_of("relu(affine(X, out=H) as fc1)").args[0]
    assert inner.scope == "fc1"


def test_repeat() -> None:
    rep = value_of("repeat 3 dense(x, out=4)")
    assert isinstance(rep, syntax.Repeat) and rep.count.value == 3
    assert rep.call.func == "dense" and rep.call.scope is None and rep.call.kwargs[0][0] == "out"
    assert value_of("repeat L dense(x)").count.name == "L"


def test_lists_indexing_and_booleans() -> None:
    lst = value_of("[1, [2, 3],]")
    assert isinstance(lst, syntax.ListExpr) and len(lst.items) == 2
    idx = value_of("x[0, 1:3, :]")
    assert isinstance(idx, syntax.Index) and len(idx.subscripts) == 3 and isinstance(idx.subscripts[1], syntax.Slice)
    assert value_of("false").value is False


# The language follows Python's precedence, so random expressions must parse into the same
# tree as Python's own parser gives.
_names = st.sampled_from(["a", "b", "x1", "fc"])
_numbers = st.one_of(st.integers(0, 99).map(str), st.sampled_from(["2.5", "1e-3", "0.5", "3E2"]))


def _expressions():
    leaves = st.one_of(_names, _numbers)

    def extend(inner):
        binary = st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "@", "**"]), inner,
                           st.sampled_from([" ", "", "  "])).map(lambda t: f"{t[0]}{t[3]}{t[1]}{t[3]}{t[2]}")
        unary = inner.map(lambda e: f"-{e}")
        paren = st.tuples(inner, st.sampled_from(["", "\n", " \n  "])).map(lambda t: f"({t[1]}{t[0]}{t[1]})")
        call = st.tuples(st.sampled_from(["exp", "f"]), inner).map(lambda t: f"{t[0]}({t[1]})")
        return st.one_of(binary, unary, paren, call)
    return st.recursive(leaves, extend, max_leaves=12)


def _ours(e):
    if isinstance(e, syntax.Number):
        return ("num", float(e.value))
    if isinstance(e, syntax.Ref):
        return ("name", e.name)
    if isinstance(e, syntax.Neg):
        return ("neg", _ours(e.operand))
    if isinstance(e, syntax.BinOp):
        return (e.op, _ours(e.left), _ours(e.right))
    if isinstance(e, syntax.Call):
        return ("call", e.func, *map(_ours, e.args))
    raise AssertionError(e)


_PY_OPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.MatMult: "matmul", ast.Pow: "pow"}


def _python(e):
    if isinstance(e, ast.Constant):
        return ("num", float(e.value))
    if isinstance(e, ast.Name):
        return ("name", e.id)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
        return ("neg", _python(e.operand))
    if isinstance(e, ast.BinOp):
        return (_PY_OPS[type(e.op)], _python(e.left), _python(e.right))
    if isinstance(e, ast.Call):
        return ("call", e.func.id, *map(_python, e.args))
    raise AssertionError(ast.dump(e))


@settings(max_examples=150, deadline=None)
@given(_expressions())
def test_expressions_parse_like_python(text: str) -> None:
    ours = value_of(text)
    python = ast.parse(text.replace("\n", " ").strip(), mode="eval").body
    assert _ours(ours) == _python(python)


# ---- syntax errors --------------------------------------------------------------------

def error_of(text: str) -> NNError:
    with pytest.raises(NNError) as info:
        parse(textwrap.dedent(text).lstrip("\n"), "e.nn")
    return info.value


@pytest.mark.parametrize(("text", "message", "where"), [
    ("output = 3\n", "'output' is a keyword", (1, 1)),
    ("const = 1\n", "'const' is a keyword", (1, 1)),
    ("input x = 1\ninput = 2\n", "'input' is a keyword", (2, 1)),
    ("input x = 1\ny = repeat * x\noutput y\n", "'repeat' is a keyword", (2, 5)),
    ("layer f(x) {\n  return = x\n}\n", "'return' is a keyword", (2, 3)),
    ("layer = 2\n", "'layer' is a keyword", (1, 1)),
])
def test_keywords_are_not_names(text: str, message: str, where: tuple[int, int]) -> None:
    err = error_of(text)
    assert message in err.message and "cannot be used as a name" in err.message
    assert (err.loc.line, err.loc.col) == where


def test_keywords_may_appear_inside_longer_names() -> None:
    body = parse_text("input outputs = 1\ninput inputx = 2\nconstant = outputs + inputx\noutput constant\n")
    assert [getattr(s, "name", None) for s in body[:3]] == ["outputs", "inputx", "constant"]


@pytest.mark.parametrize(("text", "message", "where"), [
    ("y = x +\n", "unexpected end of line; expected an expression", (1, 8)),
    ("y = x + 2 3\n", "unexpected '3'; expected an operator or end of line", (1, 11)),
    ("x y = 3\n", "unexpected 'y'; expected '='", (1, 3)),
    ("input x: flot[3]\n", "unexpected 'flot'; expected '[', 'float' or 'int'", (1, 10)),
    ("y = (x + 2\noutput y\n", "'(' opened here was never closed", (1, 5)),
    ("y = f(a,\n  b\n", "'(' opened here was never closed", (1, 6)),
    ("layer f(x) {\n  return x\n", "'{' opened here was never closed", (1, 12)),
    ("y = (x + 2))\n", "unmatched ')'", (1, 12)),
    ("y = [x + 2)\n", "')' does not match the '[' opened at line 1, column 5", (1, 11)),
    ("y = x $ 2\n", "unexpected character '$'", (1, 7)),
    ('import "a.nn\n', "unterminated string", (1, 8)),
    ("import layers.nn\n", 'quote its path, like: import "layers.nn"', (1, 14)),
    ("minimize\n", "unexpected end of line; expected a name", (1, 9)),
    ("y = 3.\n", "unexpected '.'", (1, 6)),
])
def test_syntax_errors_point_at_the_mistake(text: str, message: str, where: tuple[int, int]) -> None:
    err = error_of(text)
    assert message in err.message, err.message
    assert (err.loc.line, err.loc.col) == where


def test_error_in_a_multiline_call_is_not_blamed_on_the_bracket() -> None:
    err = error_of("y = f(a,\n      b c)\n")
    assert err.message.startswith("unexpected 'c'") and (err.loc.line, err.loc.col) == (2, 9)


def test_empty_file() -> None:
    for text in ("", "\n\n", "   \n\t\n"):
        err = error_of(text)
        assert err.message.startswith("empty file") and err.loc is None and err.format().startswith("nncompile: error: ")


def test_error_format_quotes_the_line_with_a_caret() -> None:
    err = error_of("input x = 1\n\ty = x +* 2\n")
    # the tab counts as one column, and is shown as one space so the caret lines up
    assert err.format() == "e.nn:2:9: error: unexpected '*'; expected an expression\n" \
                           "     y = x +* 2\n" \
                           "            ^"


def test_control_characters_do_not_shift_lines() -> None:
    """A form feed or a lone carriage return inside a comment is not a line break."""
    text = "input x = 1  # a\x0cb\rc\ny = x + q\noutput y\n"
    body = parse(text, "cc.nn").body
    assert [at(s) for s in body] == [(1, 1), (2, 1), (3, 1)]
    from nncompile.errors import Sources
    assert Sources.line("cc.nn", 2) == "y = x + q"


# ---- numbers, nesting and Python habits ------------------------------------------------

@pytest.mark.parametrize(("text", "message", "where"), [
    ("input x = " + "9" * 400 + "\n", "too large: whole numbers must fit in int64 (at most 9223372036854775807)",
     (1, 11)),
    ("input x = " + "1" * 5000 + "\n", "too large: whole numbers must fit in int64", (1, 11)),
    ("const A = 9223372036854775808\n", "too large: whole numbers must fit in int64", (1, 11)),
    ("input x = 1e400\n", "the number 1e400 overflows float64", (1, 11)),
    ("y = leaky_relu(x, alpha=1e999)\n", "the number 1e999 overflows float64", (1, 25)),
])
def test_literals_past_int64_or_float64_are_located_errors(text: str, message: str, where) -> None:
    err = error_of(text)
    assert message in err.message, err.message
    assert (err.loc.line, err.loc.col) == where


def test_the_largest_literals_still_parse() -> None:
    assert value_of("9223372036854775807").value == 2**63 - 1
    assert value_of("1.7e308").value == 1.7e308
    assert value_of("1" * 300 + ".5").value == float("1" * 300 + ".5")


@pytest.mark.parametrize("text", [
    " + ".join(["x"] * 5000),      # one long line: a left-nested chain of 4999 additions
    "-" * 2000 + "x",
    "(" * 10000 + "x" + ")" * 10000,
])
def test_long_chains_parse_without_recursion(text: str) -> None:
    assert isinstance(value_of(text), (syntax.BinOp, syntax.Neg, syntax.Ref))


@pytest.mark.parametrize("text", [
    "[" * 600 + "1" + "]" * 600,
    "f(" * 150 + "x" + ")" * 150,
    "x ** " * 150 + "x",
    "x + (" * 150 + "x" + ")" * 150,
])
def test_nesting_past_the_limit_is_a_located_error(text: str) -> None:
    err = error_of(f"y = {text}\n")
    assert "nested more than 100 levels deep" in err.message and err.loc.line == 1


def test_nesting_up_to_the_limit_parses() -> None:
    assert isinstance(value_of("f(" * 99 + "x" + ")" * 99), syntax.Call)


@pytest.mark.parametrize(("text", "message", "where"), [
    ("def f(x):\n    return x\n", "'def' is Python, not part of the .nn language: layers are written "
     "`layer name(args) -> shape { ... }`", (1, 1)),
    ("input x = 1\n  for i in range(3):\n", "there are no loops: to apply a layer n times write `repeat n layer(x)`",
     (2, 3)),
])
def test_python_statements_get_a_hint(text: str, message: str, where) -> None:
    err = error_of(text)
    assert message in err.message, err.message
    assert (err.loc.line, err.loc.col) == where


def test_names_that_are_python_keywords_get_no_python_hint() -> None:
    assert "Python" not in error_of("for = 3 3\n").message
    assert [s.name for s in parse_text("for = 3\ndef = for * 2\noutput def\n")[:2]] == ["for", "def"]


def test_a_file_past_the_size_limit_is_refused_before_it_is_read_whole(tmp_path, monkeypatch) -> None:
    """/dev/zero, or a file too large to be a model, is an error naming the limit, not a
    MemoryError after reading until memory runs out."""
    from nncompile import parser

    ok = b"\xef\xbb\xbfinput x = 1\r\noutput x\r"   # a BOM, CRLF and a lone CR: read as before
    monkeypatch.setattr(parser, "MAX_SOURCE", len(ok))
    (tmp_path / "ok.nn").write_bytes(ok)
    assert [type(s).__name__ for s in parser.parse_file(tmp_path / "ok.nn").body] == ["Input", "Output"]
    (tmp_path / "big.nn").write_bytes(ok + b"\n")
    with pytest.raises(NNError, match=f"larger than {len(ok)} bytes, the limit for a .nn file") as info:
        parser.parse_file(tmp_path / "big.nn")
    assert info.value.loc is None and info.value.file == str(tmp_path / "big.nn")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_compiling_dev_zero_is_an_error_not_a_memory_error(run_cli) -> None:
    result = run_cli("compile", "/dev/zero", "-o", "out.py")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == f"nncompile: error: /dev/zero: larger than {2**26} bytes, the limit for a .nn file\n"
