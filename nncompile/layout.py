"""Where a diagram's pieces go, decided before Graphviz runs so that the DOT text stays a
pure function of the model: the direction that fits a screen, and a grid for the instances
of a ``repeat`` block, so that a deep model is neither a 10,000-pixel strip nor a diagonal
staircase of blocks.

Both decisions come from an estimate of the drawing's size: each node gets the rank the
longest path to it gives (a leaf sits just before its first user, as Graphviz puts it),
and a rank and a node across it take the room measured on typical diagrams below.
"""
from __future__ import annotations

import html
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable

import networkx as nx

DIRECTIONS = ("LR", "TB")
SCREEN = (16.0, 9.0)                     # the shape to fit, in inches (a laptop screen's proportions)
CHAR, LINE = 0.085, 0.21                 # inches a character of a 12-point label takes across, a line down
SMALLEST = (0.5, 0.4)                    # a node's least size: an op's circle
RANKSEP, NODESEP = 0.3, 0.25             # the diagram's own spacing (render.py's graph attributes)
# What Graphviz makes of the estimate (along, across), measured on examples/: it packs ranks
# a little tighter than the widest label of each, and needs room across for clusters' labels.
CALIBRATION = {"LR": (0.92, 1.22), "TB": (1.13, 0.88)}
CUT_WIRES = 2                            # a wrapped graph is cut only where at most this many wires cross
ROOMY = 1.25                             # a drawing up to this many screens is not wrapped (the estimate is rough)

Edge = tuple[str, str]


def ranks(nodes: Iterable[str], edges: Iterable[Edge], same: dict[str, str] | None = None) -> dict[str, int]:
    """Each node's rank: the length of the longest path to it, a source (an input, a param,
    a constant) placed just before the first of its users; ``same`` maps a node to the one
    it shares a rank with (an aligned block's node to the first block's)."""
    same = same or {}
    g = nx.DiGraph()
    g.add_nodes_from(same.get(n, n) for n in nodes)
    g.add_edges_from((same.get(a, a), same.get(b, b)) for a, b in edges)
    rank: dict[str, int] = {}
    for n in nx.lexicographical_topological_sort(g):
        rank[n] = max((rank[p] + 1 for p in g.predecessors(n)), default=0)
    for n in g:
        if g.in_degree(n) == 0 and g.out_degree(n):
            rank[n] = max(0, min(rank[s] for s in g.successors(n)) - 1)
    return {n: rank[same.get(n, n)] for n in nodes}


_LABEL = re.compile(r"label=<(.*?)>, tooltip=")
_BREAK = re.compile(r"<BR/>|</TR>")
_TAG = re.compile(r"<[^>]*>")


def label_size(line: str) -> tuple[float, float]:
    """The estimated (width, height) in inches of the node a DOT line declares, from the
    text of its HTML-like label: the longest line across, the number of lines down."""
    m = _LABEL.search(line)
    lines = [html.unescape(_TAG.sub("", part)) for part in _BREAK.split(m.group(1))] if m else [""]
    lines = [text for text in lines if text.strip()] or [""]
    return max(SMALLEST[0], CHAR * max(map(len, lines)) + 0.2), max(SMALLEST[1], LINE * len(lines) + 0.1)


def extent(sizes: dict[str, tuple[float, float]], edges: Iterable[Edge], rankdir: str,
           same: dict[str, str] | None = None) -> tuple[float, float]:
    """The estimated (width, height) in inches of the nodes of ``sizes`` drawn in ``rankdir``:
    along the direction, each rank takes its widest node; across it, a rank its nodes' sum."""
    rank = ranks(list(sizes), edges, same)
    if not rank:
        return 0.0, 0.0
    along_axis = 0 if rankdir == "LR" else 1
    widest: dict[int, float] = {}
    total: dict[int, float] = {}
    for n, r in rank.items():
        widest[r] = max(widest.get(r, 0.0), sizes[n][along_axis])
        total[r] = total.get(r, 0.0) + sizes[n][1 - along_axis] + NODESEP
    along_factor, across_factor = CALIBRATION[rankdir]
    along = (sum(widest.values()) + RANKSEP * len(widest)) * along_factor
    across = max(total.values()) * across_factor
    return (along, across) if rankdir == "LR" else (across, along)


def scale(size: tuple[float, float]) -> float:
    """How many screens the drawing takes along its tighter side (1: it just fits)."""
    return max(size[0] / SCREEN[0], size[1] / SCREEN[1])


def per_row(count: int, size: tuple[float, float], rankdir: str) -> int:
    """How many of ``count`` blocks of ``size`` (width, height) to put side by side along the
    direction before starting the next row, so that the grid best fits the screen's shape."""
    def grid(along: int) -> tuple[float, float]:
        rows = math.ceil(count / along)
        return (along * size[0], rows * size[1]) if rankdir == "LR" else (rows * size[0], along * size[1])
    return min(range(1, count + 1), key=lambda k: (fit(grid(k)), k))


def elongation(size: tuple[float, float]) -> float:
    """How many times longer than the screen's proportions the drawing is, either way (1: as
    the screen, or squarer)."""
    width, height = size
    if not width or not height:
        return 1.0
    ratio = (width / height) / (SCREEN[0] / SCREEN[1])
    return max(ratio, 1 / ratio, 1.0)


def direction(sizes: dict[str, tuple[float, float]]) -> str:
    """LR, as the lecture draws, where that takes about a screen; else the direction whose
    estimated drawing fits the screen best."""
    if scale(sizes["LR"]) <= ROOMY:
        return "LR"
    return min(DIRECTIONS, key=lambda d: (fit(sizes[d]), DIRECTIONS.index(d)))


def fit(size: tuple[float, float]) -> float:
    """How badly a drawing of ``size`` fits the screen: the screens it takes along its tighter
    side, a strip (more than twice the screen's proportions) counting as that much bigger."""
    return scale(size) * max(1.0, elongation(size) / 2)


def bands(sizes: dict[str, tuple[float, float]], edges: list[Edge], rankdir: str, clusters: dict[str, object],
          same: dict[str, str] | None = None, most: int = 8) -> tuple[dict[str, int], tuple[float, float]]:
    """A long graph wrapped into bands of consecutive ranks (rows, in LR; columns, in TB), as
    many as fit the screen best, cut only where no top-level cluster (``clusters``: node ->
    its top-level cluster) would be split and few wires cross: each node's band (none where one screen holds the
    graph unwrapped), and the estimated size."""
    rank = ranks(list(sizes), edges, same)
    whole = extent(sizes, edges, rankdir, same)
    if not rank or scale(whole) <= ROOMY:   # about a screen as it is: the lecture's circuits stay one line
        return {}, whole
    spans: dict[object, list[int]] = {}
    for n, key in clusters.items():
        if n in rank:
            spans.setdefault(key, []).append(rank[n])
    inside = {r for rs in spans.values() for r in range(min(rs), max(rs))}   # a cut after r would split a cluster
    last = max(rank.values())
    crossing = Counter(r for a, b in edges for r in range(rank[a], rank[b]))   # wires a cut after r would cut
    cuts = [r for r in range(last) if r not in inside and crossing[r] <= CUT_WIRES]
    best = ({n: 0 for n in sizes}, whole)
    for count in range(2, min(most, len(cuts) + 1) + 1):
        chosen = sorted({min(cuts, key=lambda r: (abs(r + 1 - last * k / count), r)) for k in range(1, count)})
        if min(b - a for a, b in itertools.pairwise([-1, *chosen, last])) < last / (2 * count):
            continue   # a band much shorter than the others: a stub on a row of its own saves nothing
        band = {n: sum(r > c for c in chosen) for n, r in rank.items()}
        parts = [extent({n: s for n, s in sizes.items() if band[n] == b},
                        [(a, z) for a, z in edges if band[a] == band[z] == b], rankdir, same) for b in range(len(chosen) + 1)]
        along = 0 if rankdir == "LR" else 1
        size = [0.0, 0.0]
        size[along] = max(p[along] for p in parts)
        size[1 - along] = sum(p[1 - along] for p in parts)
        if fit(tuple(size)) < fit(best[1]):
            best = (band, (size[0], size[1]))
    return best
