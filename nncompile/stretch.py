"""A long ``repeat`` compiled short and stretched: compile time that does not grow with N.

A module writes the instances of a repeat that are alike as one loop (loops.py), so its
text depends on their number only through counts, index ranges and the names of the params
(codegen/param_runs.py): the rest of the pipeline need not see all of them. A short compile
elaborates each repeat of more than ``SHORT`` instances with only the first ``SHORT // 2``
and the last ones, numbered as in the full model (``h.1 ... h.4, h.997 ... h.1000``, the gap
in ``Model.gaps``), runs the whole pipeline on that, and writes the module as if the gap were
filled: the params left out are named in the tables after the instance before the gap (the
same shape, initialiser and, from its own name, seed), and the loops that span the gap go
over those instances too (loops.py, codegen/loops.py).

Sound only where the instances at the gap are iterations like the others: loops.py checks
that everything of them is inside loops spanning it (raising :class:`Unstretchable`), and the
stretch is taken only when two short compiles, of ``SHORT`` and ``SHORT + 1`` instances,
write the same module. Otherwise (an L2 term over every instance's W, an instance that
differs, a compile error) the caller compiles every instance, as before.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

from .codegen import Program
from .elaborate import layers
from .ir import Model
from .loops import Unstretchable

SHORT = 8   # instances of a long repeat a short compile elaborates: enough for hvp's inner loops
LONG = 24   # a repeat of fewer instances compiles about as fast whole as in two short compiles

Compile = Callable[[tuple[int, int]], tuple[str, Model, int]]   # elaborate_file's shorten ->
# (module text, train model, its graph's nodes as elaborated)


def stretched(compile_short: Compile) -> str | None:
    """The module, from short compiles that agree, or None where the full compile is needed.
    The warnings of the first short compile are the module's (the full compile's, where it is
    needed, would repeat them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            source, model, size = compile_short((SHORT, LONG))
            if not model.gaps:   # no repeat is long: that was the full compile
                again = None
            else:
                again, _, longer = compile_short((SHORT + 1, LONG))
        except Exception:   # noqa: BLE001 - the full compile is the answer: it reports the model's
            return None       # errors where they are, and compiles what the stretch does not fit
    if again is not None and (again != source or _too_big(model, size, longer)):
        return None
    seen = set()
    for w in caught:
        if (str(w.message), w.category, w.filename, w.lineno) not in seen:
            seen.add((str(w.message), w.category, w.filename, w.lineno))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, registry=_SHOWN)
    return source


_SHOWN: dict = {}   # the warnings the stretched compiles passed on ("default" shows each once)


def _too_big(short: Model, size: int, longer: int) -> bool:
    """Whether the full model might pass MAX_NODES (then its compile says so): each instance
    left out adds at most what one more in every repeat does (``size`` and ``longer``: the
    short compiles' graphs as elaborated, grad()'s nodes of each instance too). The forward
    nodes alone are counted as the short compile elaborates (elaborate/layers.py), so a
    repeat of repeats past the limit stops there, before any pipeline runs."""
    left_out = max(gap[1] for gap in short.gaps.values())
    return size + left_out * (longer - size) > layers.MAX_NODES


def fill_gaps(program: Program) -> None:
    """The tables of a short compile's programs as the full model's: the params left out at
    each gap named after the instance before it (their shapes and initialisers are its own),
    and their gradients too (that instance's: codegen/loops.py puts each in its iteration)."""
    filled: dict[int, dict] = {}
    names: dict[tuple, list[str]] = {}
    for p in (program, program.eval_program, program.predict_program, program.hvp_program):
        if p is None:
            continue
        model = p.model
        for name in (*model.state, *model.inputs):
            if any(name.startswith(_instance(key, "")) for key in model.gaps):
                raise Unstretchable(f"{name} is of a repeat's instance, but not a param")
        p.grads = _filled(model, p.grads, names)
        for table in ("params", "param_inits"):
            mine = getattr(model, table)
            if id(mine) not in filled:
                filled[id(mine)] = _filled(model, mine, names)
            setattr(model, table, filled[id(mine)])


def _filled(model: Model, table: dict, names: dict[tuple, list[str]]) -> dict:
    """``table`` (param name -> anything) with the names left out at the gaps, each with the
    entry of its role in the instance before the gap, after that instance's names (``names``:
    those names, per gap and roles, made once for all the tables)."""
    items = list(table.items())
    for key, (head, left_out) in model.gaps.items():
        before = _instance(key, head) + "."
        mine = [j for j, (name, _) in enumerate(items) if name.startswith(before)]
        if not mine:
            continue
        if mine != list(range(mine[0], mine[-1] + 1)):
            raise Unstretchable(f"the params of {before[:-1]} are not together")
        roles = tuple(name[len(before):] for name, _ in items[mine[0]:mine[-1] + 1])
        if (key, roles) not in names:
            names[key, roles] = [f"{_instance(key, k)}.{role}" for k in range(head + 1, head + left_out + 1)
                                 for role in roles]
        values = [value for _, value in items[mine[0]:mine[-1] + 1]] * left_out
        items[mine[-1] + 1:mine[-1] + 1] = zip(names[key, roles], values)
    return dict(items)


def _instance(key: tuple[str, ...], k: int | str) -> str:
    """``h.3``: the scope name of a repeat's instance (``h.`` with k "")."""
    return ".".join((*key[:-1], f"{key[-1]}.{k}"))
