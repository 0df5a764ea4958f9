"""What every job of the elaborator shares: the graph being built, the model it becomes, the
mode, the scopes names live in, and ``op()``, the one way a node enters the graph."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import Loc, NNError, closest
from ..ir import Model
from ..limits import MAX_ELEMENTS, MAX_RANK
from ..ops import REGISTRY, new_graph
from ..shapes import Dim, Shape, ShapeError, show

MODES = ("train", "eval")


@dataclass
class Scope:
    """Names visible while elaborating one file's top level or one layer instance."""

    prefix: tuple[str, ...]
    consts: dict[str, Any]
    dims: dict[str, Dim] = field(default_factory=dict)
    values: dict[str, int] = field(default_factory=dict)
    defined: dict[str, Loc] = field(default_factory=dict)
    auto_names: dict[str, int] = field(default_factory=dict)
    instances: dict[str, Loc] = field(default_factory=dict)
    in_layer: str | None = None
    later: dict[str, Loc] = field(default_factory=dict)   # names the statements still to run define
    other_mode: dict[str, tuple[str, Loc]] = field(default_factory=dict)   # names only the other mode's block defines
    later_dims: dict[str, Loc] = field(default_factory=dict)   # names the inputs still to run may make symbolic dims

    def qualify(self, name: str) -> str:
        return ".".join((*self.prefix, name))

    def define(self, name: str, loc: Loc) -> None:
        if name in self.defined:
            raise NNError(f"'{name}' is already defined", loc,
                          notes=((f"'{name}' was first defined here", self.defined[name]),))
        self.defined[name] = loc


class Context:
    """The graph of one mode under construction. Ops that lower themselves (``OpDef.lower``)
    get this object and use ``G``, ``mode``, ``model`` and ``op()``."""

    def __init__(self, file: str, mode: str = "train"):
        assert mode in MODES, mode
        self.G = new_graph()
        self.model = Model(self.G, file, mode=mode)
        self.mode = mode
        self.dim_places: dict[str, Loc] = {}   # where each symbolic dim is first named

    def op(self, opname: str, args: list[int], attrs: dict[str, Any], loc: Loc, scope: Scope,
           arg_locs: list[Loc] | None = None) -> int:
        """Add one op node; a shape error points at the operand it is about, where known."""
        opdef = REGISTRY[opname]
        if opdef.dispatch is not None:   # one name in the language, the op chosen by the operands' dtypes
            opdef = REGISTRY[opdef.dispatch([self.G[a] for a in args])]
            opname = opdef.name
        try:
            node = self.G.add(opname, args, attrs, loc=loc, scope=scope.prefix)
        except ShapeError as exc:
            where = arg_locs[exc.arg] if arg_locs and exc.arg is not None and exc.arg < len(arg_locs) else loc
            raise self.shape_error(exc, where, opname, args, attrs, scope) from None
        check_size(self.G[node].shape, loc)
        if opdef.int_bounds:
            for index, bound in opdef.int_bounds([self.G[a] for a in args]).items():
                self.bound(args[index], bound)
        return node

    def shape_error(self, exc: ShapeError, where: Loc, opname: str | None, args: list[int], attrs: dict[str, Any],
                    scope: Scope) -> NNError:
        """The error for operands whose shapes do not fit, with a note where one of their symbolic
        dims looks like a typo of a const or of another dim (``float[N, Dd]`` beside ``const D``)
        and the shapes fit with that name instead: each unknown name in an input's type silently
        becomes a dim of its own."""
        notes: list[tuple[str, Loc]] = []
        sizes = [name for name, value in scope.consts.items()   # the consts that could be a dim
                 if isinstance(value, (int, np.integer)) and not isinstance(value, bool)]
        for dim in dict.fromkeys(d for a in args for d in self.G[a].shape if isinstance(d, str)):
            close = closest(dim, [name for name in (*sizes, *self.dim_places) if name != dim])
            if dim not in self.dim_places or close is None or opname is None or \
                    not self._fits_with(opname, args, attrs, dim, scope.consts.get(close, close)):
                continue
            if close in scope.consts:
                note = (f"'{dim}' is not a const, so it became a symbolic dim, set by the inputs at each "
                        f"call; did you mean the const '{close}' (= {scope.consts[close]})?")
            else:
                note = (f"'{dim}' and '{close}' are two different symbolic dims, each set by the inputs "
                        f"at each call; did you mean '{close}'?")
            notes.append((note, self.dim_places[dim]))
            break   # the first is enough: 'n' beside 'N' would be said twice
        return NNError(exc.message, where, notes=tuple(notes))

    def _fits_with(self, opname: str, args: list[int], attrs: dict[str, Any], dim: str, instead: Dim) -> bool:
        """Whether the op's shape rule accepts its operands with ``dim`` read as ``instead``."""
        operands = [dataclasses.replace(self.G[a], shape=tuple(instead if d == dim else d for d in self.G[a].shape))
                    for a in args]
        try:
            self.G.infer(opname, operands, dict(attrs))
        except ShapeError:
            return False
        return True

    def bound(self, n: int, dim: Dim) -> None:
        """Node ``n`` holds labels or indices below ``dim``: if it is an input, the module checks it."""
        leaf = self.G[n]
        if leaf.op != "input":
            return
        if isinstance(dim, int):
            self.model.int_bounds[leaf.name] = min(self.model.int_bounds.get(leaf.name, dim), dim)
        elif dim not in self.model.dim_bounds.get(leaf.name, ()):
            self.model.dim_bounds[leaf.name] = (*self.model.dim_bounds.get(leaf.name, ()), dim)

    def constant(self, value: float, loc: Loc | None, name: str | None = None) -> int:
        return self.G.add("const", (), {"value": value, "shape": (), "dtype": "float"}, loc=loc, name=name)

    def const_tensor(self, value: Any, loc: Loc, name: str | None = None) -> int:
        array = np.asarray(value, dtype=float)
        check_size(array.shape, loc)
        return self.G.add("const", (), {"value": array.tolist(), "shape": array.shape, "dtype": "float"},
                          loc=loc, name=name)

    def symbolic_dims(self) -> set[str]:
        """The dims set by the inputs at each call (N in ``input X: float[N, 3]``)."""
        return {d for n in self.model.inputs.values() for d in self.G[n].shape if isinstance(d, str)}

    def unknown(self, name: str, loc: Loc, scope: Scope, consts_only: bool = False) -> NNError:
        """The error for a name not in scope, with the closest known one as a hint."""
        pool = list(scope.consts) + list(scope.dims) + ([] if consts_only else list(scope.values))
        close = closest(name, pool)
        hint = f"; did you mean '{close}'?" if close else ""
        if "." in name and name.split(".")[0] in scope.values:
            hint = f"; '{name.split('.')[0]}' has no member '{name.split('.', 1)[1]}'" + hint
        if name in scope.other_mode and name not in scope.later:
            phase, where = scope.other_mode[name]
            article = "an" if self.mode == "eval" else "a"
            fix = f"define it in {article} '{self.mode}' block too, or outside both"
            if "." in name:   # a layer's local: the layer is not the user's to change, its use is
                fix = f"use it only inside {'an' if phase == 'eval' else 'a'} '{phase}' block ({phase} {{ ... }})"
            return NNError(f"'{name}' is defined only in a '{phase}' block, so in {self.mode} mode it does not exist: "
                           f"{fix}", loc, notes=((f"'{name}' is defined here, for {phase} mode", where),))
        if name in scope.later:
            return NNError(f"'{name}' is used before it is defined (at line {scope.later[name].line}): "
                           "move its definition above this line", loc,
                           notes=((f"'{name}' is defined here", scope.later[name]),))
        if name in scope.later_dims and name not in self.symbolic_dims():
            return NNError(f"'{name}' is used before an input declares it as a dim (at line "
                           f"{scope.later_dims[name].line}): move this line below that input", loc,
                           notes=((f"'{name}' is declared here", scope.later_dims[name]),))
        return NNError(f"unknown name '{name}'{hint}", loc)


def check_size(shape: Shape, loc: Loc) -> None:
    """Every tensor fits the limits: MAX_RANK axes, and MAX_ELEMENTS elements where its dims are known."""
    if len(shape) > MAX_RANK:
        raise NNError(f"a tensor can have at most {MAX_RANK} axes, but this one has {len(shape)}", loc)
    known = math.prod(d for d in shape if isinstance(d, int))
    if known > MAX_ELEMENTS:
        raise NNError(f"this tensor would have {known} elements, more than the limit of {MAX_ELEMENTS} (2**40)"
                      f": shape {show(shape)}", loc)
