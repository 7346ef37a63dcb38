"""E-mail addresses, ``local@domain``, in a practical subset of RFC 5321.

Accepted:
- a local part of 1 to 64 ASCII letters, digits and ``. _ + -``, with no dot at either end and
  no two dots in a row;
- a domain of two or more labels separated by dots, each label 1 to 63 ASCII letters, digits
  and hyphens with no hyphen at either end, and a top-level label that is not all digits;
- at most 254 characters in all.

Not accepted: quoted local parts, other RFC 5322 punctuation, address literals
("[192.0.2.1]") and non-ASCII (internationalised) addresses.

Letters keep their case (lower radix 26, upper radix 26), digits stay digits (radix 10), and
punctuation and "@" stay in place. With ``keep_domain`` (the default) the domain is kept
whole. Without it, the letters and digits of every label except the top-level one are
tokenized too, while dots, hyphens and the top-level label stay. No case folding happens, so
"A@x.org" and "a@x.org" get different tokens.

In vaultless mode each item must have a body domain of at least 1,000,000 (about 5 letters),
so short local parts are rejected. The shipped template is vaulted for that reason.
"""

from __future__ import annotations

from vault.formats.alphabets import (
    ASCII_DIGITS,
    ASCII_LOWER,
    ASCII_UPPER,
    DIGITS,
    LOWER,
    UPPER,
    Alphabet,
)
from vault.formats.base import Layout, Side, Split
from vault.formats.common import (
    SettingsReader,
    TemplateBase,
    build_split,
    check_item_domain,
    check_text,
    fill_layout,
    finish_join,
    parse_plain,
    position_rule,
    reject,
)
from vault.fpe import MIN_DOMAIN

_MAX_LENGTH = 254
_MAX_LOCAL = 64
_MAX_LABEL = 63
_LOCAL_PUNCTUATION = "._+-"
_LOCAL_ALLOWED = "A-Z, a-z, 0-9, '.', '_', '+', '-' before the @"
_DOMAIN_ALLOWED = "A-Z, a-z, 0-9, '-', '.' after the @"


def _alphabet_of(char: str) -> Alphabet | None:
    if char in ASCII_LOWER:
        return LOWER
    if char in ASCII_UPPER:
        return UPPER
    if char in ASCII_DIGITS:
        return DIGITS
    return None


class EmailTemplate(TemplateBase):
    type_name = "email"

    def read_settings(self, reader: SettingsReader) -> None:
        self.keep_domain = reader.boolean("keep_domain", True)

    def check_domain(self) -> None:
        # The body size depends on each address, so split() checks it per item.
        return

    def split(self, text: str, side: Side) -> Split:
        at = _parse(text, side)
        tokenized_end = at
        if not self.keep_domain:
            # Everything up to the last dot: the top-level label stays.
            tokenized_end = text.rindex(".")

        body = [i for i in range(tokenized_end) if _alphabet_of(text[i]) is not None]
        body_set = set(body)
        kept = [i for i in range(len(text)) if i not in body_set]
        alphabets = [_alphabet_of(text[i]) or DIGITS for i in body]
        split = build_split(self.type_name, parse_plain(text), kept, body, alphabets)

        if self.vaultless:
            where = "local part has" if self.keep_domain else "address has"
            check_item_domain(
                split,
                side,
                f"{where} too few letters and digits for vaultless tokenization (need a "
                f"domain of {MIN_DOMAIN:,})",
            )
        return split

    def join(
        self, layout: Layout, body: tuple[int, ...] | list[int], side: Side, key_version: int = 1
    ) -> str:
        return finish_join(fill_layout(layout, body))

    def mask(self, value: str) -> str:
        at = _parse(value, Side.VALUE)
        # A one-character local part is hidden whole rather than shown as "x***".
        first = value[0] if at > 1 else ""
        return f"{first}***{value[at:]}"


def _parse(text: str, side: Side) -> int:
    """Validate an address and return the index of its "@"."""
    check_text(text, side, _MAX_LENGTH)
    if text.count("@") != 1:
        raise reject(side, "must contain exactly one @")
    at = text.index("@")

    local = text[:at]
    if not 1 <= len(local) <= _MAX_LOCAL:
        raise reject(side, f"local part (before the @) must be 1 to {_MAX_LOCAL} characters")
    for index, char in enumerate(local):
        if _alphabet_of(char) is None and char not in _LOCAL_PUNCTUATION:
            raise reject(side, position_rule(index, _LOCAL_ALLOWED))
    if local[0] == "." or local[-1] == "." or ".." in local:
        raise reject(side, "local part must not start or end with a dot or have two dots in a row")

    _check_domain_part(text, at + 1, side)
    return at


def _check_domain_part(text: str, start: int, side: Side) -> None:
    for index in range(start, len(text)):
        char = text[index]
        if _alphabet_of(char) is None and char not in "-.":
            raise reject(side, position_rule(index, _DOMAIN_ALLOWED))

    labels = text[start:].split(".")
    if len(labels) < 2:
        raise reject(side, "domain must have at least two labels separated by a dot")
    for label in labels:
        if not 1 <= len(label) <= _MAX_LABEL:
            raise reject(side, f"each domain label must be 1 to {_MAX_LABEL} characters")
        if label[0] == "-" or label[-1] == "-":
            raise reject(side, "domain labels must not start or end with a hyphen")
    if all(char in ASCII_DIGITS for char in labels[-1]):
        raise reject(side, "top-level domain label must not be all digits")
