"""A Pygments lexer for .nn files, registered as the ``pygments.lexers`` entry point ``nn``, so
Sphinx, MkDocs, nbconvert and ``pygmentize -l nn`` highlight the language.

The keywords are written out here because each needs a kind (a declaration, a type, a
constant); tests/test_editor_lexer.py holds them to the grammar's own terminals, both ways.
The builtins are read from the op registry and the initialisers, so a new op is highlighted
without a change here.
"""
from __future__ import annotations

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import Comment, Keyword, Name, Number, Operator, Punctuation, String, Text, Whitespace

from ..initializers import INITIALIZERS
from ..elaborate.expressions import LANGUAGE_CALLS
from ..ops import REGISTRY

DECLARATIONS = ("const", "input", "param", "state", "layer")
STATEMENTS = ("update", "output", "minimize", "return", "dtype", "train", "eval", "repeat", "as")
TYPES = ("float", "int", "float32", "float64")
CONSTANTS = ("true", "false")
KEYWORDS = DECLARATIONS + STATEMENTS + TYPES + CONSTANTS + ("import",)

# What a .nn file can call without defining it: the public ops, the param initialisers, grad().
BUILTINS = tuple(sorted({name for name, opdef in REGISTRY.items() if opdef.public} | set(INITIALIZERS)
                        | set(LANGUAGE_CALLS)))

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"   # the grammar's NAME: ASCII only
_CALL = r"(?=[ \t\f]*\()"
_NUMBER = r"([0-9]+(\.[0-9]+)?|\.[0-9]+)([eE][+-]?[0-9]+)?"


class NNLexer(RegexLexer):
    """The nncompile model language (.nn)."""

    name = "nn"
    aliases = ["nn", "nncompile"]
    filenames = ["*.nn"]
    mimetypes = ["text/x-nncompile"]
    url = "https://pypi.org/project/nncompile/"
    version_added = ""

    tokens = {
        "root": [
            (r"#[^\n]*", Comment.Single),
            (r"\n", Whitespace),
            (r"[ \t\f\r]+", Whitespace),
            (r"\\[ \t]*\r?\n", Text),   # a line continued on the next
            (r'"[^"\n]*"', String.Double),
            (rf"(layer)([ \t\f]+)({_NAME})", bygroups(Keyword.Declaration, Whitespace, Name.Function)),
            (rf"(import)([ \t\f]+)({_NAME})\b", bygroups(Keyword.Namespace, Whitespace, Name.Namespace)),
            (r"\bimport\b", Keyword.Namespace),   # import "layers.nn"
            (words(DECLARATIONS, prefix=r"\b", suffix=r"\b"), Keyword.Declaration),
            (words(STATEMENTS, prefix=r"\b", suffix=r"\b"), Keyword),
            (words(TYPES, prefix=r"\b", suffix=r"\b"), Keyword.Type),
            (words(CONSTANTS, prefix=r"\b", suffix=r"\b"), Keyword.Constant),
            (words(BUILTINS, prefix=r"\b", suffix=r"\b" + _CALL), Name.Builtin),
            (_NAME + _CALL, Name.Function),
            (_NAME, Name),
            # After a name, ".1" is a member (body.1.W), not a number: the lookbehind keeps it apart.
            (r"(?<![A-Za-z0-9_)\]])" + _NUMBER.replace("(", "(?:"), Number.Float),
            (r"->|\*\*|[<>=!]=|[-+*/@=<>]", Operator),
            (r"\.T(?![A-Za-z0-9_])", Operator),   # x.T, the transpose (x.Tail is a member)
            (r"\.\.\.|[()\[\]{},;:.]", Punctuation),
        ],
    }

    def get_tokens_unprocessed(self, text, stack=("root",)):
        """Whole numbers as Number.Integer, the rest as Number.Float (one pattern finds both)."""
        for index, token, value in super().get_tokens_unprocessed(text, stack):
            if token is Number.Float and value.isdigit():
                token = Number.Integer
            yield index, token, value
