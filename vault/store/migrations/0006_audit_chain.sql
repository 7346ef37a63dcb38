-- The tamper-evident audit trail (vault.audit): a hash chain of events and signed checkpoints.
-- tv_audit_events, the older unchained table, stays until the service stops writing to it.

-- One row per audit event. seq is gapless across replicas because every writer appends under
-- one advisory lock; hash = SHA-256(prev_hash || canonical JSON of the event), as defined in
-- vault/audit/chain.py. Never a value or a token: tokens appear only as SHA-256 digests.
CREATE TABLE tv_audit_log (
    seq            bigint      PRIMARY KEY CHECK (seq > 0),
    occurred_at    timestamptz NOT NULL,
    caller         text        NOT NULL,
    fingerprint    text        NOT NULL,
    operation      text        NOT NULL,
    template       text        NOT NULL,
    item_count     integer     NOT NULL CHECK (item_count >= 0),
    token_digests  text[]      NOT NULL,
    reference      text        NOT NULL,
    reveal         text        NOT NULL,
    purpose        text        NOT NULL,
    outcome        text        NOT NULL,
    status_code    text        NOT NULL,
    trace_id       text        NOT NULL,
    peer           text        NOT NULL,
    request_id     text        NOT NULL,
    prev_hash      bytea       NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash           bytea       NOT NULL CHECK (octet_length(hash) = 32)
);

CREATE INDEX tv_audit_log_caller_time ON tv_audit_log (caller, occurred_at);
CREATE INDEX tv_audit_log_request_id ON tv_audit_log (request_id);

-- Ed25519 signatures over (seq, hash, signed_at), written by each replica's trail. No foreign
-- key to tv_audit_log: a checkpoint must outlive deleted events, which is how truncation shows.
CREATE TABLE tv_audit_checkpoints (
    seq        bigint      NOT NULL CHECK (seq > 0),
    hash       bytea       NOT NULL CHECK (octet_length(hash) = 32),
    signed_at  timestamptz NOT NULL,
    signature  bytea       NOT NULL CHECK (octet_length(signature) = 64),
    -- Hex of the first 8 bytes of the Ed25519 public key.
    key_id     text        NOT NULL,
    PRIMARY KEY (seq, key_id)
);

-- Rows are only ever appended. The triggers stop UPDATE, DELETE and TRUNCATE by mistake or by
-- a role that does not own the tables; an owner can disable them, which the chain then shows.
-- Pruning old rows therefore means disabling the trigger in a maintenance transaction.
CREATE FUNCTION tv_audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER tv_audit_log_append_only
    BEFORE UPDATE OR DELETE ON tv_audit_log
    FOR EACH ROW EXECUTE FUNCTION tv_audit_reject_change();
CREATE TRIGGER tv_audit_log_no_truncate
    BEFORE TRUNCATE ON tv_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION tv_audit_reject_change();
CREATE TRIGGER tv_audit_checkpoints_append_only
    BEFORE UPDATE OR DELETE ON tv_audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION tv_audit_reject_change();
CREATE TRIGGER tv_audit_checkpoints_no_truncate
    BEFORE TRUNCATE ON tv_audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION tv_audit_reject_change();
