"""How nncompile's objects show themselves in a notebook: a :class:`Diagram` as SVG, a
compiled module as a table of what it takes and gives.

Jupyter asks an object for ``_repr_mimebundle_`` (or ``_repr_svg_``/``_repr_html_``) and
shows the richest type it can; every other place gets the short text repr. The diagram is
the one render.py draws for ``nncompile render`` (:func:`nncompile.render.to_dot` and
:func:`~nncompile.render.render_file`), so a notebook shows what the command line writes.
Everything from the .nn file is escaped: a name cannot inject markup into the page.
"""
from __future__ import annotations

import html
import math
import tempfile
from functools import cached_property
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import NNError
from .render import MAX_NODES, fmt, forward_nodes, render_file, to_dot


class Diagram:
    """An evaluated model's diagram (values above each wire in green, gradients below in red).

    ``source`` is the DOT text; :meth:`svg` and :meth:`save` run Graphviz's ``dot``, as
    ``nncompile render`` does. In Jupyter the diagram shows as SVG; as text it is one line.
    """

    def __init__(self, evaluation: Any, rankdir: str = "auto", *, max_nodes: int = MAX_NODES, where: str = ""):
        if rankdir not in ("auto", "LR", "TB"):
            raise NNError(f"rankdir must be 'auto', 'LR' or 'TB', not {rankdir!r}")
        self.evaluation = evaluation
        self.rankdir = rankdir
        self.max_nodes = max_nodes
        self.where = where   # what was run: the mode, where the params and inputs came from
        self._svg: str | None = None

    @cached_property
    def source(self) -> str:
        """The DOT text, as ``nncompile render -o model.dot`` writes it."""
        return to_dot(self.evaluation, self.rankdir, max_nodes=self.max_nodes)

    @property
    def name(self) -> str:
        return Path(self.evaluation.model.file).name

    def svg(self) -> str:
        """The diagram as SVG text (well-formed XML, checked), drawn once and kept."""
        if self._svg is None:
            with tempfile.TemporaryDirectory(prefix="nncompile-") as folder:
                self._svg = self.save(Path(folder) / "diagram.svg").read_text(encoding="utf-8")
        return self._svg

    def save(self, path: str | Path) -> Path:
        """Write the diagram to ``path`` (.svg, .png, .pdf or .dot, by its extension), whole or not at all."""
        return render_file(self.evaluation, path, self.rankdir, max_nodes=self.max_nodes)

    def _repr_svg_(self) -> str | None:
        try:
            return self.svg()
        except NNError:   # no Graphviz: the text repr says why
            return None

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        try:
            return {"image/svg+xml": self.svg(), "text/plain": repr(self)}
        except NNError as exc:   # a notebook shows the reason instead of a formatter's traceback
            return {"text/plain": f"{self!r}\n{exc.format()}"}

    def __repr__(self) -> str:
        nodes = len(forward_nodes(self.evaluation))
        return (f"<Diagram of {self.name}: {nodes} nodes, rankdir {self.rankdir}; "
                f".source is the DOT text, .svg() and .save(path) draw it>")


def describe(evaluation: Any) -> str:
    """An evaluation in one line: the model, the mode, the loss (or single scalar output)."""
    ev = evaluation
    target = ev.model.target   # a scalar: the loss, or the single scalar output
    shown = ""
    if target is not None and target in ev.values:
        shown = f" {ev.program.graph[target].name or 'the loss'} = {fmt(ev.values[target])};"
    return (f"<Evaluation of {Path(ev.model.file).name} in {ev.mode} mode:{shown} "
            f"{len(ev.named_values())} named values, gradients of {len(ev.input_and_param_grads())} inputs and "
            "params; in a notebook it shows as its diagram>")


# ---- compiled modules ------------------------------------------------------------------


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(map(str, shape)) + "]" if shape else "scalar"


def module_table(module: ModuleType) -> str:
    """A compiled module's inputs, params and outputs (shape, dtype; a param's number of
    entries) as an HTML table, everything from the .nn file escaped."""
    e = html.escape
    sections = (("input", module.INPUTS), ("param", module.PARAMS), ("output", module.OUTPUTS))
    loss = getattr(module, "LOSS", None)
    rows = []
    for kind, entries in sections:
        for i, (name, (shape, dtype)) in enumerate(entries.items()):
            size = f"{math.prod(shape):,}" if kind == "param" else ""
            role = " (loss)" if kind == "output" and name == loss else ""
            head = f'<th rowspan="{len(entries)}" style="text-align:left">{kind}s</th>' if i == 0 else ""
            rows.append(f"<tr>{head}<td><code>{e(name)}</code>{role}</td><td><code>{e(_shape(shape))}</code></td>"
                        f"<td>{e(str(dtype))}</td><td style=\"text-align:right\">{size}</td></tr>")
    count = sum(math.prod(shape) for shape, _ in module.PARAMS.values())
    caption = f"{e(module.__name__)}: compiled by nncompile, {count:,} params"
    return (f'<table><caption style="text-align:left">{caption}</caption>'
            "<thead><tr><th></th><th>name</th><th>shape</th><th>dtype</th><th>entries</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def show_as_table(module: ModuleType) -> ModuleType:
    """Give a loaded module a ``_repr_html_`` (IPython calls it on the module object) without
    touching its source text, which stays byte for byte what was compiled."""
    if all(hasattr(module, name) for name in ("INPUTS", "PARAMS", "OUTPUTS")):
        module._repr_html_ = lambda: module_table(module)   # type: ignore[attr-defined]
    return module
