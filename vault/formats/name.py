"""Person names: letters, spaces, hyphens, apostrophes and periods, 1 to 200 characters.

Letters are ASCII A-Z and a-z plus the precomposed letters of Latin-1 Supplement and Latin
Extended-A (see ``alphabets``), which cover most European names ("Müller", "Łukasz",
"Dvořák"). Each letter keeps its class: ASCII upper case, ASCII lower case, other Latin upper
case or other Latin lower case. So "Zoë" becomes an ASCII capital, an ASCII small letter and a
non-ASCII small letter. Decomposed input (a base letter followed by a combining accent, NFD) is
rejected, so callers must normalise to NFC first.

Spaces, hyphens, ASCII apostrophes, right single quotation marks (U+2019, the typographic
apostrophe) and periods stay in place. A name must contain at least one letter. In vaultless
mode each item needs a body domain of 1,000,000 (5 ASCII letters), so the shipped template is
vaulted.
"""

from __future__ import annotations

from vault.formats.alphabets import (
    ASCII_LOWER,
    ASCII_UPPER,
    LATIN_LOWER,
    LATIN_LOWER_LETTERS,
    LATIN_UPPER,
    LATIN_UPPER_LETTERS,
    LOWER,
    UPPER,
    Alphabet,
)
from vault.formats.base import Layout, Side, Split
from vault.formats.common import (
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

_MAX_LENGTH = 200
_PUNCTUATION = " -'\u2019."
_WORD_BREAKS = " -"
_ALLOWED = "Latin letters, space, hyphen, apostrophe, period, with letters precomposed (NFC)"


def _alphabet_of(char: str) -> Alphabet | None:
    if char in ASCII_UPPER:
        return UPPER
    if char in ASCII_LOWER:
        return LOWER
    if char in LATIN_UPPER:
        return LATIN_UPPER_LETTERS
    if char in LATIN_LOWER:
        return LATIN_LOWER_LETTERS
    return None


class NameTemplate(TemplateBase):
    type_name = "name"

    def check_domain(self) -> None:
        # The number of letters varies per name, so split() checks the domain per item.
        return

    def split(self, text: str, side: Side) -> Split:
        alphabets = _parse(text, side)
        body = [i for i, alphabet in enumerate(alphabets) if alphabet is not None]
        kept = [i for i, alphabet in enumerate(alphabets) if alphabet is None]
        body_alphabets = [alphabet for alphabet in alphabets if alphabet is not None]
        split = build_split(self.type_name, parse_plain(text), kept, body, body_alphabets)

        if self.vaultless:
            check_item_domain(
                split,
                side,
                "has too few letters for vaultless tokenization (need a domain of "
                f"{MIN_DOMAIN:,}, about 5 letters)",
            )
        return split

    def join(
        self, layout: Layout, body: tuple[int, ...] | list[int], side: Side, key_version: int = 1
    ) -> str:
        return finish_join(fill_layout(layout, body))

    def mask(self, value: str) -> str:
        """Show the first letter of each word (words end at spaces and hyphens)."""
        alphabets = _parse(value, Side.VALUE)
        chars = list(value)
        at_word_start = True
        for index, char in enumerate(value):
            if char in _WORD_BREAKS:
                at_word_start = True
            elif alphabets[index] is not None:
                if not at_word_start:
                    chars[index] = "*"
                at_word_start = False
        return "".join(chars)


def _parse(text: str, side: Side) -> list[Alphabet | None]:
    """Validate a name and return each character's alphabet (None for punctuation)."""
    check_text(text, side, _MAX_LENGTH)
    alphabets: list[Alphabet | None] = []
    for index, char in enumerate(text):
        alphabet = _alphabet_of(char)
        if alphabet is None and char not in _PUNCTUATION:
            raise reject(side, position_rule(index, _ALLOWED))
        alphabets.append(alphabet)
    if all(alphabet is None for alphabet in alphabets):
        raise reject(side, "must contain at least one letter")
    return alphabets
