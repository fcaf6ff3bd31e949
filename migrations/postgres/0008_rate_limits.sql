-- Rate limits: at most 'limit' calls per window of 'window_seconds', stored as
-- 'limit/window_seconds', per token and per account (NULL: none). Paired with
-- migrations/sqlite/0008_rate_limits.sql.
--
-- The windows' counts are kept in each daemon's memory, not here.
ALTER TABLE tokens ADD COLUMN rate_limit TEXT;
ALTER TABLE accounts ADD COLUMN rate_limit TEXT;
