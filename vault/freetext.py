"""Checks for caller text that the service stores or logs in clear.

References, purposes, metadata values, revocation reasons and identities are not tokenized, so
they must not carry what the service exists to protect. A card number (12 to 19 digits, grouped
by spaces, dashes, dots or slashes, that pass the Luhn check) or an IBAN (that passes MOD 97-10)
is rejected, as are control characters, which would break log lines and PostgreSQL text.
"""

from __future__ import annotations

import re

from vault.errors import InvalidValue
from vault.formats.luhn import is_luhn_valid
from vault.formats.mod97 import is_iban_checksum_valid

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
_DIGIT_RUN = re.compile(r"\d(?:[ ./-]?\d){11,18}")
_SEPARATORS = str.maketrans("", "", " ./-")
_IBAN_LIKE = re.compile(r"[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}")


def check_free_text(field_name: str, text: str) -> None:
    """Raise InvalidValue naming ``field_name`` if ``text`` contains a control character, a card
    number or an IBAN; the message never repeats the text."""
    if _CONTROL_CHARACTER.search(text):
        raise InvalidValue(field_name, "must not contain control characters")
    for run in _DIGIT_RUN.findall(text):
        if is_luhn_valid(run.translate(_SEPARATORS)):
            raise InvalidValue(
                field_name, "must not contain a card number; it is stored and logged in clear"
            )
    for candidate in _IBAN_LIKE.findall(text):
        if _contains_iban(candidate.replace(" ", "").upper()):
            raise InvalidValue(
                field_name, "must not contain an IBAN; it is stored and logged in clear"
            )


def _contains_iban(compact: str) -> bool:
    # The greedy match may run past the IBAN's end into following text, so try each length.
    return any(is_iban_checksum_valid(compact[:length]) for length in range(15, len(compact) + 1))
