"""Rendering: an evaluated model as a Graphviz diagram, in the CS231n backprop convention.

Every value a node produces is drawn once, on the wire leaving it: the forward value above
the wire in green and the gradient of the loss below it in red (left and right of it with
``rankdir=TB``). The wire is a small "value" node whose middle row is a rule that lines up
with the edge, so the numbers sit on either side of the line as on the lecture slides; when
a value fans out, the wire splits after its label, so the gradient shown is the sum over
the branches. Op nodes show the operation; inputs, params, constants, outputs and the loss
each have their own shape and colour (see the legend under the graph). Tensors are shown
as shape and summary statistics, never element by element (small ones list their numbers in
the SVG tooltip). Layer instances are clusters labelled ``name: layer``; repeated
instances (``h3.1``, ``h3.2``) are grouped in a ``repeat`` cluster.

:func:`to_dot` is a pure function of the evaluation, so the DOT text is byte-stable: node
ids come from graph node ids and everything is emitted in a fixed order. Every piece of
user text is escaped (:func:`escape` for HTML-like labels, :func:`quote` for DOT strings).
Above ``max_nodes`` forward nodes each top-level layer instance is collapsed into one node.
"""
from __future__ import annotations

import html
import itertools
import math
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import graphviz
import networkx as nx
import numpy as np

from .errors import NNError, Sources
from .health import legend_rows, node_style, wire_badge, wire_style
from .ir import Graph, Node
from .ops import REGISTRY
from .ops.registry import attr_text

FORMATS = (".svg", ".png", ".pdf", ".dot")
MAX_NODES = 400          # above this many forward nodes, layer instances are collapsed
TOOLTIP_NUMBERS = 16     # tensors up to this size list their numbers in the tooltip

FONT = "Helvetica,Arial,sans-serif"
GREEN = "#1a7f37"        # forward values
RED = "#cf222e"          # gradients
WIRE = "#57606a"         # edges (and the rule inside value labels)
MUTED = "#8c959f"

STYLE = {  # kind -> Graphviz node attributes
    "input": {"shape": "box", "style": "rounded,filled", "fillcolor": "#ddf4ff", "color": "#0969da",
              "width": "0.4", "height": "0.3", "margin": "0.1,0.04"},
    "param": {"shape": "cylinder", "style": "filled", "fillcolor": "#fff8c5", "color": "#9a6700",
              "width": "0.4", "height": "0.4", "margin": "0.1,0.04"},
    "const": {"shape": "box", "style": "filled,dashed", "fillcolor": "#f6f8fa", "color": MUTED,
              "fontcolor": "#424a53", "fontsize": "10", "width": "0.25", "height": "0.25", "margin": "0.05,0.02"},
    "op": {"shape": "circle", "style": "filled", "fillcolor": "#ffffff", "color": "#24292f", "fontsize": "16",
           "width": "0.42", "fixedsize": "true"},
    "opname": {"shape": "ellipse", "style": "filled", "fillcolor": "#ffffff", "color": "#24292f",
               "height": "0.42", "margin": "0.06,0.03"},
    "output": {"shape": "box", "style": "filled,bold", "fillcolor": "#dafbe1", "color": GREEN, "peripheries": "2",
               "width": "0.4", "height": "0.3", "margin": "0.1,0.04"},
    "loss": {"shape": "doubleoctagon", "style": "filled,bold", "fillcolor": "#ffebe9", "color": RED,
             "width": "0.4", "height": "0.3", "margin": "0.06,0.03"},
    "layer": {"shape": "box3d", "style": "filled", "fillcolor": "#fbefff", "color": "#8250df",
              "margin": "0.12,0.06"},
}

# ---- text ------------------------------------------------------------------------------

def escape(text: Any) -> str:
    """User text made safe inside an HTML-like Graphviz label (and hence in the SVG).

    Graphviz expands escapes such as ``\\N`` (the node's name) even in HTML labels, after
    decoding entities, so a backslash is doubled as well."""
    return html.escape(_printable(text), quote=True).replace("\\", "\\\\")


def _printable(text: Any) -> str:
    """``text`` with every unprintable character as a space: controls (an ESC in a file name
    makes Graphviz fail), bidi marks, surrogates from an undecodable file name and the
    noncharacters U+FFFE/U+FFFF, none of which XML 1.0 or a reader wants in a diagram."""
    return "".join(ch if ch.isprintable() else " " for ch in str(text))


def quote(text: Any) -> str:
    """A double-quoted DOT string that Graphviz shows as ``text``, literally.

    For tooltips Graphviz undoes backslash escapes twice (once for the DOT string, once
    for its ``\\N``-style escapes), so a backslash is written as four. It also decodes
    character references (a comment's ``&#1;`` would become a character that XML forbids),
    so ``&`` is written as ``&amp;``."""
    out = []
    for ch in str(text):
        if ch == "\\":
            out.append("\\" * 4)
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "&":
            out.append("&amp;")
        else:
            out.append(_printable(ch))
    return '"' + "".join(out) + '"'


def fmt(value: Any, digits: int = 4) -> str:
    """A number in ``%.{digits}g``, with integers shown plainly (-12, not -12.0)."""
    v = float(value)
    if math.isnan(v):
        return "nan"
    if v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    text = f"{v:.{digits}g}"
    return "0" if text == "-0" else text


def shape_text(actual: tuple[int, ...], declared: tuple | None = None) -> str:
    """``[N=4, 100]``: the concrete shape, naming the symbolic dims it came from."""
    dims = []
    for i, d in enumerate(actual):
        sym = declared[i] if declared is not None and i < len(declared) else None
        dims.append(f"{sym}={d}" if isinstance(sym, str) else str(d))
    return "[" + ", ".join(dims) + "]"


def _nonfinite(array: np.ndarray) -> str:
    if array.dtype.kind != "f":
        return ""
    nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
    parts = ([f"{nan} NaN"] if nan else []) + ([f"{inf} inf"] if inf else [])
    return (" ⚠ " + ", ".join(parts)) if parts else ""


def _finite(array: np.ndarray) -> np.ndarray:
    return array[np.isfinite(array)] if array.dtype.kind == "f" else array


def value_text(value: Any, declared: tuple | None = None) -> str:
    """One line for a forward value: the number, or shape and statistics of a tensor."""
    array = np.asarray(value)
    if array.ndim == 0:
        return str(int(array)) if array.dtype.kind in "iub" else fmt(array)
    shape = shape_text(array.shape, declared)
    if array.size == 0:
        return f"{shape} empty"
    if array.dtype.kind == "b":
        return f"bool {shape} {fmt(100 * array.mean(), 3)}% true"
    if array.dtype.kind in "iu":
        return f"int {shape} min {array.min()} max {array.max()}"
    finite = _finite(array)
    stats = f" μ {fmt(finite.mean(), 3)} σ {fmt(finite.std(), 3)}" if finite.size else ""
    return f"{shape}{stats}{_nonfinite(array)}"


def grad_text(grad: Any) -> str:
    """One line for a gradient: the number, or the norm of a tensor's gradient."""
    array = np.asarray(grad)
    if array.ndim == 0:
        return fmt(array)
    finite = _finite(array).astype(np.float64)
    return f"‖g‖ {fmt(np.sqrt(np.sum(finite * finite)), 3)}{_nonfinite(array)}"


def stats_text(array: Any, what: str) -> str:
    """Everything about one array, for a tooltip."""
    array = np.asarray(array)
    if array.ndim == 0:
        return f"{what}: {fmt(array, 8) if array.dtype.kind == 'f' else array.item()}"
    lines = [f"{what}: {array.dtype} {list(array.shape)}"]
    if array.size and array.dtype.kind in "iuf":
        finite = _finite(array).astype(np.float64)
        if finite.size:
            lines.append(f"  mean {fmt(finite.mean())}  std {fmt(finite.std())}  min {fmt(finite.min())}  "
                         f"max {fmt(finite.max())}  ‖·‖₂ {fmt(np.sqrt(np.sum(finite * finite)))}  "
                         f"zeros {fmt(100 * np.mean(array == 0), 3)}%")
        bad = _nonfinite(array)
        if bad:
            lines.append("  " + bad.strip())
        if array.size <= TOOLTIP_NUMBERS:
            lines.append("  " + np.array2string(array.astype(np.float64) if array.dtype.kind == "f" else array,
                                                precision=4, separator=", ", max_line_width=10_000))
    return "\n".join(lines)


def op_text(node: Node) -> str:
    """What an op node says: the op's own label (a symbol like ×, or text made from its
    attributes), else its name and attributes."""
    label = REGISTRY[node.op].label
    if label is not None:
        return label if isinstance(label, str) else label(dict(node.attrs))
    extra = ", ".join(f"{k}={attr_text(v)}" for k, v in node.attrs)
    text = f"{node.op}({extra})" if extra else node.op
    return text if len(text) <= 40 else text[:39] + "…"


# ---- what to draw -----------------------------------------------------------------------

def forward_nodes(ev) -> list[int]:
    """The forward graph, in a deterministic topological order: the outputs, the target and
    everything they depend on (the backward graph shares the IR and is left out)."""
    G: Graph = ev.program.graph
    roots = [n for n in ev.model.outputs.values() if n in G]
    if ev.model.target is not None and ev.model.target in G:
        roots.append(ev.model.target)
    keep: set[int] = set()
    for r in roots:
        if G[r].grad_of is None:
            keep.add(r)
            keep.update(a for a in nx.ancestors(G.nx, r) if G[a].grad_of is None)
    return G.topological(keep)


_REPEATED = re.compile(r"^(.+)\.(\d+)$")


def _group_scope(scope: tuple[str, ...]) -> tuple[str, ...] | None:
    """The scope of the repeat group an unrolled instance would sit in: ``h3.2`` -> ``h3``."""
    m = _REPEATED.match(scope[-1])
    return scope[:-1] + (m.group(1),) if m else None


def _repeat_groups(layers: dict) -> dict[tuple, list[tuple]]:
    """A repeat group's scope (``h3``) -> its unrolled instances ``h3.1``, ``h3.2``, ...
    (none where a layer instance is itself called ``h3``)."""
    groups: dict[tuple, list[tuple]] = {}
    for scope in layers:
        group = _group_scope(scope)
        if group is not None and group not in layers:
            groups.setdefault(group, []).append(scope)
    return groups


@dataclass(frozen=True)
class _Direction:
    """What ``rankdir`` decides: the sides of a wire its value and gradient sit on (in the
    legend's words), its label's table rows around the rule (the cell ``c``, to fill in with
    ``{value}`` and ``{grad}``) and the ports of that cell the wire comes in and goes out by."""
    value_side: str
    grad_side: str
    rows: str
    port_in: str
    port_out: str


DIRECTIONS = {
    "LR": _Direction("above", "below",
                     '<TR><TD>{value}</TD></TR>'
                     f'<TR><TD PORT="c" HEIGHT="1" WIDTH="36" CELLPADDING="0" BGCOLOR="{WIRE}"></TD></TR>'
                     '<TR><TD>{grad}</TD></TR>', "c:w", "c:e"),
    "TB": _Direction("left of", "right of it",
                     '<TR><TD ALIGN="RIGHT" CELLPADDING="3">{value}</TD>'
                     f'<TD PORT="c" WIDTH="1" HEIGHT="28" CELLPADDING="0" BGCOLOR="{WIRE}"></TD>'
                     '<TD ALIGN="LEFT" CELLPADDING="3">{grad}</TD></TR>', "c:n", "c:s"),
}


@dataclass
class _Cluster:
    """A cluster's own DOT lines and the clusters nested in it, in the order first placed."""
    lines: list[str] = field(default_factory=list)
    children: dict[tuple, _Cluster] = field(default_factory=dict)

    def at(self, path: tuple) -> _Cluster:
        """The cluster at the end of ``path`` (keys from :meth:`_Diagram.cluster_path`), made if new."""
        cluster = self
        for key in path:
            cluster = cluster.children.setdefault(key, _Cluster())
        return cluster


class _Diagram:
    """Builds the DOT text for one evaluation (see the module docstring)."""

    def __init__(self, ev, rankdir: str, max_nodes: int, warn: Callable[[str], None],
                 health: Mapping[int, dict] | None = None):
        if rankdir not in DIRECTIONS:
            raise NNError(f"unknown rankdir {rankdir!r}; use {' or '.join(DIRECTIONS)}")
        self.ev = ev
        self.health = health if health is not None else {}   # node -> finding (nncompile.health): the overlay
        self.G: Graph = ev.program.graph
        self.model = ev.model
        self.rankdir = rankdir
        self.direction = DIRECTIONS[rankdir]
        self.nodes = forward_nodes(ev)
        self.fwd = set(self.nodes)
        self.layers: dict = dict(ev.model.layers)
        self.repeats = _repeat_groups(self.layers)
        self.box_of = self.collapse(max_nodes, warn)
        self.boxes: dict[tuple, list[int]] = {}   # each box's members; boxes in order of first appearance
        for n, scope in self.box_of.items():
            self.boxes.setdefault(scope, []).append(n)
        self.box_ids = {scope: f"L{i}" for i, scope in enumerate(self.boxes)}
        target = ev.model.target
        self.target_name = (self.G[target].name or "the loss") if target is not None else None

    # ---- where things go ----

    def collapse(self, max_nodes: int, warn: Callable[[str], None]) -> dict[int, tuple]:
        """Whether to collapse, decided once: each graph node drawn inside a box -> the scope
        of its top-level layer instance. Empty when the graph is within ``max_nodes`` or has
        no layers to collapse (then drawn node by node, with a warning if it is big)."""
        if len(self.nodes) <= max_nodes:
            return {}
        box_of = {n: self.G[n].scope[:1] for n in self.nodes if self.G[n].scope}
        warn(f"{Path(self.model.file).name}: warning: the graph has {len(self.nodes)} nodes (more than {max_nodes})"
             + (", so each layer instance is drawn as one node" if box_of
                else "; Graphviz may be slow and the diagram hard to read"))
        return box_of

    def rep(self, n: int) -> str:
        """The id of the drawn node standing for graph node ``n``: its own, or its box's."""
        return self.box_ids[self.box_of[n]] if n in self.box_of else f"n{n}"

    def cluster_path(self, scope: tuple[str, ...]) -> tuple:
        """The chain of clusters a scope sits in, as (kind, scope) keys: each layer instance,
        and a ``repeat`` group around unrolled instances (``h3.1`` and ``h3.2`` sit in ``h3``)."""
        path: list = []
        for i in range(1, len(scope) + 1):
            group = _group_scope(scope[:i])
            if group in self.repeats:
                path.append(("repeat", group))
            path.append(("layer", scope[:i]))
        return tuple(path)

    def path_of(self, n: int) -> tuple:
        """The clusters the drawn node for ``n`` sits in: a box sits where its instance's
        cluster would (in its repeat group, if any)."""
        if n in self.box_of:
            return self.cluster_path(self.box_of[n])[:-1]
        return self.cluster_path(self.G[n].scope)

    # ---- values ----

    def value(self, n: int) -> Any:
        node = self.G[n]
        if n in self.ev.values:
            return self.ev.values[n]
        if node.op == "const":
            v = np.asarray(node.attr("value"))
            if v.ndim == 0 and node.shape and all(isinstance(d, int) for d in node.shape):
                v = np.broadcast_to(v, node.shape)
            return v
        return None

    def numbers(self, params: list[int]) -> int:
        """How many numbers the params hold (those with a recorded value)."""
        return sum(int(np.size(v)) for v in map(self.value, params) if v is not None)

    def value_line(self, n: int) -> tuple[str, str]:
        """(text, tooltip) for the value of node n, named unless n is a leaf (its node says the name)."""
        node = self.G[n]
        v = self.value(n)
        text = "?" if v is None else value_text(v, node.shape)
        if node.name and not node.is_leaf:
            text = f"{node.name} = {text}" if np.ndim(v) == 0 else f"{node.name}: {text}"
        return text, "value not recorded" if v is None else stats_text(v, node.name or op_text(node))

    def grad_line(self, n: int) -> tuple[str, str]:
        """(text, tooltip) for the gradient of node n, saying so when there is none."""
        node = self.G[n]
        if n in self.ev.grads:
            g = self.ev.grads[n]
            return grad_text(g), stats_text(g, f"d{self.target_name}/d(this)")
        if self.target_name is None:
            return "no grad", "no gradient: the model has no loss (no 'minimize', no single scalar output)"
        if node.dtype != "float":
            return f"no grad ({node.dtype})", f"no gradient: {node.dtype} values are not differentiable"
        return "no grad", f"no gradient: {self.target_name} does not depend on this value"

    # ---- labels ----

    def value_node(self, n: int) -> str:
        """The label on the wire leaving node n: the value on one side of it (green), the
        gradient on the other (red)."""
        vtext, vtip = self.value_line(n)
        gtext, gtip = self.grad_line(n)
        gbody = escape(gtext) if n in self.ev.grads else f"<I>{escape(gtext)}</I>"
        rows = self.direction.rows.format(value=f'<FONT COLOR="{GREEN}">{escape(vtext)}</FONT>',
                                          grad=f'<FONT COLOR="{RED}">{gbody}</FONT>')
        finding = self.health.get(n)
        if (marked := wire_badge(finding)) is not None:
            rows += (f'<TR><TD COLSPAN="{rows.count("<TD")}"><FONT COLOR="{marked[1]}" POINT-SIZE="10">'
                     f'<B>{escape(marked[0])}</B></FONT></TD></TR>')
        gtip += "" if finding is None else f"\nhealth {finding['level']}: {finding['message']}"
        label = f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{rows}</TABLE>>'
        return f"v{n} [shape=plain, label={label}, tooltip={quote(vtip + chr(10) + gtip)}];"

    def node_line(self, n: int) -> str:
        node = self.G[n]
        loc = node.loc
        where = ""
        if loc is not None:
            source = Sources.line(loc.file, loc.line)
            where = f"{Path(loc.file).name}:{loc.line}" + (f": {source.strip()}" if source else "")
        if node.op in ("input", "param"):
            dims = "" if node.shape == () else '<BR/><FONT POINT-SIZE="9">' + escape(
                ("int" if node.dtype == "int" else "") + "[" + ", ".join(map(str, node.shape)) + "]") + "</FONT>"
            label = f"<<B>{escape(node.name)}</B>{dims}>"
            attrs = STYLE[node.op]
            tip = f"{node.op} {node.name}: {node.dtype}[{', '.join(map(str, node.shape))}]\n{where}"
        elif node.op == "const":
            v = self.value(n)
            text = "?" if v is None else value_text(v, node.shape)
            label = f"<{escape(node.name + ' = ' if node.name else '')}{escape(text)}>"
            attrs = STYLE["const"]
            tip = f"constant (no gradient)\n{stats_text(v, 'value') if v is not None else ''}\n{where}"
        else:
            text = op_text(node)
            label = f"<{escape(text)}>"
            if len(text) <= 2:      # + − × ÷ @ **
                attrs = STYLE["op"]
            elif len(text) <= 4:    # exp, relu, sum, ...
                attrs = {**STYLE["op"], "fontsize": "12", "width": "0.5"}
            else:
                attrs = STYLE["opname"]
            attrs = {**attrs, "ordering": "in"}   # operands top to bottom in argument order
            tip = f"{node.op}{(' -> ' + node.name) if node.name else ''}\n{where}"
        if (finding := self.health.get(n)) is not None:
            attrs, tip = node_style(attrs, finding), f"{tip}\nhealth {finding['level']}: {finding['message']}"
        return f"n{n} [{_attrs(attrs)}, label={label}, tooltip={quote(tip.strip())}];"

    def layer_node(self, scope: tuple, members: list[int]) -> str:
        """One node for a collapsed layer instance: its type, params and their gradient."""
        params = [n for n in members if self.G[n].op == "param"]
        grads = [np.asarray(self.ev.grads[n], dtype=np.float64) for n in params if n in self.ev.grads]
        lines = [f"<B>{escape('.'.join(scope))}</B>: {escape(self.layers.get(scope, 'layer'))}",
                 f'<FONT POINT-SIZE="9">{len(params)} params, {self.numbers(params):,} numbers</FONT>']
        if grads:
            norm = fmt(np.sqrt(sum(float(np.sum(g * g)) for g in grads)), 3)
            lines.append(f'<FONT POINT-SIZE="9" COLOR="{RED}">‖∇params‖ {escape(norm)}</FONT>')
        tip = "\n".join(f"{self.G[n].name} {list(np.shape(self.value(n)))}" for n in params)
        return (f"{self.box_ids[scope]} [{_attrs(STYLE['layer'])}, label=<{'<BR/>'.join(lines)}>, "
                f"tooltip={quote(tip or '.'.join(scope))}];")

    def cluster_label(self, key: tuple) -> tuple[str, str]:
        """(label, style) of a cluster: ``fc1: affine (307,300 params)`` or a repeat group."""
        kind, scope = key
        if kind == "repeat":
            instances = self.repeats[scope]
            kinds = sorted({self.layers[s] for s in instances})
            return f"{scope[-1]}: repeat {len(instances)} × {', '.join(kinds)}", "dashed,rounded"
        params = [n for n in self.nodes if self.G[n].op == "param" and self.G[n].scope[: len(scope)] == scope]
        count = self.numbers(params)
        extra = f"  ({count:,} params)" if count else ""
        return f"{scope[-1]}: {self.layers.get(scope, 'layer')}{extra}", "rounded"

    def legend(self) -> str:
        """The graph's label: the file, what the colours and shapes mean."""
        def cell(kind: str, text: str) -> str:
            s = STYLE[kind]
            return (f'<TD BGCOLOR="{s["fillcolor"]}" COLOR="{s["color"]}" BORDER="1" STYLE="ROUNDED">'
                    f'<FONT POINT-SIZE="9">{text}</FONT></TD>')
        if self.target_name is not None:
            grads = f"{self.direction.grad_side}: gradient ∂{escape(self.target_name)}/∂value"
        else:
            grads = "no gradients: the model has no loss"
        return ('<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="4" CELLPADDING="2"><TR>'
                f'<TD><B>{escape(Path(self.model.file).name)}</B></TD>'
                f'<TD><FONT COLOR="{GREEN}" POINT-SIZE="10">'
                f'{self.direction.value_side} each wire: forward value</FONT></TD>'
                f'<TD><FONT COLOR="{RED}" POINT-SIZE="10">{grads}</FONT></TD>'
                + cell("input", "input") + cell("param", "param") + cell("const", "constant")
                + cell("op", "op") + cell("output", "output") + cell("loss", "loss")
                + (cell("layer", "layer (collapsed)") if self.boxes else "")
                + '</TR>' + (legend_rows(self.health) if self.health else "") + '</TABLE>>')

    # ---- the whole graph ----

    def dot(self) -> str:
        """The DOT text: the drawn nodes in their clusters, then the sinks, then the edges."""
        root = _Cluster()
        for n in self.nodes:
            if n not in self.box_of:
                root.at(self.path_of(n)).lines.append(self.node_line(n))
        for scope, members in self.boxes.items():
            root.at(self.path_of(members[0])).lines.append(self.layer_node(scope, members))
        sinks = self.sinks()
        edges = self.wires(root, sinks)
        out = [
            "digraph nncompile {",
            (f"  graph [rankdir={self.rankdir}, fontname={quote(FONT)}, fontsize=11, nodesep=0.25, ranksep=0.3, "
             f"newrank=true, labelloc=b, labeljust=l, label={self.legend()}];"),
            f"  node [fontname={quote(FONT)}, fontsize=12];",
            f'  edge [color="{WIRE}", arrowsize=0.6, penwidth=1];',
            *self.clusters(root, 1, itertools.count(1)),
            *("  " + line for _, _, line in sinks),
            *("  " + edge for edge in edges),
            "}",
        ]
        return "\n".join(out) + "\n"

    def sinks(self) -> list[tuple[str, int, str]]:
        """(id, graph node, DOT line) of the end nodes: every output, and the loss, get a final
        wire showing their value and the seed gradient."""
        target = self.model.target
        ends = [(f"out{i}", n, "loss" if n == target and self.model.loss is not None else "output", name)
                for i, (name, n) in enumerate(self.model.outputs.items())]
        if target is not None and target not in self.model.outputs.values():
            ends.append(("out_loss", target, "loss", self.G[target].name or "loss"))
        lines = []
        for sid, n, kind, name in ends:
            word = "minimize" if kind == "loss" else "output"
            seed = " (the gradient is seeded with 1 here)" if n == target else ""
            lines.append((sid, n, f"{sid} [{_attrs(STYLE[kind])}, label=<{word} <B>{escape(name)}</B>>, "
                                  f"tooltip={quote(word + ' ' + name + seed)}];"))
        return lines

    def wires(self, root: _Cluster, sinks: list[tuple[str, int, str]]) -> list[str]:
        """The edges: producer -> its value label -> each consumer (and each sink), in argument
        order, and a dashed edge from each constant. Each label is placed where first used."""
        port_in, port_out = self.direction.port_in, self.direction.port_out
        edges: list[str] = []
        labelled: set[int] = set()

        def wire(a: int, dst: str) -> None:
            style = wire_style(self.health.get(a))   # '' without a health overlay
            if a not in labelled:
                labelled.add(a)
                root.at(self.path_of(a)).lines.append(self.value_node(a))
                edges.append(f"{self.rep(a)} -> v{a}:{port_in} [arrowhead=none{', ' + style if style else ''}];")
            edges.append(f"v{a}:{port_out} -> {dst}{f' [{style}]' if style else ''};")

        for c in self.nodes:
            for a in self.G[c].args:
                src, dst = self.rep(a), self.rep(c)
                if a not in self.fwd or src == dst:   # the backward graph, or within one box
                    continue
                if self.G[a].op == "const":
                    edges.append(f'{src} -> {dst} [style=dashed, color="{MUTED}"];')
                else:
                    wire(a, dst)
        for sid, n, _ in sinks:
            wire(n, sid)
        return list(dict.fromkeys(edges)) if self.boxes else edges   # with boxes, one edge per pair, not per use

    def clusters(self, cluster: _Cluster, depth: int, numbers: Iterator[int]) -> Iterator[str]:
        """The DOT lines of a cluster's contents, nested clusters numbered in the order drawn."""
        pad = "  " * depth
        yield from (pad + line for line in cluster.lines)
        for key, child in cluster.children.items():
            label, style = self.cluster_label(key)
            yield f"{pad}subgraph cluster_{next(numbers)}_{_slug(key)} {{"
            yield (f"{pad}  graph [label=<<B>{escape(label)}</B>>, style={quote(style)}, "
                   f'color="#8250df", fontcolor="#8250df", fontsize=11, labelloc=t, labeljust=l, margin=10];')
            yield from self.clusters(child, depth + 1, numbers)
            yield pad + "}"


def _slug(key: tuple) -> str:
    return re.sub(r"\W", "_", ".".join(key[1]))[:40]


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f"{k}={quote(v)}" for k, v in attrs.items())


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def to_dot(ev, rankdir: str = "LR", *, max_nodes: int = MAX_NODES,
           warn: Callable[[str], None] = _stderr, health: Mapping[int, dict] | None = None) -> str:
    """The diagram of an evaluated model as DOT source (deterministic, no Graphviz needed);
    ``health`` (:func:`nncompile.health.check`) colours nodes and wires by their findings."""
    return _Diagram(ev, rankdir, max_nodes, warn, health).dot()


# ---- files ------------------------------------------------------------------------------

INSTALL_HINT = ("install Graphviz (Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz; "
                "conda: conda install -c conda-forge graphviz)")


def render_file(ev, output: str | Path, rankdir: str = "LR", *, max_nodes: int = MAX_NODES,
                health: Mapping[int, dict] | None = None) -> Path:
    """Write the diagram to ``output``; the format is its extension (.svg, .png, .pdf or .dot).

    .dot needs nothing else; the others run Graphviz's ``dot``. When ``dot`` is missing,
    nothing is written (not even g.dot beside g.svg: only the file the user named is ever
    written) and NNError says how to install it, or to ask for the DOT source with -o g.dot.
    """
    from .files import write_atomic

    output = Path(output)
    ext = output.suffix.lower()
    if ext not in FORMATS:
        raise NNError(f"cannot render to {output}: unknown format {ext or '(no extension)'!r}; "
                      f"use one of {', '.join(FORMATS)}")
    source = to_dot(ev, rankdir, max_nodes=max_nodes, health=health)
    if ext == ".dot":
        write_atomic(output, source)
        return output
    if shutil.which("dot") is None:
        dot = output.with_suffix(".dot")
        raise NNError(f"cannot write {output}: Graphviz's 'dot' program is not on PATH; {INSTALL_HINT}. "
                      f"Without it, -o {dot} writes the DOT source (render it later with "
                      f"'dot -T{ext[1:]} {dot} -o {output}')")
    if ext == ".png":  # a sharper bitmap than Graphviz's default 72 dpi
        source = source.replace("  graph [", "  graph [dpi=144, ", 1)
    try:
        image = graphviz.pipe("dot", ext[1:], source.encode("utf-8"), quiet=True)
    except graphviz.CalledProcessError as exc:
        detail = (exc.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        raise NNError(f"cannot write {output}: Graphviz's dot failed"
                      + (f": {' '.join(detail[:3])}" if detail else f" (exit code {exc.returncode})")) from None
    except (graphviz.ExecutableNotFound, OSError) as exc:
        raise NNError(f"cannot write {output}: could not run Graphviz's dot ({exc})") from None
    if ext == ".svg":   # the last line of defence: never leave an SVG that no viewer can open
        try:
            ElementTree.fromstring(image)
        except ElementTree.ParseError as exc:
            raise NNError(f"cannot write {output}: Graphviz made an SVG that is not well-formed XML ({exc}); "
                          f"-o {output.with_suffix('.dot')} writes the DOT source") from None
    write_atomic(output, image)
    return output
