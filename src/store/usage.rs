//! Usage statements: reading the rows a batch is decided against, writing a planned batch (under
//! row locks, or checked against the row versions it was planned on), and the daily statistics.
//! The plan itself is `domain::plan`.

use super::rows::{StatRecord, TokenAccountRow, VersionedRow, ACCOUNT_COLS, STATE_COLS};
use super::{sql, Arg, Backend, Result, Store, StoreError};
use crate::domain::model::Account;
use crate::domain::plan::{
    batch_jwt_keys, batch_token_ids, plan, Archive, BatchState, Consume, Decided, Denial, Plan,
    StatRow, STAT_COLUMNS,
};
use crate::domain::rate::Windows;
use crate::domain::state::TokenState;
use chrono::NaiveDate;

/// A token and its account, each with the version it was read at (PostgreSQL's `xmin`, which
/// every update of a row changes): what `Store::write_unlocked` checks before writing.
#[derive(Debug, Clone)]
pub struct Versioned {
    /// The token.
    pub token: TokenState,
    /// Its row's version.
    pub token_version: String,
    /// Its account.
    pub account: Account,
    /// The account row's version.
    pub account_version: String,
}

impl TryFrom<VersionedRow> for Versioned {
    type Error = StoreError;
    fn try_from(r: VersionedRow) -> Result<Self> {
        let (token, account) = r.rows.into_parts();
        Ok(Versioned {
            token: TokenState::try_from(token)?,
            token_version: r.t_version,
            account: Account::try_from(account)?,
            account_version: r.a_version,
        })
    }
}

/// The insert into a monthly archive, up to `VALUES`; rows are (id, period, calls).
pub(super) fn archive_insert(kind: Archive) -> &'static str {
    match kind {
        Archive::Token => "INSERT INTO token_monthly_usage (token_id, period, calls)",
        Archive::Account => "INSERT INTO account_monthly_usage (account_id, period, calls)",
    }
}

/// The account's columns as `a.id AS a_id, …` (`TokenAccountRow`).
fn account_cols() -> String {
    let cols: Vec<String> = ACCOUNT_COLS
        .split(',')
        .map(|c| format!("a.{0} AS a_{0}", c.trim()))
        .collect();
    cols.join(", ")
}

/// Tokens (`filter`: the rest of the query after `FROM tokens`) with their accounts and each
/// row's version, read without a lock (`VersionedRow`).
fn pg_read_versioned(filter: &str) -> String {
    format!(
        "WITH t AS (SELECT xmin::text AS t_version, {STATE_COLS} FROM tokens {filter}) \
         SELECT t.*, a.xmin::text AS a_version, {} FROM t JOIN accounts a ON a.id = t.account_id",
        account_cols()
    )
}
static PG_READ_VERSIONED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| pg_read_versioned("WHERE id = ANY($1)"));
static PG_READ_ACTIVE_VERSIONED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    pg_read_versioned("WHERE status = 'active' ORDER BY last_used_at DESC NULLS LAST LIMIT $1")
});
/// A range of the primary key and nothing else, so the plan is an index scan whatever the
/// statistics say (a status filter here once made it sort the whole table).
static PG_READ_AFTER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| pg_read_versioned("WHERE id > $1 ORDER BY id LIMIT $2"));

/// The expression that sets the transaction's commit durability. `durability =
/// "process-crash"`: COMMIT returns before the server flushes its log. "power-loss": a server or
/// role default of `off` is overridden (`local` and stronger are durable already and kept).
fn commit_setting(flush: bool) -> &'static str {
    if flush {
        "CASE WHEN current_setting('synchronous_commit') = 'off' \
         THEN set_config('synchronous_commit', 'on', true) END"
    } else {
        "set_config('synchronous_commit', 'off', true)"
    }
}

/// The PostgreSQL batch: lock and read the batch's tokens, then their accounts (each in id order,
/// so daemons sharing the database never deadlock), decide in memory, then every write in one
/// statement of data-modifying CTEs over arrays. Prepared once per connection, so a batch of any
/// size is four round trips (BEGIN, the locking read, the write, COMMIT) with no planning.
///
/// `PG_LOCK` locks and reads tokens and accounts in one statement (`TokenAccountRow`).
fn pg_lock(flush: bool) -> String {
    // Set here rather than in a round trip of its own.
    let commit = commit_setting(flush);
    // The account ids are an `ARRAY(…)` subquery, which PostgreSQL evaluates whole, locking
    // every token, before `a` scans (and locks) any account: tokens first.
    format!(
        "WITH t AS MATERIALIZED (SELECT {STATE_COLS} FROM tokens WHERE id = ANY($1) \
         ORDER BY id FOR UPDATE), \
         a AS MATERIALIZED (SELECT {ACCOUNT_COLS} FROM accounts \
         WHERE id = ANY(ARRAY(SELECT account_id FROM t)) ORDER BY id FOR UPDATE), \
         c AS MATERIALIZED (SELECT {commit}) \
         SELECT t.*, {} FROM t JOIN a ON a.id = t.account_id CROSS JOIN c",
        account_cols()
    )
}
static PG_LOCK: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| pg_lock(true));
static PG_LOCK_NO_FLUSH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| pg_lock(false));
const PG_JWT_USES: &str = "SELECT j.token_id, j.jwt_id, j.uses FROM jwt_uses j \
     JOIN unnest($1::text[], $2::text[]) AS k(token_id, jwt_id) \
     ON j.token_id = k.token_id AND j.jwt_id = k.jwt_id";
/// The write of a batch's plan: every change in one statement of data-modifying CTEs over
/// arrays. `guard: None` runs inside the locked transaction (`pg_batch`). `Some(flush)` is a
/// statement of its own (`Store::write_unlocked`): each token and account row is written only if
/// its version (`xmin`, which every update of a row changes) is still the one its copy was read
/// at, and when any is not the statement fails whole (a division by zero, `ROWS_CHANGED`), so
/// nothing is written; it sets its own commit's durability, as `pg_lock` does.
fn pg_write(guard: Option<Guard>) -> String {
    let (t_guard_arg, a_guard_arg, guard_col, t_guard, a_guard) = match guard {
        None => ("", "", "", "", ""),
        Some(_) => (
            ", $49::text[]",
            ", $50::text[]",
            ", xmin",
            " AND tokens.xmin = v.xmin::xid",
            " AND accounts.xmin = v.xmin::xid",
        ),
    };
    let tail = match guard {
        None => " SELECT 1".to_string(),
        // One row: the check (1, or the error), the version every written row now has (all
        // were written by this statement's transaction), and the commit setting. The check
        // also covers the accounts the batch decided on without writing them ($51, $52: ids
        // and versions), as a refusal can come from an account's state, and, when the batch
        // has any, the tokens it refused for their rate limit, which write nothing ($53, $54:
        // left out otherwise, as the check cost a batch about a third more time).
        Some(Guard { flush, limited }) => format!(
            " SELECT (1 / ((SELECT count(*) FROM t) = cardinality($1::text[]) \
             AND (SELECT count(*) FROM a) = cardinality($10::text[]) \
             AND (SELECT count(*) FROM accounts JOIN unnest($51::text[], $52::text[]) AS k(id, xmin) \
                  ON accounts.id = k.id AND accounts.xmin = k.xmin::xid) = cardinality($51::text[]) \
             {})::int)::int8 AS ok, \
             COALESCE((SELECT min(x) FROM t), (SELECT min(x) FROM a)) AS version, \
             {} AS sync",
            if limited {
                "AND (SELECT count(*) FROM tokens JOIN unnest($53::text[], $54::text[]) \
                 AS k(id, xmin) ON tokens.id = k.id AND tokens.xmin = k.xmin::xid) \
                 = cardinality($53::text[]) "
            } else {
                ""
            },
            commit_setting(flush)
        ),
    };
    format!(
        "WITH \
 t AS (UPDATE tokens SET status = v.status, remaining = v.remaining, calls_month = v.calls_month, \
       calls_month_period = v.calls_month_period, calls_total = v.calls_total, \
       last_used_at = v.last_used_at, last_used_ip = v.last_used_ip, refill_period = v.refill_period, \
       stats_day = v.stats_day, day_valid = v.day_valid, day_cost = v.day_cost, \
       day_revoked = v.day_revoked, day_expired = v.day_expired, \
       day_account_inactive = v.day_account_inactive, day_ip_not_allowed = v.day_ip_not_allowed, \
       day_scope_denied = v.day_scope_denied, \
       day_account_quota_exceeded = v.day_account_quota_exceeded, \
       day_usage_exceeded = v.day_usage_exceeded, day_bad_jwt = v.day_bad_jwt, \
       day_user_inactive = v.day_user_inactive \
       FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[], \
                   $7::timestamptz[], $8::text[], $9::text[], $36::text[], $37::int8[], $38::int8[], \
                   $39::int8[], $40::int8[], $41::int8[], $42::int8[], $43::int8[], $44::int8[], \
                   $45::int8[], $46::int8[], $47::int8[]{t_guard_arg}) \
            AS v(id, status, remaining, calls_month, calls_month_period, calls_total, last_used_at, \
                 last_used_ip, refill_period, stats_day, day_valid, day_cost, day_revoked, \
                 day_expired, day_account_inactive, day_ip_not_allowed, day_scope_denied, \
                 day_account_quota_exceeded, day_usage_exceeded, day_bad_jwt, \
                 day_user_inactive{guard_col}) \
       WHERE tokens.id = v.id{t_guard} RETURNING tokens.xmin::text AS x), \
 a AS (UPDATE accounts SET quota_used = v.quota_used, quota_period = v.quota_period \
       FROM unnest($10::text[], $11::int8[], $12::text[]{a_guard_arg}) \
       AS v(id, quota_used, quota_period{guard_col}) \
       WHERE accounts.id = v.id{a_guard} RETURNING accounts.xmin::text AS x), \
 ta AS (INSERT INTO token_monthly_usage (token_id, period, calls) \
        SELECT * FROM unnest($13::text[], $14::text[], $15::int8[]) ON CONFLICT DO NOTHING RETURNING 1), \
 aa AS (INSERT INTO account_monthly_usage (account_id, period, calls) \
        SELECT * FROM unnest($16::text[], $17::text[], $18::int8[]) ON CONFLICT DO NOTHING RETURNING 1), \
 s AS (INSERT INTO token_stats_daily (token_id, day, account_id, valid, cost, revoked, expired, \
       account_inactive, ip_not_allowed, scope_denied, account_quota_exceeded, usage_exceeded, bad_jwt, \
       user_inactive) \
       SELECT * FROM unnest($19::text[], $20::text[], $21::text[], $22::int8[], $23::int8[], \
            $24::int8[], $25::int8[], $26::int8[], $27::int8[], $28::int8[], $29::int8[], \
            $30::int8[], $31::int8[], $48::int8[]) \
       ON CONFLICT (token_id, day) DO UPDATE SET \
       valid = token_stats_daily.valid + excluded.valid, cost = token_stats_daily.cost + excluded.cost, \
       revoked = token_stats_daily.revoked + excluded.revoked, \
       expired = token_stats_daily.expired + excluded.expired, \
       account_inactive = token_stats_daily.account_inactive + excluded.account_inactive, \
       ip_not_allowed = token_stats_daily.ip_not_allowed + excluded.ip_not_allowed, \
       scope_denied = token_stats_daily.scope_denied + excluded.scope_denied, \
       account_quota_exceeded = token_stats_daily.account_quota_exceeded + excluded.account_quota_exceeded, \
       usage_exceeded = token_stats_daily.usage_exceeded + excluded.usage_exceeded, \
       bad_jwt = token_stats_daily.bad_jwt + excluded.bad_jwt, \
       user_inactive = token_stats_daily.user_inactive + excluded.user_inactive RETURNING 1), \
 j AS (INSERT INTO jwt_uses (token_id, jwt_id, uses, expires_at) \
       SELECT * FROM unnest($32::text[], $33::text[], $34::int8[], $35::timestamptz[]) \
       ON CONFLICT (token_id, jwt_id) DO UPDATE SET uses = excluded.uses, \
       expires_at = GREATEST(jwt_uses.expires_at, excluded.expires_at) RETURNING 1) \
{tail}"
    )
}
static PG_WRITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| pg_write(None));
/// How a checked write (`Store::write_unlocked`) is spelled: whether its commit is flushed, and
/// whether it checks tokens refused for their rate limit.
#[derive(Clone, Copy)]
struct Guard {
    flush: bool,
    limited: bool,
}
/// The checked write's spellings, by `Guard` (`guarded`).
static PG_WRITE_GUARDED: std::sync::LazyLock<[String; 4]> = std::sync::LazyLock::new(|| {
    [(true, false), (false, false), (true, true), (false, true)]
        .map(|(flush, limited)| pg_write(Some(Guard { flush, limited })))
});
fn guarded(flush: bool, limited: bool) -> &'static str {
    &PG_WRITE_GUARDED[usize::from(!flush) + 2 * usize::from(limited)]
}
/// The SQLSTATE of the guarded write's failed check (`division_by_zero`).
const ROWS_CHANGED: &str = "22012";

/// One attempt at a PostgreSQL batch (see `Store::consume_batch`).
async fn pg_batch(
    p: &sqlx::PgPool,
    reqs: &[Consume],
    denials: &[Denial],
    flush: bool,
    rates: &Windows,
) -> std::result::Result<(Vec<Decided>, Windows), sqlx::Error> {
    let ids = batch_token_ids(reqs, denials);
    let jwt_keys = batch_jwt_keys(reqs);
    let mut tx = p.begin().await?;
    let mut state = BatchState {
        rates: rates.clone(),
        ..BatchState::default()
    };
    // Tokens, then their accounts, each in id order: the order every transaction that locks
    // both takes them in, so daemons sharing the database never deadlock on them.
    let lock = if flush { &*PG_LOCK } else { &*PG_LOCK_NO_FLUSH };
    for row in sqlx::query_as::<_, TokenAccountRow>(lock.as_str())
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
    {
        // Each of an account's tokens brings the same copy of its row.
        let (token, account) = row.into_parts();
        let a = Account::try_from(account).map_err(|e| sqlx::Error::Decode(e.into()))?;
        state.accounts.insert(a.id.clone(), a);
        let t = TokenState::try_from(token).map_err(|e| sqlx::Error::Decode(e.into()))?;
        state.tokens.insert(t.id.to_string(), t);
    }
    if !jwt_keys.is_empty() {
        let (tids, jids): (Vec<String>, Vec<String>) = jwt_keys.into_iter().unzip();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(PG_JWT_USES)
            .bind(&tids)
            .bind(&jids)
            .fetch_all(&mut *tx)
            .await?;
        for (t, j, uses) in rows {
            state.jwt_uses.insert((t, j), uses);
        }
    }
    let plan = plan(reqs, denials, state);
    bind_plan(PG_WRITE.as_str(), &plan)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((plan.decided, plan.rates))
}

/// `sql` (a `pg_write`) with `plan`'s arrays bound, $1 to $46.
fn bind_plan(
    sql: &'static str,
    plan: &Plan,
) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let Plan {
        tokens,
        accounts,
        archives,
        stats,
        jwt_uses,
        ..
    } = plan;
    let col = |f: &dyn Fn(&StatRow) -> i64| stats.iter().map(f).collect::<Vec<i64>>();
    let arch = |kind: Archive| {
        let rows: Vec<_> = archives.iter().filter(|a| a.0 == kind).collect();
        (
            rows.iter().map(|a| a.1.clone()).collect::<Vec<_>>(),
            rows.iter().map(|a| a.2.clone()).collect::<Vec<_>>(),
            rows.iter().map(|a| a.3).collect::<Vec<_>>(),
        )
    };
    let (ta_id, ta_p, ta_n) = arch(Archive::Token);
    let (aa_id, aa_p, aa_n) = arch(Archive::Account);
    let q = sqlx::query(sql)
        .bind(tokens.iter().map(|t| t.id.to_string()).collect::<Vec<_>>())
        .bind(
            tokens
                .iter()
                .map(|t| t.status.as_str().to_string())
                .collect::<Vec<_>>(),
        )
        .bind(tokens.iter().map(|t| t.remaining).collect::<Vec<_>>())
        .bind(tokens.iter().map(|t| t.calls_month).collect::<Vec<_>>())
        .bind(
            tokens
                .iter()
                .map(|t| t.calls_month_period.map(|m| m.to_string()))
                .collect::<Vec<_>>(),
        )
        .bind(tokens.iter().map(|t| t.calls_total).collect::<Vec<_>>())
        .bind(tokens.iter().map(|t| t.last_used_at).collect::<Vec<_>>())
        .bind(
            tokens
                .iter()
                .map(|t| t.last_used_ip.map(|ip| ip.to_string()))
                .collect::<Vec<_>>(),
        )
        .bind(
            tokens
                .iter()
                .map(|t| t.refill_period.map(|m| m.to_string()))
                .collect::<Vec<_>>(),
        )
        .bind(accounts.iter().map(|a| a.id.clone()).collect::<Vec<_>>())
        .bind(accounts.iter().map(|a| a.quota_used).collect::<Vec<_>>())
        .bind(
            accounts
                .iter()
                .map(|a| a.quota_period.clone())
                .collect::<Vec<_>>(),
        )
        .bind(ta_id)
        .bind(ta_p)
        .bind(ta_n)
        .bind(aa_id)
        .bind(aa_p)
        .bind(aa_n)
        .bind(stats.iter().map(|s| s.token_id.clone()).collect::<Vec<_>>())
        .bind(stats.iter().map(|s| s.day.clone()).collect::<Vec<_>>())
        .bind(
            stats
                .iter()
                .map(|s| s.account_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(col(&|s| s.valid))
        .bind(col(&|s| s.cost))
        .bind(col(&|s| s.revoked))
        .bind(col(&|s| s.expired))
        .bind(col(&|s| s.account_inactive))
        .bind(col(&|s| s.ip_not_allowed))
        .bind(col(&|s| s.scope_denied))
        .bind(col(&|s| s.account_quota_exceeded))
        .bind(col(&|s| s.usage_exceeded))
        .bind(col(&|s| s.bad_jwt))
        .bind(
            jwt_uses
                .iter()
                .map(|j| j.token_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            jwt_uses
                .iter()
                .map(|j| j.jwt_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(jwt_uses.iter().map(|j| j.uses).collect::<Vec<_>>())
        .bind(jwt_uses.iter().map(|j| j.expires_at).collect::<Vec<_>>());
    let mut q = q.bind(
        tokens
            .iter()
            .map(|t| t.today.as_ref().and_then(|d| d.day).map(|d| d.to_string()))
            .collect::<Vec<_>>(),
    );
    for i in 0..STAT_COLUMNS.len() {
        q = q.bind(
            tokens
                .iter()
                .map(|t| t.today.as_ref().map_or(0, |d| d.counts[i]))
                .collect::<Vec<_>>(),
        );
    }
    // $48: the statistics' last column, added after the others were numbered.
    q.bind(col(&|s| s.user_inactive))
}

impl Store {
    /// Decides `reqs` in order, consumes the valid ones, and counts them and `denials` in the
    /// daily statistics, in one PostgreSQL transaction: one commit for the whole batch, flushed
    /// to disk before it returns unless `flush` is off (`durability = "process-crash"`).
    /// A batch PostgreSQL picks as a deadlock victim (another transaction locked the same rows
    /// in another order) rolled back whole, so it is run again. (On SQLite the ledger decides in
    /// memory and folds: `verify::ledger`, `usage_sqlite::UsageConn::fold`.)
    /// `rates` are the daemon's rate windows of the batch's tokens and accounts; the windows as
    /// the batch left them come back with the decisions.
    pub async fn consume_batch(
        &self,
        reqs: &[Consume],
        denials: &[Denial],
        flush: bool,
        rates: &Windows,
    ) -> Result<(Vec<Decided>, Windows)> {
        let p = &self.usage_pool("a usage batch").await?;
        let mut attempt = 1;
        loop {
            match pg_batch(p, reqs, denials, flush, rates).await {
                Err(sqlx::Error::Database(db))
                    if attempt < 3 && matches!(db.code().as_deref(), Some("40P01" | "40001")) =>
                {
                    tracing::warn!(attempt, error = %db, "usage batch rolled back; running it again");
                    attempt += 1;
                }
                r => return r.map_err(StoreError::from),
            }
        }
    }

    /// Tokens `ids` with their accounts and versions, read without a lock (PostgreSQL; an
    /// unknown id is absent).
    pub async fn read_versioned(&self, ids: &[String]) -> Result<Vec<Versioned>> {
        let p = &self.usage_pool("reading rows with their versions").await?;
        sqlx::query_as::<_, VersionedRow>(PG_READ_VERSIONED.as_str())
            .bind(ids)
            .fetch_all(p)
            .await?
            .into_iter()
            .map(Versioned::try_from)
            .collect()
    }

    /// The `limit` active tokens used most recently, with their accounts and versions (a warm
    /// start; PostgreSQL).
    pub async fn read_active_versioned(&self, limit: usize) -> Result<Vec<Versioned>> {
        let p = &self.usage_pool("reading rows with their versions").await?;
        sqlx::query_as::<_, VersionedRow>(PG_READ_ACTIVE_VERSIONED.as_str())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(p)
            .await?
            .into_iter()
            .map(Versioned::try_from)
            .collect()
    }

    /// The next `limit` tokens by id after `after`, whatever their status, with their accounts
    /// and versions (PostgreSQL): the tokens read a step at a time after a start, on the main
    /// pool (the usage writer's connection is the writer's alone).
    pub async fn read_after(&self, after: &str, limit: usize) -> Result<Vec<Versioned>> {
        let Backend::Postgres(p) = &*self.backend else {
            return Err(StoreError::Other(
                "reading rows with their versions is for PostgreSQL".into(),
            ));
        };
        sqlx::query_as::<_, VersionedRow>(PG_READ_AFTER.as_str())
            .bind(after)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(p)
            .await?
            .into_iter()
            .map(Versioned::try_from)
            .collect()
    }

    /// Writes `plan`, decided on copies read without a lock, in one statement of its own, but
    /// only if every token and account it changes is still at the version its copy was read at
    /// (`token_versions` and `account_versions`, in the order of `plan.tokens` and
    /// `plan.accounts`), and every account it decided on without changing (`unwritten_accounts`:
    /// id and version) still is too. Committed, and with `flush` flushed, before it returns. `Ok(Some(v))`:
    /// written, and every row written is now at version `v`. `Ok(None)`: a row had changed
    /// (another daemon, an admin change), and nothing was written.
    pub async fn write_unlocked(
        &self,
        plan: &Plan,
        token_versions: Vec<String>,
        account_versions: Vec<String>,
        unwritten_accounts: Vec<(String, String)>,
        unwritten_tokens: Vec<(String, String)>,
        flush: bool,
    ) -> Result<Option<String>> {
        let p = &self
            .usage_pool("a write checked against row versions")
            .await?;
        let limited = !unwritten_tokens.is_empty();
        let (read_ids, read_versions): (Vec<String>, Vec<String>) =
            unwritten_accounts.into_iter().unzip();
        let mut q = bind_plan(guarded(flush, limited), plan)
            .bind(token_versions)
            .bind(account_versions)
            .bind(read_ids)
            .bind(read_versions);
        if limited {
            let (ids, versions): (Vec<String>, Vec<String>) = unwritten_tokens.into_iter().unzip();
            q = q.bind(ids).bind(versions);
        }
        let written = q.fetch_one(p).await;
        match written {
            Ok(row) => Ok(Some(
                sqlx::Row::try_get::<Option<String>, _>(&row, "version")?.unwrap_or_default(),
            )),
            // Also a deadlock or serialization failure with another daemon's write: nothing was
            // written, and the locked batch sorts it out.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some(ROWS_CHANGED | "40P01" | "40001")) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Daily statistics rows for days `from..=to`, by day then token; `account` limits them to
    /// one account.
    pub async fn stats(
        &self,
        from: NaiveDate,
        to: NaiveDate,
        account: Option<&str>,
    ) -> Result<Vec<StatRow>> {
        let mut args = vec![Arg::Str(from.to_string()), Arg::Str(to.to_string())];
        // The archive, plus each token's latest day still held in its own row.
        let sums: Vec<String> = STAT_COLUMNS
            .iter()
            .map(|c| format!("CAST(SUM({c}) AS BIGINT) AS {c}"))
            .collect();
        let row_cols: Vec<String> = STAT_COLUMNS
            .iter()
            .map(|c| format!("day_{c} AS {c}"))
            .collect();
        let mut q = format!(
            "SELECT day, token_id, account_id, {} FROM (\
             SELECT day, token_id, account_id, {} FROM token_stats_daily WHERE day >= $1 AND day <= $2 \
             UNION ALL \
             SELECT stats_day AS day, id AS token_id, account_id, {} FROM tokens \
             WHERE stats_day >= $1 AND stats_day <= $2) s",
            sums.join(", "),
            STAT_COLUMNS.join(", "),
            row_cols.join(", ")
        );
        if let Some(a) = account {
            args.push(Arg::Str(a.to_string()));
            q.push_str(" WHERE account_id = $3");
        }
        q.push_str(" GROUP BY day, token_id, account_id");
        let rows = with_pool!(self, p => {
            bind_args!(sqlx::query_as::<_, StatRecord>(sql(q)), args).fetch_all(p).await?
        });
        let mut rows: Vec<StatRow> = rows.into_iter().map(StatRow::from).collect();
        // Sorted here in byte order, not by the database's collation, so both backends list a
        // day's tokens alike.
        rows.sort_by(|a, b| (&a.day, &a.token_id).cmp(&(&b.day, &b.token_id)));
        Ok(rows)
    }
}
