#!/usr/bin/env bash
# The interactive page checked in a real browser (tests/test_page_browser.py): Debian's
# chromium, headless, driven by Python Playwright pointed at /usr/bin/chromium (never
# 'playwright install', which downloads a browser build of its own). Installs chromium with
# apt-get when /usr/bin/chromium is missing, and the optional extra "page" (playwright) from
# PyPI into .venv. With NNCOMPILE_SCREENSHOTS=1 it remakes docs/images/page-*.png.
# Usage: bash scripts/browser_check.sh [PYTEST ARGS...]
source "$(dirname "$0")/_setup.sh" "test,train,page"
if [ ! -x /usr/bin/chromium ]; then
    echo "Debian's chromium is missing: installing it from the system packages" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
python -c 'import playwright.sync_api; from importlib.metadata import version; print("playwright", version("playwright"))'
/usr/bin/chromium --version   # here both must be present: the browser tests may not skip
python -m pytest -q -p no:cacheprovider tests/test_page_browser.py tests/test_page.py "$@"
