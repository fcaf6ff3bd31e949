//! Usage: consuming verified calls in batches (one transaction, one durable commit, for many
//! requests), per-day statistics, and JWT use records.

use super::model::{Account, Token};
use super::rows::{AccountRow, TokenRow, ACCOUNT_COLS, TOKEN_COLS};
use super::{sql, Arg, Backend, Result, Store, StoreError};
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

/// A JWT's use count after a batch.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct JwtCount {
    pub token_id: String,
    pub jwt_id: String,
    pub uses: i64,
    pub expires_at: DateTime<Utc>,
}

/// The state a batch is decided against, read under the write lock.
#[derive(Debug, Default)]
pub(super) struct BatchState {
    /// The batch's tokens, by id (an unknown id is absent).
    pub tokens: HashMap<String, Token>,
    /// Their accounts, by id.
    pub accounts: HashMap<String, Account>,
    /// Uses recorded so far for the batch's JWTs, by (token id, JWT id); absent means none.
    pub jwt_uses: HashMap<(String, String), i64>,
}

/// What a batch decided and what it must write: everything in memory, so each driver only
/// reads the state and writes the plan, within one transaction.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// One decision per call, in order.
    pub decided: Vec<Decided>,
    /// Tokens whose counters, status or refill changed, in id order.
    pub tokens: Vec<Token>,
    /// Accounts whose quota counter changed, in id order.
    pub accounts: Vec<Account>,
    /// Last months' counters to archive: (kind, id, period, calls).
    pub archives: Vec<(Archive, String, String, i64)>,
    /// Statistics to add, one row per (token, day).
    pub stats: Vec<StatRow>,
    /// JWT use counts to store.
    pub jwt_uses: Vec<JwtCount>,
}

/// The ids of the tokens a batch touches, sorted and unique (the lock order).
pub(super) fn batch_token_ids(reqs: &[Consume]) -> Vec<String> {
    let mut v: Vec<String> = reqs.iter().map(|r| r.token_id.clone()).collect();
    v.sort();
    v.dedup();
    v
}

/// The (token, JWT) pairs a batch uses, sorted and unique.
pub(super) fn batch_jwt_keys(reqs: &[Consume]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = reqs
        .iter()
        .filter_map(|r| {
            r.jwt
                .as_ref()
                .map(|j| (r.token_id.clone(), j.jwt_id.clone()))
        })
        .collect();
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

/// Decides `reqs` in order against `state` as the batch's earlier calls leave it, and collects
/// the writes: consumed uses and quota, rolled months, statistics (with `denials`) and JWT
/// counts. A refused call spends nothing. Pure: no I/O, so both drivers share it.
pub(super) fn plan(reqs: &[Consume], denials: &[Denial], state: BatchState) -> Plan {
    let BatchState {
        mut tokens,
        mut accounts,
        mut jwt_uses,
    } = state;
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
    let mut dirty_tokens: Vec<String> = Vec::new();
    let mut dirty_accounts: Vec<String> = Vec::new();
    let mut dirty_jwts: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    let mut archives = Vec::new();
    let mut decided = Vec::with_capacity(reqs.len());
    for r in reqs {
        let period = month_key(r.now);
        let known = tokens
            .get(&r.token_id)
            .filter(|t| secret_matches(t, r))
            .map(|t| t.account_id.clone())
            .filter(|a| accounts.contains_key(a));
        let (Some(account_id), Some(t), Some(a)) = (
            known.clone(),
            tokens.get_mut(&r.token_id),
            known.and_then(|a| accounts.get_mut(&a)),
        ) else {
            decided.push(Decided {
                outcome: Outcome::NotFound,
                token: None,
            });
            continue;
        };
        // A new month: archive and restart the counters, apply the refill, before deciding.
        let (changed, archived) = t.roll_month(&period);
        if changed {
            dirty_tokens.push(t.id.clone());
        }
        archives.extend(archived.map(|(p, n)| (Archive::Token, t.id.clone(), p, n)));
        let (changed, archived) = a.roll_month(&period);
        if changed {
            dirty_accounts.push(a.id.clone());
        }
        archives.extend(archived.map(|(p, n)| (Archive::Account, a.id.clone(), p, n)));

        let mut outcome = decide(t, &AccountState::of(a), &r.check, r.now);
        if let (Outcome::Valid, Some(j)) = (outcome, &r.jwt) {
            // The JWT's own count: its signer's row is locked, so this read-decide-write holds.
            let key = (r.token_id.clone(), j.jwt_id.clone());
            let used = jwt_uses.get(&key).copied().unwrap_or(0);
            if used + r.check.cost <= j.limit {
                jwt_uses.insert(key.clone(), used + r.check.cost);
                dirty_jwts.insert(key, j.expires_at);
            } else {
                outcome = Outcome::UsageExceeded;
            }
        }
        if outcome == Outcome::Valid {
            let cost = r.check.cost;
            a.quota_used = AccountState::of(a).used_this_month(r.now) + cost;
            a.quota_period = Some(period.clone());
            dirty_accounts.push(account_id.clone());
            t.calls_month = t.calls_this_month(r.now) + cost;
            t.calls_month_period = Some(period);
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
            count(&r.token_id, &account_id, r.now, "valid", 1);
            count(&r.token_id, &account_id, r.now, "cost", cost);
        } else if let Some(col) = outcome.stat_column() {
            count(&r.token_id, &account_id, r.now, col, 1);
        }
        decided.push(Decided {
            outcome,
            token: Some(t.clone()),
        });
    }
    dirty_tokens.sort();
    dirty_tokens.dedup();
    dirty_accounts.sort();
    dirty_accounts.dedup();
    let mut jwts: Vec<JwtCount> = dirty_jwts
        .into_iter()
        .map(|((token_id, jwt_id), expires_at)| JwtCount {
            uses: jwt_uses[&(token_id.clone(), jwt_id.clone())],
            token_id,
            jwt_id,
            expires_at,
        })
        .collect();
    jwts.sort_by(|a, b| (&a.token_id, &a.jwt_id).cmp(&(&b.token_id, &b.jwt_id)));
    let mut stats: Vec<StatRow> = stats.into_values().collect();
    stats.sort_by(|a, b| (&a.token_id, &a.day).cmp(&(&b.token_id, &b.day)));
    Plan {
        decided,
        tokens: dirty_tokens
            .iter()
            .filter_map(|id| tokens.remove(id))
            .collect(),
        accounts: dirty_accounts
            .iter()
            .filter_map(|id| accounts.remove(id))
            .collect(),
        archives,
        stats,
        jwt_uses: jwts,
    }
}

/// The PostgreSQL batch: lock and read (accounts, then tokens, each in id order, so daemons
/// sharing the database never deadlock), decide in memory, then every write in one statement of
/// data-modifying CTEs over arrays. Prepared once per connection, so a batch of any size is five
/// round trips (BEGIN, two locking reads, the write, COMMIT) with no planning.
const PG_JWT_USES: &str = "SELECT j.token_id, j.jwt_id, j.uses FROM jwt_uses j \
     JOIN unnest($1::text[], $2::text[]) AS k(token_id, jwt_id) \
     ON j.token_id = k.token_id AND j.jwt_id = k.jwt_id";
const PG_WRITE: &str = "WITH \
 t AS (UPDATE tokens SET status = v.status, remaining = v.remaining, calls_month = v.calls_month, \
       calls_month_period = v.calls_month_period, calls_total = v.calls_total, \
       last_used_at = v.last_used_at, last_used_ip = v.last_used_ip, refill_period = v.refill_period \
       FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::int8[], \
                   $7::timestamptz[], $8::text[], $9::text[]) \
            AS v(id, status, remaining, calls_month, calls_month_period, calls_total, last_used_at, \
                 last_used_ip, refill_period) \
       WHERE tokens.id = v.id RETURNING 1), \
 a AS (UPDATE accounts SET quota_used = v.quota_used, quota_period = v.quota_period \
       FROM unnest($10::text[], $11::int8[], $12::text[]) AS v(id, quota_used, quota_period) \
       WHERE accounts.id = v.id RETURNING 1), \
 ta AS (INSERT INTO token_monthly_usage (token_id, period, calls) \
        SELECT * FROM unnest($13::text[], $14::text[], $15::int8[]) ON CONFLICT DO NOTHING RETURNING 1), \
 aa AS (INSERT INTO account_monthly_usage (account_id, period, calls) \
        SELECT * FROM unnest($16::text[], $17::text[], $18::int8[]) ON CONFLICT DO NOTHING RETURNING 1), \
 s AS (INSERT INTO token_stats_daily (token_id, day, account_id, valid, cost, revoked, expired, \
       account_inactive, ip_not_allowed, scope_denied, account_quota_exceeded, usage_exceeded, bad_jwt) \
       SELECT * FROM unnest($19::text[], $20::text[], $21::text[], $22::int8[], $23::int8[], \
            $24::int8[], $25::int8[], $26::int8[], $27::int8[], $28::int8[], $29::int8[], \
            $30::int8[], $31::int8[]) \
       ON CONFLICT (token_id, day) DO UPDATE SET \
       valid = token_stats_daily.valid + excluded.valid, cost = token_stats_daily.cost + excluded.cost, \
       revoked = token_stats_daily.revoked + excluded.revoked, \
       expired = token_stats_daily.expired + excluded.expired, \
       account_inactive = token_stats_daily.account_inactive + excluded.account_inactive, \
       ip_not_allowed = token_stats_daily.ip_not_allowed + excluded.ip_not_allowed, \
       scope_denied = token_stats_daily.scope_denied + excluded.scope_denied, \
       account_quota_exceeded = token_stats_daily.account_quota_exceeded + excluded.account_quota_exceeded, \
       usage_exceeded = token_stats_daily.usage_exceeded + excluded.usage_exceeded, \
       bad_jwt = token_stats_daily.bad_jwt + excluded.bad_jwt RETURNING 1), \
 j AS (INSERT INTO jwt_uses (token_id, jwt_id, uses, expires_at) \
       SELECT * FROM unnest($32::text[], $33::text[], $34::int8[], $35::timestamptz[]) \
       ON CONFLICT (token_id, jwt_id) DO UPDATE SET uses = excluded.uses RETURNING 1) \
 SELECT 1";

impl Store {
    /// Decides `reqs` in order, consumes the valid ones, and counts them and `denials` in the
    /// daily statistics, in one PostgreSQL transaction: one durable commit for the whole batch.
    /// (SQLite batches run on the meter's own connection: `usage_sqlite::UsageConn`.)
    pub async fn consume_batch(
        &self,
        reqs: &[Consume],
        denials: &[Denial],
    ) -> Result<Vec<Decided>> {
        let Backend::Postgres(p) = &*self.backend else {
            return Err(StoreError::Other(
                "SQLite batches run on the meter's own connection".into(),
            ));
        };
        let ids = batch_token_ids(reqs);
        let jwt_keys = batch_jwt_keys(reqs);
        let mut tx = p.begin().await?;
        let mut state = BatchState::default();
        let q = format!(
            "SELECT {ACCOUNT_COLS} FROM accounts \
             WHERE id IN (SELECT account_id FROM tokens WHERE id = ANY($1)) ORDER BY id FOR UPDATE"
        );
        for row in sqlx::query_as::<_, AccountRow>(sql(q))
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
        {
            let a = Account::try_from(row)?;
            state.accounts.insert(a.id.clone(), a);
        }
        let q =
            format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ANY($1) ORDER BY id FOR UPDATE");
        for row in sqlx::query_as::<_, TokenRow>(sql(q))
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
        {
            let t = Token::try_from(row)?;
            state.tokens.insert(t.id.clone(), t);
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
        let Plan {
            decided,
            tokens,
            accounts,
            archives,
            stats,
            jwt_uses,
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
        sqlx::query(PG_WRITE)
            .bind(tokens.iter().map(|t| t.id.clone()).collect::<Vec<_>>())
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
                    .map(|t| t.calls_month_period.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(tokens.iter().map(|t| t.calls_total).collect::<Vec<_>>())
            .bind(tokens.iter().map(|t| t.last_used_at).collect::<Vec<_>>())
            .bind(
                tokens
                    .iter()
                    .map(|t| t.last_used_ip.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                tokens
                    .iter()
                    .map(|t| t.refill_period.clone())
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
            .bind(jwt_uses.iter().map(|j| j.expires_at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(decided)
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
