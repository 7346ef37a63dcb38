"""Known-answer tests: one case per vector of vectors/fpe-vectors.json."""

from __future__ import annotations

from collections import Counter

import pytest
from fpe_vectors import FPEVector, load_vectors, make_cipher, to_numerals

from vault.fpe import MIN_DOMAIN, FPEError

VECTORS = load_vectors()
VALID = [vector for vector in VECTORS if vector.valid]
INVALID = [vector for vector in VECTORS if not vector.valid]


def test_loader_finds_all_vectors() -> None:
    counts = Counter((vector.algorithm, vector.valid) for vector in VECTORS)

    assert counts[("FF1", True)] == 25
    assert counts[("FF3-1", True)] == 34
    assert counts[("FF1", False)] == 6
    assert len(VECTORS) == 65


def test_every_vector_names_a_source() -> None:
    for vector in VECTORS:
        assert vector.source, vector.case_id


@pytest.mark.parametrize("vector", VALID, ids=[vector.case_id for vector in VALID])
def test_valid_vector_round_trip(vector: FPEVector) -> None:
    plaintext = to_numerals(vector, vector.plaintext)
    ciphertext = to_numerals(vector, vector.ciphertext)
    # A vector below the minimum domain is still correct arithmetic: check it with the rule
    # relaxed, then check that the default min_domain rejects it.
    min_domain = 2 if vector.below_min_domain else MIN_DOMAIN
    cipher = make_cipher(vector, min_domain=min_domain)

    assert cipher.encrypt(plaintext, vector.tweak) == ciphertext
    assert cipher.decrypt(ciphertext, vector.tweak) == plaintext

    if vector.below_min_domain:
        with pytest.raises(FPEError):
            make_cipher(vector).encrypt(plaintext, vector.tweak)


@pytest.mark.parametrize("vector", INVALID, ids=[vector.case_id for vector in INVALID])
def test_invalid_vector_raises(vector: FPEVector) -> None:
    with pytest.raises(FPEError):
        cipher = make_cipher(vector)
        cipher.encrypt(to_numerals(vector, vector.plaintext), vector.tweak)
