"""Character classes that templates accept and tokenize, as explicit sets.

Every check compares against these strings and never calls ``str.isdigit()`` or
``str.isalpha()``, because those accept full-width, Arabic-Indic and other Unicode digits and
letters that no template allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ASCII_DIGITS = "0123456789"
ASCII_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ASCII_LOWER = "abcdefghijklmnopqrstuvwxyz"

# Upper-case letters of Latin-1 Supplement (U+00C0-U+00DE without U+00D7) and Latin Extended-A.
LATIN_UPPER = (
    "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞĀĂĄĆĈĊČĎĐĒĔĖĘĚĜĞĠĢĤĦĨĪĬĮİĲĴĶĹĻĽĿŁŃŅŇŊŌŎŐŒŔŖŘŚŜŞŠŢŤŦŨŪŬŮŰŲŴŶŸŹŻŽ"
)
# Lower-case letters of the same blocks (U+00DF-U+00FF without U+00F7, then Latin Extended-A).
# Kra (U+0138), n preceded by apostrophe (U+0149) and long s (U+017F) are left out because
# they are obsolete or deprecated.
LATIN_LOWER = (
    "ßàáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿāăąćĉċčďđēĕėęěĝğġģĥħĩīĭįıĳĵķĺļľŀłńņňŋōŏőœŕŗřśŝşšţťŧũūŭůűųŵŷźżž"
)


@dataclass(frozen=True)
class Alphabet:
    """An ordered set of symbols: the numeral of a symbol is its index, the radix is the size.

    ``code`` is one character naming the class in a split's context, so that two positions with
    the same radix but a different class (upper or lower case) bind different tweaks.
    """

    code: str
    symbols: str
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("alphabet symbols must be distinct")
        object.__setattr__(self, "index", {symbol: i for i, symbol in enumerate(self.symbols)})

    @property
    def radix(self) -> int:
        return len(self.symbols)


DIGITS = Alphabet("n", ASCII_DIGITS)
UPPER = Alphabet("A", ASCII_UPPER)
LOWER = Alphabet("a", ASCII_LOWER)
# IBAN "c" positions: digits or upper-case letters (electronic format has no lower case).
UPPER_ALPHANUMERIC = Alphabet("c", ASCII_DIGITS + ASCII_UPPER)
LATIN_UPPER_LETTERS = Alphabet("U", LATIN_UPPER)
LATIN_LOWER_LETTERS = Alphabet("L", LATIN_LOWER)
