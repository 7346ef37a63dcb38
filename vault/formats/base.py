"""The contract every template type implements.

A template turns a value or a token into a ``Split``: the numerals of the characters it
replaces (the body), the radix of each of those positions, the kept characters that bind the
tweak, and a ``Layout`` that puts a string back together. The same layout rebuilds either side:
``join(layout, body, Side.TOKEN)`` writes a token, ``join(layout, body, Side.VALUE)`` writes a
value. Characters derived from the others (a Luhn digit, IBAN check digits) are not in the body;
``join`` computes them for the side it writes.

The modes use it like this:
- vaultless: ``split(value, VALUE)``, FF1 over the body with a tweak from ``context``, then
  ``join(layout, new_body, TOKEN)``; detokenize runs the same steps the other way.
- vaulted: ``split(value, VALUE)``, a random body drawn per radix, ``join(..., TOKEN)``; the
  ``canonical`` value (no separators) is stored encrypted under the ``canonical`` token.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Side(enum.Enum):
    VALUE = "value"
    TOKEN = "token"  # noqa: S105 (an enum value, not a credential)


class Mode(enum.Enum):
    VAULTLESS = "vaultless"
    VAULTED = "vaulted"


@dataclass(frozen=True)
class Layout:
    """What a template needs to rebuild a string around a body.

    ``kept`` maps a position in the output string to the character kept there (separators and
    preserved characters); ``body_positions`` lists, in body order, the output positions the
    body fills; ``derived`` lists the positions that ``join`` computes (Luhn, IBAN check digits).
    ``extra`` is template-specific (for example the case of each letter of a name).
    """

    length: int
    kept: Mapping[int, str]
    body_positions: tuple[int, ...]
    derived: tuple[int, ...] = ()
    extra: Any = None


@dataclass(frozen=True)
class Split:
    """A value or token divided into its replaced body and what the template keeps."""

    body: tuple[int, ...]
    radices: tuple[int, ...]
    context: bytes
    canonical: str
    layout: Layout
    # FF1 key version a vaultless token carries (see Template.max_key_versions); None for values
    # and for templates whose tokens carry no version.
    key_version: int | None = None


class Template(ABC):
    """One configured template (a data class with its validation, kept parts and mode)."""

    name: str
    type_name: str
    mode: Mode
    convergent: bool
    ttl_seconds: int | None
    # How many FF1 key versions this template's tokens can tell apart. 1 means the FF1 key is
    # pinned: its tokens carry no version, so the key cannot rotate (the KEK that wraps it can).
    max_key_versions: int = 1

    @abstractmethod
    def split(self, text: str, side: Side) -> Split:
        """Validate ``text`` as a value (or a token) of this template and split it.

        Raises ``vault.errors.InvalidValue`` naming the field (``value`` or ``token``) and the
        rule; the message never contains the text.
        """

    @abstractmethod
    def join(
        self, layout: Layout, body: tuple[int, ...] | list[int], side: Side, key_version: int = 1
    ) -> str:
        """Build the string for ``side`` from a layout and a body of numerals.

        ``key_version`` is written into tokens of templates whose ``max_key_versions`` is above
        1, and ignored otherwise.
        """

    @abstractmethod
    def mask(self, value: str) -> str:
        """Return ``value`` with its sensitive characters replaced by ``*`` (masked reveal)."""

    @abstractmethod
    def check_domain(self) -> None:
        """Check the configuration against the FF1 minimum domain at load time.

        Raises ``vault.errors.ConfigError`` naming the template and the rule when a vaultless
        configuration can produce a body whose domain is below ``vault.fpe.MIN_DOMAIN``.
        Vaulted templates have no floor and return without raising.
        """

    def describe(self) -> dict[str, object]:
        """Return the template's settings for listing and logs (no secrets)."""
        return {"name": self.name, "type": self.type_name, "mode": self.mode.value}
