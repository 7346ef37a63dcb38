"""Caller administration: revocations, suspensions and the policy file, behind one object.

The gRPC edge (``vault.caller_admin_servicer``) checks the scope admin:callers and passes the
caller's identity as ``actor``. The revocation and suspension lists validate their input and log
each change with its actor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import asyncpg

from vault.access.policy_store import PolicyStatus, PolicyStore, ReloadResult
from vault.access.revocation import Revocation, RevocationList
from vault.access.suspension import Suspension, Suspensions
from vault.errors import FailedPrecondition
from vault.freetext import check_free_text

logger = logging.getLogger(__name__)


class CallerAdministration:
    def __init__(
        self,
        *,
        policy_store: PolicyStore,
        revocations: RevocationList,
        suspensions: Suspensions,
        pool: asyncpg.Pool,
    ) -> None:
        self._pool = pool
        self._policy_store = policy_store
        self._revocations = revocations
        self._suspensions = suspensions

    # Revocations

    async def revoke_caller(
        self, *, identity: str | None, serial: str | None, reason: str, actor: str
    ) -> Revocation:
        """Revoke an identity or a certificate serial (hex); exactly one must be given.

        An administrator cannot revoke its own identity, because that could leave no
        administrator able to restore it.
        """
        check_free_text("reason", reason)
        if identity is not None:
            check_free_text("identity", identity)
        if identity is not None and identity == actor:
            raise FailedPrecondition(
                "identity: an administrator cannot revoke its own identity; ask another holder"
                " of admin:callers"
            )
        return await self._revocations.revoke(
            identity=identity, serial=serial, reason=reason, actor=actor
        )

    async def restore_caller(
        self, *, identity: str | None, serial: str | None, actor: str
    ) -> Revocation:
        return await self._revocations.restore(identity=identity, serial=serial, actor=actor)

    async def revocations(self) -> Sequence[Revocation]:
        return await self._revocations.list()

    # Suspensions

    async def lift_suspension(self, identity: str, *, actor: str) -> Suspension:
        """Lift a suspension and forget the caller's current detokenize windows.

        Without the reset, the next call would count against the window that tripped the
        suspension and suspend the caller again at once.
        """
        suspension = await self._suspensions.lift(identity, actor)
        await self._pool.execute("DELETE FROM tv_detokenize_windows WHERE identity = $1", identity)
        return suspension

    async def suspensions(self) -> Sequence[Suspension]:
        return await self._suspensions.active()

    # Policy file

    def reload_policy(self, *, actor: str) -> ReloadResult:
        """Reload this replica's policy file; a rejected file leaves the policy in force."""
        result = self._policy_store.reload()
        logger.info(
            "policy reload requested",
            extra={"actor": actor, "applied": result.applied, "sha256": result.sha256},
        )
        return result

    def policy_status(self) -> PolicyStatus:
        return self._policy_store.status()
