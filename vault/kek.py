"""Open the KEK provider that the settings name."""

from __future__ import annotations

from keys.errors import KekConfigError
from keys.local import LocalKekProvider
from keys.provider import KekProvider
from vault.errors import ConfigError
from vault.settings import KekSettings


def open_kek_provider(settings: KekSettings) -> KekProvider:
    """Return the configured provider; a missing or unsafe key raises ConfigError."""
    try:
        if settings.file is not None:
            return LocalKekProvider.load(settings.file)
        if settings.passphrase_env is not None and settings.salt_file is not None:
            return LocalKekProvider.from_passphrase(
                settings.salt_file, env_var=settings.passphrase_env
            )
    except KekConfigError as exc:
        raise ConfigError(f"kek: {exc}") from None
    raise ConfigError("kek: set file, or passphrase_env with salt_file")
