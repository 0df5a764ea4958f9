"""What a diagram's labels say: numbers, shapes and tensor summaries as short text, and
user text escaped for Graphviz's HTML-like labels and DOT strings (see nncompile.render)."""
from __future__ import annotations

import html
import math
from typing import Any

import numpy as np

SHOWN_NUMBERS = 16       # tensors up to this size show their numbers, on the wire and in the tooltip


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


def number_rows(value: Any) -> list[list[str]] | None:
    """A small tensor's numbers, compactly, as rows: a vector is one row, a matrix (or more
    dims) a row per entry of the last axis; None for a scalar, an empty or a big tensor."""
    array = np.asarray(value)
    if array.ndim == 0 or not 0 < array.size <= SHOWN_NUMBERS:
        return None
    text = (lambda v: str(int(v))) if array.dtype.kind in "iub" else (lambda v: fmt(v, 3))
    return [[text(v) for v in row] for row in array.reshape(-1, array.shape[-1])]


def small_text(value: Any, declared: tuple | None = None) -> str:
    """The line a small tensor's numbers go with: its shape (and dtype, if not float)."""
    array = np.asarray(value)
    kind = {"b": "bool ", "i": "int ", "u": "int "}.get(array.dtype.kind, "")
    return kind + shape_text(array.shape, declared)


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
        if array.size <= SHOWN_NUMBERS:
            lines.append("  " + np.array2string(array.astype(np.float64) if array.dtype.kind == "f" else array,
                                                precision=4, separator=", ", max_line_width=10_000))
    return "\n".join(lines)


def with_numbers(text: str, rows: list[list[str]] | None, colour: str, joint: str) -> str:
    """One side of a wire in ``colour``: ``text`` (escaped markup), then a small tensor's
    numbers: a vector's on the same line (``[0.1, -2, 3.5]``), a matrix's as a tiny grid."""
    if rows is None:
        return f'<FONT COLOR="{colour}">{text}</FONT>'
    if len(rows) == 1:
        return f'<FONT COLOR="{colour}">{text}{joint if text else ""}[{escape(", ".join(rows[0]))}]</FONT>'
    cells = "".join("<TR>" + "".join(f'<TD ALIGN="RIGHT"><FONT COLOR="{colour}" POINT-SIZE="10">{escape(v)}</FONT></TD>'
                                     for v in row) + "</TR>" for row in rows)
    grid = f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{cells}</TABLE>'
    head = f'<TR><TD><FONT COLOR="{colour}">{text}</FONT></TD></TR>' if text else ""
    return f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0">{head}<TR><TD>{grid}</TD></TR></TABLE>'


def cluster_notes(G: Any, nodes: Any) -> str:
    """What a layer's cluster label says of the ops directly in it that ask to be named there
    (``OpDef.cluster_note``: a conv's kernel, ``3×3 conv 1→16``), joined: "" when none do."""
    from .ops import REGISTRY   # labels are text utilities; only this asks the registry

    notes = []
    for n in nodes:
        note = REGISTRY[G[n].op].cluster_note
        if note is not None:
            notes.append(note([G[a].shape for a in G[n].args], dict(G[n].attrs)))
    return "".join(f" · {note}" for note in notes)
