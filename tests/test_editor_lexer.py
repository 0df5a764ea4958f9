"""The Pygments lexer (nncompile/editor/lexer.py) held to the grammar: its keywords are the
grammar's, and on every example, the standard library, every ``nn`` block of the docs and
generated programs it splits the text exactly where Lark's own lexer does, into tokens of
the same kind, with no Error token. Reached the way Sphinx, MkDocs, nbconvert and
``pygmentize`` reach it: through the ``pygments.lexers`` entry point."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pygments")

from lark import Lark, Token  # noqa: E402
from pygments import highlight  # noqa: E402
from pygments.formatters import HtmlFormatter  # noqa: E402
from pygments.lexers import find_lexer_class_for_filename, get_lexer_by_name, get_lexer_for_filename  # noqa: E402
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation, String, Text  # noqa: E402

from nncompile import __version__  # noqa: E402
from nncompile.cli import build_parser, cmd_lsp  # noqa: E402
from nncompile.compiler import compile_file  # noqa: E402
from nncompile.editor.lexer import KEYWORDS, NNLexer  # noqa: E402
from nncompile.initializers import INITIALIZERS  # noqa: E402
from nncompile.ops import REGISTRY  # noqa: E402
from nncompile.parser import BracketPostLex, grammar_text  # noqa: E402

from conftest import EXAMPLE_FILES, ROOT  # noqa: E402
from fuzzing import RandomChoices, write_program  # noqa: E402

_COMMENTS: list[Token] = []   # what the parser's lexer skips, collected as it goes
GRAMMAR = Lark(grammar_text(), parser="lalr", postlex=BracketPostLex(), keep_all_tokens=True,
               lexer_callbacks={"COMMENT": _COMMENTS.append})
GRAMMAR_KEYWORDS = {t.pattern.value for t in GRAMMAR.terminals if t.pattern.type == "str" and t.pattern.value.isidentifier()}
DOC_BLOCKS = [(path.name, i, block) for path in sorted((ROOT / "docs").glob("*.md"))
              for i, block in enumerate(re.findall(r"```nn\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S))]
SOURCES = {**{p.name: p.read_text(encoding="utf-8") for p in EXAMPLE_FILES},
           "stdlib/nn.nn": (ROOT / "nncompile" / "stdlib" / "nn.nn").read_text(encoding="utf-8"),
           **{f"{name} block {i}": block for name, i, block in DOC_BLOCKS},
           # what the examples leave out: a quoted import, numbers without a leading digit, a member
           # by number, `;`, a continued line, a newline inside brackets, float32, true and false
           "edge cases": 'import "layers.nn"\nimport nn\ninput x = .5\ninput y = 1.5e-3 # comment\n'
                         "a = x.1 + body.2.W; b = -x ** 2 \\\n  * 3\n"
                         "c = reshape(x, [1,\n 1])\nlayer f(x: float[B], k: int = 2) -> [B] { return x }\n"
                         "dtype float32\ntrain { d = sum(c, axis=0, keepdims=true) }\n"
                         "eval { e = max(c, keepdims=false) }\noutput a\n",
           # the comparisons, x.T (and a member that only starts with T), None and ... in subscripts
           "numpy syntax": "input x: [N, 3]\na = (x < 1) + (x > 0) + (x <= 2) * (x >= -1) + (x == 0) - (x != 1)\n"
                           "b = x.T + body.Tx; c = (x @ x.T).T[0]; d = x[None, ..., 0]\noutput a\n"}


def lark_tokens(text: str) -> list[Token]:
    """The tokens the compiler's parser reads, comments included, in order."""
    _COMMENTS.clear()
    tree = GRAMMAR.parse(text)
    found = [t for t in tree.scan_values(lambda v: isinstance(v, Token)) if t.type != "_NL"]
    return sorted(found + _COMMENTS, key=lambda t: t.start_pos)


def pygments_tokens(text: str) -> list[tuple[int, object, str]]:
    """The lexer's tokens, less the whitespace the grammar ignores."""
    return [(i, kind, value) for i, kind, value in NNLexer().get_tokens_unprocessed(text)
            if kind not in Text]


def kinds_of(token: Token) -> tuple:
    """The Pygments kinds a grammar terminal may come out as."""
    if token.type in ("COMMENT", "NAME", "NUMBER", "STRING"):
        return ({"COMMENT": Comment, "NAME": Name, "NUMBER": Number, "STRING": String}[token.type],)
    if str(token) in GRAMMAR_KEYWORDS:
        return (Keyword,)
    return (Operator, Punctuation)


def assert_lexes_as_the_grammar_does(text: str) -> None:
    ours = pygments_tokens(text)
    errors = [(i, value) for i, kind, value in ours if kind is Error]
    assert errors == [], f"Error tokens at {errors}"
    theirs = lark_tokens(text)
    assert [(i, value) for i, _, value in ours] == [(t.start_pos, str(t)) for t in theirs]
    for (i, kind, value), token in zip(ours, theirs):
        assert any(kind in want for want in kinds_of(token)), \
            f"{value!r} at offset {i} is {kind}, but the grammar reads it as {token.type}"


def test_the_lexers_keywords_are_the_grammars_keywords():
    assert set(KEYWORDS) == GRAMMAR_KEYWORDS
    assert len(KEYWORDS) == len(set(KEYWORDS))


@pytest.mark.parametrize("word", sorted(GRAMMAR_KEYWORDS))
def test_every_keyword_of_the_grammar_is_a_keyword_token(word: str):
    kinds = [kind for _, kind, value in pygments_tokens(f"{word} ") if value == word]
    assert len(kinds) == 1 and kinds[0] in Keyword


def test_a_name_that_starts_like_a_keyword_is_a_name():
    for word in sorted(GRAMMAR_KEYWORDS):
        for name in (f"{word}_x", f"{word}2", f"x{word}"):
            assert [(kind, value) for _, kind, value in pygments_tokens(name)] == [(Name, name)]


@pytest.mark.parametrize("name", sorted({n for n, d in REGISTRY.items() if d.public} | set(INITIALIZERS) | {"grad"}))
def test_every_op_and_initialiser_is_a_builtin_where_it_is_called(name: str):
    tokens = [(kind, value) for _, kind, value in pygments_tokens(f"h = {name}(x)")]
    assert (Name.Builtin, name) in tokens


def test_a_layer_or_an_internal_op_is_a_function_and_an_op_name_not_called_is_a_name():
    hidden = next(n for n, d in REGISTRY.items() if not d.public and n not in GRAMMAR_KEYWORDS | set(INITIALIZERS))
    for called in ("dense", "my_block", hidden):
        assert (Name.Function, called) in [(k, v) for _, k, v in pygments_tokens(f"h = {called}(x)")]
    assert [(k, v) for _, k, v in pygments_tokens("relu + sum")] == [(Name, "relu"), (Operator, "+"), (Name, "sum")]


def test_the_sources_cover_the_language():
    assert len(EXAMPLE_FILES) >= 10 and len(DOC_BLOCKS) >= 15
    used = {str(t) for text in SOURCES.values() for t in lark_tokens(text)}
    assert GRAMMAR_KEYWORDS <= used, f"never used: {GRAMMAR_KEYWORDS - used}"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_example_stdlib_file_and_docs_block_lexes_as_the_grammar_does(source: str):
    assert_lexes_as_the_grammar_does(SOURCES[source])


@pytest.mark.parametrize("seed", range(40))
def test_generated_programs_lex_as_the_grammar_does(seed: int):
    text, _ = write_program(RandomChoices(seed))
    assert_lexes_as_the_grammar_does(text)


def test_a_character_outside_the_language_is_an_error_token():
    assert [value for _, kind, value in NNLexer().get_tokens_unprocessed("x = 3 $ 4 é") if kind is Error] == ["$", "é"]


def test_the_entry_point_finds_the_lexer_by_name_alias_and_file_name():
    assert isinstance(get_lexer_by_name("nn"), NNLexer)
    assert isinstance(get_lexer_by_name("nncompile"), NNLexer)
    assert find_lexer_class_for_filename("models/two_layer.nn") is NNLexer
    assert isinstance(get_lexer_for_filename("two_layer.nn"), NNLexer)


def test_html_output_escapes_what_a_file_holds():
    hostile = 'import "</script><img src=x onerror=alert(1)>.nn"  # <b>bold</b> & co\n'
    html = highlight(hostile, get_lexer_by_name("nn"), HtmlFormatter())
    assert "<img" not in html and "<b>" not in html and "&lt;img src=x" in html and "&amp; co" in html


def _pygmentize() -> list[str]:
    found = shutil.which("pygmentize", path=str(Path(sys.executable).parent)) or shutil.which("pygmentize")
    assert found, "pygmentize is installed with pygments"
    return [found]


def test_pygmentize_highlights_an_example_as_html():
    done = subprocess.run([*_pygmentize(), "-l", "nn", "-f", "html", str(ROOT / "examples" / "two_layer.nn")],
                          capture_output=True, text=True, timeout=60, check=True)
    html = done.stdout
    assert '<span class="kd">layer</span>' in html and '<span class="nf">affine</span>' in html
    assert '<span class="nb">softmax_cross_entropy</span>' in html and '<span class="kt">float</span>' in html
    assert '<span class="c1"># The CIFAR-10 sized 2-layer net' in html and 'class="err"' not in html


def test_pygmentize_guesses_the_lexer_from_the_file_name():
    path = str(ROOT / "examples" / "circuit.nn")
    named = subprocess.run([*_pygmentize(), "-N", path], capture_output=True, text=True, timeout=60, check=True)
    assert named.stdout.strip() == "nn"
    coloured = subprocess.run([*_pygmentize(), "-f", "terminal", path], capture_output=True, text=True,
                              timeout=60, check=True)
    assert "\x1b[" in coloured.stdout and "input" in coloured.stdout


# ---- the VS Code extension (editors/vscode): the same keywords, and VS Code's own engine ----

VSCODE = ROOT / "editors" / "vscode"
TEXTMATE = json.loads((VSCODE / "syntaxes" / "nn.tmLanguage.json").read_text(encoding="utf-8"))
KEYWORD_SCOPES = ("storage.type", "keyword.control", "support.type", "constant.language")


def test_the_textmate_grammars_keywords_are_the_grammars():
    found = set()
    for pattern in TEXTMATE["repository"]["keywords"]["patterns"]:
        assert pattern["name"].startswith(KEYWORD_SCOPES), pattern
        found |= set(re.fullmatch(r"\\b\(([a-z0-9|]+)\)\\b", pattern["match"])[1].split("|"))
    assert found == GRAMMAR_KEYWORDS


def test_the_extension_contributes_the_language_its_grammar_and_the_server_command():
    manifest = json.loads((VSCODE / "package.json").read_text(encoding="utf-8"))
    [language] = manifest["contributes"]["languages"]
    [grammar] = manifest["contributes"]["grammars"]
    assert language["id"] == grammar["language"] == "nn" and language["extensions"] == [".nn"]
    assert grammar["scopeName"] == TEXTMATE["scopeName"] == "source.nn"
    for relative in (grammar["path"], language["configuration"], manifest["main"]):
        assert (VSCODE / relative).is_file(), relative
    command = manifest["contributes"]["configuration"]["properties"]["nncompile.server.command"]["default"]
    assert command == ["nncompile", "lsp"]
    assert build_parser().parse_args(command[1:]).run is cmd_lsp
    assert manifest["version"] == __version__


def _char_scopes(text: str, tokens: list) -> dict[tuple[int, int], str]:
    """(line, column) -> the innermost scope VS Code gives that character (0-based)."""
    return {(line, col): scopes[-1] for line, start, end, scopes in tokens for col in range(start, end)}


def _textmate_class(token: Token) -> tuple[str, ...]:
    if token.type in ("COMMENT", "NAME", "NUMBER", "STRING"):
        return {"COMMENT": ("comment.",), "NAME": ("variable.", "entity.name."), "NUMBER": ("constant.numeric",),
                "STRING": ("string.",)}[token.type]
    return KEYWORD_SCOPES if str(token) in GRAMMAR_KEYWORDS else ("keyword.operator", "punctuation")


@pytest.mark.skipif(os.environ.get("NNCOMPILE_VSCODE_CHECK") != "1",
                    reason="VS Code's TextMate engine comes from npm: bash scripts/editors_check.sh")
def test_vscode_textmate_engine_scopes_every_token_as_the_grammar_reads_it(tmp_path: Path):
    files = {}
    for i, (name, text) in enumerate(sorted(SOURCES.items())):
        files[name] = tmp_path / f"source{i}.nn"
        files[name].write_text(text, encoding="utf-8")
    done = subprocess.run(["node", str(VSCODE / "test" / "tokenize.js"), *map(str, files.values())],
                          capture_output=True, text=True, timeout=120, check=True)
    tokenised = json.loads(done.stdout)
    for name, path in files.items():
        scopes = _char_scopes(SOURCES[name], tokenised[str(path)])
        for token in lark_tokens(SOURCES[name]):
            want = _textmate_class(token)
            for col in range(token.column - 1, token.end_column - 1):
                got = scopes.get((token.line - 1, col), "source.nn")
                assert got.startswith(want), f"{name}:{token.line}:{col + 1}: {str(token)!r} is {got}, not {want}"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js")
def test_the_extension_and_the_tokeniser_are_valid_javascript():
    for script in ("extension.js", "test/tokenize.js"):
        subprocess.run(["node", "--check", str(VSCODE / script)], check=True, timeout=60)


# ---- docs/editors.md: its Emacs mode's keywords are the grammar's, its model compiles ----

EDITORS_DOC = (ROOT / "docs" / "editors.md").read_text(encoding="utf-8")


def test_the_emacs_modes_keywords_are_the_grammars():
    [words] = re.findall(r"\(regexp-opt '\(([^)]*)\)", EDITORS_DOC)
    assert set(re.findall(r'"(\w+)"', words)) == GRAMMAR_KEYWORDS


def test_the_models_on_the_editors_page_compile(tmp_path: Path):
    blocks = re.findall(r"```nn\n(.*?)```", EDITORS_DOC, flags=re.S)
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.nn"
        path.write_text(block, encoding="utf-8")
        compile_file(path)


# ---- the tools that find the lexer by its name (installed by scripts/editors_check.sh) ----

CHECK = os.environ.get("NNCOMPILE_VSCODE_CHECK") == "1"   # scripts/editors_check.sh: every tool is there


def tool(name: str):
    """The tool's module; the test skips without it, except under editors_check.sh, which fails."""
    if CHECK:
        return __import__(name)
    return pytest.importorskip(name)

MODEL_IN_A_PAGE = "layer affine(x: [B, K], out: int) -> [B, out] {\n    param W: [K, out] = he()\n    return x @ W\n}\n"
HIGHLIGHTED = ('<span class="kd">layer</span>', '<span class="nf">affine</span>', '<span class="nb">he</span>')


def test_nbconvert_highlights_an_nn_block_of_a_markdown_cell():
    nbformat = tool("nbformat")
    nbconvert = tool("nbconvert")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"```nn\n{MODEL_IN_A_PAGE}```\n")])
    html, _ = nbconvert.HTMLExporter().from_notebook_node(notebook)
    assert all(span in html for span in HIGHLIGHTED), html[html.find("affine") - 300:][:600]


@pytest.mark.parametrize("extensions", [["fenced_code", "codehilite"], ["pymdownx.superfences", "pymdownx.highlight"]],
                         ids=["codehilite", "pymdownx"])
def test_python_markdown_as_mkdocs_runs_it_highlights_an_nn_fence(extensions: list[str]):
    markdown = tool("markdown")
    if extensions[0].startswith("pymdownx"):
        tool("pymdownx")
    html = markdown.markdown(f"```nn\n{MODEL_IN_A_PAGE}```\n", extensions=extensions)
    assert all(span in html for span in HIGHLIGHTED), html


def test_sphinx_highlights_a_code_block_in_nn(tmp_path: Path):
    tool("sphinx")
    from sphinx.cmd.build import build_main

    source = tmp_path / "source"
    source.mkdir()
    (source / "conf.py").write_text("project = 'models'\n")
    body = "\n".join("   " + line for line in MODEL_IN_A_PAGE.splitlines())
    (source / "index.rst").write_text(f"Models\n======\n\n.. code-block:: nn\n\n{body}\n")
    assert build_main(["-q", "-W", "-b", "html", str(source), str(tmp_path / "html")]) == 0
    html = (tmp_path / "html" / "index.html").read_text(encoding="utf-8")
    assert all(span in html for span in HIGHLIGHTED), html[html.find("affine") - 300:][:600]
