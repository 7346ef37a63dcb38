"""The AES block cipher CIPH_K that SP 800-38G builds FF1 and FF3-1 on."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from vault.fpe.errors import FPEError

AES_KEY_LENGTHS = (16, 24, 32)

# Encrypts a whole number of 16-byte blocks, each one independently.
BlockEncryptor = Callable[[bytes], bytes]


def new_aes_ecb(key: bytes) -> Cipher[modes.ECB]:
    """Return an AES cipher in ECB mode for applying CIPH_K to single blocks.

    ECB here is the bare block cipher: the FPE modes chain blocks themselves.
    """
    if len(key) not in AES_KEY_LENGTHS:
        raise FPEError(f"key: AES needs 16, 24 or 32 bytes, got {len(key)}")
    return Cipher(algorithms.AES(bytes(key)), modes.ECB())  # noqa: S305
