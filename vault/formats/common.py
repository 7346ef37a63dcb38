"""Pieces shared by the template types: settings parsing, a base class, and split/join helpers.

A type parses its input into a ``Parsed`` (the canonical characters without separators and the
output position of each), then ``build_split`` divides the canonical characters into kept, body
and derived positions. ``fill_layout`` is the first half of every ``join``: it writes the kept
characters and the body, and leaves the derived positions for the type to compute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vault.errors import ConfigError, InvalidValue
from vault.formats.alphabets import ASCII_DIGITS, Alphabet
from vault.formats.base import Layout, Mode, Side, Split, Template
from vault.fpe import MIN_DOMAIN

# Bounded so that the value fits a signed 32-bit integer wherever it is stored.
MAX_TTL_SECONDS = 2**31 - 1


def count_noun(count: int, noun: str) -> str:
    """Write a count with its noun in singular or plural ("1 digit", "5 digits")."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def smallest_length_for_domain(radix: int) -> int:
    """Return the fewest positions of ``radix`` whose domain reaches ``MIN_DOMAIN``."""
    length = 0
    while radix**length < MIN_DOMAIN:
        length += 1
    return length


# With MIN_DOMAIN = 1,000,000 a decimal body needs 6 digits.
MIN_BODY_DIGITS = smallest_length_for_domain(10)


class SettingsReader:
    """Reader of one template's settings that records resolved values and rejects unknown keys."""

    def __init__(self, template_name: str, settings: Mapping[str, Any]) -> None:
        self.template_name = template_name
        self._settings = dict(settings)
        self._read: set[str] = set()
        self.resolved: dict[str, Any] = {}

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"template '{self.template_name}': {message}")

    def has(self, key: str) -> bool:
        return key in self._settings

    def _take(self, key: str) -> Any:
        self._read.add(key)
        return self._settings.get(key)

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        value = self._take(key)
        if value is None:
            value = default
        # bool is a subclass of int in Python, and `true` is never a sensible length.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{key} must be an integer from {minimum} to {maximum}")
        if not minimum <= value <= maximum:
            raise self.error(f"{key} must be an integer from {minimum} to {maximum}")
        self.resolved[key] = value
        return value

    def optional_integer(self, key: str, minimum: int, maximum: int) -> int | None:
        if self._settings.get(key) is None:
            self._take(key)
            self.resolved[key] = None
            return None
        return self.integer(key, minimum, minimum, maximum)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._take(key)
        if value is None:
            value = default
        if not isinstance(value, bool):
            raise self.error(f"{key} must be true or false")
        self.resolved[key] = value
        return value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self._take(key)
        if value is None:
            value = default
        if not isinstance(value, str) or value not in choices:
            listed = ", ".join(f'"{choice}"' for choice in choices)
            raise self.error(f"{key} must be one of {listed}")
        self.resolved[key] = value
        return value

    def required_string(self, key: str) -> str:
        value = self._take(key)
        if value is None:
            raise self.error(f"{key} is required")
        if not isinstance(value, str):
            raise self.error(f"{key} must be a string")
        self.resolved[key] = value
        return value

    def reject_unknown_keys(self) -> None:
        unknown = sorted(set(self._settings) - self._read)
        if unknown:
            allowed = ", ".join(sorted(self._read))
            raise self.error(f"unknown key {unknown[0]!r} (allowed keys: {allowed})")


class TemplateBase(Template):
    """Base class that reads the shared keys ``type``, ``mode``, ``convergent``, ``ttl_seconds``.

    Subclasses read their own keys in ``read_settings``, and then the constructor rejects any
    key that no one read.
    """

    type_name = "base"

    def __init__(self, name: str, settings: Mapping[str, Any]) -> None:
        reader = SettingsReader(name, settings)
        self.name = name
        reader.choice("type", self.type_name, (self.type_name,))
        self.mode = Mode(reader.choice("mode", "vaultless", ("vaultless", "vaulted")))

        if self.mode is Mode.VAULTLESS:
            for key in ("convergent", "ttl_seconds"):
                if reader.has(key):
                    raise reader.error(f'{key} applies only to mode = "vaulted"')
        self.convergent = reader.boolean("convergent", False)
        self.ttl_seconds = reader.optional_integer("ttl_seconds", 1, MAX_TTL_SECONDS)

        self.read_settings(reader)
        reader.reject_unknown_keys()
        self.settings = dict(reader.resolved)

    def read_settings(self, reader: SettingsReader) -> None:
        """Read the type's own keys (the base class has none)."""

    @property
    def vaultless(self) -> bool:
        return self.mode is Mode.VAULTLESS

    def config_error(self, message: str) -> ConfigError:
        return ConfigError(f"template '{self.name}': {message}")

    def describe(self) -> dict[str, object]:
        description = super().describe()
        description.update(self.settings)
        return description


def reject(side: Side, rule: str) -> InvalidValue:
    return InvalidValue(side.value, rule)


def position_rule(index: int, allowed: str) -> str:
    """Word the rule for a disallowed character at 0-based ``index`` (messages count from 1)."""
    return f"character at position {index + 1} is not allowed (allowed: {allowed})"


def check_text(text: str, side: Side, max_length: int) -> None:
    """Reject text that is not a string, empty, too long, or padded with whitespace."""
    if not isinstance(text, str):
        raise TypeError("text must be a str")
    if not text:
        raise reject(side, "must not be empty")
    # isspace() only selects the message, because callers reject every whitespace character
    # at either end anyway.
    if text[0].isspace() or text[-1].isspace():
        raise reject(side, "must not start or end with whitespace")
    if len(text) > max_length:
        raise reject(side, f"must be at most {max_length} characters long")


@dataclass(frozen=True)
class Parsed:
    """Input with its separators taken out.

    ``positions[i]`` is where ``canonical[i]`` sits in the input, and ``separators`` maps the
    other input positions to their separator characters.
    """

    canonical: str
    positions: tuple[int, ...]
    separators: dict[int, str]
    length: int


def parse_plain(text: str) -> Parsed:
    """Wrap input that has no separators."""
    return Parsed(text, tuple(range(len(text))), {}, len(text))


def parse_separated_digits(text: str, side: Side, separators: str, allowed: str) -> Parsed:
    """Parse digits with optional single separators between them, all of one kind.

    Rejects a separator at either end, two separators in a row, and two kinds in one value
    (for example "4111 1111-1111 1111"), because such input is more often a paste error than
    a deliberate format.
    """
    canonical: list[str] = []
    positions: list[int] = []
    found: dict[int, str] = {}
    last = len(text) - 1

    for index, char in enumerate(text):
        if char in ASCII_DIGITS:
            canonical.append(char)
            positions.append(index)
            continue
        if char not in separators:
            raise reject(side, position_rule(index, allowed))
        if index == 0 or index == last:
            raise reject(side, "must not start or end with a separator")
        if index - 1 in found:
            raise reject(side, "separators must be single characters between digits")
        found[index] = char

    if len(set(found.values())) > 1:
        raise reject(side, "must use one kind of separator, not a mix")
    return Parsed("".join(canonical), tuple(positions), found, len(text))


@dataclass(frozen=True)
class LayoutDetail:
    """``Layout.extra`` for every type: the alphabet of each body position and where the
    separators are (positions that are not part of the canonical string)."""

    alphabets: tuple[Alphabet, ...]
    separators: tuple[int, ...]


def encode_context(
    type_name: str, length: int, kept: Iterable[tuple[int, str]], classes: str
) -> bytes:
    """Encode what binds the tweak: type, canonical length, kept characters, body classes.

    Kept characters are written as canonical position and code point, so no character of a
    generic alphabet can be mistaken for a delimiter. Changing this encoding changes every
    vaultless token.
    """
    kept_text = ",".join(f"{position}:{ord(char):x}" for position, char in kept)
    return "\x1f".join((type_name, str(length), kept_text, classes)).encode("ascii")


def build_split(
    type_name: str,
    parsed: Parsed,
    kept: Iterable[int],
    body: Sequence[int],
    alphabets: Sequence[Alphabet],
    derived: Sequence[int] = (),
) -> Split:
    """Build a split from canonical indices: kept characters, body characters and derived ones.

    ``alphabets[i]`` is the alphabet of ``body[i]``, and every body character must belong to it.
    """
    canonical = parsed.canonical
    kept_indices = sorted(kept)
    numerals = tuple(
        alphabet.index[canonical[i]] for i, alphabet in zip(body, alphabets, strict=True)
    )
    radices = tuple(alphabet.radix for alphabet in alphabets)
    context = encode_context(
        type_name,
        len(canonical),
        ((i, canonical[i]) for i in kept_indices),
        "".join(alphabet.code for alphabet in alphabets),
    )

    layout_kept = dict(parsed.separators)
    for i in kept_indices:
        layout_kept[parsed.positions[i]] = canonical[i]
    layout = Layout(
        length=parsed.length,
        kept=layout_kept,
        body_positions=tuple(parsed.positions[i] for i in body),
        derived=tuple(parsed.positions[i] for i in derived),
        extra=LayoutDetail(tuple(alphabets), tuple(sorted(parsed.separators))),
    )
    return Split(numerals, radices, context, canonical, layout)


def layout_detail(layout: Layout) -> LayoutDetail:
    if not isinstance(layout.extra, LayoutDetail):
        raise ValueError("layout was not built by a Tokenvault template")
    return layout.extra


def fill_layout(layout: Layout, body: Sequence[int]) -> list[str]:
    """Write kept characters and body symbols, leaving derived positions as empty strings.

    Raises ValueError when the body does not fit the layout (a caller bug, not bad input).
    """
    detail = layout_detail(layout)
    if len(body) != len(layout.body_positions):
        raise ValueError(
            f"body has {len(body)} numerals but the layout has {len(layout.body_positions)}"
        )

    chars = [""] * layout.length
    for position, char in layout.kept.items():
        chars[position] = char
    for position, numeral, alphabet in zip(
        layout.body_positions, body, detail.alphabets, strict=True
    ):
        if not 0 <= numeral < alphabet.radix:
            raise ValueError(f"numeral {numeral} is outside radix {alphabet.radix}")
        chars[position] = alphabet.symbols[numeral]
    return chars


def canonical_indices(layout: Layout) -> list[int]:
    """Return the output positions that belong to the canonical string, in order."""
    separators = set(layout_detail(layout).separators)
    return [position for position in range(layout.length) if position not in separators]


def finish_join(chars: list[str]) -> str:
    if any(char == "" for char in chars):
        raise ValueError("layout left a position unfilled")
    return "".join(chars)


def domain_of(radices: Sequence[int]) -> int:
    return math.prod(radices)


def check_item_domain(split: Split, side: Side, rule: str) -> None:
    """Reject one item whose body domain is below the FF1 minimum (vaultless mode only)."""
    if domain_of(split.radices) < MIN_DOMAIN:
        raise reject(side, rule)


def mask_positions(text: str, parsed: Parsed, visible: Iterable[int]) -> str:
    """Replace every canonical character except the ``visible`` indices with ``*``."""
    chars = list(text)
    shown = set(visible)
    for index, position in enumerate(parsed.positions):
        if index not in shown:
            chars[position] = "*"
    return "".join(chars)
