-- Revoked callers and suspended callers. Every replica keeps both lists in memory and reloads
-- them on a notification on tv_access_changes, which the triggers below send on every change,
-- including changes made by hand in SQL, and also every 2 s in case a notification is lost.

-- A revoked identity, or a revoked client certificate by serial number. A restored revocation
-- keeps its row, with restored_by and restored_at set, so the history stays.
-- serial is the certificate serial number in lower-case hex without leading zeros or a 0x
-- prefix, e.g. 'a1b2' for 0xA1B2, so equal serials are equal strings.
CREATE TABLE tv_revocations (
    id           bigserial   PRIMARY KEY,
    identity     text,
    serial       text        CHECK (serial ~ '^(0|[1-9a-f][0-9a-f]*)$'),
    reason       text        NOT NULL,
    revoked_by   text        NOT NULL,
    revoked_at   timestamptz NOT NULL DEFAULT now(),
    restored_by  text,
    restored_at  timestamptz,
    CHECK (num_nonnulls(identity, serial) = 1),
    CHECK ((restored_by IS NULL) = (restored_at IS NULL))
);

-- At most one revocation in force per subject.
CREATE UNIQUE INDEX tv_revocations_one_identity
    ON tv_revocations (identity) WHERE restored_at IS NULL AND identity IS NOT NULL;
CREATE UNIQUE INDEX tv_revocations_one_serial
    ON tv_revocations (serial) WHERE restored_at IS NULL AND serial IS NOT NULL;

-- A suspended identity, set by the anomaly detector (suspended_by 'anomaly-detector') or an
-- administrator. Lifting sets lifted_by and lifted_at and keeps the row.
CREATE TABLE tv_suspensions (
    id            bigserial   PRIMARY KEY,
    identity      text        NOT NULL,
    reason        text        NOT NULL,
    suspended_by  text        NOT NULL,
    suspended_at  timestamptz NOT NULL DEFAULT now(),
    lifted_by     text,
    lifted_at     timestamptz,
    CHECK ((lifted_by IS NULL) = (lifted_at IS NULL))
);

-- At most one suspension in force per identity.
CREATE UNIQUE INDEX tv_suspensions_one_active
    ON tv_suspensions (identity) WHERE lifted_at IS NULL;

-- The payload names the table, so each list reloads only on its own changes. PostgreSQL
-- delivers it on commit and drops it on rollback.
CREATE FUNCTION tv_notify_access_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tv_access_changes', json_build_object('table', TG_TABLE_NAME)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER tv_revocations_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tv_revocations
    FOR EACH STATEMENT EXECUTE FUNCTION tv_notify_access_change();

CREATE TRIGGER tv_suspensions_notify
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tv_suspensions
    FOR EACH STATEMENT EXECUTE FUNCTION tv_notify_access_change();
