-- Every change an admin made through the admin API: who, what (method and path), on whom
-- (the user, room or media the path names), when, and how it ended (HTTP status).
CREATE TABLE admin_audit_log (
    id {bigint_pk_auto},
    ts BIGINT NOT NULL,
    admin TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    target TEXT,
    status INTEGER NOT NULL
);
CREATE INDEX admin_audit_log_ts ON admin_audit_log (ts);
CREATE INDEX admin_audit_log_target ON admin_audit_log (target);
