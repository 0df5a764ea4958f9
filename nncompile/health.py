"""Gradient health: is training moving, are gradients reaching every layer, are units alive?

Four figures, from an :class:`~nncompile.evaluate.Evaluation` (every value and gradient of a
batch) and, for the first, one step of the model's own optimiser on copies of its params:

* **update ratio** per weight, ``‖Δw‖ / ‖w‖`` of that step (CS231n: about 1e-3 is healthy);
* **gradient ratio** per layer, the RMS of its params' gradients over that of the layer
  nearest the loss (Glorot & Bengio 2010: vanishing and exploding gradients), and any
  non-finite gradient anywhere;
* **dead units** of ReLU-like ops (the ops declaring ``dead_at``): units whose output is at
  or below it for every example of the batch (CS231n: up to 40% of a net can be dead);
* **saturation** of tanh and sigmoid (the ops declaring ``saturates``): the share of
  outputs on their flat tails (Karpathy's makemore, part 3).

:func:`check` returns a :class:`Health`, which is also the mapping ``graph node id ->
{"level", "metric", "value", "message"}`` that the diagram and the page colour by;
:class:`Monitor` measures the same figures during training, on a small share of its time.
Which ops are ReLU-like or saturating is op knowledge, read from the registry.
"""
from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import Any

import numpy as np

from .errors import NNError
from .ops import REGISTRY

LEVELS = ("ok", "warn", "bad")
SMALL_BATCH = 32   # below this many examples, dead-unit shares are mostly chance
COLOURS = {"ok": ("#1a7f37", "#d2f5d8"), "warn": ("#bc4c00", "#ffe2c2"), "bad": ("#cf222e", "#ffcecb")}  # line, fill
PEN = {"ok": "1.5", "warn": "2.5", "bad": "3"}   # the width of a coloured outline or wire


def _threshold(default: float, source: str) -> Any:
    return field(default=default, metadata={"source": source})


_CS231N_UPDATES = "CS231n neural-networks-3: the ratio of updates to weights \"should be somewhere around 1e-3\""
_GLOROT = "Glorot & Bengio 2010: backpropagated gradients should keep their variance from layer to layer"
_CS231N_DEAD = "CS231n neural-networks-1: \"as much as 40% of your network can be dead\""
_MAKEMORE = "Karpathy, makemore part 3: (t.abs() > 0.97).mean(); the shares are ours"


@dataclass(frozen=True)
class Thresholds:
    """Where a figure stops being ok (warn) and where it is surely wrong (bad); each field's
    metadata names its source. Parse ``key=value,...`` with :meth:`parse`."""

    update_bad_below: float = _threshold(1e-5, _CS231N_UPDATES + "; a decade below its 1e-4 is ours")
    update_warn_below: float = _threshold(1e-4, _CS231N_UPDATES + "; below 1e-4: the learning rate is too low")
    update_warn_above: float = _threshold(1e-2, _CS231N_UPDATES + "; above 1e-2: the learning rate is too high")
    update_bad_above: float = _threshold(1e-1, _CS231N_UPDATES + "; a decade above its 1e-2 is ours")
    grad_bad_below: float = _threshold(1e-3, _GLOROT + "; below 1e-3x the layer nearest the loss: vanishing")
    grad_warn_below: float = _threshold(1e-2, _GLOROT + "; 1e-2x..1e2x counts as healthy")
    grad_warn_above: float = _threshold(1e2, _GLOROT + "; 1e-2x..1e2x counts as healthy")
    grad_bad_above: float = _threshold(1e3, _GLOROT + "; Pascanu et al. 2013: above 1e3x, exploding")
    dead_warn: float = _threshold(0.10, _CS231N_DEAD + "; more than 10% is worth a look")
    dead_bad: float = _threshold(0.40, _CS231N_DEAD)
    saturated_warn: float = _threshold(0.05, _MAKEMORE)
    saturated_bad: float = _threshold(0.25, _MAKEMORE)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise NNError(f"--health-thresholds: {f.name} must be a positive number, not {value!r}")
        for low, high in (("update_bad_below", "update_warn_below"), ("update_warn_below", "update_warn_above"),
                          ("update_warn_above", "update_bad_above"), ("grad_bad_below", "grad_warn_below"),
                          ("grad_warn_below", "grad_warn_above"), ("grad_warn_above", "grad_bad_above"),
                          ("dead_warn", "dead_bad"), ("saturated_warn", "saturated_bad")):
            if getattr(self, low) > getattr(self, high):
                raise NNError(f"--health-thresholds: {low} ({getattr(self, low):g}) must not exceed {high} "
                              f"({getattr(self, high):g})")
        for share in ("dead_warn", "dead_bad", "saturated_warn", "saturated_bad"):
            if getattr(self, share) > 1:
                raise NNError(f"--health-thresholds: {share} is a share of units, at most 1, not {getattr(self, share)!r}")

    @classmethod
    def parse(cls, text: str | None) -> Thresholds:
        """``"dead_warn=0.2,update_warn_above=0.05"`` over the defaults."""
        known = {f.name for f in fields(cls)}
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in (text or "").split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or key not in known:
                raise NNError(f"--health-thresholds: {item!r} is not KEY=VALUE with a known key; the keys are "
                              f"{', '.join(sorted(known))}")
            try:
                values[key] = float(value)
            except ValueError:
                raise NNError(f"--health-thresholds: {key} must be a number, not {value.strip()!r}") from None
        return cls(**values)

    @staticmethod
    def source(name: str) -> str:
        return next(f.metadata["source"] for f in fields(Thresholds) if f.name == name)


@dataclass(frozen=True)
class Finding:
    """One figure about one graph node: its level, value and what it means."""

    node: int
    name: str          # the param, layer or value it is about: "fc1.W", "h", "fc2/relu"
    metric: str        # update_ratio, grad_ratio, nonfinite, dead, saturated
    value: float
    level: str         # ok, warn or bad
    threshold: str     # the band that is ok: "1e-04 .. 1e-02"
    message: str       # what it means, for a person

    def entry(self) -> dict[str, Any]:
        return {"level": self.level, "metric": self.metric, "value": self.value, "message": self.message}


@dataclass
class Health(Mapping):
    """Every finding of one batch; as a Mapping, graph node id -> the worst finding about it
    as ``{"level", "metric", "value", "message"}``."""

    findings: list[Finding]
    thresholds: Thresholds = field(default_factory=Thresholds)
    examples: int = 0
    update: str | None = None   # how the update ratios were measured: "one adam step, lr 1e-3"

    @functools.cached_property
    def _worst(self) -> dict[int, Finding]:
        worst: dict[int, Finding] = {}
        for f in self.findings:
            if f.node not in worst or LEVELS.index(f.level) > LEVELS.index(worst[f.node].level):
                worst[f.node] = f
        return worst

    def __getitem__(self, node: int) -> dict[str, Any]:
        return self._worst[node].entry()

    def __iter__(self) -> Iterator[int]:
        return iter(self._worst)

    def __len__(self) -> int:
        return len(self._worst)

    def by_node(self) -> dict[int, dict[str, Any]]:
        """Graph node id -> {"level", "metric", "value", "message"}: the HTML page's input."""
        return {n: f.entry() for n, f in self._worst.items()}

    @property
    def level(self) -> str:
        return max((f.level for f in self.findings), key=LEVELS.index, default="ok")

    def distinct(self) -> list[Finding]:
        """One finding per figure: a layer's gradient ratio is found on each of its params."""
        return list({(f.metric, f.name): f for f in self.findings}.values())

    def off(self) -> list[Finding]:
        """The findings that are not ok, the worst first."""
        return sorted((f for f in self.distinct() if f.level != "ok"), key=lambda f: -LEVELS.index(f.level))

    def record(self) -> dict[str, float | None]:
        """The figures as flat numbers for metrics.jsonl: ``health/METRIC/NAME``, and counts."""
        out: dict[str, float | None] = {f"health/{f.metric}/{f.name}": (f.value if math.isfinite(f.value) else None)
                                        for f in self.findings}
        out["health_warn"] = sum(f.level == "warn" for f in self.distinct())
        out["health_bad"] = sum(f.level == "bad" for f in self.distinct())
        return out

    def summary(self, limit: int = 3) -> str:
        """``ok``, or the level and the worst few figures: ``bad: fc1.W Δ/w 6.8e-01 (+1 more)``."""
        off = self.off()
        if not self.findings:
            return "nothing to judge: no weight with a gradient, no op whose units can die or saturate"
        if not off:
            return "ok"
        more = f" (+{len(off) - limit} more)" if len(off) > limit else ""
        return f"{self.level}: {', '.join(f'{f.name} {badge(f.metric, f.value)}' for f in off[:limit])}{more}"

    def note(self) -> str:
        """A few words for a log line when something is off; empty when all is well."""
        return "" if self.level == "ok" else f"  | health {self.summary(2)}"

    def small_batch(self) -> bool:
        """Whether the batch is too small for dead-unit shares to mean much (a healthy relu unit is
        0 for all of 4 examples with probability 1/16)."""
        return 0 < self.examples < SMALL_BATCH and any(f.metric == "dead" for f in self.findings)

    def table(self) -> str:
        """One line per finding: what, level, value, the ok band, the message."""
        rows = [("figure", "of", "level", "value", "ok within", "meaning")]
        rows += [(METRICS[f.metric], f.name, f.level.upper() if f.level != "ok" else "ok", _num(f.metric, f.value),
                  f.threshold, f.message) for f in self.distinct()]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths)) + "  " + r[5] for r in rows)


METRICS = {"update_ratio": "update/weight", "grad_ratio": "gradient ratio", "nonfinite": "non-finite gradient",
           "dead": "dead units", "saturated": "saturated"}


def _num(metric: str, value: float) -> str:
    if metric in ("dead", "saturated"):
        return f"{100 * value:.1f}%"
    if metric == "nonfinite":
        return f"{int(value)}"
    return f"{value:.2e}" if math.isfinite(value) else str(value)


def badge(metric: str, value: float) -> str:
    """The few characters a diagram shows beside a value: ``Δ/w 3.1e-02``, ``dead 45%``."""
    if metric == "update_ratio":
        return f"Δ/w {value:.1e}"
    if metric == "grad_ratio":
        return f"∇ {value:.0e}×" if math.isfinite(value) else f"∇ {value}"
    if metric == "nonfinite":
        return f"∇ {int(value)} non-finite"
    return f"{'dead' if metric == 'dead' else 'sat'} {100 * value:.0f}%"


def _band(value: float, bad_low: float, warn_low: float, warn_high: float, bad_high: float) -> str:
    if not math.isfinite(value) or value < bad_low or value > bad_high:
        return "bad"
    return "warn" if value < warn_low or value > warn_high else "ok"


# ---- what to measure -------------------------------------------------------------------

@dataclass
class OptimiserStep:
    """One step of a compiled module's own optimiser (its ``apply_update``), taken on copies:
    the run's module and optimiser state for a trained run, a fresh state otherwise."""

    module: ModuleType                 # compiled with an optimiser: has apply_update and TRAINABLE
    lr: float
    opt_state: dict[str, Any] | None = None

    def describe(self) -> str:
        fresh = "" if self.opt_state is not None else ", fresh state"
        return f"one {self.module.OPTIMIZER} step, lr {self.lr:g}{fresh}"

    def ratios(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> dict[str, float]:
        """``‖Δw‖ / ‖w‖`` of each trainable param (inf where ‖w‖ is 0 and the step moves it)."""
        module = self.module
        dtype = module.DTYPE
        before = {k: np.array(params[k], dtype=dtype) for k in module.TRAINABLE}
        after = {k: v.copy() for k, v in before.items()}
        full = {k: np.asarray(grads[k], dtype=dtype) if k in grads else np.zeros_like(before[k])
                for k in module.TRAINABLE}
        state = module.init_opt_state(after) if self.opt_state is None else \
            {k: copy.deepcopy(v) for k, v in self.opt_state.items() if not k.startswith("_")}   # not the module's caches
        with np.errstate(all="ignore"):
            module.apply_update(after, full, state, self.lr)
        out = {}
        for k in module.TRAINABLE:
            moved = _norm(np.asarray(after[k], dtype=np.float64) - before[k])
            size = _norm(before[k])
            out[k] = moved / size if size > 0 else (0.0 if moved == 0 else math.inf)
        return out


def _norm(array: np.ndarray) -> float:
    a = np.asarray(array, dtype=np.float64)
    return float(np.sqrt(np.sum(a * a)))


def check(ev: Any, step: OptimiserStep | None = None, thresholds: Thresholds | None = None) -> Health:
    """Every health figure of the evaluation ``ev`` (and of one optimiser ``step``, if given)."""
    t = thresholds or Thresholds()
    G, model = ev.program.graph, ev.model
    findings: list[Finding] = []
    params = {name: n for name, n in model.params.items() if n in ev.grads and G[n].dtype == "float"}
    examples = _examples(ev)
    if step is not None and params:
        findings += _update_ratios(ev, step, params, t)
    findings += _gradient_ratios(ev, params, t)
    names = _names(G)
    findings += _nonfinite(ev, names)
    findings += _activations(ev, t, names)
    return Health(findings, t, examples, step.describe() if step is not None else None)


def _update_ratios(ev: Any, step: OptimiserStep, params: dict[str, int], t: Thresholds) -> list[Finding]:
    """``‖Δw‖ / ‖w‖`` of each weight for one optimiser step."""
    findings: list[Finding] = []
    band = f"{t.update_warn_below:.0e} .. {t.update_warn_above:.0e}"
    for name, ratio in step.ratios(ev.params, {k: ev.grads[n] for k, n in params.items()}).items():
        if name not in params or np.ndim(ev.params[name]) < 2 or not _norm(ev.params[name]):
            continue   # weights only, as makemore plots them: a bias starts at 0, where a ratio means nothing
        level = _band(ratio, t.update_bad_below, t.update_warn_below, t.update_warn_above, t.update_bad_above)
        if level == "ok":
            why = "healthy (about 1e-3 is ideal)"
        elif not math.isfinite(ratio):
            why = "the weights are zero, or the step is not finite"
        else:
            why = ("too slow: the learning rate {} too low" if ratio < t.update_warn_below
                   else "too fast: the learning rate {} too high").format("is" if level == "bad" else "may be")
        findings.append(Finding(params[name], name, "update_ratio", ratio, level, band,
                                f"one step moves {name} by {ratio:.2e} of its norm: {why}"))
    return findings


def _examples(ev: Any) -> int:
    """The batch size: the length of the first input whose first dim is symbolic (N)."""
    for name, n in ev.model.inputs.items():
        shape = ev.model.graph[n].shape
        if shape and isinstance(shape[0], str) and name in ev.inputs:
            return len(ev.inputs[name])
    return 0


def _depths(ev: Any) -> dict[int, int]:
    """Each forward node's longest path to the loss: the layer nearest the loss is the one
    with the shortest such path (a regularisation term's short cut does not count)."""
    G, target = ev.program.graph, ev.model.target
    depth: dict[int, int] = {target: 0}
    for n in reversed(G.topological()):
        if n == target or G[n].grad_of is not None:
            continue
        below = [depth[s] for s in G.nx.successors(n) if s in depth]
        if below:
            depth[n] = 1 + max(below)
    return depth


def _gradient_ratios(ev: Any, params: dict[str, int], t: Thresholds) -> list[Finding]:
    """Per layer (the params of one layer instance; a param outside layers is its own), the
    RMS of the gradients over that of the layer nearest the loss. RMS rather than the norm,
    so that a wide layer and a narrow one compare."""
    if ev.model.target is None or not params:
        return []
    G = ev.program.graph
    depth = _depths(ev)
    groups: dict[str, list[int]] = {}
    for name, n in params.items():
        groups.setdefault(".".join(G[n].scope) if G[n].scope else name, []).append(n)
    rms: dict[str, float] = {}
    for layer, members in groups.items():
        grads = [np.asarray(ev.grads[n], dtype=np.float64) for n in members]
        count = sum(g.size for g in grads)
        rms[layer] = math.sqrt(sum(float(np.sum(g * g)) for g in grads) / count) if count else 0.0
    reachable = [layer for layer in groups if any(n in depth for n in groups[layer])]
    if not reachable:
        return []
    nearest = min(reachable, key=lambda layer: min(depth.get(n, 1 << 30) for n in groups[layer]))
    reference = rms[nearest]
    if not (math.isfinite(reference) and reference > 0):
        return []
    band = f"{t.grad_warn_below:.0e}x .. {t.grad_warn_above:.0e}x"
    out = []
    for layer, members in groups.items():
        ratio = rms[layer] / reference
        level = _band(ratio, t.grad_bad_below, t.grad_warn_below, t.grad_warn_above, t.grad_bad_above)
        if layer == nearest:
            why = "the reference: the layer nearest the loss"
        elif level == "ok":
            why = "healthy"
        elif ratio < t.grad_warn_below:
            why = "vanishing" if level == "bad" else "small: gradients fade on the way down"
        else:
            why = "exploding" if level == "bad" else "large: gradients grow on the way down"
        message = (f"gradient RMS of {layer} {rms[layer]:.2e} is {ratio:.2e}x that of {nearest} "
                   f"({reference:.2e}): {why}")
        out += [Finding(n, layer, "grad_ratio", ratio, level, band, message) for n in members]
    return out


def _nonfinite(ev: Any, names: dict[int, str]) -> list[Finding]:
    """Any forward value's gradient holding NaN or inf: always bad."""
    G = ev.program.graph
    out = []
    for n, g in ev.grads.items():
        if n not in G or G[n].grad_of is not None:
            continue
        array = np.asarray(g)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            count = int(array.size - np.isfinite(array).sum())
            out.append(Finding(n, names[n], "nonfinite", float(count), "bad", "none",
                               f"the gradient of {names[n]} has {count} NaN or infinite entries: exploding"))
    return out


def _activations(ev: Any, t: Thresholds, names: dict[int, str]) -> list[Finding]:
    """Dead units of the ops that declare ``dead_at``, saturation of those declaring ``saturates``,
    on the path to the loss (or anywhere, in a model with no loss)."""
    G = ev.program.graph
    out = []
    for n, value in sorted(ev.values.items()):
        if n not in G or G[n].grad_of is not None or (ev.model.target is not None and n not in ev.grads):
            continue   # off the loss's path (a sigmoid of the scores for predict): no gradient to lose there
        op = REGISTRY[G[n].op]
        v = np.asarray(value)
        if op.dead_at is not None and v.ndim >= 2 and len(v) >= 2:
            units = v.reshape(len(v), -1)
            share = float(np.mean(np.all(units <= op.dead_at, axis=0)))
            level = "bad" if share >= t.dead_bad else "warn" if share > t.dead_warn else "ok"
            out.append(Finding(n, names[n], "dead", share, level, f"<= {100 * t.dead_warn:.0f}%",
                               f"{100 * share:.1f}% of the {units.shape[1]} units of {names[n]} are "
                               f"{op.dead_at:g} for all {len(v)} examples" + (": dead" if level != "ok" else "")))
        if op.saturates is not None and v.size:
            lo, hi = op.saturates
            share = float(np.mean((v <= lo) | (v >= hi)))
            level = "bad" if share > t.saturated_bad else "warn" if share > t.saturated_warn else "ok"
            out.append(Finding(n, names[n], "saturated", share, level, f"<= {100 * t.saturated_warn:.0f}%",
                               f"{100 * share:.1f}% of the outputs of {names[n]} lie outside ({lo:g}, {hi:g}), "
                               "where its gradient is nearly 0" + (": saturated" if level != "ok" else "")))
    return out


def _names(G: Any) -> dict[int, str]:
    """What a finding calls each forward node: the user's name, else its layer and op
    (``fc2/relu``), with its line where that is not unique (``fc2/relu@9``), and its node id
    where even that is not."""
    unnamed: dict[str, list[int]] = {}
    names: dict[int, str] = {}
    for n in G.nx.nodes:
        node = G[n]
        if node.grad_of is not None:
            continue
        if node.name:
            names[n] = node.name
        else:
            unnamed.setdefault("/".join((*(".".join(node.scope),) * bool(node.scope), node.op)), []).append(n)
    for base, nodes in unnamed.items():
        lines = [f"{base}@{G[n].loc.line}" if G[n].loc is not None else f"{base}#{n}" for n in nodes]
        for n, line in zip(nodes, lines):
            names[n] = base if len(nodes) == 1 else line if lines.count(line) == 1 else f"{base}#{n}"
    return names


# ---- drawing: what render.py asks ------------------------------------------------------

def node_style(attrs: Mapping[str, str], entry: Mapping[str, Any] | None) -> dict[str, str]:
    """A diagram node's Graphviz attributes, coloured by its finding's level."""
    if entry is None:
        return dict(attrs)
    line, fill = COLOURS[entry["level"]]
    return {**attrs, "color": line, "fillcolor": fill, "penwidth": PEN[entry["level"]],
            "style": ",".join(dict.fromkeys([*attrs.get("style", "filled").split(","), "filled"]))}


def wire_style(entry: Mapping[str, Any] | None) -> str:
    """Graphviz edge attributes for a wire carrying a value with a finding ('' for none)."""
    if entry is None:
        return ""
    return f'color="{COLOURS[entry["level"]][0]}", penwidth={PEN[entry["level"]]}'


def wire_badge(entry: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(text, colour) to show beside a wire's value and gradient, or None."""
    if entry is None or entry["level"] == "ok":
        return None
    return badge(entry["metric"], entry["value"]), COLOURS[entry["level"]][0]


def legend_rows(health: Mapping[int, Any]) -> str:
    """A row for the diagram's legend table: the three colours and the thresholds (our own text,
    already written as Graphviz HTML)."""
    t = getattr(health, "thresholds", None) or Thresholds()
    examples = getattr(health, "examples", 0)
    update = getattr(health, "update", None)
    cells = "".join(f'<TD BGCOLOR="{COLOURS[level][1]}" COLOR="{COLOURS[level][0]}" BORDER="2">'
                    f'<FONT POINT-SIZE="9">{level}</FONT></TD>' for level in LEVELS)
    lines = [f"update/weight ok {t.update_warn_below:.0e}..{t.update_warn_above:.0e}, bad beyond "
             f"{t.update_bad_below:.0e}..{t.update_bad_above:.0e} (CS231n) "
             + (f"[{update}]" if update else "[no optimiser step: give --lr or --params RUN_DIR]"),
             f"gradient RMS vs the layer nearest the loss ok {t.grad_warn_below:g}x..{t.grad_warn_above:g}x, "
             f"bad beyond {t.grad_bad_below:g}x..{t.grad_bad_above:g}x or non-finite (Glorot &amp; Bengio)",
             f"dead units (zero for all {examples or 'the'} examples) warn &gt;{100 * t.dead_warn:g}%, bad "
             f"≥{100 * t.dead_bad:g}% (CS231n); tanh/sigmoid saturated warn &gt;{100 * t.saturated_warn:g}%, "
             f"bad &gt;{100 * t.saturated_bad:g}% (makemore)"]
    text = "<BR ALIGN=\"LEFT\"/>".join(lines)
    return (f'<TR><TD COLSPAN="30" ALIGN="LEFT"><TABLE BORDER="0" CELLSPACING="3"><TR><TD><B>health</B></TD>{cells}'
            f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9">{text}<BR ALIGN="LEFT"/></FONT></TD></TR></TABLE></TD></TR>')
