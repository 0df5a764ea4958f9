"""Rendering: an evaluated model as a Graphviz diagram, in the CS231n backprop convention.

Every value a node produces is drawn once, on the wire leaving it: the forward value above
the wire in green and the gradient of the loss below it in red (left and right of it with
``rankdir=TB``). The wire is a small "value" node whose middle row is a rule that lines up
with the edge, so the numbers sit on either side of the line as on the lecture slides; when
a value fans out, the wire splits after its label, so the gradient shown is the sum over
the branches. Op nodes show the operation; inputs, params, constants, outputs and the loss
each have their own shape and colour (see the legend under the graph); an op that its
registry entry says is drawn inside its user (dropout's mask) is not drawn on its own.
Tensors are shown as shape and summary statistics, and tensors of up to 16 numbers as the
numbers themselves. Layer instances are clusters labelled ``name: layer`` (holding the
constants written in them); repeated instances (``h3.1``, ``h3.2``) are grouped in a
``repeat`` cluster and laid out as a grid. With ``branch_grads`` each branch of a split
wire shows its own part of the gradient. Where things go (the direction that fits a
screen, wrapping, the grid) is decided by :mod:`nncompile.layout` from estimated sizes.

:func:`to_dot` is a pure function of the evaluation, so the DOT text is byte-stable: node
ids come from graph node ids and everything is emitted in a fixed order. Every piece of
user text is escaped (:func:`escape` for HTML-like labels, :func:`quote` for DOT strings).
Above ``max_nodes`` forward nodes each top-level layer instance is collapsed into one node.
"""
from __future__ import annotations

import itertools
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import graphviz
import numpy as np

from . import layout
from .clusters import Cluster, cluster_path, common_scope, group_scope, instance_number, repeat_groups, slug
from .errors import NNError, Sources
from .gradient_clusters import drawn_nodes, gradient_clusters
from .health import legend_rows, node_style, wire_badge, wire_style
from .ir import Graph, Node
from .labels import (  # noqa: F401 (escape, quote, fmt, value_text, grad_text: this module's API too)
    _printable, cluster_notes, escape, fmt, grad_text, number_rows, quote, shape_text, small_text, stats_text, value_text,
    with_numbers)
from .ops import REGISTRY
from .ops.registry import attr_text

FORMATS = (".svg", ".png", ".pdf", ".dot")
AUTO = "auto"            # the rankdir that fits the graph's shape to a screen
MAX_NODES = 400          # above this many forward nodes, layer instances are collapsed

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
    return drawn_nodes(G, roots)   # with the sub-graphs of grad() calls (gradient_clusters.py)


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


class _Diagram:
    """Builds the DOT text for one evaluation (see the module docstring)."""

    def __init__(self, ev, rankdir: str, max_nodes: int, warn: Callable[[str], None], branch_grads: bool = False,
                 health: Mapping[int, dict] | None = None):
        if rankdir not in DIRECTIONS:
            raise NNError(f"unknown rankdir {rankdir!r}; use {', '.join(DIRECTIONS)} or auto")
        self.ev = ev
        self.health = health if health is not None else {}   # node -> finding (nncompile.health): the overlay
        self.G: Graph = ev.program.graph
        self.model = ev.model
        self.rankdir = rankdir
        self.direction = DIRECTIONS[rankdir]
        self.branch_grads = branch_grads and bool(ev.branch_grads)
        self.nodes = forward_nodes(ev)
        self.fwd = set(self.nodes)
        self.layers: dict = dict(ev.model.layers)
        self.repeats = repeat_groups(self.layers)
        self.folded = self.drawn_in_users()
        self.fold_of = {user: n for n, user in self.folded.items()}
        self.scopes = {n: self.drawn_scope(n) for n in self.nodes}
        self.in_grad = gradient_clusters(self.G, self.nodes)
        self.box_of = self.collapse(max_nodes, warn)
        self.boxes: dict[tuple, list[int]] = {}   # each box's members; boxes in order of first appearance
        for n, scope in self.box_of.items():
            self.boxes.setdefault(scope, []).append(n)
        self.box_ids = {scope: f"L{i}" for i, scope in enumerate(self.boxes)}
        target = ev.model.target
        self.target_name = (self.G[target].name or "the loss") if target is not None else None

    # ---- where things go ----

    def drawn_in_users(self) -> dict[int, int]:
        """Each op drawn inside the one op using it (dropout's mask, inside its ×) -> that op."""
        folded = {}
        for n in self.nodes:
            users = [u for u in self.G.nx.successors(n) if u in self.fwd]
            if REGISTRY[self.G[n].op].drawn_in_user is not None and len(users) == 1:
                folded[n] = users[0]
        return folded

    def drawn_scope(self, n: int) -> tuple[str, ...]:
        """The layer scope node ``n`` is drawn in: its own; but a constant is made with no scope,
        so it sits with the users it was written beside (a layer keeps its own constants),
        and one passed to a layer as an argument sits where the call is."""
        node = self.G[n]
        if node.op != "const" or node.scope:
            return node.scope
        users = [self.G[u] for u in self.G.nx.successors(n) if u in self.fwd]
        line = _line(node.loc)
        beside = [u.scope for u in users if line is not None and _line(u.loc) == line]
        if beside:
            return common_scope(beside)
        common = common_scope([u.scope for u in users])
        return common[:-1]

    def collapse(self, max_nodes: int, warn: Callable[[str], None]) -> dict[int, tuple]:
        """Whether to collapse, decided once: each graph node drawn inside a box -> the scope
        of its top-level layer instance. Empty when the graph is within ``max_nodes`` or has
        no layers to collapse (then drawn node by node, with a warning if it is big)."""
        if len(self.nodes) <= max_nodes:
            return {}
        box_of = {n: self.scopes[n][:1] for n in self.nodes if self.scopes[n]}
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
        return cluster_path(scope, self.repeats)

    def path_of(self, n: int) -> tuple:
        """The clusters the drawn node for ``n`` sits in: a box sits where its instance's
        cluster would (in its repeat group, if any)."""
        if n in self.box_of:
            return self.cluster_path(self.box_of[n])[:-1]
        if n in self.in_grad:
            return (("grad", (self.in_grad[n],)),)
        return self.cluster_path(self.scopes[n])

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
        text = "?" if v is None else small_text(v, node.shape) if number_rows(v) else value_text(v, node.shape)
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
        value = with_numbers(escape(vtext), number_rows(self.value(n)), GREEN, " = ")
        if n in self.ev.grads and number_rows(self.ev.grads[n]):
            grad = with_numbers("", number_rows(self.ev.grads[n]), RED, "")
        elif n in self.ev.grads:
            grad = f'<FONT COLOR="{RED}">{escape(gtext)}</FONT>'
        else:
            grad = f'<FONT COLOR="{RED}"><I>{escape(gtext)}</I></FONT>'
        rows = self.direction.rows.format(value=value, grad=grad)
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
            folded = self.fold_of.get(n)
            text = op_text(node) if folded is None else REGISTRY[self.G[folded].op].drawn_in_user(
                dict(self.G[folded].attrs))
            label = f"<{escape(text)}>"
            if len(text) <= 2:      # + − × ÷ @ **
                attrs = STYLE["op"]
            elif len(text) <= 4:    # exp, relu, sum, ...
                attrs = {**STYLE["op"], "fontsize": "12", "width": "0.5"}
            else:
                attrs = STYLE["opname"]
            attrs = {**attrs, "ordering": "in"}   # operands top to bottom in argument order
            tip = f"{node.op}{(' -> ' + node.name) if node.name else ''}\n{where}"
            if folded is not None and self.value(folded) is not None:   # what it drew: dropout's mask
                tip = f"{text}: the value {op_text(node)} a mask\n{stats_text(self.value(folded), 'mask')}\n{where}"
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
        if kind == "grad":
            return f"{scope[0]}: gradient sub-graph", "dashed,rounded"
        if kind == "repeat":
            instances = self.repeats[scope]
            kinds = sorted({self.layers[s] for s in instances})
            return f"{scope[-1]}: repeat {len(instances)} × {', '.join(kinds)}", "dashed,rounded"
        params = [n for n in self.nodes if self.G[n].op == "param" and self.G[n].scope[: len(scope)] == scope]
        count = self.numbers(params)
        extra = f"  ({count:,} params)" if count else ""
        notes = cluster_notes(self.G, [n for n in self.nodes if self.G[n].scope == scope])
        return f"{scope[-1]}: {self.layers.get(scope, 'layer')}{notes}{extra}", "rounded"

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
                + (f'<TD><FONT COLOR="{RED}" POINT-SIZE="10">on each branch of a split: its own part; '
                   'the parts add up to the gradient before the split</FONT></TD>' if self.branch_grads else "")
                + cell("input", "input") + cell("param", "param") + cell("const", "constant")
                + cell("op", "op") + cell("output", "output") + cell("loss", "loss")
                + (cell("layer", "layer (collapsed)") if self.boxes else "")
                + '</TR>' + (legend_rows(self.health) if self.health else "") + '</TABLE>>')

    # ---- the whole graph ----

    def dot(self) -> str:
        """The DOT text: the drawn nodes in their clusters, then the sinks, then the edges."""
        root = Cluster()
        for n in self.nodes:
            if n not in self.box_of and n not in self.folded:
                root.at(self.path_of(n)).lines.append(self.node_line(n))
        for scope, members in self.boxes.items():
            root.at(self.path_of(members[0])).lines.append(self.layer_node(scope, members))
        sinks = self.sinks()
        wires = self.wires(root, sinks)
        sizes = {i: layout.label_size(line) for line in [*root.all_lines(), *(line for _, _, line in sinks)]
                 for i in _declared(line)}
        rows, aligned = self.grid(wires, sizes)
        same = {i: ids[0] for ids in aligned for i in ids[1:]}
        ranking = [(_id(tail), _id(head)) for tail, head, attrs in self.ranked(wires, rows) if _RANKED not in attrs]
        tops = {i: key for key, child in root.children.items() for line in child.all_lines() for i in _declared(line)}
        band, self.size = layout.bands(sizes, ranking, self.rankdir, tops, same)
        edges = [f"{tail} -> {head}" + (f" [{', '.join(attrs)}]" if attrs else "") + ";"
                 for tail, head, attrs in self.ranked(wires, rows, band)]
        out = [
            "digraph nncompile {",
            (f"  graph [rankdir={self.rankdir}, fontname={quote(FONT)}, fontsize=11, nodesep=0.25, ranksep=0.3, "
             f"newrank=true, labelloc=b, labeljust=l, label={self.legend()}];"),
            f"  node [fontname={quote(FONT)}, fontsize=12];",
            f'  edge [color="{WIRE}", arrowsize=0.6, penwidth=1, fontname={quote(FONT)}];',
            *self.clusters(root, 1, itertools.count(1)),
            *("  " + line for _, _, line in sinks),
            *("  " + edge for edge in (dict.fromkeys(edges) if self.boxes else edges)),  # with boxes, one per pair
            *(f"  {{rank=same; {'; '.join(ids)};}}" for ids in aligned),
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

    def wires(self, root: Cluster, sinks: list[tuple[str, int, str]]) -> list[_Wire]:
        """The edges: producer -> its value label -> each consumer (and each sink), in argument
        order, and a dashed edge from each constant. Each label is placed where first used."""
        port_in, port_out = self.direction.port_in, self.direction.port_out
        edges: list[_Wire] = []
        labelled: set[int] = set()

        shares = self.shares() if self.branch_grads else {}

        def wire(a: int, dst: str) -> None:
            style = wire_style(self.health.get(a))   # '' without a health overlay
            styled = (style,) if style else ()
            if a not in labelled:
                labelled.add(a)
                root.at(self.path_of(a)).lines.append(self.value_node(a))
                edges.append(_Wire(self.rep(a), f"v{a}:{port_in}", ("arrowhead=none", *styled), a, a))
            share = shares.get((a, dst) if self.boxes else (c, position))
            edges.append(_Wire(f"v{a}:{port_out}", dst, (*(() if share is None else (share,)), *styled), a, c))

        for c in self.nodes:
            for position, a in enumerate(self.G[c].args):
                src, dst = self.rep(a), self.rep(c)
                if a not in self.fwd or src == dst or a in self.folded:   # backward, in one box, or drawn in c
                    continue
                if self.G[a].op == "const":
                    edges.append(_Wire(src, dst, ("style=dashed", f'color="{MUTED}"'), a, c))
                else:
                    wire(a, dst)
        c = position = None   # a sink is no branch of the backward pass
        for sid, n, _ in sinks:
            wire(n, sid)
        return edges

    # ---- layout (see nncompile.layout) ----

    def instances(self, wires: list[_Wire]) -> dict[tuple, list[list[str]]]:
        """Each outermost repeat group -> the drawn ids of each of its instances (nodes and
        wire labels), in order, where every instance draws as many (the same block, repeated)."""
        labels = {_id(w.head) for w in wires if _id(w.head) == f"v{w.src}"}
        out = {}
        for group, scopes in self.repeats.items():
            if any(g in self.repeats for g in (group_scope(group[:i]) for i in range(1, len(group) + 1))):
                continue   # inside another repeat: aligned with it
            scopes = sorted(scopes, key=lambda scope: instance_number(scope))
            members = [[n for n in self.nodes if n not in self.folded and self.scopes[n][:len(scope)] == scope]
                       for scope in scopes]
            ids = [list(dict.fromkeys([*map(self.rep, ns), *(f"v{n}" for n in ns if f"v{n}" in labels)]))
                   for ns in members]
            if len({len(i) for i in ids}) == 1 and len(ids) > 1:
                out[group] = ids
        return out

    def grid(self, wires: list[_Wire], sizes: dict[str, tuple[float, float]]
             ) -> tuple[dict[int, tuple[tuple, int]], list[list[str]]]:
        """The repeated blocks laid out in a grid instead of one long line (a staircase, as
        Graphviz draws it): graph node -> (its group, its row); and the drawn ids that share
        a rank, one block's with those of the blocks below it. (Graphviz orders the rows; an
        invisible edge to keep them in order tangles the edges from one row to the next.)"""
        rows: dict[int, tuple[tuple, int]] = {}
        aligned: list[list[str]] = []
        for group, blocks in self.instances(wires).items():
            mine = {i: sizes.get(i, layout.SMALLEST) for i in blocks[0]}
            inside = [(_id(w.tail), _id(w.head)) for w in wires if _id(w.tail) in mine and _id(w.head) in mine]
            along = layout.per_row(len(blocks), layout.extent(mine, inside, self.rankdir), self.rankdir)
            index = {i: k for k, ids in enumerate(blocks) for i in ids}
            for n in self.nodes:
                if self.rep(n) in index:
                    rows[n] = (group, index[self.rep(n)] // along)
            for first in range(min(along, len(blocks))):
                column = blocks[first::along]
                if len(column) > 1:
                    aligned.extend(list(ids) for ids in zip(*column))
        return rows, aligned

    def ranked(self, wires: list[_Wire], rows: dict[int, tuple[tuple, int]],
               band: dict[str, int] | None = None) -> Iterator[tuple[str, str, tuple]]:
        """(tail, head, attributes) of each wire; one from a block's row into the next row, or
        from one band of a wrapped graph into the next, does not rank its head after its
        tail (the next row starts again at the left)."""
        band = band or {}
        for w in wires:
            wraps = w.src in rows and w.dst in rows and rows[w.src][0] == rows[w.dst][0] and rows[w.src] != rows[w.dst]
            wraps = wraps or band.get(_id(w.tail), 0) != band.get(_id(w.head), 0)
            yield w.tail, w.head, w.attrs + ((_RANKED,) if wraps else ())

    def shares(self) -> dict[tuple, str]:
        """The edge attributes that label each branch of a fanned-out value with its own part
        of the gradient (the backward pass sums these parts into the gradient on the wire
        before the split), keyed by (user, operand position); into a collapsed layer, one
        edge per (value, box) carries the sum of the parts its uses there receive."""
        parts: dict[tuple, list[np.ndarray]] = {}
        for (c, position), part in sorted(self.ev.branch_grads.items()):
            a = self.G[c].args[position]
            if a in self.fwd and c in self.fwd and not (self.boxes and self.rep(a) == self.rep(c)):
                key = (a, self.rep(c)) if self.boxes else (c, position)
                parts.setdefault(key, []).append(np.asarray(part, dtype=np.float64))
        out = {}
        for key, arrays in parts.items():
            part = sum(arrays[1:], arrays[0])
            rows = number_rows(part)
            text = (with_numbers("", rows, RED, "") if rows else
                    f'<FONT COLOR="{RED}">{escape(fmt(part) if part.ndim == 0 else grad_text(part))}</FONT>')
            out[key] = (f'label=<<FONT POINT-SIZE="10" FACE="{FONT}">{text}</FONT>>, '
                        f"labeltooltip={quote(stats_text(part, 'this branch' + chr(39) + 's part of the gradient'))}")
        return out

    def clusters(self, cluster: Cluster, depth: int, numbers: Iterator[int]) -> Iterator[str]:
        """The DOT lines of a cluster's contents, nested clusters numbered in the order drawn."""
        pad = "  " * depth
        yield from (pad + line for line in cluster.lines)
        for key, child in cluster.children.items():
            label, style = self.cluster_label(key)
            yield f"{pad}subgraph cluster_{next(numbers)}_{slug(key)} {{"
            yield (f"{pad}  graph [label=<<B>{escape(label)}</B>>, style={quote(style)}, "
                   f'color="#8250df", fontcolor="#8250df", fontsize=11, labelloc=t, labeljust=l, margin=10];')
            yield from self.clusters(child, depth + 1, numbers)
            yield pad + "}"


@dataclass(frozen=True)
class _Wire:
    """One edge: its ends (ids, with ports), its attributes, and the graph nodes it joins."""
    tail: str
    head: str
    attrs: tuple[str, ...]
    src: int
    dst: int | None


_RANKED = "constraint=false"   # a wire that leaves its head's rank alone


def _id(end: str) -> str:
    return end.split(":")[0]


_DECLARED = re.compile(r"^\s*(\w+) \[")


def _declared(line: str) -> list[str]:
    """The node a line of DOT declares, if any."""
    m = _DECLARED.match(line)
    return [m.group(1)] if m and m.group(1) not in ("graph", "node", "edge") else []


def _line(loc) -> tuple[str, int] | None:
    return None if loc is None else (loc.file, loc.line)


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f"{k}={quote(v)}" for k, v in attrs.items())


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def to_dot(ev, rankdir: str = "LR", *, max_nodes: int = MAX_NODES,
           warn: Callable[[str], None] = _stderr, branch_grads: bool = False,
           health: Mapping[int, dict] | None = None) -> str:
    """The diagram of an evaluated model as DOT source (deterministic, no Graphviz needed).
    ``branch_grads`` labels each branch of a fanned-out value with its own part of the
    gradient, the wire before the split keeping their sum. ``rankdir="auto"`` draws left to
    right or top to bottom, whichever is estimated to fit a screen better (nncompile.layout).
    ``health`` (:func:`nncompile.health.check`) colours nodes and wires by their findings."""
    if rankdir != AUTO:
        return _Diagram(ev, rankdir, max_nodes, warn, branch_grads, health).dot()
    drawn = {d: _Diagram(ev, d, max_nodes, warn if d == "LR" else _quiet, branch_grads, health) for d in DIRECTIONS}
    dots = {d: diagram.dot() for d, diagram in drawn.items()}
    return dots[layout.direction({d: diagram.size for d, diagram in drawn.items()})]


def _quiet(message: str) -> None:
    """A warning said once already (auto draws the graph both ways)."""


# ---- files ------------------------------------------------------------------------------

INSTALL_HINT = ("install Graphviz (Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz; "
                "conda: conda install -c conda-forge graphviz)")


def render_file(ev, output: str | Path, rankdir: str = "LR", *, max_nodes: int = MAX_NODES,
                branch_grads: bool = False, health: Mapping[int, dict] | None = None) -> Path:
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
                      f"use one of {', '.join(FORMATS)}, or .html for the interactive page (nncompile.page)")
    source = to_dot(ev, rankdir, max_nodes=max_nodes, branch_grads=branch_grads, health=health)
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
