"""The per-call readers of a module's arguments: ``_read_inputs``, ``_read_params``, ``_read_state``.

Each is specialised to its model: a condition of a few attribute tests lets arrays of the
right type, dtype and shape straight through, and anything else goes to the general
converter (codegen/runtime.py), which converts or says what is wrong. The condition is built
as a list of :class:`Check` records and written out once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends import NUMPY, Backend
from ..ir import Model
from ..shapes import Shape
from .names import Names
from .program import Program

_CHECKS = {
    "type": "type({var}) is _ARRAY",
    "dtype": "{var}.dtype is {value}",
    "ndim": "{var}.ndim == {value}",
    "shape": "{var}.shape == {value!r}",
    "axis": "{var}.shape[{axis}] == {value}",
    "bind": "({value} := {var}.shape[{axis}]) >= 1",   # binds a dim while the condition runs (0: refused)
    "least": "{var} >= {value}",
}


@dataclass(frozen=True)
class Check:
    """One test of a reader's fast path (``kind`` one of _CHECKS), written out once, as Python."""

    kind: str
    var: str
    value: Any
    axis: int | None = None

    def __str__(self) -> str:
        return _CHECKS[self.kind].format(var=self.var, value=self.value, axis=self.axis)


def dim_checks(var: str, shape: Shape, dims: dict[str, str], names: Names) -> list[Check]:
    """The tests of one input's axes, once its ndim is known: first bind each dim this input
    is the first to have (``N := X.shape[0]``), then compare every other axis with its size."""
    binds, sizes = [], []
    for axis, d in enumerate(shape):
        if isinstance(d, str) and d not in dims:
            dims[d] = names.fresh(d)
            binds.append(Check("bind", var, dims[d], axis))
        else:
            sizes.append(Check("axis", var, dims[d] if isinstance(d, str) else d, axis))
    return binds + sizes


def read_inputs(program: Program, backend: Backend, function: str = "") -> str:
    """The per-call input check, specialised to this model: a few attribute tests when the
    caller passes arrays of the right dtype and shape, the general converter otherwise.

    ``function="predict"`` writes ``_read_predict_inputs``, which takes PREDICT_INPUTS (the
    program's model holds only those) and converts with ``_convert_predict_inputs``."""
    model = program.model
    infix, table = (f"{function}_", f"{function.upper()}_INPUTS") if function else ("", "INPUTS")
    convert = f"_convert_{infix}inputs"
    lines = [] if function else [
        "_FLOAT, _INT = np.dtype(DTYPE), np.dtype(np.int64)  # the fast paths compare dtypes by identity",
        f"_ARRAY = {backend.xp}.ndarray  # and types: a global, one lookup cheaper than {backend.xp}.ndarray", "", ""]
    lines += [f"def _read_{infix}inputs(inputs):",
              f'    """The inputs in {table} order, then the {"DIMS" if not function else table[:-6] + "DIMS"}; '
              'arrays already right pass straight through."""']
    if not model.inputs:
        lines += ["    if inputs:", f"        {convert}(inputs)", "    return ()"]
        return "\n".join(lines)
    names = Names()
    vars_ = {name: names.fresh(name) for name in model.inputs}
    dims: dict[str, str] = {}
    checks: list[Check] = []
    for name, n in model.inputs.items():
        node, var = program.graph[n], vars_[name]
        dtype = "_FLOAT" if node.dtype == "float" else "_INT"
        checks += [Check("type", var, backend.xp), Check("dtype", var, dtype), Check("ndim", var, len(node.shape))]
        checks += dim_checks(var, node.shape, dims, names)
    checks += [Check("least", dims[d], least) for d, least in model.min_dims.items()]
    get = ", ".join(f"inputs.get({name!r})" for name in model.inputs)
    lines.append(f"    {', '.join(vars_.values())} = {get}")
    cond = " and\n            ".join(map(str, checks))
    lines += [f"    if len(inputs) != {len(vars_)} or not (", f"            {cond}):"]
    # A scalar goes on as a numpy scalar, on which Python's operators are cheap (see python_form),
    # from the converter too: immutable, so the functions return it as it is, never a copy.
    scalar = [var + "[()]" if backend.scalars and program.graph[n].shape == () else var
              for var, n in zip(vars_.values(), model.inputs.values())]
    result = [*scalar, *(dims[d] for d in program.dim_names)]
    returned = f"{', '.join(result)}{',' if len(result) == 1 else ''}"
    if scalar == list(vars_.values()):
        lines.append(f"        return {convert}(inputs)")
    else:
        converted = [*vars_.values(), *(dims[d] for d in program.dim_names)]
        lines.append(f"        {', '.join(converted)}{',' if len(converted) == 1 else ''} = {convert}(inputs)"
                     "   # on below, its scalars as numpy scalars")
    lines += bound_checks(model, vars_, dims, convert, backend)
    lines.append(f"    return {returned}")
    return "\n".join(lines)


def bound_checks(model: Model, vars_: dict[str, str], dims: dict[str, str],
                 convert: str = "_convert_inputs", backend: Backend = NUMPY) -> list[str]:
    """Labels and indices must lie below their bound (a number, or a dim of the call):
    tested after the fast path's condition, which has bound the dims."""
    lines, xp, top = [], backend.xp, backend.reduction("maximum")   # np.maximum.reduce: no .max() wrapper
    for name in model.inputs:
        limits = [str(b) for b in [model.int_bounds.get(name)] if b is not None]
        limits += [dims[d] for d in model.dim_bounds.get(name, ())]
        if limits:
            var, limit = vars_[name], limits[0] if len(limits) == 1 else f"min({', '.join(limits)})"
            lines.append(f"    if {var}.size and {top}({var}.view({xp}.uint64), axis=None) >= {limit}:"
                         "  # one pass: read unsigned, a negative entry is huge")
            lines.append(f"        return {convert}(inputs)  # raises the error")
    return lines


def read_table(program: Program, backend: Backend, arg: str, looped: bool = False) -> str:
    """``_read_params`` or ``_read_state``: the per-call check, like the inputs'. Arrays of
    the right type, dtype and shape pass straight through; anything else goes to the
    converter, which says what is wrong (params come back as a tuple, state as a dict)."""
    model = program.model
    table, TABLE, one = ((model.params, "PARAMS", "param") if arg == "params"
                         else (model.state, "STATE", "state"))
    names = Names()
    vars_ = [] if looped else [names.fresh(name) for name in table]
    checks = []
    for var, n in zip(vars_, [] if looped else table.values()):
        checks += [Check("type", var, backend.xp), Check("dtype", var, "_FLOAT"),
                   Check("shape", var, tuple(program.graph[n].shape))]
    cond = " and\n            ".join(map(str, checks))
    convert = f'_convert({arg}, {TABLE}, "{one}", "{arg}")'
    if looped:   # a long table (a repeat's params): the same tests, in a loop over it
        return "\n".join([
            f"def _read_{arg}({arg}):",
            f'    """The {arg} in {TABLE} order; arrays already right pass straight through."""',
            f"    if type({arg}) is not dict or len({arg}) != {len(table)}:",
            f"        return {convert}",
            f"    arrays = tuple(map({arg}.get, {TABLE}))",
            f"    for array, (shape, _) in zip(arrays, {TABLE}.values()):",
            f"        if not (type(array) is {backend.xp}.ndarray and array.dtype is _FLOAT and array.shape == shape):",
            f"            return {convert}",
            "    return arrays"])
    fallback, ok = ((convert, f"{', '.join(vars_)}{',' if len(vars_) == 1 else ''}") if arg == "params"
                    else (f"dict(zip(STATE, {convert}))", "state"))
    return "\n".join([
        f"def _read_{arg}({arg}):",
        f'    """The {arg} in {TABLE} order; arrays already right pass straight through."""',
        f"    if type({arg}) is not dict or len({arg}) != {len(vars_)}:",
        f"        return {fallback}",
        f"    {', '.join(vars_)} = {', '.join(f'{arg}.get({name!r})' for name in table)}",
        f"    if not ({cond}):",
        f"        return {fallback}",
        f"    return {ok}"])


def read_params_as(arg: str, targets: str, comment: str) -> list[str]:
    """``targets = _read_params(arg)``; for hvp's ``v``, an error that names v, as the error
    would otherwise read as if the params were wrong."""
    read = f"{targets} = _read_params({arg})  # {comment}"
    if arg == "params":
        return [f"    {read}"]
    return ["    try:", f"        {read}",
            f"    except (TypeError, ValueError) as error:   # say that it is {arg} that is wrong",
            f"        raise type(error)(f'{arg}, the direction: {{error}}') from None"]
