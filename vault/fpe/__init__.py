"""Format-preserving encryption (NIST SP 800-38G FF1 and FF3-1) over numeral strings."""

# Smallest domain (radix ** length) that SP 800-38G Rev. 1 accepts.
MIN_DOMAIN = 1_000_000
