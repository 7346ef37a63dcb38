"""Ed25519 keys and signed checkpoints of the audit chain.

A checkpoint states that the chain contained the event ``seq`` with ``hash`` at ``signed_at``.
Anyone who can rewrite the audit table can recompute the hash chain, but cannot sign without
the private key. So any change at or before a checkpoint's seq, or the removal of the events up to
it, shows up when the checkpoints are verified with the public key alone.

Key files:

- private key: the raw 32-byte Ed25519 seed, base64 with a trailing newline, mode 0600. Only
  the service reads it.
- public key: the raw 32-byte Ed25519 public key, base64 with a trailing newline. Auditors need
  only this file. Its key id is the hex of the public key's first 8 bytes.

The signed message of a checkpoint is the ASCII prefix ``tokenvault-audit-checkpoint-v1`` and
a line feed (0x0a), followed by a JSON object with exactly the members ``seq`` (integer),
``hash`` (64 lowercase hex digits) and ``signed_at`` (RFC 3339 UTC with six fraction digits
and "Z"). The object is serialized like an event in ``vault.audit.chain``: keys sorted, no
whitespace, UTF-8. For example::

    tokenvault-audit-checkpoint-v1
    {"hash":"9f86…","seq":1200,"signed_at":"2024-05-01T12:00:00.000000Z"}

(with no line feed after the object). The signature is the 64-byte Ed25519 signature of that
message, as RFC 8032 defines it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import nacl.exceptions
import nacl.signing

from vault.audit.chain import HASH_SIZE, format_timestamp
from vault.errors import ConfigError

KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_ID_BYTES = 8
CHECKPOINT_PREFIX = b"tokenvault-audit-checkpoint-v1\n"


class AuditKeyError(ConfigError):
    """An audit key file is missing, malformed or readable by others."""


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the chain's event ``seq`` had ``hash`` at ``signed_at``."""

    seq: int
    hash: bytes
    signed_at: datetime
    signature: bytes
    key_id: str


def key_id(verify_key: nacl.signing.VerifyKey) -> str:
    """Return the key id: hex of the first 8 bytes of the public key."""
    return bytes(verify_key)[:KEY_ID_BYTES].hex()


def checkpoint_message(seq: int, chain_hash: bytes, signed_at: str) -> bytes:
    """Return the bytes a checkpoint signature covers; ``signed_at`` is the RFC 3339 string."""
    if len(chain_hash) != HASH_SIZE:
        raise ValueError(f"checkpoint hash must be {HASH_SIZE} bytes, got {len(chain_hash)}")
    body = {"hash": chain_hash.hex(), "seq": seq, "signed_at": signed_at}
    encoded = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return CHECKPOINT_PREFIX + encoded.encode("utf-8")


def sign_checkpoint(
    signing_key: nacl.signing.SigningKey, seq: int, chain_hash: bytes, signed_at: datetime
) -> Checkpoint:
    """Sign the chain head (``seq``, ``chain_hash``) as of ``signed_at``."""
    message = checkpoint_message(seq, chain_hash, format_timestamp(signed_at))
    signature = signing_key.sign(message).signature
    return Checkpoint(
        seq=seq,
        hash=chain_hash,
        signed_at=signed_at,
        signature=signature,
        key_id=key_id(signing_key.verify_key),
    )


def is_valid_checkpoint_signature(
    verify_key: nacl.signing.VerifyKey,
    seq: int,
    chain_hash: bytes,
    signed_at: str,
    signature: bytes,
) -> bool:
    """Return whether ``signature`` is ``verify_key``'s signature of the checkpoint."""
    if len(signature) != SIGNATURE_SIZE or len(chain_hash) != HASH_SIZE:
        return False
    try:
        verify_key.verify(checkpoint_message(seq, chain_hash, signed_at), signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def generate_keypair(private_path: Path | str, public_path: Path | str) -> nacl.signing.VerifyKey:
    """Create a new signing key in ``private_path`` (mode 0600) and its public key file.

    Raises AuditKeyError if either file exists, so an existing key is never overwritten.
    """
    private_path = Path(private_path)
    public_path = Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise AuditKeyError("the private and public key files must be different paths")
    for path in (private_path, public_path):
        if path.exists():
            raise AuditKeyError(f"key file {path} already exists and is never overwritten")

    signing_key = nacl.signing.SigningKey.generate()
    _write_new_file(private_path, _encode(bytes(signing_key)), mode=0o600)
    try:
        _write_new_file(public_path, _encode(bytes(signing_key.verify_key)), mode=0o644)
    except AuditKeyError:
        # A private key without its public half cannot be used for verification.
        private_path.unlink(missing_ok=True)
        raise
    return signing_key.verify_key


def load_signing_key(path: Path | str) -> nacl.signing.SigningKey:
    """Read a private key file; it must be a regular file without group or other access."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise AuditKeyError(f"failed to open audit signing key {path}: {exc.strerror}") from None
    # fstat on the open descriptor, so the file cannot be swapped between check and read.
    with os.fdopen(fd, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise AuditKeyError(f"audit signing key {path} is not a regular file")
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            raise AuditKeyError(
                f"audit signing key {path} is accessible by group or others (mode {mode:04o});"
                f" run chmod 600 {path}"
            )
        seed = _decode(file.read(), path, "audit signing key")
    return nacl.signing.SigningKey(seed)


def load_verify_key(path: Path | str) -> nacl.signing.VerifyKey:
    """Read a public key file written by ``generate_keypair``."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AuditKeyError(f"failed to read audit public key {path}: {exc.strerror}") from None
    return nacl.signing.VerifyKey(_decode(data, path, "audit public key"))


def _encode(raw: bytes) -> bytes:
    return base64.b64encode(raw) + b"\n"


def _decode(data: bytes, path: Path, description: str) -> bytes:
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_SIZE:
        raise AuditKeyError(
            f"{description} {path} is not base64 of {KEY_SIZE} bytes;"
            " create keys with `tokenvault audit keygen`"
        )
    return raw


def _write_new_file(path: Path, data: bytes, *, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise AuditKeyError(f"key file {path} already exists and is never overwritten") from None
    except OSError as exc:
        raise AuditKeyError(f"failed to create key file {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # set the mode exactly, whatever the umask
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise AuditKeyError(f"failed to write key file {path}: {exc.strerror}") from None
