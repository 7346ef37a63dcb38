"""Pkcs11KekProvider against a real SoftHSM2 token: wrapping, key attributes, rotation, errors,
lost sessions and DataKeyManager with PostgreSQL.

SoftHSM2 must be installed (Debian package softhsm2). Without it the fixture raises an error
that names the package, and every test here fails.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import AttributeSensitive
from pkcs11.mechanisms import GCMParams

from keys import softhsm
from keys.datakeys import DataKeyManager, Purpose
from keys.errors import KekConfigError, KekNotFound, KekUnavailable, UnwrapError
from keys.pkcs11 import Pkcs11KekProvider
from keys.provider import KekRef
from keys.softhsm import SoftHsm, SoftHsmError

TOKEN = "tokenvault-test"
# No provider stays logged in to this token, so the token itself checks the PINs sent to it.
SPARE_TOKEN = "tokenvault-spare"
PIN_ENV = "TOKENVAULT_HSM_PIN"

AD = b"tokenvault/test\0cards\0fpe\x001"
MATERIAL = bytes(range(32))


@pytest.fixture
def environ(hsm: SoftHsm) -> dict[str, str]:
    return {PIN_ENV: hsm.pin}


@pytest.fixture
def key_label() -> str:
    """A key label of its own for each test, so versions from other tests do not interfere."""
    return f"kek-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def provider(hsm: SoftHsm, environ: dict[str, str], key_label: str) -> Iterator[Pkcs11KekProvider]:
    provider = Pkcs11KekProvider.open(
        hsm.module_path, TOKEN, key_label=key_label, create_if_missing=True, environ=environ
    )
    yield provider
    provider.close()


def _open(
    hsm: SoftHsm,
    key_label: str,
    *,
    environ: dict[str, str] | None = None,
    pin_env: str = PIN_ENV,
    create_if_missing: bool = False,
) -> Pkcs11KekProvider:
    return Pkcs11KekProvider.open(
        hsm.module_path,
        TOKEN,
        pin_env,
        key_label,
        create_if_missing=create_if_missing,
        environ={PIN_ENV: hsm.pin} if environ is None else environ,
    )


def _library(hsm: SoftHsm) -> Any:
    # The provider loads the module by its real path, and python-pkcs11 keeps one library
    # object per path string, so this returns the provider's library object.
    return pkcs11.lib(os.path.realpath(hsm.module_path))


def _test_session(hsm: SoftHsm) -> pkcs11.Session:
    """Open a read/write session without logging in.

    It can see and create private objects only while a provider keeps the token logged in,
    because PKCS#11 shares one login among all sessions of a process.
    """
    return _library(hsm).get_token(token_label=TOKEN).open(rw=True)


def _kek_objects(session: pkcs11.Session, key_label: str) -> list[pkcs11.Object]:
    template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: key_label}
    return list(session.get_objects(template))


# -- wrapping --------------------------------------------------------------------------------


def test_wrap_unwrap_round_trip(provider: Pkcs11KekProvider, key_label: str) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    assert kek == KekRef(provider="pkcs11", key_id=key_label, version="1")
    assert kek == provider.describe()
    assert len(wrapped) == 12 + len(MATERIAL) + 16


def test_wrap_uses_fresh_iv(provider: Pkcs11KekProvider) -> None:
    first, _ = provider.wrap(MATERIAL, associated_data=AD)
    second, _ = provider.wrap(MATERIAL, associated_data=AD)

    assert first[:12] != second[:12]
    assert first[12:] != second[12:]


def test_wrap_empty_associated_data(provider: Pkcs11KekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=b"")

    assert provider.unwrap(wrapped, kek, associated_data=b"") == MATERIAL
    with pytest.raises(UnwrapError):
        provider.unwrap(wrapped, kek, associated_data=AD)


def test_unwrap_wrong_associated_data(provider: Pkcs11KekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    with pytest.raises(UnwrapError) as caught:
        provider.unwrap(wrapped, kek, associated_data=AD + b"x")

    assert caught.value.args == ()


@pytest.mark.parametrize(
    "position",
    [0, 11, 12, 12 + len(MATERIAL) - 1, 12 + len(MATERIAL), -1],
    ids=["iv-first", "iv-last", "ciphertext-first", "ciphertext-last", "tag-first", "tag-last"],
)
def test_unwrap_tampered_blob(provider: Pkcs11KekProvider, position: int) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    tampered = bytearray(wrapped)
    tampered[position] ^= 0x01

    with pytest.raises(UnwrapError) as caught:
        provider.unwrap(bytes(tampered), kek, associated_data=AD)

    assert caught.value.args == ()


@pytest.mark.parametrize("length", [0, 12, 27, 28, 12 + len(MATERIAL) + 15])
def test_unwrap_truncated_blob(provider: Pkcs11KekProvider, length: int) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    with pytest.raises(UnwrapError):
        provider.unwrap(wrapped[:length], kek, associated_data=AD)


def test_tag_failure_keeps_session_usable(provider: Pkcs11KekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    with pytest.raises(UnwrapError):
        provider.unwrap(wrapped, kek, associated_data=b"other")

    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL


def test_concurrent_wraps_from_threads(provider: Pkcs11KekProvider) -> None:
    def round_trip(index: int) -> bytes:
        material = index.to_bytes(32, "big")
        associated = AD + str(index).encode()
        wrapped, kek = provider.wrap(material, associated_data=associated)
        return provider.unwrap(wrapped, kek, associated_data=associated)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(round_trip, range(64)))

    assert results == [index.to_bytes(32, "big") for index in range(64)]


# -- the key object in the token -------------------------------------------------------------


def test_kek_is_sensitive_and_not_extractable(
    hsm: SoftHsm, provider: Pkcs11KekProvider, key_label: str
) -> None:
    session = _test_session(hsm)
    try:
        [key] = _kek_objects(session, key_label)
        attributes = key.get_attributes(
            [
                Attribute.KEY_TYPE,
                Attribute.VALUE_LEN,
                Attribute.ID,
                Attribute.TOKEN,
                Attribute.PRIVATE,
                Attribute.SENSITIVE,
                Attribute.ALWAYS_SENSITIVE,
                Attribute.EXTRACTABLE,
                Attribute.NEVER_EXTRACTABLE,
                Attribute.LOCAL,
                Attribute.ENCRYPT,
                Attribute.DECRYPT,
                Attribute.WRAP,
                Attribute.UNWRAP,
                Attribute.DERIVE,
            ]
        )

        assert attributes[Attribute.KEY_TYPE] == KeyType.AES
        assert attributes[Attribute.VALUE_LEN] == 32
        assert attributes[Attribute.ID] == b"v1"
        assert attributes[Attribute.TOKEN] is True
        assert attributes[Attribute.PRIVATE] is True
        assert attributes[Attribute.SENSITIVE] is True
        assert attributes[Attribute.ALWAYS_SENSITIVE] is True
        assert attributes[Attribute.EXTRACTABLE] is False
        assert attributes[Attribute.NEVER_EXTRACTABLE] is True
        assert attributes[Attribute.LOCAL] is True  # generated inside the token
        assert attributes[Attribute.ENCRYPT] is True
        assert attributes[Attribute.DECRYPT] is True
        assert attributes[Attribute.WRAP] is False
        assert attributes[Attribute.UNWRAP] is False
        assert attributes[Attribute.DERIVE] is False
        with pytest.raises(AttributeSensitive):
            key[Attribute.VALUE]
    finally:
        session.close()


def test_open_rejects_extractable_key(
    hsm: SoftHsm, provider: Pkcs11KekProvider, environ: dict[str, str]
) -> None:
    label = f"extractable-{uuid.uuid4().hex[:8]}"
    session = _test_session(hsm)
    try:
        session.generate_key(
            KeyType.AES,
            256,
            id=b"v1",
            label=label,
            store=True,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template={Attribute.EXTRACTABLE: True},
        )
    finally:
        session.close()

    with pytest.raises(KekConfigError, match="CKA_EXTRACTABLE is true"):
        _open(hsm, label)


def test_duplicate_version_objects_both_unwrap(
    hsm: SoftHsm, provider: Pkcs11KekProvider, key_label: str
) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    # A second v1 object, as two processes creating version 1 at the same moment would leave.
    session = _test_session(hsm)
    try:
        duplicate = session.generate_key(
            KeyType.AES,
            256,
            id=b"v1",
            label=key_label,
            store=True,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template={Attribute.EXTRACTABLE: False},
        )
        iv = os.urandom(12)
        ciphertext = duplicate.encrypt(
            MATERIAL, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(iv, AD)
        )
    finally:
        session.close()

    reopened = _open(hsm, key_label)
    try:
        assert reopened.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
        assert reopened.unwrap(iv + ciphertext, kek, associated_data=AD) == MATERIAL
    finally:
        reopened.close()


# -- rotation and versions -------------------------------------------------------------------


def test_rotate_keeps_old_versions(provider: Pkcs11KekProvider, key_label: str) -> None:
    old_wrapped, old_kek = provider.wrap(MATERIAL, associated_data=AD)

    new_kek = provider.rotate()
    new_wrapped, wrap_kek = provider.wrap(MATERIAL, associated_data=AD)

    assert old_kek.version == "1"
    assert new_kek == KekRef(provider="pkcs11", key_id=key_label, version="2")
    assert provider.describe() == new_kek
    assert wrap_kek == new_kek
    assert provider.unwrap(old_wrapped, old_kek, associated_data=AD) == MATERIAL
    assert provider.unwrap(new_wrapped, new_kek, associated_data=AD) == MATERIAL


def test_rotate_creates_token_object(
    hsm: SoftHsm, provider: Pkcs11KekProvider, key_label: str
) -> None:
    provider.rotate()
    provider.rotate()

    session = _test_session(hsm)
    try:
        ids = sorted(key[Attribute.ID] for key in _kek_objects(session, key_label))
    finally:
        session.close()
    assert ids == [b"v1", b"v2", b"v3"]


def test_second_provider_sees_rotation(
    hsm: SoftHsm, provider: Pkcs11KekProvider, key_label: str
) -> None:
    other = _open(hsm, key_label)
    try:
        new_kek = provider.rotate()
        wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

        # The unknown version makes the second provider search the token again.
        assert other.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
        assert other.describe() == new_kek
        other_wrapped, other_kek = other.wrap(MATERIAL, associated_data=AD)
        assert other_kek == new_kek
        assert provider.unwrap(other_wrapped, other_kek, associated_data=AD) == MATERIAL
    finally:
        other.close()


def test_open_finds_latest_version(
    hsm: SoftHsm, provider: Pkcs11KekProvider, key_label: str
) -> None:
    provider.rotate()

    reopened = _open(hsm, key_label)
    try:
        assert reopened.describe().version == "2"
    finally:
        reopened.close()


def test_unwrap_unknown_version(provider: Pkcs11KekProvider, key_label: str) -> None:
    wrapped, _ = provider.wrap(MATERIAL, associated_data=AD)

    for version in ["99", "0", "-1", "v1", "", "1.0"]:
        kek = KekRef(provider="pkcs11", key_id=key_label, version=version)
        with pytest.raises(KekNotFound):
            provider.unwrap(wrapped, kek, associated_data=AD)


def test_unwrap_other_provider_ref(provider: Pkcs11KekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    with pytest.raises(KekNotFound, match="belongs to provider local"):
        provider.unwrap(wrapped, KekRef("local", kek.key_id, kek.version), associated_data=AD)
    with pytest.raises(KekNotFound, match="key label"):
        provider.unwrap(wrapped, KekRef("pkcs11", "other-kek", kek.version), associated_data=AD)


# -- settings errors -------------------------------------------------------------------------


def test_open_missing_key_without_create(hsm: SoftHsm, key_label: str) -> None:
    with pytest.raises(KekConfigError) as caught:
        _open(hsm, key_label)

    assert key_label in str(caught.value)
    assert "create_if_missing=True" in str(caught.value)


def test_open_wrong_pin(hsm: SoftHsm, key_label: str) -> None:
    wrong_pin = "0000" + hsm.token(SPARE_TOKEN).pin
    with pytest.raises(KekConfigError) as caught:
        Pkcs11KekProvider.open(
            hsm.module_path, SPARE_TOKEN, key_label=key_label, environ={PIN_ENV: wrong_pin}
        )

    message = str(caught.value)
    assert PIN_ENV in message
    assert "PinIncorrect" in message
    assert wrong_pin not in message


def test_open_after_wrong_pin(hsm: SoftHsm, key_label: str) -> None:
    with pytest.raises(KekConfigError):
        Pkcs11KekProvider.open(
            hsm.module_path, SPARE_TOKEN, key_label=key_label, environ={PIN_ENV: "12345678"}
        )

    provider = Pkcs11KekProvider.open(
        hsm.module_path,
        SPARE_TOKEN,
        key_label=key_label,
        create_if_missing=True,
        environ={PIN_ENV: hsm.token(SPARE_TOKEN).pin},
    )
    provider.close()


def test_open_pin_differs_from_logged_in(
    hsm: SoftHsm, provider: Pkcs11KekProvider, key_label: str
) -> None:
    with pytest.raises(KekConfigError, match="differs from the PIN"):
        _open(hsm, key_label, environ={PIN_ENV: hsm.pin + "0"})


def test_open_pin_env_not_set(hsm: SoftHsm, key_label: str) -> None:
    with pytest.raises(KekConfigError, match=f"{PIN_ENV} is not set"):
        _open(hsm, key_label, environ={})


def test_open_custom_pin_env(hsm: SoftHsm, key_label: str) -> None:
    provider = _open(
        hsm,
        key_label,
        pin_env="TEST_HSM_PIN",
        environ={"TEST_HSM_PIN": hsm.pin},
        create_if_missing=True,
    )
    try:
        assert provider.describe().version == "1"
    finally:
        provider.close()


def test_open_missing_module(tmp_path: Path, environ: dict[str, str]) -> None:
    module = tmp_path / "libmissing.so"

    with pytest.raises(KekConfigError, match="libmissing.so does not exist"):
        Pkcs11KekProvider.open(str(module), TOKEN, environ=environ)


def test_open_invalid_module(tmp_path: Path, environ: dict[str, str]) -> None:
    module = tmp_path / "libinvalid.so"
    module.write_bytes(b"not a shared library")

    with pytest.raises(KekConfigError, match="failed to load or initialise PKCS#11 module"):
        Pkcs11KekProvider.open(str(module), TOKEN, environ=environ)


def test_open_unknown_token(hsm: SoftHsm, environ: dict[str, str]) -> None:
    with pytest.raises(KekConfigError) as caught:
        Pkcs11KekProvider.open(hsm.module_path, "no-such-token", environ=environ)

    message = str(caught.value)
    assert "no token with label 'no-such-token'" in message
    assert repr(TOKEN) in message
    assert "softhsm2-util --init-token" in message


def test_open_invalid_labels(hsm: SoftHsm, environ: dict[str, str]) -> None:
    with pytest.raises(KekConfigError, match="token_label"):
        Pkcs11KekProvider.open(hsm.module_path, "", environ=environ)
    with pytest.raises(KekConfigError, match="key_label"):
        Pkcs11KekProvider.open(hsm.module_path, TOKEN, key_label=" kek", environ=environ)


# -- close -----------------------------------------------------------------------------------


def test_close_then_calls_raise_unavailable(provider: Pkcs11KekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    provider.close()
    provider.close()  # a second close does nothing

    with pytest.raises(KekUnavailable, match="closed"):
        provider.wrap(MATERIAL, associated_data=AD)
    with pytest.raises(KekUnavailable):
        provider.unwrap(wrapped, kek, associated_data=AD)
    with pytest.raises(KekUnavailable):
        provider.describe()
    with pytest.raises(KekUnavailable):
        provider.rotate()


def test_close_keeps_other_provider_working(
    hsm: SoftHsm, provider: Pkcs11KekProvider, key_label: str
) -> None:
    other = _open(hsm, key_label)
    other.close()

    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL


def test_context_manager_closes(hsm: SoftHsm, provider: Pkcs11KekProvider, key_label: str) -> None:
    with _open(hsm, key_label) as other:
        other.describe()

    with pytest.raises(KekUnavailable):
        other.describe()


# -- lost sessions ---------------------------------------------------------------------------


def test_reconnects_after_session_closed(
    provider: Pkcs11KekProvider, caplog: pytest.LogCaptureFixture
) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    # Close the session behind the provider's back, as a restarted HSM would drop it.
    token_session = provider._token_session
    assert token_session is not None and token_session.session is not None
    token_session.session.close()

    with caplog.at_level(logging.INFO, logger="keys.pkcs11"):
        new_wrapped, new_kek = provider.wrap(MATERIAL, associated_data=AD)

    assert provider.unwrap(new_wrapped, new_kek, associated_data=AD) == MATERIAL
    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    assert "reopening the session on PKCS#11 token" in caplog.text
    assert "SessionHandleInvalid" in caplog.text


def test_reconnects_after_module_finalized(hsm: SoftHsm, provider: Pkcs11KekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    # C_Finalize ends every session of the process, like an HSM client library restart.
    _library(hsm).finalize()

    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    new_wrapped, new_kek = provider.wrap(MATERIAL, associated_data=AD)
    assert provider.unwrap(new_wrapped, new_kek, associated_data=AD) == MATERIAL


def test_open_while_token_logged_in_elsewhere(hsm: SoftHsm, key_label: str) -> None:
    spare = hsm.token(SPARE_TOKEN)
    # A session outside the provider logs in first, so the provider's C_Login meets
    # CKR_USER_ALREADY_LOGGED_IN and it uses the existing login.
    outside = _library(hsm).get_token(token_label=SPARE_TOKEN).open(rw=True, user_pin=spare.pin)
    try:
        provider = Pkcs11KekProvider.open(
            hsm.module_path,
            SPARE_TOKEN,
            key_label=key_label,
            create_if_missing=True,
            environ={PIN_ENV: spare.pin},
        )
    finally:
        outside.close()  # logs the token out under the provider

    try:
        # After the logout the token rejects the key handle, so the provider reopens its
        # session and logs in again.
        wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
        assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    finally:
        provider.close()


def test_unavailable_until_token_returns(
    hsm: SoftHsm,
    provider: Pkcs11KekProvider,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    # SoftHSM2 reads its configuration in C_Initialize, so with a missing configuration file
    # the module cannot be initialised again and every reopen fails.
    _library(hsm).finalize()
    monkeypatch.setenv(softhsm.CONFIG_ENV, str(hsm.folder / "missing.conf"))

    with caplog.at_level(logging.INFO, logger="keys.pkcs11"):
        with pytest.raises(KekUnavailable) as caught:
            provider.wrap(MATERIAL, associated_data=AD)
        assert caught.value.provider == "pkcs11"
        assert "GeneralError" in caught.value.reason
        with pytest.raises(KekUnavailable):
            provider.unwrap(wrapped, kek, associated_data=AD)

        monkeypatch.setenv(softhsm.CONFIG_ENV, str(hsm.config_path))
        assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL

    assert "after 2 failed attempts" in caplog.text

    new_wrapped, new_kek = provider.wrap(MATERIAL, associated_data=AD)
    assert provider.unwrap(new_wrapped, new_kek, associated_data=AD) == MATERIAL


# -- logging ---------------------------------------------------------------------------------


def test_logs_without_pin(hsm: SoftHsm, key_label: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="keys.pkcs11"):
        provider = _open(hsm, key_label, create_if_missing=True)
        try:
            provider.rotate()
            token_session = provider._token_session
            assert token_session is not None and token_session.session is not None
            token_session.session.close()
            provider.wrap(MATERIAL, associated_data=AD)
        finally:
            provider.close()

    assert f"created KEK version 1 with label {key_label}" in caplog.text
    assert f"KEK label {key_label}, active version 1" in caplog.text
    assert "version 2 is active" in caplog.text
    assert "reopened the session" in caplog.text
    assert hsm.pin not in caplog.text


# -- DataKeyManager --------------------------------------------------------------------------


async def test_data_key_manager_round_trip(
    db_pool: asyncpg.Pool, provider: Pkcs11KekProvider, key_label: str
) -> None:
    templates = ["cards", "iban"]
    manager = DataKeyManager(db_pool, provider)

    await manager.ensure(templates)
    before = {
        (template, purpose): await manager.active(template, purpose)
        for template in templates
        for purpose in Purpose
    }
    manager.clear_cache()
    after = {
        (template, purpose): await manager.active(template, purpose)
        for template in templates
        for purpose in Purpose
    }

    assert len(before) == len(templates) * len(Purpose)
    for key, data_key in before.items():
        assert after[key].material == data_key.material
        assert after[key].version == 1
    assert len({data_key.material for data_key in before.values()}) == len(before)

    rows = await db_pool.fetch("SELECT kek_provider, kek_key_id, kek_version FROM tv_data_keys")
    assert len(rows) == len(before)
    for row in rows:
        assert row["kek_provider"] == "pkcs11"
        assert row["kek_key_id"] == key_label
        assert row["kek_version"] == "1"


# -- keys.softhsm ----------------------------------------------------------------------------


def test_softhsm_second_environment_rejected(hsm: SoftHsm, tmp_path: Path) -> None:
    with pytest.raises(SoftHsmError, match="already created in this process"):
        SoftHsm.create(tmp_path)

    assert os.environ[softhsm.CONFIG_ENV] == str(hsm.config_path)
    assert not (tmp_path / "softhsm2.conf").exists()


def test_softhsm_missing_util_names_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(SoftHsmError, match="Debian package softhsm2"):
        SoftHsm.create(tmp_path)


def test_softhsm_missing_module_names_package(tmp_path: Path) -> None:
    with pytest.raises(SoftHsmError, match="Debian package softhsm2"):
        softhsm.find_softhsm_module([str(tmp_path / "libsofthsm2.so")])


def test_softhsm_environment_layout(hsm: SoftHsm) -> None:
    config = hsm.config_path.read_text()

    assert f"directories.tokendir = {hsm.folder / 'tokens'}\n" in config
    assert hsm.config_path.stat().st_mode & 0o077 == 0
    assert softhsm.find_softhsm_module() == hsm.module_path
    assert [token.label for token in hsm.tokens] == [TOKEN, SPARE_TOKEN]
    assert hsm.pin not in repr(hsm)
