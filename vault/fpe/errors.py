"""The single exception type of the FPE engines."""

from __future__ import annotations


class FPEError(ValueError):
    """An input or parameter breaks a rule of NIST SP 800-38G or of this package.

    The message names the parameter and the rule, for example
    ``"numerals: position 3 is outside radix 10"``. It never contains input numerals,
    input characters or key bytes, so callers may log it or return it to a client.
    """
