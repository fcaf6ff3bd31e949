-- The account secret as a call credential, with a public ApiKey per account. Paired with
-- migrations/postgres/0009_account_keys.sql.
--
-- Each account has one key row in tokens (kind 'account', id = the account's api_key) holding
-- its secret's hash (and, once the secret is reset or for accounts made from now on, the secret
-- sealed under the master key, so a JWT the secret signed can be checked). Calls made with the
-- secret are decided, counted and reported by the same rows and statements as a token's. The
-- key row is 'revoked' while the account's secret calls are off; it never counts against
-- max_tokens and is never listed with the tokens.
ALTER TABLE tokens ADD COLUMN kind TEXT NOT NULL DEFAULT 'token' CHECK (kind IN ('token', 'account'));
ALTER TABLE accounts ADD COLUMN api_key TEXT;
-- NULL: the daemon's default (accounts.secret_calls in the config).
ALTER TABLE accounts ADD COLUMN secret_calls BOOLEAN;

DROP TRIGGER tokens_live_insert;
DROP TRIGGER tokens_live_delete;
DROP TRIGGER tokens_live_status;
CREATE TRIGGER tokens_live_insert AFTER INSERT ON tokens
    WHEN NEW.status IN ('active', 'exhausted') AND NEW.kind = 'token'
BEGIN
    UPDATE accounts SET live_tokens = live_tokens + 1 WHERE id = NEW.account_id;
END;
CREATE TRIGGER tokens_live_delete AFTER DELETE ON tokens
    WHEN OLD.status IN ('active', 'exhausted') AND OLD.kind = 'token'
BEGIN
    UPDATE accounts SET live_tokens = live_tokens - 1 WHERE id = OLD.account_id;
END;
CREATE TRIGGER tokens_live_status AFTER UPDATE OF status ON tokens
    WHEN NEW.kind = 'token'
        AND (OLD.status IN ('active', 'exhausted')) <> (NEW.status IN ('active', 'exhausted'))
BEGIN
    UPDATE accounts SET live_tokens = live_tokens
        + CASE WHEN NEW.status IN ('active', 'exhausted') THEN 1 ELSE -1 END
        WHERE id = NEW.account_id;
END;

-- Accounts set up before this get their keys from the daemon once the migrations have run
-- (`Store::migrate`): random base62 ids, each checked against every token id. Only the secret's
-- hash was kept, so those keys cannot check JWTs until the secret is reset.
CREATE UNIQUE INDEX accounts_api_key ON accounts (api_key);
