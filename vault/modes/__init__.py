"""The two ways a value becomes a token: vaultless (FF1) and vaulted (random, stored)."""
