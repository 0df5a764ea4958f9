"""docs/language.md cannot drift: its reference tables are regenerated from the registry and
compared, every op's one-line example compiles, every `nn` block on the page compiles, and
every statement of the grammar is documented."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from nncompile.compiler import compile_file
from nncompile.elaborate import STDLIB, elaborate_file
from nncompile.initializers import INITIALIZERS
from nncompile.ops import REGISTRY

from conftest import ROOT, write_nn

DOC = ROOT / "docs" / "language.md"
TEXT = DOC.read_text(encoding="utf-8")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_reference_is_up_to_date() -> None:
    assert _generator().updated(TEXT) == TEXT, "docs/language.md is stale: run python scripts/gen_reference.py"



def test_every_row_of_the_generated_tables_is_one_line() -> None:
    """A wrapped signature (batchnorm2d's) once split its row and broke the Markdown table."""
    lines = _generator().reference().splitlines()
    broken = [line for before, line in zip(lines, lines[1:]) if before.startswith("|") and line.strip()
              and not (line.startswith("|") and line.endswith("|"))]
    assert sum(line.startswith("| `") for line in lines) > 50 and not broken, broken

def test_every_public_op_initialiser_and_layer_is_documented() -> None:
    for name, opdef in REGISTRY.items():
        if opdef.public:
            assert opdef.doc and opdef.example, f"op {name} needs a doc (its formula) and a one-line example"
            assert f"`{name}(" in TEXT, f"op {name} is missing from docs/language.md"
    for name in INITIALIZERS:
        assert f"`{name}()`" in TEXT, f"initialiser {name} is missing from docs/language.md"
    for layer in re.findall(r"^layer (\w+)\(", (STDLIB / "nn.nn").read_text(), flags=re.M):
        assert f"`{layer}(" in TEXT, f"standard-library layer {layer} is missing from docs/language.md"


def test_every_statement_of_the_grammar_is_documented() -> None:
    grammar = (ROOT / "grammar" / "nn.lark").read_text()
    keywords = set(re.findall(r'^\w+_stmt: "(\w+)"', grammar, flags=re.M)) | {"layer", "return", "train", "eval",
                                                                            "repeat", "as"}
    assert keywords >= {"const", "input", "param", "state", "update", "output", "minimize", "import", "dtype"}
    for word in keywords:
        assert f"`{word}" in TEXT, f"the '{word}' statement is not documented"


# Inputs every op example may use: x and t alike, W a weight, y labels, scores [N, C], cond a mask.
PRELUDE = """
input x: float[N, 6]
input t: float[N, 6]
input W: float[6, 6]
input W2: float[6]
input y: int[N]
input scores: float[N, 6]
input cond: float[N, 6]
input images: float[N, 3, 8, 8]
input filters: float[4, 3, 3, 3]
"""


@pytest.mark.parametrize("name", [n for n, d in REGISTRY.items() if d.example])
def test_each_ops_example_compiles(name: str, tmp_path: Path) -> None:
    example = REGISTRY[name].example
    target = example.split("=", 1)[0].strip()
    path = write_nn(tmp_path, "example.nn", f"{PRELUDE}\n{example}\noutput {target}\n")
    compile_file(path)


BLOCKS = re.findall(r"```nn\n(.*?)```", TEXT, flags=re.S)


def test_the_page_has_models() -> None:
    assert len(BLOCKS) >= 15


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_nn_block_on_the_page_compiles(index: int, tmp_path: Path) -> None:
    path = write_nn(tmp_path, f"block{index}.nn", BLOCKS[index])
    elaborate_file(path)
    compile_file(path)
