-- Each account's count of live tokens (status active or exhausted), kept by triggers, so
-- issuing a token checks `max_tokens` at a cost that does not grow with the account's tokens.
-- Paired with migrations/sqlite/0005_live_tokens.sql.
--
-- A live token past its expiry that the expiry job has not marked yet still counts here; an
-- issue subtracts those, found through the partial index below, which holds live tokens only.
ALTER TABLE accounts ADD COLUMN live_tokens BIGINT NOT NULL DEFAULT 0;
UPDATE accounts a SET live_tokens = (SELECT COUNT(*) FROM tokens t
    WHERE t.account_id = a.id AND t.status IN ('active', 'exhausted'));
CREATE INDEX tokens_live_by_expiry ON tokens (account_id, expires_at)
    WHERE status IN ('active', 'exhausted');

-- Issues insert many rows per statement: one update of the account per statement, not per row
-- (the same row updated thousands of times in one transaction grows a long chain of versions).
CREATE FUNCTION tokens_live_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts a SET live_tokens = a.live_tokens + n.c
        FROM (SELECT account_id, COUNT(*) AS c FROM new_rows
              WHERE status IN ('active', 'exhausted') GROUP BY account_id) n
        WHERE a.id = n.account_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION tokens_live_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts a SET live_tokens = a.live_tokens - o.c
        FROM (SELECT account_id, COUNT(*) AS c FROM old_rows
              WHERE status IN ('active', 'exhausted') GROUP BY account_id) o
        WHERE a.id = o.account_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_live_insert AFTER INSERT ON tokens
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tokens_live_inserted();
CREATE TRIGGER tokens_live_delete AFTER DELETE ON tokens
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tokens_live_deleted();

-- A status change is one row at a time (a revocation, an expiry). Counting calls moves a token
-- between active and exhausted only, which leaves the count as it is: the trigger does not
-- fire on that path.
CREATE FUNCTION tokens_live_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts SET live_tokens = live_tokens
        + CASE WHEN NEW.status IN ('active', 'exhausted') THEN 1 ELSE -1 END
        WHERE id = NEW.account_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER tokens_live_status AFTER UPDATE OF status ON tokens
    FOR EACH ROW
    WHEN ((OLD.status IN ('active', 'exhausted')) IS DISTINCT FROM (NEW.status IN ('active', 'exhausted')))
    EXECUTE FUNCTION tokens_live_status();
