"""A KEK provider that keeps the KEK on the local machine, for development and tests only.

Do not use it in production: whoever can read the KEK file, or the passphrase and the salt
file, can unwrap every data key. Production KEKs belong in an HSM or a Vault Transit engine.

Two modes:

- KEK file: a JSON file, mode 0600, that contains every KEK version::

      {"format": "tokenvault-local-kek", "format_version": 1, "active_version": 2,
       "versions": {"1": "<base64 of 32 bytes>", "2": "<base64 of 32 bytes>"}}

  ``rotate`` adds a version. The key id of a version is ``file:`` and the first 8 hex digits
  of the SHA-256 of that version's key, so ``unwrap`` notices a KEK file that was replaced
  by another one.
- Passphrase: scrypt (n=2**15, r=8, p=1) derives a secret from a passphrase in an environment
  variable and a random 16-byte salt. HKDF-Expand turns that secret into the KEK and into a
  check value. The salt file (JSON, mode 0600) stores the salt and the check value, so a wrong
  passphrase is reported at start-up and not as an UnwrapError on every data key. The key id
  is ``passphrase:`` and a fingerprint of the salt. There is a single version, ``1``.

Wrapping is AES-256-GCM with a random 12-byte nonce. The blob is nonce || ciphertext || tag.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from keys.errors import KekConfigError, KekNotFound, KekUnavailable, UnwrapError
from keys.provider import KekProvider, KekRef

logger = logging.getLogger(__name__)

PROVIDER_NAME = "local"
DEFAULT_PASSPHRASE_ENV = "TOKENVAULT_KEK_PASSPHRASE"  # noqa: S105 - a variable name
MIN_PASSPHRASE_LENGTH = 16

KEK_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
SALT_SIZE = 16
CHECK_SIZE = 32
SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1

KEK_FILE_FORMAT = "tokenvault-local-kek"
SALT_FILE_FORMAT = "tokenvault-local-kek-salt"
FORMAT_VERSION = 1

# HKDF info labels: the KEK and the passphrase check value must be independent keys.
_WRAP_KEY_INFO = b"tokenvault/local-kek/v1/wrap-key"
_CHECK_VALUE_INFO = b"tokenvault/local-kek/v1/passphrase-check"

_VERSION_NAME = re.compile(r"[1-9][0-9]{0,8}")

_warning_lock = threading.Lock()
_warning_logged = False


def _log_not_for_production(key_id: str) -> None:
    """Log, once per process, that this provider must not protect production data."""
    global _warning_logged
    with _warning_lock:
        if _warning_logged:
            return
        _warning_logged = True
    logger.warning(
        "KEK provider local (key id %s) is for development and tests only, not for production: "
        "anyone who can read the KEK file or the passphrase can unwrap every data key",
        key_id,
    )


def _fingerprint(data: bytes) -> str:
    """Return the first 8 hex digits of SHA-256(data), which name a key without revealing it."""
    return hashlib.sha256(data).hexdigest()[:8]


# -- private files ---------------------------------------------------------------------------


def _read_private_file(path: Path, description: str) -> bytes:
    """Read a file that must be a regular file owned by this user with no group or other access.

    Raises FileNotFoundError when the file does not exist, so callers can decide whether to
    create it, and KekConfigError for every other problem.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KekConfigError(f"failed to open {description} {path}: {exc.strerror}") from exc

    # The checks use fstat on the open descriptor, so the file cannot be swapped between the
    # check and the read.
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise KekConfigError(f"{description} {path} is not a regular file")
        if status.st_uid != os.geteuid():
            raise KekConfigError(
                f"{description} {path} is owned by uid {status.st_uid}, not by the current "
                f"user (uid {os.geteuid()}); run chown {os.geteuid()} {path} or start the "
                "service as the file's owner"
            )
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            access = "readable" if mode & 0o044 else "accessible"
            raise KekConfigError(
                f"{description} {path} is {access} by group or others (mode {mode:04o}); "
                f"run chmod 600 {path}"
            )
        return file.read()


def _write_private_file(path: Path, data: bytes, *, replace: bool) -> None:
    """Write ``data`` to a new file with mode 0600.

    Without ``replace``, raises FileExistsError if ``path`` exists. With ``replace``, the data
    goes to a temporary file that then replaces ``path`` atomically, so a crash leaves either
    the old or the new file and never a partial one.
    """
    target = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp") if replace else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # set the mode exactly, whatever the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise

    directory = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)  # makes the new directory entry durable
    finally:
        os.close(directory)


def _decode_base64(encoded: Any, size: int) -> bytes | None:
    """Return the decoded bytes, or None unless ``encoded`` is base64 of exactly ``size`` bytes."""
    if not isinstance(encoded, str):
        return None
    try:
        decoded = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == size else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- KEK file --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _KeyRing:
    """The KEK versions and the active one, replaced as a whole so readers need no lock."""

    keys: Mapping[int, bytes] = field(repr=False)
    active_version: int


def _parse_kek_file(path: Path, raw: bytes) -> _KeyRing:
    def invalid(problem: str) -> KekConfigError:
        return KekConfigError(
            f"KEK file {path} is invalid: {problem}; restore it from a backup "
            "(data keys wrapped by a lost KEK cannot be recovered)"
        )

    try:
        document = json.loads(raw)
    except ValueError:
        raise invalid("it is not valid UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise invalid("the top level is not a JSON object")
    if document.get("format") != KEK_FILE_FORMAT:
        raise invalid(f'"format" is not "{KEK_FILE_FORMAT}"')
    if document.get("format_version") != FORMAT_VERSION or not _is_int(
        document.get("format_version")
    ):
        raise invalid(f'"format_version" is not {FORMAT_VERSION}, the only version supported')

    versions = document.get("versions")
    if not isinstance(versions, dict) or not versions:
        raise invalid('"versions" is not a non-empty JSON object')
    keys: dict[int, bytes] = {}
    for name, encoded in versions.items():
        if not _VERSION_NAME.fullmatch(name):
            raise invalid(f'version name "{name}" is not a positive integer')
        key = _decode_base64(encoded, KEK_SIZE)
        if key is None:
            raise invalid(f"version {name} is not base64 of {KEK_SIZE} bytes")
        keys[int(name)] = key

    active_version = document.get("active_version")
    if not _is_int(active_version) or active_version not in keys:
        raise invalid('"active_version" does not name one of "versions"')
    return _KeyRing(keys=keys, active_version=active_version)


def _format_kek_file(ring: _KeyRing) -> bytes:
    document = {
        "format": KEK_FILE_FORMAT,
        "format_version": FORMAT_VERSION,
        "active_version": ring.active_version,
        "versions": {
            str(version): base64.b64encode(key).decode("ascii")
            for version, key in sorted(ring.keys.items())
        },
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _load_kek_file(path: Path) -> _KeyRing:
    try:
        raw = _read_private_file(path, "KEK file")
    except FileNotFoundError:
        raise KekConfigError(
            f"KEK file {path} does not exist; create one with LocalKekProvider.create"
        ) from None
    return _parse_kek_file(path, raw)


# -- passphrase ------------------------------------------------------------------------------


def _read_passphrase(env_var: str, environ: Mapping[str, str]) -> bytes:
    passphrase = environ.get(env_var)
    if not passphrase:
        raise KekConfigError(
            f"environment variable {env_var} is not set; set it to the KEK passphrase "
            f"(at least {MIN_PASSPHRASE_LENGTH} characters)"
        )
    # NFC, so the same passphrase typed on systems that compose accents differently matches.
    passphrase = unicodedata.normalize("NFC", passphrase)
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise KekConfigError(
            f"the passphrase in {env_var} is shorter than {MIN_PASSPHRASE_LENGTH} characters; "
            "set a longer one"
        )
    return passphrase.encode("utf-8")


def _derive_from_passphrase(passphrase: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """Return the KEK and the check value for ``passphrase`` and ``salt``."""
    secret = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)
    kek = HKDFExpand(hashes.SHA256(), KEK_SIZE, _WRAP_KEY_INFO).derive(secret)
    check_value = HKDFExpand(hashes.SHA256(), CHECK_SIZE, _CHECK_VALUE_INFO).derive(secret)
    return kek, check_value


def _parse_salt_file(path: Path, raw: bytes) -> tuple[bytes, bytes]:
    """Return the salt and the check value stored in a salt file."""

    def invalid(problem: str) -> KekConfigError:
        return KekConfigError(
            f"KEK salt file {path} is invalid: {problem}; restore it from a backup "
            "(without the original salt, data keys wrapped under the passphrase are lost)"
        )

    try:
        document = json.loads(raw)
    except ValueError:
        raise invalid("it is not valid UTF-8 JSON") from None
    if not isinstance(document, dict) or document.get("format") != SALT_FILE_FORMAT:
        raise invalid(f'"format" is not "{SALT_FILE_FORMAT}"')
    if document.get("format_version") != FORMAT_VERSION or not _is_int(
        document.get("format_version")
    ):
        raise invalid(f'"format_version" is not {FORMAT_VERSION}, the only version supported')
    salt = _decode_base64(document.get("salt"), SALT_SIZE)
    if salt is None:
        raise invalid(f'"salt" is not base64 of {SALT_SIZE} bytes')
    check_value = _decode_base64(document.get("check"), CHECK_SIZE)
    if check_value is None:
        raise invalid(f'"check" is not base64 of {CHECK_SIZE} bytes')
    return salt, check_value


def _format_salt_file(salt: bytes, check_value: bytes) -> bytes:
    document = {
        "format": SALT_FILE_FORMAT,
        "format_version": FORMAT_VERSION,
        "salt": base64.b64encode(salt).decode("ascii"),
        "check": base64.b64encode(check_value).decode("ascii"),
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


# -- provider --------------------------------------------------------------------------------


class LocalKekProvider(KekProvider):
    """KEK provider backed by a local KEK file or a passphrase; for development and tests only.

    Build one with ``create``, ``load``, ``load_or_create`` or ``from_passphrase``.
    """

    name = PROVIDER_NAME

    def __init__(
        self, ring: _KeyRing, *, kek_file: Path | None, passphrase_key_id: str | None
    ) -> None:
        self._ring: _KeyRing | None = ring
        self._kek_file = kek_file
        self._passphrase_key_id = passphrase_key_id
        self._lock = threading.Lock()  # serialises rotate and reloads of the KEK file
        _log_not_for_production(self._key_id(ring, ring.active_version))

    # -- constructors

    @classmethod
    def create(cls, path: Path | str) -> Self:
        """Create a KEK file with one random version and return a provider that uses it.

        Raises KekConfigError if ``path`` exists, so an existing KEK is never overwritten.
        """
        path = Path(path)
        ring = _KeyRing(keys={1: secrets.token_bytes(KEK_SIZE)}, active_version=1)
        try:
            _write_private_file(path, _format_kek_file(ring), replace=False)
        except FileExistsError:
            raise KekConfigError(
                f"KEK file {path} already exists and is never overwritten; choose another path"
            ) from None
        except OSError as exc:
            raise KekConfigError(f"failed to create KEK file {path}: {exc.strerror}") from exc
        provider = cls(ring, kek_file=path, passphrase_key_id=None)
        logger.info("created KEK file %s with key id %s", path, provider.describe().key_id)
        return provider

    @classmethod
    def load(cls, path: Path | str) -> Self:
        """Load an existing KEK file. Raises KekConfigError if it is missing, unsafe or invalid."""
        path = Path(path)
        return cls(_load_kek_file(path), kek_file=path, passphrase_key_id=None)

    @classmethod
    def load_or_create(cls, path: Path | str) -> Self:
        """Load the KEK file at ``path``, creating it first if it does not exist."""
        path = Path(path)
        try:
            return cls.create(path)
        except KekConfigError:
            if not path.exists():
                raise
        return cls.load(path)

    @classmethod
    def from_passphrase(
        cls,
        salt_path: Path | str,
        *,
        env_var: str = DEFAULT_PASSPHRASE_ENV,
        environ: Mapping[str, str] | None = None,
    ) -> Self:
        """Derive the KEK from the passphrase in ``env_var`` and the salt in ``salt_path``.

        Creates the salt file when it does not exist. Raises KekConfigError when the variable is
        unset, the passphrase is shorter than 16 characters, the salt file is unsafe or invalid,
        or the passphrase differs from the one that the salt file was created with.
        ``environ`` replaces ``os.environ``, for tests.
        """
        salt_path = Path(salt_path)
        passphrase = _read_passphrase(env_var, os.environ if environ is None else environ)

        try:
            raw: bytes | None = _read_private_file(salt_path, "KEK salt file")
        except FileNotFoundError:
            raw = None

        if raw is None:
            salt = os.urandom(SALT_SIZE)
            kek, check_value = _derive_from_passphrase(passphrase, salt)
            try:
                _write_private_file(salt_path, _format_salt_file(salt, check_value), replace=False)
                logger.info("created KEK salt file %s", salt_path)
            except FileExistsError:
                # Another process created it first; use its salt.
                raw = _read_private_file(salt_path, "KEK salt file")
            except OSError as exc:
                raise KekConfigError(
                    f"failed to create KEK salt file {salt_path}: {exc.strerror}"
                ) from exc

        if raw is not None:
            salt, stored_check_value = _parse_salt_file(salt_path, raw)
            kek, check_value = _derive_from_passphrase(passphrase, salt)
            if not hmac.compare_digest(check_value, stored_check_value):
                raise KekConfigError(
                    f"the passphrase in {env_var} differs from the one that KEK salt file "
                    f"{salt_path} was created with; set the original passphrase"
                )

        ring = _KeyRing(keys={1: kek}, active_version=1)
        return cls(ring, kek_file=None, passphrase_key_id=f"passphrase:{_fingerprint(salt)}")

    # -- KekProvider

    def describe(self) -> KekRef:
        ring = self._current_ring()
        return self._ref(ring, ring.active_version)

    def wrap(self, key: bytes, *, associated_data: bytes) -> tuple[bytes, KekRef]:
        ring = self._current_ring()
        nonce = os.urandom(NONCE_SIZE)
        ciphertext = AESGCM(ring.keys[ring.active_version]).encrypt(nonce, key, associated_data)
        return nonce + ciphertext, self._ref(ring, ring.active_version)

    def unwrap(self, wrapped_key: bytes, kek: KekRef, *, associated_data: bytes) -> bytes:
        if kek.provider != self.name:
            raise KekNotFound(f"KEK {kek} belongs to provider {kek.provider}, not {self.name}")
        if not _VERSION_NAME.fullmatch(kek.version):
            raise KekNotFound(f"KEK {kek} not found: version is not a positive integer")
        version = int(kek.version)

        ring = self._current_ring()
        if version not in ring.keys:
            ring = self._reload()  # another process may have rotated the KEK file
        if version not in ring.keys:
            raise KekNotFound(f"KEK {kek} not found: provider local has no version {version}")
        expected_key_id = self._key_id(ring, version)
        if kek.key_id != expected_key_id:
            raise KekNotFound(
                f"KEK {kek} not found: version {version} of provider local has key id "
                f"{expected_key_id}, so the KEK file or salt file was replaced"
            )

        if len(wrapped_key) < NONCE_SIZE + TAG_SIZE:
            raise UnwrapError()
        nonce, ciphertext = wrapped_key[:NONCE_SIZE], wrapped_key[NONCE_SIZE:]
        try:
            return AESGCM(ring.keys[version]).decrypt(nonce, ciphertext, associated_data)
        except InvalidTag:
            raise UnwrapError() from None

    def rotate(self) -> KekRef:
        """Add a KEK version to the KEK file and make it active.

        NOTE: two processes that rotate the same file at the same moment can each write their
        own new version, and the later write wins. Rotate from one process at a time.
        """
        self._current_ring()
        if self._kek_file is None:
            raise KekConfigError(
                "a passphrase KEK cannot be rotated: its only version is derived from the "
                "passphrase, and changing the passphrase (which would rewrap every data key) "
                "is not supported by the local provider; use a KEK file to test rotation"
            )
        with self._lock:
            # Start from the file on disk so that versions added elsewhere are kept.
            current = _load_kek_file(self._kek_file)
            new_version = max(current.keys) + 1
            keys = dict(current.keys)
            keys[new_version] = secrets.token_bytes(KEK_SIZE)
            ring = _KeyRing(keys=keys, active_version=new_version)
            try:
                _write_private_file(self._kek_file, _format_kek_file(ring), replace=True)
            except OSError as exc:
                raise KekConfigError(
                    f"failed to write KEK file {self._kek_file}: {exc.strerror}"
                ) from exc
            self._ring = ring
        ref = self._ref(ring, new_version)
        logger.info(
            "rotated KEK file %s: version %s (key id %s) is active",
            self._kek_file,
            ref.version,
            ref.key_id,
        )
        return ref

    def close(self) -> None:
        # Python cannot wipe bytes objects; dropping the references is the most it can do.
        self._ring = None

    # -- helpers

    def _current_ring(self) -> _KeyRing:
        ring = self._ring
        if ring is None:
            raise KekUnavailable(self.name, "the provider was closed")
        return ring

    def _reload(self) -> _KeyRing:
        if self._kek_file is None:
            return self._current_ring()
        with self._lock:
            self._current_ring()
            ring = _load_kek_file(self._kek_file)
            self._ring = ring
            return ring

    def _key_id(self, ring: _KeyRing, version: int) -> str:
        if self._passphrase_key_id is not None:
            return self._passphrase_key_id
        return f"file:{_fingerprint(ring.keys[version])}"

    def _ref(self, ring: _KeyRing, version: int) -> KekRef:
        return KekRef(provider=self.name, key_id=self._key_id(ring, version), version=str(version))
