-- Each token's statistics for its latest UTC day of use, in its own row. Paired with
-- migrations/postgres/0004_day_counts.sql.
--
-- A counted call used to rewrite two rows (the token's counters and its token_stats_daily row),
-- each on its own page of the write-ahead log. Now it rewrites the token's row only; when a call
-- on a later day arrives the held counters move to token_stats_daily. Statistics read the
-- archive plus these columns.
ALTER TABLE tokens ADD COLUMN stats_day TEXT;   -- 'YYYY-MM-DD' the day_* counters belong to
ALTER TABLE tokens ADD COLUMN day_valid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_cost INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_revoked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_expired INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_account_inactive INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_ip_not_allowed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_scope_denied INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_account_quota_exceeded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_usage_exceeded INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN day_bad_jwt INTEGER NOT NULL DEFAULT 0;
