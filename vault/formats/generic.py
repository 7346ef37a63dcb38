"""Strings over a configured alphabet, for identifiers no other type describes.

Settings:
- ``alphabet``: 2 to 65,536 distinct characters. A symbol's numeral is its index.
- ``min_length`` and ``max_length``: the accepted lengths, in characters.
- ``keep_first`` and ``keep_last``: the lengths of a prefix and a suffix kept as they are.
 Every character of a value must be in the alphabet, and the
middle is tokenized over the whole alphabet. Unlike the other types, a value may start or end
with whitespace when the alphabet contains it.
"""

from __future__ import annotations

from vault.formats.alphabets import Alphabet
from vault.formats.base import Layout, Side, Split
from vault.formats.common import (
    Parsed,
    SettingsReader,
    TemplateBase,
    build_split,
    count_noun,
    fill_layout,
    finish_join,
    mask_positions,
    parse_plain,
    reject,
    smallest_length_for_domain,
)
from vault.fpe import MIN_DOMAIN

_MAX_RADIX = 65_536
# NOTE: a chosen bound (no standard sets one) that keeps the work for one item small.
_MAX_LENGTH = 4_096


class GenericTemplate(TemplateBase):
    type_name = "generic"

    def read_settings(self, reader: SettingsReader) -> None:
        symbols = reader.required_string("alphabet")
        if not 2 <= len(symbols) <= _MAX_RADIX:
            raise reader.error(f"alphabet must have 2 to {_MAX_RADIX:,} characters")
        if len(set(symbols)) != len(symbols):
            raise reader.error("alphabet must not repeat a character")
        self.alphabet = Alphabet("g", symbols)

        self.min_length = reader.integer("min_length", 1, 1, _MAX_LENGTH)
        self.max_length = reader.integer("max_length", 256, 1, _MAX_LENGTH)
        if self.min_length > self.max_length:
            raise reader.error("min_length must not be greater than max_length")
        self.keep_first = reader.integer("keep_first", 0, 0, _MAX_LENGTH)
        self.keep_last = reader.integer("keep_last", 0, 0, _MAX_LENGTH)
        if self.keep_first + self.keep_last >= self.min_length:
            raise reader.error(
                "keep_first + keep_last must be less than min_length so that at least one "
                "character is tokenized"
            )

    def describe(self) -> dict[str, object]:
        description = super().describe()
        # A large alphabet would flood listings and logs, so only its size is shown.
        description["alphabet"] = f"{self.alphabet.radix} characters"
        return description

    def check_domain(self) -> None:
        if not self.vaultless:
            return
        body = self.min_length - self.keep_first - self.keep_last
        domain = self.alphabet.radix**body
        if domain >= MIN_DOMAIN:
            return
        needed = self.keep_first + self.keep_last + smallest_length_for_domain(self.alphabet.radix)
        raise self.config_error(
            f"a {self.min_length}-character value leaves {count_noun(body, 'character')} of radix "
            f"{self.alphabet.radix} to encrypt (a domain of {domain:,}, below the FF1 minimum "
            f"of {MIN_DOMAIN:,}). Raise min_length to {needed}, keep fewer characters, or use "
            'mode = "vaulted".'
        )

    def split(self, text: str, side: Side) -> Split:
        parsed = self._parse(text, side)
        length = len(text)
        body = list(range(self.keep_first, length - self.keep_last))
        kept = [*range(self.keep_first), *range(length - self.keep_last, length)]
        return build_split(self.type_name, parsed, kept, body, [self.alphabet] * len(body))

    def join(
        self, layout: Layout, body: tuple[int, ...] | list[int], side: Side, key_version: int = 1
    ) -> str:
        return finish_join(fill_layout(layout, body))

    def mask(self, value: str) -> str:
        parsed = self._parse(value, Side.VALUE)
        length = len(value)
        visible = [*range(self.keep_first), *range(length - self.keep_last, length)]
        return mask_positions(value, parsed, visible)

    def _parse(self, text: str, side: Side) -> Parsed:
        if not isinstance(text, str):
            raise TypeError("text must be a str")
        if not text:
            raise reject(side, "must not be empty")
        if not self.min_length <= len(text) <= self.max_length:
            raise reject(side, f"must be {self.min_length} to {self.max_length} characters")
        for index, char in enumerate(text):
            if char not in self.alphabet.index:
                raise reject(side, f"character at position {index + 1} is not in the alphabet")
        return parse_plain(text)
