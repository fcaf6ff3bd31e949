-- Jobs (runs per period), monthly archives and the notification outbox. Paired with
-- migrations/postgres/0003_jobs.sql.

-- The month whose refill `remaining` holds, so a refill is applied once per month by whoever
-- reaches the token first (the monthly reset or a verification).
ALTER TABLE tokens ADD COLUMN refill_period TEXT;
-- Tokens that already refill hold this month's allowance: the next refill is next month's.
UPDATE tokens SET refill_period = strftime('%Y-%m', 'now') WHERE refill_monthly IS NOT NULL;

-- One row per (job, period): claimed by one daemon at a time (a lease it renews while it works),
-- marked done when the whole period is handled. A crashed run's lease runs out and the next
-- daemon completes it.
CREATE TABLE job_runs (
    job          TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    owner        TEXT    NOT NULL,
    lease_until  TEXT    NOT NULL,   -- wall-clock time the claim lapses unless renewed
    attempts     INTEGER NOT NULL,
    started_at   TEXT    NOT NULL,   -- the daemon's clock
    finished_at  TEXT,
    result       TEXT,               -- what it did, for people
    error        TEXT,
    PRIMARY KEY (job, period)
);
CREATE INDEX job_runs_latest ON job_runs (job, started_at);

-- Monthly counters as they stood when their month ended.
CREATE TABLE token_monthly_usage (
    token_id TEXT    NOT NULL REFERENCES tokens (id),
    period   TEXT    NOT NULL,       -- 'YYYY-MM'
    calls    INTEGER NOT NULL,
    PRIMARY KEY (token_id, period)
);
CREATE TABLE account_monthly_usage (
    account_id TEXT    NOT NULL REFERENCES accounts (id),
    period     TEXT    NOT NULL,
    calls      INTEGER NOT NULL,
    PRIMARY KEY (account_id, period)
);

-- Durable outbox: every email, webhook and file delivery is a row, queued in the same
-- transaction as the change it reports, and sent (with retries) by the outbox sender.
CREATE TABLE outbox (
    id              TEXT    PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('email', 'webhook', 'file')),
    topic           TEXT    NOT NULL,   -- expiry_warning | expired | token_issued
    target          TEXT    NOT NULL,   -- email address, URL or file path
    signer          TEXT,               -- whose webhook secret signs it (policy:<name> | notifications)
    account_id      TEXT,
    token_id        TEXT,
    context         TEXT    NOT NULL,   -- JSON the message is rendered from
    sealed_secret   BLOB,               -- the plain token, sealed; only when the delivery carries it; erased once sent
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,   -- the daemon's clock
    lease_until     TEXT,               -- wall clock: a sender is on it until then
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    sent_at         TEXT
);
CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX outbox_by_created ON outbox (created_at, id);

CREATE TABLE outbox_attempts (
    outbox_id TEXT    NOT NULL REFERENCES outbox (id),
    attempt   INTEGER NOT NULL,
    at        TEXT    NOT NULL,
    error     TEXT,                     -- NULL = delivered
    PRIMARY KEY (outbox_id, attempt)
);
