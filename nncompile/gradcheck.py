"""Finite-difference gradient checks that tell the truth.

The CS231n notes' recipe (centred differences in float64, relative error, beware of kinks),
made robust the way PyTorch's ``gradcheck``, JAX's ``check_grads`` and PyTensor's
``verify_grad`` are, and more:

* each gradient is probed along random directions: two loss evaluations check every entry;
* no single step suits every model (a deep net's loss bends at 1e-6 where a small one is
  straight at 1e-3), so the numeric slope is Ridders' extrapolation of centred differences
  over shrinking steps, keeping the estimate with the smallest error estimate (truncation
  against round-off);
* a step that crosses a kink (relu at 0, a tie in max, a hinge at its margin) measures an
  average of two slopes. With :class:`Kinks` the check finds the kinks near the point, steps
  only as far as the nearest one, moves the point off a kink it sits on, and names the op
  when it cannot ("relu in fc1 (line 12) is at its kink for 3 entries"): inconclusive, not FAILED;
* NaN and inf are reported as such, and a param that does not change the loss is flagged.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Mapping

import networkx as nx
import numpy as np

from .errors import NNError
from .ops import REGISTRY

TOLERANCE = 1e-6   # largest relative error that passes
FLOOR = 1e-5       # slopes below FLOOR * max(1, |loss|) are compared absolutely: round-off, not signal
MOVES = 3          # how often a point that sits on a kink is moved off it
SURE = 1e-3        # a difference up to the numeric slope's error estimate passes, if that is below SURE


@dataclass(frozen=True)
class GradResult:
    """One probe of one gradient: <grad, direction> against the numeric slope of the loss."""

    name: str
    analytic: float   # <grad, direction>
    numeric: float    # d/dt loss(x + t direction) at t = 0, by Ridders' extrapolation
    error: float      # relative error; nan when either side is not finite
    status: str = "ok"   # "ok", "FAIL", "inconclusive" (at a kink) or "unused" (does not affect the loss)
    note: str = ""       # why, for anything but a plain ok

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"

    def show(self) -> str:
        """``relative error 3.1e-11  ok``, or what went wrong, in words."""
        verdict = "warning" if self.status == "unused" else self.status
        if self.status in ("ok", "FAIL") and np.isfinite(self.error):
            verdict = f"relative error {self.error:.1e}  {verdict}"
        return verdict + (f": {self.note}" if self.note else "")


def relative_error(a: float, b: float, floor: float = FLOOR) -> float:
    """|a - b| / max(|a|, |b|, floor): an error of a gradient that is (nearly) zero is absolute."""
    return abs(a - b) / max(abs(a), abs(b), floor)


# ---- kinks -------------------------------------------------------------------------------

@dataclass(frozen=True)
class KinkSite:
    """A kinked op of the model: where it is, and which traced values its switch reads."""

    name: str                        # "relu", or what the op's kink names it ("max over axis 1")
    scope: str                       # the layer instance it is in ("fc1", "h.13"), or ""
    place: str                       # " (line 12)", " (lib.nn line 3)", or "" where it has no place
    op: str
    attrs: dict
    args: tuple[int | np.ndarray, ...]   # a node id whose value the trace holds, or a constant's value

    @property
    def label(self) -> str:
        return f"{self.name}{f' in {self.scope}' if self.scope else ''}{self.place}"   # "relu in fc1 (line 12)"

    def switch(self, values: Mapping[int, np.ndarray]) -> np.ndarray:
        args = [a if isinstance(a, np.ndarray) else values[a] for a in self.args]
        return np.ravel(np.asarray(REGISTRY[self.op].kink.switch(args, self.attrs), dtype=np.float64))


def _describe(sites: list[KinkSite], entries: int) -> str:
    """"relu in fc1 (line 12) is at its kink for 3 entries"; the instances of one op of a layer
    (a repeat's, say) in one phrase, naming the first few: a deep stack's note stays a line."""
    what = f"{REGISTRY[sites[0].op].kink.what} for {entries} entr{'y' if entries == 1 else 'ies'}"
    if len(sites) == 1:
        return f"{sites[0].label} {what}"
    scopes = [site.scope for site in sites]
    where = f"at {len(sites)} places" if not all(scopes) else \
        f"in {len(sites)} instances ({', '.join(scopes[:3])}{', ...' if len(scopes) > 3 else ''})"
    return f"{sites[0].name}{sites[0].place} {what}, {where}"


class Kinks:
    """The kinked ops of a model, read off an unoptimised float64 module with a trace function."""

    def __init__(self, trace_module: ModuleType, kinks: list[KinkSite], seed: int = 0):
        self.module, self.kinks, self.seed = trace_module, kinks, seed

    @classmethod
    def of_file(cls, path: str | Path, seed: int = 0) -> "Kinks":
        from .codegen import emit_module
        from .compiler import build, load_module
        from .elaborate import elaborate_file

        model = elaborate_file(path, "float64")
        program = build(model, optimized=False, trace=True, differentiate=False)   # forward values only
        G, traced = program.graph, program.trace_values
        # Only what the loss reads: an accuracy output's argmax may switch where the loss does not bend.
        reach = nx.ancestors(G.nx, model.target) | {model.target} if model.target is not None else set()
        kinks = []
        for n in G.nodes():
            node = G[n]
            if REGISTRY[node.op].kink is None or node.grad_of is not None or n not in reach:
                continue
            if not all(a in traced or G[a].op == "const" for a in node.args):
                continue
            args = tuple(traced[a] if a in traced else np.asarray(G[a].attr("value"), dtype=np.float64)
                         for a in node.args)
            kinks.append(KinkSite(*_place(node, model.file), node.op, dict(node.attrs), args))
        module = load_module(emit_module(program, trace=True), Path(path).stem + "_trace")
        return cls(module, kinks, seed)

    def switches(self, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Every kink's switch at this point (train mode, the check's dropout masks)."""
        with np.errstate(all="ignore"):
            values = self.module.trace(params, None, np.random.default_rng(self.seed), **inputs)[0]
        return [k.switch(values) for k in self.kinks]

    def crossed(self, before: list[np.ndarray], *after: list[np.ndarray]) -> list[str]:
        """The kinks whose switches change sign between ``before`` and any of ``after``."""
        found = []
        for i, kink in enumerate(self.kinks):
            changed = np.zeros(before[i].shape, dtype=bool)
            for other in after:
                changed |= np.sign(before[i]) != np.sign(other[i])
            if changed.any():
                found.append((kink, int(changed.sum())))
        groups: dict[tuple[str, str, str], list[tuple[KinkSite, int]]] = {}
        for kink, entries in found:   # one op of the source, however many instances it has
            groups.setdefault((kink.name, kink.place, kink.op), []).append((kink, entries))
        return [_describe([k for k, _ in group], sum(e for _, e in group)) for group in groups.values()]


def _place(node, model_file: str | None) -> tuple[str, str, str]:
    """A kinked op's name, its layer instance and its place in the source, for KinkSite."""
    named = REGISTRY[node.op].kink.named
    name = named(dict(node.attrs)) if named else node.op
    loc = node.loc
    if loc is None:
        return name, ".".join(node.scope), ""
    same = model_file is not None and Path(loc.file).resolve() == Path(model_file).resolve()
    return name, ".".join(node.scope), f" ({'' if same else Path(loc.file).name + ' '}line {loc.line})"


def kink_radius(s0: list[np.ndarray], s1: list[np.ndarray], s2: list[np.ndarray], h: float) -> float:
    """How far the point may step before a switch reaches 0, to first order (the switches'
    slopes from their values at -h and +h); 0 where a switch sits at 0 and moves."""
    radius = np.inf
    for a, lo, hi in zip(s0, s1, s2):
        slope = np.abs(hi - lo) / (2 * h)
        moving = slope > 0
        if moving.any():
            radius = min(radius, float(np.min(np.abs(a[moving]) / slope[moving])))
    return radius


# ---- the numeric slope ------------------------------------------------------------------

def ridders(f: Callable[[float], float], h: float, *, shrink: float = 2.0, levels: int = 10,
            enough: float = 0.0) -> tuple[float, float]:
    """f'(0) and an estimate of its error: Ridders' extrapolation of centred differences
    (Numerical Recipes' dfridr), stopping once round-off makes the estimates grow worse, or
    once the error estimate is down to ``enough``. The estimate is never below the round-off
    of the smallest step used (f's rounding over 2 h): at a step of 1e-9 a few ulps of f can
    agree exactly, which says nothing of the slope."""
    def centred(h: float) -> tuple[float, float]:
        hi, lo = f(h), f(-h)
        return (hi - lo) / (2 * h), 2 * np.finfo(np.float64).eps * max(abs(hi), abs(lo)) / h

    first, noise = centred(h)
    table = [[first]]
    best, err, rounding = first, np.inf, noise
    for i in range(1, levels):
        h /= shrink
        slope, noise = centred(h)
        row = [slope]
        factor = shrink ** 2
        for j in range(1, i + 1):
            row.append((row[j - 1] * factor - table[i - 1][j - 1]) / (factor - 1))
            factor *= shrink ** 2
            e = max(abs(row[j] - row[j - 1]), abs(row[j] - table[i - 1][j - 1]))
            if e <= err:
                best, err, rounding = row[j], e, noise
        table.append(row)
        if err <= enough or abs(row[i] - table[i - 1][i - 1]) >= 2 * err:
            break
    return float(best), float(max(err, rounding))


def _slope(f: Callable[[float], float], h: float | None, scale: float, enough: float) -> tuple[float, float]:
    """Ridders from the longest step clear of kinks (``h``; 1e-3 scale where none is known),
    then from steps 100 and 10^4 times shorter while the error estimate is not yet down to
    ``enough``, keeping the estimate with the smallest error estimate: a kink inflates it,
    and so does a loss that bends within the step (a deep net's, at 1e-6, with no kink)."""
    longest = 1e-3 * scale if h is None else h
    best = (np.nan, np.inf)
    for start in (longest, 1e-2 * longest, 1e-4 * longest):
        slope, err = ridders(f, start, enough=enough)
        if err < best[1] or not np.isfinite(best[0]):
            best = (slope, err)
        if err <= enough:
            break
    return best


# ---- the check ----------------------------------------------------------------------------

class _Line:
    """The loss as a function of one param or input, the others held fixed."""

    def __init__(self, module: ModuleType, name: str, params: Mapping[str, np.ndarray],
                 inputs: Mapping[str, np.ndarray], seed: int, kinks: Kinks | None):
        self.module, self.name, self.params, self.inputs, self.seed, self.kinks = \
            module, name, params, inputs, seed, kinks
        self.is_param = name in params
        value = params[name] if self.is_param else inputs.get(name, module.DEFAULTS.get(name))
        self.start = np.asarray(value, dtype=np.float64)

    def at(self, x: np.ndarray) -> tuple[dict, dict]:
        p, i = dict(self.params), dict(self.inputs)
        (p if self.is_param else i)[self.name] = x
        return p, i

    def step(self, x: np.ndarray) -> tuple:
        # The same seed every call: dropout draws the same mask, so the loss is one function.
        params, inputs = self.at(x)
        with np.errstate(all="ignore"):
            return self.module.value_and_grad(params, None, np.random.default_rng(self.seed), **inputs)

    def loss(self, x: np.ndarray) -> float:
        return float(self.step(x)[0][self.module.LOSS])

    def grad(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.step(x)[1][self.name], dtype=np.float64)

    def switches(self, x: np.ndarray) -> list[np.ndarray]:
        assert self.kinks is not None
        return self.kinks.switches(*self.at(x))


def check_gradients(module: ModuleType, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                    *, seed: int = 0, directions: int = 2, kinks: Kinks | None = None,
                    tolerance: float = TOLERANCE) -> list[GradResult]:
    """Compare ``module.value_and_grad`` with the numeric slope of the loss along random
    directions: ``directions`` results per param and float input.

    Without ``kinks`` the check cannot see a kink near the point, and may report one as a failure.
    """
    rng = np.random.default_rng(seed)
    with np.errstate(all="ignore"):
        outputs, grads = module.value_and_grad(params, None, np.random.default_rng(seed), **inputs)[:2]
    loss = float(outputs[module.LOSS])
    switches = kinks.switches(params, inputs) if kinks is not None else None
    results = []
    for name, grad in grads.items():
        line = _Line(module, name, params, inputs, seed, kinks)
        for _ in range(directions):
            direction = rng.standard_normal(line.start.shape)
            results.append(_probe(line, direction, np.asarray(grad, dtype=np.float64), loss, switches, rng, tolerance))
    return results


def _probe(line: _Line, direction: np.ndarray, grad: np.ndarray, loss: float, switches: list[np.ndarray] | None,
           rng: np.random.Generator, tolerance: float) -> GradResult:
    """One direction: find a step that stays clear of kinks, then compare the slopes."""
    name = line.name
    bad = int(np.size(grad) - np.count_nonzero(np.isfinite(grad)))
    if bad or not np.isfinite(loss):
        what = f"the loss is {loss}" if not np.isfinite(loss) else \
            f"the gradient holds {bad} NaN or inf entr{'y' if bad == 1 else 'ies'}"
        return GradResult(name, float("nan"), float("nan"), float("nan"), "FAIL", what)
    scale = max(1.0, float(np.sqrt(np.mean(line.start ** 2)))) if line.start.size else 1.0
    point, h, note = line.start, None, ""
    floor = FLOOR * max(1.0, abs(loss))
    if switches is not None:
        shortest = _resolving_step(loss, float(np.sum(grad * direction)), floor, tolerance, 1e-9 * scale)
        for moved in range(MOVES + 1):
            s0 = switches if moved == 0 else line.switches(point)
            h, on = _clear_step(line, s0, point, direction, 1e-3 * scale, shortest)
            if h:
                break
            note = note or f"{on} at the given point"
            if moved == MOVES:
                return GradResult(name, float("nan"), float("nan"), float("nan"), "inconclusive",
                                  f"{note}, and so was every point nearby tried")
            # The point sits on a kink (a relu of zeros()-initialised biases, say): check a point
            # nearby, far enough off for a step of the shortest length to miss the kink.
            point = line.start + max(1e-4 * scale, 100 * shortest) * rng.standard_normal(point.shape)
            grad = line.grad(point)
        if note:
            note += ": checked at a point nearby"
    analytic = float(np.sum(grad * direction))
    numeric, uncertainty = _slope(lambda t: line.loss(point + t * direction), h, scale,
                                  1e-2 * tolerance * max(abs(analytic), floor))
    if not np.isfinite(numeric):
        return GradResult(name, analytic, numeric, float("nan"), "FAIL", f"the numeric slope is {numeric}")
    if not np.any(grad) and (numeric == 0.0 or line.loss(point + 1e-3 * scale * direction) == line.loss(point)):
        return GradResult(name, analytic, numeric, 0.0, "unused",
                          f"{name} does not affect the loss (its gradient is 0, and so is the loss's change)")
    return _verdict(name, analytic, numeric, uncertainty, floor, tolerance, note)


def _resolving_step(value: float, slope: float, floor: float, tolerance: float, shortest: float) -> float:
    """The shortest step whose round-off (float64's of ``value``, over 2 h) still lets a
    slope of this size be judged to ``tolerance`` (sharp, as :func:`_verdict` says): a kink
    nearer than that is as good as at the point, which is then moved off it."""
    roundoff = 2 * np.finfo(np.float64).eps * max(1.0, abs(value))
    # Sharp is within 10 tolerances of the slope; Ridders halves the step a few times from
    # where it starts, so it starts 10 times further out than one step at 10 tolerances needs.
    return max(shortest, roundoff / (tolerance * max(abs(slope), floor)))


def _verdict(name: str, analytic: float, numeric: float, uncertainty: float, floor: float, tolerance: float,
             note: str) -> GradResult:
    """An analytic slope against a numeric one and that estimate's own error."""
    error = relative_error(analytic, numeric, floor)
    if error < tolerance:
        return GradResult(name, analytic, numeric, error, "ok", note)
    if abs(analytic - numeric) <= min(2 * uncertainty, SURE * max(abs(analytic), abs(numeric), floor)):
        # A slope that cancels (a gradient nearly orthogonal to the direction) loses digits
        # to round-off; what the estimate itself cannot resolve is no evidence against it, but
        # an estimate much rougher than the tolerance is no evidence for it either. Slopes
        # below the floor (a deep net's vanishing gradients) are measured against the floor,
        # as relative_error measures them.
        within = f"within the numeric slope's own error (+-{uncertainty:.1e})"
        sharp = uncertainty <= 10 * tolerance * max(abs(numeric), floor)
        return GradResult(name, analytic, numeric, error, "ok" if sharp else "inconclusive",
                          f"{note}; {within}" if note else within)
    if uncertainty > tolerance * max(abs(numeric), floor):
        note = (note + "; " if note else "") + f"the numeric slope is uncertain (+-{uncertainty:.1e})"
    return GradResult(name, analytic, numeric, error, "FAIL", note)


def check_hessian(module: ModuleType, params: Mapping[str, np.ndarray], inputs: Mapping[str, np.ndarray],
                  *, seed: int = 0, directions: int = 2, kinks: Kinks | None = None,
                  tolerance: float = TOLERANCE) -> list[GradResult]:
    """Compare ``module.hvp`` with the numeric slope of the compiled gradient: along a random
    v over all params, d/dt <grad_p(params + t v), u_p> for a random u_p per param, by Ridders'
    extrapolation of central differences (as the gradient check does for the loss)."""
    rng = np.random.default_rng(seed)
    with np.errstate(all="ignore"):
        loss = float(module.value_and_grad(params, None, np.random.default_rng(seed), **inputs)[0][module.LOSS])
    start = {name: np.asarray(p, dtype=np.float64) for name, p in params.items()}
    sizes = sum(p.size for p in start.values())
    scale = max(1.0, float(np.sqrt(sum(np.sum(p ** 2) for p in start.values()) / max(sizes, 1))))
    results = []
    for _ in range(directions):
        v = {name: rng.standard_normal(p.shape) for name, p in start.items()}
        ray = _Ray(module, start, v, inputs, seed, kinks)
        with np.errstate(all="ignore"):
            hv = module.hvp(start, v, None, np.random.default_rng(seed), **inputs)
        h, on = (None, "") if kinks is None else _clear_step(ray, ray.switches(0.0), 0.0, 1.0, 1e-3 * scale,
                                                             1e-9 * scale)
        for name, product in hv.items():
            u = rng.standard_normal(np.shape(product))
            if on:
                results.append(GradResult(name, float("nan"), float("nan"), float("nan"), "inconclusive", on))
                continue
            analytic = float(np.sum(np.asarray(product, dtype=np.float64) * u))
            floor = FLOOR * max(1.0, abs(loss))
            numeric, uncertainty = _slope(lambda t: float(np.sum(ray.grads(t)[name] * u)), h, scale,
                                          1e-2 * tolerance * max(abs(analytic), floor))
            if not np.isfinite(numeric) or not np.isfinite(analytic):
                results.append(GradResult(name, analytic, numeric, float("nan"), "FAIL",
                                          f"the product is {analytic}, the numeric slope {numeric}"))
                continue
            results.append(_verdict(name, analytic, numeric, uncertainty, floor, tolerance, ""))
    return results


def missing_hvp(path: str | Path) -> NNError:
    """Why the model's hvp() raises (its HVP_MISSING), as the compile found it: located in
    the model's text, for ``check --hessian`` to report like any compile error."""
    from .compiler import hvp_program
    from .elaborate import elaborate_file

    try:
        hvp_program(elaborate_file(path, "float64"))
    except NNError as missing:
        return missing
    return NNError("hvp() cannot be computed for this model, and yet its program builds")  # pragma: no cover


class _Ray:
    """The compiled gradient along params + t v (each t evaluated once, for every param)."""

    def __init__(self, module: ModuleType, start: Mapping[str, np.ndarray], v: Mapping[str, np.ndarray],
                 inputs: Mapping[str, np.ndarray], seed: int, kinks: Kinks | None):
        self.module, self.start, self.v, self.inputs, self.seed, self.kinks = module, start, v, inputs, seed, kinks
        self.memo: dict[float, dict] = {}

    def at(self, t: float) -> dict:
        return {name: p + t * self.v[name] for name, p in self.start.items()}

    def grads(self, t: float) -> dict:
        if t not in self.memo:
            with np.errstate(all="ignore"):
                grads = self.module.value_and_grad(self.at(t), None, np.random.default_rng(self.seed), **self.inputs)[1]
            self.memo[t] = {name: np.asarray(g, dtype=np.float64) for name, g in grads.items()}
        return self.memo[t]

    def switches(self, t: float) -> list[np.ndarray]:
        assert self.kinks is not None
        return self.kinks.switches(self.at(t), self.inputs)


def _clear_step(line: _Line | _Ray, s0: list[np.ndarray], point: np.ndarray | float,
                direction: np.ndarray | float, h: float, smallest: float) -> tuple[float, str]:
    """The largest step up to ``h`` along ``direction`` that crosses no kink; or 0 and the
    kinks the point sits on, when no step above ``smallest`` is clear."""
    kinks = line.kinks
    assert kinks is not None
    while True:
        lo, hi = line.switches(point - h * direction), line.switches(point + h * direction)
        step = min(h, kink_radius(s0, lo, hi, h) / 2)
        if step <= smallest and h > 10 * smallest:
            # A tie sitting at 0 may move only because another kink within h was crossed (a
            # max pool over relus that all output 0, one of which wakes up): look closer.
            h /= 10
            continue
        if step <= smallest:
            return 0.0, "; ".join(kinks.crossed(s0, lo, hi)) or f"a kink lies within {smallest:.0e} of the point"
        # Linear switches cannot cross within the radius; curved ones may: look.
        near = (lo, hi) if step == h else [line.switches(point + s * step * direction) for s in (-1, 1)]
        if not kinks.crossed(s0, *near):
            return step, ""
        h = step / 10


def summarize(results: list[GradResult]) -> dict[str, GradResult]:
    """The worst result per name: a FAIL over an inconclusive over an unused over an ok,
    then the larger error."""
    rank = {"ok": 0, "unused": 1, "inconclusive": 2, "FAIL": 3}
    worst: dict[str, GradResult] = {}
    for r in results:
        w = worst.get(r.name)
        key = (rank[r.status], -1.0 if np.isnan(r.error) else r.error)
        if w is None or key > (rank[w.status], -1.0 if np.isnan(w.error) else w.error):
            worst[r.name] = r
    return worst


def report(results: dict[str, GradResult], what: str) -> tuple[list[str], list[str], str]:
    """What ``nncompile check`` prints of a check: a line per name (``  gradient of W1
    relative error 3.1e-11  ok``, ``what`` naming the kind), the names that failed, and the tally."""
    width = max((len(name) for name in results), default=1)
    lines = [f"  {what} {name:<{width}}  {r.show()}" for name, r in results.items()]
    failed = [name for name, r in results.items() if not r.ok]
    counts = {s: sum(r.status == s for r in results.values()) for s in ("ok", "inconclusive", "unused")}
    return lines, failed, ", ".join(f"{n} {s}" for s, n in counts.items() if n)
