"""``nncompile lsp``: a language server over stdio (pygls, the optional extra ``editor``).

On every open, change and save it analyses the buffer as the compiler does
(:mod:`.analysis`) and publishes the errors and warnings with their exact ranges; hover
shows a name's inferred dtype and shape (and a param's or a layer instance's param count),
and go-to-definition jumps to where a name, a layer or a layer instance was defined.
Positions are converted between the compiler's columns (characters) and the client's
(UTF-16 code units unless it negotiated another encoding) by pygls's position codec.
"""
from __future__ import annotations

import logging
from pathlib import Path

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path
from pygls.workspace import TextDocument
from pygls.workspace.position_codec import ServerTextPosition, ServerTextRange

from ..errors import Loc
from ..version import __version__
from .analysis import Analysis, Problem, analyse

logger = logging.getLogger(__name__)
SEVERITY = {"error": types.DiagnosticSeverity.Error, "warning": types.DiagnosticSeverity.Warning}


class NNLanguageServer(LanguageServer):
    """Keeps the latest analysis of each open document, for hover and definitions."""

    def __init__(self) -> None:
        super().__init__("nncompile", __version__, text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.analyses: dict[str, Analysis] = {}

    def refresh(self, uri: str) -> None:
        """Analyse the document's current text and publish what the compiler says about it."""
        document = self.workspace.get_text_document(uri)
        try:
            analysis = analyse(document.source, _file_of(document))
        except Exception as exc:   # a bug of ours: say so in the editor, keep serving the other files
            logger.exception("analysing %s failed", uri)
            analysis = Analysis(_file_of(document), document.source,
                                [Problem("error", f"nncompile could not analyse this file (a bug in nncompile, "
                                                  f"please report it): {type(exc).__name__}: {exc}",
                                         Loc(_file_of(document), 1, 1, 1))])
        self.analyses[uri] = analysis
        diagnostics = [_diagnostic(self, document, problem) for problem in analysis.problems]
        self.text_document_publish_diagnostics(
            types.PublishDiagnosticsParams(uri=uri, version=document.version, diagnostics=diagnostics))


server = NNLanguageServer()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: NNLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.refresh(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: NNLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
    ls.refresh(params.text_document.uri)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: NNLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
    ls.refresh(params.text_document.uri)   # a file it imports may have changed on disk


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: NNLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.analyses.pop(params.text_document.uri, None)
    ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))


@server.feature(types.TEXT_DOCUMENT_HOVER)
def hover(ls: NNLanguageServer, params: types.HoverParams) -> types.Hover | None:
    found = _at(ls, params.text_document.uri, params.position)
    if found is None:
        return None
    document, analysis, (line, col) = found
    shown = analysis.hover(line, col)
    if shown is None:
        return None
    return types.Hover(contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=shown.text),
                       range=_range(document, shown.loc))


@server.feature(types.TEXT_DOCUMENT_DEFINITION)
def definition(ls: NNLanguageServer, params: types.DefinitionParams) -> types.Location | None:
    found = _at(ls, params.text_document.uri, params.position)
    if found is None:
        return None
    document, analysis, (line, col) = found
    loc = analysis.definition(line, col)
    return None if loc is None else _location(ls, document, loc)


def _at(ls: NNLanguageServer, uri: str, position: types.Position) -> tuple[TextDocument, Analysis, tuple[int, int]] | None:
    """The document, its analysis, and the position as the compiler counts (1-based characters)."""
    analysis = ls.analyses.get(uri)
    if analysis is None:
        return None
    document = ls.workspace.get_text_document(uri)
    where = document.position_from_client_units(position)
    return document, analysis, (where.line + 1, where.character + 1)


def _file_of(document: TextDocument) -> str:
    """The document's path, which imports resolve beside; an unsaved buffer keeps its URI."""
    path = to_fs_path(document.uri) if document.uri.startswith("file:") else None
    return path or document.uri


def _range(document: TextDocument, loc: Loc) -> types.Range:
    """A location (1-based characters; one character wide where its end is not known) in the client's units."""
    end = loc.end_col if loc.end_col is not None else loc.col + 1
    span = ServerTextRange(ServerTextPosition(loc.line - 1, loc.col - 1), ServerTextPosition(loc.line - 1, end - 1))
    return document.range_to_client_units(span)


def _location(ls: NNLanguageServer, document: TextDocument, loc: Loc) -> types.Location:
    """A place in the document itself or in another file (an import, the standard library)."""
    if loc.file == _file_of(document):
        return types.Location(uri=document.uri, range=_range(document, loc))
    other = ls.workspace.get_text_document(from_fs_path(str(Path(loc.file).resolve())) or loc.file)
    return types.Location(uri=other.uri, range=_range(other, loc))


def _diagnostic(ls: NNLanguageServer, document: TextDocument, problem: Problem) -> types.Diagnostic:
    related = [types.DiagnosticRelatedInformation(location=_location(ls, document, where), message=note)
               for note, where in problem.notes]
    return types.Diagnostic(range=_range(document, problem.loc), message=problem.message,
                            severity=SEVERITY[problem.severity], source="nncompile", related_information=related or None)


def main() -> int:
    """Serve one client over stdin and stdout until it exits."""
    logging.basicConfig(level=logging.WARNING, format="nncompile lsp: %(levelname)s: %(message)s")
    server.start_io()
    return 0
