//! Usage: consuming verified calls in batches (one transaction, one durable commit, for many
//! requests), per-day statistics, and JWT use records.

use super::model::{Account, Token};
use super::rows::{AccountRow, TokenRow, ACCOUNT_COLS, TOKEN_COLS};
use super::{sql, Arg, Backend, Result, Store, StoreError, WritePool};
use crate::domain::period::{day_key, month_key};
use crate::domain::status::TokenStatus;
use crate::verify::{decide, AccountState, Check, Outcome};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::HashMap;

/// One call to decide and, when valid, consume.
#[derive(Debug, Clone)]
pub struct Consume {
    /// The token's public id.
    pub token_id: String,
    /// SHA-256 of the presented token, checked under the lock; `None` for a JWT, whose
    /// signature was checked against the token already.
    pub secret_hash: Option<Vec<u8>>,
    /// The call, client IP and cost.
    pub check: Check,
    /// The instant of the check.
    pub now: DateTime<Utc>,
    /// When the call came with a JWT: its own use count to enforce.
    pub jwt: Option<JwtUse>,
}

/// A JWT's own use limit.
#[derive(Debug, Clone)]
pub struct JwtUse {
    /// The JWT's `Id` claim.
    pub jwt_id: String,
    /// Its `RequestCount`.
    pub limit: i64,
    /// Its `ValidUntil`: the record is kept until then.
    pub expires_at: DateTime<Utc>,
}

/// The decision on one call, made under the batch's lock.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// What was decided; when `Valid`, the cost was consumed.
    pub outcome: Outcome,
    /// The token as it stands after this call (`None` when it is unknown or the secret did not
    /// match).
    pub token: Option<Token>,
}

/// A refused verification of a known token, counted in the daily statistics.
#[derive(Debug, Clone)]
pub struct Denial {
    /// The token.
    pub token_id: String,
    /// Its account.
    pub account_id: String,
    /// Why.
    pub outcome: Outcome,
    /// When.
    pub at: DateTime<Utc>,
}

/// One row of the daily statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct StatRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Token id.
    pub token_id: String,
    /// Its account.
    pub account_id: String,
    /// Successful calls.
    pub valid: i64,
    /// Uses they consumed.
    pub cost: i64,
    /// Denials: revoked.
    pub revoked: i64,
    /// Denials: expired.
    pub expired: i64,
    /// Denials: account inactive.
    pub account_inactive: i64,
    /// Denials: IP not allowed.
    pub ip_not_allowed: i64,
    /// Denials: scope denied.
    pub scope_denied: i64,
    /// Denials: account quota exceeded.
    pub account_quota_exceeded: i64,
    /// Denials: usage exceeded.
    pub usage_exceeded: i64,
    /// Denials: bad JWT.
    pub bad_jwt: i64,
}

/// The statistics columns, in CSV order after day, token and account.
pub const STAT_COLUMNS: [&str; 10] = [
    "valid",
    "cost",
    "revoked",
    "expired",
    "account_inactive",
    "ip_not_allowed",
    "scope_denied",
    "account_quota_exceeded",
    "usage_exceeded",
    "bad_jwt",
];

impl StatRow {
    fn add(&mut self, column: &str, n: i64) {
        let slot = match column {
            "valid" => &mut self.valid,
            "cost" => &mut self.cost,
            "revoked" => &mut self.revoked,
            "expired" => &mut self.expired,
            "account_inactive" => &mut self.account_inactive,
            "ip_not_allowed" => &mut self.ip_not_allowed,
            "scope_denied" => &mut self.scope_denied,
            "account_quota_exceeded" => &mut self.account_quota_exceeded,
            "usage_exceeded" => &mut self.usage_exceeded,
            "bad_jwt" => &mut self.bad_jwt,
            _ => return,
        };
        *slot += n;
    }

    /// The counters in `STAT_COLUMNS` order.
    pub fn counts(&self) -> [i64; 10] {
        [
            self.valid,
            self.cost,
            self.revoked,
            self.expired,
            self.account_inactive,
            self.ip_not_allowed,
            self.scope_denied,
            self.account_quota_exceeded,
            self.usage_exceeded,
            self.bad_jwt,
        ]
    }
}

/// Rows per multi-row statement: well under SQLite's 32766 bound parameters at 13 per row.
const CHUNK: usize = 256;
/// Ids per `IN (…)` read: above the meter's largest batch, so a batch reads (and locks) in one
/// statement per table.
const IN_CHUNK: usize = 1024;

const JWT_TAKE: &str =
    "INSERT INTO jwt_uses (token_id, jwt_id, uses, expires_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (token_id, jwt_id) DO UPDATE SET uses = jwt_uses.uses + excluded.uses \
     WHERE jwt_uses.uses + excluded.uses <= $5";
const STATS_INSERT: &str =
    "INSERT INTO token_stats_daily (token_id, day, account_id, valid, cost, \
     revoked, expired, account_inactive, ip_not_allowed, scope_denied, account_quota_exceeded, \
     usage_exceeded, bad_jwt)";
const STATS_ON_CONFLICT: &str = "ON CONFLICT (token_id, day) DO UPDATE SET \
     valid = token_stats_daily.valid + excluded.valid, \
     cost = token_stats_daily.cost + excluded.cost, revoked = token_stats_daily.revoked + excluded.revoked, \
     expired = token_stats_daily.expired + excluded.expired, \
     account_inactive = token_stats_daily.account_inactive + excluded.account_inactive, \
     ip_not_allowed = token_stats_daily.ip_not_allowed + excluded.ip_not_allowed, \
     scope_denied = token_stats_daily.scope_denied + excluded.scope_denied, \
     account_quota_exceeded = token_stats_daily.account_quota_exceeded + excluded.account_quota_exceeded, \
     usage_exceeded = token_stats_daily.usage_exceeded + excluded.usage_exceeded, \
     bad_jwt = token_stats_daily.bad_jwt + excluded.bad_jwt";
/// Column types of the token rows of a multi-row UPDATE: PostgreSQL types a VALUES list by its
/// first row, so the parameters are cast there.
const TOKEN_TYPES: &[&str] = &[
    "text",
    "text",
    "bigint",
    "bigint",
    "text",
    "bigint",
    "timestamptz",
    "text",
    "text",
];
const ACCOUNT_TYPES: &[&str] = &["text", "bigint", "text"];

/// `$first, $first+1, …` for `n` parameters on PostgreSQL; plain `?` on SQLite, whose named
/// parameters cost a linear name lookup each, which multi-row statements turn quadratic.
fn placeholders(first: usize, n: usize, pg: bool) -> String {
    (first..first + n)
        .map(|i| if pg { format!("${i}") } else { "?".to_string() })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($1, $2), ($3, $4), …` (PostgreSQL, each cast to `types`) or `(?, ?), (?, ?), …` (SQLite):
/// `rows` rows of `cols` parameters.
fn values_rows(rows: usize, cols: usize, types: &[&str], pg: bool) -> String {
    (0..rows)
        .map(|r| {
            let cells: Vec<String> = (0..cols)
                .map(|c| {
                    let n = r * cols + c + 1;
                    match (pg, types.get(c)) {
                        (false, _) => "?".to_string(),
                        (true, Some(t)) => format!("CAST(${n} AS {t})"),
                        (true, None) => format!("${n}"),
                    }
                })
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which monthly archive a rolled counter goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Archive {
    Token,
    Account,
}

impl Archive {
    /// The insert, up to `VALUES`; rows are (id, period, calls).
    pub(super) fn insert(self) -> &'static str {
        match self {
            Archive::Token => "INSERT INTO token_monthly_usage (token_id, period, calls)",
            Archive::Account => "INSERT INTO account_monthly_usage (account_id, period, calls)",
        }
    }
}

fn sorted_unique(ids: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = ids.collect();
    v.sort();
    v.dedup();
    v
}

/// Whether the presented secret is the token's current one, or its previous one within the
/// regeneration grace period. JWTs (no hash) were checked by signature already.
fn secret_matches(t: &Token, r: &Consume) -> bool {
    use crate::domain::credential::hashes_match;
    let Some(h) = &r.secret_hash else {
        return true;
    };
    let in_grace = match (&t.prev_secret_hash, t.prev_secret_valid_until) {
        (Some(prev), Some(until)) => r.now < until && hashes_match(h, prev),
        _ => false,
    };
    hashes_match(h, &t.secret_hash) || in_grace
}

impl Store {
    /// Decides `reqs` in order, consumes the valid ones, and counts them and `denials` in the
    /// daily statistics, in one transaction: one durable commit for the whole batch and a handful
    /// of statements however many calls it holds. The tokens and accounts involved are read under
    /// a write lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: `FOR UPDATE`, accounts then tokens,
    /// each in id order, so daemons never deadlock), each call is decided by `verify::decide`
    /// against that state as the batch's earlier calls left it, and the new counters are written
    /// back with multi-row statements. A refused call spends nothing.
    pub async fn consume_batch(
        &self,
        reqs: &[Consume],
        denials: &[Denial],
    ) -> Result<Vec<Decided>> {
        let mut stats: HashMap<(String, String), StatRow> = HashMap::new();
        let mut count = |token: &str, account: &str, at: DateTime<Utc>, col: &str, n: i64| {
            let day = day_key(at);
            let row = stats
                .entry((token.to_string(), day.clone()))
                .or_insert_with(|| StatRow {
                    day,
                    token_id: token.to_string(),
                    account_id: account.to_string(),
                    ..StatRow::default()
                });
            row.add(col, n);
        };
        for d in denials {
            if let Some(col) = d.outcome.stat_column() {
                count(&d.token_id, &d.account_id, d.at, col, 1);
            }
        }
        let token_ids: Vec<String> = sorted_unique(reqs.iter().map(|r| r.token_id.clone()));
        let pg = matches!(&*self.backend, Backend::Postgres(_));
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            // Accounts first, then tokens, each locked in id order (one statement each: a batch
            // never holds more ids than IN_CHUNK), so concurrent batches never deadlock.
            let mut accounts: HashMap<String, Account> = HashMap::new();
            for chunk in token_ids.chunks(IN_CHUNK) {
                let q = format!(
                    "SELECT {ACCOUNT_COLS} FROM accounts WHERE id IN \
                     (SELECT account_id FROM tokens WHERE id IN ({})) ORDER BY id{}",
                    placeholders(1, chunk.len(), pg), p.for_update());
                let mut query = sqlx::query_as::<_, AccountRow>(sql(q)).persistent(false);
                for id in chunk {
                    query = query.bind(id);
                }
                for row in query.fetch_all(&mut *tx).await? {
                    let a = Account::try_from(row)?;
                    accounts.insert(a.id.clone(), a);
                }
            }
            let mut tokens: HashMap<String, Token> = HashMap::new();
            for chunk in token_ids.chunks(IN_CHUNK) {
                let q = format!("SELECT {TOKEN_COLS} FROM tokens WHERE id IN ({}) ORDER BY id{}",
                    placeholders(1, chunk.len(), pg), p.for_update());
                let mut query = sqlx::query_as::<_, TokenRow>(sql(q)).persistent(false);
                for id in chunk {
                    query = query.bind(id);
                }
                for row in query.fetch_all(&mut *tx).await? {
                    let t = Token::try_from(row)?;
                    tokens.insert(t.id.clone(), t);
                }
            }

            let mut dirty_tokens: Vec<String> = Vec::new();
            let mut dirty_accounts: Vec<String> = Vec::new();
            let mut archives: Vec<(Archive, String, String, i64)> = Vec::new();
            let mut out = Vec::with_capacity(reqs.len());
            for r in reqs {
                let period = month_key(r.now);
                let Some(t) = tokens.get(&r.token_id).filter(|t| secret_matches(t, r)) else {
                    out.push(Decided { outcome: Outcome::NotFound, token: None });
                    continue;
                };
                let account_id = t.account_id.clone();
                if !accounts.contains_key(&account_id) {
                    out.push(Decided { outcome: Outcome::NotFound, token: None });
                    continue;
                }
                // A new month: archive and restart the counters, apply the refill, before deciding.
                if let Some(t) = tokens.get_mut(&r.token_id) {
                    let (changed, archived) = t.roll_month(&period);
                    if changed {
                        dirty_tokens.push(t.id.clone());
                    }
                    archives.extend(archived.map(|(p, n)| (Archive::Token, t.id.clone(), p, n)));
                }
                if let Some(a) = accounts.get_mut(&account_id) {
                    let (changed, archived) = a.roll_month(&period);
                    if changed {
                        dirty_accounts.push(a.id.clone());
                    }
                    archives.extend(archived.map(|(p, n)| (Archive::Account, a.id.clone(), p, n)));
                }
                let (Some(t), Some(a)) = (tokens.get(&r.token_id), accounts.get(&account_id)) else {
                    continue;
                };
                let mut outcome = decide(t, &AccountState::of(a), &r.check, r.now);
                if let (Outcome::Valid, Some(j)) = (outcome, &r.jwt) {
                    // A JWT's own count lives in its own row, taken with a conditional upsert.
                    let took = r.check.cost <= j.limit
                        && sqlx::query(JWT_TAKE).bind(&r.token_id).bind(&j.jwt_id).bind(r.check.cost)
                            .bind(j.expires_at).bind(j.limit)
                            .execute(&mut *tx).await?.rows_affected() == 1;
                    if !took {
                        outcome = Outcome::UsageExceeded;
                    }
                }
                if outcome == Outcome::Valid {
                    let cost = r.check.cost;
                    if let Some(a) = accounts.get_mut(&account_id) {
                        let used = if a.quota_period.as_deref() == Some(period.as_str()) { a.quota_used } else { 0 };
                        a.quota_used = used + cost;
                        a.quota_period = Some(period.clone());
                        dirty_accounts.push(account_id.clone());
                    }
                    if let Some(t) = tokens.get_mut(&r.token_id) {
                        t.calls_month = t.calls_this_month(r.now) + cost;
                        t.calls_month_period = Some(period.clone());
                        t.calls_total += cost;
                        t.remaining = t.remaining.map(|x| x - cost);
                        if t.status == TokenStatus::Active && t.remaining.is_some_and(|x| x <= 0) {
                            t.status = TokenStatus::Exhausted;
                        }
                        t.last_used_at = Some(t.last_used_at.map_or(r.now, |l| l.max(r.now)));
                        if let Some(ip) = r.check.client_ip {
                            t.last_used_ip = Some(ip.to_string());
                        }
                        dirty_tokens.push(t.id.clone());
                    }
                    count(&r.token_id, &account_id, r.now, "valid", 1);
                    count(&r.token_id, &account_id, r.now, "cost", cost);
                } else if let Some(col) = outcome.stat_column() {
                    count(&r.token_id, &account_id, r.now, col, 1);
                }
                out.push(Decided { outcome, token: tokens.get(&r.token_id).cloned() });
            }

            // The writes, as (statement, arguments).
            let mut writes: Vec<(String, Vec<Arg>)> = Vec::new();
            let dirty_tokens = sorted_unique(dirty_tokens.into_iter());
            let changed: Vec<&Token> = dirty_tokens.iter().filter_map(|id| tokens.get(id)).collect();
            for chunk in changed.chunks(CHUNK) {
                let rows = values_rows(chunk.len(), 9, TOKEN_TYPES, pg);
                let q = format!(
                    "UPDATE tokens SET status = v.column2, remaining = v.column3, calls_month = v.column4, \
                     calls_month_period = v.column5, calls_total = v.column6, last_used_at = v.column7, \
                     last_used_ip = v.column8, refill_period = v.column9 \
                     FROM (VALUES {rows}) AS v WHERE tokens.id = v.column1");
                let mut args = Vec::with_capacity(chunk.len() * 9);
                for t in chunk {
                    args.extend([
                        Arg::Str(t.id.clone()),
                        Arg::Str(t.status.as_str().into()),
                        Arg::OptI64(t.remaining),
                        Arg::I64(t.calls_month),
                        Arg::OptStr(t.calls_month_period.clone()),
                        Arg::I64(t.calls_total),
                        Arg::OptTime(t.last_used_at),
                        Arg::OptStr(t.last_used_ip.clone()),
                        Arg::OptStr(t.refill_period.clone()),
                    ]);
                }
                writes.push((q, args));
            }
            let dirty_accounts = sorted_unique(dirty_accounts.into_iter());
            let changed: Vec<&Account> = dirty_accounts.iter().filter_map(|id| accounts.get(id)).collect();
            for chunk in changed.chunks(CHUNK) {
                let rows = values_rows(chunk.len(), 3, ACCOUNT_TYPES, pg);
                let q = format!(
                    "UPDATE accounts SET quota_used = v.column2, quota_period = v.column3 \
                     FROM (VALUES {rows}) AS v WHERE accounts.id = v.column1");
                let mut args = Vec::with_capacity(chunk.len() * 3);
                for a in chunk {
                    args.extend([Arg::Str(a.id.clone()), Arg::I64(a.quota_used), Arg::OptStr(a.quota_period.clone())]);
                }
                writes.push((q, args));
            }
            for kind in [Archive::Token, Archive::Account] {
                let rows: Vec<_> = archives.iter().filter(|a| a.0 == kind).collect();
                for chunk in rows.chunks(CHUNK) {
                    let q = format!("{} VALUES {} ON CONFLICT DO NOTHING",
                        kind.insert(), values_rows(chunk.len(), 3, &[], pg));
                    let args = chunk.iter().flat_map(|(_, id, p, n)| {
                        [Arg::Str(id.clone()), Arg::Str(p.clone()), Arg::I64(*n)]
                    }).collect();
                    writes.push((q, args));
                }
            }
            let stat_rows: Vec<&StatRow> = stats.values().collect();
            for chunk in stat_rows.chunks(CHUNK) {
                let rows = values_rows(chunk.len(), 13, &[], pg);
                let q = format!("{STATS_INSERT} VALUES {rows} {STATS_ON_CONFLICT}");
                let mut args = Vec::with_capacity(chunk.len() * 13);
                for s in chunk {
                    args.extend([Arg::Str(s.token_id.clone()), Arg::Str(s.day.clone()), Arg::Str(s.account_id.clone())]);
                    args.extend(s.counts().into_iter().map(Arg::I64));
                }
                writes.push((q, args));
            }
            if pg {
                for (q, args) in writes {
                    bind_args!(sqlx::query(sql(q)).persistent(false), args).execute(&mut *tx).await?;
                }
            } else if !writes.is_empty() {
                // SQLite runs a multi-statement string in one call, binding the anonymous `?`
                // parameters across its statements in order: one hand-off to its worker thread
                // for all the writes.
                let (qs, args): (Vec<String>, Vec<Vec<Arg>>) = writes.into_iter().unzip();
                let q = qs.join(";\n");
                bind_args!(sqlx::query(sql(q)).persistent(false), args.into_iter().flatten())
                    .execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok::<_, StoreError>(out)
        })
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
        let mut q = format!(
            "SELECT day, token_id, account_id, {} FROM token_stats_daily WHERE day >= $1 AND day <= $2",
            STAT_COLUMNS.join(", ")
        );
        if let Some(a) = account {
            args.push(Arg::Str(a.to_string()));
            q.push_str(" AND account_id = $3");
        }
        q.push_str(" ORDER BY day, token_id");
        let rows = with_pool!(self, p => {
            bind_args!(sqlx::query_as::<_, StatRow>(sql(q)), args).fetch_all(p).await?
        });
        Ok(rows)
    }
}
