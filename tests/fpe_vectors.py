"""Loader for the FPE known-answer vectors in vectors/fpe-vectors.json.

The tests read the vector file only through this module.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from vault.fpe import FF1, FF3_1, MIN_DOMAIN, Alphabet

VECTOR_FILE = Path(__file__).resolve().parent / "vectors" / "fpe-vectors.json"


@dataclass(frozen=True)
class FPEVector:
    """One known-answer case.

    plaintext and ciphertext are text over alphabet, or numeral lists when alphabet is None.
    """

    index: int
    algorithm: str
    key: bytes
    tweak: bytes
    radix: int
    alphabet: str | None
    plaintext: str | list[int]
    ciphertext: str | list[int]
    source: str
    note: str
    valid: bool

    @property
    def domain(self) -> int:
        """radix ** length of the plaintext."""
        return self.radix ** len(self.plaintext)

    @property
    def below_min_domain(self) -> bool:
        return self.domain < MIN_DOMAIN

    @property
    def case_id(self) -> str:
        """Short pytest id: algorithm, index and the start of the note."""
        note = "-".join(re.findall(r"[A-Za-z0-9]+", self.note))[:48]
        return f"{self.algorithm}-{self.index}-{note}"


def load_vectors() -> list[FPEVector]:
    """Read every vector of the file, in file order."""
    records = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
    return [
        FPEVector(
            index=index,
            algorithm=record["algorithm"],
            key=bytes.fromhex(record["key_hex"]),
            tweak=bytes.fromhex(record["tweak_hex"]),
            radix=record["radix"],
            alphabet=record["alphabet"],
            plaintext=record["plaintext"],
            ciphertext=record["ciphertext"],
            source=record["source"],
            note=record["note"],
            valid=record["result"] == "valid",
        )
        for index, record in enumerate(records)
    ]


def to_numerals(vector: FPEVector, value: str | list[int]) -> list[int]:
    """Convert a vector's plaintext or ciphertext to numerals.

    Raises FPEError for a symbol outside the alphabet, as some invalid vectors contain.
    """
    if vector.alphabet is None:
        assert isinstance(value, list)
        return list(value)
    assert isinstance(value, str)
    return Alphabet(vector.alphabet).to_numerals(value)


def make_cipher(vector: FPEVector, min_domain: int = MIN_DOMAIN) -> FF1 | FF3_1:
    """Build the engine the vector names, keyed with the vector's key."""
    if vector.algorithm == "FF1":
        return FF1(vector.key, vector.radix, min_domain=min_domain)
    if vector.algorithm == "FF3-1":
        return FF3_1(vector.key, vector.radix, min_domain=min_domain)
    raise ValueError(f"unknown algorithm {vector.algorithm!r} in vector {vector.index}")
