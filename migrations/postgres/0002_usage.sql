-- Usage statistics, JWT use records (verification) and store-wide settings. Paired with migrations/sqlite/0002_usage.sql.

-- Per token per UTC day: successful calls, the cost they consumed, and denials by outcome.
-- Kept across the monthly reset; dropped by housekeeping after their retention.
CREATE TABLE token_stats_daily (
    token_id               TEXT    NOT NULL REFERENCES tokens (id),
    day                    TEXT    NOT NULL,               -- 'YYYY-MM-DD' (UTC)
    account_id             TEXT    NOT NULL,
    valid                  BIGINT  NOT NULL DEFAULT 0,
    cost                   BIGINT  NOT NULL DEFAULT 0,
    revoked                BIGINT  NOT NULL DEFAULT 0,
    expired                BIGINT  NOT NULL DEFAULT 0,
    account_inactive       BIGINT  NOT NULL DEFAULT 0,
    ip_not_allowed         BIGINT  NOT NULL DEFAULT 0,
    scope_denied           BIGINT  NOT NULL DEFAULT 0,
    account_quota_exceeded BIGINT  NOT NULL DEFAULT 0,
    usage_exceeded         BIGINT  NOT NULL DEFAULT 0,
    bad_jwt                BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (token_id, day)
);
CREATE INDEX token_stats_by_day ON token_stats_daily (day);

-- Uses of each short-lived JWT, so its own RequestCount is enforced across daemons.
CREATE TABLE jwt_uses (
    token_id   TEXT    NOT NULL REFERENCES tokens (id),
    jwt_id     TEXT    NOT NULL,
    uses       BIGINT  NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,                           -- housekeeping drops it after this
    PRIMARY KEY (token_id, jwt_id)
);

-- Store-wide facts every daemon must agree on (the master key's fingerprint).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
