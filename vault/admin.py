"""Key administration: which keys a template's rotation touches, and background re-encryption.

The key lifecycle itself (states, dual control, rewrap) is in ``keys.lifecycle``, and this module
adds what depends on templates. A vaulted template rotates its AES-GCM key, and its index key
too when it is convergent. A vaultless template rotates its FF1 key only when its tokens carry
a key version. Otherwise the FF1 key is pinned, and a rotation is rejected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from keys.datakeys import Purpose
from keys.lifecycle import DestroyRequest, KeyEvent, KeyLifecycle, KeyState, KeyVersionInfo
from keys.provider import KekProvider, KekRef
from keys.reencrypt import JobStatus, Reencryptor
from vault.errors import FailedPrecondition, InvalidValue, NotFound
from vault.formats.base import Mode, Template
from vault.modes.vaultless import VaultlessTokenizer

logger = logging.getLogger(__name__)

MAX_EVENTS = 1000


class KeyAdministration:
    def __init__(
        self,
        *,
        templates: Mapping[str, Template],
        lifecycle: KeyLifecycle,
        reencryptor: Reencryptor,
        provider: KekProvider,
        vaultless: VaultlessTokenizer,
    ) -> None:
        self._templates = templates
        self._lifecycle = lifecycle
        self._reencryptor = reencryptor
        self._provider = provider
        self._vaultless = vaultless
        self._stop = asyncio.Event()
        self._jobs: set[asyncio.Task[JobStatus]] = set()

    # Listing

    async def list_keys(self, template: str = "") -> tuple[list[KeyVersionInfo], KekRef]:
        if template:
            self._template(template)
        versions = await self._lifecycle.list_versions(template or None)
        kek = await asyncio.to_thread(self._provider.describe)
        return versions, kek

    async def events(self, template: str = "", limit: int = 100) -> list[KeyEvent]:
        if not 0 <= limit <= MAX_EVENTS:
            raise InvalidValue("limit", f"must be 1 to {MAX_EVENTS} (0 means 100)")
        if template:
            self._template(template)
        return await self._lifecycle.events(template=template or None, limit=limit or 100)

    async def destroy_requests(self, *, pending_only: bool) -> list[DestroyRequest]:
        return await self._lifecycle.destroy_requests(pending_only=pending_only)

    # Rotation

    async def rotate_data_key(
        self, template_name: str, purposes: Sequence[str], *, actor: str
    ) -> list[KeyVersionInfo]:
        template = self._template(template_name)
        chosen = [_purpose(p) for p in purposes] or key_purposes(template)
        if len(set(chosen)) != len(chosen):
            raise InvalidValue("purposes", "must not name a purpose twice")
        for purpose in chosen:
            self._check_rotatable(template, purpose)
        if Purpose.FPE in chosen:
            await self._check_fpe_version_room(template)

        rotated = []
        for purpose in chosen:
            cap = template.max_key_versions if purpose is Purpose.FPE else None
            rotated.append(
                await self._lifecycle.rotate(template.name, purpose, actor=actor, max_version=cap)
            )
        self._vaultless.forget(template.name)
        logger.info(
            "data keys rotated",
            extra={
                "template": template.name,
                "purposes": [p.value for p in chosen],
                "actor": actor,
                "versions": [info.version for info in rotated],
            },
        )
        return rotated

    async def rotate_kek(self, *, actor: str) -> tuple[KekRef, int]:
        kek, rewrapped = await self._lifecycle.rotate_kek(actor=actor)
        logger.info("KEK rotated", extra={"kek": str(kek), "rewrapped": rewrapped, "actor": actor})
        return kek, rewrapped

    async def set_key_state(
        self, template: str, purpose: str, version: int, state: str, *, actor: str
    ) -> KeyVersionInfo:
        self._template(template)
        try:
            target = KeyState(state)
        except ValueError:
            raise InvalidValue("state", 'must be "retired" or "decrypt_only"') from None
        info = await self._lifecycle.set_state(
            template, _purpose(purpose), version, target, actor=actor
        )
        self._vaultless.forget(template)
        return info

    # Destruction (dual control)

    async def propose_destroy(
        self, template: str, purpose: str, version: int, *, force: bool, actor: str
    ) -> DestroyRequest:
        self._template(template)
        return await self._lifecycle.propose_destroy(
            template, _purpose(purpose), version, actor=actor, force=force
        )

    async def approve_destroy(self, request_id: int, *, actor: str) -> DestroyRequest:
        request = await self._lifecycle.approve_destroy(request_id, actor=actor)
        self._vaultless.forget(request.template)
        return request

    async def cancel_destroy(self, request_id: int, *, actor: str) -> DestroyRequest:
        return await self._lifecycle.cancel_destroy(request_id, actor=actor)

    # Re-encryption

    async def start_reencryption(
        self, template_name: str, *, batch_size: int, max_rows_per_second: int, actor: str
    ) -> JobStatus:
        template = self._template(template_name)
        if template.mode is not Mode.VAULTED:
            raise FailedPrecondition(
                f"template {template.name} is vaultless: it stores no rows to re-encrypt"
            )
        if not 0 <= batch_size <= 10_000:
            raise InvalidValue("batch_size", "must be 1 to 10000 (0 means 500)")
        if max_rows_per_second < 0:
            raise InvalidValue("max_rows_per_second", "must not be negative (0 means no bound)")
        job = await self._reencryptor.start(
            template.name,
            actor=actor,
            batch_size=batch_size or 500,
            max_rows_per_second=max_rows_per_second or None,
            convergent=template.convergent,
        )
        self._spawn(self._reencryptor.run(job.id, stop=self._stop))
        return job

    async def pause_reencryption(self, job_id: int) -> JobStatus:
        return await self._reencryptor.pause(job_id)

    async def resume_reencryption(self, job_id: int) -> JobStatus:
        status = await self._reencryptor.set_running(job_id)
        self._spawn(self._reencryptor.run(job_id, stop=self._stop))
        return status

    async def reencryption(self, job_id: int) -> JobStatus:
        return await self._reencryptor.status(job_id)

    async def reencryptions(self, template: str = "", *, unfinished_only: bool) -> list[JobStatus]:
        if template:
            self._template(template)
        return await self._reencryptor.jobs(
            template=template or None, unfinished_only=unfinished_only
        )

    # Background work

    async def start_background(self) -> None:
        """Pick up re-encryption jobs that a stopped server left running."""
        for task in await self._reencryptor.resume_unfinished(self._stop):
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def close(self) -> None:
        """Ask running jobs to stop after their current batch, and wait for them."""
        self._stop.set()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, JobStatus]) -> None:
        task = asyncio.create_task(coroutine)
        self._jobs.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[JobStatus]) -> None:
        self._jobs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(
                "re-encryption runner failed",
                extra={"error": type(task.exception()).__name__},
            )

    # Checks

    def _template(self, name: str) -> Template:
        template = self._templates.get(name)
        if template is None:
            raise NotFound("template: no template has that name")
        return template

    @staticmethod
    def _check_rotatable(template: Template, purpose: Purpose) -> None:
        if template.mode is Mode.VAULTLESS and purpose is not Purpose.FPE:
            raise InvalidValue(
                "purposes", f"template {template.name} is vaultless and uses only an fpe key"
            )
        if template.mode is Mode.VAULTED and purpose is Purpose.FPE:
            raise InvalidValue("purposes", f"template {template.name} is vaulted: no fpe key")
        if purpose is Purpose.FPE and template.max_key_versions <= 1:
            raise FailedPrecondition(
                f"template {template.name}: its tokens carry no key version, so its FF1 key is"
                " pinned and cannot rotate (rotate the KEK instead; PAN templates with"
                ' luhn = "invalid" carry a version)'
            )
        if purpose is Purpose.INDEX and not template.convergent:
            raise InvalidValue(
                "purposes", f"template {template.name} is not convergent: no index key"
            )

    async def _check_fpe_version_room(self, template: Template) -> None:
        versions = await self._lifecycle.list_versions(template.name)
        newest = max((v.version for v in versions if v.purpose is Purpose.FPE), default=0)
        if newest >= template.max_key_versions:
            raise FailedPrecondition(
                f"template {template.name}: its tokens can carry FF1 key versions 1 to"
                f" {template.max_key_versions}, and version {newest} exists"
            )


def _purpose(name: str) -> Purpose:
    try:
        return Purpose(name)
    except ValueError:
        raise InvalidValue("purpose", 'must be "fpe", "aead" or "index"') from None


def key_purposes(template: Template) -> list[Purpose]:
    """Return the data keys a template uses: FF1 if vaultless, AES-GCM (and index) if vaulted."""
    if template.mode is Mode.VAULTLESS:
        return [Purpose.FPE]
    return [Purpose.AEAD, Purpose.INDEX] if template.convergent else [Purpose.AEAD]
