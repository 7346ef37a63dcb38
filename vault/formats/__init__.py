"""Template types (what a token looks like) and the registry that builds them from settings.

``build_template`` turns one template's settings (a mapping from the TOML configuration) into
a ``Template``. ``load_templates`` builds a whole table and checks each vaultless template
against the FF1 minimum domain. ``default_templates`` loads the shipped ``defaults.toml``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from typing import Any

from vault.errors import ConfigError
from vault.formats.account_number import AccountNumberTemplate
from vault.formats.base import Layout, Mode, Side, Split, Template
from vault.formats.common import TemplateBase
from vault.formats.email import EmailTemplate
from vault.formats.generic import GenericTemplate
from vault.formats.iban import IbanTemplate
from vault.formats.name import NameTemplate
from vault.formats.pan import PanTemplate
from vault.formats.phone import PhoneTemplate
from vault.formats.ssn import SsnTemplate

__all__ = [
    "TEMPLATE_TYPES",
    "Layout",
    "Mode",
    "Side",
    "Split",
    "Template",
    "build_template",
    "default_templates",
    "load_templates",
]

TEMPLATE_TYPES: dict[str, type[TemplateBase]] = {
    cls.type_name: cls
    for cls in (
        PanTemplate,
        IbanTemplate,
        SsnTemplate,
        AccountNumberTemplate,
        EmailTemplate,
        PhoneTemplate,
        NameTemplate,
        GenericTemplate,
    )
}

_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def build_template(name: str, settings: Mapping[str, Any]) -> Template:
    """Build one template from its settings.

    Raises ConfigError naming the template and the key when a setting is missing or invalid.
    """
    if not isinstance(name, str) or _NAME_PATTERN.fullmatch(name) is None:
        raise ConfigError(
            f"template name {name!r} is invalid: use 1 to 64 characters of a-z, 0-9, '_' and "
            "'-', starting with a letter"
        )
    if not isinstance(settings, Mapping):
        raise ConfigError(f"template '{name}': settings must be a table")

    type_name = settings.get("type")
    if type_name is None:
        raise ConfigError(f"template '{name}': type is required")
    template_class = TEMPLATE_TYPES.get(type_name) if isinstance(type_name, str) else None
    if template_class is None:
        known = ", ".join(f'"{known}"' for known in TEMPLATE_TYPES)
        raise ConfigError(f"template '{name}': type must be one of {known}")
    return template_class(name, settings)


def load_templates(table: Mapping[str, Mapping[str, Any]]) -> dict[str, Template]:
    """Build every template of a configuration table and check each one's domain."""
    templates: dict[str, Template] = {}
    for name, settings in table.items():
        template = build_template(name, settings)
        template.check_domain()
        templates[name] = template
    return templates


def default_templates() -> dict[str, Template]:
    """Load the templates shipped in ``vault/formats/defaults.toml``."""
    text = resources.files(__package__).joinpath("defaults.toml").read_text(encoding="utf-8")
    return load_templates(tomllib.loads(text))
