-- The account secret as a call credential, with a public ApiKey per account. Paired with
-- migrations/sqlite/0009_account_keys.sql.
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

CREATE OR REPLACE FUNCTION tokens_live_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts a SET live_tokens = a.live_tokens + n.c
        FROM (SELECT account_id, COUNT(*) AS c FROM new_rows
              WHERE status IN ('active', 'exhausted') AND kind = 'token' GROUP BY account_id) n
        WHERE a.id = n.account_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tokens_live_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts a SET live_tokens = a.live_tokens - o.c
        FROM (SELECT account_id, COUNT(*) AS c FROM old_rows
              WHERE status IN ('active', 'exhausted') AND kind = 'token' GROUP BY account_id) o
        WHERE a.id = o.account_id;
    RETURN NULL;
END
$$;

DROP TRIGGER tokens_live_status ON tokens;
CREATE TRIGGER tokens_live_status AFTER UPDATE OF status ON tokens
    FOR EACH ROW
    WHEN (NEW.kind = 'token'
          AND (OLD.status IN ('active', 'exhausted')) IS DISTINCT FROM (NEW.status IN ('active', 'exhausted')))
    EXECUTE FUNCTION tokens_live_status();

-- Accounts set up before this get their keys from the daemon once the migrations have run
-- (`Store::migrate`): random base62 ids, each checked against every token id. Only the secret's
-- hash was kept, so those keys cannot check JWTs until the secret is reset.
CREATE UNIQUE INDEX accounts_api_key ON accounts (api_key);
