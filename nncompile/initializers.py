"""Param initialisers: each one emits the numpy expression that draws a param's first value.

Fan-in is the product of all dims but the last, fan-out the last dim (a [K, out] weight has
fan-in K), so the schemes of Glorot & Bengio and He et al. read as in their papers. A 1-D
param (a bias [out]) has fan-in 1, a scalar fan-in and fan-out 1, and a conv2d filter bank
[F, C, KH, KW] fan-in C*KH*KW and fan-out F*KH*KW, as in PyTorch.

The CS231n notes' "Xavier" (W = randn(fan_in, fan_out) / sqrt(fan_in), variance 1/fan_in) is
``lecun`` here; ``xavier``/``glorot`` is Glorot & Bengio's 2 / (fan_in + fan_out).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Callable

Draw = Callable[[str, str, int, int, dict[str, float]], str]
Check = Callable[[dict[str, float]], "str | None"]


@dataclass(frozen=True)
class Initializer:
    name: str
    args: tuple[tuple[str, float], ...]      # keyword arguments with their defaults
    draw: Draw                               # (rng, shape code, fan_in, fan_out, args) -> expr
    doc: str
    check: Check | None = None               # args -> what is wrong with them, caught when compiling


INITIALIZERS: dict[str, Initializer] = {}


def _init(names: str, args: dict[str, float], draw: Draw, doc: str, check: Check | None = None) -> None:
    for name in names.split():
        INITIALIZERS[name] = Initializer(name, tuple(args.items()), draw, doc, check)


def _std_ok(a: dict[str, float]) -> str | None:
    return None if a["std"] >= 0 else f"std must be >= 0, not {a['std']:g}"


def _range_ok(a: dict[str, float]) -> str | None:
    return None if a["a"] < a["b"] else f"needs a < b, but a = {a['a']:g} and b = {a['b']:g}"


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if not shape:
        return 1, 1
    if len(shape) == 4:   # conv2d's filters [F, C, KH, KW]: each output reads C KH KW inputs (PyTorch's fans)
        return shape[1] * shape[2] * shape[3], shape[0] * shape[2] * shape[3]
    return max(1, prod(shape[:-1])), shape[-1]


_init("zeros", {}, lambda rng, s, fi, fo, a: f"np.zeros({s})", "all zeros")
_init("ones", {}, lambda rng, s, fi, fo, a: f"np.ones({s})", "all ones")
_init("constant", {"value": 0.0}, lambda rng, s, fi, fo, a: f"np.full({s}, {a['value']!r})", "every entry = value")
_init("normal randn", {"std": 0.01, "mean": 0.0},
      lambda rng, s, fi, fo, a: f"{rng}.normal({a['mean']!r}, {a['std']!r}, {s})", "N(mean, std^2)", _std_ok)
_init("uniform", {"a": -0.05, "b": 0.05},
      lambda rng, s, fi, fo, a: f"{rng}.uniform({a['a']!r}, {a['b']!r}, {s})", "U(a, b)", _range_ok)
_init("xavier xavier_normal glorot glorot_normal", {},
      lambda rng, s, fi, fo, a: f"{rng}.normal(0.0, np.sqrt(2 / ({fi} + {fo})), {s})",
      "N(0, 2 / (fan_in + fan_out))")
_init("xavier_uniform glorot_uniform", {},
      lambda rng, s, fi, fo, a: f"{rng}.uniform(-np.sqrt(6 / ({fi} + {fo})), np.sqrt(6 / ({fi} + {fo})), {s})",
      "U(-sqrt(6 / (fan_in + fan_out)), +sqrt(...))")
_init("he he_normal kaiming kaiming_normal", {},
      lambda rng, s, fi, fo, a: f"{rng}.normal(0.0, np.sqrt(2 / {fi}), {s})", "N(0, 2 / fan_in), for relu layers")
_init("he_uniform kaiming_uniform", {},
      lambda rng, s, fi, fo, a: f"{rng}.uniform(-np.sqrt(6 / {fi}), np.sqrt(6 / {fi}), {s})",
      "U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))")
_init("lecun lecun_normal", {},
      lambda rng, s, fi, fo, a: f"{rng}.normal(0.0, np.sqrt(1 / {fi}), {s})",
      "N(0, 1 / fan_in): the CS231n notes' randn(fan_in, fan_out) / sqrt(fan_in)")
_init("lecun_uniform", {},
      lambda rng, s, fi, fo, a: f"{rng}.uniform(-np.sqrt(3 / {fi}), np.sqrt(3 / {fi}), {s})",
      "U(-sqrt(3 / fan_in), +sqrt(3 / fan_in))")
