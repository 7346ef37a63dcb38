"""A KEK provider backed by the Transit secrets engine of HashiCorp Vault or OpenBao.

The KEK never leaves Vault. ``wrap`` sends a data key to ``<mount>/encrypt/<key>`` and keeps the
returned ciphertext, ``vault:v<N>:<base64>``, as the wrapped key (its UTF-8 bytes). ``N`` is the
Transit key version and becomes ``KekRef.version``; ``KekRef.key_id`` is the Transit key name.

Associated data goes to Transit's ``associated_data`` parameter, which the AEAD key types
(aes256-gcm96, aes128-gcm96, chacha20-poly1305) authenticate together with the ciphertext, so a
decrypt with other associated data fails. Transit's ``context`` parameter only selects a derived
key, and this provider rejects derived keys.

Policy that the token or AppRole role needs, shown for mount ``transit`` and key
``tokenvault-kek``::

    path "transit/keys/tokenvault-kek"        { capabilities = ["read"] }
    path "transit/encrypt/tokenvault-kek"     { capabilities = ["update"] }
    path "transit/decrypt/tokenvault-kek"     { capabilities = ["update"] }
    path "transit/keys/tokenvault-kek/rotate" { capabilities = ["update"] }  # rotate only

With ``create_if_missing`` the first path also needs ``create``. Leave ``create`` off the encrypt
path: with it, Vault silently creates a missing key on the first encrypt.

Errors: connection failures, timeouts, HTTP 5xx and a sealed Vault raise KekUnavailable. A denied
request raises KekConfigError naming the capability and path that the policy lacks. No message or
log line contains a token, an AppRole secret id, a data key or a wrapped key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import hvac.exceptions
import requests
import requests.adapters
from hvac.adapters import JSONAdapter
from hvac.api.auth_methods import AppRole

from keys.errors import KekConfigError, KekNotFound, KekUnavailable, KeyProviderError, UnwrapError
from keys.provider import KekProvider, KekRef

logger = logging.getLogger(__name__)

PROVIDER_NAME = "vault-transit"
DEFAULT_MOUNT = "transit"
DEFAULT_KEY_NAME = "tokenvault-kek"
DEFAULT_TOKEN_ENV = "VAULT_TOKEN"  # noqa: S105 - a variable name
DEFAULT_ROLE_ID_ENV = "VAULT_ROLE_ID"
DEFAULT_SECRET_ID_ENV = "VAULT_SECRET_ID"  # noqa: S105 - a variable name
DEFAULT_APPROLE_MOUNT = "approle"
DEFAULT_TIMEOUT = 5.0
DEFAULT_KEY_INFO_TTL = 60.0

# OpenBao 2.4.1 and later reject a request body with more than 1000 JSON strings by default
# (listener setting max_request_json_strings), counting keys and values. A batch item contains
# 4 strings, so 249 items is the maximum measured against OpenBao 2.7.2, and 200 leaves a margin.
DEFAULT_BATCH_SIZE = 200

KEY_TYPE = "aes256-gcm96"
AEAD_KEY_TYPES = frozenset({"aes256-gcm96", "aes128-gcm96", "chacha20-poly1305"})

AuthMethod = Literal["token", "approle"]

# An AppRole token is replaced once it has used this fraction of its TTL, so that requests do
# not race its expiry.
_RELOGIN_AT_TTL_FRACTION = 0.9

# urllib3 keeps 10 connections per host by default, and asyncio.to_thread runs up to 32 threads.
_CONNECTION_POOL_SIZE = 32

# A failure that repeats, such as an unreachable Vault under load, is logged once per interval.
_FAILURE_LOG_INTERVAL = 60.0
_FAILURE_LOG_MAX_ENTRIES = 1000

_SERVER_ERRORS_MAX_LENGTH = 200

# Transit names: the pattern of Vault's framework.GenericNameRegex, restricted to ASCII.
_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.@-]*[A-Za-z0-9_])?")
_MOUNT = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VERSION_NAME = re.compile(r"[1-9][0-9]{0,9}")
_CIPHERTEXT = re.compile(rb"vault:v([1-9][0-9]{0,9}):[A-Za-z0-9+/]+={0,2}")

_T = TypeVar("_T")


# -- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransitSettings:
    """Settings of TransitKekProvider. They name environment variables, never contain secrets.

    ``address`` is the Vault URL, ``https://`` or ``http://``. ``auth_method`` is ``token``
    (the token is read from the variable ``token_env``) or ``approle`` (role id and secret id
    are read from ``role_id_env`` and ``secret_id_env``, and the login goes to
    ``auth/<approle_mount>/login``). ``ca_file`` is a PEM file of the CA that signed Vault's TLS
    certificate; without it the system CA bundle verifies Vault. ``timeout`` is in seconds and
    applies, as in requests, to the connect and to each wait for response data.
    ``key_info_ttl`` is how long, in seconds, ``describe`` trusts its cached latest version.
    ``batch_size`` is the maximum number of items per Transit batch request.
    """

    address: str
    mount: str = DEFAULT_MOUNT
    key_name: str = DEFAULT_KEY_NAME
    auth_method: AuthMethod = "token"
    token_env: str = DEFAULT_TOKEN_ENV
    role_id_env: str = DEFAULT_ROLE_ID_ENV
    secret_id_env: str = DEFAULT_SECRET_ID_ENV
    approle_mount: str = DEFAULT_APPROLE_MOUNT
    ca_file: str | None = None
    namespace: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    create_if_missing: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    key_info_ttl: float = DEFAULT_KEY_INFO_TTL

    def __post_init__(self) -> None:
        """Validate every field and normalise the address and the mount paths.

        Raises KekConfigError naming the setting and the expected value.
        """
        object.__setattr__(self, "address", _validate_address(self.address))
        object.__setattr__(self, "mount", _validate_mount(self.mount, "mount"))
        object.__setattr__(
            self, "approle_mount", _validate_mount(self.approle_mount, "approle_mount")
        )
        if not _NAME.fullmatch(self.key_name):
            raise KekConfigError(
                f"key_name {self.key_name!r} is not a valid Transit key name; use letters, "
                "digits and _ . @ - (not first or last)"
            )
        if self.auth_method not in ("token", "approle"):
            raise KekConfigError(
                f"auth_method {self.auth_method!r} is invalid; use 'token' or 'approle'"
            )
        for setting in ("token_env", "role_id_env", "secret_id_env"):
            value = getattr(self, setting)
            if not _ENV_VAR.fullmatch(value):
                raise KekConfigError(
                    f"{setting} {value!r} is not a valid environment variable name"
                )
        if self.ca_file is not None:
            if self.address.startswith("http://"):
                raise KekConfigError(
                    f"ca_file is set but address {self.address} uses http, so no TLS "
                    "certificate is verified; use an https address or remove ca_file"
                )
            if not os.path.isfile(self.ca_file) or not os.access(self.ca_file, os.R_OK):
                raise KekConfigError(f"ca_file {self.ca_file} is not a readable file")
        if self.namespace is not None and not self.namespace.strip("/"):
            raise KekConfigError("namespace is empty; remove it or name a Vault namespace")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise KekConfigError(f"timeout {self.timeout} is invalid; use a positive number")
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise KekConfigError(f"batch_size {self.batch_size} is invalid; use a positive integer")
        if not (math.isfinite(self.key_info_ttl) and self.key_info_ttl >= 0):
            raise KekConfigError(
                f"key_info_ttl {self.key_info_ttl} is invalid; use 0 or more seconds"
            )


def _validate_address(address: str) -> str:
    parts = urlsplit(address)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise KekConfigError(
            f"address {address!r} is not an http or https URL, for example "
            "https://vault.example.com:8200"
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise KekConfigError(
            "address must not contain credentials, a query or a fragment; give only the "
            f"scheme, host, port and path of the Vault server ({parts.scheme}://{parts.hostname})"
        )
    return address.rstrip("/")


def _validate_mount(mount: str, setting: str) -> str:
    normalised = mount.strip("/")
    if not _MOUNT.fullmatch(normalised):
        raise KekConfigError(
            f"{setting} {mount!r} is not a valid mount path; use letters, digits, _ . - and /"
        )
    return normalised


@dataclass(frozen=True, repr=False)
class _Credentials:
    """The Vault token or the AppRole credentials, kept out of every repr."""

    token: str | None = field(default=None, repr=False)
    role_id: str | None = field(default=None, repr=False)
    secret_id: str | None = field(default=None, repr=False)


def _read_credentials(settings: TransitSettings, environ: Mapping[str, str]) -> _Credentials:
    def required(variable: str, what: str) -> str:
        value = environ.get(variable, "")
        if not value.strip():
            raise KekConfigError(
                f"environment variable {variable} is not set; set it to {what} for the Vault "
                f"Transit KEK provider at {settings.address}"
            )
        return value.strip()

    if settings.auth_method == "token":
        return _Credentials(token=required(settings.token_env, "a Vault token"))
    return _Credentials(
        role_id=required(settings.role_id_env, "the AppRole role_id"),
        secret_id=required(settings.secret_id_env, "an AppRole secret_id"),
    )


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One Vault endpoint: the HTTP method, the path after /v1/ and the policy capability."""

    method: str
    path: str
    capability: str


@dataclass(frozen=True)
class _KeyInfo:
    """Attributes of the Transit key from ``<mount>/keys/<key>``, read at ``read_at``."""

    latest_version: int
    min_decryption_version: int
    key_type: str
    derived: bool
    supports_decryption: bool
    read_at: float


class _FailureLog:
    """Logger that writes each distinct message at most once per interval.

    The next line written for a message reports how many repeats were dropped before it.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}

    def log(self, level: int, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            logged_at, repeats = self._last.get(message, (-math.inf, 0))
            if now - logged_at < self._interval:
                self._last[message] = (logged_at, repeats + 1)
                return
            if len(self._last) >= _FAILURE_LOG_MAX_ENTRIES:
                self._last.clear()
            self._last[message] = (now, 0)
        if repeats:
            logger.log(
                level,
                "%s (and %d times more since it was last logged)",
                message,
                repeats,
            )
        else:
            logger.log(level, "%s", message)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _server_errors(exc: hvac.exceptions.VaultError) -> str:
    """Return Vault's error strings, joined and shortened.

    Uses only the ``errors`` list. The exception's text can contain plaintext data keys,
    because Vault returns HTTP 400 with every item's plaintext when one item of a batch decrypt
    fails.
    """
    errors = exc.errors if isinstance(exc.errors, list) else []
    text = "; ".join(" ".join(str(error).split()) for error in errors)
    if len(text) > _SERVER_ERRORS_MAX_LENGTH:
        text = text[: _SERVER_ERRORS_MAX_LENGTH - 3] + "..."
    return text


def _batch_results(document: Any) -> list[Any] | None:
    data = document.get("data") if isinstance(document, dict) else None
    results = data.get("batch_results") if isinstance(data, dict) else None
    return results if isinstance(results, list) else None


def _connection_failure(exc: requests.exceptions.ConnectionError) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "the connection was refused"
    if "name resolution" in text or "name or service not known" in text:
        return "the host name did not resolve"
    if "reset" in text or "aborted" in text:
        return "the connection was reset"
    return "the connection failed"


# -- provider --------------------------------------------------------------------------------


class TransitKekProvider(KekProvider):
    """KEK provider that wraps data keys with a Vault or OpenBao Transit key.

    The constructor reads the credentials from the environment, logs in (AppRole), and reads
    the Transit key, creating it first if it is missing and ``create_if_missing`` is set. It
    raises KekConfigError for invalid settings, missing credentials, a missing or unsuitable
    key, or a denied request, and KekUnavailable when Vault cannot be reached.

    Beyond ``KekProvider`` it offers ``rewrap`` and the batch methods ``wrap_many``,
    ``unwrap_many`` and ``rewrap_many``.
    """

    name = PROVIDER_NAME

    def __init__(
        self, settings: TransitSettings, *, environ: Mapping[str, str] | None = None
    ) -> None:
        self._settings = settings
        self._credentials = _read_credentials(settings, os.environ if environ is None else environ)

        # Guards the token, the key information cache and the closed flag.
        self._lock = threading.Lock()
        # Serialises AppRole logins, so that threads that find the token expired log in once.
        self._login_lock = threading.Lock()
        self._closed = False
        self._token: str | None = self._credentials.token
        self._relogin_at: float | None = None
        self._key_info: _KeyInfo | None = None
        self._failure_log = _FailureLog(_FAILURE_LOG_INTERVAL)

        mount, key = settings.mount, settings.key_name
        self._read_key_call = _Call("GET", f"{mount}/keys/{key}", "read")
        self._create_key_call = _Call("POST", f"{mount}/keys/{key}", "create")
        self._rotate_call = _Call("POST", f"{mount}/keys/{key}/rotate", "update")
        self._encrypt_call = _Call("POST", f"{mount}/encrypt/{key}", "update")
        self._decrypt_call = _Call("POST", f"{mount}/decrypt/{key}", "update")
        self._login_call = _Call("POST", f"auth/{settings.approle_mount}/login", "update")

        self._session = self._new_session()
        # The adapter gets no token, so it never falls back to VAULT_TOKEN or ~/.vault-token
        # as hvac.Client would. Each request sends the current token in its own header.
        self._adapter = JSONAdapter(
            base_uri=settings.address,
            token=None,
            timeout=settings.timeout,
            session=self._session,
            namespace=settings.namespace,
        )
        try:
            if settings.auth_method == "approle":
                self._login()
            info = self._open_key()
        except BaseException:
            self._session.close()
            raise

        host = urlsplit(settings.address).hostname
        if settings.address.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning(
                "Vault address %s uses http: the Vault token and every data key cross the "
                "network unencrypted; use https",
                settings.address,
            )
        logger.info(
            "Vault Transit KEK provider started: address %s, mount %s, key %s (type %s), "
            "latest version %d, auth %s",
            settings.address,
            mount,
            key,
            info.key_type,
            info.latest_version,
            self._auth_description(),
        )

    # -- KekProvider

    def describe(self) -> KekRef:
        """Return the latest version of the Transit key, which ``wrap`` uses.

        The version is cached. ``rotate`` refreshes it, and so does a ``wrap`` that returns a
        newer version. Otherwise it is read again once it is older than ``key_info_ttl``
        seconds, because another replica, an operator or the key's auto_rotate_period can
        rotate the key.
        """
        with self._lock:
            self._check_open()
            info = self._key_info
        if info is None or time.monotonic() - info.read_at > self._settings.key_info_ttl:
            info = self._read_key_info()
        return self._ref(info.latest_version)

    def wrap(self, key: bytes, *, associated_data: bytes) -> tuple[bytes, KekRef]:
        return _single(self.wrap_many([(key, associated_data)]))

    def unwrap(self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes) -> bytes:
        return _single(self.unwrap_many([(wrapped_key, kek, associated_data)]))

    def rotate(self) -> KekRef:
        """Rotate the Transit key, then read the key to return its new latest version."""
        self._request(self._rotate_call, {})
        info = self._read_key_info()
        logger.info(
            "rotated Vault Transit key %s at mount %s: version %d is used for new wraps",
            self._settings.key_name,
            self._settings.mount,
            info.latest_version,
        )
        return self._ref(info.latest_version)

    def close(self) -> None:
        """Revoke an AppRole token, close the HTTP session and refuse later calls.

        A token from the environment is not revoked, because the operator owns it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            token, self._token = self._token, None
            self._key_info = None
        if self._settings.auth_method == "approle" and token:
            self._revoke_token(token)
        self._adapter.close()
        logger.info(
            "Vault Transit KEK provider closed: address %s, key %s",
            self._settings.address,
            self._settings.key_name,
        )

    # -- Transit extras

    def rewrap(
        self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes
    ) -> tuple[bytes, KekRef]:
        """Re-encrypt a wrapped key under the latest Transit key version.

        Returns the new wrapped key and its KEK version. Raises like ``unwrap``, including
        KekNotFound when the key's min_decryption_version excludes ``kek``.
        """
        return _single(self.rewrap_many([(wrapped_key, kek, associated_data)]))

    def wrap_many(
        self, items: Sequence[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, KekRef] | KeyProviderError]:
        """Wrap ``(key, associated_data)`` pairs with batch encrypt requests.

        Returns one entry per item, in order: the wrapped key and its KEK version, or the error
        of that item. A failure of a whole request, for example KekUnavailable, is raised.
        """
        results: list[tuple[bytes, KekRef] | KeyProviderError] = []
        for chunk in _chunks(items, self._settings.batch_size):
            batch_input = [
                {"plaintext": _b64encode(key), "associated_data": _b64encode(associated_data)}
                for key, associated_data in chunk
            ]
            outputs = self._batch_request(self._encrypt_call, batch_input)
            for output in outputs:
                error = output.get("error")
                if error:
                    results.append(self._translate_item_error(str(error), self._encrypt_call))
                else:
                    results.append(self._parse_encrypt_output(output))
        return results

    def unwrap_many(
        self, items: Sequence[tuple[bytes, KekRef, bytes]]
    ) -> list[bytes | KeyProviderError]:
        """Unwrap ``(wrapped_key, kek, associated_data)`` triples with batch decrypt requests.

        Returns one entry per item, in order: the key, or the error of that item (UnwrapError,
        KekNotFound). A failure of a whole request, for example KekUnavailable, is raised.
        """
        results: list[bytes | KeyProviderError | None] = [None] * len(items)
        pending: list[tuple[int, str, KekRef, bytes]] = []
        for index, (wrapped_key, kek, associated_data) in enumerate(items):
            try:
                ciphertext = self._check_wrapped_key(wrapped_key, kek)
            except KeyProviderError as exc:
                results[index] = exc
                continue
            pending.append((index, ciphertext, kek, associated_data))

        # Read once per call, and only if an item is refused as older than this version.
        min_decryption_version = functools.cache(self._min_decryption_version)
        for chunk in _chunks(pending, self._settings.batch_size):
            batch_input = [
                {"ciphertext": ciphertext, "associated_data": _b64encode(associated_data)}
                for _, ciphertext, _, associated_data in chunk
            ]
            outputs = self._batch_request(self._decrypt_call, batch_input)
            for (index, _, kek, _), output in zip(chunk, outputs, strict=True):
                error = output.get("error")
                if error:
                    results[index] = self._translate_item_error(
                        str(error), self._decrypt_call, kek, min_decryption_version
                    )
                else:
                    results[index] = self._parse_decrypt_output(output)

        return [result for result in results if result is not None]

    def rewrap_many(
        self, items: Sequence[tuple[bytes, KekRef, bytes]]
    ) -> list[tuple[bytes, KekRef] | KeyProviderError]:
        """Re-encrypt ``(wrapped_key, kek, associated_data)`` triples under the latest version.

        Returns one entry per item, in order, like ``wrap_many``.

        NOTE: Transit's rewrap endpoint ignores associated data, so it cannot open these
        wrapped keys. OpenBao 2.7.2 passes no associated data to its decrypt step, and HashiCorp
        Vault's rewrap lacked the parameter too in early 2026. This method decrypts and encrypts
        again instead, so the plaintext data keys pass through this process, which keeps them in
        memory after every unwrap anyway. It needs the decrypt and encrypt capabilities.
        """
        opened = self.unwrap_many(items)
        results: list[tuple[bytes, KekRef] | KeyProviderError | None] = [None] * len(items)
        to_wrap: list[tuple[int, bytes, bytes]] = []
        for index, (item, key) in enumerate(zip(items, opened, strict=True)):
            if isinstance(key, KeyProviderError):
                results[index] = key
            else:
                to_wrap.append((index, key, item[2]))

        wrapped = self.wrap_many([(key, associated_data) for _, key, associated_data in to_wrap])
        for (index, _, _), result in zip(to_wrap, wrapped, strict=True):
            results[index] = result
        return [result for result in results if result is not None]

    # -- key information

    def _open_key(self) -> _KeyInfo:
        """Read the Transit key at start-up, creating it when allowed, and check its type."""
        info = self._read_key_info_if_exists()
        if info is None:
            if not self._settings.create_if_missing:
                raise KekConfigError(self._missing_key_message())
            self._request(self._create_key_call, {"type": KEY_TYPE})
            logger.info(
                "created Vault Transit key %s (type %s) at mount %s",
                self._settings.key_name,
                KEY_TYPE,
                self._settings.mount,
            )
            info = self._read_key_info()

        key = f"Transit key {self._settings.key_name} at mount {self._settings.mount}"
        if info.key_type not in AEAD_KEY_TYPES:
            raise KekConfigError(
                f"{key} has type {info.key_type}, which cannot bind associated data; use a key "
                f"of type {', '.join(sorted(AEAD_KEY_TYPES))}"
            )
        if info.derived:
            raise KekConfigError(
                f"{key} was created with derived=true, so every request would need a "
                f"derivation context; use a key created without derivation (type {KEY_TYPE})"
            )
        if not info.supports_decryption:
            raise KekConfigError(f"{key} does not support decryption; use type {KEY_TYPE}")
        return info

    def _read_key_info(self) -> _KeyInfo:
        """Read the Transit key and cache what it returned."""
        info = self._read_key_info_if_exists()
        if info is None:
            raise KekConfigError(self._missing_key_message())
        return info

    def _read_key_info_if_exists(self) -> _KeyInfo | None:
        """Read the Transit key and cache what it returned, or return None if it is missing."""
        document = self._request(self._read_key_call, missing_ok=True)
        data = document.get("data")
        if not isinstance(data, dict):
            return None
        try:
            info = _KeyInfo(
                latest_version=int(data["latest_version"]),
                min_decryption_version=int(data.get("min_decryption_version") or 1),
                key_type=str(data["type"]),
                derived=bool(data.get("derived", False)),
                supports_decryption=bool(data.get("supports_decryption", True)),
                read_at=time.monotonic(),
            )
        except (KeyError, TypeError, ValueError):
            raise KeyProviderError(
                f"Vault returned an unexpected response for {self._read_key_call.path}: "
                "latest_version or type is missing"
            ) from None
        with self._lock:
            if not self._closed:
                self._key_info = info
        return info

    def _note_version(self, version: int) -> None:
        """Raise the cached latest version when a wrap used a newer one."""
        with self._lock:
            info = self._key_info
            if info is not None and version > info.latest_version:
                self._key_info = replace(info, latest_version=version)

    def _min_decryption_version(self) -> int | None:
        """Read the key's current min_decryption_version, or None if that read fails."""
        try:
            return self._read_key_info().min_decryption_version
        except KeyProviderError:
            return None

    def _missing_key_message(self) -> str:
        mount, key = self._settings.mount, self._settings.key_name
        return (
            f"Vault Transit key {key} does not exist at mount {mount} on "
            f"{self._settings.address}; create it with "
            f"`bao write -f {mount}/keys/{key} type={KEY_TYPE}` (or `vault write ...`), or set "
            "create_if_missing to let the provider create it"
        )

    # -- wrapped keys

    def _ref(self, version: int) -> KekRef:
        return KekRef(provider=self.name, key_id=self._settings.key_name, version=str(version))

    def _check_wrapped_key(self, wrapped_key: bytes, kek: KekRef) -> str:
        """Check that ``kek`` names this key and matches the blob; return the ciphertext."""
        if kek.provider != self.name:
            raise KekNotFound(f"KEK {kek} belongs to provider {kek.provider}, not {self.name}")
        if kek.key_id != self._settings.key_name:
            raise KekNotFound(
                f"KEK {kek} not found: this provider uses Transit key {self._settings.key_name} "
                f"at mount {self._settings.mount}"
            )
        if not _VERSION_NAME.fullmatch(kek.version):
            raise KekNotFound(f"KEK {kek} not found: version is not a positive integer")

        match = _CIPHERTEXT.fullmatch(bytes(wrapped_key))
        if match is None:
            raise UnwrapError()
        blob_version = int(match[1])
        if blob_version != int(kek.version):
            raise KekNotFound(
                f"KEK {kek} not found: the wrapped key was made by version {blob_version} "
                f"of Transit key {self._settings.key_name}"
            )
        return match[0].decode("ascii")

    def _parse_encrypt_output(self, output: Mapping[str, Any]) -> tuple[bytes, KekRef]:
        ciphertext = output.get("ciphertext")
        match = None
        if isinstance(ciphertext, str):
            match = _CIPHERTEXT.fullmatch(ciphertext.encode("ascii", "replace"))
        if match is None:
            raise KeyProviderError(
                f"Vault returned a ciphertext in an unexpected format from "
                f"{self._encrypt_call.path}; expected vault:v<version>:<base64>"
            )
        version = int(match[1])
        self._note_version(version)
        return match[0], self._ref(version)

    def _parse_decrypt_output(self, output: Mapping[str, Any]) -> bytes | KeyProviderError:
        plaintext = output.get("plaintext")
        if isinstance(plaintext, str):
            try:
                return base64.b64decode(plaintext, validate=True)
            except (binascii.Error, ValueError):
                pass
        return KeyProviderError(
            f"Vault returned a plaintext that is not base64 from {self._decrypt_call.path}"
        )

    # -- requests

    def _batch_request(self, call: _Call, batch_input: list[dict[str, str]]) -> list[Any]:
        document = self._request(call, {"batch_input": batch_input}, batch=True)
        outputs = _batch_results(document)
        if outputs is None or len(outputs) != len(batch_input):
            raise KeyProviderError(
                f"Vault returned {len(outputs) if outputs is not None else 'no'} batch results "
                f"for {len(batch_input)} items from {call.path}"
            )
        return [
            output if isinstance(output, dict) else {"error": "the batch result is not an object"}
            for output in outputs
        ]

    def _request(
        self,
        call: _Call,
        payload: dict[str, Any] | None = None,
        *,
        batch: bool = False,
        missing_ok: bool = False,
    ) -> dict[str, Any]:
        """Send one authenticated request and return the JSON response ({} when it has none).

        With ``batch``, an HTTP 400 that carries batch results returns them, because Vault
        returns 400 when any item failed. With ``missing_ok``, a 404 without errors, which is
        how Vault reports a missing key, returns {}. When Vault denies an AppRole token, the
        provider logs in again and repeats the request once.
        """
        token = self._current_token()
        relogin_allowed = self._settings.auth_method == "approle"
        response = self._send(call, token, payload, batch, missing_ok, relogin_allowed)
        if response is None:
            token = self._relogin(token, f"Vault denied {call.capability} on {call.path}")
            response = self._send(call, token, payload, batch, missing_ok, False)
        assert response is not None  # _send returns None only when relogin_allowed is set
        return response

    def _send(
        self,
        call: _Call,
        token: str,
        payload: dict[str, Any] | None,
        batch: bool,
        missing_ok: bool,
        relogin_allowed: bool,
    ) -> dict[str, Any] | None:
        """Send a request for ``_request``.

        Returns None when Vault denied the request and ``relogin_allowed`` is set.
        """
        # The error is raised after the except blocks, so the hvac exception is not kept as
        # __context__: its text may contain plaintext data keys from batch results.
        error: KeyProviderError
        try:
            response = self._adapter.request(
                call.method,
                f"/v1/{call.path}",
                json=payload,
                headers={"X-Vault-Token": token},
            )
            return response if isinstance(response, dict) else {}
        except hvac.exceptions.Forbidden as exc:
            if relogin_allowed:
                return None
            error = self._translate_error(exc, call)
        except hvac.exceptions.InvalidRequest as exc:
            if batch and _batch_results(exc.json) is not None:
                return exc.json
            error = self._translate_error(exc, call)
        except hvac.exceptions.InvalidPath as exc:
            if missing_ok and not exc.errors:
                return {}
            error = self._translate_error(exc, call)
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            error = self._translate_error(exc, call)
        raise error

    # -- authentication

    def _current_token(self) -> str:
        with self._lock:
            self._check_open()
            token = self._token
            relogin_at = self._relogin_at
        if self._settings.auth_method == "approle" and (
            token is None or (relogin_at is not None and time.monotonic() >= relogin_at)
        ):
            return self._relogin(token, "the token is close to its expiry")
        if token is None:
            raise KekUnavailable(self.name, "the provider was closed")
        return token

    def _relogin(self, stale_token: str | None, reason: str) -> str:
        """Log in through AppRole again unless another thread replaced ``stale_token``."""
        with self._login_lock:
            with self._lock:
                self._check_open()
                current = self._token
            if current is not None and current != stale_token:
                return current
            logger.info(
                "logging in to Vault at %s through AppRole (auth/%s) again: %s",
                self._settings.address,
                self._settings.approle_mount,
                reason,
            )
            return self._login()

    def _login(self) -> str:
        """Log in through AppRole, store the token and return it."""
        error: KeyProviderError | None = None
        response: Any = None
        try:
            response = AppRole(self._adapter).login(
                role_id=self._credentials.role_id,
                secret_id=self._credentials.secret_id,
                use_token=False,
                mount_point=self._settings.approle_mount,
            )
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            error = self._translate_error(exc, self._login_call)
        if error is not None:
            raise error

        auth = response.get("auth") if isinstance(response, dict) else None
        token = auth.get("client_token") if isinstance(auth, dict) else None
        if not isinstance(token, str) or not token:
            raise KeyProviderError(f"Vault returned no client token from {self._login_call.path}")
        lease_duration = auth.get("lease_duration") if isinstance(auth, dict) else 0
        relogin_at = None
        if isinstance(lease_duration, int) and lease_duration > 0:
            relogin_at = time.monotonic() + _RELOGIN_AT_TTL_FRACTION * lease_duration
        with self._lock:
            self._check_open()
            self._token = token
            self._relogin_at = relogin_at
        return token

    def _revoke_token(self, token: str) -> None:
        try:
            self._adapter.request(
                "POST", "/v1/auth/token/revoke-self", headers={"X-Vault-Token": token}
            )
        except (hvac.exceptions.VaultError, requests.exceptions.RequestException) as exc:
            # The token expires at the end of its TTL anyway.
            logger.info(
                "failed to revoke the AppRole token at %s on close (%s); it expires with its TTL",
                self._settings.address,
                type(exc).__name__,
            )

    def _auth_description(self) -> str:
        if self._settings.auth_method == "token":
            return f"token from environment variable {self._settings.token_env}"
        return (
            f"AppRole at auth/{self._settings.approle_mount} (role_id from "
            f"{self._settings.role_id_env}, secret_id from {self._settings.secret_id_env})"
        )

    def _check_open(self) -> None:
        """Raise KekUnavailable once ``close`` ran. Call it with ``self._lock`` held."""
        if self._closed:
            raise KekUnavailable(self.name, "the provider was closed")

    # -- errors

    def _translate_error(self, exc: Exception, call: _Call) -> KeyProviderError:
        """Map an hvac or requests exception to the provider error that callers expect, and log it.

        This is the only place that turns hvac and requests exceptions into provider errors.
        The result never contains ``str(exc)`` of an hvac exception, which can include response
        bodies.
        """
        settings = self._settings
        address = settings.address
        error: KeyProviderError

        if isinstance(exc, requests.exceptions.Timeout):
            error = KekUnavailable(
                self.name,
                f"{call.method} {call.path} at {address} timed out after {settings.timeout:g} s",
            )
        elif isinstance(exc, requests.exceptions.SSLError) and "certificate verify failed" in (
            str(exc).lower()
        ):
            error = KekConfigError(
                f"the TLS certificate of {address} failed verification against "
                f"{settings.ca_file or 'the system CA bundle'}; set ca_file to the CA "
                "certificate that signed it"
            )
        elif isinstance(exc, requests.exceptions.ConnectionError):
            error = KekUnavailable(
                self.name, f"cannot connect to {address}: {_connection_failure(exc)}"
            )
        elif isinstance(exc, requests.exceptions.RequestException):
            error = KekUnavailable(
                self.name, f"{call.method} {call.path} at {address} failed: {type(exc).__name__}"
            )
        elif isinstance(exc, hvac.exceptions.VaultDown):
            errors = _server_errors(exc)
            if "sealed" in errors.lower():
                error = KekUnavailable(self.name, f"Vault at {address} is sealed")
            else:
                error = KekUnavailable(
                    self.name, f"Vault at {address} returned HTTP 503 ({errors or 'no details'})"
                )
        elif isinstance(exc, hvac.exceptions.VaultNotInitialized):
            error = KekUnavailable(self.name, f"Vault at {address} is not initialized")
        elif isinstance(exc, hvac.exceptions.RateLimitExceeded):
            error = KekUnavailable(
                self.name, f"Vault at {address} rejected {call.path} with HTTP 429 (rate limit)"
            )
        elif isinstance(
            exc,
            (
                hvac.exceptions.InternalServerError,
                hvac.exceptions.BadGateway,
                hvac.exceptions.UnexpectedError,
            ),
        ):
            error = KekUnavailable(
                self.name,
                f"Vault at {address} failed {call.method} {call.path} with a server error "
                f"({type(exc).__name__}: {_server_errors(exc) or 'no details'})",
            )
        elif isinstance(exc, (hvac.exceptions.Forbidden, hvac.exceptions.Unauthorized)):
            error = KekConfigError(self._denied_message(call))
        elif isinstance(exc, hvac.exceptions.InvalidPath):
            errors = _server_errors(exc)
            if "no handler for route" in errors:
                engine = "auth method" if call.path.startswith("auth/") else "secrets engine"
                error = KekConfigError(
                    f"Vault at {address} has no {engine} mounted for {call.path}; check the "
                    f"mount path setting, or enable it with `bao secrets enable -path="
                    f"{settings.mount} transit` (or `bao auth enable approle`)"
                )
            else:
                error = KeyProviderError(
                    f"Vault at {address} returned HTTP 404 for {call.path}"
                    f"{f' ({errors})' if errors else ''}"
                )
        elif isinstance(exc, hvac.exceptions.InvalidRequest):
            return self._translate_item_error(_server_errors(exc), call)
        elif isinstance(exc, hvac.exceptions.VaultError):
            error = KeyProviderError(
                f"Vault at {address} rejected {call.method} {call.path}: "
                f"{type(exc).__name__} ({_server_errors(exc) or 'no details'})"
            )
        else:
            error = KeyProviderError(
                f"{call.method} {call.path} at {address} failed: {type(exc).__name__}"
            )
        self._log_failure(error, call)
        return error

    def _translate_item_error(
        self,
        message: str,
        call: _Call,
        kek: KekRef | None = None,
        min_decryption_version: Callable[[], int | None] | None = None,
    ) -> KeyProviderError:
        """Map a Transit error message (HTTP 400, or one item of a batch) and log it.

        ``kek`` is the KEK version that a decrypt item named. ``min_decryption_version``
        returns the key's current minimum, which a refusal as too old reports.
        """
        text = message.lower()
        settings = self._settings
        error: KeyProviderError
        # The version checks come first: Vault reports a version it lacks as "invalid
        # ciphertext: version is too new".
        if "too old" in text and kek is not None:
            read_minimum = min_decryption_version or self._min_decryption_version
            minimum = read_minimum()
            minimum_text = (
                f"min_decryption_version {minimum}"
                if minimum
                else "a min_decryption_version above it"
            )
            error = KekNotFound(
                f"KEK {kek} not found: Transit key {settings.key_name} has {minimum_text}, so "
                f"Vault no longer decrypts version {kek.version}; lower min_decryption_version "
                f"to {kek.version} to unwrap it, and rewrap such keys before raising it"
            )
        elif "too new" in text and kek is not None:
            error = KekNotFound(
                f"KEK {kek} not found: Transit key {settings.key_name} at mount "
                f"{settings.mount} has no version {kek.version}"
            )
        elif "message authentication failed" in text or "invalid ciphertext" in text:
            error = UnwrapError()
        elif "key not found" in text:
            if kek is not None:
                error = KekNotFound(
                    f"KEK {kek} not found: Transit key {settings.key_name} does not exist at "
                    f"mount {settings.mount}"
                )
            else:
                error = KekConfigError(self._missing_key_message())
        elif "maximum number of strings" in text or "high complexity" in text:
            error = KekConfigError(
                f"Vault at {settings.address} rejected a batch request to {call.path} as too "
                f"complex; lower batch_size (now {settings.batch_size}) or raise the listener "
                "setting max_request_json_strings"
            )
        elif "invalid role or secret id" in text:
            error = KekConfigError(
                f"Vault rejected the AppRole login at {call.path}: check the role_id in "
                f"{settings.role_id_env} and the secret_id in {settings.secret_id_env} (the "
                "secret_id may have expired or used up its uses)"
            )
        else:
            error = KeyProviderError(
                f"Vault at {settings.address} rejected {call.method} {call.path}: "
                f"{message or 'no details'}"
            )
        self._log_failure(error, call)
        return error

    def _denied_message(self, call: _Call) -> str:
        if self._settings.auth_method == "token":
            holder = f"the token in {self._settings.token_env}"
            hint = ", or the token is invalid or expired"
        else:
            holder = f"the AppRole role of {self._settings.role_id_env}"
            hint = " (a new AppRole login was denied as well)"
        return (
            f"Vault denied {call.capability} on {call.path}: the policy of {holder} must grant "
            f'the "{call.capability}" capability on path "{call.path}"{hint}'
        )

    def _log_failure(self, error: KeyProviderError, call: _Call) -> None:
        if isinstance(error, UnwrapError):
            message = (
                f"Vault Transit {call.path} failed authentication of a wrapped key: wrong "
                "associated data, wrong key or a modified wrapped key"
            )
            level = logging.WARNING
        else:
            message = f"Vault Transit {call.method} {call.path} failed: {error}"
            level = logging.ERROR if isinstance(error, KekConfigError) else logging.WARNING
        self._failure_log.log(level, message)

    # -- session

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # verify is never False: Vault is checked against ca_file or the system CA bundle.
        session.verify = self._settings.ca_file or True
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=_CONNECTION_POOL_SIZE
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session


def _single(results: Sequence[_T | KeyProviderError]) -> _T:
    """Return the only result of a batch of one, raising it if it is an error."""
    (result,) = results
    if isinstance(result, KeyProviderError):
        raise result
    return result
