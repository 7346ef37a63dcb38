"""Bank account numbers: ASCII digits only, ``min_length`` to ``max_length`` long.

The last ``keep_last`` digits are kept and the rest is encrypted. In vaultless mode the
encrypted part needs 6 digits (10**6 is FF1's minimum domain). With ``short_domain`` =
"keep_fewer", lengths where ``keep_last`` leaves fewer keep fewer trailing digits:
``kept_last = max(0, min(keep_last, length - 6))``. Numbers shorter than 6 digits cannot reach
the minimum at all, so a vaultless template must have ``min_length`` >= 6.
"""

from __future__ import annotations

from vault.formats.alphabets import ASCII_DIGITS, DIGITS
from vault.formats.base import Layout, Side, Split
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
    parse_plain,
    position_rule,
    reject,
)
from vault.fpe import MIN_DOMAIN

# The 34-character maximum of an IBAN (ISO 13616), the longest account identifier in wide use.
_MAX_DIGITS = 34
_MASK_LAST = 4
_MASK_HIDDEN_MIN = 4


class AccountNumberTemplate(TemplateBase):
    type_name = "account_number"

    def read_settings(self, reader: SettingsReader) -> None:
        self.min_length = reader.integer("min_length", 6, 1, _MAX_DIGITS)
        self.max_length = reader.integer("max_length", 17, 1, _MAX_DIGITS)
        if self.min_length > self.max_length:
            raise reader.error("min_length must not be greater than max_length")
        self.keep_last = reader.integer("keep_last", 4, 0, _MAX_DIGITS - 1)
        self.short_domain = reader.choice("short_domain", "reject", ("reject", "keep_fewer"))
        if self.short_domain == "keep_fewer" and not self.vaultless:
            raise reader.error('short_domain = "keep_fewer" applies only to mode = "vaultless"')
        if self.kept_last_for_length(self.min_length) >= self.min_length:
            raise reader.error(
                f"keep_last ({self.keep_last}) must be less than min_length "
                f"({self.min_length}) so that at least one digit is tokenized"
            )

    def kept_last_for_length(self, length: int) -> int:
        """Return how many trailing digits a number of ``length`` digits keeps."""
        if self.vaultless and self.short_domain == "keep_fewer":
            return max(0, min(self.keep_last, length - MIN_BODY_DIGITS))
        return self.keep_last

    def check_domain(self) -> None:
        if not self.vaultless:
            return
        for length in range(self.min_length, self.max_length + 1):
            kept = self.kept_last_for_length(length)
            body = length - kept
            domain = 10**body
            if domain >= MIN_DOMAIN:
                continue
            fixes = ['use mode = "vaulted"']
            if self.short_domain == "keep_fewer":
                needed = MIN_BODY_DIGITS
            else:
                needed = self.keep_last + MIN_BODY_DIGITS
                fixes.insert(0, 'set short_domain = "keep_fewer"')
            if needed <= self.max_length:
                fixes.insert(0, f"narrow min_length to {needed}")
            elif self.keep_last:
                fixes.insert(0, "lower keep_last")
            fix_text = ", or ".join(fixes)
            fix_text = fix_text[0].upper() + fix_text[1:]
            kept_text = count_noun(kept, "trailing digit")
            body_text = count_noun(body, "digit")
            raise self.config_error(
                f"a {length}-digit account number keeps {kept_text}, leaving {body_text} to "
                f"encrypt (a domain of {domain:,}, below the FF1 minimum of {MIN_DOMAIN:,}). "
                f"{fix_text}."
            )

    def split(self, text: str, side: Side) -> Split:
        parsed = self._parse(text, side)
        length = len(parsed.canonical)
        kept_last = self.kept_last_for_length(length)
        body = list(range(length - kept_last))
        kept = list(range(length - kept_last, length))
        return build_split(self.type_name, parsed, kept, body, [DIGITS] * len(body))

    def join(
        self, layout: Layout, body: tuple[int, ...] | list[int], side: Side, key_version: int = 1
    ) -> str:
        return finish_join(fill_layout(layout, body))

    def mask(self, value: str) -> str:
        parsed = self._parse(value, Side.VALUE)
        length = len(parsed.canonical)
        shown = max(0, min(_MASK_LAST, length - _MASK_HIDDEN_MIN))
        return mask_positions(value, parsed, range(length - shown, length))

    def _parse(self, text: str, side: Side) -> Parsed:
        check_text(text, side, self.max_length)
        for index, char in enumerate(text):
            if char not in ASCII_DIGITS:
                raise reject(side, position_rule(index, "digits"))
        if len(text) < self.min_length:
            raise reject(side, f"must be {self.min_length} to {self.max_length} digits")
        return parse_plain(text)
