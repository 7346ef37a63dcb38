"""The policy in force, reloaded when its file changes or on request.

``PolicyStore`` loads the file at construction, so a replica does not start with an invalid
policy. After ``start()`` it checks the file every ``poll_seconds`` and reloads when the file's
SHA-256 changed. A file that fails validation never replaces the policy in force: the store keeps
the previous policy, logs a WARNING naming the file and the error, and reports the error in
``status()`` until a valid file is loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from vault.asynctools import cancel_and_wait
from vault.errors import ConfigError
from vault.policy import Policy, parse_policy_bytes

logger = logging.getLogger(__name__)

# Within this many seconds of a file's mtime, another write may leave mtime and size unchanged
# (file systems with coarse timestamps), so the file is read and hashed on every poll.
_RECENT_WRITE_SECONDS = 2.0
# A policy file larger than this is refused; real ones are a few kilobytes.
MAX_POLICY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ReloadResult:
    """Outcome of one reload: ``applied`` is False when the file was rejected (see ``error``).

    ``loaded_at`` and ``sha256`` describe the policy in force after the attempt, which is the
    previous one when the file was rejected.
    """

    applied: bool
    error: str | None
    loaded_at: datetime
    sha256: str


@dataclass(frozen=True)
class PolicyStatus:
    """State of the store: the policy in force and the latest reload attempt."""

    path: Path
    loaded_at: datetime
    sha256: str
    caller_count: int
    last_attempt_at: datetime
    last_error: str | None


class PolicyStore:
    def __init__(
        self, path: Path, *, known_templates: Iterable[str], poll_seconds: float = 1.0
    ) -> None:
        """Load the policy file; ConfigError if it is missing or invalid."""
        if poll_seconds <= 0:
            raise ValueError("poll_seconds must be greater than 0")
        self._path = path
        self._known_templates = frozenset(known_templates)
        self._poll_seconds = poll_seconds
        self._task: asyncio.Task[None] | None = None
        # Set while the file was written too recently to read; cleared once it is read.
        self._recheck = False

        data = self._read()
        now = datetime.now(UTC)
        self._policy = parse_policy_bytes(data, source=path, known_templates=self._known_templates)
        self._sha256 = hashlib.sha256(data).hexdigest()
        self._loaded_at = now
        self._last_attempt_at = now
        self._last_error: str | None = None
        # The file version the poll last acted on; a reload is attempted once per version.
        self._seen_signature = self._signature()
        self._seen_sha256 = self._sha256

    def current(self) -> Policy:
        """Return the policy in force; cheap enough to call on every request."""
        return self._policy

    @property
    def path(self) -> Path:
        return self._path

    @property
    def last_loaded_at(self) -> datetime:
        return self._loaded_at

    @property
    def last_attempt_at(self) -> datetime:
        return self._last_attempt_at

    @property
    def last_error(self) -> str | None:
        """Why the latest reload attempt failed, or None if it succeeded."""
        return self._last_error

    def status(self) -> PolicyStatus:
        return PolicyStatus(
            path=self._path,
            loaded_at=self._loaded_at,
            sha256=self._sha256,
            caller_count=len(self._policy.callers),
            last_attempt_at=self._last_attempt_at,
            last_error=self._last_error,
        )

    def reload(self) -> ReloadResult:
        """Read and validate the file now, and put it in force if it is valid."""
        self._seen_signature = self._signature()
        try:
            data = self._read()
        except ConfigError as exc:
            return self._reject(str(exc))
        return self._apply(data)

    async def start(self) -> None:
        """Start checking the file for changes every ``poll_seconds``."""
        if self._task is not None:
            raise RuntimeError("PolicyStore is already started")
        self._task = asyncio.create_task(self._poll(), name="tokenvault-policy-poll")
        self._task.add_done_callback(self._log_unexpected_end)
        logger.info("watching policy file %s every %.1f s", self._path, self._poll_seconds)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        await cancel_and_wait([task], "the policy file poll")

    # -- polling

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                self._check_file()
            except Exception:  # noqa: BLE001 - one bad poll must not end reloading for good
                logger.exception("policy file check failed; trying again at the next poll")

    def _check_file(self) -> None:
        signature = self._signature()
        if signature is None:
            if self._seen_signature is not None:
                self._seen_signature = None
                # A file recreated with the content in force must still clear the error.
                self._seen_sha256 = ""
                try:
                    self._read()
                except ConfigError as exc:
                    self._reject(str(exc))
            return
        if _written_recently(signature[0]):
            # The file may still be being written, and a half-written file can parse and open
            # access that the finished one closes. Read it once it has been still for a while;
            # until then a rewrite that kept size and mtime is still looked at.
            self._recheck = True
            return
        if signature == self._seen_signature and not self._recheck:
            return
        self._recheck = False
        self._seen_signature = signature
        try:
            data = self._read()
        except ConfigError as exc:
            self._reject(str(exc))
            return
        sha256 = hashlib.sha256(data).hexdigest()
        if sha256 != self._seen_sha256:
            self._apply(data)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            status = os.stat(self._path)
        except OSError:
            return None
        # st_ino changes when the file is replaced by a rename, as editors that save atomically
        # and Kubernetes ConfigMap volumes do.
        return status.st_mtime_ns, status.st_size, status.st_ino

    # -- loading

    def _read(self) -> bytes:
        try:
            status = os.stat(self._path)
            if not stat.S_ISREG(status.st_mode):
                # A FIFO would block the event loop and a device such as /dev/zero never ends.
                raise ConfigError(f"policy file {self._path} is not a regular file")
            if status.st_size > MAX_POLICY_BYTES:
                raise ConfigError(
                    f"policy file {self._path} is larger than {MAX_POLICY_BYTES} bytes"
                )
            with self._path.open("rb") as handle:
                data = handle.read(MAX_POLICY_BYTES + 1)
            if len(data) > MAX_POLICY_BYTES:
                raise ConfigError(
                    f"policy file {self._path} is larger than {MAX_POLICY_BYTES} bytes"
                )
            return data
        except FileNotFoundError:
            raise ConfigError(f"policy file {self._path} does not exist") from None
        except OSError as exc:
            raise ConfigError(
                f"policy file {self._path} could not be read: {exc.strerror}"
            ) from None

    def _apply(self, data: bytes) -> ReloadResult:
        sha256 = hashlib.sha256(data).hexdigest()
        self._seen_sha256 = sha256
        try:
            policy = parse_policy_bytes(
                data, source=self._path, known_templates=self._known_templates
            )
        except ConfigError as exc:
            return self._reject(str(exc))
        if not policy.callers and self._policy.callers:
            return self._reject(
                f"policy file {self._path} lists no callers; refusing it, because it would lock"
                " out every caller, administrators included"
            )

        now = datetime.now(UTC)
        self._policy = policy
        self._sha256 = sha256
        self._loaded_at = now
        self._last_attempt_at = now
        self._last_error = None
        logger.info(
            "loaded policy file %s (sha256 %s, %d callers)",
            self._path,
            sha256[:12],
            len(policy.callers),
        )
        return ReloadResult(applied=True, error=None, loaded_at=now, sha256=sha256)

    def _reject(self, error: str) -> ReloadResult:
        self._last_attempt_at = datetime.now(UTC)
        self._last_error = error
        logger.warning("kept the previous policy, because the new one is invalid: %s", error)
        return ReloadResult(
            applied=False, error=error, loaded_at=self._loaded_at, sha256=self._sha256
        )

    @staticmethod
    def _log_unexpected_end(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "the policy file poll stopped; changes to the file are no longer loaded",
                exc_info=task.exception(),
            )


def _written_recently(mtime_ns: int) -> bool:
    return time.time() - mtime_ns / 1e9 < _RECENT_WRITE_SECONDS
