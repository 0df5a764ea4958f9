#!/usr/bin/env bash
# The .nn language in the tools around it, checked for real (tests/test_editor_lexer.py):
# nbconvert, Python-Markdown (what MkDocs runs, with codehilite or pymdownx.highlight) and
# Sphinx highlight an `nn` block through the Pygments entry point, and VS Code's own TextMate
# engine (vscode-textmate, vscode-oniguruma) scopes every token of the examples, the standard
# library and the docs' nn blocks as Lark's lexer reads it. Installs nbconvert, markdown,
# pymdown-extensions and sphinx from PyPI into .venv, the two npm packages into .venv/textmate
# (and node and npm from the system packages if missing); without them those tests only skip.
# Usage: bash scripts/editors_check.sh [PYTEST ARGS...]
source "$(dirname "$0")/_setup.sh" "test"
python -m pip install --quiet --disable-pip-version-check "nbconvert>=7" "markdown>=3.4" "pymdown-extensions>=10" "sphinx>=7"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node and npm are missing: installing them from the system packages" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
npm install --prefix .venv/textmate --no-save --no-package-lock --no-audit --no-fund --silent \
    vscode-textmate@9.3.2 vscode-oniguruma@2.0.1
python -c 'import nbconvert, markdown, sphinx; print(f"nbconvert {nbconvert.__version__}, markdown {markdown.__version__}, sphinx {sphinx.__version__}")'
echo "node $(node --version), vscode-textmate 9.3.2, vscode-oniguruma 2.0.1"
NNCOMPILE_VSCODE_CHECK=1 NODE_PATH="$PWD/.venv/textmate/node_modules" \
    python -m pytest -q -p no:cacheprovider tests/test_editor_lexer.py "$@"
