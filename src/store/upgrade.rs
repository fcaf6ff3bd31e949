//! What an upgrade does beyond the migrations' SQL: work SQL alone cannot do safely (drawing ids
//! that must not collide), and the record of a migration whose wording changed after release.

use super::{sql, Backend, Result, Store, StoreError, WritePool};
use super::{POSTGRES_MIGRATIONS, SQLITE_MIGRATIONS};
use crate::domain::credential;
use chrono::{DateTime, Utc};

/// Whether sqlx's record of applied migrations exists yet, per dialect.
pub(super) const SQLITE_HAS_MIGRATIONS: &str = "SELECT count(*) > 0 FROM sqlite_master \
     WHERE type = 'table' AND name = '_sqlx_migrations'";
pub(super) const POSTGRES_HAS_MIGRATIONS: &str =
    "SELECT to_regclass('_sqlx_migrations') IS NOT NULL";

/// The migration that gave accounts their ApiKeys.
const KEYS_MIGRATION: i64 = 9;

/// Checksums (SHA-384 of the file, as sqlx records them) of that migration's first wording,
/// which drew the existing accounts' keys in SQL as 8 random hexadecimal digits: two accounts
/// drew the same key once they numbered in the tens of thousands, and the migration failed.
/// It now leaves them to `give_accounts_keys`. A store that ran the first wording has its keys
/// and is recorded as having run this one, instead of refusing to start over the changed text.
const FIRST_KEYS_SQLITE: [u8; 48] = [
    0x31, 0x69, 0xce, 0x4b, 0x2b, 0xd3, 0x12, 0x8c, 0x66, 0xae, 0x55, 0x09, 0xf0, 0x71, 0x2a, 0x7e,
    0x71, 0xef, 0x0a, 0x0b, 0x17, 0x9e, 0x00, 0x64, 0x28, 0x24, 0x26, 0x21, 0x91, 0xf3, 0x48, 0x39,
    0xde, 0x8e, 0xe8, 0x6c, 0x47, 0x95, 0xb6, 0x0e, 0x25, 0xdf, 0x44, 0x6b, 0xd9, 0xa4, 0x80, 0x1b,
];
const FIRST_KEYS_POSTGRES: [u8; 48] = [
    0xd6, 0x5e, 0x02, 0x9c, 0x23, 0x2f, 0x8c, 0xb2, 0x5e, 0x5a, 0xee, 0xca, 0x79, 0xa9, 0x6f, 0xa9,
    0xa3, 0xcd, 0x87, 0xb6, 0xae, 0xb0, 0xbc, 0x39, 0xe2, 0xf9, 0xaa, 0x00, 0x4c, 0xa2, 0x9a, 0x96,
    0x18, 0x78, 0x9a, 0xc5, 0x58, 0xc0, 0xcb, 0xd3, 0x93, 0x18, 0xf3, 0xf2, 0x47, 0x23, 0xcb, 0x7d,
];

/// A key row for an account set up before keys existed (`$1` the key, `$2` the account, `$3`
/// its secret's hash, `$4` the account's creation): active until the secret-calls default is
/// applied at start; no sealed secret (only the hash was kept). `0` rows: the id is taken.
const INSERT_FIRST_KEY: &str = "INSERT INTO tokens (id, account_id, issued_by, name, role, \
     scopes, allowed_ips, status, jwt_enabled, secret_hash, calls_month, calls_total, \
     created_at, updated_at, kind) VALUES ($1, $2, 'account', 'account secret', 'admin', '[]', \
     '[]', 'active', false, $3, 0, 0, $4, $4, 'account') ON CONFLICT DO NOTHING";

/// Accounts keyed per transaction: each transaction stays short (a write lock held for
/// milliseconds), whatever the number of accounts.
const KEYS_PER_STEP: i64 = 500;

/// Draws of a key for one account before giving up: a draw is taken by an existing token with
/// a chance of one in tens of millions at a million tokens.
const DRAWS: usize = 8;

impl Store {
    /// Records a store that ran the first wording of the keys migration as having run the
    /// current one (see `FIRST_KEYS_SQLITE`). Nothing else about the record changes.
    pub(super) async fn accept_first_keys_wording(&self) -> Result<()> {
        let (exists, known, first) = match &*self.backend {
            Backend::Sqlite(_) => (
                SQLITE_HAS_MIGRATIONS,
                &SQLITE_MIGRATIONS,
                &FIRST_KEYS_SQLITE,
            ),
            Backend::Postgres(_) => (
                POSTGRES_HAS_MIGRATIONS,
                &POSTGRES_MIGRATIONS,
                &FIRST_KEYS_POSTGRES,
            ),
        };
        let Some(current) = known.iter().find(|m| m.version == KEYS_MIGRATION) else {
            return Ok(());
        };
        let current = current.checksum.to_vec();
        with_pool!(self, p => {
            if sqlx::query_scalar::<_, bool>(exists).fetch_one(p).await? {
                sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 \
                             WHERE version = $2 AND checksum = $3")
                    .bind(current).bind(KEYS_MIGRATION).bind(&first[..])
                    .execute(p).await?;
            }
        });
        Ok(())
    }

    /// Gives every account without an ApiKey one (accounts set up before keys existed): a key
    /// row holding its secret's hash, and the key on the account. Ids are drawn as tokens' are,
    /// and one a token already has is drawn again. Daemons upgrading one PostgreSQL store at
    /// once each lock the accounts they key, so none is keyed twice. How many were keyed.
    pub async fn give_accounts_keys(&self) -> Result<u64> {
        let mut keyed = 0u64;
        with_pool!(self, p => loop {
            let mut tx = p.begin_write().await?;
            let q = format!(
                "SELECT id, secret_hash, created_at FROM accounts WHERE api_key IS NULL \
                 ORDER BY id LIMIT {KEYS_PER_STEP}{}",
                p.for_update()
            );
            let accounts: Vec<(String, Vec<u8>, DateTime<Utc>)> =
                sqlx::query_as(sql(q)).fetch_all(&mut *tx).await?;
            if accounts.is_empty() {
                break;
            }
            let mut drawn = credential::new_token_ids(accounts.len()).into_iter();
            for (account, hash, created) in &accounts {
                let mut key = drawn.next().unwrap_or_default();
                let mut draws = 1;
                while sqlx::query(INSERT_FIRST_KEY)
                    .bind(&key).bind(account).bind(hash).bind(created)
                    .execute(&mut *tx).await?.rows_affected() == 0
                {
                    if draws == DRAWS {
                        return Err(StoreError::Other(format!(
                            "no free key for account {account} in {DRAWS} draws"
                        )));
                    }
                    draws += 1;
                    key = credential::new_token_ids(1).remove(0);
                }
                sqlx::query("UPDATE accounts SET api_key = $1 WHERE id = $2")
                    .bind(&key).bind(account).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            keyed += accounts.len() as u64;
        });
        if keyed > 0 {
            tracing::info!(
                accounts = keyed,
                "gave the accounts set up before ApiKeys their keys"
            );
        }
        Ok(keyed)
    }
}
