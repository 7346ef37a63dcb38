"""Service settings: one TOML file, read at start-up, every setting defined here once.

Example (paths are relative to the file's folder)::

    [server]
    listen = "0.0.0.0:8443"          # host:port to serve gRPC on
    max_batch_items = 10000          # items per Tokenize/Detokenize request
    max_message_bytes = 16777216     # largest request the server reads, in bytes
    shutdown_grace_seconds = 10      # how long in-flight calls may finish on shutdown

    [tls]                            # required: the server only speaks mutual TLS
    cert_file = "server.pem"
    key_file = "server-key.pem"
    client_ca_file = "clients-ca.pem"

    [database]
    dsn_env = "TOKENVAULT_DATABASE_DSN"   # or dsn = "postgresql://..." (the env form keeps
    min_connections = 2                   # the password out of the file)
    max_connections = 10

    [kek]
    provider = "pkcs11"              # "local" (development only), "pkcs11" or "vault-transit"

    # provider = "local":
    #   file = "kek.json"            # or passphrase_env = "..." with salt_file = "kek.salt"
    # provider = "pkcs11" (an HSM):
    #   module = "/usr/lib/softhsm/libsofthsm2.so"   # the vendor's PKCS#11 library
    #   token_label = "tokenvault"
    #   pin_env = "TOKENVAULT_HSM_PIN"                # variable holding the user PIN
    #   key_label = "tokenvault-kek"
    #   create_if_missing = false                     # true once, to generate version 1
    # provider = "vault-transit" (HashiCorp Vault or OpenBao):
    #   address = "https://vault.example:8200"
    #   mount = "transit"
    #   key_name = "tokenvault-kek"
    #   auth_method = "token"        # token_env = "VAULT_TOKEN"; or "approle" with
    #                                # role_id_env and secret_id_env
    #   ca_file = "vault-ca.pem"
    #   namespace = "..."            # Vault Enterprise namespaces
    #   timeout_seconds = 5
    #   create_if_missing = false
    # [kek.previous]                 # while moving to a new provider: the old one, same keys;
    # provider = "local"             # rotate-kek then rewraps every data key under [kek]
    # file = "kek.json"
    [policy]
    file = "policy.toml"             # reloaded when it changes; a broken file keeps the old one

    [audit]
    signing_key_file = "audit-signing.key"   # Ed25519 key that signs chain checkpoints
                                             # (tokenvault audit keygen); without it the chain
                                             # is kept but not signed
    checkpoint_seconds = 60          # how often the chain head is signed
    stream = "audit.jsonl"           # optional: also append committed events as JSON lines
                                     # to this file ("-" for stdout)

    [telemetry]
    traces = "otlp"                  # "off" (default), "console" or "otlp"
    metrics = "otlp"
    otlp_endpoint = "http://127.0.0.1:4317"

    [templates]
    include_defaults = true          # the shipped templates (vault/formats/defaults.toml)
    [templates.card_short]           # extra or overriding templates
    type = "pan"
    mode = "vaulted"

Security settings fail closed: a missing TLS file, an unreadable key or an unknown key raises
``ConfigError`` naming the setting.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vault.errors import ConfigError
from vault.telemetry import TelemetrySettings, parse_telemetry

DEFAULT_LISTEN = "127.0.0.1:8443"
DEFAULT_MAX_BATCH_ITEMS = 10_000
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_GRACE_SECONDS = 10.0
HARD_MAX_BATCH_ITEMS = 100_000


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path


@dataclass(frozen=True)
class Pkcs11Settings:
    module: Path
    token_label: str
    pin_env: str = "TOKENVAULT_HSM_PIN"
    key_label: str = "tokenvault-kek"
    create_if_missing: bool = False


@dataclass(frozen=True)
class VaultTransitSettings:
    address: str
    mount: str = "transit"
    key_name: str = "tokenvault-kek"
    auth_method: str = "token"
    token_env: str = "VAULT_TOKEN"  # noqa: S105 - a variable name, not a secret
    role_id_env: str = "VAULT_ROLE_ID"
    secret_id_env: str = "VAULT_SECRET_ID"  # noqa: S105 - a variable name
    approle_mount: str = "approle"
    ca_file: Path | None = None
    namespace: str | None = None
    timeout_seconds: float = 5.0
    create_if_missing: bool = False


@dataclass(frozen=True)
class KekSettings:
    provider: str = "local"
    file: Path | None = None
    passphrase_env: str | None = None
    salt_file: Path | None = None
    pkcs11: Pkcs11Settings | None = None
    vault_transit: VaultTransitSettings | None = None
    # The provider that wrapped the data keys before this one, while they are moved over.
    previous: KekSettings | None = None


@dataclass(frozen=True)
class AuditSettings:
    signing_key_file: Path | None = None
    checkpoint_seconds: float = 60.0
    stream: Path | str | None = None


@dataclass(frozen=True, repr=False)
class Settings:
    listen: str
    tls: TlsSettings
    dsn: str
    kek: KekSettings
    policy_file: Path
    templates: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    include_default_templates: bool = True
    max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    shutdown_grace_seconds: float = DEFAULT_GRACE_SECONDS
    min_connections: int = 2
    max_connections: int = 10
    audit: AuditSettings = field(default_factory=AuditSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)

    def __repr__(self) -> str:  # the DSN may contain a password
        return f"Settings(listen={self.listen!r}, policy_file={str(self.policy_file)!r})"


def load_settings(path: Path) -> Settings:
    """Read and check a settings file; raise ConfigError naming the first problem."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return parse_settings(document, base_dir=path.resolve().parent)


def parse_settings(document: Mapping[str, Any], *, base_dir: Path) -> Settings:
    _only_keys(
        document,
        "",
        {"server", "tls", "database", "kek", "policy", "templates", "audit", "telemetry"},
    )
    server = _table(document, "server")
    _only_keys(
        server,
        "server",
        {"listen", "max_batch_items", "max_message_bytes", "shutdown_grace_seconds"},
    )
    database = _table(document, "database")
    _only_keys(database, "database", {"dsn", "dsn_env", "min_connections", "max_connections"})
    policy = _table(document, "policy")
    _only_keys(policy, "policy", {"file"})
    templates = dict(_table(document, "templates"))
    include_defaults = templates.pop("include_defaults", True)
    if not isinstance(include_defaults, bool):
        raise ConfigError("templates.include_defaults must be true or false")

    max_batch = _int(
        server, "server.max_batch_items", DEFAULT_MAX_BATCH_ITEMS, 1, HARD_MAX_BATCH_ITEMS
    )
    return Settings(
        listen=_listen(server.get("listen", DEFAULT_LISTEN)),
        tls=_tls(_table(document, "tls", required=True), base_dir),
        dsn=_dsn(database),
        kek=_kek(_table(document, "kek"), base_dir),
        policy_file=_path(policy, "policy.file", base_dir, required=True),
        templates=templates,
        include_default_templates=include_defaults,
        max_batch_items=max_batch,
        max_message_bytes=_int(
            server,
            "server.max_message_bytes",
            DEFAULT_MAX_MESSAGE_BYTES,
            64 * 1024,
            256 * 1024 * 1024,
        ),
        shutdown_grace_seconds=float(
            _int(server, "server.shutdown_grace_seconds", int(DEFAULT_GRACE_SECONDS), 0, 600)
        ),
        audit=_audit(_table(document, "audit"), base_dir),
        telemetry=parse_telemetry(_table(document, "telemetry")),
        min_connections=_int(database, "database.min_connections", 2, 1, 100),
        max_connections=_int(database, "database.max_connections", 10, 1, 500),
    )


def _audit(table: Mapping[str, Any], base_dir: Path) -> AuditSettings:
    _only_keys(table, "audit", {"signing_key_file", "checkpoint_seconds", "stream"})
    key_file = (
        _path(table, "audit.signing_key_file", base_dir) if "signing_key_file" in table else None
    )
    interval = _int(table, "audit.checkpoint_seconds", 60, 1, 86_400)
    stream: Path | str | None = None
    if "stream" in table:
        stream = "-" if table["stream"] == "-" else _path(table, "audit.stream", base_dir)
    return AuditSettings(
        signing_key_file=key_file, checkpoint_seconds=float(interval), stream=stream
    )


def _tls(table: Mapping[str, Any], base_dir: Path) -> TlsSettings:
    _only_keys(table, "tls", {"cert_file", "key_file", "client_ca_file"})
    settings = TlsSettings(
        cert_file=_path(table, "tls.cert_file", base_dir, required=True),
        key_file=_path(table, "tls.key_file", base_dir, required=True),
        client_ca_file=_path(table, "tls.client_ca_file", base_dir, required=True),
    )
    for name, file in (
        ("tls.cert_file", settings.cert_file),
        ("tls.key_file", settings.key_file),
        ("tls.client_ca_file", settings.client_ca_file),
    ):
        if not os.access(file, os.R_OK):
            raise ConfigError(f"{name}: {file} does not exist or is not readable")
    return settings


_KEK_PROVIDERS = ("local", "pkcs11", "vault-transit")


def _kek(table: Mapping[str, Any], base_dir: Path) -> KekSettings:
    previous_table = table.get("previous")
    settings = _one_kek({k: v for k, v in table.items() if k != "previous"}, base_dir)
    if previous_table is None:
        return settings
    if not isinstance(previous_table, dict) or "previous" in previous_table:
        raise ConfigError(
            "kek.previous must be a table of provider settings, without its own previous"
        )
    return dataclasses.replace(settings, previous=_one_kek(previous_table, base_dir))


def _one_kek(table: Mapping[str, Any], base_dir: Path) -> KekSettings:
    provider = table.get("provider", "local")
    if provider not in _KEK_PROVIDERS:
        raise ConfigError(f"kek.provider: {provider!r} is not one of {', '.join(_KEK_PROVIDERS)}")
    if provider == "pkcs11":
        return KekSettings(provider=provider, pkcs11=_pkcs11(table, base_dir))
    if provider == "vault-transit":
        return KekSettings(provider=provider, vault_transit=_vault_transit(table, base_dir))
    return _local_kek(table, base_dir)


def _local_kek(table: Mapping[str, Any], base_dir: Path) -> KekSettings:
    _only_keys(table, "kek", {"provider", "file", "passphrase_env", "salt_file"})
    file = _path(table, "kek.file", base_dir) if "file" in table else None
    passphrase_env = table.get("passphrase_env")
    if (file is None) == (passphrase_env is None):
        raise ConfigError("kek: set exactly one of file or passphrase_env")
    salt_file = _path(table, "kek.salt_file", base_dir) if "salt_file" in table else None
    if passphrase_env is not None and salt_file is None:
        raise ConfigError("kek.salt_file is required with kek.passphrase_env")
    return KekSettings(
        provider="local", file=file, passphrase_env=passphrase_env, salt_file=salt_file
    )


def _pkcs11(table: Mapping[str, Any], base_dir: Path) -> Pkcs11Settings:
    _only_keys(
        table,
        "kek",
        {"provider", "module", "token_label", "pin_env", "key_label", "create_if_missing"},
    )
    return Pkcs11Settings(
        module=_path(table, "kek.module", base_dir, required=True),
        token_label=_string(table, "kek.token_label", None),
        pin_env=_string(table, "kek.pin_env", "TOKENVAULT_HSM_PIN"),
        key_label=_string(table, "kek.key_label", "tokenvault-kek"),
        create_if_missing=_bool(table, "kek.create_if_missing", False),
    )


def _vault_transit(table: Mapping[str, Any], base_dir: Path) -> VaultTransitSettings:
    allowed = {
        "provider",
        "address",
        "mount",
        "key_name",
        "auth_method",
        "token_env",
        "role_id_env",
        "secret_id_env",
        "approle_mount",
        "ca_file",
        "namespace",
        "timeout_seconds",
        "create_if_missing",
    }
    _only_keys(table, "kek", allowed)
    address = _string(table, "kek.address", None)
    if not address.startswith(("https://", "http://")):
        raise ConfigError(
            "kek.address must start with https:// (or http:// for a local test server)"
        )
    auth_method = _string(table, "kek.auth_method", "token")
    if auth_method not in ("token", "approle"):
        raise ConfigError('kek.auth_method must be "token" or "approle"')
    timeout = table.get("timeout_seconds", 5.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 300:
        raise ConfigError("kek.timeout_seconds must be a number above 0 and at most 300")
    return VaultTransitSettings(
        address=address,
        mount=_string(table, "kek.mount", "transit"),
        key_name=_string(table, "kek.key_name", "tokenvault-kek"),
        auth_method=auth_method,
        token_env=_string(table, "kek.token_env", "VAULT_TOKEN"),
        role_id_env=_string(table, "kek.role_id_env", "VAULT_ROLE_ID"),
        secret_id_env=_string(table, "kek.secret_id_env", "VAULT_SECRET_ID"),
        approle_mount=_string(table, "kek.approle_mount", "approle"),
        ca_file=_path(table, "kek.ca_file", base_dir) if "ca_file" in table else None,
        namespace=_string(table, "kek.namespace", "") or None,
        timeout_seconds=float(timeout),
        create_if_missing=_bool(table, "kek.create_if_missing", False),
    )


def _string(table: Mapping[str, Any], name: str, default: str | None) -> str:
    value = table.get(name.rsplit(".", 1)[1], default)
    if value is None:
        raise ConfigError(f"{name} is required")
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return value


def _bool(table: Mapping[str, Any], name: str, default: bool) -> bool:
    value = table.get(name.rsplit(".", 1)[1], default)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false")
    return value


def _dsn(table: Mapping[str, Any]) -> str:
    if "dsn" in table and "dsn_env" in table:
        raise ConfigError("database: set dsn or dsn_env, not both")
    if "dsn_env" in table:
        name = table["dsn_env"]
        value = os.environ.get(name, "")
        if not value:
            raise ConfigError(f"database.dsn_env: environment variable {name} is not set")
        return value
    dsn = table.get("dsn")
    if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
        raise ConfigError("database.dsn must be a postgresql:// URL (or use database.dsn_env)")
    return dsn


def _listen(value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError('server.listen must be "host:port"')
    port = value.rsplit(":", 1)[1]
    if not port.isascii() or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("server.listen: port must be a number from 0 to 65535")
    return value


def _table(document: Mapping[str, Any], name: str, *, required: bool = False) -> Mapping[str, Any]:
    value = document.get(name)
    if value is None:
        if required:
            raise ConfigError(f"[{name}] section is required")
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a table ([{name}])")
    return value


def _path(table: Mapping[str, Any], name: str, base_dir: Path, *, required: bool = False) -> Path:
    key = name.rsplit(".", 1)[1]
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{name} is required")
        raise ConfigError(f"{name} is missing")
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a file path")
    path = Path(value)
    return path if path.is_absolute() else base_dir / path


def _int(table: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = table.get(name.rsplit(".", 1)[1], default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}")
    return value


def _only_keys(table: Mapping[str, Any], where: str, allowed: set[str]) -> None:
    unknown = set(table) - allowed
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise ConfigError(f"{prefix}unknown settings {sorted(unknown)}; allowed: {sorted(allowed)}")
