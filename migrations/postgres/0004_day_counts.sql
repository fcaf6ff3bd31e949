-- Each token's statistics for its latest UTC day of use, in its own row, and room for HOT
-- updates. Paired with migrations/sqlite/0004_day_counts.sql.
--
-- A counted call used to rewrite two rows (the token's counters and its token_stats_daily row).
-- Now it rewrites the token's row only; when a call on a later day arrives the held counters
-- move to token_stats_daily. Statistics read the archive plus these columns.
ALTER TABLE tokens ADD COLUMN stats_day TEXT;   -- 'YYYY-MM-DD' the day_* counters belong to
ALTER TABLE tokens ADD COLUMN day_valid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_cost BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_revoked BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_expired BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_account_inactive BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_ip_not_allowed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_scope_denied BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_account_quota_exceeded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_usage_exceeded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_bad_jwt BIGINT NOT NULL DEFAULT 0;

-- Every counted call rewrites its token's row. On full pages (the default fillfactor 100) each
-- rewrite is a new tuple plus an entry in every index of the table (five on tokens); with free
-- space on the page PostgreSQL updates in place (heap-only tuples) and leaves the indexes alone,
-- since no indexed column changes. Applies to pages written from now on; `VACUUM FULL tokens`
-- repacks an existing store.
ALTER TABLE tokens SET (fillfactor = 80);
ALTER TABLE accounts SET (fillfactor = 80);
ALTER TABLE token_stats_daily SET (fillfactor = 80);
