"""Phone numbers in international (E.164) form: "+" and 8 to 15 digits.

Separators may group the digits for reading: a single space, dash or dot between two digits,
and parentheses around a group of digits ("+1 (415) 555-2671"). A parenthesised group may sit
next to a space, dash or dot, but two of those never follow each other. Digits inside
parentheses count as part of the number, so a national trunk prefix written as "(0)" is
tokenized like any other digit. Separators keep their positions in the token.

The country calling code (found by longest-prefix match in ``calling_codes``) and the last
``keep_last`` digits are kept, and the subscriber digits between them are tokenized. In vaultless
mode each item needs 6 such digits (10**6 is FF1's minimum domain), so short numbers from
countries with 3-digit calling codes can be rejected per item.
"""

from __future__ import annotations

from vault.formats.alphabets import ASCII_DIGITS, DIGITS
from vault.formats.base import Layout, Side, Split
from vault.formats.calling_codes import find_calling_code
from vault.formats.common import (
    MIN_BODY_DIGITS,
    Parsed,
    SettingsReader,
    TemplateBase,
    build_split,
    check_text,
    count_noun,
    fill_layout,
    finish_join,
    mask_positions,
    position_rule,
    reject,
)
from vault.fpe import MIN_DOMAIN

_MIN_DIGITS = 8
_MAX_DIGITS = 15
# Room for "+", 15 digits and generous grouping. Longer input is rejected before parsing.
_MAX_CHARACTERS = 40
_GAP_SEPARATORS = " -."
_ALLOWED = "digits, space, dash, dot, parentheses"
_MASK_LAST = 2


class PhoneTemplate(TemplateBase):
    type_name = "phone"

    def read_settings(self, reader: SettingsReader) -> None:
        self.keep_last = reader.integer("keep_last", 0, 0, _MAX_DIGITS - 2)

    def check_domain(self) -> None:
        if not self.vaultless:
            return
        # Maximum subscriber digits: 15 digits minus a 1-digit calling code.
        longest = _MAX_DIGITS - 1 - self.keep_last
        if longest < MIN_BODY_DIGITS:
            longest_text = count_noun(longest, "digit")
            raise self.config_error(
                f"keep_last ({self.keep_last}) leaves at most {longest_text} to encrypt, "
                f"below the FF1 minimum domain of {MIN_DOMAIN:,}. Lower keep_last or use "
                'mode = "vaulted".'
            )

    def split(self, text: str, side: Side) -> Split:
        parsed, code_length = _parse(text, side)
        length = len(parsed.canonical)

        # Canonical form is "+" and the digits, so the calling code is at indices 1 to code_length.
        body_start = 1 + code_length
        body_end = length - self.keep_last
        if body_end <= body_start:
            raise reject(side, "has no subscriber digits left to tokenize after the kept digits")
        if self.vaultless and body_end - body_start < MIN_BODY_DIGITS:
            raise reject(
                side,
                "has too few subscriber digits for vaultless tokenization (need "
                f"{MIN_BODY_DIGITS} after the country code and the kept last digits)",
            )

        body = list(range(body_start, body_end))
        kept = [*range(body_start), *range(body_end, length)]
        return build_split(self.type_name, parsed, kept, body, [DIGITS] * len(body))

    def join(
        self, layout: Layout, body: tuple[int, ...] | list[int], side: Side, key_version: int = 1
    ) -> str:
        return finish_join(fill_layout(layout, body))

    def mask(self, value: str) -> str:
        parsed, code_length = _parse(value, Side.VALUE)
        length = len(parsed.canonical)
        visible = [*range(1 + code_length), *range(length - _MASK_LAST, length)]
        return mask_positions(value, parsed, visible)


def _parse(text: str, side: Side) -> tuple[Parsed, int]:
    """Validate a number and return it parsed with the length of its calling code."""
    check_text(text, side, _MAX_CHARACTERS)
    if text[0] != "+":
        raise reject(side, 'must start with "+" and the country calling code')

    canonical = ["+"]
    positions = [0]
    separators: dict[int, str] = {}
    open_paren: int | None = None
    previous = "+"

    for index in range(1, len(text)):
        char = text[index]
        if char in ASCII_DIGITS:
            canonical.append(char)
            positions.append(index)
        elif char in _GAP_SEPARATORS:
            if previous not in ASCII_DIGITS and previous != ")":
                raise reject(side, "separators must be single characters between digits")
            separators[index] = char
        elif char == "(":
            if open_paren is not None or previous == "+" or previous == "(":
                raise reject(side, "parentheses must enclose one group of digits, not nested")
            open_paren = index
            separators[index] = char
        elif char == ")":
            if open_paren is None or previous not in ASCII_DIGITS:
                raise reject(side, "parentheses must enclose one group of digits, not nested")
            open_paren = None
            separators[index] = char
        else:
            raise reject(side, position_rule(index, _ALLOWED))
        if open_paren is not None and char in _GAP_SEPARATORS:
            raise reject(side, "parentheses must enclose digits only")
        previous = char

    if open_paren is not None:
        raise reject(side, "has an unclosed parenthesis")
    if previous not in ASCII_DIGITS and previous != ")":
        raise reject(side, "must end with a digit")

    digits = "".join(canonical[1:])
    if not _MIN_DIGITS <= len(digits) <= _MAX_DIGITS:
        raise reject(side, f"must have {_MIN_DIGITS} to {_MAX_DIGITS} digits after the +")
    code = find_calling_code(digits)
    if code is None:
        raise reject(side, "does not start with an assigned country calling code")
    return Parsed("".join(canonical), tuple(positions), separators, len(text)), len(code)
