-- Each account's count of live tokens (status active or exhausted), kept by triggers, so
-- issuing a token checks `max_tokens` at a cost that does not grow with the account's tokens.
-- Paired with migrations/postgres/0005_live_tokens.sql.
--
-- A live token past its expiry that the expiry job has not marked yet still counts here; an
-- issue subtracts those, found through the partial index below, which holds live tokens only.
ALTER TABLE accounts ADD COLUMN live_tokens INTEGER NOT NULL DEFAULT 0;
UPDATE accounts SET live_tokens = (SELECT COUNT(*) FROM tokens t
    WHERE t.account_id = accounts.id AND t.status IN ('active', 'exhausted'));
CREATE INDEX tokens_live_by_expiry ON tokens (account_id, expires_at)
    WHERE status IN ('active', 'exhausted');

CREATE TRIGGER tokens_live_insert AFTER INSERT ON tokens
    WHEN NEW.status IN ('active', 'exhausted')
BEGIN
    UPDATE accounts SET live_tokens = live_tokens + 1 WHERE id = NEW.account_id;
END;

CREATE TRIGGER tokens_live_delete AFTER DELETE ON tokens
    WHEN OLD.status IN ('active', 'exhausted')
BEGIN
    UPDATE accounts SET live_tokens = live_tokens - 1 WHERE id = OLD.account_id;
END;

-- Counting calls moves a token between active and exhausted only, which leaves the count as it
-- is: the trigger does nothing on that path.
CREATE TRIGGER tokens_live_status AFTER UPDATE OF status ON tokens
    WHEN (OLD.status IN ('active', 'exhausted')) <> (NEW.status IN ('active', 'exhausted'))
BEGIN
    UPDATE accounts SET live_tokens = live_tokens
        + CASE WHEN NEW.status IN ('active', 'exhausted') THEN 1 ELSE -1 END
        WHERE id = NEW.account_id;
END;
