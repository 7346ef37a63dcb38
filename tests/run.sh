#!/usr/bin/env bash
# Set up a virtualenv with the project and its dev tools, then run the whole test suite.
# Works on a fresh machine with only python3: everything else comes from PyPI. Extra
# arguments go to pytest (for example: bash tests/run.sh -k fpe).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

venv="${TOKENVAULT_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"

exec "$venv/bin/python" -m pytest "$@"
