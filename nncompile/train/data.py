"""Datasets for training: the bundled digits set and the user's .npz / .csv files.

Loading happens in two stages. A *source* (:class:`RawData`) is whatever the file holds:
named arrays (npz), named columns (csv), or the digits set. :func:`bind` then maps the
source onto the compiled model's inputs by name (or by ``--map NAME=ARRAY``) and
validates every array against the module's INPUTS and BOUNDS before any training starts,
so bad data is reported as an :class:`NNError` naming the array, the input and the
offending value, never as a traceback from the middle of an epoch.

The digits set (scikit-learn's copy of the UCI handwritten digits: 1797 8x8 images with
pixel values 0..16, 10 classes) is scaled by 1/16 to [0, 1] when loaded. The trainer then
normalises float inputs with statistics of the training split only (:class:`Normalizer`):
for digits by default the lectures' image recipe, subtract the mean image and divide by the
pixels' overall standard deviation; user files are left as they are unless asked.
"""
from __future__ import annotations

import csv
import itertools
import math
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from ..errors import Loc, NNError
from .checkpoint import read_npz

DIGITS = "digits"
LABEL_COLUMNS = ("label", "labels", "y", "target", "class")


@dataclass
class RawData:
    """Named arrays as a data source holds them, before they are bound to a model.

    ``roles`` names candidate arrays for an input that is neither named like an array nor
    mapped: ``features`` for the float input and ``labels`` for the integer one (the first
    candidate with the input's rank wins). Arrays from
    a csv file or the digits set are ``flat``: their examples ([N, K], or the digits'
    ``images`` [N, 8, 8]) may be reshaped to the input's shape when the sizes agree, so an
    input named ``images`` takes them as [N, 64] or [N, 1, 8, 8] too; arrays from an npz file
    must match exactly.
    """

    arrays: dict[str, np.ndarray]
    source: str
    file: str | None = None
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    flat: bool = False
    csv: bool = False
    lines: tuple[int, ...] = ()            # csv: the file line of each row, for errors
    blank: dict[str, np.ndarray] = field(default_factory=dict)   # csv: each column's empty cells
    default_test_split: float = 0.0
    default_normalize: str = "none"
    passed: bool = False                   # arrays a Python caller passed by name: no --map to suggest

    @property
    def what(self) -> str:
        """How messages name the source (a file's path is already in the error's location)."""
        return "the file" if self.file else self.source


@dataclass
class Dataset:
    """Arrays keyed by model input name, all with the same number of examples on axis 0."""

    arrays: dict[str, np.ndarray]
    source: str = "arrays"
    labels: str | None = None     # the input holding class labels, if any
    bound: bool = True            # checked against a model's inputs (by :func:`bind`)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray] | None = None, /, **named: np.ndarray) -> Dataset:
        """A dataset of arrays keyed by the model's input names, e.g. ``from_arrays(X=X, y=y)``.

        Nothing is checked yet: the trainer checks it against its model (dtype, shape, the
        batch dim shared by all, labels within the class bound) when it trains or evaluates.
        """
        given = {**(arrays or {}), **named}
        if not given:
            raise NNError("Dataset.from_arrays needs at least one array, e.g. from_arrays(X=X, y=y)")
        return cls({k: np.asarray(v) for k, v in given.items()}, "the arrays given", bound=False)

    def split(self, fraction: float, *, salt: int = 0) -> tuple[Dataset, Dataset]:
        """(rest, held out): ``fraction`` of the examples, per class where there are labels;
        the same data always gives the same split (see :func:`split`)."""
        return split(self, fraction, salt)

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    def take(self, index: np.ndarray) -> Dataset:
        """The examples at ``index`` (a copy), in that order."""
        return Dataset({k: v[index] for k, v in self.arrays.items()}, self.source, self.labels, self.bound)

    def label_array(self) -> np.ndarray | None:
        return self.arrays[self.labels] if self.labels else None


# ---- sources ---------------------------------------------------------------------------


def load_source(spec: str) -> RawData:
    """The data named on the command line: ``digits``, or a path to an .npz or .csv file."""
    if spec == DIGITS:
        return load_digits()
    path = Path(spec)
    if not path.exists():
        raise NNError("data file not found (use --data digits for the bundled digits set, "
                      "or a .npz or .csv file)", file=spec)
    if path.is_dir():
        raise NNError("is a directory, not a .npz or .csv data file", file=spec)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path)
    if suffix == ".csv":
        return load_csv(path)
    raise NNError("cannot read data from this file: use a .npz or .csv file (or --data digits)", file=spec)


def load_digits() -> RawData:
    """scikit-learn's bundled 8x8 digits (no download), pixels scaled from 0..16 to [0, 1]."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits  # type: ignore[import-untyped]
    except ImportError:
        raise NNError("the digits dataset comes with scikit-learn, which is not installed: "
                      "pip install 'nncompile[train]'") from None
    bunch = sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    return RawData({"X": images.reshape(len(images), -1), "images": images, "y": labels},
                   "the digits dataset", roles={"features": ("X", "images"), "labels": ("y",)}, flat=True,
                   default_test_split=0.2, default_normalize="image")


def load_npz(path: Path) -> RawData:
    """Every array of an .npz file, by name (object arrays are refused: no pickle)."""
    if not zipfile.is_zipfile(path):
        raise NNError("not a readable .npz file (numpy.savez writes a zip archive of arrays)", file=str(path))
    arrays = read_npz(path)
    if not arrays:
        raise NNError("the .npz file holds no arrays", file=str(path))
    return RawData(arrays, str(path), file=str(path))


def load_csv(path: Path) -> RawData:
    """The columns of a .csv file with a header row, as float arrays keyed by column name.

    A file whose first row is all numbers has no header; its columns are named "0", "1", ...
    A column named like a label (label, y, target, class) is the default label column.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:   # -sig: a spreadsheet's BOM is no cell
            reader = csv.reader(handle)
            rows, end = [], 0
            for row in reader:   # each record with the line it starts on (a quoted cell may hold newlines)
                start, end = end + 1, reader.line_num
                if row and any(cell.strip() for cell in row):
                    rows.append((start, row))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise NNError(f"cannot read the csv file: {exc}", file=str(path)) from None
    if not rows:
        raise NNError("the csv file is empty", file=str(path))
    header = [cell.strip() for cell in rows[0][1]]
    if all(_is_number(cell) for cell in header):
        names, body = [str(i) for i in range(len(header))], rows
    else:
        names, body = header, rows[1:]
        seen: set[str] = set()
        for name in names:
            if not name or name in seen:
                raise NNError(f"the csv header has {'an empty' if not name else 'a repeated'} column name "
                              f"{name!r}", file=str(path))
            seen.add(name)
    if not body:
        raise NNError("the csv file has a header but no rows of data", file=str(path))
    table = np.empty((len(body), len(names)), dtype=np.float64)
    blank = np.zeros(table.shape, dtype=bool)
    for r, (line, row) in enumerate(body):
        if len(row) != len(names):
            raise NNError(f"line {line} has {len(row)} fields, but the file has {len(names)} columns"
                          + _separator_hint(rows[0][1]), Loc(str(path), line, 1))   # '1,5;2' after 'a;b
        for c, cell in enumerate(row):
            try:
                blank[r, c] = not cell.strip()
                table[r, c] = math.nan if blank[r, c] else float(cell)
            except ValueError:
                before = "".join(previous + "," for previous in row[:c])   # a pipe's: exact unless quoted
                at_line, col, width = _field_place(path, line, c) or (
                    line + before.count("\n"), len(before) - before.rfind("\n"), max(1, len(cell)))
                raise NNError(f"line {at_line}, column {names[c]!r}: {cell.strip()!r} is not a number"
                              + _separator_hint(row), Loc(str(path), at_line, col, col + width)) from None
    arrays = {name: table[:, c] for c, name in enumerate(names)}
    roles: dict[str, tuple[str, ...]] = {}
    label = next((name for name in names if name.lower() in LABEL_COLUMNS), None)
    if label is not None:
        roles["labels"] = (label,)
    return RawData(arrays, str(path), file=str(path), roles=roles, flat=True, csv=True,
                   lines=tuple(line for line, _ in body),
                   blank={name: blank[:, c] for c, name in enumerate(names) if blank[:, c].any()})


def _field_place(path: Path, line: int, index: int) -> tuple[int, int, int] | None:
    """(line, 1-based column, width) of field ``index`` of the csv record that starts on
    ``line``, as the file writes it (its quotes included): where an error's caret goes. The
    commas between fields are those outside quotes, and a quote opens a quoted cell only at
    the cell's start, as the csv module reads them. None for a file that cannot be read twice
    (a pipe)."""
    if not path.is_file():
        return None
    quoted, field, start, opening = False, 0, None, True
    with open(path, newline="", encoding="utf-8-sig") as handle:   # the lines as csv.reader counts them
        for number, text in enumerate(itertools.islice(handle, line - 1, None), line):
            text, skip = text.rstrip("\r\n"), False
            for col, char in enumerate(text, 1):
                if field == index and start is None:
                    start = col
                if skip:   # the second quote of a doubled one
                    skip = False
                elif quoted and char == '"':
                    skip = text[col:col + 1] == '"'
                    quoted = skip
                elif char == '"' and opening:
                    quoted = True
                elif char == "," and not quoted:
                    if field == index:
                        return number, start, max(1, col - start)
                    field += 1
                    opening = True
                    continue
                opening = False
            if start is not None:   # the field runs to the end of its line, or on past it
                return number, start, max(1, len(text) - start + 1)
            if not quoted:
                break
    return None


def _separator_hint(row: list[str]) -> str:
    """A hint for a record read as one field that another separator splits into numbers: a
    file written with ';' (as spreadsheets do where ',' is the decimal point) or tabs."""
    for separator, name in ((";", "';'"), ("\t", "tabs")):
        if len(row) == 1 and separator in row[0]:
            return (f"; its fields seem to be separated by {name}, but nncompile reads comma-separated "
                    "files, with '.' as the decimal point: save it as comma-separated")
    return ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def mapping_for(raw: RawData, mapping: dict[str, str] | None, written_for_csv: bool) -> dict[str, str] | None:
    """``mapping``, written for a csv source or not, as it applies to ``raw``: whole where raw is
    of the same kind (a missing column is then an error); where it is not (a csv --data, an npz
    --test-data whose arrays are named after the inputs), the entries that name arrays (or both
    ends of a column range) raw holds, the rest bound by name."""
    if not mapping or raw.csv == written_for_csv:
        return mapping
    return {name: array for name, array in mapping.items()
            if array in raw.arrays or all(end in raw.arrays for end in array.split(":"))}


def parse_mapping(items: Sequence[str] | None) -> dict[str, str]:
    """``["X=images,y=labels", "z=col"]`` -> {"X": "images", "y": "labels", "z": "col"}."""
    mapping: dict[str, str] = {}
    for item in items or ():
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            name, eq, array = part.partition("=")
            if not eq or not name.strip() or not array.strip():
                raise NNError(f"bad --map entry {part!r}: write INPUT=ARRAY (for a csv file INPUT=COLUMN or "
                              "INPUT=FIRST:LAST)")
            if name.strip() in mapping:
                raise NNError(f"--map gives input {name.strip()!r} twice")
            mapping[name.strip()] = array.strip()
    return mapping


# ---- binding and validation ------------------------------------------------------------


def bind(raw: RawData, module: ModuleType, mapping: Mapping[str, str] | None = None) -> Dataset:
    """Map a source onto the model's inputs and validate it; see the module docstring.

    Each input takes, in order of preference: the array ``--map`` names; the array with the
    input's own name; or, when it is the only unfed integer (float) input, the source's
    ``labels`` (``features``) array, or for a csv file the columns nothing else took.
    Inputs with a default value in the .nn file may go unfed.
    """
    mapping = dict(mapping or {})
    inputs: dict[str, tuple[tuple, str]] = module.INPUTS
    for name in mapping:
        if name not in inputs:
            raise NNError(f"--map names {name!r}, but the model's inputs are {_names(inputs)}", file=raw.file)
    chosen: dict[str, tuple[str, np.ndarray]] = {}
    columns_of: dict[str, list[str]] = {}   # the csv columns (or the array) each input takes
    used: set[str] = set()
    for name in inputs:
        if name in mapping:
            label, array, columns = _lookup(raw, mapping[name], name)
        elif name in raw.arrays:
            label, array, columns = name, raw.arrays[name], [name]
        else:
            continue
        chosen[name] = (label, array)
        columns_of[name] = columns
        used.update(columns)
    unfed = [n for n in inputs if n not in chosen and n not in module.DEFAULTS]
    for is_int, role in ((True, "labels"), (False, "features")):
        group = [n for n in unfed if inputs[n][1].startswith("int") == is_int]
        if len(group) != 1:
            continue
        name, rank = group[0], len(inputs[group[0]][0])
        candidates = [c for c in raw.roles.get(role, ()) if c not in used]
        if candidates:
            pick = next((c for c in candidates if raw.arrays[c].ndim == rank), candidates[0])
            chosen[name] = (pick, raw.arrays[pick])
            columns_of[name] = [pick]
            used.add(pick)
        elif raw.csv and not is_int:
            rest = [c for c in raw.arrays if c not in used]
            if rest:
                label = f"{rest[0]}:{rest[-1]}" if len(rest) > 1 else rest[0]
                chosen[name] = (label, np.stack([raw.arrays[c] for c in rest], axis=1))
                columns_of[name] = rest
                used.update(rest)
    for name, (shape, dtype) in inputs.items():
        if name not in chosen and name not in module.DEFAULTS:
            kind = "columns" if raw.csv else "arrays"
            floats = [n for n in unfed if n not in chosen and not inputs[n][1].startswith("int")]
            targets = [n for n in floats if len(inputs[n][0]) == 1]
            free = [c for c in raw.arrays if c not in used]
            if raw.csv and len(floats) == 2 and len(targets) == 1 and free:   # features and a float target
                column = next((c for c in raw.roles.get("labels", ()) if c in free), free[-1])
                features = next(n for n in floats if n != targets[0])
                raise NNError(f"the model's float inputs {floats[0]!r} and {floats[1]!r} would both read columns of "
                              f"{raw.what}, which has {kind} {_names(raw.arrays)}: name the target's, e.g. --map "
                              f"{targets[0]}={column} ({features!r} then takes the remaining columns)",
                              file=raw.file)
            how = f"choose one with --map {name}=NAME"
            if raw.csv and len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 1:   # a range of columns
                take = free[:shape[1]]
                how = f"choose its {shape[1]} columns with --map {name}=FIRST:LAST" + (
                    f", e.g. --map {name}={take[0]}:{take[-1]}" if len(take) == shape[1] else "")
            if raw.passed:
                raise NNError(f"no data for the model's input {name!r} ({_type(shape, dtype)}): the arrays given "
                              f"are {_names(raw.arrays)}; pass one named {name!r}")
            raise NNError(f"no data for the model's input {name!r} ({_type(shape, dtype)}): {raw.what} has "
                          f"{kind} {_names(raw.arrays)}; {how}", file=raw.file)
    if not chosen:
        raise NNError("the model has no inputs to feed with data", file=raw.file)
    arrays = {name: _check_array(raw, name, array_name, array, *inputs[name], module, columns_of[name])
              for name, (array_name, array) in chosen.items()}
    _check_dims(raw, chosen, arrays, inputs)
    labels = label_input(module)
    return Dataset(arrays, raw.source, labels if labels in arrays else None)


def _lookup(raw: RawData, wanted: str, input_name: str) -> tuple[str, np.ndarray, list[str]]:
    """The array (or csv column range FIRST:LAST) that --map names, and the columns it uses."""
    if raw.csv and ":" in wanted and wanted not in raw.arrays:
        first, _, last = wanted.partition(":")
        columns = list(raw.arrays)
        for end in (first, last):
            if end not in raw.arrays:
                raise NNError(f"--map {input_name}={wanted}: no column {end!r} (columns: {_names(raw.arrays)})",
                              file=raw.file)
        i, j = columns.index(first), columns.index(last)
        if j < i:
            raise NNError(f"--map {input_name}={wanted}: column {last!r} comes before {first!r}", file=raw.file)
        members = columns[i:j + 1]
        return wanted, np.stack([raw.arrays[c] for c in members], axis=1), members
    if wanted not in raw.arrays:
        kind = "column" if raw.csv else "array"
        raise NNError(f"--map {input_name}={wanted}: {raw.what} has no {kind} {wanted!r} "
                      f"(it has {_names(raw.arrays)})", file=raw.file)
    return wanted, raw.arrays[wanted], [wanted]


def _check_array(raw: RawData, name: str, array_name: str, array: np.ndarray, shape: tuple, dtype: str,
                 module: ModuleType, columns: list[str]) -> np.ndarray:
    """One array, converted to the input's dtype and shape, or a clear error."""

    def column_at(index: tuple[int, ...]) -> str | None:   # None: reshaped past the columns
        return columns[0] if len(columns) == 1 else columns[index[1]] if len(index) == 2 else None

    def at(index: tuple[int, ...]) -> str:   # an entry's place: its csv line and column, else its row
        if not raw.lines:
            return f"row {index[0]}"
        column = column_at(index)
        return f"line {raw.lines[index[0]]}" + (f", column {column!r}" if len(columns) > 1 and column else "")

    def blank_at(index: tuple[int, ...]) -> bool:   # an empty csv cell, read as NaN
        column = column_at(index)
        return column in raw.blank and bool(raw.blank[column][index[0]])

    if raw.csv and len(columns) > 1:
        what = (f"the array of columns {_names(columns)}" if len(columns) <= 4
                else f"the array of the {len(columns)} columns {columns[0]!r} ... {columns[-1]!r}")
    else:
        what = f"{'column' if raw.csv else 'array'} {array_name!r}"
    what += f" for input {name!r}" if raw.file else f" of {raw.source} for input {name!r}"
    array = np.asarray(array)
    kind = array.dtype.kind
    if kind not in "fiub":
        raise NNError(f"{what} holds {array.dtype} values; it must hold real numbers", file=raw.file)
    if dtype.startswith("int"):
        if kind == "b":
            raise NNError(f"{what} holds booleans, but {name} is {_type(shape, dtype)}: give integer labels",
                          file=raw.file)
        if kind == "f":
            if not raw.csv:
                raise NNError(f"{what} holds {array.dtype} values, but {name} is {_type(shape, dtype)}: save "
                              "the class labels as integers", file=raw.file)
            whole = np.isfinite(array) & (array == np.round(array))
            if not whole.all():
                row = _first(~whole)
                assert row is not None
                held = "an empty cell" if blank_at(row[1]) else repr(array[row[1]].item())
                raise NNError(f"{what}: {at(row[1])} holds {held}, but {name} is "
                              f"{_type(shape, dtype)} and needs whole-number class labels", file=raw.file)
            huge = np.abs(array) >= 2.0 ** 62   # no class label, and too big for int64
            if huge.any():
                row = _first(huge)
                assert row is not None
                raise NNError(f"{what}: {at(row[1])} holds {array[row[1]].item():g}, far beyond any class label "
                              f"of {name}", file=raw.file)
        array = array.astype(np.int64)
    else:
        if kind == "b":
            raise NNError(f"{what} holds booleans, but {name} is {_type(shape, dtype)}: give numbers",
                          file=raw.file)
        with np.errstate(over="ignore", invalid="ignore"):   # a value past float32's range is said below
            cast = array.astype(dtype)
        bad = ~np.isfinite(cast)
        if bad.any():
            where = _first(bad)
            assert where is not None
            if np.isfinite(array[where[1]]):
                raise NNError(f"{what}: {at(where[1])} holds {array[where[1]].item():g}, too large for {name}'s "
                              f"{np.dtype(dtype).name} (at most {float(np.finfo(dtype).max):.4g})", file=raw.file)
            if blank_at(where[1]):
                raise NNError(f"{what}: {at(where[1])} holds an empty cell, and every example needs a number "
                              f"there ({int(bad.sum())} empty or non-finite cell(s) in all)", file=raw.file)
            count = f"{int(bad.sum())} {'empty or non-finite cell' if raw.blank else 'NaN or infinite value'}(s)"
            raise NNError(f"{what}: {at(where[1])} holds {array[where[1]].item()!r} ({count} in all); every value "
                          "must be finite", file=raw.file)
        array = cast
    if array.ndim == 0:
        raise NNError(f"{what} is a single value, but {name} is {_type(shape, dtype)}: it needs one entry per "
                      "example", file=raw.file)
    if len(array) == 0:
        raise NNError(f"{what} holds no examples", file=raw.file)
    if array.ndim != len(shape):
        per_example = shape[1:]
        if raw.flat and array.ndim >= 1 and all(isinstance(d, int) for d in per_example) \
                and math.prod(array.shape[1:]) == math.prod(per_example):
            array = array.reshape((len(array), *per_example))
        else:
            raise NNError(f"{what} has shape {_shape(array.shape)}, but {name} is {_type(shape, dtype)}",
                          file=raw.file)
    if not shape or not isinstance(shape[0], str):
        raise NNError(f"input {name!r} is {_type(shape, dtype)}, which has no batch dimension to hold examples: "
                      f"declare it with a symbolic first dim, e.g. {'int[N]' if dtype.startswith('int') else 'float[N, 64]'}",
                      file=raw.file)
    for axis, (want, got) in enumerate(zip(shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise NNError(f"{what} has shape {_shape(array.shape)}, but {name} is {_type(shape, dtype)} "
                          f"(axis {axis} must be {want})", file=raw.file)
    bounds: dict[str, int] = module.BOUNDS
    if name in bounds:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= bounds[name]:
            row = _first((array < 0) | (array >= bounds[name]))
            assert row is not None
            raise NNError(f"{what}: {at(row[1])} holds the label {int(array[row[1]])}, but the model has "
                          f"{bounds[name]} classes: labels must lie in [0, {bounds[name]})", file=raw.file)
    return np.ascontiguousarray(array)


def _check_dims(raw: RawData, chosen: Mapping[str, tuple[str, np.ndarray]], arrays: Mapping[str, np.ndarray],
                inputs: Mapping[str, tuple[tuple, str]]) -> None:
    """Every symbolic dim (the batch N first of all) has one size across the arrays."""
    seen: dict[str, tuple[int, str]] = {}
    batch = {inputs[name][0][0] for name in arrays}
    if len(batch) > 1:
        raise NNError(f"the model's inputs {_names(arrays)} have different batch dims {sorted(batch)}; the "
                      "data arrays need one shared first dim", file=raw.file)
    for name, array in arrays.items():
        for want, got in zip(inputs[name][0], array.shape):
            if isinstance(want, str):
                if want in seen and seen[want][0] != got:
                    other_size, other = seen[want]
                    noun = "examples" if want in batch else f"entries along {want}"
                    raise NNError(f"array {chosen[name][0]!r} for input {name!r} has {got} {noun}, but array "
                                  f"{chosen[other][0]!r} for input {other!r} has {other_size}", file=raw.file)
                seen.setdefault(want, (got, name))


def _first(mask: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """(example row, full index) of the first True entry, or None."""
    hits = np.argwhere(mask)
    if not len(hits):
        return None
    index = tuple(int(i) for i in hits[0])
    return index[0], index


def _names(items: Mapping[str, object] | Sequence[str]) -> str:
    return ", ".join(repr(k) for k in items) or "(none)"


def _shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _type(shape: tuple, dtype: str) -> str:
    return f"{'int' if dtype.startswith('int') else 'float'}{_shape(shape)}"


# ---- what the trainer needs to know about a model ---------------------------------------


def label_input(module: ModuleType) -> str | None:
    """The integer input that holds class labels: a rank-1 int input with a class bound."""
    for name, (shape, dtype) in module.INPUTS.items():
        if dtype.startswith("int") and len(shape) == 1 and name in module.BOUNDS:
            return name
    return None


def scores_output(module: ModuleType) -> str | None:
    """The output holding class scores: the first float output of shape [N, C] (N symbolic, C fixed)."""
    for name, (shape, dtype) in module.OUTPUTS.items():
        if dtype.startswith("float") and len(shape) == 2 and isinstance(shape[0], str) and isinstance(shape[1], int):
            return name
    return None


# ---- splits ------------------------------------------------------------------------------

SPLIT_SEED = 0   # splits never depend on --seed, so runs with different seeds share them


def split(data: Dataset, fraction: float, salt: int) -> tuple[Dataset, Dataset]:
    """(rest, held out): ``fraction`` of the examples, drawn per class when there are labels;
    at least one where there are two or more.

    The draw uses a fixed seed (and ``salt``, so the test and validation splits differ):
    the same data always gives the same split, whatever the training seed.
    """
    n = len(data)
    if not 0 <= fraction < 1:
        raise NNError(f"a split fraction must lie in [0, 1), not {fraction}")
    if fraction == 0:
        return data, data.take(np.arange(0))
    rng = np.random.default_rng((SPLIT_SEED, salt))
    labels = data.label_array()
    held: list[np.ndarray] = []
    if labels is None:
        held.append(rng.permutation(n)[:round(fraction * n)])
    else:
        for c in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == c))
            held.append(members[:round(fraction * len(members))])
    if n >= 2 and not sum(map(len, held)):   # a split asked for is never empty (scikit-learn rounds it up too)
        held = [rng.permutation(n)[:1]]
    held_index = np.sort(np.concatenate(held)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[held_index] = False
    if not mask.any():
        raise NNError(f"holding out {fraction:g} of {n} examples leaves none to train on")
    return data.take(np.flatnonzero(mask)), data.take(held_index)


# ---- normalisation -----------------------------------------------------------------------

NORMALIZE = ("none", "center", "standardize", "image")


@dataclass
class Normalizer:
    """``(x - mean) / scale`` for each float input, with statistics of the training split.

    ``center`` subtracts each feature's mean; ``standardize`` also divides each feature by its
    standard deviation (1 where it is 0); ``image`` subtracts the mean image and divides by
    one standard deviation over all pixels, keeping the pixels' relative scale, as the
    lectures recommend for images. Statistics come from training data only, so validation
    and test examples never leak into them; the same transform must be applied at inference
    (the run directory keeps it in normalization.npz).
    """

    method: str
    mean: dict[str, np.ndarray] = field(default_factory=dict)
    scale: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def fit(cls, method: str, train: Dataset, keep: Iterable[str] = ()) -> Normalizer:
        """The statistics of ``train``'s float inputs, except those in ``keep`` (a loss's
        targets: 0/1 labels or regression targets must reach the loss as they are)."""
        if method not in NORMALIZE:
            raise NNError(f"unknown normalisation {method!r}; choose one of {', '.join(NORMALIZE)}")
        norm = cls(method)
        if method == "none":
            return norm
        for name, array in train.arrays.items():
            if array.dtype.kind != "f" or name in keep:
                continue
            x = array.astype(np.float64)
            mean = x.mean(axis=0)
            if method == "center":
                scale = np.ones_like(mean)
            elif method == "standardize":
                scale = x.std(axis=0)
                scale[scale == 0] = 1.0
            else:
                spread = float((x - mean).std())
                scale = np.full_like(mean, spread if spread > 0 else 1.0)
            norm.mean[name], norm.scale[name] = mean, scale
        return norm

    def apply(self, data: Dataset) -> Dataset:
        """A copy of ``data`` with its float inputs normalised (in their own dtype)."""
        if not self.mean:
            return data
        arrays = dict(data.arrays)
        for name, mean in self.mean.items():
            if name in arrays:
                x = arrays[name]
                arrays[name] = ((x - mean) / self.scale[name]).astype(x.dtype)
        return Dataset(arrays, data.source, data.labels, data.bound)

    def arrays(self) -> dict[str, np.ndarray]:
        """For normalization.npz: ``mean/NAME`` and ``scale/NAME`` per normalised input."""
        out = {f"mean/{k}": v for k, v in self.mean.items()}
        out.update({f"scale/{k}": v for k, v in self.scale.items()})
        return out
