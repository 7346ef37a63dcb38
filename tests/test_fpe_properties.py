"""Property tests for FF1, FF3-1 and Alphabet, plus the input rules of SP 800-38G."""

from __future__ import annotations

import math

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vault.fpe import FF1, FF3_1, MIN_DOMAIN, Alphabet, FPEError, domain_size, minimum_length
from vault.fpe.ff3_1 import maximum_length

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)

RADICES = st.one_of(
    st.sampled_from([2, 3, 10, 16, 26, 36, 62, 64, 85, 255, 256, 257, 65535, 65536]),
    st.integers(2, 65536),
)
KEYS = st.sampled_from([16, 24, 32]).flatmap(lambda size: st.binary(min_size=size, max_size=size))
FF3_1_TWEAKS = st.binary(min_size=7, max_size=7)

# Symbols that never occur in an FPEError message, to show that input does not leak.
FOREIGN_SYMBOLS = ["\u2603", "\u20ac", "\u00a7", "\u00df", "\x00"]


def numeral_strings(radix: int, min_size: int, max_size: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, radix - 1), min_size=min_size, max_size=max_size)


def reference_ff1_encrypt(key: bytes, radix: int, X: list[int], T: bytes) -> list[int]:
    """FF1 encryption transcribed step by step from SP 800-38G Algorithm 7, without shortcuts.

    It keeps numeral strings, computes b with floating-point log2 and runs PRF as AES-CBC with a
    zero IV, so it shares no arithmetic shortcut with vault.fpe.ff1.
    """

    def ciph(block: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        return encryptor.update(block) + encryptor.finalize()

    def prf(data: bytes) -> bytes:
        encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
        return (encryptor.update(data) + encryptor.finalize())[-16:]

    def num(digits: list[int]) -> int:
        return sum(digit * radix ** (len(digits) - 1 - k) for k, digit in enumerate(digits))

    def str_m(x: int, m: int) -> list[int]:
        return [(x // radix ** (m - 1 - k)) % radix for k in range(m)]

    n, t = len(X), len(T)
    u = n // 2
    v = n - u
    A, B = X[:u], X[u:]
    b = math.ceil(math.ceil(v * math.log2(radix)) / 8)
    d = 4 * math.ceil(b / 4) + 4
    P = bytes([1, 2, 1]) + radix.to_bytes(3, "big") + bytes([10, u % 256])
    P += n.to_bytes(4, "big") + t.to_bytes(4, "big")
    for i in range(10):
        Q = T + bytes((-t - b - 1) % 16) + bytes([i]) + num(B).to_bytes(b, "big")
        R = prf(P + Q)
        S = R
        for j in range(1, math.ceil(d / 16)):
            S += ciph(bytes(a ^ c for a, c in zip(R, j.to_bytes(16, "big"), strict=True)))
        y = int.from_bytes(S[:d], "big")
        m = u if i % 2 == 0 else v
        C = str_m((num(A) + y) % radix**m, m)
        A, B = B, C
    return A + B


@st.composite
def ff1_inputs(draw: st.DrawFn, extra_length: int = 20) -> tuple[int, list[int]]:
    radix = draw(RADICES)
    minlen = minimum_length(radix)
    n = draw(st.integers(minlen, minlen + extra_length))
    return radix, draw(numeral_strings(radix, n, n))


@st.composite
def ff3_1_inputs(draw: st.DrawFn) -> tuple[int, list[int]]:
    radix = draw(RADICES)
    n = draw(st.integers(minimum_length(radix), maximum_length(radix)))
    return radix, draw(numeral_strings(radix, n, n))


# Round trips and shape.


@PROPERTY_SETTINGS
@given(inputs=ff1_inputs(), key=KEYS, tweak=st.binary(max_size=40))
def test_ff1_round_trip(inputs: tuple[int, list[int]], key: bytes, tweak: bytes) -> None:
    radix, plaintext = inputs
    cipher = FF1(key, radix)

    ciphertext = cipher.encrypt(plaintext, tweak)

    assert len(ciphertext) == len(plaintext)
    assert all(0 <= numeral < radix for numeral in ciphertext)
    assert cipher.decrypt(ciphertext, tweak) == plaintext


@PROPERTY_SETTINGS
@given(inputs=ff3_1_inputs(), key=KEYS, tweak=FF3_1_TWEAKS)
def test_ff3_1_round_trip(inputs: tuple[int, list[int]], key: bytes, tweak: bytes) -> None:
    radix, plaintext = inputs
    cipher = FF3_1(key, radix)

    ciphertext = cipher.encrypt(plaintext, tweak)

    assert len(ciphertext) == len(plaintext)
    assert all(0 <= numeral < radix for numeral in ciphertext)
    assert cipher.decrypt(ciphertext, tweak) == plaintext


@PROPERTY_SETTINGS
@given(inputs=ff1_inputs(extra_length=90), key=KEYS, tweak=st.binary(max_size=40))
# Long halves make b > 12, so S needs more than R, and Q spans several blocks.
@example(inputs=(65536, list(range(0, 65536, 1500))), key=bytes(16), tweak=bytes(range(30)))
@example(inputs=(10, [7] * 100), key=bytes(32), tweak=b"")
@example(inputs=(2, [1, 0] * 60), key=bytes(24), tweak=bytes(17))
def test_ff1_matches_reference(inputs: tuple[int, list[int]], key: bytes, tweak: bytes) -> None:
    radix, plaintext = inputs

    expected = reference_ff1_encrypt(key, radix, plaintext, tweak)

    assert FF1(key, radix).encrypt(plaintext, tweak) == expected


# Tweak sensitivity. 40 decimal digits make a chance collision a 1-in-10**40 event.


@PROPERTY_SETTINGS
@given(
    plaintext=numeral_strings(10, 40, 40),
    key=KEYS,
    tweaks=st.lists(st.binary(max_size=16), min_size=2, max_size=2, unique=True),
)
def test_ff1_tweak_changes_output(plaintext: list[int], key: bytes, tweaks: list[bytes]) -> None:
    cipher = FF1(key, 10)

    assert cipher.encrypt(plaintext, tweaks[0]) != cipher.encrypt(plaintext, tweaks[1])


@PROPERTY_SETTINGS
@given(
    plaintext=numeral_strings(10, 40, 40),
    key=KEYS,
    tweaks=st.lists(FF3_1_TWEAKS, min_size=2, max_size=2, unique=True),
)
def test_ff3_1_tweak_changes_output(plaintext: list[int], key: bytes, tweaks: list[bytes]) -> None:
    cipher = FF3_1(key, 10)

    assert cipher.encrypt(plaintext, tweaks[0]) != cipher.encrypt(plaintext, tweaks[1])


# Error messages never contain input.


@PROPERTY_SETTINGS
@given(
    digits=st.text(alphabet="0123456789", min_size=8, max_size=30),
    symbol=st.sampled_from(FOREIGN_SYMBOLS),
    position=st.integers(0, 30),
)
def test_alphabet_error_hides_input(digits: str, symbol: str, position: int) -> None:
    text = digits[:position] + symbol + digits[position:]

    with pytest.raises(FPEError) as caught:
        Alphabet("0123456789").to_numerals(text)

    message = str(caught.value)
    assert symbol not in message
    assert digits not in message
    assert f"position {min(position, len(digits))}" in message


@PROPERTY_SETTINGS
@given(
    plaintext=numeral_strings(10, 12, 30),
    bad_numeral=st.integers(10_000_000, 99_999_999),
    position=st.integers(0, 11),
)
def test_numeral_error_hides_input(plaintext: list[int], bad_numeral: int, position: int) -> None:
    numerals = list(plaintext)
    numerals[position] = bad_numeral
    digits = "".join(map(str, plaintext))

    for cipher in (FF1(bytes(16), 10), FF3_1(bytes(16), 10)):
        with pytest.raises(FPEError) as caught:
            cipher.encrypt(numerals, bytes(7))
        message = str(caught.value)
        assert str(bad_numeral) not in message
        assert digits not in message
        assert message == f"numerals: position {position} is outside radix 10"


def test_to_text_error_hides_numeral() -> None:
    with pytest.raises(FPEError) as caught:
        Alphabet("abc").to_text([0, 1, 987654])

    assert "987654" not in str(caught.value)
    assert str(caught.value) == "numerals: position 2 is outside radix 3"


def test_key_error_hides_key() -> None:
    key = bytes.fromhex("5eb8d1a9c4f2e3b7a6d5c4b3a2918f")

    for build in (lambda: FF1(key, 10), lambda: FF3_1(key, 10)):
        with pytest.raises(FPEError) as caught:
            build()
        assert key.hex() not in str(caught.value).lower()
        assert str(caught.value) == "key: AES needs 16, 24 or 32 bytes, got 15"


# Rules of SP 800-38G and of this package.


def test_minimum_length_values() -> None:
    assert MIN_DOMAIN == 1_000_000
    assert minimum_length(10) == 6
    assert minimum_length(26) == 5
    assert minimum_length(2) == 20
    assert minimum_length(65536) == 2
    assert minimum_length(10, min_domain=1) == 2
    assert minimum_length(10, min_domain=1001) == 4


def test_domain_size_is_product() -> None:
    assert domain_size([10, 26, 10]) == 2600
    assert domain_size([]) == 1
    with pytest.raises(FPEError):
        domain_size([10, 1])


def test_ff3_1_maximum_length() -> None:
    assert maximum_length(10) == 56
    assert maximum_length(26) == 40
    assert maximum_length(62) == 32
    assert maximum_length(65536) == 12
    assert maximum_length(2) == 192


@pytest.mark.parametrize("engine", [FF1, FF3_1])
def test_default_rejects_domain_below_minimum(engine: type[FF1] | type[FF3_1]) -> None:
    tweak = bytes(7)

    with pytest.raises(FPEError, match="numerals: length 5 is"):
        engine(bytes(16), 10).encrypt([1, 2, 3, 4, 5], tweak)
    # 10**6 equals MIN_DOMAIN, so six digits are accepted.
    assert len(engine(bytes(16), 10).encrypt([1, 2, 3, 4, 5, 6], tweak)) == 6


@pytest.mark.parametrize("engine", [FF1, FF3_1])
@pytest.mark.parametrize("length", [2, 3, 5])
def test_min_domain_parameter_allows_short(engine: type[FF1] | type[FF3_1], length: int) -> None:
    cipher = engine(bytes(16), 10, min_domain=2)
    plaintext = [9, 8, 7, 6, 5][:length]

    ciphertext = cipher.encrypt(plaintext, bytes(7))

    assert cipher.decrypt(ciphertext, bytes(7)) == plaintext


@pytest.mark.parametrize("engine", [FF1, FF3_1])
def test_length_one_always_rejected(engine: type[FF1] | type[FF3_1]) -> None:
    with pytest.raises(FPEError):
        engine(bytes(16), 65536, min_domain=1).encrypt([7], bytes(7))


def test_ff1_rejects_empty_input() -> None:
    with pytest.raises(FPEError):
        FF1(bytes(16), 10, min_domain=1).encrypt([], b"")


def test_ff1_tweak_above_maximum() -> None:
    cipher = FF1(bytes(16), 10, max_tweak_length=8)

    assert len(cipher.encrypt([0] * 10, bytes(8))) == 10
    with pytest.raises(FPEError) as caught:
        cipher.encrypt([0] * 10, bytes(9))
    assert str(caught.value) == "tweak: length 9 bytes is above max_tweak_length 8"


@pytest.mark.parametrize("tweak_length", [0, 6, 8, 16])
def test_ff3_1_tweak_must_be_7_bytes(tweak_length: int) -> None:
    with pytest.raises(FPEError) as caught:
        FF3_1(bytes(16), 10).encrypt([0] * 10, bytes(tweak_length))

    assert str(caught.value) == f"tweak: FF3-1 needs 7 bytes, got {tweak_length}"


def test_ff3_1_rejects_above_maxlen() -> None:
    cipher = FF3_1(bytes(16), 10)

    assert len(cipher.encrypt([3] * 56, bytes(7))) == 56
    with pytest.raises(FPEError):
        cipher.encrypt([3] * 57, bytes(7))


def test_ff3_1_min_domain_beyond_maxlen() -> None:
    with pytest.raises(FPEError, match="min_domain"):
        FF3_1(bytes(16), 10, min_domain=10**57)


@pytest.mark.parametrize("engine", [FF1, FF3_1])
@pytest.mark.parametrize("radix", [-1, 0, 1, 65537])
def test_radix_out_of_range(engine: type[FF1] | type[FF3_1], radix: int) -> None:
    with pytest.raises(FPEError, match=r"radix: must be in 2\.\.65536"):
        engine(bytes(16), radix)


@pytest.mark.parametrize("key_length", [0, 8, 15, 17, 31, 33, 64])
def test_bad_key_length(key_length: int) -> None:
    with pytest.raises(FPEError, match="key: AES needs 16, 24 or 32 bytes"):
        FF1(bytes(key_length), 10)


@pytest.mark.parametrize("min_domain", [0, -5])
def test_min_domain_must_be_positive(min_domain: int) -> None:
    with pytest.raises(FPEError, match="min_domain: must be at least 1"):
        FF1(bytes(16), 10, min_domain=min_domain)


# Alphabet.


def test_alphabet_round_trip() -> None:
    alphabet = Alphabet("0123456789abcdefghijklmnopqrstuvwxyz")

    assert alphabet.radix == 36
    assert alphabet.to_numerals("0az") == [0, 10, 35]
    assert alphabet.to_text([0, 10, 35]) == "0az"


def test_alphabet_rejects_duplicates() -> None:
    with pytest.raises(FPEError) as caught:
        Alphabet("abcdeb")

    assert str(caught.value) == "symbols: position 5 repeats an earlier symbol"


@pytest.mark.parametrize("symbols", ["", "x"])
def test_alphabet_rejects_too_few_symbols(symbols: str) -> None:
    with pytest.raises(FPEError, match="symbols: an alphabet needs 2..65536 symbols"):
        Alphabet(symbols)


def test_alphabet_of_65536_symbols() -> None:
    # Code points from 0x10000 on avoid the surrogate range, so all 65536 are distinct.
    alphabet = Alphabet("".join(chr(0x10000 + k) for k in range(65536)))

    assert alphabet.radix == 65536
    assert alphabet.to_numerals(chr(0x1FFFF)) == [65535]
