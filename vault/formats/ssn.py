"""US Social Security numbers: 9 digits, written "AAA-GG-SSSS" or without the dashes.

Values must follow the Social Security Administration's assignment rules: the area number
(first 3 digits) is not 000, 666 or 900-999, the group number (digits 4-5) is not 00, and the
serial number (last 4 digits) is not 0000. Tokens are any 9 digits in the same layout, so a
token can break those rules, and it can also look like a real SSN.

``keep_last4`` keeps the serial number. In vaultless mode that leaves 5 digits (a domain of
100,000, below FF1's minimum of 1,000,000), so it needs mode = "vaulted".
"""

from __future__ import annotations

from vault.formats.alphabets import ASCII_DIGITS, DIGITS
from vault.formats.base import Layout, Side, Split
from vault.formats.common import (
    Parsed,
    SettingsReader,
    TemplateBase,
    build_split,
    check_text,
    fill_layout,
    finish_join,
    mask_positions,
    parse_plain,
    position_rule,
    reject,
)
from vault.fpe import MIN_DOMAIN

_DASHED_LENGTH = 11
_DASH_POSITIONS = (3, 6)
_SHAPE_RULE = "must be 9 digits, either without separators or as AAA-GG-SSSS with dashes"


class SsnTemplate(TemplateBase):
    type_name = "ssn"

    def read_settings(self, reader: SettingsReader) -> None:
        self.keep_last4 = reader.boolean("keep_last4", False)

    def _body_length(self) -> int:
        return 5 if self.keep_last4 else 9

    def check_domain(self) -> None:
        if not self.vaultless:
            return
        domain = 10 ** self._body_length()
        if domain < MIN_DOMAIN:
            raise self.config_error(
                f"keep_last4 leaves {self._body_length()} digits to encrypt (a domain of "
                f"{domain:,}, below the FF1 minimum of {MIN_DOMAIN:,}). Use mode = "
                '"vaulted" or set keep_last4 = false.'
            )

    def split(self, text: str, side: Side) -> Split:
        parsed = _parse(text, side)
        digits = parsed.canonical
        if side is Side.VALUE:
            _check_assignment_rules(digits)

        body = list(range(self._body_length()))
        kept = list(range(self._body_length(), 9))
        return build_split(self.type_name, parsed, kept, body, [DIGITS] * len(body))

    def join(
        self, layout: Layout, body: tuple[int, ...] | list[int], side: Side, key_version: int = 1
    ) -> str:
        return finish_join(fill_layout(layout, body))

    def mask(self, value: str) -> str:
        parsed = _parse(value, Side.VALUE)
        return mask_positions(value, parsed, range(5, 9))


def _parse(text: str, side: Side) -> Parsed:
    check_text(text, side, _DASHED_LENGTH)
    if len(text) == _DASHED_LENGTH:
        allowed = "digits, dashes after the 3rd and 5th digits"
        for index, char in enumerate(text):
            expected_dash = index in _DASH_POSITIONS
            if (char == "-") != expected_dash or (not expected_dash and char not in ASCII_DIGITS):
                raise reject(side, position_rule(index, allowed))
        positions = tuple(i for i in range(_DASHED_LENGTH) if i not in _DASH_POSITIONS)
        digits = "".join(text[i] for i in positions)
        return Parsed(digits, positions, {p: "-" for p in _DASH_POSITIONS}, _DASHED_LENGTH)

    if len(text) != 9:
        raise reject(side, _SHAPE_RULE)
    for index, char in enumerate(text):
        if char not in ASCII_DIGITS:
            raise reject(side, position_rule(index, "digits"))
    return parse_plain(text)


def _check_assignment_rules(digits: str) -> None:
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area >= "900":
        raise reject(Side.VALUE, "area number (first 3 digits) must not be 000, 666 or 900-999")
    if group == "00":
        raise reject(Side.VALUE, "group number (digits 4-5) must not be 00")
    if serial == "0000":
        raise reject(Side.VALUE, "serial number (last 4 digits) must not be 0000")
