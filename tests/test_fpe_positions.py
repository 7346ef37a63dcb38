"""Tests for PositionCipher: FF1 over strings whose positions have different radices."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vault.fpe import FF1, FPEError, PositionCipher, domain_size

KEY = bytes(range(32))
TWEAK = b"positions"

# A BBAN-like pattern: digits and letters interleaved, 10**5 * 26**4 values.
MIXED = (10, 26, 10, 26, 10, 26, 10, 26, 10)
# Four letters then fourteen digits, the shape of a UK BBAN.
UK_BBAN = (26,) * 4 + (10,) * 14
# 2 * 3 * 5 * 7 * 11 * 13 = 30030 values: small enough to encrypt them all.
SMALL = (2, 3, 5, 7, 11, 13)


@st.composite
def radix_patterns(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Draw radices with a domain of at least 10**6, and numerals that fit them."""
    radices = draw(st.lists(st.sampled_from([2, 10, 26, 36, 62, 65536]), min_size=1, max_size=24))
    while domain_size(radices) < 1_000_000:
        radices.append(10)
    numerals = [draw(st.integers(0, radix - 1)) for radix in radices]
    return radices, numerals


def all_values(radices: tuple[int, ...]) -> list[list[int]]:
    return [list(value) for value in itertools.product(*(range(radix) for radix in radices))]


@settings(max_examples=40, deadline=None)
@given(pattern=radix_patterns(), tweak=st.binary(max_size=16))
def test_round_trip_any_radices(pattern: tuple[list[int], list[int]], tweak: bytes) -> None:
    radices, plaintext = pattern
    cipher = PositionCipher(KEY)

    ciphertext = cipher.encrypt(radices, plaintext, tweak)

    assert len(ciphertext) == len(plaintext)
    for radix, numeral in zip(radices, ciphertext, strict=True):
        assert 0 <= numeral < radix
    assert cipher.decrypt(radices, ciphertext, tweak) == plaintext


@pytest.mark.parametrize("radices", [MIXED, UK_BBAN], ids=["interleaved", "uk-bban"])
def test_mixed_round_trip(radices: tuple[int, ...]) -> None:
    cipher = PositionCipher(KEY, min_domain=2)
    plaintext = [(7 * position + 3) % radix for position, radix in enumerate(radices)]

    ciphertext = cipher.encrypt(radices, plaintext, TWEAK)

    assert ciphertext != plaintext
    for radix, numeral in zip(radices, ciphertext, strict=True):
        assert 0 <= numeral < radix
    assert cipher.decrypt(radices, ciphertext, TWEAK) == plaintext


def test_uniform_radices_equal_plain_ff1() -> None:
    plaintext = [4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]

    expected = FF1(KEY, 10).encrypt(plaintext, TWEAK)

    assert PositionCipher(KEY).encrypt([10] * 12, plaintext, TWEAK) == expected
    assert PositionCipher(KEY).decrypt([10] * 12, expected, TWEAK) == plaintext


def test_mixed_is_permutation_of_small_domain() -> None:
    cipher = PositionCipher(KEY, min_domain=1)
    values = all_values(SMALL)

    outputs = [cipher.encrypt(SMALL, value, TWEAK) for value in values]

    assert len({tuple(output) for output in outputs}) == len(values)
    for output in outputs:
        assert all(0 <= numeral < radix for radix, numeral in zip(SMALL, output, strict=True))
    assert [cipher.decrypt(SMALL, output, TWEAK) for output in outputs] == values


@pytest.mark.parametrize(
    "radices",
    [(26,), (2,), (10, 10, 10), (2, 2)],
    ids=["one-letter", "one-bit", "3-digits", "2-bits"],
)
def test_permutation_of_tiny_domains(radices: tuple[int, ...]) -> None:
    # One position, or one radix over few positions, still gives a permutation at min_domain=1.
    cipher = PositionCipher(KEY, min_domain=1)
    values = all_values(radices)

    outputs = {tuple(cipher.encrypt(radices, value, TWEAK)) for value in values}

    assert outputs == {tuple(value) for value in values}


def test_cached_ff1_shared_between_patterns() -> None:
    cipher = PositionCipher(KEY, min_domain=2)
    plaintext = [1, 2, 3, 4, 5, 6, 7, 8, 9]

    first = cipher.encrypt(MIXED, plaintext, TWEAK)
    cipher.encrypt([10] * 9, plaintext, TWEAK)
    cipher.encrypt(UK_BBAN, [0] * 18, TWEAK)

    assert cipher.encrypt(MIXED, plaintext, TWEAK) == first
    assert PositionCipher(KEY, min_domain=2).encrypt(MIXED, plaintext, TWEAK) == first


def test_domain_below_minimum_raises() -> None:
    cipher = PositionCipher(KEY)

    with pytest.raises(FPEError) as caught:
        cipher.encrypt(SMALL, [0] * len(SMALL), TWEAK)
    assert str(caught.value) == "radices: domain size 30030 is below min_domain 1000000"
    with pytest.raises(FPEError):
        cipher.decrypt([10] * 5, [0] * 5, TWEAK)


def test_numeral_outside_its_radix_raises() -> None:
    with pytest.raises(FPEError) as caught:
        PositionCipher(KEY).encrypt(MIXED, [0, 0, 0, 26, 0, 0, 0, 0, 0], TWEAK)

    assert str(caught.value) == "numerals: position 3 is outside radix 26"


def test_length_mismatch_raises() -> None:
    with pytest.raises(FPEError, match="does not match"):
        PositionCipher(KEY).encrypt(MIXED, [0] * 8, TWEAK)


@pytest.mark.parametrize(
    "radices", [(), (10, 1, 10), (10, 65537, 10)], ids=["empty", "radix-1", "radix-65537"]
)
def test_bad_radices_raise(radices: tuple[int, ...]) -> None:
    with pytest.raises(FPEError):
        PositionCipher(KEY, min_domain=1).encrypt(radices, [0] * len(radices), TWEAK)


def test_bad_key_raises() -> None:
    with pytest.raises(FPEError, match="key: AES needs 16, 24 or 32 bytes"):
        PositionCipher(bytes(20))
