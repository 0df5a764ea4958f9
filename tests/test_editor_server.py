"""The language server (``nncompile lsp``) in a real session: pygls's own LanguageClient starts
the server as its own process, as an editor does, and talks LSP to it over stdio.

What is checked is what an editor shows: the compiler's diagnostics at the characters they
are about (the same places, messages and underlines as ``nncompile check`` prints, for every
error case of tests/test_errors.py), cleared when the text is fixed, refreshed on change and
on save; hover with a name's dtype, shape and param count; go to definition.
"""
from __future__ import annotations

import asyncio
import re
import sys
import threading
from pathlib import Path

import pytest

from conftest import GOLDEN, ROOT, cli, write_nn

try:
    from lsprotocol import types
    from pygls.lsp.client import LanguageClient
except ImportError:   # the optional extra "editor" is not installed: only the message for that is tested
    types = None

TIMEOUT = 60


class Session:
    """One server process and one client, driven from the tests' thread: the client's event
    loop runs in a thread of its own."""

    def __init__(self, root: Path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.client = LanguageClient("nncompile-tests", "1")
        self.published: dict[str, list] = {}
        self.arrived = threading.Condition()
        self.versions: dict[str, int] = {}

        @self.client.feature(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        def publish(params: types.PublishDiagnosticsParams) -> None:
            with self.arrived:
                self.published.setdefault(params.uri, []).append(params)
                self.arrived.notify_all()

        self.call(self.client.start_io(sys.executable, "-m", "nncompile", "lsp", "--stdio", cwd=str(ROOT)))
        self.capabilities = self.call(self.client.initialize_async(types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=root.as_uri(), process_id=None))).capabilities
        self.notify(self.client.initialized, types.InitializedParams())

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(TIMEOUT)

    def notify(self, method, params) -> None:
        self.loop.call_soon_threadsafe(method, params)

    def diagnostics(self, uri: str, version: int | None = None) -> list:
        """The diagnostics published for ``uri`` after its latest change (``version``)."""
        def ready():
            return [p for p in self.published.get(uri, []) if version is None or p.version == version]
        with self.arrived:
            assert self.arrived.wait_for(ready, TIMEOUT), f"no diagnostics for {uri} version {version}"
            return list(ready()[-1].diagnostics)

    def open(self, path: Path, text: str | None = None) -> list:
        uri = path.as_uri()
        text = path.read_text(encoding="utf-8") if text is None else text
        self.versions[uri] = 1
        with self.arrived:   # a document opened again: only what comes now counts
            self.published.pop(uri, None)
        self.notify(self.client.text_document_did_open,
                    types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "nn", 1, text)))
        return self.diagnostics(uri, 1)

    def change(self, path: Path, text: str) -> list:
        uri = path.as_uri()
        self.versions[uri] += 1
        self.notify(self.client.text_document_did_change, types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(self.versions[uri], uri),
            [types.TextDocumentContentChangeWholeDocument(text)]))
        return self.diagnostics(uri, self.versions[uri])

    def edit(self, path: Path, line: int, start: int, end: int, text: str) -> list:
        """An incremental change, as VS Code sends them: ``text`` in place of line[start:end]."""
        uri = path.as_uri()
        self.versions[uri] += 1
        where = types.Range(types.Position(line, start), types.Position(line, end))
        self.notify(self.client.text_document_did_change, types.DidChangeTextDocumentParams(
            types.VersionedTextDocumentIdentifier(self.versions[uri], uri),
            [types.TextDocumentContentChangePartial(range=where, text=text)]))
        return self.diagnostics(uri, self.versions[uri])

    def save(self, path: Path) -> list:
        uri = path.as_uri()
        before = len(self.published.get(uri, []))
        self.notify(self.client.text_document_did_save,
                    types.DidSaveTextDocumentParams(types.TextDocumentIdentifier(uri)))
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.published.get(uri, [])) > before, TIMEOUT)
            return list(self.published[uri][-1].diagnostics)

    def close(self, path: Path) -> list:
        uri = path.as_uri()
        before = len(self.published.get(uri, []))
        self.notify(self.client.text_document_did_close,
                    types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(uri)))
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.published.get(uri, [])) > before, TIMEOUT)
            return list(self.published[uri][-1].diagnostics)

    def hover(self, path: Path, line: int, character: int) -> str | None:
        """The hover text at a 0-based position, as the client receives it."""
        answer = self.call(self.client.text_document_hover_async(
            types.HoverParams(types.TextDocumentIdentifier(path.as_uri()), types.Position(line, character))))
        return None if answer is None else answer.contents.value

    def definition(self, path: Path, line: int, character: int):
        return self.call(self.client.text_document_definition_async(
            types.DefinitionParams(types.TextDocumentIdentifier(path.as_uri()), types.Position(line, character))))

    def stop(self) -> int | None:
        self.call(self.client.shutdown_async(None))
        self.notify(self.client.exit, None)
        self.call(self.client.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        return self.client._server.returncode if self.client._server else None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lsp")


@pytest.fixture(scope="module")
def session(workdir: Path):
    if types is None:
        pytest.skip("the language server needs pygls (pip install nncompile[editor])")
    started = Session(workdir)
    yield started
    assert started.stop() == 0, "the server exits cleanly after shutdown and exit"


def span(diagnostic) -> tuple[int, int, int, int]:
    r = diagnostic.range
    return r.start.line, r.start.character, r.end.line, r.end.character


SHAPE_ERROR = """
    input x: float[N, 3]
    input W: float[4, 5]
    h = x @ W
    output h
"""


def test_the_server_offers_diagnostics_hover_and_definitions(session: Session):
    caps = session.capabilities
    assert caps.hover_provider and caps.definition_provider
    assert caps.text_document_sync.open_close and caps.text_document_sync.save
    assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental


def test_an_error_is_published_at_its_range_then_cleared_when_fixed_and_hover_shows_the_shape(session, workdir):
    path = write_nn(workdir, "first.nn", SHAPE_ERROR)
    [error] = session.open(path)
    assert error.message == "cannot multiply [N, 3] @ [4, 5]: inner dims 3 and 4 differ"
    assert error.severity == types.DiagnosticSeverity.Error and error.source == "nncompile"
    assert span(error) == (2, 4, 2, 9)   # x @ W
    assert session.change(path, path.read_text().replace("[N, 3]", "[N, 4]")) == []
    shown = session.hover(path, 2, 0)
    assert "h: float32[N, 5]" in shown and "matmul" in shown


def test_an_edit_that_breaks_the_file_brings_the_error_back(session, workdir):
    path = write_nn(workdir, "edits.nn", "input x = 1\ny = x + 2\noutput y\n")
    assert session.open(path) == []
    [error] = session.change(path, "input x = 1\ny = x +\noutput y\n")
    assert error.message == "unexpected end of line; expected an expression" and span(error)[:2] == (1, 7)
    [error] = session.change(path, "input x = 1\ny = x + z\noutput y\n")
    assert error.message.startswith("unknown name 'z'") and span(error) == (1, 8, 1, 9)
    assert session.change(path, "input x = 1\ny = x + 2\noutput y\n") == []


HEADER = re.compile(r"(?P<file>[^:\s]+):(?P<line>\d+):(?P<col>\d+): (?P<kind>error|note): (?P<message>.+)")


def test_incremental_edits_are_applied_before_the_text_is_analysed(session, workdir):
    path = write_nn(workdir, "incremental.nn", SHAPE_ERROR)
    assert len(session.open(path)) == 1
    assert session.edit(path, 0, 18, 19, "4") == []            # float[N, 3] -> float[N, 4]
    assert "h: float32[N, 5]" in session.hover(path, 2, 0)
    [error] = session.edit(path, 1, 15, 16, "7")               # float[4, 5] -> float[7, 5]
    assert error.message == "cannot multiply [N, 4] @ [7, 5]: inner dims 4 and 7 differ"


def _golden_cases():
    """The error cases of tests/test_errors.py that compile one file and fail inside it (an
    error in another file is placed at its call or import: tested below)."""
    from test_errors import CASES

    for name, case in sorted(CASES.items()):
        first = next(iter(case.files), None)
        if first and case.located and case.args[:2] in (["check", first], ["compile", first]) and \
                "--set" not in case.args and HEADER.match((GOLDEN / f"{name}.txt").read_text())["file"] == first:
            yield name, case


@pytest.mark.parametrize("name", [name for name, _ in _golden_cases()])
def test_each_error_case_is_where_and_what_nncompile_check_says(name: str, session, workdir):
    """The oracle is the CLI's own report (tests/golden/): the same line, column and message,
    the range as wide as its ~ underline, and its notes as related information."""
    case = dict(_golden_cases())[name]
    directory = workdir / name
    directory.mkdir()
    for file, text in case.files.items():
        write_nn(directory, file, text)
    first = next(iter(case.files))
    golden = (GOLDEN / f"{name}.txt").read_text().split("\n")
    header = HEADER.fullmatch(golden[0])
    errors = [d for d in session.open(directory / first) if d.severity == types.DiagnosticSeverity.Error]
    assert len(errors) == 1, errors
    [error] = errors
    assert error.message.replace(f"{directory}/", "") == header["message"]
    line, col = int(header["line"]) - 1, int(header["col"]) - 1
    assert span(error)[:2] == (line, col)
    underline = re.fullmatch(r"    ( *)(\^~*)", golden[2])[2] if len(golden) > 2 and golden[2].strip() else "^"
    if len(underline) > 1:
        assert span(error)[2:] == (line, col + len(underline))
    notes = [(n["message"], int(n["line"]) - 1, int(n["col"]) - 1) for n in map(HEADER.fullmatch, golden[1:]) if n]
    related = [(r.message, r.location.range.start.line, r.location.range.start.character)
               for r in error.related_information or ()]
    assert related == notes


def test_the_golden_cases_cover_parse_elaboration_and_shape_errors():
    from test_errors import CASES

    names = {name for name, _ in _golden_cases()}
    assert len(names) >= 30
    assert {"syntax_error", "matmul_mismatch", "layer_missing_argument"} <= names


def test_an_error_inside_an_imported_layer_is_shown_at_its_call_with_the_real_place_related(session, workdir):
    lib = write_nn(workdir, "lib.nn", """
        layer bad(x: [B, K]) -> [B] {
            return x @ x
        }
    """)
    path = write_nn(workdir, "uses_lib.nn", """
        import "lib.nn"
        input x: float[N, 3]
        h = bad(x)
        output h
    """)
    [error] = session.open(path)
    assert error.message.startswith("cannot multiply [N, 3] @ [N, 3]") and f"{lib}:2:12" in error.message
    assert span(error) == (2, 4, 2, 10)   # bad(x)
    [where] = error.related_information
    assert where.location.uri == lib.as_uri() and where.location.range.start == types.Position(1, 11)


def test_saving_reads_the_imported_file_again(session, workdir):
    lib = write_nn(workdir, "lib_saved.nn", "layer twice(x) {\n    return 2 * y\n}\n")
    path = write_nn(workdir, "saves.nn", 'import "lib_saved.nn"\ninput x = 1\nz = twice(x)\noutput z\n')
    [error] = session.open(path)
    assert error.message.startswith("unknown name 'y'")
    lib.write_text("layer twice(x) {\n    return 2 * x\n}\n", encoding="utf-8")
    assert session.save(path) == []


def test_a_syntax_error_in_an_imported_file_is_shown_at_the_import(session, workdir):
    write_nn(workdir, "broken_lib.nn", "layer f(x) {\n    return x +\n}\n")
    path = write_nn(workdir, "imports_broken.nn", 'import "broken_lib.nn"\ninput x = 1\noutput x\n')
    [error] = session.open(path)
    assert span(error)[:2] == (0, 0) and "broken_lib.nn:2:" in error.message


def test_warnings_for_a_param_that_cannot_change_the_loss_and_an_unused_input(session, workdir):
    path = write_nn(workdir, "warns.nn", """
        input x: float[N, 3]
        input unused: float[N]
        param p: [3] = zeros()
        param q: [3] = zeros()
        loss = sum(x * p)
        minimize loss
    """)
    found = {(d.severity, span(d)[0], d.message) for d in session.open(path)}
    assert found == {
        (types.DiagnosticSeverity.Warning, 3, "param 'q' does not affect the loss, so training never changes it"),
        (types.DiagnosticSeverity.Warning, 1, "input 'unused' is not used by any output or the loss")}


def test_an_error_in_a_layer_body_relates_the_call(session, workdir):
    path = write_nn(workdir, "layer_body.nn", """
        layer f(x) {
            return x @ Q
        }
        input x: float[N, 3]
        h = f(x)
        output h
    """)
    [error] = session.open(path)
    assert error.message.startswith("unknown name 'Q'") and span(error) == (1, 15, 1, 16)
    [call] = error.related_information
    assert call.message == "in layer 'f' called here as 'h'" and call.location.range.start == types.Position(4, 4)


def test_hover_shows_dtype_shape_and_param_counts(session):
    path = ROOT / "examples" / "two_layer.nn"
    lines = path.read_text().split("\n")
    assert session.open(path) == []

    def at(line: int, word: str, nth: int = 0) -> str | None:
        starts = [m.start() for m in re.finditer(rf"\b{re.escape(word)}\b", lines[line])]
        return session.hover(path, line, starts[nth])

    assert "input X: float32[N, 3072]" in at(5, "X")
    assert "y: int64[N]" in at(6, "y")
    fc1 = at(14, "fc1")                                    # fc1 = affine(X, out=H)
    assert "fc1: float32[N, 100]" in fc1 and "an instance of layer affine" in fc1 and "307,300 params" in fc1
    assert "`fc1.W`: float32[3072, 100]" in fc1 and "`fc1.b`: float32[100]" in fc1
    fc2 = at(16, "fc2")                                    # ... as fc2
    assert "1,010 params" in fc2
    weight = at(9, "W")                                    # param W inside the layer: each instance's
    assert "param fc1.W: float32[3072, 100]" in weight and "307,200 params, initialised with he()" in weight
    assert "param fc2.W: float32[100, 10]" in weight and "1,000 params" in weight
    assert "param fc1.W: float32[3072, 100]" in at(20, "W")   # sum(fc1.W ** 2): the part under the cursor
    assert "an instance of layer affine" in at(20, "fc1")
    layer = at(8, "affine")
    assert "layer affine(x: [B, K], out: int) -> [B, out]" in layer and "fc1 (307,300 params)" in layer
    assert "const D = 3072" in at(2, "D")
    assert "symbolic dim" in at(5, "N")
    assert "built-in op" in at(15, "relu") and "max(0, x)" in at(15, "relu")
    assert "initialiser" in at(9, "he")
    assert at(0, "CIFAR") is None                         # a comment
    assert "loss: float32[]" in at(21, "loss")


def test_hover_still_answers_above_an_error(session, workdir):
    path = write_nn(workdir, "half.nn", "input x: float[N, 3]\nh = relu(x)\nbad = h @ h\noutput bad\n")
    [error] = session.open(path)
    assert span(error)[0] == 2
    assert "h: float32[N, 3]" in session.hover(path, 1, 0)


def test_hover_shows_a_model_in_float64_and_eval_only_names(session, workdir):
    path = write_nn(workdir, "modes.nn", """
        dtype float64
        input x: float[N, 3]
        train { h = dropout(x, p=0.5) }
        eval {
            h = x * 1.0
            k = h + 1.0
        }
        e = sum(h)
        output e
    """)
    assert session.open(path) == []
    assert "h: float64[N, 3]" in session.hover(path, 2, 8)
    assert "k: float64[N, 3]" in session.hover(path, 5, 4)
    assert "e: float64[]" in session.hover(path, 7, 0)


def test_go_to_definition_finds_names_layers_instances_and_the_standard_library(session):
    path = ROOT / "examples" / "stdlib_mlp.nn"
    lines = path.read_text().split("\n")
    stdlib = (ROOT / "nncompile" / "stdlib" / "nn.nn").read_text().split("\n")
    assert session.open(path) == []

    def line_of(text: str, among: list[str] = lines) -> int:
        return next(i for i, line in enumerate(among) if line.startswith(text))

    def where(line: int, text: str, offset: int = 0) -> tuple[str, int, int]:
        found = session.definition(path, line, lines[line].index(text) + offset)
        return Path(found.uri.removeprefix("file://")).name, found.range.start.line, found.range.start.character

    body, loss = line_of("body = "), line_of("loss = ")
    assert where(body, "h, out") == ("stdlib_mlp.nn", line_of("h = dense"), 0)
    assert where(body, "dense") == ("nn.nn", line_of("layer dense(", stdlib), 0)
    assert where(loss, "stem.W") == ("stdlib_mlp.nn", line_of("h = dense"), lines[line_of("h = dense")].index("dense"))
    assert where(loss, "stem.W", len("stem.")) == ("nn.nn", line_of("layer dense(", stdlib) + 1, 4)
    assert session.definition(path, line_of("loss = "), lines[loss].index("softmax")) is None   # a built-in


def test_hover_on_a_repeat_counts_every_copy(session):
    path = ROOT / "examples" / "stdlib_mlp.nn"
    body = next(i for i, line in enumerate(path.read_text().split("\n")) if line.startswith("body = "))
    session.open(path)
    shown = session.hover(path, body, 0)
    assert "body: float32[N, 24]" in shown and "body: 3 instances of layer dense" in shown
    assert f"{3 * (24 * 24 + 24):,} params in all" in shown


def test_ranges_count_utf16_units_as_the_protocol_does(session, workdir):
    path = write_nn(workdir, "wide.nn", 'import "\U0001f600.nn"\ninput x = 1\noutput x\n')
    [error] = session.open(path)
    line = 'import "\U0001f600.nn"'
    assert len(line) == 13 and span(error) == (0, 0, 0, 14)   # the emoji is one character, two UTF-16 units


def test_an_unsaved_buffer_is_analysed_too(session):
    uri = "untitled:Untitled-1"
    session.versions[uri] = 1
    session.notify(session.client.text_document_did_open,
                   types.DidOpenTextDocumentParams(types.TextDocumentItem(uri, "nn", 1, "y = 1 +\n")))
    [error] = session.diagnostics(uri, 1)
    assert error.message.startswith("unexpected end of line")


def test_closing_a_document_clears_its_diagnostics(session, workdir):
    path = write_nn(workdir, "closed.nn", SHAPE_ERROR)
    assert len(session.open(path)) == 1
    assert session.close(path) == []
    assert session.hover(path, 2, 0) is None


def test_hover_markdown_cannot_be_broken_out_of_by_a_comment(session, workdir):
    path = write_nn(workdir, "hostile.nn", """
        layer f(x: [B, # ``` </script><img src=x onerror=alert(1)>
                    K]) -> [B, K] {
            return x
        }
        input x: float[N, 3]
        h = f(x)
        output h
    """)
    assert session.open(path) == []
    shown = session.hover(path, 0, 6)
    assert "layer f(x: [B," in shown and "<img" not in shown and shown.count("```") == 2


def test_without_pygls_the_verb_says_what_to_install(tmp_path):
    fake = tmp_path / "pygls"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'pygls'\", name='pygls')\n")
    result = cli("lsp", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert result.stderr.strip() == ("nncompile: error: the language server needs pygls, and pygls is not "
                                     "installed: pip install 'nncompile[editor]'")
