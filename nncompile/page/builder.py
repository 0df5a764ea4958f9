"""The interactive page: one self-contained HTML file with the diagram, pan and zoom, search,
layers that collapse, and a side panel with each value's and gradient's statistics.

The drawing is Graphviz's SVG of :func:`nncompile.render.to_dot`, the same as ``-o g.svg``; the
panel's numbers are computed here, with numpy, and travel as one JSON blob that page.js reads.
The page fetches nothing: its script and style are inlined and allowed by their hashes in a
Content-Security-Policy whose default is ``'none'``, so even markup that slipped into the page
could neither run nor load anything.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Mapping
from xml.etree import ElementTree

import graphviz
import numpy as np

from .. import render
from ..errors import NNError, Sources
from ..files import write_atomic
from ..health import LEVELS
from ..ir import LEAVES
from ..labels import SHOWN_NUMBERS
from ..version import __version__

HISTOGRAM_BINS = 24
MAPS_SHOWN = 16          # a 4-D value's feature maps: this many channels of its first example
MAP_PIXELS = 64 * 64     # and only maps up to this size (a larger image is statistics only)



# ---- the numbers -------------------------------------------------------------------------

def _number(value: Any) -> float | int | str:
    """One element for JSON, which has no NaN or infinity: those become "nan", "inf", "-inf"."""
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return int(value)
    v = float(value)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(str(value))   # numpy's shortest repr: a float32 reads 0.7310586, not 0.7310585975646973


def summary(value: Any) -> dict[str, Any]:
    """What the panel shows of one array: its statistics over the finite entries, the count of
    the others, a histogram, and for a small tensor the numbers themselves."""
    array = np.asarray(value)
    numeric = array.astype(np.float64)
    finite = numeric[np.isfinite(numeric)]
    out: dict[str, Any] = {"shape": list(array.shape), "dtype": array.dtype.name, "size": int(array.size),
                           "nan": int(np.isnan(numeric).sum()), "posinf": int(np.isposinf(numeric).sum()),
                           "neginf": int(np.isneginf(numeric).sum()), "zeros": int((numeric == 0).sum())}
    if finite.size:
        out.update(min=_number(finite.min()), mean=_number(finite.mean()), max=_number(finite.max()),
                   std=_number(finite.std()), norm=_number(np.sqrt(np.sum(finite * finite))))
        if array.size > 1:
            counts, edges = np.histogram(finite, bins=HISTOGRAM_BINS)
            out["histogram"] = {"counts": counts.tolist(), "lo": _number(edges[0]), "hi": _number(edges[-1])}
    if array.ndim == 4 and array.shape[0] and 1 < array.shape[2] * array.shape[3] <= MAP_PIXELS:
        out["maps"] = feature_maps(numeric)
    if array.size <= SHOWN_NUMBERS:
        out["numbers"] = [_number(v) for v in array.ravel()]
        out["text"] = np.array2string(array, precision=6, separator=", ", max_line_width=60) if array.ndim \
            else render.fmt(array, 8) if array.dtype.kind == "f" else str(array.item())
    return out


def feature_maps(array: np.ndarray) -> dict[str, Any]:
    """A conv net's value [N, C, H, W] as the panel draws it: the first example's first
    channels as greyscale images, each scaled from its own min (0) to its max (255), row by
    row; a constant or non-finite map is mid-grey."""
    maps = array[0, :MAPS_SHOWN]
    lo, hi, pixels = [], [], []
    for channel in maps:
        finite = channel[np.isfinite(channel)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scaled = (np.nan_to_num(channel, nan=low, posinf=high, neginf=low) - low) / (high - low) \
            if high > low else np.full(channel.shape, 0.5)
        pixels.append(np.round(scaled * 255).astype(int).ravel().tolist())
        lo.append(_number(low))
        hi.append(_number(high))
    return {"of": int(array.shape[1]), "height": int(array.shape[2]), "width": int(array.shape[3]),
            "lo": lo, "hi": hi, "pixels": pixels}


def _value(ev, n: int) -> np.ndarray | None:
    """The forward value of node ``n``: recorded by the trace, or a constant's own (in the
    module's precision, broadcast to its shape, as drawn)."""
    if n in ev.values:
        return np.asarray(ev.values[n])
    node = ev.program.graph[n]
    if node.op in LEAVES and node.attr("value") is not None:
        v = np.asarray(node.attr("value"), dtype=ev.module.DTYPE if node.dtype == "float" else None)
        if v.ndim == 0 and node.shape and all(isinstance(d, int) for d in node.shape):
            v = np.broadcast_to(v, node.shape)
        return v
    return None


def _no_gradient(ev, n: int) -> str:
    node = ev.program.graph[n]
    if ev.model.target is None:
        return "no gradient: the model has no loss (no 'minimize', no single scalar output)"
    if node.dtype != "float":
        return f"no gradient: {node.dtype} values are not differentiable"
    return "no gradient: the loss does not depend on this value"


def node_data(ev, n: int) -> dict[str, Any]:
    """Everything the panel says about graph node ``n`` and the wire leaving it."""
    node = ev.program.graph[n]
    value = _value(ev, n)
    loc = node.loc
    leaf = node.op in LEAVES
    return {
        "id": n, "name": node.name, "op": node.op, "kind": node.op if leaf else "op",
        "label": None if leaf else render.op_text(node),
        "shape": render.shape_text(value.shape, node.shape) if value is not None
        else "[" + ", ".join(map(str, node.shape)) + "]",
        "dtype": value.dtype.name if value is not None else node.dtype,
        "source": None if loc is None else {"file": Path(loc.file).name, "line": loc.line, "col": loc.col,
                                            "text": Sources.line(loc.file, loc.line)},
        "layer": ".".join(node.scope) or None,
        "layer_type": ev.model.layers.get(node.scope) if node.scope else None,
        "value": summary(value) if value is not None else None,
        "grad": summary(ev.grads[n]) if n in ev.grads else _no_gradient(ev, n),
    }


def _health_entry(n: int, entry: Mapping[str, Any]) -> dict[str, Any]:
    level = entry.get("level")
    if level not in LEVELS:
        raise ValueError(f"health of node {n}: level must be one of {', '.join(LEVELS)}, not {level!r}")
    return {"level": level, "metric": str(entry.get("metric", "")), "message": str(entry.get("message", "")),
            "value": _number(entry["value"]) if entry.get("value") is not None else None}


def page_data(ev, titles: list[str], *, health: Mapping[int, Mapping[str, Any]] | None = None,
              note: str | None = None) -> dict[str, Any]:
    """The page's JSON: every forward node, and which graph node each drawn element (by its
    DOT id, ``titles``: ``n<id>``, ``v<id>``, ``out<i>``, ``L<i>``) stands for."""
    G = ev.program.graph
    drawn = render.forward_nodes(ev)
    nodes = {str(n): node_data(ev, n) for n in drawn}
    for n, entry in (health or {}).items():
        if str(n) in nodes:
            nodes[str(n)]["health"] = _health_entry(n, entry)
    sinks = {f"out{i}": n for i, n in enumerate(ev.model.outputs.values())}
    if ev.model.target is not None and ev.model.target not in ev.model.outputs.values():
        sinks["out_loss"] = ev.model.target
    boxes = list(dict.fromkeys(G[n].scope[:1] for n in drawn if G[n].scope))   # render's collapsed layers, in order
    elements: dict[str, Any] = {}
    layers: dict[str, Any] = {}
    for title in titles:
        if (m := re.fullmatch(r"[nv](\d+)", title)) and m.group(1) in nodes:
            elements[title] = int(m.group(1))
        elif title in sinks:
            elements[title] = sinks[title]
        elif (m := re.fullmatch(r"L(\d+)", title)) and int(m.group(1)) < len(boxes):
            scope = boxes[int(m.group(1))]
            layers[title] = {"name": ".".join(scope), "type": ev.model.layers.get(scope, "layer"),
                             "members": [n for n in drawn if G[n].scope[:1] == scope]}
    target = ev.model.target
    return {"file": Path(ev.model.file).name, "mode": ev.mode, "note": note, "version": __version__,
            "target": (G[target].name or "the loss") if target is not None else None,
            "outputs": dict(ev.model.outputs), "nodes": nodes, "elements": elements, "layers": layers,
            "health": bool(health)}


# ---- the page ----------------------------------------------------------------------------

def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def script_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` (so no
    ``</script>`` and no ``<!--``), and only ASCII (so a surrogate from an undecodable file
    name is written as an escape, not as text UTF-8 cannot encode)."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(ch, esc)
    return text


SVG = "{http://www.w3.org/2000/svg}"


def diagram_svg(ev, output: Path, rankdir: str = "LR", max_nodes: int = render.MAX_NODES,
                branch_grads: bool = False) -> tuple[str, list[str]]:
    """Graphviz's SVG of the diagram, made ready to sit inside the page (no XML prolog or
    comments, sized by the page, its drawing wrapped in the group that pan and zoom move),
    and the DOT id of each node it draws (its ``<title>``)."""
    if shutil.which("dot") is None:
        raise NNError(f"cannot write {output}: the page's diagram is drawn by Graphviz's 'dot' program, "
                      f"which is not on PATH; {render.INSTALL_HINT}")
    source = render.to_dot(ev, rankdir, max_nodes=max_nodes, branch_grads=branch_grads)
    try:
        svg = graphviz.pipe("dot", "svg", source.encode("utf-8"), quiet=True).decode("utf-8")
        tree = ElementTree.fromstring(svg)
    except (graphviz.CalledProcessError, graphviz.ExecutableNotFound, OSError, ElementTree.ParseError) as exc:
        raise NNError(f"cannot write {output}: Graphviz's dot could not draw the diagram ({exc})") from None
    titles = [g.findtext(f"{SVG}title", "") for g in tree.iter(f"{SVG}g") if g.get("class") == "node"]
    svg = re.sub(r"<!--.*?-->", "", svg[svg.index("<svg"):], flags=re.S)
    # In HTML an <svg> needs no namespace declarations (the parser knows SVG and xlink:title),
    # so the page holds no URL at all, not even a namespace's.
    svg = re.sub(r"<svg\b[^>]*>", '<svg id="nn-svg" role="img"><g id="nn-viewport">', svg, count=1)
    return svg.replace("</svg>", "</g></svg>"), titles


def page_html(ev, output: str | Path = "model.html", *, rankdir: str = "LR", max_nodes: int = render.MAX_NODES,
              branch_grads: bool = False, health: Mapping[int, Mapping[str, Any]] | None = None,
              note: str | None = None) -> str:
    """The whole page as text (deterministic for a given evaluation). ``health`` (graph node id
    -> ``{"level": "ok"|"warn"|"bad", "metric", "value", "message"}``) colours those nodes and
    is shown in their panel; ``note`` says what was run (mode, params, inputs)."""
    svg, titles = diagram_svg(ev, Path(output), rankdir, max_nodes, branch_grads)
    data = page_data(ev, titles, health=health, note=note)
    css, js = _asset("page.css"), _asset("page.js")
    csp = (f"default-src 'none'; script-src {_sha256(js)}; style-src {_sha256(css)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    name = html.escape("".join(ch if ch.isprintable() else " " for ch in data["file"]))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="nncompile {html.escape(__version__)}">
<title>{name} · nncompile</title>
<link rel="icon" href="data:,">
<style>{css}</style>
</head>
<body>
<header id="nn-toolbar">
<strong id="nn-title">{name}</strong>
<input id="nn-search" type="search" placeholder="search by name (/)" aria-label="search nodes by name" autocomplete="off">
<span id="nn-search-count" aria-live="polite"></span>
<button id="nn-zoom-out" type="button" title="zoom out (-)">−</button>
<button id="nn-zoom-in" type="button" title="zoom in (+)">+</button>
<button id="nn-fit" type="button" title="fit to the window (0)">fit</button>
<span id="nn-note"></span>
</header>
<main>
<div id="nn-diagram" tabindex="0">{svg}</div>
<aside id="nn-panel">
<section id="nn-details"><p class="nn-hint">Click a node or a wire to see its value and gradient.</p></section>
<section id="nn-layers"></section>
</aside>
</main>
<script type="application/json" id="nn-data">{script_json(data)}</script>
<script>{js}</script>
</body>
</html>
"""


def write_page(ev, output: str | Path, *, rankdir: str = "LR", max_nodes: int = render.MAX_NODES,
               branch_grads: bool = False, health: Mapping[int, Mapping[str, Any]] | None = None,
               note: str | None = None) -> Path:
    """Write the page to ``output`` (whole or not at all); see :func:`page_html`."""
    output = Path(output)
    write_atomic(output, page_html(ev, output, rankdir=rankdir, max_nodes=max_nodes, branch_grads=branch_grads,
                                   health=health, note=note))
    return output
