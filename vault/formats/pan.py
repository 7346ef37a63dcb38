"""Payment card numbers (PAN): 12 to 19 digits that pass the Luhn check.

Input: ASCII digits, optionally grouped by single spaces or single dashes (one kind per value,
never at either end). Separators keep their positions in the token, and the context ignores
them, so "4111 1111 1111 1111" and "4111111111111111" encrypt the same digits.

Kept digits: the first ``keep_first`` and the last ``keep_last``. With ``luhn`` = "valid" or
"invalid" the last middle digit (just before the kept suffix) is derived rather than
encrypted. On the value side it is recomputed so the value passes the Luhn check, which
loses nothing because every accepted value passes it. On the token side it makes the token
pass the check ("valid"), or fail it ("invalid"). With ``luhn`` = "any" the whole middle is
encrypted and tokens are not checked.

FF1 key versions: a failing check digit has 9 possible values, so a vaultless template with
``luhn`` = "invalid" writes its FF1 key version v (1 to 9) into the token as the digit
``(passing digit + v) mod 10``. Detokenizing reads v back and decrypts with that version, so
tokens survive key rotation at no cost to the domain. Version 1 is the passing digit plus 1.
Vaulted templates and other ``luhn`` settings carry no version (``max_key_versions`` = 1).

Minimum domain (vaultless): the encrypted middle needs 6 digits, since 10**6 is FF1's minimum
domain. With ``short_domain`` = "keep_fewer", a length whose configured kept digits leave fewer
keeps fewer leading digits, just enough to reach 6, while the last ``keep_last`` stay:
``kept_first = min(keep_first, length - keep_last - derived - 6)``, where ``derived`` is 1
unless ``luhn`` = "any". For the shipped ``pan_fpe`` template (keep 6 + 4, luhn "invalid"):

    length   12  13  14  15  16  17  18  19
    first     1   2   3   4   5   6   6   6
    last      4   4   4   4   4   4   4   4
    derived   1   1   1   1   1   1   1   1
    body      6   6   6   6   6   6   7   8

Vaulted templates have no minimum and keep exactly what is configured. ``short_domain`` =
"keep_fewer" on a vaulted template is a configuration error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vault.formats.alphabets import DIGITS
from vault.formats.base import Layout, Side, Split
from vault.formats.common import (
    MIN_BODY_DIGITS,
    Parsed,
    SettingsReader,
    TemplateBase,
    build_split,
    canonical_indices,
    check_text,
    count_noun,
    fill_layout,
    finish_join,
    mask_positions,
    parse_separated_digits,
    reject,
)
from vault.formats.luhn import is_luhn_valid, luhn_digit_at
from vault.fpe import MIN_DOMAIN

_ALLOWED = "digits, space, dash"
# A masked PAN shows at most the first 6 and last 4 digits, the display limit of PCI DSS.
_MASK_FIRST = 6
_MASK_LAST = 4
_MASK_HIDDEN_MIN = 4
# A failing Luhn digit can take 9 values, one per FF1 key version.
_MAX_CHECK_DIGIT_VERSIONS = 9


@dataclass(frozen=True)
class PanPlan:
    """Division of one PAN length into kept leading and trailing, derived and encrypted digits."""

    length: int
    first: int
    last: int
    derived: int
    body: int


class PanTemplate(TemplateBase):
    type_name = "pan"

    def read_settings(self, reader: SettingsReader) -> None:
        self.min_length = reader.integer("min_length", 12, 12, 19)
        self.max_length = reader.integer("max_length", 19, 12, 19)
        if self.min_length > self.max_length:
            raise reader.error("min_length must not be greater than max_length")
        self.keep_first = reader.integer("keep_first", 6, 0, 8)
        self.keep_last = reader.integer("keep_last", 4, 0, 4)
        self.luhn = reader.choice("luhn", "invalid", ("invalid", "valid", "any"))
        self.short_domain = reader.choice("short_domain", "reject", ("reject", "keep_fewer"))
        if self.vaultless and self.luhn == "invalid":
            self.max_key_versions = _MAX_CHECK_DIGIT_VERSIONS
        if self.short_domain == "keep_fewer" and not self.vaultless:
            raise reader.error('short_domain = "keep_fewer" applies only to mode = "vaultless"')

        for length in range(self.min_length, self.max_length + 1):
            plan = self.plan_for_length(length)
            if plan.body < 1:
                raise reader.error(
                    f"keep_first ({self.keep_first}) and keep_last ({self.keep_last}) leave no "
                    f"digit to tokenize in {length}-digit PANs. Raise min_length or keep fewer "
                    "digits."
                )

    def plan_for_length(self, length: int) -> PanPlan:
        """Return how a PAN of ``length`` digits is divided under this configuration."""
        derived = 0 if self.luhn == "any" else 1
        first = self.keep_first
        if self.vaultless and self.short_domain == "keep_fewer":
            first = max(0, min(first, length - self.keep_last - derived - MIN_BODY_DIGITS))
        body = length - first - self.keep_last - derived
        return PanPlan(length, first, self.keep_last, derived, body)

    def check_domain(self) -> None:
        if not self.vaultless:
            return
        for length in range(self.min_length, self.max_length + 1):
            plan = self.plan_for_length(length)
            domain = 10**plan.body
            if domain >= MIN_DOMAIN:
                continue
            luhn_part = " and derives the Luhn digit" if plan.derived else ""
            needed = plan.first + plan.last + plan.derived + MIN_BODY_DIGITS
            narrow = (
                f"Narrow min_length to {needed}"
                if needed <= self.max_length
                else "Keep fewer digits"
            )
            body_text = count_noun(plan.body, "digit")
            raise self.config_error(
                f"a {length}-digit PAN keeps {plan.first} leading and {plan.last} trailing "
                f"digits{luhn_part}, leaving {body_text} to encrypt (a domain of "
                f"{domain:,}, below the FF1 minimum of {MIN_DOMAIN:,}). {narrow}, set "
                'short_domain = "keep_fewer", or use mode = "vaulted".'
            )

    def split(self, text: str, side: Side) -> Split:
        parsed = self._parse_digits(text, side)
        digits = parsed.canonical
        length = len(digits)

        if side is Side.VALUE and not is_luhn_valid(digits):
            raise reject(side, "fails the Luhn check")

        plan = self.plan_for_length(length)
        kept = list(range(plan.first)) + list(range(length - plan.last, length))
        derived = [length - plan.last - 1] if plan.derived else []
        body = [i for i in range(plan.first, length - plan.last) if i not in derived]

        key_version = None
        if side is Side.TOKEN and derived:
            key_version = self._token_key_version(digits, derived[0])

        split = build_split(self.type_name, parsed, kept, body, [DIGITS] * len(body), derived)
        return replace(split, key_version=key_version) if key_version else split

    def join(
        self, layout: Layout, body: tuple[int, ...] | list[int], side: Side, key_version: int = 1
    ) -> str:
        chars = fill_layout(layout, body)
        if layout.derived:
            canonical_positions = canonical_indices(layout)
            derived_position = layout.derived[0]
            digits = "".join(chars[p] or "0" for p in canonical_positions)
            index = canonical_positions.index(derived_position)
            if side is Side.VALUE:
                chars[derived_position] = str(luhn_digit_at(digits, index))
            else:
                chars[derived_position] = self._token_check_digit(digits, index, key_version)
        return finish_join(chars)

    def mask(self, value: str) -> str:
        parsed = self._parse_digits(value, Side.VALUE)
        length = len(parsed.canonical)
        shown_first = max(0, min(_MASK_FIRST, length - _MASK_LAST - _MASK_HIDDEN_MIN))
        visible = list(range(shown_first)) + list(range(length - _MASK_LAST, length))
        return mask_positions(value, parsed, visible)

    def _parse_digits(self, text: str, side: Side) -> Parsed:
        # A PAN of max_length digits has at most max_length - 1 separators.
        check_text(text, side, self.max_length * 2 - 1)
        parsed = parse_separated_digits(text, side, " -", _ALLOWED)
        if not self.min_length <= len(parsed.canonical) <= self.max_length:
            raise reject(
                side,
                f"must be {self.min_length} to {self.max_length} digits after removing spaces "
                "and dashes",
            )
        return parsed

    def _token_check_digit(self, digits: str, index: int, key_version: int = 1) -> str:
        valid = luhn_digit_at(digits, index)
        if self.luhn == "valid":
            return str(valid)
        if not 1 <= key_version <= self.max_key_versions:
            raise ValueError(f"key_version must be 1 to {self.max_key_versions} for this template")
        return str((valid + key_version) % 10)

    def _token_key_version(self, digits: str, index: int) -> int | None:
        """Return the FF1 key version a token's check digit carries, or raise InvalidValue."""
        valid = luhn_digit_at(digits, index)
        offset = (int(digits[index]) - valid) % 10
        if self.luhn == "valid":
            if offset != 0:
                raise reject(Side.TOKEN, "fails the Luhn check (this template's tokens pass it)")
            return None
        if not 1 <= offset <= self.max_key_versions:
            raise reject(Side.TOKEN, self._token_rule())
        return offset if self.max_key_versions > 1 else None

    def _token_rule(self) -> str:
        if self.max_key_versions > 1:
            return (
                "is not a token of this template: its tokens fail the Luhn check, and this one"
                " passes it"
            )
        return (
            "is not a token of this template: its tokens fail the Luhn check with one specific"
            " digit (the passing digit plus 1, mod 10), and this one does not"
        )
