"""Quality gates that run with the tests: generated code, linter and type checker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argument lists
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_generated_code_matches_proto() -> None:
    result = _run("proto/generate.py", "--check")

    assert result.returncode == 0, result.stderr


def test_ruff_finds_nothing() -> None:
    result = _run(
        "-m",
        "ruff",
        "check",
        "vault",
        "keys",
        "clients/python/tokenvault_client",
        "tests",
        "proto",
        "loadtest",
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    result = _run("-m", "mypy")

    assert result.returncode == 0, result.stdout + result.stderr
