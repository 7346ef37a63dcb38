-- Key lifecycle: who changed which key version and when, dual-control destruction, and
-- resumable re-encryption jobs.

-- Every transition of a data key version, and every KEK rewrap, with the identity that did it.
CREATE TABLE tv_key_events (
    id           bigserial   PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    template     text        NOT NULL,
    purpose      text        NOT NULL,
    version      integer     NOT NULL,
    event        text        NOT NULL
                 CHECK (event IN ('created', 'state_changed', 'rewrapped', 'destroy_proposed',
                                  'destroy_approved', 'destroy_cancelled')),
    from_state   text,
    to_state     text,
    actor        text        NOT NULL,
    detail       jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX tv_key_events_key ON tv_key_events (template, purpose, version, occurred_at);

-- A proposal to destroy a data key version; a second, different custodian must approve it.
CREATE TABLE tv_destroy_requests (
    id           bigserial   PRIMARY KEY,
    template     text        NOT NULL,
    purpose      text        NOT NULL,
    version      integer     NOT NULL,
    force        boolean     NOT NULL DEFAULT false,
    status       text        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'approved', 'cancelled')),
    proposed_by  text        NOT NULL,
    proposed_at  timestamptz NOT NULL DEFAULT now(),
    approved_by  text,
    approved_at  timestamptz,
    FOREIGN KEY (template, purpose, version) REFERENCES tv_data_keys (template, purpose, version),
    CHECK (approved_by IS NULL OR approved_by <> proposed_by)
);

-- At most one pending proposal per key version.
CREATE UNIQUE INDEX tv_destroy_requests_one_pending
    ON tv_destroy_requests (template, purpose, version) WHERE status = 'pending';

-- Re-encryption of a template's vaulted rows to its active AEAD (and index) key version. The
-- cursor is the last token done, committed with each batch, so a restarted job resumes there.
CREATE TABLE tv_reencrypt_jobs (
    id              bigserial   PRIMARY KEY,
    template        text        NOT NULL,
    target_version  integer     NOT NULL,
    target_index_version integer,
    status          text        NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'paused', 'done', 'failed')),
    cursor_token    text,
    rows_done       bigint      NOT NULL DEFAULT 0,
    rows_total      bigint      NOT NULL DEFAULT 0,
    batch_size      integer     NOT NULL DEFAULT 500,
    max_rows_per_second integer,
    error           text,
    started_by      text        NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

-- One unfinished job per template.
CREATE UNIQUE INDEX tv_reencrypt_jobs_one_open
    ON tv_reencrypt_jobs (template) WHERE status IN ('running', 'paused');

-- Lets the key lifecycle count the rows that an index key version protects before destroying it,
-- as tv_tokens_key_version does for AEAD key versions.
CREATE INDEX tv_tokens_index_key_version
    ON tv_tokens (template, index_key_version) WHERE index_key_version IS NOT NULL;
