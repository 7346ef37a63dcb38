"""IBAN countries: total length, BBAN structure and bank identifier position.

Source: the IBAN registry that SWIFT maintains for ISO 13616, as transcribed in
python-stdnum's ``stdnum/iban.dat`` (89 countries). Tests check every entry that has an
example in ``tests/data/iban-examples.csv``. The BBAN format uses the registry notation:
``4!a`` is exactly 4 upper-case letters, ``6!n`` exactly 6 digits, ``8!c`` exactly 8
upper-case letters or digits.

``bank_code`` is the bank identifier as a 0-based, end-exclusive slice of the BBAN. It is set
only where two transcriptions of the registry (php-iban's ``registry.txt`` and schwifty's
``iban-registry.json``) agree on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class IbanCountry:
    """One country's IBAN structure, with one class letter per BBAN position in ``bban_classes``."""

    code: str
    length: int
    bban_format: str
    bank_code: tuple[int, int] | None
    bban_classes: str = field(init=False)

    def __post_init__(self) -> None:
        classes = "".join(
            kind * int(count) for count, kind in re.findall(r"(\d+)!([nac])", self.bban_format)
        )
        if re.sub(r"\d+![nac]", "", self.bban_format) or len(classes) + 4 != self.length:
            raise ValueError(f"IBAN registry entry {self.code} is inconsistent")
        object.__setattr__(self, "bban_classes", classes)


# NOTE: keep_bank_code is unsupported (bank_code None) for BI, BY, CR, DJ, EG, FK, HN, IQ, IS,
# JO, LY, MN, NI, OM, PL, RU, SC, SD, SI, SO, SV, TL, VA and YE. For these countries the copies
# of the registry that were compared disagreed on the bank identifier position or left it out.
_ENTRIES: tuple[tuple[str, int, str, tuple[int, int] | None], ...] = (
    ("AD", 24, "4!n4!n12!c", (0, 4)),
    ("AE", 23, "3!n16!n", (0, 3)),
    ("AL", 28, "8!n16!c", (0, 3)),
    ("AT", 20, "5!n11!n", (0, 5)),
    ("AZ", 28, "4!a20!c", (0, 4)),
    ("BA", 20, "3!n3!n8!n2!n", (0, 3)),
    ("BE", 16, "3!n7!n2!n", (0, 3)),
    ("BG", 22, "4!a4!n2!n8!c", (0, 4)),
    ("BH", 22, "4!a14!c", (0, 4)),
    ("BI", 27, "5!n5!n11!n2!n", None),
    ("BR", 29, "8!n5!n10!n1!a1!c", (0, 8)),
    ("BY", 28, "4!c4!n16!c", None),
    ("CH", 21, "5!n12!c", (0, 5)),
    ("CR", 22, "4!n14!n", None),
    ("CY", 28, "3!n5!n16!c", (0, 3)),
    ("CZ", 24, "4!n6!n10!n", (0, 4)),
    ("DE", 22, "8!n10!n", (0, 8)),
    ("DJ", 27, "5!n5!n11!n2!n", None),
    ("DK", 18, "4!n9!n1!n", (0, 4)),
    ("DO", 28, "4!c20!n", (0, 4)),
    ("EE", 20, "2!n2!n11!n1!n", (0, 2)),
    ("EG", 29, "4!n4!n17!n", None),
    ("ES", 24, "4!n4!n1!n1!n10!n", (0, 4)),
    ("FI", 18, "3!n11!n", (0, 3)),
    ("FK", 18, "2!a12!n", None),
    ("FO", 18, "4!n9!n1!n", (0, 4)),
    ("FR", 27, "5!n5!n11!c2!n", (0, 5)),
    ("GB", 22, "4!a6!n8!n", (0, 4)),
    ("GE", 22, "2!a16!n", (0, 2)),
    ("GI", 23, "4!a15!c", (0, 4)),
    ("GL", 18, "4!n9!n1!n", (0, 4)),
    ("GR", 27, "3!n4!n16!c", (0, 3)),
    ("GT", 28, "4!c20!c", (0, 4)),
    ("HN", 28, "4!a20!n", None),
    ("HR", 21, "7!n10!n", (0, 7)),
    ("HU", 28, "3!n4!n1!n15!n1!n", (0, 3)),
    ("IE", 22, "4!a6!n8!n", (0, 4)),
    ("IL", 23, "3!n3!n13!n", (0, 3)),
    ("IQ", 23, "4!a3!n12!n", None),
    ("IS", 26, "4!n2!n6!n10!n", None),
    ("IT", 27, "1!a5!n5!n12!c", (1, 6)),
    ("JO", 30, "4!a4!n18!c", None),
    ("KW", 30, "4!a22!c", (0, 4)),
    ("KZ", 20, "3!n13!c", (0, 3)),
    ("LB", 28, "4!n20!c", (0, 4)),
    ("LC", 32, "4!a24!c", (0, 4)),
    ("LI", 21, "5!n12!c", (0, 5)),
    ("LT", 20, "5!n11!n", (0, 5)),
    ("LU", 20, "3!n13!c", (0, 3)),
    ("LV", 21, "4!a13!c", (0, 4)),
    ("LY", 25, "3!n3!n15!n", None),
    ("MC", 27, "5!n5!n11!c2!n", (0, 5)),
    ("MD", 24, "2!c18!c", (0, 2)),
    ("ME", 22, "3!n13!n2!n", (0, 3)),
    ("MK", 19, "3!n10!c2!n", (0, 3)),
    ("MN", 20, "4!n12!n", None),
    ("MR", 27, "5!n5!n11!n2!n", (0, 5)),
    ("MT", 31, "4!a5!n18!c", (0, 4)),
    ("MU", 30, "4!a2!n2!n12!n3!n3!a", (0, 6)),
    ("NI", 28, "4!a20!n", None),
    ("NL", 18, "4!a10!n", (0, 4)),
    ("NO", 15, "4!n6!n1!n", (0, 4)),
    ("OM", 23, "3!n16!c", None),
    ("PK", 24, "4!a16!c", (0, 4)),
    ("PL", 28, "8!n16!n", None),
    ("PS", 29, "4!a21!c", (0, 4)),
    ("PT", 25, "4!n4!n11!n2!n", (0, 4)),
    ("QA", 29, "4!a21!c", (0, 4)),
    ("RO", 24, "4!a16!c", (0, 4)),
    ("RS", 22, "3!n13!n2!n", (0, 3)),
    ("RU", 33, "9!n5!n15!c", None),
    ("SA", 24, "2!n18!c", (0, 2)),
    ("SC", 31, "4!a2!n2!n16!n3!a", None),
    ("SD", 18, "2!n12!n", None),
    ("SE", 24, "3!n16!n1!n", (0, 3)),
    ("SI", 19, "5!n8!n2!n", None),
    ("SK", 24, "4!n6!n10!n", (0, 4)),
    ("SM", 27, "1!a5!n5!n12!c", (1, 6)),
    ("SO", 23, "4!n3!n12!n", None),
    ("ST", 25, "4!n4!n11!n2!n", (0, 4)),
    ("SV", 28, "4!a20!n", None),
    ("TL", 23, "3!n14!n2!n", None),
    ("TN", 24, "2!n3!n13!n2!n", (0, 2)),
    ("TR", 26, "5!n1!n16!c", (0, 5)),
    ("UA", 29, "6!n19!c", (0, 6)),
    ("VA", 22, "3!n15!n", None),
    ("VG", 24, "4!a16!n", (0, 4)),
    ("XK", 20, "4!n10!n2!n", (0, 2)),
    ("YE", 30, "4!a4!n18!c", None),
)

IBAN_COUNTRIES: dict[str, IbanCountry] = {
    code: IbanCountry(code, length, bban_format, bank_code)
    for code, length, bban_format, bank_code in _ENTRIES
}

MIN_IBAN_LENGTH = min(country.length for country in IBAN_COUNTRIES.values())
MAX_IBAN_LENGTH = max(country.length for country in IBAN_COUNTRIES.values())
