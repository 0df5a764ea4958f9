"""The .nn language in editors: a Pygments lexer (:mod:`.lexer`, for Sphinx, MkDocs, nbconvert
and ``pygmentize``) and a language server (:mod:`.server`, ``nncompile lsp``) that shows the
compiler's own diagnostics and inferred shapes while a file is edited.

Nothing is imported here: Pygments loads the lexer by its entry point, and the server needs
the optional extra ``editor`` (pygls), which the lexer must not.
"""
