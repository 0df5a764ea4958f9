"""Text for generated code: identifiers that never clash, literals, comments and docstrings."""
from __future__ import annotations

import builtins
import functools
import keyword
import re
from pathlib import Path
from typing import Any

from ..backends import BACKENDS
from ..ops import literal

_MODULE_NAMES = {
    "DTYPE", "INPUTS", "PARAMS", "OUTPUTS", "LOSS", "DEFAULTS", "DIMS", "BOUNDS", "init_params", "forward",
    "value_and_grad", "trace", "params", "inputs", "outputs", "grads", "values", "buffers", "state", "rng",
    "STATE", "init_state", "new_state", "TRAIN_OUTPUTS", "DIM_BOUNDS", "MIN_DIMS",
    "v",   # hvp(params, v, ...)'s direction: a param or input called v must not hide it
    *(backend.xp for backend in BACKENDS.values()),   # np, cp: an input called cp must not hide CuPy
}
RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | _MODULE_NAMES


class Names:
    """Python identifiers for graph values: the user's names where possible, never clashing."""

    def __init__(self) -> None:
        self.taken: set[str] = set(RESERVED)
        self.of: dict[Any, str] = {}
        self.temps = 0
        self.clashes: dict[str, int] = {}   # base -> the last number a clash of it was given

    def fresh(self, wanted: str) -> str:
        base = re.sub(r"\W", "_", wanted) or "v"
        if base[0].isdigit():
            base = "v" + base
        if base.startswith("_"):   # the module's own names start with one
            base = "v" + base
        # A clash: first base_ (as PEP 8 avoids a keyword: class_), then numbered after two
        # underscores (d_h__2, d_h__3), not ever more underscores; d_h_2 is instance h.2's name.
        name = base if base not in self.taken else base + "_"
        while name in self.taken:
            count = self.clashes[base] = self.clashes.get(base, 1) + 1
            name = f"{base}__{count}"
        self.taken.add(name)
        return name

    def temp(self) -> str:
        while True:
            self.temps += 1
            name = f"t{self.temps}"
            if name not in self.taken:
                self.taken.add(name)
                return name


def safe_comment(text: str) -> str:
    """Text that cannot end a comment line early (no newline or other control characters)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def docstring_text(text: str) -> str:
    """Text that stays inside a triple-quoted docstring, whatever a file is called."""
    return safe_comment(text).replace("\\", "\\\\").replace('"', '\\"')


def source(value: Any) -> str:
    """Python source for a number, or a list, tuple or dict of them: ``repr``, except that
    inf and nan are written as np.inf and np.nan, so no value can stop a module importing."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{source(k)}: {source(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(source, value)) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(map(source, value)) + ("," if len(value) == 1 else "") + ")"
    return literal(value).strip("()") if isinstance(value, float) else repr(value)


def c_source(expr: str) -> str:
    """A fused kernel's C expression with inf and nan (from attributes) spelt as C spells them."""
    return re.sub(r"\b(inf|nan)\b", lambda m: "INFINITY" if m[1] == "inf" else "NAN", expr)


@functools.lru_cache(maxsize=None)
def basename(file: str) -> str:
    return Path(file).name


class Verbatim(str):
    """Source text that an initialiser's ``{value!r}`` writes as it is."""

    def __repr__(self) -> str:
        return str(self)


def plain(value: Any) -> Any:
    """A constant's nested tuples as lists, to write as an array's source."""
    if isinstance(value, tuple):
        return [plain(v) for v in value]
    return value
