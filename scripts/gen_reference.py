"""Regenerate the reference tables of docs/language.md from the code itself.

The op tables come from the op registry (nncompile.ops.REGISTRY: each public op's doc and
example), the initialiser table from nncompile.initializers, and the layer table from the
standard library's own comments, so the documentation cannot drift from what compiles.

    python scripts/gen_reference.py           # rewrite the generated section in place
    python scripts/gen_reference.py --check   # exit 1 if it is out of date (tests/test_docs.py)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nncompile.elaborate import STDLIB  # noqa: E402
from nncompile.initializers import INITIALIZERS  # noqa: E402
from nncompile.ops import REGISTRY, OpDef  # noqa: E402

DOC = ROOT / "docs" / "language.md"
BEGIN, END = "<!-- BEGIN GENERATED: scripts/gen_reference.py -->", "<!-- END GENERATED -->"

# Sections of the op reference, in reading order; a public op not listed lands in "Other ops".
SECTIONS = {
    "Arithmetic": ["add", "sub", "mul", "div", "pow", "matmul", "maximum", "minimum", "exp", "log", "sqrt", "abs"],
    "Activations": ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus", "gelu", "maxout", "softmax",
                    "log_softmax"],
    "Reductions, shapes and indices": ["sum", "mean", "max", "reshape", "transpose", "concat", "arange"],
    "Losses": ["softmax_cross_entropy", "svm_loss", "sigmoid_cross_entropy", "mse"],
    "Regularisation": ["l1", "l2", "elastic_net", "dropout"],
    "Statistics, comparisons and selection": ["min", "var", "std", "where", "clip", "argmax", "one_hot"],
}
OPERATORS = {"add": "x + t", "sub": "x - t", "mul": "x * t", "div": "x / t", "pow": "x ** t", "matmul": "x @ W"}


def _cell(text: str) -> str:
    """Text for one cell of a Markdown table: on one line (a signature may wrap), pipes escaped."""
    return re.sub(r"\s*\n\s*", " ", text).replace("|", "\\|")


def signature(opdef: OpDef) -> str:
    """``svm_loss(scores, y, delta=1.0)``: operand names from the op's example, then its attributes."""
    match = re.search(rf"\b{opdef.name}\(([^)]*)\)", opdef.example)
    given = [a.strip() for a in match.group(1).split(",")] if match else []
    positional = [a for a in given if "=" not in a]
    if opdef.arity < 0:
        operands = [positional[0] if positional else "x", "..."]
    else:
        operands = positional[:opdef.arity] or (["x"] if opdef.arity == 1 else ["a", "b", "c"][:opdef.arity])
    attrs = [k if v is None else f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in opdef.attrs]
    text = f"{opdef.name}({', '.join(operands + attrs)})"
    return f"`{OPERATORS[opdef.name]}` or `{text}`" if opdef.name in OPERATORS else f"`{text}`"


def op_tables() -> list[str]:
    public = [name for name, d in REGISTRY.items() if d.public]
    listed = [n for names in SECTIONS.values() for n in names]
    sections = dict(SECTIONS)
    rest = [n for n in public if n not in listed]
    if rest:
        sections["Other ops"] = rest
    lines: list[str] = []
    for title, names in sections.items():
        lines += [f"#### {title}", "", "| op | computes | example |", "|---|---|---|"]
        for name in names:
            opdef = REGISTRY[name]
            notes = []
            if opdef.scalar:
                notes.append("fused")
            if opdef.dispatch:
                notes.append("dispatches on its operands' dtype")
            extra = f" *({', '.join(notes)})*" if notes else ""
            lines.append(f"| {_cell(signature(opdef))} | {_cell(opdef.doc)}{extra} | `{_cell(opdef.example)}` |")
        lines.append("")
    return lines


def initializer_table() -> list[str]:
    groups: dict[tuple, list[str]] = {}
    for name, spec in INITIALIZERS.items():
        groups.setdefault((spec.doc, spec.args), []).append(name)
    lines = ["| initialiser | draws | arguments (defaults) |", "|---|---|---|"]
    for (doc, args), names in groups.items():
        spelled = " / ".join(f"`{n}()`" for n in names)
        arguments = ", ".join(f"{k}={v:g}" for k, v in args) or "none"
        lines.append(f"| {spelled} | {_cell(doc)} | {arguments} |")
    return lines + [""]


def layer_table() -> list[str]:
    """Each ``layer`` of stdlib/nn.nn with the comment block above it."""
    text = (STDLIB / "nn.nn").read_text(encoding="utf-8")
    lines = ["| layer | what it does |", "|---|---|"]
    for match in re.finditer(r"((?:^#[^\n]*\n)+)layer (\w+\([^)]*\)(?: -> \[[^\]]*\])?)", text, flags=re.M):
        comment = " ".join(line.lstrip("# ").strip() for line in match.group(1).splitlines())
        lines.append(f"| `{_cell(match.group(2))}` | {_cell(comment)} |")
    return lines + [""]


def reference() -> str:
    parts = [BEGIN, "", "### Ops", "",
             "Every op the language can call, generated from the op registry. Each one has a float64 "
             "finite-difference gradient check generated from the same entry (tests/test_ops.py). Attributes "
             "shown without a default are required, except `axis`, which defaults to every axis. Ops marked "
             "*fused* are elementwise with a C scalar form: the CuPy backend merges chains of them into one "
             "GPU kernel.", "",
             *op_tables(),
             "### Initialisers", "",
             "Fan-in is the product of all dims but the last, fan-out the last dim; a param's random stream "
             "is keyed by its name and the seed of `init_params(seed)`.", "",
             *initializer_table(),
             "### Standard library layers (`import nn`)", "",
             *layer_table(), END]
    return "\n".join(parts)


def updated(text: str) -> str:
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + reference() + text[stop:]


def main(argv: list[str]) -> int:
    text = DOC.read_text(encoding="utf-8")
    new = updated(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOC} is out of date: run python scripts/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
