#!/usr/bin/env bash
# The VS Code grammar (editors/vscode/syntaxes/nn.tmLanguage.json) checked with VS Code's own
# TextMate engine: installs vscode-textmate and vscode-oniguruma from npm into .venv/textmate
# (and node and npm from the system packages if they are missing), then tokenises every example,
# the standard library and the docs' nn blocks and compares each token's scope with what Lark's
# lexer reads there (tests/test_editor_lexer.py). Without it that test only skips.
# Usage: bash scripts/vscode_check.sh [PYTEST ARGS...]
source "$(dirname "$0")/_setup.sh" "test"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node and npm are missing: installing them from the system packages" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
npm install --prefix .venv/textmate --no-save --no-package-lock --no-audit --no-fund --silent \
    vscode-textmate@9.3.2 vscode-oniguruma@2.0.1
echo "node $(node --version), vscode-textmate 9.3.2, vscode-oniguruma 2.0.1"
NNCOMPILE_VSCODE_CHECK=1 NODE_PATH="$PWD/.venv/textmate/node_modules" \
    python -m pytest -q -p no:cacheprovider tests/test_editor_lexer.py -k "textmate or extension" "$@"
