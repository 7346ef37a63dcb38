-- Tokenvault schema, version 1. Applied once, inside a transaction, by vault.store.migrate.

-- Per-template data keys, stored only wrapped by the key-encryption key (KEK).
CREATE TABLE tv_data_keys (
    template      text        NOT NULL,
    purpose       text        NOT NULL CHECK (purpose IN ('fpe', 'aead', 'index')),
    version       integer     NOT NULL CHECK (version > 0),
    state         text        NOT NULL DEFAULT 'active'
                              CHECK (state IN ('active', 'decrypt_only', 'retired', 'destroyed')),
    kek_provider  text        NOT NULL,
    kek_key_id    text        NOT NULL,
    kek_version   text        NOT NULL,
    wrapped_key   bytea,      -- NULL once destroyed
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template, purpose, version)
);

-- At most one active version per template and purpose.
CREATE UNIQUE INDEX tv_data_keys_one_active
    ON tv_data_keys (template, purpose) WHERE state = 'active';

-- Vaulted tokens: the canonical value encrypted with AES-256-GCM; the associated data binds the
-- template, the token and the key version, so a ciphertext moved to another row fails to decrypt.
CREATE TABLE tv_tokens (
    template           text        NOT NULL,
    token              text        NOT NULL,
    ciphertext         bytea       NOT NULL,
    key_version        integer     NOT NULL,
    -- HMAC-SHA256 of the canonical value under the template's index key; only for convergent
    -- templates, so the same value finds its existing token.
    value_index        bytea,
    index_key_version  integer,
    metadata           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz,
    PRIMARY KEY (template, token)
);

CREATE UNIQUE INDEX tv_tokens_value_index
    ON tv_tokens (template, value_index) WHERE value_index IS NOT NULL;
CREATE INDEX tv_tokens_expires_at ON tv_tokens (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX tv_tokens_key_version ON tv_tokens (template, key_version);

-- One row per detokenized item: who asked for what, and the outcome. Never the value.
CREATE TABLE tv_audit_events (
    id            bigserial   PRIMARY KEY,
    occurred_at   timestamptz NOT NULL DEFAULT now(),
    caller        text        NOT NULL,
    operation     text        NOT NULL,
    template      text        NOT NULL,
    -- SHA-256 (hex) of "template:canonical token": lets an investigator match a token they hold
    -- without the audit table listing tokens.
    token_digest  text,
    reference     text        NOT NULL DEFAULT '',
    reveal        text        NOT NULL DEFAULT '',
    purpose       text        NOT NULL DEFAULT '',
    outcome       text        NOT NULL,
    status_code   text        NOT NULL,
    request_id    text        NOT NULL
);

CREATE INDEX tv_audit_events_caller_time ON tv_audit_events (caller, occurred_at);
