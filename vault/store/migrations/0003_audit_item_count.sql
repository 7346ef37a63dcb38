-- Denied items and items naming unknown templates are recorded as one row per request,
-- template and status, with the number of items, so a caller without scopes cannot fill the
-- audit table at 10,000 rows per call.
ALTER TABLE tv_audit_events
    ADD COLUMN item_count integer NOT NULL DEFAULT 1 CHECK (item_count > 0);
