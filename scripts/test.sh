#!/usr/bin/env bash
# Install the test dependencies, then run the test suite.
source "$(dirname "$0")/_setup.sh" "test,train"
python -m pytest -q "$@"
