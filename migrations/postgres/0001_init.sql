-- tokenwarden schema, PostgreSQL flavour. Paired one to one with migrations/sqlite/0001_init.sql.
-- Times are TIMESTAMPTZ values written by the daemon (never CURRENT_TIMESTAMP), so the
-- injected clock rules everything.

CREATE TABLE operator_credentials (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),  -- one operator credential per store
    secret_hash BYTEA   NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE accounts (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    status        TEXT    NOT NULL CHECK (status IN ('active', 'inactive')),
    max_tokens    BIGINT  NOT NULL,
    monthly_quota BIGINT,                     -- calls per calendar month over all tokens; NULL = none
    quota_used    BIGINT  NOT NULL DEFAULT 0,  -- calls counted in quota_period
    quota_period  TEXT,                        -- 'YYYY-MM' that quota_used belongs to
    secret_hash   BYTEA   NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE users (
    id            TEXT    PRIMARY KEY,
    account_id    TEXT    NOT NULL REFERENCES accounts (id),
    email         TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'engineer', 'user', 'readonly')),
    notify_expiry BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    UNIQUE (account_id, email)
);

CREATE TABLE tokens (
    id                      TEXT    PRIMARY KEY,
    account_id              TEXT    NOT NULL REFERENCES accounts (id),
    user_id                 TEXT    REFERENCES users (id),   -- the user it was issued for, if any
    issued_by               TEXT    NOT NULL,                -- operator | account | user:<id> | token:<id> | policy:<name>
    policy_name             TEXT,
    policy_period           TEXT,                            -- 'YYYY-MM' a policy issued it for
    name                    TEXT    NOT NULL,
    description             TEXT,
    role                    TEXT    NOT NULL CHECK (role IN ('admin', 'engineer', 'user', 'readonly')),
    scopes                  TEXT    NOT NULL DEFAULT '[]',   -- JSON array of strings
    allowed_ips             TEXT    NOT NULL DEFAULT '[]',   -- JSON array of IPs/CIDRs
    usage_limit             BIGINT,                         -- NULL = unlimited
    remaining               BIGINT,
    refill_monthly          BIGINT,                         -- remaining is set back to this on the 1st
    expires_at              TIMESTAMPTZ,                            -- NULL = never
    status                  TEXT    NOT NULL CHECK (status IN ('active', 'expired', 'exhausted', 'revoked')),
    jwt_enabled             BOOLEAN NOT NULL DEFAULT FALSE,
    sealed_secret           BYTEA,                            -- AES-256-GCM sealed token, JWT signers only
    secret_hash             BYTEA   NOT NULL,
    prev_secret_hash        BYTEA,                            -- old secret during a regeneration grace period
    prev_secret_valid_until TIMESTAMPTZ,
    calls_month             BIGINT  NOT NULL DEFAULT 0,
    calls_month_period      TEXT,                            -- 'YYYY-MM' that calls_month belongs to
    calls_total             BIGINT  NOT NULL DEFAULT 0,
    last_used_at            TIMESTAMPTZ,
    last_used_ip            TEXT,
    created_at              TIMESTAMPTZ NOT NULL,
    updated_at              TIMESTAMPTZ NOT NULL,
    revoked_at              TIMESTAMPTZ,
    UNIQUE (policy_name, policy_period)                      -- one token per policy per month
);

CREATE INDEX tokens_by_account ON tokens (account_id, created_at, id);
CREATE INDEX tokens_by_user ON tokens (user_id);
CREATE INDEX tokens_by_expiry ON tokens (expires_at) WHERE status <> 'revoked';

-- One row per (token, warning threshold, expiry instant) claimed for an expiry warning, so each
-- warning goes out once; a changed expiry re-arms the warnings.
CREATE TABLE token_expiry_warnings (
    token_id       TEXT    NOT NULL REFERENCES tokens (id),
    threshold_days BIGINT  NOT NULL,
    expires_at     TIMESTAMPTZ NOT NULL,
    claimed_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (token_id, threshold_days, expires_at)
);
