# Shared by demo.sh and test.sh: a virtual environment with nncompile installed, and Graphviz's dot.
# Usage: source scripts/_setup.sh "EXTRAS"   (e.g. "test,train")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"

if ! command -v dot >/dev/null 2>&1; then
    echo "Graphviz's dot is missing: installing it from the system packages" >&2
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq graphviz >/dev/null
    elif command -v brew >/dev/null 2>&1; then
        brew install graphviz
    else
        echo "install Graphviz (https://graphviz.org/download/) to render SVG/PNG/PDF; .dot output works without it" >&2
    fi
fi
export PATH="$PWD/.venv/bin:$PATH"
