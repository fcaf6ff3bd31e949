//! The token store: every SQL statement of the daemon, for SQLite and for PostgreSQL.
//!
//! One `Store` wraps one concrete sqlx pool, chosen at run time from the URL scheme. Statements
//! use `$n` placeholders and portable SQL, so most operations are written once and compiled
//! against both pools by `with_pool!`; where the dialects differ (write locks, upserts) the two
//! spellings sit side by side. Constraint violations become `StoreError::Conflict` here, never in
//! a handler.

mod model;
mod rows;

pub use jobs::{Claim, JobRun, RollStep};
pub use model::*;
pub use outbox::{Message, MessageKind, NewMessage};

use crate::domain::audit::Stamp;
use crate::domain::model::{Account, Token, User};
use crate::domain::rate::RateLimit;
use crate::domain::status::{TokenStatus, UserStatus};
use chrono::{DateTime, Utc};
use rows::{AccountRow, TokenRow, UserRow, ACCOUNT_COLS, TOKEN_COLS, USER_COLS};
use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    AssertSqlSafe, PgPool, Postgres, Sqlite, SqlitePool, Transaction,
};
use std::{str::FromStr, time::Duration};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was hit; the string names what was duplicated.
    #[error("already exists: {0}")]
    Conflict(String),
    /// Creating the tokens would pass the account's `max_tokens`.
    #[error("the account has {active} of {max} active tokens")]
    TokenLimit {
        /// The account's limit.
        max: i64,
        /// Active tokens it has now.
        active: i64,
    },
    /// The record's state, read under its lock, does not allow the change; the string says why.
    #[error("{0}")]
    Refused(String),
    /// The database cannot be reached.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (bad data, a failed statement).
    #[error("store error: {0}")]
    Other(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict(db.constraint().unwrap_or("unique key").to_string())
            }
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    let postgres = db
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .is_some();
                    unavailable_code(&c, postgres)
                }) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Other(e.to_string()),
        }
    }
}

/// Whether a database error code says the database cannot serve now (busy, locked, out of
/// space, shutting down, out of connections) rather than that the statement or data is wrong.
/// PostgreSQL reports a SQLSTATE, SQLite its (extended) result code as a number.
fn unavailable_code(code: &str, postgres: bool) -> bool {
    if postgres {
        // Connection exception, insufficient resources, operator intervention (shutdown,
        // cannot connect now), a lock not granted within lock_timeout, a database that takes
        // no connections (55000: ALLOW_CONNECTIONS false) or is gone (3D000), logins refused
        // (28xxx), a standby that takes no writes (25006, after a failover).
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code.starts_with("28")
            || matches!(code, "55P03" | "55000" | "3D000" | "25006");
    }
    // SQLITE_BUSY, _LOCKED, _IOERR, _FULL, _CANTOPEN (the low byte of an extended code).
    code.parse::<i32>()
        .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13 | 14))
}

#[cfg(test)]
mod error_tests {
    use super::unavailable_code;

    #[test]
    fn busy_locked_and_shutting_down_databases_are_unavailable_not_broken() {
        for (code, postgres) in [
            ("5", false),
            ("517", false),
            ("6", false),
            ("14", false),
            ("57P01", true),
            ("57P03", true),
            ("08006", true),
            ("53300", true),
            ("55P03", true),
            ("55000", true),
            ("28P01", true),
            ("25006", true),
        ] {
            assert!(unavailable_code(code, postgres), "{code}");
        }
        for (code, postgres) in [
            ("19", false),
            ("2067", false),
            ("1", false),
            ("23505", true),
            ("42P01", true),
            ("22012", true),
            ("40001", true),
        ] {
            assert!(!unavailable_code(code, postgres), "{code}");
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Other(format!("migration failed: {e}"))
    }
}

use crate::config::StoreLocation;

type Result<T, E = StoreError> = std::result::Result<T, E>;

enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The store handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: std::sync::Arc<Backend>,
    /// PostgreSQL: the usage writer's connection (`usage_pg`).
    usage_pg: Option<std::sync::Arc<usage_pg::UsagePg>>,
    /// The longest one round trip of counting calls may take (PostgreSQL).
    usage_timeout: Duration,
    /// How long a write waits for another connection's lock.
    lock_timeout: Duration,
    /// The highest change number seen (`change_no`).
    changes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Runs `$body` with `$pool` bound to whichever pool this store has.
macro_rules! with_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match &*$self.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Binds a list of `Arg`s onto a query in order.
macro_rules! bind_args {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Str(v) => q.bind(v),
                Arg::I64(v) => q.bind(v),
                Arg::Time(v) => q.bind(v),
                Arg::OptStr(v) => q.bind(v),
                Arg::OptBytes(v) => q.bind(v),
                Arg::OptI64(v) => q.bind(v),
                Arg::OptTime(v) => q.bind(v),
                Arg::Bool(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
            };
        }
        q
    }};
}

/// Queues outbox `messages` inside the open transaction `tx`, so they commit (or not) with the
/// change they report.
macro_rules! queue_messages {
    ($tx:expr, $messages:expr, $now:expr) => {
        for m in $messages {
            let (q, args) = $crate::store::outbox::insert(m, $now);
            bind_args!(sqlx::query(sql(q)), args)
                .execute(&mut *$tx)
                .await?;
        }
    };
}

/// A bound parameter of a statement assembled at run time.
#[derive(Debug, Clone)]
enum Arg {
    Str(String),
    I64(i64),
    Time(DateTime<Utc>),
    OptStr(Option<String>),
    OptBytes(Option<Vec<u8>>),
    OptI64(Option<i64>),
    OptTime(Option<DateTime<Utc>>),
    Bool(bool),
    Bytes(Vec<u8>),
}

/// Beginning a transaction that will write, per backend.
trait WritePool {
    type Db: sqlx::Database;
    /// A transaction that holds the write lock from its first statement. On SQLite that is
    /// `BEGIN IMMEDIATE`, so two writers queue on the busy timeout instead of failing to upgrade.
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, sqlx::Error>;
    /// Suffix that locks the selected rows until commit (PostgreSQL); SQLite's lock is the database.
    fn for_update(&self) -> &'static str;
    /// Suffix that keeps the selected rows from changing until commit (PostgreSQL).
    fn for_share(&self) -> &'static str;
    /// Counts a change to what verification decides on (a token's or an account's settings)
    /// in `settings.change_no`, inside the transaction making it, and returns the new number
    /// for `Store::observe_change` after the commit. SQLite only (its daemon keeps those rows
    /// in memory, `verify::ledger`); 0 on PostgreSQL, where every verification reads the rows.
    async fn note_change(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
    ) -> Result<u64, sqlx::Error>;
    /// Runs a creation's inserts (`TokenInserts::of`) in `tx`; returns the rows inserted.
    async fn insert_tokens(
        &self,
        tx: &mut Transaction<'static, Self::Db>,
        inserts: TokenInserts,
    ) -> Result<u64, StoreError>;
}

/// A creation's inserts, built before its transaction: creations in one account wait for each
/// other on the account's row, so the lock is held for the writes alone.
enum TokenInserts {
    /// SQLite: statements of `INSERT_ROWS` rows each.
    Values(Vec<(String, Vec<Arg>)>),
    /// PostgreSQL: the account and one statement taking a column of values per parameter
    /// (`INSERT_UNNEST`), so its cost is the rows', not parsing and binding 21 parameters a row.
    Columns(String, DateTime<Utc>, Box<TokenColumns>),
}

/// The inserted tokens' values, one vector per column (`INSERT_UNNEST`).
#[derive(Default)]
struct TokenColumns {
    id: Vec<String>,
    user_id: Vec<Option<String>>,
    user_role: Vec<Option<String>>,
    issued_by: Vec<String>,
    policy_name: Vec<Option<String>>,
    policy_period: Vec<Option<String>>,
    name: Vec<String>,
    description: Vec<Option<String>>,
    role: Vec<String>,
    scopes: Vec<String>,
    allowed_ips: Vec<String>,
    usage_limit: Vec<Option<i64>>,
    refill_monthly: Vec<Option<i64>>,
    expires_at: Vec<Option<DateTime<Utc>>>,
    jwt_enabled: Vec<bool>,
    sealed_secret: Vec<Option<Vec<u8>>>,
    secret_hash: Vec<Vec<u8>>,
    rate_limit: Vec<Option<String>>,
}

/// `TokenColumns` inserted into account `$1` at `$3`, the refill of month `$2` taken: the rows
/// `insert_values` writes on SQLite.
const INSERT_UNNEST: &str = "INSERT INTO tokens (id, account_id, user_id, issued_by, policy_name, \
     policy_period, name, description, role, scopes, allowed_ips, usage_limit, remaining, \
     refill_monthly, refill_period, expires_at, status, jwt_enabled, sealed_secret, secret_hash, \
     calls_month, calls_total, created_at, updated_at, user_role, rate_limit) \
     SELECT u.id, $1, u.user_id, u.issued_by, u.policy_name, u.policy_period, u.name, \
     u.description, u.role, u.scopes, u.allowed_ips, u.usage_limit, u.usage_limit, \
     u.refill_monthly, $2, u.expires_at, 'active', u.jwt_enabled, u.sealed_secret, \
     u.secret_hash, 0, 0, $3, $3, u.user_role, u.rate_limit \
     FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
     $10::text[], $11::text[], $12::text[], $13::text[], $14::int8[], $15::int8[], \
     $16::timestamptz[], $17::bool[], $18::bytea[], $19::bytea[], $20::text[], $21::text[]) \
     AS u (id, user_id, issued_by, policy_name, policy_period, name, description, role, scopes, \
     allowed_ips, usage_limit, refill_monthly, expires_at, jwt_enabled, sealed_secret, secret_hash, \
     user_role, rate_limit)";

impl TokenInserts {
    fn of(backend: &Backend, account_id: &str, tokens: &[NewToken], now: DateTime<Utc>) -> Self {
        match backend {
            Backend::Sqlite(_) => TokenInserts::Values(
                tokens
                    .chunks(INSERT_ROWS)
                    .map(|chunk| insert_values(account_id, chunk, now))
                    .collect(),
            ),
            Backend::Postgres(_) => {
                let mut c = TokenColumns::default();
                for t in tokens {
                    let (pname, pperiod) = t.policy.clone().unzip();
                    c.id.push(t.id.clone());
                    c.user_id.push(t.user_id.clone());
                    c.user_role
                        .push(t.user_role.map(|r| r.as_str().to_string()));
                    c.issued_by.push(t.issued_by.clone());
                    c.policy_name.push(pname);
                    c.policy_period.push(pperiod);
                    c.name.push(t.name.clone());
                    c.description.push(t.description.clone());
                    c.role.push(t.role.as_str().to_string());
                    c.scopes.push(rows::json_list(&t.scopes));
                    c.allowed_ips.push(rows::json_list(&t.allowed_ips));
                    c.usage_limit.push(t.usage_limit);
                    c.refill_monthly.push(t.refill_monthly);
                    c.expires_at.push(t.expires_at);
                    c.jwt_enabled.push(t.jwt_enabled);
                    c.sealed_secret.push(t.sealed_secret.clone());
                    c.secret_hash.push(t.secret_hash.clone());
                    c.rate_limit.push(t.rate_limit.map(RateLimit::to_column));
                }
                TokenInserts::Columns(account_id.to_string(), now, Box::new(c))
            }
        }
    }
}

/// Whether PostgreSQL rolled the transaction back to break a deadlock (or a serialisation
/// failure): running it again is the answer.
fn deadlocked(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// A uniqueness conflict named `what`; other errors as they are.
fn conflict_as(what: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| match StoreError::from(e) {
        StoreError::Conflict(_) => StoreError::Conflict(what.into()),
        other => other,
    }
}

/// The audit record of a creation: one per request, named after its first token, with the
/// settings the tokens share, for several how many and their ids, and the ids of the tokens a
/// policy's new one revoked.
fn created_entry(
    stamp: &Stamp,
    account_id: &str,
    tokens: &[Token],
    first: &Token,
    revoked: &[String],
    now: DateTime<Utc>,
) -> crate::domain::audit::Entry {
    let mut changes = crate::domain::audit::token_changes(None, first);
    if tokens.len() > 1 {
        let ids: Vec<&str> = tokens.iter().map(|t| t.id.as_str()).collect();
        changes.insert("count".into(), serde_json::json!([null, tokens.len()]));
        changes.insert("ids".into(), serde_json::json!([null, ids]));
    }
    if !revoked.is_empty() {
        changes.insert(
            "revoked_previous".into(),
            serde_json::json!([null, revoked]),
        );
    }
    stamp.done(
        now,
        format!("token:{}", first.id),
        Some(account_id.to_string()),
        changes,
    )
}

/// Live tokens of account `$1` whose expiry has passed at `$2` but which the expiry job has not
/// marked yet: what issuing subtracts from `accounts.live_tokens`. It reads the partial index of
/// live tokens by expiry, whatever the account's number of tokens.
pub const LAPSED_LIVE_TOKENS: &str = "SELECT COUNT(*) FROM tokens WHERE account_id = $1 \
     AND status IN ('active', 'exhausted') AND expires_at <= $2";

/// An account's key row: its secret as a call credential (`$1` its api_key, `$2` the account,
/// `$3` its status, `$4` the sealed secret, `$5` its hash, `$6` now). It acts as the account's
/// admin, with no limits of its own; the account's quota and rate limit apply.
const INSERT_ACCOUNT_KEY: &str = "INSERT INTO tokens (id, account_id, issued_by, name, role, \
     scopes, allowed_ips, status, jwt_enabled, sealed_secret, secret_hash, calls_month, \
     calls_total, created_at, updated_at, kind) VALUES ($1, $2, 'account', 'account secret', \
     'admin', '[]', '[]', $3, true, $4, $5, 0, 0, $6, $6, 'account')";

/// Sets account `$1`'s key row to status `$2` at `$3`.
const SET_KEY_STATUS: &str = "UPDATE tokens SET status = $2, updated_at = $3 \
     WHERE account_id = $1 AND kind = 'account' AND status <> $2";

/// A key row's status: `revoked` while its account's secret calls are off.
fn key_status(active: bool) -> &'static str {
    if active {
        "active"
    } else {
        "revoked"
    }
}

/// Tokens per SQLite insert statement: 11,000 parameters (it allows 32,766).
const INSERT_ROWS: usize = 500;
/// Each token's parameters, `now` written twice.
const PARAMS_PER_ROW: usize = 23;

/// One SQLite statement inserting `tokens` into `account_id`. Its parameters are `?`, bound in
/// order: SQLite looks a numbered parameter up by name in a list, both when it parses the
/// statement and when sqlx binds it, a cost that grows with the square of the parameters.
fn insert_values(account_id: &str, tokens: &[NewToken], now: DateTime<Utc>) -> (String, Vec<Arg>) {
    let mut values = Vec::with_capacity(tokens.len());
    let mut args = Vec::with_capacity(tokens.len() * PARAMS_PER_ROW);
    let month = crate::domain::period::month_key(now);
    // status 'active', counters at zero; `remaining` starts at `usage_limit` (the 12th
    // parameter given twice). `NewToken::inserted` builds the same token without reading it
    // back, and `INSERT_UNNEST` writes the same row on PostgreSQL.
    let p = ["?"; PARAMS_PER_ROW];
    let row = format!(
        "({}, 'active', {}, 0, 0, {})",
        p[..16].join(", "),
        p[16..19].join(", "),
        p[19..].join(", ")
    );
    for t in tokens {
        values.push(row.as_str());
        let (pname, pperiod) = t.policy.clone().unzip();
        args.extend([
            Arg::Str(t.id.clone()),
            Arg::Str(account_id.to_string()),
            Arg::OptStr(t.user_id.clone()),
            Arg::Str(t.issued_by.clone()),
            Arg::OptStr(pname),
            Arg::OptStr(pperiod),
            Arg::Str(t.name.clone()),
            Arg::OptStr(t.description.clone()),
            Arg::Str(t.role.as_str().to_string()),
            Arg::Str(rows::json_list(&t.scopes)),
            Arg::Str(rows::json_list(&t.allowed_ips)),
            Arg::OptI64(t.usage_limit),
            Arg::OptI64(t.usage_limit),
            Arg::OptI64(t.refill_monthly),
            Arg::Str(month.clone()),
            Arg::OptTime(t.expires_at),
            Arg::Bool(t.jwt_enabled),
            Arg::OptBytes(t.sealed_secret.clone()),
            Arg::Bytes(t.secret_hash.clone()),
        ]);
        args.extend([
            Arg::Time(now),
            Arg::Time(now),
            Arg::OptStr(t.user_role.map(|r| r.as_str().to_string())),
            Arg::OptStr(t.rate_limit.map(RateLimit::to_column)),
        ]);
    }
    let q = format!(
        "INSERT INTO tokens (id, account_id, user_id, issued_by, policy_name, policy_period, \
         name, description, role, scopes, allowed_ips, usage_limit, remaining, refill_monthly, \
         refill_period, expires_at, status, jwt_enabled, sealed_secret, secret_hash, calls_month, \
         calls_total, created_at, updated_at, user_role, rate_limit) VALUES {}",
        values.join(", ")
    );
    (q, args)
}

/// Settings SQLite takes once per process, before its first connection. Memory statistics off:
/// with them on, every allocation SQLite makes takes one process-wide mutex, which the
/// connections' threads contend for.
fn sqlite_process_settings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_MEMSTATUS takes one int; called before any connection opens
        // (once it is initialised SQLite refuses with SQLITE_MISUSE and keeps its setting).
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(rc, "SQLite memory statistics stay on");
        }
    });
}

/// See `WritePool::note_change`.
const NOTE_CHANGE: &str = "INSERT INTO settings (key, value) VALUES ('change_no', '1') \
     ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) \
     RETURNING CAST(value AS INTEGER)";

impl WritePool for SqlitePool {
    type Db = Sqlite;
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
    fn for_update(&self) -> &'static str {
        ""
    }
    fn for_share(&self) -> &'static str {
        ""
    }
    async fn note_change(&self, tx: &mut Transaction<'static, Sqlite>) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(NOTE_CHANGE).fetch_one(&mut **tx).await?;
        Ok(n as u64)
    }
    async fn insert_tokens(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        inserts: TokenInserts,
    ) -> Result<u64, StoreError> {
        let TokenInserts::Values(statements) = inserts else {
            return Err(StoreError::Other(
                "inserts built for another backend".into(),
            ));
        };
        let mut n = 0;
        for (q, args) in statements {
            n += bind_args!(sqlx::query(sql(q)), args)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        }
        Ok(n)
    }
}

impl WritePool for PgPool {
    type Db = Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.begin().await
    }
    fn for_update(&self) -> &'static str {
        " FOR UPDATE"
    }
    fn for_share(&self) -> &'static str {
        " FOR SHARE"
    }
    async fn note_change(
        &self,
        _: &mut Transaction<'static, Postgres>,
    ) -> Result<u64, sqlx::Error> {
        Ok(0)
    }
    async fn insert_tokens(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        inserts: TokenInserts,
    ) -> Result<u64, StoreError> {
        let TokenInserts::Columns(account_id, now, c) = inserts else {
            return Err(StoreError::Other(
                "inserts built for another backend".into(),
            ));
        };
        let inserted = sqlx::query(INSERT_UNNEST)
            .bind(account_id)
            .bind(crate::domain::period::month_key(now))
            .bind(now)
            .bind(c.id)
            .bind(c.user_id)
            .bind(c.issued_by)
            .bind(c.policy_name)
            .bind(c.policy_period)
            .bind(c.name)
            .bind(c.description)
            .bind(c.role)
            .bind(c.scopes)
            .bind(c.allowed_ips)
            .bind(c.usage_limit)
            .bind(c.refill_monthly)
            .bind(c.expires_at)
            .bind(c.jwt_enabled)
            .bind(c.sealed_secret)
            .bind(c.secret_hash)
            .bind(c.user_role)
            .bind(c.rate_limit)
            .execute(&mut **tx)
            .await?;
        Ok(inserted.rows_affected())
    }
}

pub mod audit;
pub mod jobs;
pub mod outbox;
mod upgrade;
pub mod usage;
mod usage_pg;
pub mod usage_sqlite;

fn sql(s: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(s)
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Where a store's schema stands against this binary's migrations (`Store::schema`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Nothing set up yet.
    Empty,
    /// Set up by an older version: migrations of this one are still to run.
    Behind,
    /// Up to date.
    Current,
    /// Migrated by a newer version (this migration is unknown here).
    Ahead(i64),
}

impl Store {
    /// Opens the store (creating a SQLite file and its folder if needed). Does not migrate.
    /// A write waits up to `lock_timeout` for a lock another connection holds, then fails as
    /// unavailable (503) instead of hanging until the request times out.
    /// On PostgreSQL each round trip of counting calls is bounded by `usage_timeout`
    /// (`usage_pg`).
    pub async fn connect(
        loc: &StoreLocation,
        max_connections: u32,
        lock_timeout: Duration,
        usage_timeout: Duration,
    ) -> Result<Store> {
        let mut usage_pg = None;
        let backend = match loc {
            StoreLocation::Sqlite(path) => {
                sqlite_process_settings();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
                }
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a committed write survives power loss, not only a process crash.
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(lock_timeout);
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await?;
                Backend::Sqlite(pool)
            }
            StoreLocation::Postgres(url) => {
                let opts = PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::Other(format!("bad PostgreSQL URL: {e}")))?
                    .options([("lock_timeout", format!("{}ms", lock_timeout.as_millis()))]);
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(opts.clone())
                    .await?;
                // The usage writer's own connection (its batches run one at a time). A
                // connection that died (a server restart) fails one batch, answered 503, and
                // the next opens a new one.
                usage_pg = Some(std::sync::Arc::new(usage_pg::UsagePg::new(
                    opts,
                    usage_timeout,
                )));
                Backend::Postgres(pool)
            }
        };
        Ok(Store {
            backend: std::sync::Arc::new(backend),
            usage_pg,
            lock_timeout,
            usage_timeout,
            changes: Default::default(),
        })
    }

    /// Brings the schema up to date. Safe to run from several daemons at once (sqlx takes an
    /// advisory lock on PostgreSQL; SQLite serialises writers).
    /// Accounts set up before ApiKeys get theirs here, after the SQL (`upgrade`).
    pub async fn migrate(&self) -> Result<()> {
        self.accept_first_keys_wording().await?;
        match &*self.backend {
            Backend::Sqlite(p) => SQLITE_MIGRATIONS.run(p).await?,
            Backend::Postgres(p) => {
                // A daemon starting beside another waits for its migration (sqlx's advisory
                // lock) however long it takes, not only `lock_timeout`.
                let mut c = p.acquire().await?;
                sqlx::query("SET lock_timeout = 0").execute(&mut *c).await?;
                POSTGRES_MIGRATIONS.run(&mut *c).await?;
                let back = format!("SET lock_timeout = '{}ms'", self.lock_timeout.as_millis());
                sqlx::query(sql(back)).execute(&mut *c).await?;
            }
        }
        self.give_accounts_keys().await?;
        Ok(())
    }

    /// Where the store's schema stands against this binary's migrations, changing nothing.
    pub async fn schema(&self) -> Result<Schema> {
        let (exists, known) = match &*self.backend {
            Backend::Sqlite(_) => (upgrade::SQLITE_HAS_MIGRATIONS, &SQLITE_MIGRATIONS),
            Backend::Postgres(_) => (upgrade::POSTGRES_HAS_MIGRATIONS, &POSTGRES_MIGRATIONS),
        };
        let applied: Vec<i64> = with_pool!(self, p => {
            if sqlx::query_scalar::<_, bool>(exists).fetch_one(p).await? {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                    .fetch_all(p).await?
            } else {
                Vec::new()
            }
        });
        let known: Vec<i64> = known.iter().map(|m| m.version).collect();
        Ok(
            if let Some(v) = applied.iter().find(|v| !known.contains(v)) {
                Schema::Ahead(*v)
            } else if applied.is_empty() {
                Schema::Empty
            } else if known.iter().any(|v| !applied.contains(v)) {
                Schema::Behind
            } else {
                Schema::Current
            },
        )
    }

    /// The setting stored under `key`, if any.
    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let v = with_pool!(self, p => sqlx::query_scalar::<_, String>(
            "SELECT value FROM settings WHERE key = $1")
            .bind(key).fetch_optional(p).await?);
        Ok(v)
    }

    /// The highest change number this process has seen: raised by this process's changes to
    /// tokens and accounts as they commit, and by `observe_change` for those of other processes
    /// (the CLI). A verification cache is good only while this stays the same.
    pub fn change_no(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Raises `change_no` to `n` (never lowers it).
    pub fn observe_change(&self, n: u64) {
        self.changes
            .fetch_max(n, std::sync::atomic::Ordering::AcqRel);
    }

    /// `sqlite` or `postgres`.
    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// How long a write waits for another connection's lock.
    pub fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    /// The database file, when the store is SQLite (the meter opens its own connection to it).
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match &*self.backend {
            Backend::Sqlite(p) => Some(p.connect_options().get_filename().to_path_buf()),
            Backend::Postgres(_) => None,
        }
    }

    /// Whether `close` was called: nothing may be written any more.
    pub fn is_closed(&self) -> bool {
        with_pool!(self, p => p.is_closed())
    }

    /// Takes and gives back, waiting up to `lock_timeout`, the lock a usage batch needs (SQLite's
    /// write lock; on PostgreSQL, the tokens table's row-lock mode): `/readyz` asks this, so a
    /// store that answers reads but where no call could be counted is not ready.
    pub async fn probe_usage_lock(&self) -> Result<()> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let q = format!("SELECT 1 FROM tokens LIMIT 0{}", p.for_update());
            sqlx::query(sql(q)).execute(&mut *tx).await?;
            tx.rollback().await?;
        });
        Ok(())
    }

    /// Closes every connection, waiting for checked-out ones a few seconds at most (a
    /// connection stuck on a stalled network is dropped instead).
    pub async fn close(&self) {
        let wait = Duration::from_secs(5);
        if let Some(p) = &self.usage_pg {
            p.close(wait).await;
        }
        let closed = with_pool!(self, p => tokio::time::timeout(wait, p.close()).await);
        if closed.is_err() {
            tracing::warn!("store connections did not close in time; dropped");
        }
    }

    // ----- operator credential -----

    /// Stores the operator credential's hash if the store has none. Returns whether this call
    /// stored it: a second daemon on the same database gets `false` and writes no file.
    pub async fn operator_init(
        &self,
        hash: &[u8],
        now: DateTime<Utc>,
        stamp: &Stamp,
    ) -> Result<bool> {
        let entry = stamp.done(now, "operator".into(), None, Default::default());
        let done = with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let done = sqlx::query(
                "INSERT INTO operator_credentials (id, secret_hash, created_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO NOTHING")
                .bind(hash).bind(now).execute(&mut *tx).await?.rows_affected();
            if done == 1 {
                audit::record_audit!(tx, &entry).map_err(StoreError::from)?;
            }
            tx.commit().await?;
            done
        });
        Ok(done == 1)
    }

    /// Replaces the operator credential; the old one stops working at once.
    pub async fn operator_replace(
        &self,
        hash: &[u8],
        now: DateTime<Utc>,
        stamp: &Stamp,
    ) -> Result<()> {
        let changes = crate::domain::audit::set(&[("secret", "reset".into())]);
        let entry = stamp.done(now, "operator".into(), None, changes);
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "INSERT INTO operator_credentials (id, secret_hash, created_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET secret_hash = excluded.secret_hash, created_at = excluded.created_at")
                .bind(hash).bind(now).execute(&mut *tx).await?;
            audit::record_audit!(tx, &entry).map_err(StoreError::from)?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The operator credential's hash, if one was made.
    pub async fn operator_hash(&self) -> Result<Option<Vec<u8>>> {
        let h = with_pool!(self, p => sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT secret_hash FROM operator_credentials WHERE id = 1")
            .fetch_optional(p).await?);
        Ok(h)
    }

    /// Stores `value` under `key` unless the key is set, and returns the value now stored.
    pub async fn setting_init(&self, key: &str, value: &str) -> Result<String> {
        let v = with_pool!(self, p => {
            sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
                .bind(key).bind(value).execute(p).await?;
            sqlx::query_scalar::<_, String>("SELECT value FROM settings WHERE key = $1")
                .bind(key).fetch_one(p).await?
        });
        Ok(v)
    }

    // ----- accounts -----

    /// Inserts an account; a taken name is `Conflict("account name")`.
    pub async fn insert_account(
        &self,
        a: &NewAccount,
        now: DateTime<Utc>,
        stamp: &Stamp,
    ) -> Result<Account> {
        let q = format!(
            "INSERT INTO accounts (id, name, status, max_tokens, monthly_quota, quota_used, \
             secret_hash, created_at, updated_at, rate_limit, api_key, secret_calls) \
             VALUES ($1, $2, 'active', $3, $4, 0, $5, $6, $6, $7, $8, $9) RETURNING {ACCOUNT_COLS}"
        );
        let conflict = conflict_as("account name");
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let row = sqlx::query_as::<_, AccountRow>(sql(q))
                .bind(&a.id).bind(&a.name).bind(a.max_tokens).bind(a.monthly_quota)
                .bind(&a.secret_hash).bind(now).bind(a.rate_limit.map(RateLimit::to_column))
                .bind(&a.api_key).bind(a.secret_calls)
                .fetch_one(&mut *tx).await.map_err(conflict)?;
            let account = Account::try_from(row)?;
            sqlx::query(INSERT_ACCOUNT_KEY)
                .bind(&a.api_key).bind(&a.id).bind(key_status(a.key_active))
                .bind(&a.sealed_secret).bind(&a.secret_hash).bind(now)
                .execute(&mut *tx).await?;
            let changes = crate::domain::audit::account_changes(None, &account);
            let entry = stamp.done(now, format!("account:{}", a.id), Some(a.id.clone()), changes);
            audit::record_audit!(tx, &entry).map_err(StoreError::from)?;
            tx.commit().await?;
            Ok(account)
        })
    }

    /// One account by id.
    pub async fn account(&self, id: &str) -> Result<Option<Account>> {
        let q = format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1");
        let row = with_pool!(self, p => sqlx::query_as::<_, AccountRow>(sql(q)).bind(id).fetch_optional(p).await?);
        row.map(Account::try_from).transpose()
    }

    /// One account by name.
    pub async fn account_by_name(&self, name: &str) -> Result<Option<Account>> {
        let q = format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE name = $1");
        let row = with_pool!(self, p => sqlx::query_as::<_, AccountRow>(sql(q)).bind(name).fetch_optional(p).await?);
        row.map(Account::try_from).transpose()
    }

    /// The account's secret hash, for checking a presented account secret.
    pub async fn account_secret_hash(&self, id: &str) -> Result<Option<Vec<u8>>> {
        let h = with_pool!(self, p => sqlx::query_scalar::<_, Vec<u8>>(
            "SELECT secret_hash FROM accounts WHERE id = $1").bind(id).fetch_optional(p).await?);
        Ok(h)
    }

    /// Accounts ordered by name, `limit` after the name `after`.
    pub async fn list_accounts(&self, after: Option<&str>, limit: i64) -> Result<Vec<Account>> {
        let q = format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE ($1 = '' OR name > $1) ORDER BY name LIMIT $2"
        );
        let rows = with_pool!(self, p => sqlx::query_as::<_, AccountRow>(sql(q))
            .bind(after.unwrap_or("")).bind(limit).fetch_all(p).await?);
        rows.into_iter().map(Account::try_from).collect()
    }

    /// Reads an account under a write lock, lets `f` change it, and writes the changed fields;
    /// its key row follows its `secret_calls` (`secret_calls_default` when that is not set).
    pub async fn update_account<E, F>(
        &self,
        id: &str,
        now: DateTime<Utc>,
        secret_calls_default: bool,
        stamp: &Stamp,
        f: F,
    ) -> Result<Account, E>
    where
        E: From<StoreError>,
        F: FnOnce(Account) -> Result<Account, E>,
    {
        let select = format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1");
        let update = format!(
            "UPDATE accounts SET status = $2, max_tokens = $3, monthly_quota = $4, updated_at = $5, \
             rate_limit = $6, secret_calls = $7 WHERE id = $1 RETURNING {ACCOUNT_COLS}"
        );
        with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(StoreError::from)?;
            // The key row before the account: the order the usage writer locks them in.
            sqlx::query(sql(format!(
                "SELECT id FROM tokens WHERE account_id = $1 AND kind = 'account'{}",
                p.for_update())))
                .bind(id).fetch_all(&mut *tx).await.map_err(StoreError::from)?;
            let row = sqlx::query_as::<_, AccountRow>(sql(format!("{select}{}", p.for_update())))
                .bind(id).fetch_optional(&mut *tx).await.map_err(StoreError::from)?
                .ok_or(StoreError::NotFound)?;
            let before = Account::try_from(row)?;
            let next = f(before.clone())?;
            let row = sqlx::query_as::<_, AccountRow>(sql(update))
                .bind(id).bind(next.status.as_str()).bind(next.max_tokens).bind(next.monthly_quota)
                .bind(now).bind(next.rate_limit.map(RateLimit::to_column)).bind(next.secret_calls)
                .fetch_one(&mut *tx).await.map_err(StoreError::from)?;
            let after = Account::try_from(row)?;
            let active = after.secret_calls.unwrap_or(secret_calls_default);
            sqlx::query(SET_KEY_STATUS)
                .bind(id).bind(key_status(active)).bind(now)
                .execute(&mut *tx).await.map_err(StoreError::from)?;
            let changes = crate::domain::audit::account_changes(Some(&before), &after);
            let entry = stamp.done(now, format!("account:{id}"), Some(id.to_string()), changes);
            audit::record_audit!(tx, &entry).map_err(StoreError::from)?;
            let n = p.note_change(&mut tx).await.map_err(StoreError::from)?;
            tx.commit().await.map_err(StoreError::from)?;
            self.observe_change(n);
            Ok(after)
        })
    }

    /// Replaces an account's secret hash; the old secret stops working at once.
    /// Its key row takes the new secret (its hash, and sealed, for JWTs) in the same write, so
    /// calls and JWTs with the old one are refused from then on.
    pub async fn set_account_secret(
        &self,
        id: &str,
        hash: &[u8],
        sealed: &[u8],
        now: DateTime<Utc>,
        stamp: &Stamp,
    ) -> Result<()> {
        let changes = crate::domain::audit::set(&[("secret", "reset".into())]);
        let entry = stamp.done(now, format!("account:{id}"), Some(id.to_string()), changes);
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            // The key row before the account: the order the usage writer locks them in.
            sqlx::query(
                "UPDATE tokens SET secret_hash = $2, sealed_secret = $3, jwt_enabled = true, \
                 prev_secret_hash = NULL, prev_secret_valid_until = NULL, updated_at = $4 \
                 WHERE account_id = $1 AND kind = 'account'")
                .bind(id).bind(hash).bind(sealed).bind(now).execute(&mut *tx).await?;
            let n = sqlx::query("UPDATE accounts SET secret_hash = $2, updated_at = $3 WHERE id = $1")
                .bind(id).bind(hash).bind(now).execute(&mut *tx).await?.rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            audit::record_audit!(tx, &entry).map_err(StoreError::from)?;
            let n = p.note_change(&mut tx).await?;
            tx.commit().await?;
            self.observe_change(n);
        });
        Ok(())
    }

    /// The ApiKey of account `id`, if it exists.
    pub async fn account_api_key(&self, id: &str) -> Result<Option<String>> {
        let k = with_pool!(self, p => sqlx::query_scalar::<_, Option<String>>(
            "SELECT api_key FROM accounts WHERE id = $1").bind(id).fetch_optional(p).await?);
        Ok(k.flatten())
    }

    /// Sets the key rows of the accounts that leave `secret_calls` to the daemon to `default`
    /// (at start and reload, as the configured default may have changed).
    pub async fn apply_secret_calls_default(
        &self,
        default: bool,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let q = "UPDATE tokens SET status = $1, updated_at = $2 WHERE kind = 'account' \
                 AND status <> $1 AND account_id IN (SELECT id FROM accounts WHERE secret_calls IS NULL)";
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let changed = sqlx::query(q).bind(key_status(default)).bind(now)
                .execute(&mut *tx).await?.rows_affected();
            if changed > 0 {
                let n = p.note_change(&mut tx).await?;
                tx.commit().await?;
                self.observe_change(n);
            }
            Ok(changed)
        })
    }

    // ----- users -----

    /// Inserts a user; an email already in the account is `Conflict("user email")`.
    pub async fn insert_user(&self, u: &User, stamp: &Stamp) -> Result<User> {
        let q = format!(
            "INSERT INTO users (id, account_id, email, role, notify_expiry, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {USER_COLS}"
        );
        let conflict = conflict_as("user email");
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let row = sqlx::query_as::<_, UserRow>(sql(q))
                .bind(&u.id).bind(&u.account_id).bind(&u.email).bind(u.role.as_str())
                .bind(u.notify_expiry).bind(u.created_at).bind(u.updated_at)
                .fetch_one(&mut *tx).await.map_err(conflict)?;
            let user = User::try_from(row)?;
            let changes = crate::domain::audit::user_changes(None, &user);
            let entry = stamp.done(
                u.created_at, format!("user:{}", u.id), Some(u.account_id.clone()), changes);
            audit::record_audit!(tx, &entry).map_err(StoreError::from)?;
            tx.commit().await?;
            Ok(user)
        })
    }

    /// One user by id.
    pub async fn user(&self, id: &str) -> Result<Option<User>> {
        let q = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        let row = with_pool!(self, p => sqlx::query_as::<_, UserRow>(sql(q)).bind(id).fetch_optional(p).await?);
        row.map(User::try_from).transpose()
    }

    /// An account's users, by email.
    pub async fn list_users(&self, account_id: &str) -> Result<Vec<User>> {
        let q = format!("SELECT {USER_COLS} FROM users WHERE account_id = $1 ORDER BY email");
        let rows = with_pool!(self, p => sqlx::query_as::<_, UserRow>(sql(q)).bind(account_id).fetch_all(p).await?);
        rows.into_iter().map(User::try_from).collect()
    }

    /// Reads a user under a write lock, lets `f` change it, and writes role, preference and
    /// status. In the same transaction the user's tokens take its new role and status (the
    /// copy verification reads), and a user deleted has its tokens revoked. Returns the user
    /// and how many tokens were revoked. A transaction PostgreSQL rolls back as a deadlock
    /// victim is run again (`f` then runs again on the user as it is).
    pub async fn update_user<E, F>(
        &self,
        id: &str,
        now: DateTime<Utc>,
        stamp: &Stamp,
        f: F,
    ) -> Result<(User, u64), E>
    where
        E: From<StoreError>,
        F: Fn(User) -> Result<User, E>,
    {
        let mut attempt = 1;
        loop {
            match self.update_user_once(id, now, stamp, &f).await {
                Err(e) if attempt < 3 && deadlocked(&e) => {
                    tracing::warn!(attempt, error = %e, "a user change was rolled back by a deadlock; running it again");
                    attempt += 1;
                }
                Err(e) => return Err(StoreError::from(e).into()),
                Ok(r) => return r,
            }
        }
    }

    /// One try of `update_user`: a database error is the outer one (to retry a deadlock),
    /// anything else the inner.
    async fn update_user_once<E, F>(
        &self,
        id: &str,
        now: DateTime<Utc>,
        stamp: &Stamp,
        f: &F,
    ) -> Result<Result<(User, u64), E>, sqlx::Error>
    where
        E: From<StoreError>,
        F: Fn(User) -> Result<User, E>,
    {
        let select = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        let update = format!(
            "UPDATE users SET role = $2, notify_expiry = $3, status = $4, deleted_at = $5, \
             updated_at = $6 WHERE id = $1 RETURNING {USER_COLS}"
        );
        with_pool!(self, p => {
            // A user never changes account, so it is read before any lock.
            let account: Option<String> =
                sqlx::query_scalar("SELECT account_id FROM users WHERE id = $1")
                    .bind(id).fetch_optional(p).await?;
            let Some(account) = account else {
                return Ok(Err(StoreError::NotFound.into()));
            };
            let mut tx = p.begin_write().await?;
            // The locks in the order every writer takes them: the user's tokens (the usage
            // writer's first), its account (which revoking tokens updates through the live
            // count, and which a creation holds before the user), then the user.
            sqlx::query(sql(format!(
                "SELECT id FROM tokens WHERE user_id = $1 ORDER BY id{}", p.for_update())))
                .bind(id).fetch_all(&mut *tx).await?;
            sqlx::query(sql(format!("SELECT id FROM accounts WHERE id = $1{}", p.for_update())))
                .bind(&account).fetch_optional(&mut *tx).await?;
            let row = sqlx::query_as::<_, UserRow>(sql(format!("{select}{}", p.for_update())))
                .bind(id).fetch_optional(&mut *tx).await?;
            let before = match row.map(User::try_from) {
                Some(Ok(u)) => u,
                Some(Err(e)) => return Ok(Err(e.into())),
                None => return Ok(Err(StoreError::NotFound.into())),
            };
            let next = match f(before.clone()) {
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            let deleted_at = match next.status {
                UserStatus::Deleted => before.deleted_at.or(Some(now)),
                _ => None,
            };
            let row = sqlx::query_as::<_, UserRow>(sql(update))
                .bind(id).bind(next.role.as_str()).bind(next.notify_expiry)
                .bind(next.status.as_str()).bind(deleted_at).bind(now)
                .fetch_one(&mut *tx).await?;
            let mut revoked: Vec<String> = Vec::new();
            if next.status == UserStatus::Deleted && before.status != UserStatus::Deleted {
                revoked = sqlx::query_scalar(
                    "UPDATE tokens SET status = 'revoked', revoked_at = $2, updated_at = $2 \
                     WHERE user_id = $1 AND status <> 'revoked' RETURNING id")
                    .bind(id).bind(now).fetch_all(&mut *tx).await?;
                revoked.sort();
            }
            let mut change = 0;
            if next.role != before.role || next.status != before.status {
                let n = sqlx::query(
                    "UPDATE tokens SET user_role = $2, user_active = $3, updated_at = $4 \
                     WHERE user_id = $1")
                    .bind(id).bind(next.role.as_str()).bind(next.status == UserStatus::Active)
                    .bind(now).execute(&mut *tx).await?
                    .rows_affected();
                if n > 0 {
                    change = p.note_change(&mut tx).await?;
                }
            }
            let after = match User::try_from(row) {
                Ok(u) => u,
                Err(e) => return Ok(Err(e.into())),
            };
            let mut changes = crate::domain::audit::user_changes(Some(&before), &after);
            if !revoked.is_empty() {
                changes.insert("tokens_revoked".into(), serde_json::json!([null, revoked]));
            }
            let entry = stamp.done(now, format!("user:{id}"), Some(account), changes);
            audit::record_audit!(tx, &entry)?;
            tx.commit().await?;
            self.observe_change(change);
            Ok(Ok((after, revoked.len() as u64)))
        })
    }

    // ----- tokens -----

    /// Inserts `tokens` for `account_id` in one transaction, or none of them: the account row is
    /// locked while its active tokens are counted, so concurrent creations cannot pass
    /// `max_tokens` together. Active here means not revoked and not past its expiry.
    pub async fn create_tokens(
        &self,
        account_id: &str,
        tokens: &[NewToken],
        now: DateTime<Utc>,
        stamp: &Stamp,
    ) -> Result<Vec<Token>> {
        self.create_tokens_with(account_id, tokens, None, &[], now, stamp)
            .await
    }

    /// `create_tokens`, and in the same transaction: first revoke `revoke_policy`'s tokens of
    /// earlier periods (name, period), and queue `messages` in the outbox, so a policy's token
    /// and its deliveries exist together or not at all.
    pub async fn create_tokens_with(
        &self,
        account_id: &str,
        tokens: &[NewToken],
        revoke_policy: Option<(&str, &str)>,
        messages: &[NewMessage],
        now: DateTime<Utc>,
        stamp: &Stamp,
    ) -> Result<Vec<Token>> {
        let inserts = TokenInserts::of(&self.backend, account_id, tokens, now);
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let mut change = 0;
            let mut revoked: Vec<String> = Vec::new();
            // Tokens before the account: the usage writer's lock order.
            if let Some((name, period)) = revoke_policy {
                revoked = sqlx::query_scalar(
                    "UPDATE tokens SET status = 'revoked', revoked_at = $3, updated_at = $3 \
                     WHERE policy_name = $1 AND policy_period < $2 AND status <> 'revoked' \
                     RETURNING id")
                    .bind(name).bind(period).bind(now).fetch_all(&mut *tx).await?;
                if !revoked.is_empty() {
                    change = p.note_change(&mut tx).await?;
                }
            }
            // The account's row lock (PostgreSQL; SQLite has one writer) serialises issues, so
            // the count holds to the commit.
            let (max, live): (i64, i64) = sqlx::query_as(sql(format!(
                "SELECT max_tokens, live_tokens FROM accounts WHERE id = $1{}", p.for_update())))
                .bind(account_id).fetch_optional(&mut *tx).await?.ok_or(StoreError::NotFound)?;
            // Live tokens whose expiry has passed, not yet marked by the expiry job: a minute's
            // worth at most, read from the partial index of live tokens.
            let lapsed: i64 = sqlx::query_scalar(LAPSED_LIVE_TOKENS)
                .bind(account_id).bind(now).fetch_one(&mut *tx).await?;
            let active = live - lapsed;
            if active + tokens.len() as i64 > max {
                return Err(StoreError::TokenLimit { max, active });
            }
            // The user the tokens are for, held until the commit: a change to the user (which
            // rewrites its tokens' copy of its role and status) waits for these tokens, or
            // these wait for it and are refused if it changed since the issue read it.
            if let Some(first) = tokens.first() {
                if tokens.iter().any(|t| t.user_id != first.user_id || t.user_role != first.user_role) {
                    return Err(StoreError::Other("one creation issues for one user".into()));
                }
                if let Some(u) = &first.user_id {
                    let (role, status): (String, String) = sqlx::query_as(sql(format!(
                        "SELECT role, status FROM users WHERE id = $1 AND account_id = $2{}",
                        p.for_share())))
                        .bind(u).bind(account_id).fetch_optional(&mut *tx).await?
                        .ok_or(StoreError::NotFound)?;
                    if status != "active" {
                        return Err(StoreError::Refused(format!("user_id: the user is {status}")));
                    }
                    if first.user_role.map(|r| r.as_str()) != Some(role.as_str()) {
                        return Err(StoreError::Refused(
                            "user_id: the user's role changed during the issue; try again".into()));
                    }
                }
            }
            let inserted = p.insert_tokens(&mut tx, inserts).await?;
            if inserted != tokens.len() as u64 {
                return Err(StoreError::Other(format!(
                    "{inserted} of {} tokens were inserted", tokens.len())));
            }
            let out: Vec<Token> = tokens.iter().map(|t| t.inserted(account_id, now)).collect();
            if let Some(first) = out.first() {
                let entry = created_entry(stamp, account_id, &out, first, &revoked, now);
                audit::record_audit!(tx, &entry).map_err(StoreError::from)?;
            }
            queue_messages!(tx, messages, now);
            tx.commit().await?;
            self.observe_change(change);
            Ok(out)
        })
    }

    /// One token by public id.
    pub async fn token(&self, id: &str) -> Result<Option<Token>> {
        let q = format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1");
        let row = with_pool!(self, p => sqlx::query_as::<_, TokenRow>(sql(q)).bind(id).fetch_optional(p).await?);
        row.map(Token::try_from).transpose()
    }

    /// Tokens matching `f`, newest first, at most `f.limit`.
    pub async fn list_tokens(&self, f: &TokenFilter, now: DateTime<Utc>) -> Result<Vec<Token>> {
        let mut args: Vec<Arg> = Vec::new();
        let mut next = |a: Arg| {
            args.push(a);
            format!("${}", args.len())
        };
        // An account's key row is its secret, not one of its tokens.
        let mut w: Vec<String> = vec!["kind = 'token'".into()];
        if let Some(acc) = &f.account_id {
            w.push(format!("account_id = {}", next(Arg::Str(acc.clone()))));
        }
        if let Some(o) = &f.owner {
            // Never list what the credential could not show: tokens above its role.
            w.push("role IN ('readonly', 'user', 'engineer')".into());
            let me = next(Arg::Str(o.token_id.clone()));
            match &o.user_id {
                Some(u) => w.push(format!(
                    "(user_id = {} OR id = {me})",
                    next(Arg::Str(u.clone()))
                )),
                None => w.push(format!(
                    "(issued_by = {} OR id = {me})",
                    next(Arg::Str(format!("token:{}", o.token_id)))
                )),
            }
        }
        if let Some(s) = f.status {
            use crate::domain::status::TokenStatus::*;
            let t = next(Arg::Time(now));
            // Uses left, a monthly refill due by now included (`Token::remaining_at`).
            let m = next(Arg::Str(crate::domain::period::month_key(now)));
            let remaining = format!(
                "(CASE WHEN refill_monthly IS NOT NULL AND (refill_period IS NULL OR refill_period < {m}) \
                 THEN refill_monthly ELSE remaining END)"
            );
            w.push(match s {
                Revoked => "status = 'revoked'".into(),
                Expired => {
                    format!("status <> 'revoked' AND expires_at IS NOT NULL AND expires_at <= {t}")
                }
                Exhausted => format!(
                    "status <> 'revoked' AND (expires_at IS NULL OR expires_at > {t}) \
                     AND {remaining} IS NOT NULL AND {remaining} <= 0"
                ),
                Active => format!(
                    "status <> 'revoked' AND (expires_at IS NULL OR expires_at > {t}) \
                     AND ({remaining} IS NULL OR {remaining} > 0)"
                ),
            });
        }
        if let Some(r) = f.role {
            w.push(format!("role = {}", next(Arg::Str(r.as_str().into()))));
        }
        if let Some(by) = &f.issued_by {
            w.push(format!("issued_by = {}", next(Arg::Str(by.clone()))));
        }
        if let Some(u) = &f.user_id {
            w.push(format!("user_id = {}", next(Arg::Str(u.clone()))));
        }
        if let Some(until) = f.expiring_before {
            let n = next(Arg::Time(now));
            let u = next(Arg::Time(until));
            w.push(format!(
                "status <> 'revoked' AND expires_at IS NOT NULL AND expires_at > {n} AND expires_at <= {u}"
            ));
        }
        if let Some(q) = &f.q {
            let escaped = q
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            let a = next(Arg::Str(format!("%{escaped}%")));
            w.push(format!(
                "(LOWER(name) LIKE {a} ESCAPE '\\' OR LOWER(COALESCE(description, '')) LIKE {a} ESCAPE '\\')"
            ));
        }
        if let Some((at, id)) = &f.after {
            let t = next(Arg::Time(*at));
            let i = next(Arg::Str(id.clone()));
            w.push(format!(
                "(created_at < {t} OR (created_at = {t} AND id < {i}))"
            ));
        }
        let lim = next(Arg::I64(f.limit));
        let where_sql = format!("WHERE {}", w.join(" AND "));
        let q = format!(
            "SELECT {TOKEN_COLS} FROM tokens {where_sql} ORDER BY created_at DESC, id DESC LIMIT {lim}"
        );
        let rows = with_pool!(self, p => {
            bind_args!(sqlx::query_as::<_, TokenRow>(sql(q)), args).fetch_all(p).await?
        });
        rows.into_iter().map(Token::try_from).collect()
    }

    /// Reads a token under a write lock, lets `f` change it, and writes the editable fields and
    /// status back in the same transaction, so no concurrent use is lost in between. With
    /// `secret`, the token gets that new secret in the same write (a rotation).
    pub async fn update_token<E, F>(
        &self,
        id: &str,
        now: DateTime<Utc>,
        secret: Option<&NewSecret>,
        stamp: &Stamp,
        f: F,
    ) -> Result<Token, E>
    where
        E: From<StoreError>,
        F: FnOnce(Token) -> Result<Token, E>,
    {
        let select = format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1");
        // The secret's columns only when it changes; with a grace period the old hash stays
        // accepted until then, without one it stops at once.
        let rotate = match secret {
            Some(_) => {
                ", prev_secret_hash = CASE WHEN $18 IS NULL THEN NULL ELSE secret_hash END, \
                 prev_secret_valid_until = $18, secret_hash = $16, \
                 sealed_secret = CASE WHEN jwt_enabled THEN $17 ELSE NULL END"
            }
            None => "",
        };
        let update = format!(
            "UPDATE tokens SET name = $2, description = $3, role = $4, scopes = $5, allowed_ips = $6, \
             usage_limit = $7, remaining = $8, refill_monthly = $9, expires_at = $10, status = $11, \
             updated_at = $12, revoked_at = $13, refill_period = $14, rate_limit = $15{rotate} \
             WHERE id = $1 \
             RETURNING {TOKEN_COLS}"
        );
        // Counted against max_tokens: not revoked and not past its expiry.
        let counted =
            |t: &Token| t.status != TokenStatus::Revoked && t.expires_at.is_none_or(|e| e > now);
        with_pool!(self, p => {
            let mut tx = p.begin_write().await.map_err(StoreError::from)?;
            // Lock the token before its account, the order the usage writer takes them in, so
            // the two never deadlock.
            let row = sqlx::query_as::<_, TokenRow>(sql(format!("{select}{}", p.for_update())))
                .bind(id).fetch_optional(&mut *tx).await.map_err(StoreError::from)?
                .ok_or(StoreError::NotFound)?;
            let old = Token::try_from(row)?;
            let max: i64 = sqlx::query_scalar(sql(format!(
                "SELECT max_tokens FROM accounts WHERE id = $1{}", p.for_update())))
                .bind(&old.account_id).fetch_optional(&mut *tx).await.map_err(StoreError::from)?
                .ok_or(StoreError::NotFound)?;
            let was_counted = counted(&old);
            let account_id = old.account_id.clone();
            let before = old.clone();
            let t = f(old)?;
            if !was_counted && counted(&t) {
                // Bringing an expired token back must respect max_tokens like a new one.
                let active: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM tokens WHERE account_id = $1 AND status <> 'revoked' \
                     AND (expires_at IS NULL OR expires_at > $2) AND kind = 'token'")
                    .bind(&account_id).bind(now).fetch_one(&mut *tx).await.map_err(StoreError::from)?;
                if active >= max {
                    return Err(StoreError::TokenLimit { max, active }.into());
                }
            }
            let mut q = sqlx::query_as::<_, TokenRow>(sql(update))
                .bind(id).bind(&t.name).bind(&t.description).bind(t.role.as_str())
                .bind(rows::json_list(&t.scopes)).bind(rows::json_list(&t.allowed_ips))
                .bind(t.usage_limit).bind(t.remaining).bind(t.refill_monthly).bind(t.expires_at)
                .bind(t.status.as_str()).bind(now).bind(t.revoked_at).bind(&t.refill_period)
                .bind(t.rate_limit.map(RateLimit::to_column));
            if let Some(n) = secret {
                q = q.bind(&n.hash).bind(&n.sealed).bind(n.grace_until);
            }
            let row = q.fetch_one(&mut *tx).await.map_err(StoreError::from)?;
            let after = Token::try_from(row)?;
            let changes = crate::domain::audit::token_changes(Some(&before), &after);
            let entry = stamp.done(now, format!("token:{id}"), Some(account_id), changes);
            audit::record_audit!(tx, &entry).map_err(StoreError::from)?;
            let n = p.note_change(&mut tx).await.map_err(StoreError::from)?;
            tx.commit().await.map_err(StoreError::from)?;
            self.observe_change(n);
            Ok(after)
        })
    }
}
