-- The audit log: one record per change made through the API, the CLI or a job, written in the
-- same transaction as the change, and one per refused management attempt. Records are never
-- updated; housekeeping deletes those older than [audit] retention_days. Paired with
-- migrations/postgres/0007_audit.sql.
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT    NOT NULL,             -- when, from the daemon's clock
    actor_kind TEXT    NOT NULL,             -- operator | cli | account | token | job | anonymous
    actor_id   TEXT,                         -- account id, token id or job name
    origin     TEXT    NOT NULL,             -- client IP | cli | job:<name>
    account_id TEXT,                         -- the account the change concerns
    action     TEXT    NOT NULL,             -- account.create, token.revoke, ...
    target     TEXT    NOT NULL,             -- account:<id> | user:<id> | token:<id> | operator | job:<name>
    changes    TEXT    NOT NULL DEFAULT '{}',  -- JSON {field: [old, new]}; never a secret or hash
    outcome    TEXT    NOT NULL CHECK (outcome IN ('ok', 'refused')),
    code       INTEGER                       -- the numeric answer code of a refusal
);
CREATE INDEX audit_log_by_time ON audit_log (at, id);
CREATE INDEX audit_log_by_account ON audit_log (account_id, id);
