"""PolicyStore: hot reload of the policy file, rejected files, reload on request."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from vault.access.policy_store import PolicyStore
from vault.errors import ConfigError

GATEWAY = "spiffe://bank.example/gateway"
TEMPLATES = ["pan", "iban"]
DEADLINE_SECONDS = 5.0


def _policy_text(scope: str) -> str:
    return f'[[callers]]\nidentity = "{GATEWAY}"\nscopes = ["{scope}"]\n'


VALID = _policy_text("tokenize:pan")
# The same length as VALID, so a rewrite can keep the size.
CHANGED = _policy_text("detokenize:*")
BROKEN = _policy_text("tokenize:pan") + "max_concurrent_calls = 0\n"


async def _eventually(check: Callable[[], bool], description: str) -> None:
    """Poll ``check`` until it returns True; fail after DEADLINE_SECONDS."""
    try:
        async with asyncio.timeout(DEADLINE_SECONDS):
            while True:
                if check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {DEADLINE_SECONDS} s waiting for {description}"
        ) from None


@pytest.fixture
def policy_path(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(VALID)
    return path


@pytest_asyncio.fixture(loop_scope="session")
async def running_store(policy_path: Path) -> AsyncIterator[PolicyStore]:
    store = PolicyStore(policy_path, known_templates=TEMPLATES, poll_seconds=0.05)
    await store.start()
    yield store
    await store.stop()


def _is_changed(store: PolicyStore) -> bool:
    return store.current().may_detokenize(GATEWAY, "pan", masked=False)


def _write(path: Path, text: str) -> None:
    # Async tests write through this plain function: the files are tiny, and ruff's ASYNC240
    # flags blocking pathlib calls made directly in async functions.
    path.write_text(text)


# -- start-up


def test_store_loads_file_at_construction(policy_path: Path) -> None:
    store = PolicyStore(policy_path, known_templates=TEMPLATES)
    status = store.status()

    assert store.current().allows(GATEWAY, "tokenize", "pan")
    assert status.path == policy_path
    assert status.sha256 == hashlib.sha256(VALID.encode()).hexdigest()
    assert status.caller_count == 1
    assert status.last_error is None
    assert status.last_attempt_at == status.loaded_at


def test_store_rejects_invalid_file_at_start(policy_path: Path) -> None:
    _write(policy_path, BROKEN)

    with pytest.raises(ConfigError, match=f"policy file {policy_path}: policy: callers entry 1"):
        PolicyStore(policy_path, known_templates=TEMPLATES)


def test_store_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        PolicyStore(tmp_path / "absent.toml", known_templates=TEMPLATES)


# -- hot reload


async def test_hot_reload_picks_up_change(running_store: PolicyStore, policy_path: Path) -> None:
    first_loaded_at = running_store.last_loaded_at

    _write(policy_path, CHANGED)

    await _eventually(lambda: _is_changed(running_store), "the changed policy to load")
    assert not running_store.current().allows(GATEWAY, "tokenize", "pan")
    assert running_store.last_loaded_at > first_loaded_at
    assert running_store.last_error is None


async def test_hot_reload_after_atomic_replace(
    running_store: PolicyStore, policy_path: Path
) -> None:
    replacement = policy_path.with_suffix(".new")
    _write(replacement, CHANGED)

    os.replace(replacement, policy_path)

    await _eventually(lambda: _is_changed(running_store), "the replaced policy to load")


async def test_hot_reload_same_size_and_mtime(
    running_store: PolicyStore, policy_path: Path
) -> None:
    # File systems with coarse timestamps can leave mtime and size unchanged by a rewrite.
    before = os.stat(policy_path)
    assert len(CHANGED) == len(VALID)

    _write(policy_path, CHANGED)
    os.utime(policy_path, ns=(before.st_atime_ns, before.st_mtime_ns))

    await _eventually(lambda: _is_changed(running_store), "the rewritten policy to load")


async def test_broken_file_keeps_old_policy(
    running_store: PolicyStore, policy_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    loaded_at = running_store.last_loaded_at
    sha256 = running_store.status().sha256

    with caplog.at_level(logging.WARNING, logger="vault.access.policy_store"):
        _write(policy_path, BROKEN)
        await _eventually(lambda: running_store.last_error is not None, "the error to be recorded")

    error = running_store.last_error
    assert error is not None
    assert f"policy file {policy_path}" in error
    assert "max_concurrent_calls must be an integer of at least 1" in error
    assert running_store.current().allows(GATEWAY, "tokenize", "pan")
    assert running_store.last_loaded_at == loaded_at
    assert running_store.status().sha256 == sha256
    assert running_store.last_attempt_at > loaded_at
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(policy_path) in warnings[0].getMessage()
    assert "max_concurrent_calls" in warnings[0].getMessage()


async def test_fixed_file_clears_error(running_store: PolicyStore, policy_path: Path) -> None:
    _write(policy_path, BROKEN)
    await _eventually(lambda: running_store.last_error is not None, "the error to be recorded")

    _write(policy_path, CHANGED)

    await _eventually(lambda: _is_changed(running_store), "the fixed policy to load")
    assert running_store.last_error is None


async def test_deleted_file_keeps_old_policy(running_store: PolicyStore, policy_path: Path) -> None:
    os.unlink(policy_path)

    await _eventually(lambda: running_store.last_error is not None, "the error to be recorded")
    assert "does not exist" in (running_store.last_error or "")
    assert running_store.current().allows(GATEWAY, "tokenize", "pan")

    # Recreated with the same content: the error clears.
    _write(policy_path, VALID)
    await _eventually(lambda: running_store.last_error is None, "the error to clear")


async def test_stop_ends_polling(policy_path: Path) -> None:
    store = PolicyStore(policy_path, known_templates=TEMPLATES, poll_seconds=0.05)
    await store.start()
    await store.stop()

    _write(policy_path, CHANGED)
    await asyncio.sleep(0.2)

    assert not _is_changed(store)


async def test_start_twice_fails(running_store: PolicyStore) -> None:
    with pytest.raises(RuntimeError, match="already started"):
        await running_store.start()


# -- reload on request


def test_reload_applies_valid_file(policy_path: Path) -> None:
    store = PolicyStore(policy_path, known_templates=TEMPLATES)
    _write(policy_path, CHANGED)

    result = store.reload()

    assert result.applied
    assert result.error is None
    assert result.sha256 == hashlib.sha256(CHANGED.encode()).hexdigest()
    assert result.loaded_at == store.last_loaded_at
    assert _is_changed(store)


def test_reload_rejects_broken_file(policy_path: Path) -> None:
    store = PolicyStore(policy_path, known_templates=TEMPLATES)
    loaded_at = store.last_loaded_at
    _write(policy_path, BROKEN)

    result = store.reload()

    assert not result.applied
    assert result.error is not None
    assert result.error.startswith(f"policy file {policy_path}: policy: callers entry 1")
    assert result.loaded_at == loaded_at
    assert result.sha256 == hashlib.sha256(VALID.encode()).hexdigest()
    assert store.current().allows(GATEWAY, "tokenize", "pan")
    assert store.status().last_error == result.error


def test_reload_rejects_unknown_template_rule(policy_path: Path) -> None:
    store = PolicyStore(policy_path, known_templates=TEMPLATES)
    _write(policy_path, VALID + "[templates.ssn]\npurpose_required = true\n")

    result = store.reload()

    assert not result.applied
    assert "no template is named 'ssn'" in (result.error or "")


def test_reload_of_missing_file(policy_path: Path) -> None:
    store = PolicyStore(policy_path, known_templates=TEMPLATES)
    policy_path.unlink()

    result = store.reload()

    assert not result.applied
    assert result.error == f"policy file {policy_path} does not exist"
    assert store.current().allows(GATEWAY, "tokenize", "pan")


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "empty"])
def test_reload_refuses_unsafe_files(policy_path: Path, tmp_path: Path, kind: str) -> None:
    store = PolicyStore(policy_path, known_templates=TEMPLATES)
    policy_path.unlink()
    if kind == "fifo":
        os.mkfifo(policy_path)
    elif kind == "device":
        policy_path.symlink_to("/dev/zero")
    elif kind == "huge":
        policy_path.write_text(VALID + "#" * (2 * 1024 * 1024) + "\n")
    else:
        policy_path.write_text("")

    result = store.reload()

    assert not result.applied
    assert result.error
    assert store.current().allows(GATEWAY, "tokenize", "pan")
