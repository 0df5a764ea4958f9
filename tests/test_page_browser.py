"""The interactive page in a real browser: Debian's chromium, headless, driven by Playwright
(``bash scripts/browser_check.sh`` installs both). A click shows a node's panel with its shape
and .nn line, zoom and pan move the drawing, search finds a node, a layer collapses and
expands, and the page makes no request, raises no script error and breaks no CSP rule.
With NNCOMPILE_SCREENSHOTS=1 its screenshots become docs/images/page-*.png."""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nncompile.evaluate import evaluate_file
from nncompile.page import write_page

from conftest import EXAMPLES, ROOT, write_nn

sync_api = pytest.importorskip("playwright.sync_api", reason="needs the 'page' extra: bash scripts/browser_check.sh")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("needs Debian's chromium (/usr/bin/chromium): bash scripts/browser_check.sh", allow_module_level=True)
if shutil.which("dot") is None:
    pytest.skip("needs Graphviz's dot", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The screenshots attached to docs/rendering.md are remade only when asked for (CI leaves the
# checkout alone): NNCOMPILE_SCREENSHOTS=1 bash scripts/browser_check.sh
IMAGES = ROOT / "docs" / "images" if os.environ.get("NNCOMPILE_SCREENSHOTS") == "1" else None
LISTEN = """window.__violations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));"""


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


class Opened:
    """A page opened from a file, with everything it did that it must not do."""

    def __init__(self, browser, path: Path):
        self.url = path.resolve().as_uri()
        self.page = browser.new_page(viewport={"width": 1400, "height": 820})
        self.page.set_default_timeout(5_000)
        self.requests: list[str] = []
        self.problems: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("console", lambda m: m.type in ("error", "warning") and self.problems.append(
            f"console {m.type}: {m.text}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))
        self.page.add_init_script(LISTEN)
        self.page.goto(self.url)
        self.page.wait_for_selector("html[data-ready]", timeout=10_000)

    def node(self, n: int, prefix: str = "n"):
        return self.page.locator(f'#nn-svg g.node[data-dot="{prefix}{n}"]')

    def scale(self) -> float:
        transform = self.page.get_attribute("#nn-viewport", "transform")
        return float(re.search(r"scale\(([-\d.e]+)\)", transform).group(1))

    def box(self, n: int) -> dict:
        return self.node(n).bounding_box()

    def field(self, name: str) -> str:
        return self.page.inner_text(f'#nn-details [data-field="{name}"]')

    def shot(self, name: str) -> None:
        """A screenshot: checks that the page draws at all, and with NNCOMPILE_SCREENSHOTS=1 the docs' image."""
        image = self.page.screenshot(animations="disabled", caret="hide")
        assert image.startswith(b"\x89PNG") and len(image) > 10_000
        if IMAGES is not None:
            IMAGES.mkdir(parents=True, exist_ok=True)
            (IMAGES / f"page-{name}.png").write_bytes(image)

    def close(self) -> None:
        """Checks that hold for every page: it asked for nothing but its own file, and no
        script error, console error or CSP violation happened."""
        violations = self.page.evaluate("window.__violations")
        self.page.close()
        assert self.requests == [self.url]
        assert self.problems == [] and violations == []


@pytest.fixture
def open_page(browser):
    opened: list[Opened] = []

    def open_(path: Path) -> Opened:
        opened.append(Opened(browser, path))
        return opened[-1]
    yield open_
    for page in opened:
        page.close()


def page_of(tmp_path: Path, model: Path, **options) -> tuple[Path, object]:
    ev = evaluate_file(model)
    return write_page(ev, tmp_path / (model.stem + ".html"), **options), ev


def node_named(ev, name: str) -> int:
    G = ev.program.graph
    return next(n for n in sorted(ev.values) if G[n].name == name and G[n].grad_of is None)


def source_line(model: Path, text: str) -> int:
    return next(i for i, line in enumerate(model.read_text().split("\n"), 1) if line.strip().startswith(text))


def test_clicking_a_node_of_the_circuit_shows_its_value_gradient_and_line(open_page, tmp_path) -> None:
    model = EXAMPLES / "circuit.nn"
    path, ev = page_of(tmp_path, model)
    p = open_page(path)
    q = node_named(ev, "q")
    p.node(q).click()
    assert p.field("name") == "q" and p.field("shape") == "[]" and p.field("dtype") == "float32"
    assert p.field("source").startswith(f"circuit.nn:{source_line(model, 'q = x + y')}:")
    assert "q = x + y" in p.field("source")
    assert p.page.inner_text('#nn-details [data-field="value"] .nn-scalar') == "3"      # the lecture's q = 3
    assert p.page.inner_text('#nn-details [data-field="grad"] .nn-scalar') == "-4"      # and df/dq = z = -4
    p.node(node_named(ev, "x"), "v").click()                                            # the wire leaving x
    assert p.field("name") == "x" and "wire of" in p.page.inner_text("#nn-details h2")
    assert p.page.inner_text('#nn-details [data-field="grad"] .nn-scalar') == "-4"
    p.page.locator('#nn-svg g.edge[data-dot^="v' + str(node_named(ev, "z")) + ':"]').first.click()
    assert p.field("name") == "z" and p.page.inner_text('#nn-details [data-field="grad"] .nn-scalar') == "3"
    p.node(q).click()
    p.shot("circuit")


def test_the_neuron_page(open_page, tmp_path) -> None:
    model = EXAMPLES / "neuron.nn"
    path, ev = page_of(tmp_path, model)
    p = open_page(path)
    w0 = node_named(ev, "w0")
    p.node(w0).click()
    grad = float(p.page.inner_text('#nn-details [data-field="grad"] .nn-scalar'))
    f = 1 / (1 + math.exp(-(2 * -1 + -3 * -2 + -3)))                                # the lecture: dw0 = x0 f (1 - f)
    assert p.field("name") == "w0" and math.isclose(grad, -1 * f * (1 - f), rel_tol=1e-6)
    assert p.field("source").startswith(f"neuron.nn:{source_line(model, 'param w0')}:")
    p.shot("neuron")


def test_zoom_and_pan_move_the_drawing(open_page, tmp_path) -> None:
    path, ev = page_of(tmp_path, EXAMPLES / "two_layer.nn")
    p = open_page(path)
    W = ev.model.params["fc1.W"]
    fitted, before = p.page.get_attribute("#nn-viewport", "transform"), p.box(W)
    k = p.scale()
    p.page.click("#nn-zoom-in")
    assert math.isclose(p.scale(), 1.25 * k, rel_tol=1e-6)
    assert math.isclose(p.box(W)["width"], 1.25 * before["width"], rel_tol=0.02)   # drawn bigger, not only said
    p.page.click("#nn-zoom-out")
    assert math.isclose(p.scale(), k, rel_tol=1e-6)
    p.page.mouse.move(500, 400)
    p.page.mouse.wheel(0, -300)
    p.page.wait_for_function(f"!document.getElementById('nn-viewport').getAttribute('transform').includes('scale({k})')")
    assert p.scale() > 1.3 * k
    p.page.keyboard.press("0")                                                      # fit to the window again
    assert p.page.get_attribute("#nn-viewport", "transform") == fitted
    p.page.keyboard.press("+")
    assert math.isclose(p.scale(), 1.25 * k, rel_tol=1e-6)
    p.page.keyboard.press("-")
    assert math.isclose(p.scale(), k, rel_tol=1e-6)
    start = p.box(W)
    p.page.mouse.move(600, 700)                                                     # drag an empty spot
    p.page.mouse.down()
    p.page.mouse.move(650, 640, steps=5)
    p.page.mouse.up()
    moved = p.box(W)
    assert math.isclose(moved["x"] - start["x"], 50, abs_tol=1) and math.isclose(moved["y"] - start["y"], -60, abs_tol=1)
    assert p.page.locator("#nn-details .nn-hint").count() == 1                     # a drag selects nothing
    p.page.keyboard.press("ArrowRight")                                             # the arrow keys pan too
    assert math.isclose(p.box(W)["x"] - moved["x"], -60, abs_tol=1)


def test_search_finds_highlights_and_centres_a_node(open_page, tmp_path) -> None:
    model = EXAMPLES / "two_layer.nn"
    path, ev = page_of(tmp_path, model)
    p = open_page(path)
    W = ev.model.params["fc2.W"]
    p.page.fill("#nn-search", "fc2.w")
    assert p.page.inner_text("#nn-search-count") == "1 of 1"
    assert "nn-match" in p.node(W).get_attribute("class")
    assert p.field("name") == "fc2.W" and p.field("shape") == "[100, 10]"
    assert p.field("source").startswith(f"two_layer.nn:{source_line(model, 'param W')}:")
    diagram, box = p.page.locator("#nn-svg").bounding_box(), p.box(W)
    assert abs(box["x"] + box["width"] / 2 - (diagram["x"] + diagram["width"] / 2)) < 2
    assert abs(box["y"] + box["height"] / 2 - (diagram["y"] + diagram["height"] / 2)) < 2
    p.page.fill("#nn-search", ".b")
    assert p.page.inner_text("#nn-search-count") == "1 of 2"
    p.page.press("#nn-search", "Enter")
    assert p.page.inner_text("#nn-search-count") == "2 of 2"
    p.page.fill("#nn-search", "no such name")
    assert p.page.inner_text("#nn-search-count") == "none found" and p.page.locator(".nn-match").count() == 0
    p.page.fill("#nn-search", "fc1.W")
    p.shot("two-layer")


def test_a_layer_collapses_into_one_box_and_expands_again(open_page, tmp_path) -> None:
    path, ev = page_of(tmp_path, EXAMPLES / "mlp.nn")
    p = open_page(path)
    G = ev.program.graph
    members = {n for n in ev.values if G[n].scope[:1] == ("h2",) and p.node(n).count()}
    others = {n for n in ev.values if G[n].scope[:1] == ("h1",) and p.node(n).count()}
    assert members and others
    cluster = p.page.locator(".nn-layer-toggle", has_text=re.compile(r"^▾ h2: ")).get_attribute("data-cluster")
    toggle = p.page.locator(f'.nn-layer-toggle[data-cluster="{cluster}"]')
    toggle.click()
    assert all(p.node(n).is_hidden() for n in members) and all(p.node(n).is_visible() for n in others)
    box = p.page.locator("#nn-svg .nn-collapsed:not(.nn-hidden)")
    assert box.count() == 1 and box.text_content().startswith("▸ h2: ")
    assert toggle.get_attribute("aria-expanded") == "false"
    where = box.bounding_box()
    p.page.mouse.move(where["x"] + where["width"] / 2, where["y"] + where["height"] / 2)
    p.page.mouse.wheel(0, -600)                                                     # zoom in on the box
    p.page.wait_for_timeout(200)
    p.shot("collapsed")
    box.click()                                                                     # the box itself expands
    assert all(p.node(n).is_visible() for n in members) and toggle.get_attribute("aria-expanded") == "true"
    p.page.click("#nn-collapse-all")
    assert all(p.node(n).is_hidden() for n in members | others)
    p.page.fill("#nn-search", "h2.W")                                               # a match is shown, not hidden
    assert all(p.node(n).is_visible() for n in members) and all(p.node(n).is_hidden() for n in others)
    p.page.click("#nn-expand-all")
    assert all(p.node(n).is_visible() for n in members | others)
    p.page.locator(f'#nn-svg g.cluster[data-dot="{cluster}"] text').first.click()   # its label in the drawing
    assert all(p.node(n).is_hidden() for n in members) and toggle.get_attribute("aria-expanded") == "false"


def test_a_layer_node_of_a_big_graph_has_a_panel(open_page, tmp_path) -> None:
    path, ev = page_of(tmp_path, EXAMPLES / "two_layer.nn", max_nodes=5)   # collapsed by to_dot itself
    p = open_page(path)
    p.page.locator('#nn-svg g.node[data-dot="L0"]').click()
    assert p.field("name") == "fc1" and "affine" in p.page.inner_text("#nn-details")
    assert "fc1.W [3072, 100]" in p.page.inner_text("#nn-details")
    p.page.fill("#nn-search", "fc1.b")                                              # a member: its box is found
    assert "nn-match" in p.page.get_attribute('#nn-svg g.node[data-dot="L0"]', "class")


def test_a_trained_digits_run(open_page, tmp_path) -> None:
    """render --params RUN_DIR --data digits: the trained weights, on real examples."""
    model = EXAMPLES / "digits_mlp.nn"
    def nncompile(*args: str) -> None:   # run where the files are, so that the page names them as a user would
        done = subprocess.run([sys.executable, "-m", "nncompile", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    nncompile("train", str(model), "--data", "digits", "--epochs", "2", "--out", "run", "--no-progress")
    nncompile("render", str(model), "--params", "run", "--data", "digits", "--batch", "8", "--mode", "eval",
              "-o", "digits.html")
    p = open_page(tmp_path / "digits.html")
    assert "eval mode" in p.page.inner_text("#nn-note") and "the trained params of run" in p.page.inner_text("#nn-note")
    p.page.fill("#nn-search", "fc1.W")
    assert p.field("shape") == "[64, 256]" and p.field("dtype") == "float32"
    assert p.page.locator('#nn-details [data-field="value"] svg.nn-histogram rect').count() == 24
    assert p.page.locator('#nn-details [data-field="grad"] svg.nn-histogram rect').count() == 24
    assert "0 NaN, 0 +inf, 0 −inf" in p.page.inner_text('#nn-details [data-field="value"]')
    p.page.fill("#nn-search", "data_loss")
    value = float(p.page.inner_text('#nn-details [data-field="value"] .nn-scalar'))
    assert 0 < value < math.log(10)                                                 # trained: below chance
    p.page.fill("#nn-search", "fc1.W")
    p.shot("digits")


def test_hostile_names_stay_text_in_the_browser(open_page, tmp_path) -> None:
    hostile = '</script><img src=x onerror=alert(1)><b id="injected">'
    model = write_nn(tmp_path, "<img src=x onerror=alert(2)>.nn", f"""
        input x = -2  # {hostile}
        input y = 5
        q = x + y  # {hostile}
        output q
    """)
    ev = evaluate_file(model)
    G = ev.program.graph
    q = node_named(ev, "q")
    G.set(q, name=hostile)
    path = write_page(ev, tmp_path / "hostile.html")
    p = open_page(path)                    # close() fails on any dialog (alert) or request for "x"
    assert p.page.locator("img, #injected").count() == 0
    p.node(q).click()
    assert p.field("name") == hostile and hostile in p.field("source")
    assert p.page.title() == "<img src=x onerror=alert(2)>.nn · nncompile"


def test_the_health_overlay_colours_a_node_and_explains_it(open_page, tmp_path) -> None:
    model = EXAMPLES / "two_layer.nn"
    ev = evaluate_file(model)
    W = ev.model.params["fc1.W"]
    health = {W: {"level": "bad", "metric": "update/weight", "value": 0.05, "message": "above 1e-2: too fast"},
              ev.model.params["fc2.W"]: {"level": "warn", "metric": "update/weight", "value": 5e-5,
                                         "message": "below 1e-4: too slow"},
              ev.model.params["fc1.b"]: {"level": "ok", "metric": "update/weight", "value": 1e-3, "message": ""}}
    p = open_page(write_page(ev, tmp_path / "h.html", health=health))
    assert "nn-health-bad" in p.node(W).get_attribute("class")
    assert "nn-health-bad" in p.node(W, "v").get_attribute("class")
    p.node(W).click()
    assert "gradient health: bad" in p.field("health") and "too fast" in p.field("health")
    assert p.page.locator(".nn-health-legend li").all_inner_texts() == ["ok", "warn", "bad"]
    p.shot("health")


def test_a_conv_nets_feature_maps_are_drawn_as_small_images(open_page, tmp_path) -> None:
    path, ev = page_of(tmp_path, EXAMPLES / "digits_cnn.nn")
    p = open_page(path)
    maps = node_named(ev, "h1")                                    # [N, 16, 4, 4] after the first pool
    p.node(maps).click()
    canvases = p.page.locator('#nn-details [data-field="value"] [data-field="maps"] canvas.nn-map')
    assert canvases.count() == 16
    assert "16 of 16 channels, 4×4" in p.page.inner_text('#nn-details [data-field="value"] [data-field="maps"]')
    # the canvas holds the panel's pixels: channel 0's greyscale, row by row
    drawn = canvases.first.evaluate("c => Array.from(c.getContext('2d').getImageData(0, 0, 4, 4).data)"
                                    ".filter((_, i) => i % 4 === 0)")
    value = np.asarray(ev.values[maps], dtype=np.float64)[0, 0]
    want = np.round((value - value.min()) / (value.max() - value.min()) * 255)
    assert drawn == want.ravel().astype(int).tolist()
    assert canvases.first.bounding_box()["width"] > 40            # drawn large, pixelated, not 4 px wide
