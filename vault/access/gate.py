"""The access checks that run before scopes: revocation, certificate pinning, source, suspension.

``AccessGate.check`` raises on the first failed check, in this order (status, message):

1. identity revoked: PERMISSION_DENIED, "caller identity is revoked"
2. certificate serial revoked: PERMISSION_DENIED, "client certificate serial is revoked"
3. fingerprint not pinned: UNAUTHENTICATED,
   "client certificate is not one pinned for this identity"
4. source address not listed: PERMISSION_DENIED,
   "source address is not allowed for this identity"
5. identity suspended: PERMISSION_DENIED, "caller is suspended: <reason>"

Pinning and source rules come from the caller's policy entry, so an identity the policy does
not list passes them and is refused later for lack of scopes. A stale revocation or suspension
list raises Unavailable (UNAVAILABLE), because the gate fails closed.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Protocol
from urllib.parse import unquote

from vault.access.policy_store import PolicyStore
from vault.errors import AccessRefused, Unauthenticated
from vault.identity import Caller

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RevocationChecks(Protocol):
    def is_identity_revoked(self, identity: str) -> bool: ...

    def is_serial_revoked(self, serial: int) -> bool: ...


class SuspensionChecks(Protocol):
    def suspension_reason(self, identity: str) -> str | None: ...


class AccessGate:
    def __init__(
        self,
        policy_store: PolicyStore,
        revocations: RevocationChecks,
        suspensions: SuspensionChecks,
    ) -> None:
        self._policy_store = policy_store
        self._revocations = revocations
        self._suspensions = suspensions

    def check(self, caller: Caller, peer: str) -> None:
        """Raise AccessRefused or Unauthenticated if ``caller`` may not call from ``peer``.

        ``peer`` is the gRPC peer string (``context.peer()``).
        """
        if self._revocations.is_identity_revoked(caller.identity):
            raise AccessRefused("caller identity is revoked", reason="identity_revoked")
        if self._revocations.is_serial_revoked(caller.serial_number):
            raise AccessRefused("client certificate serial is revoked", reason="serial_revoked")

        entry = self._policy_store.current().caller(caller.identity)
        if entry is not None and entry.fingerprints:
            if caller.fingerprint_sha256.lower() not in entry.fingerprints:
                raise Unauthenticated("client certificate is not one pinned for this identity")
        if entry is not None and entry.source_networks:
            address = parse_peer(peer)
            # A peer without an IP address (a Unix socket) cannot match, so it is refused.
            if address is None or not any(address in net for net in entry.source_networks):
                raise AccessRefused(
                    "source address is not allowed for this identity", reason="source_not_allowed"
                )

        reason = self._suspensions.suspension_reason(caller.identity)
        if reason is not None:
            raise AccessRefused(f"caller is suspended: {reason}", reason="suspended")


def parse_peer(peer: str) -> IPAddress | None:
    """Return the IP address of a gRPC peer string, or None if it has none or is malformed.

    Handles ``ipv4:127.0.0.1:5555``, ``ipv6:[::1]:5555`` and its percent-encoded form
    ``ipv6:%5B::1%5D:5555`` (grpcio 1.85 sends that one). An IPv4-mapped IPv6 address
    (``::ffff:10.0.0.1``, from a dual-stack socket) becomes the IPv4 address, and a zone
    (``fe80::1%eth0``) is dropped. ``unix:`` and other schemes return None.
    """
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        host, _, _port = rest.rpartition(":")
        address = _address(host)
        return address if isinstance(address, ipaddress.IPv4Address) else None
    if scheme == "ipv6":
        rest = unquote(rest)
        if not rest.startswith("["):
            return None
        host, bracket, _port = rest[1:].partition("]")
        if not bracket:
            return None
        address = _address(host.partition("%")[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped
        return address if isinstance(address, ipaddress.IPv6Address) else None
    return None


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
