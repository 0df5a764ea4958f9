"""The module-level tables of a model with a long ``repeat``, written once per run of
instances rather than once per param: PARAMS, ``_read_params`` and ``init_params`` of a
1000-layer model are a few lines each, not thousands.

A run is a stretch of PARAMS (in its order) made of consecutive instances of one repeat
(``h.1.W, h.1.b, h.2.W, h.2.b, ...``), each with the same params, shapes and initialisers.
Each instance keeps its own random stream (keyed by its own name), so the values are the
same as the unrolled module's: the keys are written out as data.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

from ..ir import Model
from ..loops import MIN_RUN, instance_of, safe_name


@dataclass(frozen=True)
class Run:
    """Instances ``first`` .. ``first + count - 1`` of a repeat, each with params ``roles``."""

    key: tuple[str, ...]
    first: int
    count: int
    roles: tuple[str, ...]

    def name(self, k: int | str, role: str) -> str:
        return ".".join((*self.key[:-1], f"{self.key[-1]}.{k}")) + "." + role

    def names(self) -> list[str]:
        return [self.name(k, role) for k in range(self.first, self.first + self.count) for role in self.roles]

    def comprehension(self, value: str, var: str = "k") -> str:
        """``{f'h.{k}.{role}': ... for k in range(1, 1001) for role, ... in (``: the head of
        a dict comprehension over the run (the caller writes the per-role tuple and the end)."""
        key = self.name(f"{{{var}}}", "{role}")
        return f"**{{f{key!r}: {value} for {var} in range({self.first}, {self.first + self.count})"


def param_runs(model: Model, same: Callable[[str, str], bool]) -> list[str | Run]:
    """PARAMS' names, with each run of at least MIN_RUN alike instances as one :class:`Run`.

    ``same(a, b)``: whether params ``a`` and ``b`` (of two instances, one role) can be written
    by one line."""
    names = list(model.params)
    G = model.graph
    items: list[str | Run] = []
    j = 0
    while j < len(names):
        run = _run_at(model, G, names, j, same)
        if run is None:
            items.append(names[j])
            j += 1
        else:
            items.append(run)
            j += run.count * len(run.roles)
    return items


def _run_at(model: Model, G, names: list[str], j: int, same) -> Run | None:
    inst = instance_of(model, G[model.params[names[j]]].scope)
    if inst is None or not all(safe_name(part) for part in inst[0]):
        return None
    key, first = inst
    run = Run(key, first, 1, ())
    prefix = run.name(first, "")
    roles = []
    while j + len(roles) < len(names) and names[j + len(roles)].startswith(prefix):
        roles.append(names[j + len(roles)][len(prefix):])
    if not roles or not all(safe_name(role) for role in roles):
        return None
    count, at = 1, j + len(roles)
    stem = run.name("", "")[:-2]   # "h": the instances' names are stem.k.role
    firsts = names[j:at]
    while names[at:at + len(roles)] == [f"{stem}.{first + count}.{r}" for r in roles] and \
            all(same(a, b) for a, b in zip(firsts, names[at:at + len(roles)])):
        count += 1
        at += len(roles)
    return Run(key, first, count, tuple(roles)) if count >= MIN_RUN else None


def seed_of(name: str) -> int:
    """The key of a param's random stream in init_params (its name's CRC)."""
    return zlib.crc32(name.encode())


def seeds_table(var: str, values: list[int]) -> str:
    """A module-level tuple of numbers, wrapped at about 100 columns."""
    lines, line = [], ""
    for v in values:
        item = f"{v}, "
        if len(line) + len(item) > 96:
            lines.append("    " + line.rstrip())
            line = ""
        line += item
    lines.append("    " + line.rstrip())
    return f"{var} = (\n" + "\n".join(lines) + "\n)"
