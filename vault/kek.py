"""Open the KEK provider that the settings name."""

from __future__ import annotations

from keys.errors import KekConfigError
from keys.local import LocalKekProvider
from keys.migration import MigratingKekProvider
from keys.provider import KekProvider
from vault.errors import ConfigError
from vault.settings import KekSettings, Pkcs11Settings, VaultTransitSettings


def open_kek_provider(settings: KekSettings) -> KekProvider:
    """Return the configured provider; a missing or unsafe key raises ConfigError.

    An unreachable HSM or Vault raises ``keys.errors.KekUnavailable``, so the caller can tell
    a configuration to fix from a dependency to wait for. With ``previous`` set, the result
    also unwraps keys that the previous provider wrapped.
    """
    current = _open_one(settings)
    if settings.previous is None:
        return current
    try:
        previous = _open_one(settings.previous)
    except BaseException:
        current.close()
        raise
    return MigratingKekProvider(current, previous)


def _open_one(settings: KekSettings) -> KekProvider:
    try:
        if settings.pkcs11 is not None:
            return _open_pkcs11(settings.pkcs11)
        if settings.vault_transit is not None:
            return _open_vault_transit(settings.vault_transit)
        if settings.file is not None:
            return LocalKekProvider.load(settings.file)
        if settings.passphrase_env is not None and settings.salt_file is not None:
            return LocalKekProvider.from_passphrase(
                settings.salt_file, env_var=settings.passphrase_env
            )
    except KekConfigError as exc:
        raise ConfigError(f"kek: {exc}") from None
    raise ConfigError("kek: set file, or passphrase_env with salt_file")


def _open_pkcs11(settings: Pkcs11Settings) -> KekProvider:
    from keys.pkcs11 import Pkcs11KekProvider

    return Pkcs11KekProvider.open(
        str(settings.module),
        settings.token_label,
        settings.pin_env,
        settings.key_label,
        create_if_missing=settings.create_if_missing,
    )


def _open_vault_transit(settings: VaultTransitSettings) -> KekProvider:
    from keys.transit import TransitKekProvider, TransitSettings

    return TransitKekProvider(
        TransitSettings(
            address=settings.address,
            mount=settings.mount,
            key_name=settings.key_name,
            auth_method=settings.auth_method,  # type: ignore[arg-type]
            token_env=settings.token_env,
            role_id_env=settings.role_id_env,
            secret_id_env=settings.secret_id_env,
            approle_mount=settings.approle_mount,
            ca_file=str(settings.ca_file) if settings.ca_file else None,
            namespace=settings.namespace,
            timeout=settings.timeout_seconds,
            create_if_missing=settings.create_if_missing,
        )
    )
