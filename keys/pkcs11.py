"""A KEK provider that keeps the KEK in an HSM and wraps data keys there through PKCS#11.

Each KEK version is an AES-256 secret key that the token generated with C_GenerateKey, so this
process never sees its value. The key objects are token objects (persistent), private,
sensitive and not extractable, and can only encrypt and decrypt. All versions share one
CKA_LABEL, the key label (default ``tokenvault-kek``), and CKA_ID is ``v`` and the version
number (``b"v1"``, ``b"v2"``, ...). The highest version is active. A ``KekRef`` from this
provider is ``pkcs11:<key label>@<version>``.

Wrapping is AES-GCM inside the HSM (CKM_AES_GCM) with a random 12-byte IV, a 128-bit tag and the
associated data as AAD. The blob is IV || ciphertext || tag, the same layout as ``keys.local``.

Settings, all passed to ``Pkcs11KekProvider.open``:

- the path of the HSM vendor's PKCS#11 module, for SoftHSM2 ``/usr/lib/softhsm/libsofthsm2.so``.
- the token label.
- the name of the environment variable that contains the user PIN, ``TOKENVAULT_HSM_PIN`` by
  default. The PIN stays in memory, because reopening a lost session needs it.
- the key label.

Sessions and threads: PKCS#11 keeps one login state per application and token, so all providers
in a process that use the same module and token share one logged-in read/write session, and
they must use the same PIN. python-pkcs11 (0.10) calls C_Initialize with no arguments. Under the
PKCS#11 specification that means the application will not call the module from several threads
at once, so one lock per module serialises every call. After a session or device error, a call
reopens the session once and retries. If that fails it raises KekUnavailable, and each later
call tries again, so the service recovers when the HSM comes back.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, Self, TypeVar, cast

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, Session
from pkcs11.exceptions import (
    DeviceError,
    DeviceRemoved,
    EncryptedDataInvalid,
    EncryptedDataLenRange,
    FunctionFailed,
    GeneralError,
    KeyHandleInvalid,
    MultipleTokensReturned,
    NoSuchToken,
    ObjectHandleInvalid,
    PinExpired,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    SessionClosed,
    SessionHandleInvalid,
    TokenNotPresent,
    TokenNotRecognised,
    UserAlreadyLoggedIn,
    UserNotLoggedIn,
    UserPinNotInitialized,
)
from pkcs11.mechanisms import GCMParams
from pkcs11.types import DecryptMixin, EncryptMixin, Object

from keys.errors import KekConfigError, KekNotFound, KekUnavailable, UnwrapError
from keys.provider import KekProvider, KekRef

logger = logging.getLogger(__name__)

PROVIDER_NAME = "pkcs11"
DEFAULT_PIN_ENV = "TOKENVAULT_HSM_PIN"  # noqa: S105 - a variable name
DEFAULT_KEY_LABEL = "tokenvault-kek"

KEK_BITS = 256
IV_SIZE = 12
TAG_SIZE = 16

_VERSION_ID = re.compile(rb"v([1-9][0-9]{0,8})")
_VERSION_NAME = re.compile(r"[1-9][0-9]{0,8}")

# Errors after which the session, or the device behind it, may be gone. python-pkcs11 raises the
# PKCS11Error base class itself for CKR_CRYPTOKI_NOT_INITIALIZED (after C_Finalize) and for
# return codes it does not map, so _is_session_error also accepts that exact class.
_SESSION_ERRORS: tuple[type[PKCS11Error], ...] = (
    SessionHandleInvalid,
    SessionClosed,
    DeviceError,
    DeviceRemoved,
    TokenNotPresent,
    TokenNotRecognised,
    GeneralError,
    FunctionFailed,
    UserNotLoggedIn,
    KeyHandleInvalid,
    ObjectHandleInvalid,
)

_PIN_FIXES: dict[type[PKCS11Error], str] = {
    PinIncorrect: "set {env} to the token's user PIN",
    PinInvalid: "set {env} to the token's user PIN",
    PinLenRange: "set {env} to the token's user PIN",
    PinExpired: "set a new user PIN on the token and put it in {env}",
    PinLocked: "the token's security officer must unlock or reset the user PIN",
    UserPinNotInitialized: "the token's security officer must set a user PIN (C_InitPIN)",
}

T = TypeVar("T")


def _is_session_error(exc: PKCS11Error) -> bool:
    return type(exc) is PKCS11Error or isinstance(exc, _SESSION_ERRORS)


def _error_name(exc: PKCS11Error) -> str:
    """Name a PKCS#11 error by its class, which is all that python-pkcs11 reports for most codes."""
    return type(exc).__name__


class _AesKey(Protocol):
    """A key object that can encrypt and decrypt, as python-pkcs11 builds them at run time."""

    def encrypt(
        self, data: bytes, buffer_size: int = ..., **kwargs: Any
    ) -> bytes | Iterator[bytes]: ...

    def decrypt(
        self, data: bytes, buffer_size: int = ..., **kwargs: Any
    ) -> bytes | Iterator[bytes]: ...


@dataclass(frozen=True)
class _KeyRing:
    """The KEK versions found on the token, each with its key objects.

    A version normally has one key object. Two processes that rotate at the same moment can each
    create one, so ``unwrap`` tries every object of a version.
    """

    versions: Mapping[int, tuple[_AesKey, ...]] = field(repr=False)


class _TokenUnreachable(Exception):
    """Failure to load the module or to find the token. The message says which and how to fix it."""


# -- AES-GCM in the token --------------------------------------------------------------------


def _gcm_params(iv: bytes, associated_data: bytes) -> GCMParams:
    return GCMParams(iv, associated_data, TAG_SIZE * 8)


def _encrypt_gcm(key: _AesKey, iv: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    ciphertext = key.encrypt(
        plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=_gcm_params(iv, associated_data)
    )
    if not isinstance(ciphertext, bytes):  # python-pkcs11 streams only for iterator input
        raise TypeError("AES-GCM encryption returned a stream, expected bytes")
    return ciphertext


def _decrypt_gcm(
    key: _AesKey, iv: bytes, ciphertext: bytes, associated_data: bytes
) -> bytes | None:
    """Decrypt in the token. Returns None when the tag check fails.

    Raises PKCS11Error when the token or session failed.
    """
    try:
        plaintext = key.decrypt(
            ciphertext,
            mechanism=Mechanism.AES_GCM,
            mechanism_param=_gcm_params(iv, associated_data),
        )
    except (EncryptedDataInvalid, EncryptedDataLenRange):
        return None
    except (GeneralError, FunctionFailed):
        # SoftHSM2 2.6.1 reports a failed tag check as CKR_GENERAL_ERROR, the code that device
        # faults use too. If a probe round trip with the same key works, the blob was at fault.
        if _key_works(key):
            return None
        raise
    if not isinstance(plaintext, bytes):
        raise TypeError("AES-GCM decryption returned a stream, expected bytes")
    return plaintext


def _key_works(key: _AesKey) -> bool:
    """Encrypt and decrypt random bytes with ``key``, to tell a bad blob from a token fault."""
    probe = os.urandom(16)
    iv = os.urandom(IV_SIZE)
    try:
        ciphertext = _encrypt_gcm(key, iv, probe, b"tokenvault/pkcs11-probe")
        plaintext = key.decrypt(
            ciphertext,
            mechanism=Mechanism.AES_GCM,
            mechanism_param=_gcm_params(iv, b"tokenvault/pkcs11-probe"),
        )
    except PKCS11Error:
        return False
    return plaintext == probe


# -- key objects -----------------------------------------------------------------------------


def _version_id(version: int) -> bytes:
    return b"v%d" % version


def _generate_kek(session: Session, key_label: str, version: int, token_label: str) -> None:
    """Generate one KEK version inside the token."""
    session.generate_key(
        KeyType.AES,
        KEK_BITS,
        id=_version_id(version),
        label=key_label,
        store=True,
        # Every capability except these two is set to false.
        capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
        template={
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
        },
    )
    logger.info(
        "created KEK version %d with label %s on PKCS#11 token %s", version, key_label, token_label
    )


def _check_kek_object(key: Object, key_label: str, version: int, token_label: str) -> _AesKey:
    """Return ``key`` if it is a usable KEK. Raises KekConfigError naming what is wrong.

    A key that the HSM could export would break the promise that the KEK never leaves it, so an
    extractable or non-sensitive key is rejected, not just logged.
    """
    attributes = key.get_attributes(
        [
            Attribute.KEY_TYPE,
            Attribute.VALUE_LEN,
            Attribute.SENSITIVE,
            Attribute.EXTRACTABLE,
            Attribute.TOKEN,
        ]
    )
    problems = []
    if attributes.get(Attribute.KEY_TYPE) != KeyType.AES:
        problems.append("it is not an AES key")
    if attributes.get(Attribute.VALUE_LEN) != KEK_BITS // 8:
        problems.append(f"it is not {KEK_BITS} bits long")
    if attributes.get(Attribute.SENSITIVE) is not True:
        problems.append("CKA_SENSITIVE is false")
    if attributes.get(Attribute.EXTRACTABLE) is not False:
        problems.append("CKA_EXTRACTABLE is true")
    if attributes.get(Attribute.TOKEN) is not True:
        problems.append("it is a session object")
    if not isinstance(key, EncryptMixin) or not isinstance(key, DecryptMixin):
        problems.append("CKA_ENCRYPT or CKA_DECRYPT is false")
    if problems:
        raise KekConfigError(
            f"the key with label {key_label!r} and CKA_ID v{version} on PKCS#11 token "
            f"{token_label} cannot be used as a KEK: {'; '.join(problems)}. A KEK must be a "
            f"non-extractable, sensitive AES-{KEK_BITS} token key with encrypt and decrypt "
            "capability; remove or relabel that object"
        )
    # python-pkcs11 adds the encrypt and decrypt methods to the object's class at run time.
    return cast(_AesKey, key)


def _find_versions(session: Session, key_label: str, token_label: str) -> _KeyRing:
    template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: key_label}
    # The search must finish before other calls on the session, so collect it first.
    objects = list(session.get_objects(template))

    versions: dict[int, list[_AesKey]] = {}
    for key in objects:
        key_id = key[Attribute.ID]
        match = _VERSION_ID.fullmatch(key_id)
        if match is None:
            logger.warning(
                "ignoring secret key with label %s on PKCS#11 token %s: CKA_ID %r is not "
                "v<version>",
                key_label,
                token_label,
                key_id,
            )
            continue
        version = int(match[1])
        versions.setdefault(version, []).append(
            _check_kek_object(key, key_label, version, token_label)
        )

    for version, keys in versions.items():
        if len(keys) > 1:
            logger.warning(
                "PKCS#11 token %s has %d keys with label %s and CKA_ID v%d, probably from two "
                "rotations at the same moment; wrap uses one of them and unwrap tries each",
                token_label,
                len(keys),
                key_label,
                version,
            )
    return _KeyRing(versions={version: tuple(keys) for version, keys in versions.items()})


# -- module and token ------------------------------------------------------------------------


def _load_module(module_path: str) -> Any:
    """Load and initialise the module, or return it if python-pkcs11 already has."""
    try:
        return pkcs11.lib(module_path)
    except PKCS11Error as exc:
        detail = f": {exc}" if str(exc) else ""
        raise _TokenUnreachable(
            f"failed to load or initialise PKCS#11 module {module_path} "
            f"({_error_name(exc)}{detail})"
        ) from None


def _find_token(library: Any, module_path: str, token_label: str) -> Any:
    try:
        return library.get_token(token_label=token_label)
    except NoSuchToken:
        labels = sorted({token.label for token in library.get_tokens()})
        present = ", ".join(repr(label) for label in labels) if labels else "none"
        raise _TokenUnreachable(
            f"PKCS#11 module {module_path} has no token with label {token_label!r} (tokens "
            f"present: {present}); initialise a token with that label with the HSM vendor's "
            f"tool, for SoftHSM2: softhsm2-util --init-token --free --label {token_label}"
        ) from None
    except MultipleTokensReturned:
        raise _TokenUnreachable(
            f"PKCS#11 module {module_path} has several tokens with label {token_label!r}; "
            "give each token a unique label"
        ) from None


class _TokenSession:
    """The logged-in session on one token, shared by every provider in the process that uses it.

    ``lock`` is the lock of the module, shared with the token sessions of other tokens on the
    same module. It guards ``session``, ``generation`` and every call made through the session.
    """

    def __init__(
        self, module_path: str, token_label: str, pin: str, pin_env: str, lock: threading.Lock
    ) -> None:
        self.module_path = module_path
        self.token_label = token_label
        self.pin_env = pin_env
        self.lock = lock
        self.session: Session | None = None
        # Counts the sessions opened, so providers know when their key objects are stale.
        self.generation = 0
        self.users = 0
        # Set when the token rejected the PIN, so later calls do not lock the PIN by retrying.
        self.pin_rejected = False
        self._pin = pin
        self._failed_reopens = 0

    def __repr__(self) -> str:
        return f"_TokenSession(module={self.module_path!r}, token={self.token_label!r})"

    def has_pin(self, pin: str) -> bool:
        return hmac.compare_digest(pin.encode("utf-8"), self._pin.encode("utf-8"))

    def open_first(self) -> None:
        """Open the first session. Raises KekConfigError for settings that need fixing."""
        try:
            self._open()
        except _TokenUnreachable as exc:
            raise KekConfigError(str(exc)) from None
        except PKCS11Error as exc:
            raise KekUnavailable(
                PROVIDER_NAME,
                f"opening a session on PKCS#11 token {self.token_label} failed with "
                f"{_error_name(exc)}",
            ) from exc

    def reopen(self, cause: str) -> Session:
        """Drop the session and log in on a new one.

        Raises KekUnavailable if the token cannot be reached, and KekConfigError if it rejects
        the PIN.
        """
        if self.pin_rejected:
            raise self._pin_rejected_error()
        # During an outage every call tries again, so only the first attempt logs a warning.
        log = logger.warning if self._failed_reopens == 0 else logger.debug
        log("reopening the session on PKCS#11 token %s after %s", self.token_label, cause)
        self._discard()

        try:
            session = self._open()
        except _TokenUnreachable as exc:
            self._reopen_failed(str(exc))
        except PKCS11Error as exc:
            self._reopen_failed(
                f"reopening the session on PKCS#11 token {self.token_label} failed with "
                f"{_error_name(exc)}"
            )
        if self._failed_reopens:
            logger.info(
                "reopened the session on PKCS#11 token %s after %d failed attempts",
                self.token_label,
                self._failed_reopens,
            )
        else:
            logger.info("reopened the session on PKCS#11 token %s", self.token_label)
        self._failed_reopens = 0
        return session

    def close(self) -> None:
        self._discard()

    def _open(self) -> Session:
        library = _load_module(self.module_path)
        token = _find_token(library, self.module_path, self.token_label)
        try:
            session: Session = token.open(rw=True, user_pin=self._pin)
        except UserAlreadyLoggedIn:
            # Another session of this process is logged in to the token, and PKCS#11 shares
            # that login with every session of the process.
            session = token.open(rw=True)
        except tuple(_PIN_FIXES) as exc:
            self.pin_rejected = True
            fix = _PIN_FIXES[type(exc)].format(env=self.pin_env)
            raise KekConfigError(
                f"PKCS#11 token {self.token_label} rejected the user PIN in environment "
                f"variable {self.pin_env} ({_error_name(exc)}); {fix}"
            ) from None
        # NOTE: when C_Login fails, python-pkcs11 (0.10) does not close the session it opened,
        # so each failed login leaves one session handle open until C_Finalize.
        self.session = session
        self.generation += 1
        return session

    def _discard(self) -> None:
        session, self.session = self.session, None
        if session is None:
            return
        try:
            session.close()
        except PKCS11Error as exc:
            # The session is usually already gone when this runs.
            logger.debug(
                "closing the session on PKCS#11 token %s failed with %s",
                self.token_label,
                _error_name(exc),
            )

    def _reopen_failed(self, reason: str) -> NoReturn:
        self._failed_reopens += 1
        log = logger.warning if self._failed_reopens == 1 else logger.debug
        log(
            "PKCS#11 token %s is unavailable (%d failed attempts): %s",
            self.token_label,
            self._failed_reopens,
            reason,
        )
        raise KekUnavailable(PROVIDER_NAME, reason)

    def _pin_rejected_error(self) -> KekConfigError:
        return KekConfigError(
            f"PKCS#11 token {self.token_label} rejected the PIN in {self.pin_env} when the "
            "session was reopened, so the provider stopped logging in to avoid locking the PIN; "
            f"set the current PIN in {self.pin_env} and restart the service"
        )


# One token session per (module, token) and one lock per module, for the whole process.
_registry_lock = threading.Lock()
_module_locks: dict[str, threading.Lock] = {}
_token_sessions: dict[tuple[str, str], _TokenSession] = {}


def _acquire_token_session(
    module_path: str, token_label: str, pin: str, pin_env: str
) -> _TokenSession:
    with _registry_lock:
        key = (module_path, token_label)
        shared = _token_sessions.get(key)
        if shared is not None and not shared.pin_rejected:
            if not shared.has_pin(pin):
                raise KekConfigError(
                    f"the PIN in {pin_env} differs from the PIN in {shared.pin_env} that another "
                    f"KEK provider in this process logged in to PKCS#11 token {token_label} "
                    "with; PKCS#11 keeps one login per token and process, so set the same PIN"
                )
            shared.users += 1
            return shared

        lock = _module_locks.setdefault(module_path, threading.Lock())
        shared = _TokenSession(module_path, token_label, pin, pin_env, lock)
        with lock:
            shared.open_first()
        shared.users = 1
        _token_sessions[key] = shared
        return shared


def _release_token_session(shared: _TokenSession) -> None:
    with _registry_lock:
        shared.users -= 1
        if shared.users > 0:
            return
        key = (shared.module_path, shared.token_label)
        if _token_sessions.get(key) is shared:
            del _token_sessions[key]
        with shared.lock:
            shared.close()


# -- settings --------------------------------------------------------------------------------


def _read_pin(env_var: str, token_label: str, environ: Mapping[str, str]) -> str:
    if not env_var:
        raise KekConfigError("the PIN environment variable name is empty; name a variable")
    pin = environ.get(env_var)
    if not pin:
        raise KekConfigError(
            f"environment variable {env_var} is not set; set it to the user PIN of PKCS#11 "
            f"token {token_label}"
        )
    return pin


def _resolve_module(module_path: str) -> str:
    """Return the real path of the module file.

    python-pkcs11 keeps one library object per path string, and a second path to the same file
    would call C_Initialize again, which fails. The real path makes every spelling share one.
    """
    if not module_path:
        raise KekConfigError("the PKCS#11 module path is empty; set the path of the module")
    resolved = os.path.realpath(module_path)
    if not os.path.isfile(resolved):
        raise KekConfigError(
            f"PKCS#11 module {module_path} does not exist; set the path of the HSM vendor's "
            "PKCS#11 library (for SoftHSM2, install the Debian package softhsm2 and use "
            "/usr/lib/softhsm/libsofthsm2.so)"
        )
    return resolved


def _check_label(setting: str, label: str) -> None:
    if not label or label != label.strip():
        raise KekConfigError(
            f"{setting} {label!r} is invalid; set a non-empty label without leading or trailing "
            "spaces"
        )


# -- provider --------------------------------------------------------------------------------


class Pkcs11KekProvider(KekProvider):
    """KEK provider whose KEK versions are AES-256 keys inside a PKCS#11 token.

    Build one with ``open``. Versions that another process or provider creates are found when
    ``unwrap`` meets one, because it then searches the token again. ``describe`` and ``wrap``
    keep the active version that this provider last saw until then.
    """

    name = PROVIDER_NAME

    def __init__(self, token_session: _TokenSession, key_label: str) -> None:
        """Wrap an acquired ``token_session``. Callers use ``open``, which acquires one."""
        self._token_session: _TokenSession | None = token_session
        self._key_label = key_label
        self._ring: _KeyRing | None = None
        self._ring_generation = 0

    def __repr__(self) -> str:
        token = self._token_session.token_label if self._token_session else None
        return f"Pkcs11KekProvider(token={token!r}, key_label={self._key_label!r})"

    @classmethod
    def open(
        cls,
        module_path: str,
        token_label: str,
        pin_env: str = DEFAULT_PIN_ENV,
        key_label: str = DEFAULT_KEY_LABEL,
        *,
        create_if_missing: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> Self:
        """Log in to the token and find the KEK versions with ``key_label``.

        With ``create_if_missing``, generates version 1 in the token if there is no version.
        Raises KekConfigError if the module, the token, the PIN or the key is missing or
        invalid, and KekUnavailable if the token fails. ``environ`` replaces ``os.environ``,
        for tests.
        """
        _check_label("token_label", token_label)
        _check_label("key_label", key_label)
        pin = _read_pin(pin_env, token_label, os.environ if environ is None else environ)
        module = _resolve_module(module_path)

        provider = cls(_acquire_token_session(module, token_label, pin, pin_env), key_label)
        try:
            ref = provider._run(
                "open",
                lambda session, ring: provider._ensure_version(session, ring, create_if_missing),
            )
        except BaseException:
            provider.close()
            raise
        logger.info(
            "opened PKCS#11 token %s (module %s): KEK label %s, active version %s",
            token_label,
            module,
            key_label,
            ref.version,
        )
        return provider

    # -- KekProvider

    def describe(self) -> KekRef:
        return self._run("describe", lambda _session, ring: self._ref(self._active_version(ring)))

    def wrap(self, key: bytes, *, associated_data: bytes) -> tuple[bytes, KekRef]:
        def encrypt(_session: Session, ring: _KeyRing) -> tuple[bytes, KekRef]:
            version = self._active_version(ring)
            # Random 96-bit IVs keep GCM safe for about 2**32 encryptions per key, and a KEK
            # version wraps far fewer keys than that.
            iv = os.urandom(IV_SIZE)
            ciphertext = _encrypt_gcm(ring.versions[version][0], iv, key, associated_data)
            return iv + ciphertext, self._ref(version)

        return self._run("wrap", encrypt)

    def unwrap(self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes) -> bytes:
        version = self._parse_ref(kek)
        if len(wrapped_key) < IV_SIZE + TAG_SIZE:
            raise UnwrapError()
        iv, ciphertext = wrapped_key[:IV_SIZE], wrapped_key[IV_SIZE:]

        def decrypt(session: Session, ring: _KeyRing) -> bytes:
            candidates = ring.versions.get(version)
            if not candidates:
                ring = self._reload(session)  # another provider or process may have rotated
                candidates = ring.versions.get(version)
            if not candidates:
                raise KekNotFound(
                    f"KEK {kek} not found: PKCS#11 token {self._token_label()} has no key with "
                    f"label {self._key_label!r} and CKA_ID v{version}"
                )
            for candidate in candidates:
                plaintext = _decrypt_gcm(candidate, iv, ciphertext, associated_data)
                if plaintext is not None:
                    return plaintext
            raise UnwrapError()

        return self._run("unwrap", decrypt)

    def rotate(self) -> KekRef:
        """Generate the next KEK version in the token and make it active.

        NOTE: two processes that rotate at the same moment can create two keys with the same
        version. Both keep working, because unwrap tries each, but rotate from one process.
        """

        def generate(session: Session, _ring: _KeyRing) -> KekRef:
            # Search the token again, so versions that other processes created are counted.
            ring = self._reload(session)
            new_version = max(ring.versions, default=0) + 1
            _generate_kek(session, self._key_label, new_version, self._token_label())
            return self._ref(self._active_version(self._reload(session)))

        ref = self._run("rotate", generate)
        logger.info(
            "rotated KEK %s on PKCS#11 token %s: version %s is active",
            self._key_label,
            self._token_label(),
            ref.version,
        )
        return ref

    def close(self) -> None:
        """Release this provider's share of the token session.

        The session logs out and closes when the last provider that uses the token closes.
        """
        shared = self._token_session
        if shared is None:
            return
        with shared.lock:
            if self._token_session is None:
                return  # another thread closed it first
            self._token_session = None
            self._ring = None
        _release_token_session(shared)

    # -- helpers

    def _run(self, operation: str, action: Callable[[Session, _KeyRing], T]) -> T:
        """Run ``action`` under the module lock, reopening the session once if it was lost."""
        shared = self._token_session
        if shared is None:
            raise KekUnavailable(self.name, "the provider was closed")
        with shared.lock:
            if self._token_session is None:
                raise KekUnavailable(self.name, "the provider was closed")

            session = shared.session
            if session is None:
                session = shared.reopen("an earlier failure to reach the token")
            try:
                return action(session, self._current_ring(shared, session))
            except PKCS11Error as exc:
                if not _is_session_error(exc):
                    raise KekUnavailable(
                        self.name, f"PKCS#11 {operation} failed with {_error_name(exc)}"
                    ) from exc
                cause = f"{operation} failed with {_error_name(exc)}"

            session = shared.reopen(cause)
            try:
                return action(session, self._current_ring(shared, session))
            except PKCS11Error as exc:
                raise KekUnavailable(
                    self.name,
                    f"PKCS#11 {operation} failed with {_error_name(exc)} after the session on "
                    f"token {shared.token_label} was reopened",
                ) from exc

    def _current_ring(self, shared: _TokenSession, session: Session) -> _KeyRing:
        """Return the cached key objects, or search the token if they belong to an old session."""
        ring = self._ring
        if ring is None or self._ring_generation != shared.generation:
            ring = self._reload(session)
            self._ring_generation = shared.generation
        return ring

    def _reload(self, session: Session) -> _KeyRing:
        ring = _find_versions(session, self._key_label, self._token_label())
        self._ring = ring
        return ring

    def _ensure_version(self, session: Session, ring: _KeyRing, create: bool) -> KekRef:
        if ring.versions:
            return self._ref(self._active_version(ring))
        if not create:
            raise KekConfigError(
                f"PKCS#11 token {self._token_label()} has no KEK with label "
                f"{self._key_label!r}; create version 1 by opening the provider once with "
                "create_if_missing=True, or check the key label"
            )
        _generate_kek(session, self._key_label, 1, self._token_label())
        return self._ref(self._active_version(self._reload(session)))

    def _active_version(self, ring: _KeyRing) -> int:
        if not ring.versions:
            raise KekNotFound(
                f"PKCS#11 token {self._token_label()} has no KEK with label {self._key_label!r} "
                "any more; restore the key objects from the HSM backup"
            )
        return max(ring.versions)

    def _parse_ref(self, kek: KekRef) -> int:
        if kek.provider != self.name:
            raise KekNotFound(f"KEK {kek} belongs to provider {kek.provider}, not {self.name}")
        if kek.key_id != self._key_label:
            raise KekNotFound(
                f"KEK {kek} not found: this provider uses key label {self._key_label!r}"
            )
        if not _VERSION_NAME.fullmatch(kek.version):
            raise KekNotFound(f"KEK {kek} not found: version is not a positive integer")
        return int(kek.version)

    def _ref(self, version: int) -> KekRef:
        return KekRef(provider=self.name, key_id=self._key_label, version=str(version))

    def _token_label(self) -> str:
        shared = self._token_session
        return shared.token_label if shared is not None else "(closed)"
