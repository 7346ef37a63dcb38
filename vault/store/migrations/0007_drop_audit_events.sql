-- The per-item audit table is replaced by the hash-chained tv_audit_log (0006).
DROP TABLE tv_audit_events;
