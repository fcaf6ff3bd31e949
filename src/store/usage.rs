//! Usage: consuming verified calls in batches (one transaction, one durable commit, for many
//! requests), per-day statistics, and JWT use records.

use super::{sql, Arg, Backend, Result, Store, StoreError, WritePool};
use crate::domain::period::month_key;
use crate::verify::Outcome;
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::HashMap;

/// One verified call to consume.
#[derive(Debug, Clone)]
pub struct Consume {
    /// The token.
    pub token_id: String,
    /// Its account (for the monthly quota).
    pub account_id: String,
    /// Uses to consume.
    pub cost: i64,
    /// The end client's IP, recorded as last used IP.
    pub ip: Option<String>,
    /// The instant of the check; the token must still be unexpired at it.
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

/// What consuming one call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// Consumed; the token's counters after it.
    Ok {
        /// Uses left (`None` = unlimited).
        remaining: Option<i64>,
        /// Uses this month, this call included.
        calls_this_month: i64,
    },
    /// Refused at the moment of consumption (a concurrent call took the last use, the quota
    /// filled up, or the token was revoked in between).
    Denied(Outcome),
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

fn day_key(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

const ACCOUNT_TAKE: &str = "UPDATE accounts SET \
     quota_used = (CASE WHEN quota_period = $2 THEN quota_used ELSE 0 END) + $3, quota_period = $2 \
     WHERE id = $1 AND status = 'active' AND (monthly_quota IS NULL OR \
     (CASE WHEN quota_period = $2 THEN quota_used ELSE 0 END) + $3 <= monthly_quota)";
const ACCOUNT_GIVE_BACK: &str = "UPDATE accounts SET quota_used = quota_used - $2 WHERE id = $1";
const JWT_TAKE: &str =
    "INSERT INTO jwt_uses (token_id, jwt_id, uses, expires_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (token_id, jwt_id) DO UPDATE SET uses = jwt_uses.uses + excluded.uses \
     WHERE jwt_uses.uses + excluded.uses <= $5";
const JWT_GIVE_BACK: &str =
    "UPDATE jwt_uses SET uses = uses - $3 WHERE token_id = $1 AND jwt_id = $2";
// SET expressions read the row as it was before the update, on both backends.
const TOKEN_TAKE: &str = "UPDATE tokens SET \
     remaining = CASE WHEN remaining IS NULL THEN NULL ELSE remaining - $2 END, \
     calls_month = (CASE WHEN calls_month_period = $3 THEN calls_month ELSE 0 END) + $2, \
     calls_month_period = $3, calls_total = calls_total + $2, last_used_at = $4, \
     last_used_ip = COALESCE($5, last_used_ip), \
     status = CASE WHEN remaining IS NOT NULL AND remaining - $2 <= 0 THEN 'exhausted' ELSE status END \
     WHERE id = $1 AND status <> 'revoked' AND (expires_at IS NULL OR expires_at > $4) \
     AND (remaining IS NULL OR remaining >= $2) \
     RETURNING remaining, calls_month";
const STATS_UPSERT: &str = "INSERT INTO token_stats_daily (token_id, day, account_id, valid, cost, \
     revoked, expired, account_inactive, ip_not_allowed, scope_denied, account_quota_exceeded, \
     usage_exceeded, bad_jwt) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
     ON CONFLICT (token_id, day) DO UPDATE SET valid = token_stats_daily.valid + excluded.valid, \
     cost = token_stats_daily.cost + excluded.cost, revoked = token_stats_daily.revoked + excluded.revoked, \
     expired = token_stats_daily.expired + excluded.expired, \
     account_inactive = token_stats_daily.account_inactive + excluded.account_inactive, \
     ip_not_allowed = token_stats_daily.ip_not_allowed + excluded.ip_not_allowed, \
     scope_denied = token_stats_daily.scope_denied + excluded.scope_denied, \
     account_quota_exceeded = token_stats_daily.account_quota_exceeded + excluded.account_quota_exceeded, \
     usage_exceeded = token_stats_daily.usage_exceeded + excluded.usage_exceeded, \
     bad_jwt = token_stats_daily.bad_jwt + excluded.bad_jwt";

impl Store {
    /// Consumes `reqs` in order and counts them and `denials` in the daily statistics, all in
    /// one transaction: one durable commit for the whole batch. Each call takes the account's
    /// quota, then the JWT's own count, then the token's uses; a step that fails gives back the
    /// earlier ones, so a refused call spends nothing.
    pub async fn consume_batch(
        &self,
        reqs: &[Consume],
        denials: &[Denial],
    ) -> Result<Vec<Consumed>> {
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
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let mut out = Vec::with_capacity(reqs.len());
            for r in reqs {
                let period = month_key(r.now);
                let took = sqlx::query(ACCOUNT_TAKE).bind(&r.account_id).bind(&period).bind(r.cost)
                    .execute(&mut *tx).await?.rows_affected() == 1;
                if !took {
                    out.push(Consumed::Denied(Outcome::AccountQuotaExceeded));
                    count(&r.token_id, &r.account_id, r.now, "account_quota_exceeded", 1);
                    continue;
                }
                if let Some(j) = &r.jwt {
                    let ok = r.cost <= j.limit
                        && sqlx::query(JWT_TAKE).bind(&r.token_id).bind(&j.jwt_id).bind(r.cost)
                            .bind(j.expires_at).bind(j.limit)
                            .execute(&mut *tx).await?.rows_affected() == 1;
                    if !ok {
                        sqlx::query(ACCOUNT_GIVE_BACK).bind(&r.account_id).bind(r.cost).execute(&mut *tx).await?;
                        out.push(Consumed::Denied(Outcome::UsageExceeded));
                        count(&r.token_id, &r.account_id, r.now, "usage_exceeded", 1);
                        continue;
                    }
                }
                let row: Option<(Option<i64>, i64)> = sqlx::query_as(TOKEN_TAKE)
                    .bind(&r.token_id).bind(r.cost).bind(&period).bind(r.now).bind(&r.ip)
                    .fetch_optional(&mut *tx).await?;
                match row {
                    Some((remaining, calls_this_month)) => {
                        out.push(Consumed::Ok { remaining, calls_this_month });
                        count(&r.token_id, &r.account_id, r.now, "valid", 1);
                        count(&r.token_id, &r.account_id, r.now, "cost", r.cost);
                    }
                    None => {
                        sqlx::query(ACCOUNT_GIVE_BACK).bind(&r.account_id).bind(r.cost).execute(&mut *tx).await?;
                        if let Some(j) = &r.jwt {
                            sqlx::query(JWT_GIVE_BACK).bind(&r.token_id).bind(&j.jwt_id).bind(r.cost).execute(&mut *tx).await?;
                        }
                        out.push(Consumed::Denied(Outcome::UsageExceeded));
                        count(&r.token_id, &r.account_id, r.now, "usage_exceeded", 1);
                    }
                }
            }
            for s in stats.values() {
                let mut q = sqlx::query(STATS_UPSERT).bind(&s.token_id).bind(&s.day).bind(&s.account_id);
                for n in s.counts() {
                    q = q.bind(n);
                }
                q.execute(&mut *tx).await?;
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
