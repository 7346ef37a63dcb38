"""International Bank Account Numbers (ISO 13616).

Input: the electronic format ("GB29NWBK60161331926819") or the print format, where single
spaces split the IBAN into groups of 4 ("GB29 NWBK 6016 1331 9268 19"). Letters must be upper
case: lower case is rejected rather than folded, so that a token keeps the exact layout of its
value and the round trip returns the input unchanged.

Checks: a country code from ``iban_registry``, that country's exact length, the BBAN character
class at every position (digit, upper-case letter, or either), and the ISO 7064 MOD 97-10
check digits. National check digits inside the BBAN (the Italian CIN, for example) are not
checked, and a token need not pass them.

Tokens keep the country code and the class of every position: digits radix 10, letters radix
26, either radix 36. The check digits (positions 3-4) are derived on both sides, so a token is
itself a valid IBAN of the same country and length. ``keep_bank_code`` also keeps the bank
identifier. With it, IBANs of countries whose bank identifier position is not in the table are
rejected.
"""

from __future__ import annotations

from vault.formats.alphabets import (
    ASCII_DIGITS,
    ASCII_LOWER,
    ASCII_UPPER,
    DIGITS,
    UPPER,
    UPPER_ALPHANUMERIC,
    Alphabet,
)
from vault.formats.base import Layout, Side, Split
from vault.formats.common import (
    Parsed,
    SettingsReader,
    TemplateBase,
    build_split,
    canonical_indices,
    check_item_domain,
    check_text,
    domain_of,
    fill_layout,
    finish_join,
    mask_positions,
    position_rule,
    reject,
)
from vault.formats.iban_registry import (
    IBAN_COUNTRIES,
    MAX_IBAN_LENGTH,
    MIN_IBAN_LENGTH,
    IbanCountry,
)
from vault.formats.mod97 import iban_check_digits, is_iban_checksum_valid
from vault.fpe import MIN_DOMAIN

_CLASS_ALPHABETS: dict[str, Alphabet] = {"n": DIGITS, "a": UPPER, "c": UPPER_ALPHANUMERIC}
_CLASS_NAMES = {"n": "a digit", "a": "an upper-case letter", "c": "an upper-case letter or digit"}
_ALLOWED = "A-Z, 0-9, single spaces between groups of 4"
# Print format adds one space after every 4 characters except the last group.
_MAX_PRINT_LENGTH = MAX_IBAN_LENGTH + (MAX_IBAN_LENGTH - 1) // 4
_MASK_LAST = 4


class IbanTemplate(TemplateBase):
    type_name = "iban"

    def read_settings(self, reader: SettingsReader) -> None:
        self.keep_bank_code = reader.boolean("keep_bank_code", False)

    def kept_bban_positions(self, country: IbanCountry) -> range:
        """Return the BBAN positions this template keeps for ``country`` (empty if none)."""
        if self.keep_bank_code and country.bank_code is not None:
            return range(*country.bank_code)
        return range(0)

    def body_domain(self, country: IbanCountry) -> int:
        kept = self.kept_bban_positions(country)
        radices = [
            _CLASS_ALPHABETS[kind].radix
            for position, kind in enumerate(country.bban_classes)
            if position not in kept
        ]
        return domain_of(radices)

    def check_domain(self) -> None:
        if not self.vaultless:
            return
        short = sorted(
            code
            for code, country in IBAN_COUNTRIES.items()
            if self.body_domain(country) < MIN_DOMAIN
        )
        if short:
            raise self.config_error(
                f"IBANs of {', '.join(short)} leave a domain below the FF1 minimum of "
                f'{MIN_DOMAIN:,}. Set keep_bank_code = false or use mode = "vaulted"'
            )

    def split(self, text: str, side: Side) -> Split:
        parsed, country = self._parse(text, side)
        iban = parsed.canonical
        if not is_iban_checksum_valid(iban):
            raise reject(side, "IBAN check digits are wrong (ISO 7064 MOD 97-10)")

        if self.keep_bank_code and country.bank_code is None:
            raise reject(
                side,
                "keep_bank_code is not supported for this country, because its bank "
                "identifier position is not in the IBAN table",
            )

        kept_bban = self.kept_bban_positions(country)
        kept = [0, 1] + [4 + position for position in kept_bban]
        body = [4 + p for p in range(len(country.bban_classes)) if p not in kept_bban]
        alphabets = [_CLASS_ALPHABETS[country.bban_classes[i - 4]] for i in body]
        split = build_split(self.type_name, parsed, kept, body, alphabets, derived=[2, 3])

        if self.vaultless:
            check_item_domain(
                split,
                side,
                "too few characters left to tokenize for this country in vaultless mode "
                f"(need a domain of {MIN_DOMAIN:,})",
            )
        return split

    def join(
        self, layout: Layout, body: tuple[int, ...] | list[int], side: Side, key_version: int = 1
    ) -> str:
        chars = fill_layout(layout, body)
        positions = canonical_indices(layout)
        country_code = chars[positions[0]] + chars[positions[1]]
        bban = "".join(chars[p] for p in positions[4:])
        check_digits = iban_check_digits(country_code, bban)
        chars[positions[2]] = check_digits[0]
        chars[positions[3]] = check_digits[1]
        return finish_join(chars)

    def mask(self, value: str) -> str:
        parsed, _ = self._parse(value, Side.VALUE)
        length = len(parsed.canonical)
        visible = [0, 1, 2, 3, *range(length - _MASK_LAST, length)]
        return mask_positions(value, parsed, visible)

    def _parse(self, text: str, side: Side) -> tuple[Parsed, IbanCountry]:
        """Check everything except the MOD 97-10 check digits."""
        check_text(text, side, _MAX_PRINT_LENGTH)
        parsed = _parse_print_format(text, side)
        iban = parsed.canonical

        if not MIN_IBAN_LENGTH <= len(iban) <= MAX_IBAN_LENGTH:
            raise reject(
                side,
                f"must be {MIN_IBAN_LENGTH} to {MAX_IBAN_LENGTH} characters, not counting "
                "print-format spaces",
            )
        if iban[0] not in ASCII_UPPER or iban[1] not in ASCII_UPPER:
            raise reject(side, "must start with a two-letter country code")
        country = IBAN_COUNTRIES.get(iban[:2])
        if country is None:
            raise reject(side, "country code is not an IBAN country in the registry")
        if iban[2] not in ASCII_DIGITS or iban[3] not in ASCII_DIGITS:
            raise reject(side, "check digits (positions 3-4) must be digits")
        # 00, 01 and 99 can also satisfy MOD 97-10, but ISO 13616 allows only 02 to 98, and
        # only that range is recomputed back to the same digits.
        if not "02" <= iban[2:4] <= "98":
            raise reject(side, "check digits (positions 3-4) must be from 02 to 98")
        if len(iban) != country.length:
            raise reject(side, f"must be {country.length} characters long for its country")

        for offset, kind in enumerate(country.bban_classes):
            if iban[4 + offset] not in _CLASS_ALPHABETS[kind].index:
                position = parsed.positions[4 + offset] + 1
                raise reject(
                    side,
                    f"character at position {position} must be {_CLASS_NAMES[kind]} for "
                    "this country's BBAN format",
                )
        return parsed, country


def _parse_print_format(text: str, side: Side) -> Parsed:
    """Remove print-format spaces and check every other character is A-Z or 0-9."""
    spaced = " " in text
    canonical: list[str] = []
    positions: list[int] = []
    separators: dict[int, str] = {}

    for index, char in enumerate(text):
        is_group_gap = spaced and index % 5 == 4
        if char == " ":
            if not is_group_gap:
                raise reject(
                    side,
                    "spaces are allowed only between groups of 4 characters (print format)",
                )
            separators[index] = char
            continue
        if is_group_gap:
            raise reject(
                side, "print format needs a single space after every group of 4 characters"
            )
        if char in ASCII_LOWER:
            raise reject(
                side,
                f"character at position {index + 1} is lower case, but letters must be upper case",
            )
        if char not in ASCII_DIGITS and char not in ASCII_UPPER:
            raise reject(side, position_rule(index, _ALLOWED))
        canonical.append(char)
        positions.append(index)
    return Parsed("".join(canonical), tuple(positions), separators, len(text))
