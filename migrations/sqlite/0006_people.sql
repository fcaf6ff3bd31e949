-- Users that can be switched off or deleted, each token carrying its user's state, and the real
-- issuer. Paired with migrations/postgres/0006_people.sql.
--
-- A deleted user stays, with deleted_at, for the record (its email stays taken in the account).
ALTER TABLE users ADD COLUMN status TEXT NOT NULL DEFAULT 'active'
    CHECK (status IN ('active', 'inactive', 'deleted'));
ALTER TABLE users ADD COLUMN deleted_at TEXT;

-- A token issued for a user carries that user's current role and whether the user is active,
-- written in the same transaction as any change to the user. Verification reads one row, and a
-- daemon holding the token in memory sees a user's change as a change of the token's row.
-- NULL / 1 for a token issued for no user.
ALTER TABLE tokens ADD COLUMN user_role TEXT
    CHECK (user_role IN ('admin', 'engineer', 'user', 'readonly'));
ALTER TABLE tokens ADD COLUMN user_active BOOLEAN NOT NULL DEFAULT 1;
UPDATE tokens SET user_role = (SELECT role FROM users WHERE users.id = tokens.user_id)
    WHERE user_id IS NOT NULL;

-- Calls refused because the token's user is inactive, per token per UTC day.
ALTER TABLE tokens ADD COLUMN day_user_inactive INTEGER NOT NULL DEFAULT 0;
ALTER TABLE token_stats_daily ADD COLUMN user_inactive INTEGER NOT NULL DEFAULT 0;

-- issued_by named the user a token was issued for ('user:<id>', which user_id already holds),
-- not the credential that issued it: that credential was never stored and cannot be known.
-- Those rows say 'unknown'; how many there were is kept in settings.
INSERT INTO settings (key, value)
    SELECT 'issuer_unknown_tokens', CAST(COUNT(*) AS TEXT) FROM tokens WHERE issued_by LIKE 'user:%';
UPDATE tokens SET issued_by = 'unknown' WHERE issued_by LIKE 'user:%';
