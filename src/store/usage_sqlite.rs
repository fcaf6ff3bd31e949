//! The SQLite side of the ledger (`verify::ledger`): folding usage records into the store, and
//! reading the rows a verification decides on.
//!
//! sqlx runs each SQLite statement on a worker thread and hands the result back through
//! channels, two thread switches per statement. The ledger's threads instead own these rusqlite
//! connections (the same bundled SQLite library, `libsqlite3-sys`, as sqlx) and run in place
//! with cached prepared statements. Everything else keeps using the sqlx pool; they share the
//! database file and its write lock like any connections.

use super::rows::{StateRow, ACCOUNT_COLS, STATE_COLS};
use super::{Result, StoreError};
use crate::domain::model::{Account, STAT_COUNTERS};
use crate::domain::plan::{
    batch_jwt_keys, batch_token_ids, fold_plan, BatchState, Consume, Denial, Plan, STAT_COLUMNS,
};
use crate::domain::state::TokenState;
use crate::domain::status::TokenStatus;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use rusqlite::types::Value;
use rusqlite::{
    params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior,
};
use std::path::Path;
use std::time::Duration;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked | CannotOpen | SystemIoFailure | DiskFull) => {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Other(e.to_string()),
        }
    }
}

/// Timestamps as sqlx writes them to SQLite (RFC 3339 with `T`), so text comparisons made by
/// other statements (`expires_at <= $1`) order them alike.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

fn ts_opt(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(ts)
}

/// Reads a timestamp column: RFC 3339, or SQLite's own `YYYY-MM-DD HH:MM:SS` (UTC).
fn read_ts(row: &Row, i: usize) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let Some(s) = row.get::<_, Option<String>>(i)? else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(&s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f")
        .map(|t| Some(t.and_utc()))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
        })
}

fn read_ts_req(row: &Row, i: usize) -> rusqlite::Result<DateTime<Utc>> {
    read_ts(row, i)?.ok_or(rusqlite::Error::InvalidColumnType(
        i,
        "timestamp".into(),
        rusqlite::types::Type::Null,
    ))
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("stored {what} is unreadable: {e}"))
}

/// A token's state in `STATE_COLS` order.
fn state_of(row: &Row) -> rusqlite::Result<std::result::Result<TokenState, StoreError>> {
    let r = StateRow {
        id: row.get(0)?,
        account_id: row.get(1)?,
        role: row.get(2)?,
        scopes: row.get(3)?,
        allowed_ips: row.get(4)?,
        remaining: row.get(5)?,
        refill_monthly: row.get(6)?,
        refill_period: row.get(7)?,
        expires_at: read_ts(row, 8)?,
        status: row.get(9)?,
        secret_hash: row.get(10)?,
        prev_secret_hash: row.get(11)?,
        prev_secret_valid_until: read_ts(row, 12)?,
        calls_month: row.get(13)?,
        calls_month_period: row.get(14)?,
        calls_total: row.get(15)?,
        last_used_at: read_ts(row, 16)?,
        last_used_ip: row.get(17)?,
        stats_day: row.get(18)?,
        day_valid: row.get(19)?,
        day_cost: row.get(20)?,
        day_revoked: row.get(21)?,
        day_expired: row.get(22)?,
        day_account_inactive: row.get(23)?,
        day_ip_not_allowed: row.get(24)?,
        day_scope_denied: row.get(25)?,
        day_account_quota_exceeded: row.get(26)?,
        day_usage_exceeded: row.get(27)?,
        day_bad_jwt: row.get(28)?,
        day_user_inactive: row.get(29)?,
        user_role: row.get(30)?,
        user_active: row.get(31)?,
        rate_limit: row.get(32)?,
    };
    Ok(TokenState::try_from(r))
}

/// An account row in `ACCOUNT_COLS` order.
fn account_of(row: &Row) -> rusqlite::Result<std::result::Result<Account, StoreError>> {
    let status: String = row.get(2)?;
    let status = match status.parse() {
        Ok(s) => s,
        Err(e) => return Ok(Err(corrupt("account status", e))),
    };
    let rate_limit: Option<String> = row.get(9)?;
    let rate_limit = match super::rows::rate_limit("account", rate_limit.as_deref()) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(Account {
        id: row.get(0)?,
        name: row.get(1)?,
        status,
        max_tokens: row.get(3)?,
        monthly_quota: row.get(4)?,
        quota_used: row.get(5)?,
        quota_period: row.get(6)?,
        rate_limit,
        api_key: row.get::<_, Option<String>>(10)?.unwrap_or_default(),
        secret_calls: row.get(11)?,
        created_at: read_ts_req(row, 7)?,
        updated_at: read_ts_req(row, 8)?,
    }))
}

const STATS_UPSERT: &str =
    "INSERT INTO token_stats_daily (token_id, day, account_id, valid, cost, \
     revoked, expired, account_inactive, ip_not_allowed, scope_denied, account_quota_exceeded, \
     usage_exceeded, bad_jwt, user_inactive) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
     ON CONFLICT (token_id, day) DO UPDATE SET \
     valid = valid + excluded.valid, cost = cost + excluded.cost, \
     revoked = revoked + excluded.revoked, expired = expired + excluded.expired, \
     account_inactive = account_inactive + excluded.account_inactive, \
     ip_not_allowed = ip_not_allowed + excluded.ip_not_allowed, \
     scope_denied = scope_denied + excluded.scope_denied, \
     account_quota_exceeded = account_quota_exceeded + excluded.account_quota_exceeded, \
     usage_exceeded = usage_exceeded + excluded.usage_exceeded, \
     bad_jwt = bad_jwt + excluded.bad_jwt, \
     user_inactive = user_inactive + excluded.user_inactive";

/// The token columns a batch writes, from `?2` on (`?1` is the id), before the `day_*`
/// statistics counters.
const TOKEN_WRITE_COLS: [&str; 8] = [
    "remaining",
    "calls_month",
    "calls_month_period",
    "calls_total",
    "last_used_at",
    "last_used_ip",
    "refill_period",
    "stats_day",
];

fn token_write(with_status: bool) -> String {
    let day_cols = STAT_COLUMNS.iter().map(|c| format!("day_{c}"));
    let mut cols: Vec<String> = TOKEN_WRITE_COLS.iter().map(|c| c.to_string()).collect();
    cols.extend(day_cols);
    if with_status {
        cols.push("status".into());
    }
    let sets: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", i + 2))
        .collect();
    format!("UPDATE tokens SET {} WHERE id = ?1", sets.join(", "))
}

/// A batch's write of a token's counters. `status` is left out unless it changed: SQLite
/// rewrites the entry of every index that involves a column the statement sets, whether or not
/// its value changed, and `tokens_by_expiry`'s condition reads `status`, so setting it to the
/// same value dirtied a page of that index per token besides the row's own.
static TOKEN_WRITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| token_write(false));
/// The same, also setting `status` (last parameter).
static TOKEN_WRITE_WITH_STATUS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| token_write(true));

/// `head` followed by the statistics counters, as one statement's parameters.
fn with_counts<const N: usize>(
    head: [Value; N],
    counts: &[i64; STAT_COUNTERS],
) -> impl Iterator<Item = Value> + '_ {
    head.into_iter()
        .chain(counts.iter().map(|&n| Value::Integer(n)))
}

/// A connection to the existing database file (never creating one), owned by one thread, that
/// waits up to `lock_timeout` (the pool's too) for the write lock.
fn connect(path: &Path, lock_timeout: Duration) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(lock_timeout)?;
    Ok(conn)
}

/// WAL pages after which the writer checkpoints by itself, when the checkpointer falls behind
/// (16 MiB at 4 KiB pages; SQLite's default is 1000).
const WRITER_CHECKPOINT_PAGES: i64 = 4000;

/// Copies committed WAL pages back into the database file on a connection and thread of its
/// own, woken after each commit. A checkpoint in the writer's commit path (SQLite's automatic
/// one, every 1000 pages) stalls the fold behind a burst of page writes and an fsync; here it
/// runs beside the writer (PASSIVE never blocks it). Once it has caught up, the writer's next
/// transaction starts the WAL from the beginning, so the file stays small.
fn spawn_checkpointer(
    path: &Path,
    lock_timeout: Duration,
) -> Result<std::sync::mpsc::SyncSender<()>> {
    let conn = connect(path, lock_timeout)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed; the writer will checkpoint");
                }
            }
        })
        .map_err(|e| StoreError::Other(format!("cannot start the checkpoint thread: {e}")))?;
    Ok(tx)
}

/// The settings that say how far the usage log is folded (`UsageConn::log_position`).
const LOG_EPOCH: &str = "usage_log_epoch";
const LOG_FOLDED: &str = "usage_log_folded";

/// Where the usage log stands in the store: the epoch of the run that wrote it, and the number
/// of the last record folded into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogPosition {
    /// The run's epoch (`verify::usage_log`).
    pub epoch: u64,
    /// The last record of that run folded.
    pub folded: u64,
}

fn setting_u64(conn: &Connection, key: &str) -> Result<u64> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?;
    v.map_or(Ok(0), |v| {
        v.parse().map_err(|e| corrupt(&format!("setting {key}"), e))
    })
}

fn set_setting(conn: &Connection, key: &str, value: u64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO settings (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value.to_string()])?;
    Ok(())
}

/// The ledger's writing connection: folds usage records into the store (`fold`), and reads the
/// settings that say how far that went and whether another connection changed tokens.
pub struct UsageConn {
    conn: Connection,
    /// Wakes the checkpointer after a commit; dropping it ends that thread.
    checkpoint: std::sync::mpsc::SyncSender<()>,
}

impl UsageConn {
    /// Opens the database file (which the pool has created and migrated) in WAL mode. With
    /// `flush` (`durability = "power-loss"`), a fold's commit is flushed to disk before it
    /// returns, since the usage log's records it covers may be overwritten after it. Its writes
    /// wait up to `lock_timeout` for another connection's lock.
    pub fn open(path: &Path, lock_timeout: Duration, flush: bool) -> Result<UsageConn> {
        let conn = connect(path, lock_timeout)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if flush { "FULL" } else { "NORMAL" })?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // A fold touches many rows: keep them in this connection's page cache (64 MiB).
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.set_prepared_statement_cache_capacity(32);
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        // A burst can leave a large WAL file behind; trim it when the log restarts.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        let checkpoint = spawn_checkpointer(path, lock_timeout)?;
        Ok(UsageConn { conn, checkpoint })
    }

    /// Whether a fold's commit is flushed to disk before it returns.
    pub fn set_flush(&self, flush: bool) -> Result<()> {
        self.conn
            .pragma_update(None, "synchronous", if flush { "FULL" } else { "NORMAL" })?;
        Ok(())
    }

    /// Takes the write lock a fold needs (within the lock timeout) and lets it go.
    pub fn probe(&mut self) -> Result<()> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?
            .rollback()?;
        Ok(())
    }

    /// How far the usage log is folded.
    pub fn log_position(&self) -> Result<LogPosition> {
        Ok(LogPosition {
            epoch: setting_u64(&self.conn, LOG_EPOCH)?,
            folded: setting_u64(&self.conn, LOG_FOLDED)?,
        })
    }

    /// The change number another connection last wrote (`Store::change_no`).
    pub fn change_no(&self) -> Result<u64> {
        setting_u64(&self.conn, "change_no")
    }

    /// Consumes `reqs` (decided VALID already: `Consume::decided`) and counts them and `denials`
    /// in the daily statistics, in one transaction holding the database's write lock, which
    /// also records `position` as folded. Each is applied to the rows as they are now, so what
    /// another connection changed meanwhile (a new limit, a refill) is kept. Nothing is written
    /// when it fails.
    pub fn fold(
        &mut self,
        reqs: &[Consume],
        denials: &[Denial],
        position: LogPosition,
    ) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut state = BatchState::default();
        {
            let mut st =
                tx.prepare_cached(&format!("SELECT {STATE_COLS} FROM tokens WHERE id = ?1"))?;
            for id in batch_token_ids(reqs, denials) {
                if let Some(t) = st.query_row([&id], state_of).optional()? {
                    let t = t?;
                    state.tokens.insert(id, t);
                }
            }
            let mut st = tx.prepare_cached(&format!(
                "SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?1"
            ))?;
            let mut account_ids: Vec<&str> =
                state.tokens.values().map(|t| &*t.account_id).collect();
            account_ids.sort();
            account_ids.dedup();
            for id in account_ids {
                if let Some(a) = st.query_row([id], account_of).optional()? {
                    let a = a?;
                    state.accounts.insert(a.id.clone(), a);
                }
            }
            let mut st =
                tx.prepare_cached("SELECT uses FROM jwt_uses WHERE token_id = ?1 AND jwt_id = ?2")?;
            for key in batch_jwt_keys(reqs) {
                if let Some(uses) = st
                    .query_row([&key.0, &key.1], |r| r.get::<_, i64>(0))
                    .optional()?
                {
                    state.jwt_uses.insert(key, uses);
                }
            }
        }
        // A token's status seldom changes in a fold; see `TOKEN_WRITE`.
        let statuses: std::collections::HashMap<String, TokenStatus> = state
            .tokens
            .iter()
            .map(|(id, t)| (id.clone(), t.status))
            .collect();
        let Plan {
            tokens,
            accounts,
            archives,
            stats,
            jwt_uses,
            ..
        } = fold_plan(reqs, denials, state);
        {
            let mut write = tx.prepare_cached(&TOKEN_WRITE)?;
            let mut write_with_status = tx.prepare_cached(&TOKEN_WRITE_WITH_STATUS)?;
            for t in &tokens {
                let head = [
                    t.id.to_string().into(),
                    t.remaining.into(),
                    t.calls_month.into(),
                    t.calls_month_period.map(|m| m.to_string()).into(),
                    t.calls_total.into(),
                    ts_opt(t.last_used_at).into(),
                    t.last_used_ip.map(|ip| ip.to_string()).into(),
                    t.refill_period.map(|m| m.to_string()).into(),
                    t.today
                        .as_ref()
                        .and_then(|d| d.day)
                        .map(|d| d.to_string())
                        .into(),
                ];
                let counts = t.today.as_ref().map_or([0; STAT_COUNTERS], |d| d.counts);
                let values = with_counts(head, &counts);
                if statuses.get(t.id.as_str()) == Some(&t.status) {
                    write.execute(params_from_iter(values))?;
                } else {
                    let status = Value::Text(t.status.as_str().to_string());
                    write_with_status.execute(params_from_iter(values.chain([status])))?;
                }
            }
            let mut st = tx.prepare_cached(
                "UPDATE accounts SET quota_used = ?2, quota_period = ?3 WHERE id = ?1",
            )?;
            for a in &accounts {
                st.execute(params![a.id, a.quota_used, a.quota_period])?;
            }
            for (kind, id, period, calls) in &archives {
                let mut st = tx.prepare_cached(&format!(
                    "{} VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    super::usage::archive_insert(*kind)
                ))?;
                st.execute(params![id, period, calls])?;
            }
            let mut st = tx.prepare_cached(STATS_UPSERT)?;
            for s in &stats {
                let head: [Value; 3] = [
                    s.token_id.clone().into(),
                    s.day.clone().into(),
                    s.account_id.clone().into(),
                ];
                st.execute(params_from_iter(with_counts(head, &s.counts())))?;
            }
            let mut st = tx.prepare_cached(
                "INSERT INTO jwt_uses (token_id, jwt_id, uses, expires_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (token_id, jwt_id) DO UPDATE SET uses = excluded.uses, \
                 expires_at = max(expires_at, excluded.expires_at)",
            )?;
            for j in &jwt_uses {
                st.execute(params![j.token_id, j.jwt_id, j.uses, ts(j.expires_at)])?;
            }
            set_setting(&tx, LOG_EPOCH, position.epoch)?;
            set_setting(&tx, LOG_FOLDED, position.folded)?;
        }
        tx.commit()?;
        // A signal already pending covers this commit too.
        let _ = self.checkpoint.try_send(());
        Ok(())
    }
}

/// Reads the rows a verification decides on, for the ledger's cache, on a connection of its
/// own (in WAL mode a reader never waits for the writer).
pub struct UsageReader {
    conn: Connection,
}

impl UsageReader {
    /// Opens the (existing) database file.
    pub fn open(path: &Path, lock_timeout: Duration) -> Result<UsageReader> {
        let conn = connect(path, lock_timeout)?;
        // Each row is read once, then kept by the ledger.
        conn.pragma_update(None, "cache_size", -8192)?;
        conn.set_prepared_statement_cache_capacity(8);
        Ok(UsageReader { conn })
    }

    /// A token's state by id.
    pub fn token(&self, id: &str) -> Result<Option<TokenState>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {STATE_COLS} FROM tokens WHERE id = ?1"))?;
        st.query_row([id], state_of).optional()?.transpose()
    }

    /// An account by id.
    pub fn account(&self, id: &str) -> Result<Option<Account>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ACCOUNT_COLS} FROM accounts WHERE id = ?1"
        ))?;
        st.query_row([id], account_of).optional()?.transpose()
    }

    /// Up to `limit` active tokens, the most recently used first, and their accounts: what a
    /// start reads before serving, so first calls find their rows in memory.
    pub fn active_rows(&self, limit: usize) -> Result<(Vec<TokenState>, Vec<Account>)> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {STATE_COLS} FROM tokens WHERE status = 'active' \
             ORDER BY last_used_at DESC NULLS LAST LIMIT ?1"
        ))?;
        let mut tokens = Vec::new();
        for t in st.query_map([limit as i64], state_of)? {
            tokens.push(t??);
        }
        // Few accounts for many tokens: each read by id rather than the tokens sorted again.
        let ids: std::collections::BTreeSet<&str> = tokens.iter().map(|t| &*t.account_id).collect();
        let mut accounts = Vec::with_capacity(ids.len());
        for id in ids {
            accounts.extend(self.account(id)?);
        }
        Ok((tokens, accounts))
    }

    /// The next `limit` tokens by id after `after`, whatever their status: a background read
    /// of the tokens, a step at a time, each a range of the primary key and nothing else (so
    /// no plan sorts the table).
    pub fn tokens_after(&self, after: &str, limit: usize) -> Result<Vec<TokenState>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {STATE_COLS} FROM tokens WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?;
        let mut tokens = Vec::new();
        for t in st.query_map(rusqlite::params![after, limit as i64], state_of)? {
            tokens.push(t??);
        }
        Ok(tokens)
    }

    /// The uses recorded for a JWT of a token (0 when none).
    pub fn jwt_uses(&self, token_id: &str, jwt_id: &str) -> Result<i64> {
        let mut st = self
            .conn
            .prepare_cached("SELECT uses FROM jwt_uses WHERE token_id = ?1 AND jwt_id = ?2")?;
        Ok(st
            .query_row([token_id, jwt_id], |r| r.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0))
    }
}
