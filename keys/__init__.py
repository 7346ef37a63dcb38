"""Key hierarchy: key-encryption-key (KEK) providers and per-template data keys."""
