"""LocalKekProvider with real files: wrapping, file checks, passphrase mode and rotation."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import stat
from pathlib import Path

import pytest

import keys.local
from keys.errors import KekConfigError, KekNotFound, KekUnavailable, UnwrapError
from keys.local import LocalKekProvider
from keys.provider import KekRef

AD = b"tokenvault/test\0cards\0fpe\x001"
MATERIAL = bytes(range(32))
PASSPHRASE = "correct horse battery staple"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _file_keys(path: Path) -> dict[str, bytes]:
    document = json.loads(path.read_text())
    return {name: base64.b64decode(value) for name, value in document["versions"].items()}


@pytest.fixture
def kek_path(tmp_path: Path) -> Path:
    return tmp_path / "kek.json"


@pytest.fixture
def provider(kek_path: Path) -> LocalKekProvider:
    return LocalKekProvider.create(kek_path)


# -- wrapping --------------------------------------------------------------------------------


def test_wrap_unwrap_round_trip(provider: LocalKekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    assert kek == provider.describe()
    assert len(wrapped) == 12 + len(MATERIAL) + 16


def test_wrap_uses_fresh_nonce(provider: LocalKekProvider) -> None:
    first, _ = provider.wrap(MATERIAL, associated_data=AD)
    second, _ = provider.wrap(MATERIAL, associated_data=AD)

    assert first != second


def test_wrong_associated_data_raises(provider: LocalKekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    with pytest.raises(UnwrapError) as caught:
        provider.unwrap(wrapped, kek, associated_data=AD + b"2")

    assert str(caught.value) == ""


@pytest.mark.parametrize(
    "position", [0, 11, 12, 43, -1], ids=["nonce", "nonce-end", "ct", "ct-end", "tag"]
)
def test_tampered_blob_raises(provider: LocalKekProvider, position: int) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    tampered = bytearray(wrapped)
    tampered[position] ^= 0x01

    with pytest.raises(UnwrapError):
        provider.unwrap(bytes(tampered), kek, associated_data=AD)


def test_truncated_blob_raises(provider: LocalKekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    for length in (0, 12, 27, len(wrapped) - 1):
        with pytest.raises(UnwrapError):
            provider.unwrap(wrapped[:length], kek, associated_data=AD)


def test_unwrap_other_provider_raises(provider: LocalKekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    foreign = KekRef(provider="vault-transit", key_id=kek.key_id, version=kek.version)

    with pytest.raises(KekNotFound, match="vault-transit"):
        provider.unwrap(wrapped, foreign, associated_data=AD)


def test_unwrap_unknown_version_raises(provider: LocalKekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    for version in ("7", "0", "one", ""):
        with pytest.raises(KekNotFound):
            provider.unwrap(wrapped, KekRef("local", kek.key_id, version), associated_data=AD)


def test_closed_provider_is_unavailable(provider: LocalKekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    provider.close()

    with pytest.raises(KekUnavailable, match="KEK provider local is unavailable"):
        provider.unwrap(wrapped, kek, associated_data=AD)
    with pytest.raises(KekUnavailable):
        provider.describe()


# -- KEK file --------------------------------------------------------------------------------


def test_create_writes_mode_0600(provider: LocalKekProvider, kek_path: Path) -> None:
    assert _mode(kek_path) == 0o600
    assert kek_path.stat().st_uid == os.geteuid()


def test_create_refuses_existing_file(provider: LocalKekProvider, kek_path: Path) -> None:
    before = kek_path.read_bytes()

    with pytest.raises(KekConfigError, match="already exists"):
        LocalKekProvider.create(kek_path)

    assert kek_path.read_bytes() == before


def test_load_reads_created_file(provider: LocalKekProvider, kek_path: Path) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    loaded = LocalKekProvider.load(kek_path)

    assert loaded.describe() == kek
    assert loaded.unwrap(wrapped, kek, associated_data=AD) == MATERIAL


def test_load_or_create(kek_path: Path) -> None:
    created = LocalKekProvider.load_or_create(kek_path)
    loaded = LocalKekProvider.load_or_create(kek_path)

    assert loaded.describe() == created.describe()


def test_key_id_is_fingerprint(provider: LocalKekProvider, kek_path: Path) -> None:
    key = _file_keys(kek_path)["1"]
    kek = provider.describe()

    assert kek.provider == "local"
    assert kek.version == "1"
    assert kek.key_id == "file:" + hashlib.sha256(key).hexdigest()[:8]


def test_group_readable_file_rejected(provider: LocalKekProvider, kek_path: Path) -> None:
    kek_path.chmod(0o644)

    with pytest.raises(KekConfigError) as caught:
        LocalKekProvider.load(kek_path)

    message = str(caught.value)
    assert f"KEK file {kek_path} is readable by group or others (mode 0644)" in message
    assert f"run chmod 600 {kek_path}" in message


def test_group_writable_file_rejected(provider: LocalKekProvider, kek_path: Path) -> None:
    kek_path.chmod(0o620)

    with pytest.raises(KekConfigError, match="mode 0620"):
        LocalKekProvider.load(kek_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_file_of_other_user_rejected(provider: LocalKekProvider, kek_path: Path) -> None:
    os.chown(kek_path, 65534, -1)

    with pytest.raises(KekConfigError, match="owned by uid 65534"):
        LocalKekProvider.load(kek_path)


def test_missing_file_rejected(kek_path: Path) -> None:
    with pytest.raises(KekConfigError, match="does not exist"):
        LocalKekProvider.load(kek_path)


def _valid_document() -> dict[str, object]:
    return {
        "format": "tokenvault-local-kek",
        "format_version": 1,
        "active_version": 1,
        "versions": {"1": base64.b64encode(MATERIAL).decode()},
    }


MALFORMED = {
    "not-json": b"{",
    "not-utf8": b"\xff\xfe",
    "array": b"[]",
    "wrong-format": {**_valid_document(), "format": "other"},
    "future-version": {**_valid_document(), "format_version": 2},
    "bool-version": {**_valid_document(), "format_version": True},
    "no-versions": {**_valid_document(), "versions": {}},
    "version-zero": {**_valid_document(), "versions": {"0": base64.b64encode(MATERIAL).decode()}},
    "bad-base64": {**_valid_document(), "versions": {"1": "not base64!"}},
    "short-key": {**_valid_document(), "versions": {"1": base64.b64encode(b"x" * 16).decode()}},
    "key-not-string": {**_valid_document(), "versions": {"1": 5}},
    "active-unknown": {**_valid_document(), "active_version": 2},
    "active-string": {**_valid_document(), "active_version": "1"},
}


@pytest.mark.parametrize("content", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_file_rejected(kek_path: Path, content: bytes | dict[str, object]) -> None:
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    kek_path.write_bytes(data)
    kek_path.chmod(0o600)

    with pytest.raises(KekConfigError) as caught:
        LocalKekProvider.load(kek_path)

    assert f"KEK file {kek_path} is invalid" in str(caught.value)
    assert base64.b64encode(MATERIAL).decode() not in str(caught.value)


def test_valid_handwritten_file_loads(kek_path: Path) -> None:
    kek_path.write_text(json.dumps(_valid_document()))
    kek_path.chmod(0o600)

    provider = LocalKekProvider.load(kek_path)

    assert provider.describe().key_id == "file:" + hashlib.sha256(MATERIAL).hexdigest()[:8]


def test_replaced_file_detected(provider: LocalKekProvider, kek_path: Path) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    kek_path.unlink()
    LocalKekProvider.create(kek_path)

    replacement = LocalKekProvider.load(kek_path)

    with pytest.raises(KekNotFound, match="replaced"):
        replacement.unwrap(wrapped, kek, associated_data=AD)


# -- rotation --------------------------------------------------------------------------------


def test_rotate_keeps_old_versions(provider: LocalKekProvider, kek_path: Path) -> None:
    old_wrapped, old_kek = provider.wrap(MATERIAL, associated_data=AD)

    new_kek = provider.rotate()
    new_wrapped, used_kek = provider.wrap(MATERIAL, associated_data=AD)

    assert new_kek.version == "2"
    assert new_kek.key_id != old_kek.key_id
    assert provider.describe() == new_kek
    assert used_kek == new_kek
    assert provider.unwrap(old_wrapped, old_kek, associated_data=AD) == MATERIAL
    assert provider.unwrap(new_wrapped, new_kek, associated_data=AD) == MATERIAL


def test_rotate_persists_versions(provider: LocalKekProvider, kek_path: Path) -> None:
    old_wrapped, old_kek = provider.wrap(MATERIAL, associated_data=AD)
    new_kek = provider.rotate()

    reloaded = LocalKekProvider.load(kek_path)

    assert set(_file_keys(kek_path)) == {"1", "2"}
    assert _mode(kek_path) == 0o600
    assert reloaded.describe() == new_kek
    assert reloaded.unwrap(old_wrapped, old_kek, associated_data=AD) == MATERIAL
    assert not list(kek_path.parent.glob(".*.tmp"))


def test_rotation_by_other_instance_seen(provider: LocalKekProvider, kek_path: Path) -> None:
    other = LocalKekProvider.load(kek_path)
    other.rotate()
    wrapped, kek = other.wrap(MATERIAL, associated_data=AD)

    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    assert provider.describe() == kek


# -- passphrase ------------------------------------------------------------------------------


def test_passphrase_round_trip_two_instances(tmp_path: Path) -> None:
    salt_path = tmp_path / "kek-salt.json"
    environ = {"TOKENVAULT_KEK_PASSPHRASE": PASSPHRASE}
    first = LocalKekProvider.from_passphrase(salt_path, environ=environ)
    wrapped, kek = first.wrap(MATERIAL, associated_data=AD)

    second = LocalKekProvider.from_passphrase(salt_path, environ=environ)

    assert second.describe() == kek
    assert second.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    assert _mode(salt_path) == 0o600


def test_passphrase_key_id_names_salt(tmp_path: Path) -> None:
    salt_path = tmp_path / "kek-salt.json"
    provider = LocalKekProvider.from_passphrase(
        salt_path, environ={"TOKENVAULT_KEK_PASSPHRASE": PASSPHRASE}
    )
    salt = base64.b64decode(json.loads(salt_path.read_text())["salt"])

    assert len(salt) == 16
    assert provider.describe() == KekRef(
        "local", "passphrase:" + hashlib.sha256(salt).hexdigest()[:8], "1"
    )


def test_passphrase_custom_variable(tmp_path: Path) -> None:
    environ = {"DEV_KEK": PASSPHRASE}

    provider = LocalKekProvider.from_passphrase(
        tmp_path / "salt", env_var="DEV_KEK", environ=environ
    )

    assert provider.describe().key_id.startswith("passphrase:")


def test_passphrase_missing_rejected(tmp_path: Path) -> None:
    with pytest.raises(KekConfigError, match="TOKENVAULT_KEK_PASSPHRASE is not set"):
        LocalKekProvider.from_passphrase(tmp_path / "salt", environ={})

    assert not (tmp_path / "salt").exists()


def test_passphrase_too_short_rejected(tmp_path: Path) -> None:
    environ = {"TOKENVAULT_KEK_PASSPHRASE": "x" * 15}

    with pytest.raises(KekConfigError, match="shorter than 16 characters") as caught:
        LocalKekProvider.from_passphrase(tmp_path / "salt", environ=environ)

    assert "x" * 15 not in str(caught.value)


def test_passphrase_of_16_accepted(tmp_path: Path) -> None:
    environ = {"TOKENVAULT_KEK_PASSPHRASE": "x" * 16}

    provider = LocalKekProvider.from_passphrase(tmp_path / "salt", environ=environ)

    assert provider.describe().version == "1"


def test_wrong_passphrase_rejected(tmp_path: Path) -> None:
    salt_path = tmp_path / "salt"
    LocalKekProvider.from_passphrase(salt_path, environ={"TOKENVAULT_KEK_PASSPHRASE": PASSPHRASE})

    with pytest.raises(KekConfigError, match="original passphrase") as caught:
        LocalKekProvider.from_passphrase(
            salt_path, environ={"TOKENVAULT_KEK_PASSPHRASE": PASSPHRASE + "!"}
        )

    assert PASSPHRASE not in str(caught.value)


def test_salt_file_readable_rejected(tmp_path: Path) -> None:
    salt_path = tmp_path / "salt"
    environ = {"TOKENVAULT_KEK_PASSPHRASE": PASSPHRASE}
    LocalKekProvider.from_passphrase(salt_path, environ=environ)
    salt_path.chmod(0o644)

    with pytest.raises(KekConfigError, match=re.escape(f"run chmod 600 {salt_path}")):
        LocalKekProvider.from_passphrase(salt_path, environ=environ)


def test_malformed_salt_file_rejected(tmp_path: Path) -> None:
    salt_path = tmp_path / "salt"
    salt_path.write_text(json.dumps({"format": "tokenvault-local-kek-salt", "format_version": 1}))
    salt_path.chmod(0o600)

    with pytest.raises(KekConfigError, match="is invalid"):
        LocalKekProvider.from_passphrase(
            salt_path, environ={"TOKENVAULT_KEK_PASSPHRASE": PASSPHRASE}
        )


def test_passphrase_rotate_rejected(tmp_path: Path) -> None:
    provider = LocalKekProvider.from_passphrase(
        tmp_path / "salt", environ={"TOKENVAULT_KEK_PASSPHRASE": PASSPHRASE}
    )

    with pytest.raises(KekConfigError, match="changing the passphrase"):
        provider.rotate()


# -- logging ---------------------------------------------------------------------------------


def test_warning_logged_once(
    kek_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(keys.local, "_warning_logged", False)
    caplog.set_level(logging.INFO, logger="keys.local")

    provider = LocalKekProvider.create(kek_path)
    LocalKekProvider.load(kek_path)
    provider.rotate()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "not for production" in warnings[0].getMessage()
    key = _file_keys(kek_path)["1"]
    for record in caplog.records:
        assert base64.b64encode(key).decode() not in record.getMessage()
        assert key.hex() not in record.getMessage()
