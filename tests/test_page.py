"""The interactive page (``render -o model.html``) as a file: one self-contained HTML file that
can fetch nothing, whose JSON describes every drawn node, and where no name from a .nn file
becomes markup. tests/test_page_browser.py opens it in a real browser."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from nncompile.evaluate import evaluate_file
from nncompile.page import page_html, write_page
from nncompile.page.builder import script_json, summary

from conftest import EXAMPLES, write_nn

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
pytestmark = needs_dot


class Parsed(HTMLParser):
    """Every tag and attribute of a page, and the text of each <script>, as a browser reads them."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in_script: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_data(self, data):
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None


def page_of(path: Path, **options) -> str:
    return page_html(evaluate_file(path), **options)


def data_of(page: str) -> dict:
    (blob,) = [text for attrs, text in Parsed(page).scripts if attrs.get("type") == "application/json"]

    def no_nan(name: str):
        raise AssertionError(f"{name} is not JSON: JSON.parse would fail")
    return json.loads(blob, parse_constant=no_nan)


def named(data: dict, name: str) -> dict:
    """The first node (in graph order) the file calls ``name``."""
    return next(n for n in data["nodes"].values() if n["name"] == name)


@pytest.mark.parametrize("example", ["circuit.nn", "neuron.nn", "two_layer.nn", "mlp.nn"])
def test_the_page_is_one_file_that_fetches_nothing(example: str) -> None:
    page = page_of(EXAMPLES / example)
    assert not re.search(r"(?i)https?:|//[a-z]", page.replace("// ", "")), "a URL in the page"
    parsed = Parsed(page)
    for tag, attrs in parsed.tags:
        for attr, value in attrs.items():
            assert not attr.startswith("on"), f"inline handler <{tag} {attr}>: the CSP would block it"
            if attr in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
                assert (value or "").startswith("data:"), f"<{tag} {attr}={value!r}> points outside the file"
    assert {tag for tag, _ in parsed.tags} & {"iframe", "object", "embed", "img", "link"} <= {"link"}
    (csp,) = [a["content"] for t, a in parsed.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    policy = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert policy["default-src"] == "'none'" and policy["base-uri"] == "'none'"
    assert "unsafe" not in csp and "*" not in csp and "http" not in csp
    code = [text for attrs, text in parsed.scripts if "type" not in attrs]
    assert len(code) == 1 and [a.get("type") for a, _ in parsed.scripts] == ["application/json", None]
    digest = base64.b64encode(hashlib.sha256(code[0].encode()).digest()).decode()
    assert policy["script-src"] == f"'sha256-{digest}'"          # the one inline script, by its hash
    (style,) = re.findall(r"<style>(.*?)</style>", page, flags=re.S)
    assert policy["style-src"] == "'sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() + "'"
    assert page.index("Content-Security-Policy") < page.index("<style>") < page.index("<script")


def test_the_json_has_every_drawn_node_with_its_shape_dtype_and_source_line() -> None:
    path = EXAMPLES / "two_layer.nn"
    lines = path.read_text(encoding="utf-8").split("\n")
    page = page_of(path)
    data = data_of(page)
    drawn = set(re.findall(r"<title>n(\d+)</title>", page))   # Graphviz's own node titles
    assert drawn and drawn <= set(data["nodes"])
    assert {f"n{n}" for n in drawn} <= set(data["elements"])
    for node in data["nodes"].values():
        assert node["shape"].startswith("[") and node["dtype"] in ("float32", "float64", "int64", "bool")
        if node["source"] is not None:
            assert node["source"]["text"] == lines[node["source"]["line"] - 1]
    W = named(data, "fc1.W")
    assert (W["shape"], W["dtype"], W["kind"], W["layer"], W["layer_type"]) == ("[3072, 100]", "float32", "param",
                                                                               "fc1", "affine")
    assert W["source"]["text"].strip() == "param W: [K, out] = he()"
    X = named(data, "X")
    assert X["shape"] == "[N=4, 3072]" and X["source"]["line"] == 6
    assert named(data, "y")["dtype"] == "int64" and named(data, "y")["grad"].startswith("no gradient")
    assert data["outputs"]["scores"] == data["elements"]["out0"]
    assert data["target"] == "loss" and data["file"] == "two_layer.nn"


def test_the_panel_numbers_are_the_lectures() -> None:
    """The circuit of the CS231n lecture: q = 3, f = -12; df/dx = df/dy = -4, df/dz = 3."""
    data = data_of(page_of(EXAMPLES / "circuit.nn"))
    expect = {"x": (-2, -4), "y": (5, -4), "z": (-4, 3), "q": (3, -4), "f": (-12, 1)}
    for name, (value, grad) in expect.items():
        node = named(data, name)
        assert node["value"]["numbers"] == [value] and node["grad"]["numbers"] == [grad], name
        assert node["shape"] == "[]"
    assert named(data, "q")["source"]["text"] == "q = x + y" and named(data, "q")["op"] == "add"


def test_statistics_histograms_and_small_tensors() -> None:
    rng = np.random.default_rng(3)
    big = rng.standard_normal((40, 30)).astype(np.float32)
    st = summary(big)
    assert st["size"] == 1200 and st["shape"] == [40, 30] and st["dtype"] == "float32"
    assert np.isclose(st["mean"], big.mean(dtype=np.float64), rtol=1e-6) and st["min"] == float(big.min())
    assert np.isclose(st["std"], big.std(dtype=np.float64), rtol=1e-6)
    assert np.isclose(st["norm"], np.linalg.norm(big.astype(np.float64)), rtol=1e-6)
    counts, edges = np.histogram(big.astype(np.float64), bins=24)
    assert st["histogram"]["counts"] == counts.tolist() and sum(st["histogram"]["counts"]) == 1200
    assert "numbers" not in st                                  # 1200 values: statistics only
    small = summary(np.array([[1.5, -np.inf], [np.nan, 0.0]], dtype=np.float32))
    assert small["numbers"] == [1.5, "-inf", "nan", 0.0]
    assert (small["nan"], small["neginf"], small["posinf"], small["zeros"]) == (1, 1, 0, 1)
    assert small["min"] == 0.0 and small["max"] == 1.5            # over the finite entries
    assert summary(np.float32(0.7310586))["numbers"] == [0.7310586]   # float32's shortest repr, not 0.73105859...
    assert len(summary(np.arange(16))["numbers"]) == 16 and "numbers" not in summary(np.arange(17))
    json.loads(script_json(small), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def test_a_4d_value_carries_its_first_examples_feature_maps() -> None:
    rng = np.random.default_rng(4)
    images = rng.standard_normal((3, 20, 5, 6)).astype(np.float32)
    images[0, 1] = 2.0                                              # a constant channel
    maps = summary(images)["maps"]
    assert (maps["of"], maps["height"], maps["width"], len(maps["pixels"])) == (20, 5, 6, 16)   # 16 shown
    first = images[0, 0].astype(np.float64)
    want = np.round((first - first.min()) / (first.max() - first.min()) * 255).astype(int)
    assert maps["pixels"][0] == want.ravel().tolist() and min(maps["pixels"][0]) == 0 and max(maps["pixels"][0]) == 255
    assert maps["lo"][0] == float(images[0, 0].min()) and maps["hi"][0] == float(images[0, 0].max())
    assert set(maps["pixels"][1]) == {128} and maps["lo"][1] == maps["hi"][1] == 2.0
    assert "maps" not in summary(images[0]) and "maps" not in summary(np.zeros((2, 3, 1, 1)))
    assert "maps" not in summary(np.zeros((1, 1, 65, 64)))          # too big to draw: statistics only
    data = data_of(page_of(EXAMPLES / "digits_cnn.nn"))
    drawn = [n for n in data["nodes"].values() if n["value"] and "maps" in n["value"]]
    assert {tuple(n["value"]["shape"][1:]) for n in drawn} >= {(1, 8, 8), (16, 8, 8), (16, 4, 4), (32, 2, 2)}


def test_non_finite_values_reach_the_panel_as_counts(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "bad.nn", """
        input x: float[4] = [1, 0, -1, 2]
        l = log(x)
        loss = sum(l)
        minimize loss
    """)
    data = data_of(page_of(path))
    l = named(data, "l")["value"]
    assert (l["nan"], l["neginf"]) == (1, 1) and l["numbers"][1] == "-inf" and l["numbers"][2] == "nan"


HOSTILE = '</script><img src=x onerror=alert(1)><!--<script>alert(2)</script>&amp;\u2028"\''


def test_hostile_names_comments_and_file_names_stay_text(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "<img src=x onerror=alert(3)>.nn", f"""
        input x = -2  # {HOSTILE}
        input y = 5
        q = x + y  # {HOSTILE}
        output q
    """)
    ev = evaluate_file(path)
    G = ev.program.graph
    for n in ev.values:
        if G[n].name in ("x", "q"):
            G.set(n, name=HOSTILE)
    page = page_html(ev)
    parsed = Parsed(page)
    tags = [tag for tag, _ in parsed.tags]
    assert "img" not in tags and tags.count("script") == 2        # nothing the names hold became an element
    assert not [a for _, attrs in parsed.tags for a in attrs if a.startswith("on")]
    assert page.count("</script>") == 2 and "<!--" not in page and "<img" not in page
    data = data_of(page)
    names = {node["name"] for node in data["nodes"].values()}
    assert HOSTILE in names                                      # shown literally, as text, by page.js
    q = next(n for n in data["nodes"].values() if n["op"] == "add")
    assert q["source"]["text"] == f"q = x + y  # {HOSTILE}"
    assert data["file"] == path.name
    (title,) = re.findall(r"<title>(.*?)</title>", page.split("<body>")[0])
    assert title == "&lt;img src=x onerror=alert(3)&gt;.nn · nncompile"


def test_the_health_overlay_hook() -> None:
    ev = evaluate_file(EXAMPLES / "two_layer.nn")
    W = ev.model.params["fc1.W"]
    health = {W: {"level": "bad", "metric": "update/weight", "value": 0.05, "message": "above 1e-2: too fast"}}
    data = data_of(page_html(ev, health=health))
    assert data["health"] is True
    assert data["nodes"][str(W)]["health"] == {"level": "bad", "metric": "update/weight", "value": 0.05,
                                               "message": "above 1e-2: too fast"}
    assert sum("health" in n for n in data["nodes"].values()) == 1
    assert data_of(page_html(ev))["health"] is False
    with pytest.raises(ValueError, match="level must be one of ok, warn, bad"):
        page_html(ev, health={W: {"level": "terrible", "metric": "m", "value": 1.0, "message": ""}})


def test_a_collapsed_layer_box_of_a_big_graph_lists_its_members() -> None:
    ev = evaluate_file(EXAMPLES / "two_layer.nn")
    data = data_of(page_html(ev, max_nodes=5))
    assert {layer["name"] for layer in data["layers"].values()} == {"fc1", "fc2"}
    fc1 = next(layer for layer in data["layers"].values() if layer["name"] == "fc1")
    assert ev.model.params["fc1.W"] in fc1["members"] and fc1["type"] == "affine"


def test_the_page_is_deterministic() -> None:
    assert page_of(EXAMPLES / "neuron.nn") == page_of(EXAMPLES / "neuron.nn")


def test_render_writes_the_page_by_its_suffix(run_cli, tmp_path: Path) -> None:
    os.umask(umask := os.umask(0o022))
    done = run_cli("render", EXAMPLES / "neuron.nn", "-o", "n.HTML")
    assert done.returncode == 0, done
    assert "wrote n.HTML; train mode" in done.stderr
    page = (tmp_path / "n.HTML").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and 'id="nn-svg"' in page
    assert (tmp_path / "n.HTML").stat().st_mode & 0o777 == 0o666 & ~umask
    assert data_of(page)["note"].startswith("train mode")
    bad = run_cli("render", EXAMPLES / "neuron.nn", "-o", "n.htm")
    assert bad.returncode == 1 and "or .html for the interactive page" in bad.stderr


def test_trained_params_reach_the_panel(run_cli, tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", w0=np.float32(0.5), w1=np.float32(-1.25), w2=np.float32(2.0))
    done = run_cli("render", EXAMPLES / "neuron.nn", "--params", "p.npz", "--mode", "eval", "-o", "n.html")
    assert done.returncode == 0, done
    data = data_of((tmp_path / "n.html").read_text(encoding="utf-8"))
    assert named(data, "w1")["value"]["numbers"] == [-1.25] and data["mode"] == "eval"
    assert "params from p.npz" in data["note"] or "p.npz" in data["note"]


def test_a_failed_page_leaves_no_file_and_the_old_one_intact(run_cli, tmp_path: Path) -> None:
    (tmp_path / "c.html").write_text("the old page")
    done = run_cli("render", EXAMPLES / "circuit.nn", "-o", "c.html", env={"PATH": ""})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: cannot write c.html" in done.stderr and "apt-get install graphviz" in done.stderr
    assert (tmp_path / "c.html").read_text() == "the old page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.html"]


def test_write_page_returns_the_path(tmp_path: Path) -> None:
    out = write_page(evaluate_file(EXAMPLES / "circuit.nn"), tmp_path / "sub" / "c.html")
    assert out == tmp_path / "sub" / "c.html" and out.read_text(encoding="utf-8").endswith("</html>\n")


def test_the_python_snippet_of_docs_rendering_md_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "rendering.md").read_text(encoding="utf-8")
    section = text[text.index("## The interactive page"):]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (tmp_path / "examples").symlink_to(EXAMPLES)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "docs/rendering.md", "exec"), namespace)
    data = data_of((tmp_path / "two_layer.html").read_text(encoding="utf-8"))
    assert data["nodes"][str(namespace["W"])]["health"]["level"] == "warn" and data["note"] == "initial params"
    assert namespace["text"].startswith("<!DOCTYPE html>")


def test_a_model_without_a_loss_says_why_there_are_no_gradients(tmp_path: Path) -> None:
    path = write_nn(tmp_path, "noloss.nn", """
        input x: float[2] = [1, 2]
        input k: int[2] = [3, 4]
        a = x * 2
        b = x + 1
        output a
        output b
    """)
    data = data_of(page_of(path))
    assert data["target"] is None
    assert named(data, "a")["grad"].startswith("no gradient: the model has no loss")
    assert named(data, "a")["value"]["numbers"] == [2.0, 4.0]


def test_a_diagram_graphviz_cannot_draw_is_an_error_not_a_broken_page(tmp_path, monkeypatch) -> None:
    from nncompile.errors import NNError
    from nncompile.page import builder

    ev = evaluate_file(EXAMPLES / "circuit.nn")
    monkeypatch.setattr(builder.graphviz, "pipe", lambda *a, **k: b'<svg xmlns="http://www.w3.org/2000/svg">&#1;</svg>')
    with pytest.raises(NNError, match="cannot write .*c.html: Graphviz's dot could not draw the diagram"):
        write_page(ev, tmp_path / "c.html")
    assert list(tmp_path.iterdir()) == []
