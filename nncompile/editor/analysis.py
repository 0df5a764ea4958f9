"""What the compiler knows about the text in an editor: its errors and warnings, placed on the
characters they are about, and what each name under the cursor is (shape, dtype, param
count) and where it was defined.

Nothing is inferred here: the text is parsed and elaborated as ``nncompile check`` does, and
the answers are read from the elaborator's own graph and scopes, which are kept even when
elaboration stops at an error, so a name defined above a mistake still has its shape.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import syntax
from ..codegen.module import NUMPY_DTYPES
from ..elaborate import MODES, Elaborator, Scope
from ..elaborate.statements import Statements
from ..errors import Loc, NNError, Sources
from ..initializers import INITIALIZERS
from ..ir import Graph, Model, Node
from ..ops import REGISTRY
from ..parser import parse
from ..shapes import show

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_REF = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+))*")
_QUOTED_OR_COMMENT = re.compile(r'"[^"\n]*"|#.*')
MAX_LISTED = 8   # instances shown in one hover


@dataclass(frozen=True)
class Problem:
    """One diagnostic: ``loc`` is in the analysed file (1-based, ``end_col`` exclusive)."""

    severity: str                                   # "error" or "warning"
    message: str
    loc: Loc
    notes: tuple[tuple[str, Loc], ...] = ()         # related places, in any file


@dataclass(frozen=True)
class Hover:
    text: str          # Markdown
    loc: Loc           # the name it is about


class _RecordingStatements(Statements):
    """The elaborator's statements, keeping each scope they fill (the file's, every layer instance's)."""

    def body(self, body, scope: Scope):
        if not any(scope is seen for seen in self.el.scopes):
            self.el.scopes.append(scope)
        return super().body(body, scope)


class _Recording(Elaborator):
    def __init__(self, file: str, mode: str):
        super().__init__(file, None, mode)
        self.scopes: list[Scope] = []
        self.statements = _RecordingStatements(self)


@dataclass
class Analysis:
    """One version of one file, analysed."""

    file: str
    text: str
    problems: list[Problem] = field(default_factory=list)
    module: syntax.Module | None = None
    runs: list[_Recording] = field(default_factory=list)   # train mode, then eval mode if it differs

    # ---- hover and definitions -------------------------------------------------------

    def hover(self, line: int, col: int) -> Hover | None:
        """What the name at ``line``:``col`` (1-based) is, in Markdown."""
        found = self._ref_at(line, col)
        if found is None:
            return None
        parts, loc = found
        name = ".".join(parts)
        if name in REGISTRY and REGISTRY[name].public and not self._is_value(parts, line):
            opdef = REGISTRY[name]
            return Hover(_code(f"{name}(...)") + f"built-in op: {opdef.doc}", loc)
        if name in INITIALIZERS and not self._is_value(parts, line):
            return Hover(_code(f"{name}()") + f"initialiser: {INITIALIZERS[name].doc}", loc)
        for run in self.runs:
            if name in run.layers.defined:
                return Hover(self._layer(run, name), loc)
        for run in self.runs:
            found = [(scope.prefix, text) for scope in self._scopes_at(run, line)
                     if (text := self._describe(run, scope, parts)) is not None]
            if found:
                return Hover(_per_instance(found), loc)
        return None

    def definition(self, line: int, col: int) -> Loc | None:
        """Where the name at ``line``:``col`` was defined (possibly in an imported file)."""
        found = self._ref_at(line, col)
        if found is None:
            return None
        parts, _ = found
        for run in self.runs:
            if len(parts) == 1 and parts[0] in run.layers.defined:
                return run.layers.defined[parts[0]].loc
            for scope in self._scopes_at(run, line):
                owner = self._scope_named(run, (*scope.prefix, *parts[:-1])) if len(parts) > 1 else scope
                if owner is not None and parts[-1] in owner.defined:
                    return owner.defined[parts[-1]]
                if ".".join(parts) in scope.instances:
                    return scope.instances[".".join(parts)]
        return None

    def _ref_at(self, line: int, col: int) -> tuple[tuple[str, ...], Loc] | None:
        """The dotted name under the cursor, up to the part the cursor is on (``fc1`` of ``fc1.W``)."""
        lines = self.text.split("\n")
        if not 0 < line <= len(lines):
            return None
        text = _QUOTED_OR_COMMENT.sub(lambda m: " " * len(m.group()), lines[line - 1])
        for match in _REF.finditer(text):
            if match.start() <= col - 1 <= match.end() - 1 or (col - 1 == match.end() and col > 1):
                parts, start = [], match.start()
                for part in match.group().split("."):
                    parts.append(part)
                    if start + len(part) >= col:
                        return tuple(parts), Loc(self.file, line, match.start() + 1, start + len(part) + 1)
                    start += len(part) + 1
                return tuple(parts), Loc(self.file, line, match.start() + 1, match.end() + 1)
        return None

    def _is_value(self, parts: tuple[str, ...], line: int) -> bool:
        """Whether a name that is also an op's is a value here (``sum = ...``)."""
        return any(".".join(parts) in s.values or ".".join(parts) in s.consts
                   for run in self.runs for s in self._scopes_at(run, line))

    def _scopes_at(self, run: _Recording, line: int) -> list[Scope]:
        """The scopes a name on ``line`` is looked up in: every instance of the layer the line
        is in, else the file's own."""
        layer = self._layer_at(line)
        if layer is None:
            return [s for s in run.scopes if s.prefix == ()]
        return [s for s in run.scopes if s.in_layer == layer]

    def _layer_at(self, line: int) -> str | None:
        """The layer whose definition holds ``line``: up to the next statement of the file."""
        if self.module is None:
            return None
        owner = None
        for stmt in self.module.body:
            if stmt.loc.line > line:
                break
            owner = stmt.name if isinstance(stmt, syntax.Layer) else None
        return owner

    @staticmethod
    def _scope_named(run: _Recording, prefix: tuple[str, ...]) -> Scope | None:
        wanted = ".".join(prefix)
        return next((s for s in run.scopes if ".".join(s.prefix) == wanted), None)

    def _describe(self, run: _Recording, scope: Scope, parts: tuple[str, ...]) -> str | None:
        """The hover text of a name in one scope, or None where it means nothing there."""
        name = ".".join(parts)
        pieces = []
        if name in scope.values:
            pieces.append(_node(run.model, run.G[scope.values[name]], ".".join((*scope.prefix, name))))
        elif len(parts) == 1 and name in scope.consts:
            pieces.append(_code(f"const {name} = {_number(scope.consts[name])}"))
        elif len(parts) == 1 and name in scope.dims:
            pieces.append(_code(f"{name} = {scope.dims[name]}") + "a dim of a layer argument's shape")
        elif len(parts) == 1 and name in run.symbolic_dims():
            pieces.append(_code(name) + "a symbolic dim: set by the inputs' shapes at each call")
        instance = ".".join((*scope.prefix, name))
        kinds = {".".join(prefix): kind for prefix, kind in run.model.layers.items()}
        copies = [kinds[key] for key in kinds if re.fullmatch(re.escape(instance) + r"\.[0-9]+", key)]
        if instance in kinds:
            pieces.append(_instance(run.model, instance, kinds[instance]))
        elif copies:   # h = repeat 3 dense(x): h.1, h.2, h.3
            pieces.append(_code(f"{instance}: {len(copies)} instances of layer {copies[0]}") +
                          f"{_count(_params_of(run.model, instance))} params in all")
        return "\n\n".join(pieces) or None

    def _layer(self, run: _Recording, name: str) -> str:
        layer = run.layers.defined[name]
        header = Sources.line(layer.loc.file, layer.loc.line) or f"layer {name}(...)"
        text = _code(_QUOTED_OR_COMMENT.sub("", header).split("{")[0].strip())
        instances = [".".join(p) for p, kind in run.model.layers.items() if kind == name]
        if instances:
            counts = [f"{i} ({_count(_params_of(run.model, i))} params)" for i in instances[:MAX_LISTED]]
            more = f", and {len(instances) - MAX_LISTED} more" if len(instances) > MAX_LISTED else ""
            text += f"{len(instances)} instance{'s' if len(instances) > 1 else ''}: {', '.join(counts)}{more}"
        else:
            text += "not called in this file"
        return text

    # ---- diagnostics -----------------------------------------------------------------

    def warnings(self) -> list[Problem]:
        """What compiles but is probably a mistake: a param that cannot change the loss, an
        input that no output, loss or update reads. A param of a layer from another file is
        reported at the call of its instance."""
        if not self.runs or any(p.severity == "error" for p in self.problems):
            return []
        idle: dict[Loc, list[str]] = {}   # where -> the params there that never move
        train = self.runs[0]
        if train.model.target is not None:
            reach = _reached(train.model.graph, [train.model.target])
            for name, n in train.model.params.items():
                if n not in reach:
                    loc = train.G[n].loc
                    if loc is None or loc.file != self.file:
                        loc = train.scopes[0].instances.get(name.split(".")[0])
                    idle.setdefault(loc, []).append(f"'{name}'")
        used = {run.G[n].name for run in self.runs
                for n in _reached(run.model.graph, [*run.model.outputs.values(), *run.model.updates.values()])}
        found = [(loc, f"param {names[0]} does not affect the loss, so training never changes it" if len(names) == 1
                  else f"params {', '.join(names)} do not affect the loss, so training never changes them")
                 for loc, names in idle.items()]
        found += [(train.G[n].loc, f"input '{name}' is not used by any output or the loss")
                  for name, n in train.model.inputs.items() if name not in used]
        return [Problem("warning", message, loc) for loc, message in found if loc is not None and loc.file == self.file]


def analyse(text: str, file: str) -> Analysis:
    """Parse and elaborate ``text`` as the file ``file`` (imports resolve beside it), in train
    mode and, where the modes differ, in eval mode too, as ``nncompile compile`` does."""
    analysis = Analysis(file, text)
    try:
        analysis.module = parse(text, file)
    except NNError as exc:
        analysis.problems.append(_problem(exc, analysis, None))
        return analysis
    for mode in MODES:
        run = _Recording(file, mode)
        analysis.runs.append(run)
        try:
            run.run(analysis.module)
        except NNError as exc:
            problem = _problem(exc, analysis, run)
            if problem not in analysis.problems:
                analysis.problems.append(problem)
        if not run.model.mode_dependent:
            break
    analysis.problems += analysis.warnings()
    return analysis


def _problem(exc: NNError, analysis: Analysis, run: _Recording | None) -> Problem:
    """The error placed in this file: at its own place, else at the first note here, else at
    the call of the layer it happened in or at the import that leads to the file it is in
    (with the real place as a note)."""
    if exc.loc is None and exc.file in (None, analysis.file):   # about the whole file: an empty one
        return Problem("error", exc.message, Loc(analysis.file, 1, 1, 1))
    if exc.loc is not None and exc.loc.file == analysis.file:
        here, notes, message = exc.loc, exc.notes, exc.message
    else:
        elsewhere = exc.loc or Loc(exc.file, 1, 1)
        here = next((where for _, where in exc.notes if where.file == analysis.file), None) or \
            _call_being_built(run) or _import_of(analysis, elsewhere.file)
        notes = tuple((note, where) for note, where in exc.notes if where != here)
        if exc.loc is not None:
            message = f"{exc.message} (in {elsewhere.file}:{elsewhere.line}:{elsewhere.col})"
            notes = ((exc.message, elsewhere), *notes)
        else:
            message = f"{exc.file}: {exc.message}"
    if here.end_col is None:
        here = Loc(here.file, here.line, here.col, _token_end(analysis.text, here))
    return Problem("error", message, here, notes)


def _reached(graph: Graph, roots: list[int]) -> set[int]:
    """The nodes ``roots`` are computed from, themselves included."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(graph[n].args)
    return seen


def _call_being_built(run: _Recording | None) -> Loc | None:
    """The call, in the file itself, of the layer instance elaborated last: where an error
    inside an imported layer's body comes from."""
    if run is None or not run.scopes or not run.scopes[-1].prefix:
        return None
    return run.scopes[0].instances.get(run.scopes[-1].prefix[0])


def _import_of(analysis: Analysis, file: str | None) -> Loc:
    """The import statement that brings in ``file``, else the first import, else line 1."""
    imports = [s for s in (analysis.module.body if analysis.module else ()) if isinstance(s, syntax.Import)]
    if file is not None:
        for stmt in imports:
            if Path(file).stem == Path(stmt.target).stem:
                return stmt.loc
    return imports[0].loc if imports else Loc(analysis.file, 1, 1)


def _token_end(text: str, loc: Loc) -> int:
    """The column after the word or number at ``loc`` (or after its one character)."""
    lines = text.split("\n")
    line = lines[loc.line - 1] if 0 < loc.line <= len(lines) else ""
    match = _WORD.match(line, loc.col - 1)
    return loc.col + (len(match.group()) if match else 1 if loc.col <= len(line) else 0)


def _per_instance(found: list[tuple[tuple[str, ...], str]]) -> str:
    """One text where every instance says the same, else each instance's own, named."""
    if len({text for _, text in found}) == 1:
        return found[0][1]
    shown = [f"in `{'.'.join(prefix)}`:\n{text}" for prefix, text in found[:MAX_LISTED]]
    if len(found) > MAX_LISTED:
        shown.append(f"... and {len(found) - MAX_LISTED} more instances")
    return "\n\n".join(shown)


def _dtype(model: Model, node: Node) -> str:
    return NUMPY_DTYPES.get(node.dtype) or model.dtype


def _node(model: Model, node: Node, name: str) -> str:
    """``param fc1.W: float32[3072, 100]`` and what it is; ``name`` is the scoped name hovered."""
    kind = node.op if node.op in ("input", "param", "state") else None
    declared = kind is not None and node.name == name
    text = _code(f"{kind + ' ' if declared else ''}{name}: {_dtype(model, node)}{show(node.shape)}")
    if kind is not None and not declared:
        text += f"the {kind} `{node.name}`"
    elif kind is None:
        alias = f"`{node.name}`, " if node.name and node.name != name else ""
        text += f"{alias}computed by {node.op}" + (f" at line {node.loc.line}" if node.loc else "")
    if kind == "param":
        text += f"{'; ' if not declared else ''}{_count(math.prod(node.shape))} params, initialised with " \
                f"{_init(model, node.name)}"
    elif kind == "state":
        text += f"{'; ' if not declared else ''}state: carried between calls, not trained; starts as " \
                f"{_init(model, node.name)}"
    elif declared:
        text += "an input of the module"
    return text


def _init(model: Model, name: str | None) -> str:
    init = model.param_inits.get(name) if name else None
    if init is None:
        return "its initialiser"
    args = ", ".join(f"{k}={_number(v)}" for k, v in init.args if not isinstance(v, list))
    return f"{init.init}({args})"


def _params_of(model: Model, instance: str) -> list[Node]:
    return [model.graph[n] for name, n in model.params.items() if name.startswith(instance + ".")]


def _instance(model: Model, instance: str, layer: str) -> str:
    params = _params_of(model, instance)
    lines = [f"- `{p.name}`: {_dtype(model, p)}{show(p.shape)}" for p in params[:MAX_LISTED]]
    if len(params) > MAX_LISTED:
        lines.append(f"- ... and {len(params) - MAX_LISTED} more")
    return _code(f"{instance}: an instance of layer {layer}") + f"{_count(params)} params" + \
        ("\n\n" + "\n".join(lines) if lines else "")


def _count(params: list[Node] | int) -> str:
    total = params if isinstance(params, int) else sum(math.prod(p.shape) for p in params)
    return f"{total:,}"


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _code(line: str) -> str:
    """A line of .nn shown as code, then the prose under it."""
    return f"```nn\n{line}\n```\n"
