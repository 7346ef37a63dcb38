"""Mapping between text and the numeral strings that FF1 and FF3-1 operate on."""

from __future__ import annotations

from collections.abc import Sequence

from vault.fpe.domain import MAX_RADIX, MIN_RADIX
from vault.fpe.errors import FPEError


class Alphabet:
    """An ordered set of distinct symbols, where the symbol at index i is numeral i."""

    __slots__ = ("radix", "symbols", "_numeral_of")

    def __init__(self, symbols: str) -> None:
        if not MIN_RADIX <= len(symbols) <= MAX_RADIX:
            raise FPEError(
                f"symbols: an alphabet needs {MIN_RADIX}..{MAX_RADIX} symbols, got {len(symbols)}"
            )

        numeral_of: dict[str, int] = {}
        for numeral, symbol in enumerate(symbols):
            if numeral_of.setdefault(symbol, numeral) != numeral:
                raise FPEError(f"symbols: position {numeral} repeats an earlier symbol")

        self.symbols = symbols
        self.radix = len(symbols)
        self._numeral_of = numeral_of

    def __repr__(self) -> str:
        return f"Alphabet(radix={self.radix})"

    def to_numerals(self, text: str) -> list[int]:
        """Convert text to numerals.

        Raises FPEError naming the position, not the symbol, of a symbol outside the alphabet.
        """
        numeral_of = self._numeral_of
        numerals = []
        for position, symbol in enumerate(text):
            numeral = numeral_of.get(symbol)
            if numeral is None:
                raise FPEError(
                    f"text: position {position} is not in the alphabet of radix {self.radix}"
                )
            numerals.append(numeral)
        return numerals

    def to_text(self, numerals: Sequence[int]) -> str:
        """Convert numerals in 0..radix-1 to text."""
        symbols = self.symbols
        radix = self.radix
        characters = []
        for position, numeral in enumerate(numerals):
            if not 0 <= numeral < radix:
                raise FPEError(f"numerals: position {position} is outside radix {radix}")
            characters.append(symbols[numeral])
        return "".join(characters)
