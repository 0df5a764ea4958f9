"""Rendering: the CS231n convention (value above each wire in green, gradient below in red),
tensor summaries, layer clusters, the missing-Graphviz path, determinism and escaping."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nncompile import render
from nncompile.errors import NNError
from nncompile.evaluate import evaluate_file
from nncompile.render import (
    escape,
    fmt,
    grad_text,
    quote,
    render_file,
    to_dot,
    value_text,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz 'dot' is not installed")

SVG = "{http://www.w3.org/2000/svg}"
GREEN, RED = render.GREEN, render.RED


def evaluation(name: str, **kw):
    return evaluate_file(EXAMPLES / name, **kw)


def svg_nodes(path: Path) -> dict[str, list[tuple[str, str | None, float]]]:
    """Each drawn node's title -> its texts as (text, fill colour, y), from an SVG file."""
    tree = ET.parse(path)  # also proves the SVG is well-formed XML
    nodes: dict[str, list[tuple[str, str | None, float]]] = {}
    for g in tree.iter(f"{SVG}g"):
        if g.get("class") not in ("node", "cluster"):
            continue
        title = g.find(f"{SVG}title").text
        nodes[title] = [(t.text or "", t.get("fill"), float(t.get("y"))) for t in g.iter(f"{SVG}text")]
    return nodes


def wire(nodes, n: int) -> tuple[str, str]:
    """The (green value, red gradient) texts on the wire leaving graph node n; checks that
    the value is drawn above the gradient."""
    texts = nodes[f"v{n}"]
    green = [(t, y) for t, fill, y in texts if fill == GREEN]
    red = [(t, y) for t, fill, y in texts if fill == RED]
    assert len(green) == 1 and len(red) == 1, texts
    assert green[0][1] < red[0][1], "the value must be above the gradient"
    return green[0][0], red[0][0]


@pytest.fixture(scope="module")
def circuit():
    return evaluation("circuit.nn")


@pytest.fixture(scope="module")
def neuron():
    return evaluation("neuron.nn")


@pytest.fixture(scope="module")
def two_layer():
    return evaluation("two_layer.nn")


# ---- the lecture's circuits -----------------------------------------------------------

@needs_dot
def test_circuit_svg_carries_values_and_gradients(circuit, tmp_path):
    out = render_file(circuit, tmp_path / "circuit.svg")
    assert out == tmp_path / "circuit.svg"
    nodes = svg_nodes(out)
    ids = {**circuit.model.inputs, **circuit.model.outputs}
    q = next(n for n in circuit.values if circuit.program.graph[n].name == "q")
    assert wire(nodes, ids["x"]) == ("-2", "-4")
    assert wire(nodes, ids["y"]) == ("5", "-4")
    assert wire(nodes, ids["z"]) == ("-4", "3")
    assert wire(nodes, q) == ("q = 3", "-4")
    assert wire(nodes, ids["f"]) == ("f = -12", "1")      # the final wire shows the seed gradient
    text = out.read_text(encoding="utf-8")
    assert GREEN in text and RED in text
    # the ops and the output are drawn
    labels = {t for texts in nodes.values() for t, _, _ in texts}
    assert {"+", "×", "output ", "x", "y", "z"} <= labels


def test_circuit_dot_without_graphviz(circuit):
    dot = to_dot(circuit)
    assert dot.startswith("digraph nncompile {")
    assert "f = -12" in dot and "q = 3" in dot
    assert f'<FONT COLOR="{GREEN}">-2</FONT>' in dot and f'<FONT COLOR="{RED}">-4</FONT>' in dot


@needs_dot
def test_neuron_shows_each_gate_and_the_lecture_numbers(neuron, tmp_path):
    nodes = svg_nodes(render_file(neuron, tmp_path / "neuron.svg"))
    G = neuron.program.graph
    ops = sorted(render.op_text(G[n]) for n in render.forward_nodes(neuron) if not G[n].is_leaf)
    assert ops == sorted(["×", "×", "+", "+", "−", "exp", "+", "÷"])
    for n in render.forward_nodes(neuron):    # every gate is drawn
        assert f"n{n}" in nodes
    ids = {**neuron.model.inputs, **neuron.model.params, **neuron.model.outputs}

    def numbers(name):
        value, grad = wire(nodes, ids[name])
        return round(float(value.split("=")[-1]), 2), round(float(grad), 2)

    assert numbers("w0") == (2, -0.2)
    assert numbers("x0") == (-1, 0.39)
    assert numbers("w1") == (-3, -0.39)
    assert numbers("x1") == (-2, -0.59)
    assert numbers("w2") == (-3, 0.2)
    assert numbers("f") == (0.73, 1)
    named = {G[n].name: n for n in render.forward_nodes(neuron) if G[n].name}
    for name, value, grad in [("a", -2, 0.2), ("b", 6, 0.2), ("s", 4, 0.2), ("dot", 1, 0.2),
                              ("neg", -1, -0.2), ("e", 0.37, -0.53), ("den", 1.37, -0.53)]:
        ids[name] = named[name]
        assert numbers(name) == (value, grad), name
        assert wire(nodes, named[name])[0].startswith(f"{name} = ")


# ---- tensors, layers, big graphs -------------------------------------------------------

@needs_dot
def test_two_layer_clusters_and_summaries(two_layer, tmp_path):
    dot = to_dot(two_layer)
    assert len(dot) < 40_000, "tensors must be summarised, not listed"
    out = render_file(two_layer, tmp_path / "two_layer.svg")
    nodes = svg_nodes(out)
    clusters = {title: texts for title, texts in nodes.items() if title.startswith("cluster_")}
    labels = [" ".join(t for t, _, _ in texts) for texts in clusters.values()]
    assert any(label.startswith("fc1: affine") and "307,300 params" in label for label in labels), labels
    assert any(label.startswith("fc2: affine") for label in labels), labels
    # the params sit inside their layer's cluster
    assert re.search(rf"subgraph cluster_\d+_fc1 \{{[^}}]*\bn{two_layer.model.params['fc1.W']} \[", dot)
    m = two_layer.model
    value, grad = wire(nodes, m.inputs["X"])
    assert value.startswith("[N=4, 3072] μ") and "σ" in value and grad.startswith("‖g‖")
    value, grad = wire(nodes, m.inputs["y"])
    assert value.startswith("int [N=4]") and grad == "no grad (int)"
    value, grad = wire(nodes, m.loss)
    assert value.startswith("loss = ") and grad == "1"
    value, _ = wire(nodes, m.outputs["scores"])
    assert value.startswith("scores: [N=4, 10]")
    texts = {t for texts in nodes.values() for t, _, _ in texts}
    assert "minimize " in texts and "softmax_cross_entropy" in texts and "relu" in texts


def test_a_conv_layer_is_one_cluster_with_its_kernel_shape_in_the_label(tmp_path):
    path = tmp_path / "cnn.nn"
    path.write_text("import nn\ninput X: float[N, 3, 8, 8]\nh = conv(X, out=4) as c1\n"
                    "g = max_pool2d(conv(h, out=6, k=2, stride=2, padding=0) as c2, 2)\n"
                    "loss = sum(g)\nminimize loss\n")
    dot = to_dot(evaluate_file(path))
    labels = re.findall(r"subgraph (cluster_\d+_\w+) \{\n\s*graph \[label=<<B>([^<]*)</B>", dot)
    assert ("cluster_1_c1", "c1: conv · 3×3 conv 3→4  (112 params)") in labels, labels
    assert ("cluster_2_c2", "c2: conv · 2×2 conv 4→6 (stride 2)  (102 params)") in labels, labels
    # the conv's own nodes sit inside its cluster, the op labelled with its geometry
    assert re.search(r"subgraph cluster_1_c1 \{[^}]*label=<conv2d\(padding=1\)>", dot)
    assert "label=<max_pool2d(2×2)>" in dot


def test_a_pools_label_writes_its_geometry_as_the_file_would():
    from nncompile.ops import REGISTRY

    label = REGISTRY["max_pool2d"].label
    assert label({"kernel": 3, "stride": 2, "padding": 1}) == "max_pool2d(3×3, stride=2, padding=1)"
    assert label({"kernel": (2, 3), "stride": (1, 2), "padding": 0}) == "max_pool2d(2×3, stride=[1, 2])"
    assert REGISTRY["avg_pool2d"].label({"kernel": 2, "stride": None, "padding": 0}) == "avg_pool2d(2×2)"


def test_collapse_above_the_node_budget(two_layer):
    warnings: list[str] = []
    dot = to_dot(two_layer, max_nodes=5, warn=warnings.append)
    assert len(warnings) == 1 and "each layer instance is drawn as one node" in warnings[0]
    assert "cluster_" not in dot                     # no layer clusters left
    for scope, label in (("fc1", "307,300 numbers"), ("fc2", "1,010 numbers")):
        assert re.search(rf"L\d+ \[.*<B>{scope}</B>: affine.*{label}", dot)
    assert f"n{two_layer.model.params['fc1.W']} [" not in dot
    if HAS_DOT:
        subprocess.run(["dot", "-Tsvg"], input=dot.encode(), check=True, capture_output=True)


USED_TWICE = """\
layer scale(x: [B, K], s: []) -> [B, K] {
    return x * s + s * x
}
input x: float[2, 3]
input c: float = 3
h = scale(x, c) as sc
g = scale(h * 2.0, 2.0) as sd
loss = sum(h * h) + sum(g * g)
minimize loss
"""


def test_a_collapsed_layer_gets_one_wire_from_each_value_it_uses(tmp_path):
    """A box hides its ops, so a value or constant it uses twice comes in by one wire; drawn
    node by node, every use is a wire of its own (``h * h`` has two)."""
    model = tmp_path / "twice.nn"
    model.write_text(USED_TWICE)
    ev = evaluate_file(model)

    def edges(dot: str) -> list[str]:
        return [line.strip() for line in dot.splitlines() if " -> " in line]

    collapsed = edges(to_dot(ev, max_nodes=1, warn=lambda _: None))
    assert len(collapsed) == len(set(collapsed)), "one wire per (value, drawn node)"
    c = ev.model.inputs["c"]
    assert f"v{c}:c:e -> L0;" in collapsed                                 # c, used twice in sc
    assert len([e for e in collapsed if "style=dashed" in e and "-> L1 " in e]) == 1   # 2.0, twice in sd
    G = ev.program.graph
    h = next(n for n in render.forward_nodes(ev) if G[n].name == "h")
    square = next(n for n in render.forward_nodes(ev) if G[n].args == (h, h))
    expanded = edges(to_dot(ev))
    assert expanded.count(f"v{h}:c:e -> n{square};") == 2
    assert len([e for e in expanded if e.startswith(f"v{c}:c:e -> ")]) == 2


@needs_dot
def test_repeat_grouped_and_big_graph_collapsed(tmp_path):
    mlp = evaluation("mlp.nn")
    dot = to_dot(mlp, warn=pytest.fail)
    assert "h3: repeat 2 × dense" in dot and "h3.1: dense" in dot and "h3.2: dense" in dot
    big = tmp_path / "big.nn"
    big.write_text((EXAMPLES / "mlp.nn").read_text().replace("repeat 2 dense", "repeat 80 dense"))
    warnings: list[str] = []
    dot = to_dot(evaluate_file(big), warn=warnings.append)
    assert warnings and "drawn as one node" in warnings[0]
    assert "h3.80</B>: dense" in dot
    subprocess.run(["dot", "-Tsvg"], input=dot.encode(), check=True, capture_output=True, timeout=120)


def test_no_loss_says_no_grad(tmp_path):
    model = tmp_path / "noloss.nn"
    model.write_text("input x = 2\ny = x * 3\nz = x + 1\noutput y, z\n")
    dot = to_dot(evaluate_file(model))
    assert dot.count("<I>no grad</I>") == 3          # x, y and z: never a made-up 0
    assert "no gradients: the model has no loss" in dot


# ---- files and Graphviz -----------------------------------------------------------------

def _no_dot(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(render.shutil, "which", lambda *a, **k: None)


def test_dot_output_needs_no_graphviz(circuit, tmp_path, monkeypatch):
    _no_dot(monkeypatch)
    out = render_file(circuit, tmp_path / "g.dot")
    assert out.read_text(encoding="utf-8") == to_dot(circuit)


@pytest.mark.parametrize("ext", [".svg", ".png", ".pdf"])
def test_missing_dot_writes_nothing_and_says_how_to_install(circuit, tmp_path, monkeypatch, ext):
    _no_dot(monkeypatch)
    (tmp_path / "g.dot").write_text("// the user's own graph\n")
    with pytest.raises(NNError) as info:
        render_file(circuit, tmp_path / f"g{ext}")
    message = str(info.value)
    assert "not on PATH" in message and "apt-get install graphviz" in message
    assert "brew install graphviz" in message and "conda" in message
    assert f"-o {tmp_path / 'g.dot'} writes the DOT source" in message
    assert (tmp_path / "g.dot").read_text() == "// the user's own graph\n", "a file the user did not name was replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.dot"]


def test_unknown_extension(circuit, tmp_path):
    with pytest.raises(NNError, match=r"\.svg, \.png, \.pdf, \.dot"):
        render_file(circuit, tmp_path / "g.jpg")
    assert list(tmp_path.iterdir()) == []


def test_bad_rankdir(circuit):
    with pytest.raises(NNError, match="rankdir"):
        to_dot(circuit, "RL")


@needs_dot
@pytest.mark.parametrize("ext,magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_formats(circuit, tmp_path, ext, magic):
    assert render_file(circuit, tmp_path / f"c{ext}").read_bytes().startswith(magic)


@needs_dot
def test_top_to_bottom(circuit, tmp_path):
    nodes = svg_nodes(render_file(circuit, tmp_path / "tb.svg", rankdir="TB"))
    texts = nodes[f"v{circuit.model.outputs['f']}"]
    assert [t for t, fill, _ in texts if fill == GREEN] == ["f = -12"]
    assert [t for t, fill, _ in texts if fill == RED] == ["1"]


def test_the_legend_says_which_side_of_the_wire_is_which(circuit):
    assert "above each wire: forward value" in to_dot(circuit, "LR")
    assert "below: gradient ∂f/∂value" in to_dot(circuit, "LR")
    assert "left of each wire: forward value" in to_dot(circuit, "TB")
    assert "right of it: gradient ∂f/∂value" in to_dot(circuit, "TB")


def test_cli_render(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "nncompile", "render", str(EXAMPLES / "circuit.nn")]
    done = subprocess.run([*cmd, "-o", str(tmp_path / "c.dot")], env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "f = -12" in (tmp_path / "c.dot").read_text(encoding="utf-8")
    done = subprocess.run([*cmd, "-o", str(tmp_path / "c.png")], env={**env, "PATH": ""},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error:" in done.stderr and "apt-get install graphviz" in done.stderr
    assert not (tmp_path / "c.png").exists() and (tmp_path / "c.dot").exists()


# ---- determinism and escaping -------------------------------------------------------------

def test_deterministic(tmp_path):
    for name in ("circuit.nn", "two_layer.nn", "mlp.nn"):
        a = render_file(evaluation(name), tmp_path / "a.dot").read_bytes()
        b = render_file(evaluation(name), tmp_path / "b.dot").read_bytes()
        assert a == b, name


def test_escape_function():
    assert escape('<script>&"') == "&lt;script&gt;&amp;&quot;"
    assert escape("it's") == "it&#x27;s"
    assert escape("a\\Nb") == "a\\\\Nb"             # Graphviz would expand \N even in HTML labels
    assert quote('a"b\\c\nd') == '"a\\"b' + "\\" * 4 + 'c\\nd"'
    assert quote('"]; evil [label="x') == '"\\"]; evil [label=\\"x"'


def test_hostile_names_cannot_break_the_diagram(tmp_path):
    ev = evaluation("circuit.nn")
    G = ev.program.graph
    hostile = '<script>alert("x")</script>&"]; evil [label="\\N'
    for n in (ev.model.inputs["x"], next(n for n in ev.values if G[n].name == "q")):
        G.set(n, name=hostile)
    ev.model.file = "</TD></TR></TABLE>>];<b>.nn"
    dot = to_dot(ev)
    assert not re.search(r'(?<!\\)"\]; evil', dot)      # every quote inside a DOT string is escaped
    labels = re.findall(r"label=<(.*?)>[,\]]", dot)
    assert labels and not any("<script>" in label for label in labels)
    assert escape(hostile) in dot                     # HTML labels carry it escaped
    if not HAS_DOT:
        return
    out = render_file(ev, tmp_path / "h.svg")
    tree = ET.parse(out)                              # well-formed
    assert not [e for e in tree.iter() if e.tag.endswith("script")]
    nodes = svg_nodes(out)
    assert len([t for t in nodes if t.startswith("n")]) == len(render.forward_nodes(ev))
    texts = [t for texts in nodes.values() for t, _, _ in texts]
    assert hostile in texts                          # shown literally, as text
    assert f"{hostile} = 3" in texts
    titles = [a.get("{http://www.w3.org/1999/xlink}title") or "" for a in tree.iter(f"{SVG}a")]
    assert any(t.startswith(f"input {hostile}: float[]") for t in titles)   # tooltips too


HOSTILE = ["&#1;", "&#xFFFE;", "&#55296;", "&amp;", "&lt;b&gt;", "<script>alert(1)</script>", "]]>", '"', "'",
           "\x1b[31m", "\x01", "\x7f", "\u200f\u202e", "\ufffe\uffff", "\\N \\G", "naïve 中文 🤖", "<!--", "&"]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=6)), max_size=4).map("".join)
hostile_file_name = st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), max_size=6)), max_size=3).map(
    lambda parts: "".join(parts).replace("/", "_")[:60] + ".nn")   # no folders: a name, not a path

COMMENTED = """\
# {0}
layer affine(x: [B, K], out: int) -> [B, out] {{  # {0}
    param W: [K, out] = he()  # {0}
    return x @ W
}}
const k = 2  # {0}
input x: float[2, 3]  # {0}
h = affine(x, out=k) as fc  # {0}
loss = sum(h * h)  # {0}
minimize loss
"""


@needs_dot
@settings(max_examples=25, deadline=None)
@given(comment=hostile_text, file_name=hostile_file_name)
@example(comment="&#1; &#xFFFE; &#55296;", file_name="&#1;.nn")
@example(comment="&amp; <script> ]]> \" '", file_name="e\x1bx&#xFFFE;.nn")
def test_every_svg_is_well_formed_xml_whatever_the_source_holds(comment: str, file_name: str) -> None:
    """Comments (shown in tooltips) and file names (in the legend and tooltips) reach the SVG
    as literal text: no character reference decoded into a character XML forbids."""
    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / file_name
        model.write_text(COMMENTED.format(comment), encoding="utf-8")
        out = render_file(evaluate_file(model), Path(folder) / "g.svg")
        tree = ET.parse(out)   # raises on anything that is not well-formed XML
    titles = [" ".join((a.get("{http://www.w3.org/1999/xlink}title") or "").split()) for a in tree.iter(f"{SVG}a")]
    shown = " ".join(f"{render._printable(file_name)}:7: input x: float[2, 3]  # {render._printable(comment)}".split())
    assert any(shown in title for title in titles), (shown, titles)


def test_an_svg_that_is_not_well_formed_is_never_written(circuit, tmp_path, monkeypatch):
    """Should Graphviz ever emit broken XML, the command fails instead of leaving it behind."""
    monkeypatch.setattr(render.shutil, "which", lambda *a, **k: "/usr/bin/dot")
    monkeypatch.setattr(render.graphviz, "pipe", lambda *a, **k: b'<svg xmlns="http://www.w3.org/2000/svg">&#1;</svg>')
    with pytest.raises(NNError, match="not well-formed XML"):
        render_file(circuit, tmp_path / "g.svg")
    assert list(tmp_path.iterdir()) == []


# ---- formatting -------------------------------------------------------------------------------

def test_number_and_summary_formatting():
    assert fmt(-12.0) == "-12" and fmt(3.0) == "3" and fmt(0.19661193) == "0.1966"
    assert fmt(-0.0) == "0" and fmt(float("nan")) == "nan" and fmt(1e-3) == "0.001"
    big = np.arange(3072 * 100, dtype=np.float32).reshape(3072, 100)
    text = value_text(big, ("D", 100))
    assert text.startswith("[D=3072, 100] μ") and len(text) < 60
    assert "‖g‖" in grad_text(big) and len(grad_text(big)) < 30
    assert value_text(np.array([1.0, np.nan, np.inf])).endswith("⚠ 1 NaN, 1 inf")
    assert value_text(np.array([0, 3, 9])) == "int [3] min 0 max 9"
    assert value_text(np.float32(0.7310586)) == "0.7311"


def test_an_op_node_says_what_its_op_declares() -> None:
    """Labels come from the op's declaration (OpDef.label): a symbol, text made from the
    attributes, or by default the name and attributes."""
    from nncompile.ir import Node

    def text(op: str, **attrs) -> str:
        return render.op_text(Node(op, (), tuple(sorted(attrs.items())), (), "float"))

    assert (text("mul"), text("sub"), text("matmul")) == ("×", "−", "@")
    assert text("sum", axis=(0, 2), keepdims=True) == "sum(axis=0, 2, keepdims)" and text("max") == "max"
    assert text("reshape", shape=(-1, 4)) == "reshape(-1, 4)" and text("transpose") == "transpose"
    assert text("leaky_relu", alpha=0.1) == "leaky_relu(alpha=0.1)"
