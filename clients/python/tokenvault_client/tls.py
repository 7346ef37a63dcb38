"""Mutual-TLS settings: the server's CA and the client's certificate and private key."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

StrPath = str | os.PathLike[str]


@dataclass(frozen=True)
class TlsConfig:
    """PEM-encoded material for a mutual-TLS channel.

    ``ca_cert`` verifies the server, and the server verifies ``client_cert`` against its own CA.
    ``server_name`` overrides the host name checked against the server certificate, for when
    the target is an address that the certificate does not list.
    """

    ca_cert: bytes = field(repr=False)
    client_cert: bytes = field(repr=False)
    client_key: bytes = field(repr=False)
    server_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("ca_cert", "client_cert", "client_key"):
            if not getattr(self, name):
                raise ValueError(f"TlsConfig.{name} is empty: expected PEM-encoded bytes")

    @classmethod
    def from_files(
        cls, ca: StrPath, cert: StrPath, key: StrPath, server_name: str | None = None
    ) -> TlsConfig:
        """Read the three PEM files; a missing file raises FileNotFoundError naming it."""
        return cls(
            ca_cert=Path(ca).read_bytes(),
            client_cert=Path(cert).read_bytes(),
            client_key=Path(key).read_bytes(),
            server_name=server_name,
        )
