"""Big graphs stay readable: the direction that fits a screen, repeated blocks in a grid,
dropout drawn as dropout, a layer's own constants kept inside it, the numbers of small
tensors on the wire, and each branch's own part of the gradient at a fan-out."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from test_render import (
    EXAMPLES,
    GREEN,
    RED,
    ROOT,
    SVG,
    USED_TWICE,
    evaluation,
    needs_dot,
    svg_nodes,
    wire,
)

from nncompile import render
from nncompile.evaluate import evaluate_file
from nncompile.render import fmt, render_file, to_dot


@needs_dot
def test_dropout_is_drawn_as_dropout_with_its_rate_not_as_its_mask(tmp_path):
    ev = evaluation("dropout_mlp.nn")
    nodes = svg_nodes(render_file(ev, tmp_path / "d.svg"))
    texts = [t for texts in nodes.values() for t, _, _ in texts]
    assert texts.count("dropout(p=0.5)") == 1 and texts.count("dropout(p=0.25)") == 1
    assert not [t for t in texts if "mask" in t], "the internal mask op is not drawn"
    G = ev.program.graph
    h1 = next(n for n in render.forward_nodes(ev) if G[n].name == "h1")
    value, grad = wire(nodes, h1)                      # dropout's output is the wire h1, as written
    assert value.startswith("h1: [N=4, 64]") and grad.startswith("‖g‖")
    tips = [a.get("{http://www.w3.org/1999/xlink}title") or "" for a in ET.parse(tmp_path / "d.svg").iter(f"{SVG}a")]
    tip = next(t for t in tips if t.startswith("dropout(p=0.5)"))
    assert "the value × a mask" in tip and "zeros" in tip      # the hover says how many units it dropped
    eval_texts = [t for texts in svg_nodes(render_file(evaluation("dropout_mlp.nn", mode="eval"),
                                                       tmp_path / "e.svg")).values() for t, _, _ in texts]
    assert not [t for t in eval_texts if t.startswith("dropout")], "in eval mode dropout is the identity"


CONSTANTS_IN_A_LAYER = """\
layer scaled(x: [B, K], out: int, s: []) -> [B, out] {
    param W: [K, out] = he()
    return relu(x @ W * 0.5 + s)
}
input X: float[4, 3]
h1 = scaled(X, out=5, s=1.5) as a
h2 = scaled(h1, out=5, s=2.5) as b
loss = sum(h2 * h2)
minimize loss
"""


def test_a_layer_keeps_its_own_constants_and_an_argument_stays_at_the_call(tmp_path):
    model = tmp_path / "consts.nn"
    model.write_text(CONSTANTS_IN_A_LAYER)
    ev = evaluate_file(model)
    G = ev.program.graph
    consts = {G[n].attr("value"): n for n in render.forward_nodes(ev) if G[n].op == "const"}
    halves = [n for n in render.forward_nodes(ev) if G[n].op == "const" and G[n].attr("value") == 0.5]
    assert len(halves) == 2
    dot = to_dot(ev)
    for cluster, half in zip(("a", "b"), halves):      # written in the layer's body: inside its cluster
        assert re.search(rf"subgraph cluster_\d+_{cluster} \{{[^}}]*\bn{half} \[", dot)
    top = dot[dot.index("digraph"):dot.index("subgraph")]
    assert f"n{consts[1.5]} [" in top and f"n{consts[2.5]} [" in top   # passed in: drawn where the call is
    collapsed = to_dot(ev, max_nodes=3, warn=lambda _: None)
    for half in halves:
        assert f"n{half} " not in collapsed, "a collapsed layer hides its own constants"
    assert f"n{consts[1.5]} -> L0 [style=dashed" in collapsed and f"n{consts[2.5]} -> L1 [style=dashed" in collapsed


SMALL = """\
input x: float[3] = [0.1, -2, 3.5]
param W: [2, 3] = he()
param b: [2] = zeros()
h = W @ x + b
loss = sum(h * h)
minimize loss
"""


@needs_dot
@pytest.mark.parametrize("rankdir", ["LR", "TB"])
def test_small_tensors_show_their_numbers_on_the_wire(tmp_path, rankdir):
    model = tmp_path / "small.nn"
    model.write_text(SMALL)
    ev = evaluate_file(model)
    nodes = svg_nodes(render_file(ev, tmp_path / "s.svg", rankdir=rankdir))
    m = ev.model
    W, x = ev.params["W"].astype(np.float64), np.array([0.1, -2, 3.5])
    h = W @ x

    def sides(n: int) -> tuple[list[str], list[str]]:
        texts = nodes[f"v{n}"]
        return [t for t, fill, _ in texts if fill == GREEN], [t for t, fill, _ in texts if fill == RED]

    if rankdir == "LR":
        wire(nodes, m.inputs["x"])                    # value above the gradient
    assert sides(m.inputs["x"]) == (["[3] = [0.1, -2, 3.5]"],
                                    ["[" + ", ".join(fmt(v, 3) for v in 2 * W.T @ h) + "]"])   # d sum(h²)/dx
    assert sides(m.params["b"]) == (["[2] = [0, 0]"], ["[" + ", ".join(fmt(v, 3) for v in 2 * h) + "]"])
    texts = nodes[f"v{m.params['W']}"]                 # a matrix: its shape, then a grid of numbers, row by row
    green, red = sides(m.params["W"])
    assert green == ["[2, 3]", *(fmt(v, 3) for v in W.ravel())]
    assert red == [fmt(v, 3) for v in (2 * np.outer(h, x)).ravel()]
    ys = {t: y for t, _, y in texts}
    if rankdir == "LR":     # value above the wire, gradient below it
        assert max(ys[t] for t in green) < min(ys[t] for t in red)
    first_row, second_row = green[1:4], green[4:]
    assert len({ys[t] for t in first_row}) == 1 and ys[first_row[0]] < ys[second_row[0]]
    big = evaluation("two_layer.nn")
    assert "[N=4, 3072] μ" in to_dot(big), "a big tensor is still summarised"


def svg_edges(path: Path) -> dict[str, list[str]]:
    """Each drawn edge's title (``v3:e->n7``) -> the texts on it, from an SVG file."""
    edges: dict[str, list[str]] = {}
    for g in ET.parse(path).iter(f"{SVG}g"):
        if g.get("class") == "edge":
            edges.setdefault(g.find(f"{SVG}title").text, []).extend(t.text or "" for t in g.iter(f"{SVG}text"))
    return edges


BRANCHES = """\
# gradients add at branches: x and q each feed two ops
input x = 3
input y = -4
q = x * y
s = q + x
f = s * q
output f
"""


def central_difference(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


@needs_dot
def test_each_branch_shows_its_own_part_of_the_gradient_and_the_parts_add_up(tmp_path):
    """The lecture's "gradients add at branches": f = (x*y + x) * (x*y). Each use of x and
    of q gets its own copy in an independent numpy function; central differences of each copy
    are what each branch must show, and the wire before the split shows their sum."""
    model = tmp_path / "branches.nn"
    model.write_text(BRANCHES)
    ev = evaluate_file(model)
    out = render_file(ev, tmp_path / "b.svg", branch_grads=True)
    edges, nodes = svg_edges(out), svg_nodes(out)
    G, m = ev.program.graph, ev.model
    q, s, f = (next(n for n in render.forward_nodes(ev) if G[n].name == name) for name in "qsf")
    x0, y0 = 3.0, -4.0

    def f_of(x_in_q=x0, x_in_s=x0, q_in_s=None, q_in_f=None):
        q_value = x_in_q * y0
        return ((q_value if q_in_s is None else q_in_s) + x_in_s) * (q_value if q_in_f is None else q_in_f)

    def d(**copy):
        (name, at), = copy.items()
        return float(central_difference(lambda v: np.array(f_of(**{name: float(v)})), np.array(at)))

    x, expected = m.inputs["x"], {
        (m.inputs["x"], q): d(x_in_q=x0), (m.inputs["x"], s): d(x_in_s=x0),
        (q, s): d(q_in_s=x0 * y0), (q, f): d(q_in_f=x0 * y0)}
    for (a, user), want in expected.items():
        shown = edges[f"v{a}:e->n{user}"]
        assert len(shown) == 1 and float(shown[0]) == pytest.approx(want, abs=1e-4), (a, user, shown)
    assert (d(x_in_q=x0), d(x_in_s=x0)) == pytest.approx((84, -12), abs=1e-4)
    for a in (x, q):   # the wire before the split keeps the sum
        total = float(wire(nodes, a)[1])
        assert total == pytest.approx(sum(w for (b, _), w in expected.items() if b == a), abs=1e-4)
    assert float(wire(nodes, x)[1]) == 72        # df/dx = 2xy² + 2xy
    plain = svg_edges(render_file(ev, tmp_path / "p.svg"))
    assert not [t for texts in plain.values() for t in texts], "off by default"
    assert plain.keys() == edges.keys()


TENSOR_BRANCHES = """\
input x: float[2, 3]
param W: [3, 3] = he()
h = x @ W
a = relu(h)
loss = sum(a * h) + sum(h)
minimize loss
"""


def test_branch_parts_of_a_tensor_match_finite_differences_of_each_use(tmp_path):
    model = tmp_path / "tensor.nn"
    model.write_text(TENSOR_BRANCHES)
    ev = evaluate_file(model, dtype="float64")
    G = ev.program.graph
    h = next(n for n in render.forward_nodes(ev) if G[n].name == "h")
    value = ev.values[h].astype(np.float64)
    parts = {G[user].op: part for (user, position), part in ev.branch_grads.items() if G[user].args[position] == h}
    assert sorted(parts) == ["mul", "relu", "sum"]

    def loss(h_relu=value, h_mul=value, h_sum=value):
        return np.sum(np.maximum(h_relu, 0) * h_mul) + np.sum(h_sum)

    np.testing.assert_allclose(parts["relu"], central_difference(lambda v: loss(h_relu=v), value), atol=1e-6)
    np.testing.assert_allclose(parts["mul"], central_difference(lambda v: loss(h_mul=v), value), atol=1e-6)
    np.testing.assert_allclose(parts["sum"], central_difference(lambda v: loss(h_sum=v), value), atol=1e-6)
    np.testing.assert_allclose(sum(parts.values()), ev.grads[h], atol=1e-12)
    dot = to_dot(ev, branch_grads=True)               # 6 numbers: each branch lists them
    for user, part in ((n, p) for (n, pos), p in ev.branch_grads.items() if G[n].args[pos] == h):
        assert re.search(rf"v{h}:c:e -> n{user} \[label=<.*{re.escape(fmt(part.ravel()[0], 3))}<", dot)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.nn")))
def test_the_branch_parts_of_every_example_add_up_to_the_gradient(name):
    ev = evaluation(name)
    G = ev.program.graph
    if name in ("two_layer.nn", "batchnorm_mlp.nn", "digits_mlp.nn"):   # a weight-decay term, batch statistics
        assert ev.branch_grads
    totals: dict[int, list] = {}
    for (user, position), part in ev.branch_grads.items():
        totals.setdefault(G[user].args[position], []).append(np.asarray(part, dtype=np.float64))
    for a, parts in totals.items():
        assert len(parts) > 1
        np.testing.assert_allclose(sum(parts), ev.grads[a], rtol=1e-5, atol=1e-6)
    to_dot(ev, branch_grads=True, warn=lambda _: None)


def test_into_a_collapsed_layer_a_branch_carries_the_parts_of_all_its_uses_there(tmp_path):
    model = tmp_path / "twice.nn"
    model.write_text(USED_TWICE)
    ev = evaluate_file(model)
    c = ev.model.inputs["c"]                           # used twice inside sc, nowhere else
    dot = to_dot(ev, max_nodes=1, warn=lambda _: None, branch_grads=True)
    edge = next(line for line in dot.splitlines() if f"v{c}:c:e -> L0" in line)
    assert f">{fmt(ev.grads[c])}<" in edge            # one wire in, so its part is the whole gradient


def test_each_product_written_twice_is_its_own_branch_as_docs_rendering_md_says(tmp_path):
    """docs/rendering.md: f = (x*y + x) * (x*y) in one expression draws both x*y, so x has
    three branches, 48, 36 and -12, where the named q = x * y gives two, 84 and -12."""
    model = tmp_path / "one_expression.nn"
    model.write_text("input x = 3\ninput y = -4\nf = (x*y + x) * (x*y)\noutput f\n")
    ev = evaluate_file(model)
    x = ev.model.inputs["x"]
    G = ev.program.graph
    parts = sorted(float(v) for (user, at), v in ev.branch_grads.items() if G[user].args[at] == x)
    assert parts == [-12, 36, 48] and float(ev.grads[x]) == 72
    dot = to_dot(ev, "LR", branch_grads=True)
    for shown in ("48", "36", "-12", "72"):
        assert f'<FONT COLOR="#cf222e">{shown}</FONT>' in dot


def test_cli_render_branch_grads(tmp_path):
    model = tmp_path / "branches.nn"
    model.write_text(BRANCHES)
    done = subprocess.run([sys.executable, "-m", "nncompile", "render", str(model), "-o", str(tmp_path / "b.dot"),
                           "--branch-grads"], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert '<FONT COLOR="#cf222e">84</FONT>' in (tmp_path / "b.dot").read_text(encoding="utf-8")


def graphviz_layout(dot: str) -> tuple[tuple[float, float], dict[str, tuple[float, float]], dict[str, tuple]]:
    """What Graphviz itself makes of DOT text (``dot -Tjson``): the drawing's (width, height)
    in points, each node's position and each cluster's bounding box."""
    done = subprocess.run(["dot", "-Tjson"], input=dot.encode(), capture_output=True, check=True, timeout=120)
    drawing = json.loads(done.stdout)
    x0, y0, x1, y1 = map(float, drawing["bb"].split(","))
    objects = drawing.get("objects", [])
    nodes = {o["name"]: tuple(map(float, o["pos"].split(","))) for o in objects if "pos" in o}
    clusters = {o["name"]: tuple(map(float, o["bb"].split(","))) for o in objects if "bb" in o}
    return (x1 - x0, y1 - y0), nodes, clusters


def screens(size: tuple[float, float]) -> float:
    """How many 16 x 9 inch screens the drawing takes along its tighter side."""
    return max(size[0] / 72 / 16, size[1] / 72 / 9)


DEEP = (EXAMPLES / "mlp.nn").read_text().replace("repeat 2 dense", "repeat 10 dense")


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    model = tmp_path_factory.mktemp("deep") / "deep.nn"
    model.write_text(DEEP)
    return evaluate_file(model)


@needs_dot
@pytest.mark.parametrize("name", [*sorted(p.name for p in EXAMPLES.glob("*.nn")), "deep"])
def test_auto_picks_the_direction_that_fits_a_screen(name, deep):
    """Measured on Graphviz's own layout: the automatic direction (wrapped where that helps)
    takes within 15% of the screens the better of LR and TB takes, or is the lecture's LR
    where that fits one screen; and no diagram is a strip more than 10,000 pixels long at
    the PNGs' 144 dpi."""
    ev = deep if name == "deep" else evaluation(name)
    size = {d: graphviz_layout(to_dot(ev, d, warn=lambda _: None))[0] for d in ("LR", "TB", "auto")}
    lecture = "rankdir=LR" in to_dot(ev, "auto", warn=lambda _: None) and screens(size["auto"]) <= 1
    assert lecture or screens(size["auto"]) <= 1.15 * min(screens(size["LR"]), screens(size["TB"])), size
    assert max(size["auto"]) * 144 / 72 < 10_000, size
    assert max(size["auto"]) / min(size["auto"]) < 5 or screens(size["auto"]) <= 1, size   # no long strip


@needs_dot
def test_a_forty_node_model_is_not_a_strip_unless_asked(tmp_path):
    ev = evaluation("batchnorm_mlp.nn")
    assert len(render.forward_nodes(ev)) >= 40
    (lr_width, lr_height), _, _ = graphviz_layout(to_dot(ev, "LR"))
    assert lr_width * 2 > 10_000 and lr_width > 6 * lr_height, "left to right it is a strip"
    auto = to_dot(ev, "auto")
    assert "rankdir=TB" in auto and "left of each wire: forward value" in auto
    assert "rankdir=LR" in to_dot(ev, "LR") and "rankdir=TB" in to_dot(evaluation("neuron.nn"), "TB")  # obeyed
    assert "rankdir=LR" in to_dot(evaluation("neuron.nn"), "auto")     # the lecture's circuits stay left to right
    done = subprocess.run([sys.executable, "-m", "nncompile", "render", str(EXAMPLES / "batchnorm_mlp.nn"), "-o",
                           str(tmp_path / "b.dot")], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "rankdir=TB" in (tmp_path / "b.dot").read_text(encoding="utf-8"), "auto is the CLI's default"


@needs_dot
@pytest.mark.parametrize("rankdir", ["LR", "TB"])
def test_repeated_blocks_align_in_a_grid_instead_of_a_staircase(deep, rankdir):
    """The ten instances of ``repeat 10 dense`` are drawn as a grid of blocks, rows of them
    (columns in TB) as many as fit the screen's shape: each block's matmul shares its position
    along the direction with the blocks above and below it, and the repeat cluster is far
    shorter than the ten blocks end to end, as Graphviz draws them unaided."""
    dot = to_dot(deep, rankdir)
    (width, height), nodes, clusters = graphviz_layout(dot)
    G = deep.program.graph
    matmuls = [n for n in render.forward_nodes(deep) if G[n].scope[:1] and G[n].scope[0].startswith("h3.")
               and render.op_text(G[n]) == "@"]
    assert len(matmuls) == 10
    along = 0 if rankdir == "LR" else 1
    positions = sorted({round(nodes[f"n{n}"][along]) for n in matmuls})
    assert len(positions) <= 5, positions                # a few columns at most, each holding several blocks
    repeat = next(bb for name, bb in clusters.items() if name.endswith("_h3"))
    blocks = [bb for name, bb in clusters.items() if re.search(r"_h3_\d+$", name)]
    assert len(blocks) == 10
    span = repeat[2 + along] - repeat[along]
    assert span < 0.5 * sum(bb[2 + along] - bb[along] for bb in blocks)
    if rankdir == "LR":
        assert max(width, height) * 2 < 10_000


def test_auto_layout_and_branch_parts_keep_the_dot_byte_stable(deep):
    for make in (lambda: evaluation("batchnorm_mlp.nn"), lambda: evaluate_file(Path(deep.model.file))):
        a, b = (to_dot(make(), "auto", branch_grads=True, warn=lambda _: None) for _ in range(2))
        assert a == b


@needs_dot
@pytest.mark.parametrize("rankdir", ["auto", "LR"])
def test_a_long_chain_wraps_into_rows_that_fit_a_screen(tmp_path, rankdir):
    """Twenty tanh layers written one by one (no repeat): 61 nodes in one line would be about
    76 inches (11,000 pixels) wide; wrapped, each row starts again at the left."""
    lines = ["input x = 0.5", *(f"h{i} = tanh({'x' if i == 1 else f'h{i - 1}'} * 1.1)" for i in range(1, 21)),
             "output h20"]
    model = tmp_path / "chain.nn"
    model.write_text("\n".join(lines) + "\n")
    ev = evaluate_file(model)
    dot = to_dot(ev, rankdir)
    assert "rankdir=LR" in dot and "constraint=false" in dot
    (width, height), nodes, _ = graphviz_layout(dot)
    assert max(width, height) * 2 < 10_000 and screens((width, height)) < 1.6, (width, height)
    G = ev.program.graph
    tanhs = [f"n{n}" for n in render.forward_nodes(ev) if render.op_text(G[n]) == "tanh"]
    rows = sorted({round(nodes[t][1]) for t in tanhs})
    assert len(rows) >= 3
    assert nodes[tanhs[-1]][1] < nodes[tanhs[0]][1], "the last row is below the first (y grows upwards)"
