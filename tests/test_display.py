"""nncompile.render(...) and what a notebook shows: a Diagram is the diagram `nncompile render`
draws (the same DOT text, byte for byte), shown as SVG by Jupyter; an Evaluation shows as its
diagram; a compiled module as a table of its inputs, params and outputs. Nothing from the .nn
file reaches the markup unescaped. (The %%nn magic is tests/test_notebook.py.)"""
from __future__ import annotations

import re
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest

import nncompile
from nncompile import NNError
from nncompile.compiler import compile_and_load, compile_file, load_module
from nncompile.display import Diagram
from nncompile.evaluate import evaluate_file
from nncompile.render import to_dot

from conftest import EXAMPLES, ROOT, write_nn

CIRCUIT = EXAMPLES / "circuit.nn"
HOSTILE = "</script><img src=x onerror=alert(1)>"
SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(svg: str) -> list[str]:
    """The words Graphviz drew: every <text> element's content."""
    return ["".join(t.itertext()).strip() for t in ElementTree.fromstring(svg).iter(f"{SVG}text")]


def test_render_draws_the_lecture_circuit_with_its_numbers() -> None:
    texts = svg_texts(nncompile.render(CIRCUIT).svg())
    # the slide: q = 3 and f = -12 forward; -4 on x, y and q, 3 on z, 1 on f backward
    assert {"q = 3", "f = -12", "-2", "5", "1"} <= set(texts)
    assert texts.count("-4") == 4 and texts.count("3") == 1   # z's value -4 and x, y, q's gradient -4; dz = 3


def test_the_diagram_is_the_one_nncompile_render_writes(run_cli, tmp_path: Path) -> None:
    done = run_cli("render", CIRCUIT, "-o", "c.dot", "--set", "x=3", "--seed", "1", "--rankdir", "TB")
    assert done.returncode == 0, done
    diagram = nncompile.render(CIRCUIT, sets={"x": 3}, seed=1, rankdir="TB")
    assert diagram.source == (tmp_path / "c.dot").read_text(encoding="utf-8")
    assert "f = -32" in svg_texts(diagram.svg())   # (3 + 5) * -4


def test_a_trained_model_is_drawn_as_render_draws_it_from_params_and_data(run_cli, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("sklearn", reason="the digits data set comes with the train extra (scikit-learn)")
    model = EXAMPLES / "digits_mlp.nn"
    params = {name: value * 3 for name, value in compile_and_load(model).init_params(7).items()}
    np.savez(tmp_path / "p.npz", **params)
    done = run_cli("render", model, "--params", "p.npz", "--data", "digits", "--batch", "2", "--mode", "eval",
                   "-o", "t.dot")
    assert done.returncode == 0, done
    monkeypatch.chdir(tmp_path)
    diagram = nncompile.render(model, params="p.npz", data="digits", batch=2, mode="eval")
    assert diagram.source == (tmp_path / "t.dot").read_text(encoding="utf-8")
    assert diagram.where in done.stderr
    assert diagram.where.startswith("eval mode: dropout off") and "the first 2 examples of" in diagram.where
    with pytest.raises(NNError, match="--batch, --index and --map pick examples of --data"):
        nncompile.render(model, batch=2)


def test_nncompile_render_is_still_the_rendering_module() -> None:
    from nncompile import render

    import nncompile.render as module
    assert render is module is sys.modules["nncompile.render"]
    assert render.to_dot is to_dot and callable(render)
    assert isinstance(render(CIRCUIT), Diagram)


def test_source_text_is_drawn_as_the_same_file_would_be(tmp_path: Path) -> None:
    text = CIRCUIT.read_text(encoding="utf-8")
    path = tmp_path / "model.nn"   # the name render gives text: the tooltips say model.nn:7
    path.write_text(text, encoding="utf-8")
    assert nncompile.render(text).source == nncompile.render(path).source == nncompile.render(str(path)).source


def _temporary_folders() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("nncompile-*")}


def test_an_error_in_source_text_names_the_text_never_a_temporary_file() -> None:
    before = _temporary_folders()
    with pytest.raises(NNError) as caught:
        nncompile.render("input x = 2\ninput W: float[3, 4]\ny = x @ W\noutput y\n")
    assert caught.value.format().splitlines() == [
        "<string>:3:5: error: cannot multiply [] @ [3, 4]: '@' needs tensors, not scalars; use '*'",
        "    y = x @ W",
        "        ^~~~~"]
    assert _temporary_folders() == before, "the temporary folder was left behind"


def test_a_missing_model_file_is_no_such_file_not_a_syntax_error() -> None:
    with pytest.raises(NNError, match="no such file") as caught:
        nncompile.render("missing.nn")
    assert caught.value.format() == "nncompile: error: missing.nn: no such file"


def test_values_are_numbers_lists_arrays_or_the_text_set_takes() -> None:
    by_number = nncompile.render(CIRCUIT, sets={"x": 3, "z": np.float64(-4)}).source
    assert nncompile.render(CIRCUIT, sets={"x": "3"}).source == by_number
    model = "input x: float[N, 2]\nparam W: [2, 1] = ones()\nf = sum(x @ W)\nminimize f\n"
    drawn = nncompile.render(model, sets={"x": np.array([[1.0, 2.0], [3.0, 4.0]])})
    assert "f = 10" in svg_texts(drawn.svg()) and "[N=2, 2]" in drawn.source
    with pytest.raises(NNError, match="the model has no input, param or dim of that name"):
        nncompile.render(CIRCUIT, sets={"w": 1})


def test_an_evaluation_is_drawn_as_it_is_and_options_that_would_change_it_are_refused() -> None:
    ev = evaluate_file(CIRCUIT)
    assert nncompile.render(ev).source == to_dot(ev)
    assert nncompile.render(ev, rankdir="TB").source == to_dot(ev, "TB")
    with pytest.raises(NNError, match="^nncompile: error: sets, seed cannot change an Evaluation"):
        nncompile.render(ev, sets={"x": 1}, seed=2)


def test_save_writes_each_format_whole_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    diagram = nncompile.render(CIRCUIT)
    assert diagram.save(tmp_path / "c.dot").read_text(encoding="utf-8") == diagram.source
    assert (tmp_path / "c.png").exists() is False and diagram.save(tmp_path / "c.png").read_bytes()[:8] == \
        b"\x89PNG\r\n\x1a\n"
    assert ElementTree.parse(diagram.save(tmp_path / "c.svg")).getroot().tag == f"{SVG}svg"
    assert diagram.save(tmp_path / "c.pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(NNError, match=r"unknown format '\.jpg'; use one of \.svg, \.png, \.pdf, \.dot"):
        diagram.save(tmp_path / "c.jpg")
    assert not (tmp_path / "c.jpg").exists()


def test_in_a_notebook_a_diagram_is_svg_and_as_text_one_short_line() -> None:
    diagram = nncompile.render(CIRCUIT)
    bundle = diagram._repr_mimebundle_()
    assert set(bundle) == {"image/svg+xml", "text/plain"}
    assert ElementTree.fromstring(bundle["image/svg+xml"]).tag == f"{SVG}svg"
    assert diagram._repr_svg_() == bundle["image/svg+xml"]
    assert bundle["text/plain"] == repr(diagram) == (
        "<Diagram of circuit.nn: 5 nodes, rankdir auto; .source is the DOT text, .svg() and .save(path) draw it>")


def test_without_graphviz_a_notebook_shows_why_instead_of_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from nncompile import render

    monkeypatch.setattr(render.shutil, "which", lambda *a, **k: None)
    diagram = nncompile.render(CIRCUIT)
    bundle = diagram._repr_mimebundle_()
    assert list(bundle) == ["text/plain"]
    assert bundle["text/plain"].startswith(repr(diagram) + "\nnncompile: error: cannot write ")
    assert "apt-get install graphviz" in bundle["text/plain"]
    assert diagram._repr_svg_() is None
    assert diagram.source.startswith("digraph")   # the DOT text needs no Graphviz


def test_an_evaluation_shows_as_its_diagram_and_reads_as_one_line() -> None:
    ev = evaluate_file(CIRCUIT)
    assert "f = -12" in svg_texts(ev._repr_mimebundle_()["image/svg+xml"])
    assert repr(ev) == ("<Evaluation of circuit.nn in train mode: f = -12; 5 named values, gradients of 3 inputs "
                        "and params; in a notebook it shows as its diagram>")
    two_layer = repr(evaluate_file(EXAMPLES / "two_layer.nn"))
    assert re.fullmatch(r"<Evaluation of two_layer\.nn in train mode: loss = \d\.\d+; .*>", two_layer)
    assert "\n" not in two_layer and len(two_layer) < 200


class _Table(HTMLParser):
    """The rows of an HTML table (th cells name a section that spans rows), and every tag seen."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.tags: set[str] = set()
        self.attributes: set[str] = set()
        self.caption = ""
        self.section = ""
        self._cell: list[str] | None = None
        self._in_caption = False

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "caption":
            self._in_caption = True

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            if tag == "th" and self.rows and len(self.rows) > 1:
                self.section = text
            else:
                self.rows[-1].append(text)
            self._cell = None
        elif tag == "tr" and len(self.rows) > 1:
            self.rows[-1].insert(0, self.section)
        elif tag == "caption":
            self._in_caption = False

    def handle_data(self, data) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_caption:
            self.caption += data


def table_of(module) -> _Table:
    table = _Table()
    table.feed(module._repr_html_())
    return table


def test_a_module_shows_as_a_table_of_its_inputs_params_and_outputs() -> None:
    table = table_of(compile_and_load(EXAMPLES / "two_layer.nn"))
    assert table.rows[0] == ["", "name", "shape", "dtype", "entries"]
    assert table.rows[1:] == [   # the CIFAR-10 net of the notes: 3072 -> 100 -> 10
        ["inputs", "X", "[N, 3072]", "float32", ""],
        ["inputs", "y", "[N]", "int64", ""],
        ["params", "fc1.W", "[3072, 100]", "float32", "307,200"],
        ["params", "fc1.b", "[100]", "float32", "100"],
        ["params", "fc2.W", "[100, 10]", "float32", "1,000"],
        ["params", "fc2.b", "[10]", "float32", "10"],
        ["outputs", "scores", "[N, 10]", "float32", ""],
        ["outputs", "loss (loss)", "scalar", "float32", ""],
    ]
    assert table.caption == f"two_layer: compiled by nncompile, {3072 * 100 + 100 + 100 * 10 + 10:,} params"
    float64 = table_of(compile_and_load(CIRCUIT, dtype="float64"))
    assert [row[3] for row in float64.rows[1:]] == ["float64"] * 4


def test_loading_adds_the_table_and_nothing_else_to_the_compiled_module() -> None:
    source = compile_file(CIRCUIT)
    module = load_module(source, "circuit")
    plain: dict = {"__name__": "circuit"}
    exec(compile(source, "<circuit>", "exec"), plain)   # noqa: S102 - the module as Python itself loads it
    machinery = {"__doc__", "__file__", "__loader__", "__package__", "__spec__"}
    assert set(vars(module)) - set(plain) - machinery == {"_repr_html_"}
    assert compile_file(CIRCUIT) == source   # the emitted text is untouched: byte for byte the same


def test_names_from_the_file_reach_neither_the_svg_nor_the_table_as_markup(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "<img src=x onerror=alert(1)>.nn", f"""
        input x = 2   # {HOSTILE}
        param w = 3
        f = x * w   # {HOSTILE}
        output f
        """)
    svg = nncompile.render(path).svg()
    root = ElementTree.fromstring(svg)   # well-formed, so no tag was broken open
    assert not [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] in ("img", "script")]
    assert not [e for e in root.iter() if "onerror" in e.attrib]
    tooltips = [value for e in root.iter() for key, value in e.attrib.items() if key.endswith("title")]
    assert any(HOSTILE in tip for tip in tooltips)   # there, as the text of a tooltip
    assert "<img src=x onerror=alert(1)>.nn" in svg_texts(svg)   # the legend names the file, as text
    table = table_of(compile_and_load(path))
    assert table.tags <= {"table", "caption", "thead", "tbody", "tr", "th", "td", "code"}
    assert table.attributes <= {"rowspan", "style"}
    assert table.caption.startswith("<img src=x onerror=alert(1)>: compiled by nncompile")   # shown, as text


def notebook_section() -> str:
    """The *In a notebook* section of docs/rendering.md."""
    text = (ROOT / "docs" / "rendering.md").read_text(encoding="utf-8")
    return re.split(r"\n## ", text.split("\n## In a notebook\n", 1)[1])[0]


def test_the_python_of_docs_rendering_md_in_a_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "examples").symlink_to(EXAMPLES)
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", notebook_section(), flags=re.S)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/rendering.md", "exec"), namespace)   # noqa: S102 - the page's own example
    assert capsys.readouterr().out.startswith("<Diagram of circuit.nn: 5 nodes, rankdir auto;")
    assert "f = -32" in svg_texts(namespace["svg_text"]) and (tmp_path / "circuit.png").exists()
    assert isinstance(namespace["neuron"], Diagram)


def test_source_text_imports_the_standard_library_but_no_file(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = nncompile.render("import nn\ninput x: float[N, 3]\ny = dense(x, out=2)\nloss = sum(y)\nminimize loss\n")
    assert "dense" in drawn.source
    write_nn(tmp_path, "lib.nn", "layer twice(x: [B, K]) -> [B, K] {\n    return 2 * x\n}\n")
    monkeypatch.chdir(tmp_path)   # lib.nn is right here, but the text is no file beside it
    with pytest.raises(NNError) as caught:
        nncompile.render('import "lib.nn"\ninput x: float[N, 3]\ny = twice(x)\noutput y\n')
    assert caught.value.format().splitlines()[0] == (
        '<string>:1:1: error: cannot import "lib.nn": there is no file lib.nn; <string> is compiled on its own, '
        "so it can import the standard library but no file: write the model to a file beside the ones it imports")
