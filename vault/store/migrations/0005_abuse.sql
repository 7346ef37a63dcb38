-- Abuse protection state shared by all replicas: rate-limit token buckets and detokenize volume
-- counters. Both are written by single INSERT ... ON CONFLICT DO UPDATE statements, so
-- concurrent calls from any replica serialise on the row lock.

-- One token bucket per caller identity and operation ("tokenize", "detokenize", "admin").
-- ``tokens`` is the balance at ``refilled_at``; the refill since then is computed on each call.
CREATE TABLE tv_rate_buckets (
    identity     text        NOT NULL,
    operation    text        NOT NULL,
    tokens       numeric     NOT NULL CHECK (tokens >= 0),
    refilled_at  timestamptz NOT NULL,
    -- Outcome of the most recent call, so the upsert can return it: RETURNING sees only the new row.
    last_allowed boolean     NOT NULL,
    PRIMARY KEY (identity, operation)
);

-- Items detokenized per caller identity in fixed windows aligned to the Unix epoch. The window
-- length is part of the key, so changing a caller's rule starts new counts.
CREATE TABLE tv_detokenize_windows (
    identity        text        NOT NULL,
    window_seconds  integer     NOT NULL CHECK (window_seconds > 0),
    window_start    timestamptz NOT NULL,
    items           bigint      NOT NULL CHECK (items >= 0),
    PRIMARY KEY (identity, window_seconds, window_start)
);

-- Purging deletes by window start across all identities.
CREATE INDEX tv_detokenize_windows_start ON tv_detokenize_windows (window_start);
