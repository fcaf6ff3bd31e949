//! Raw rows as both backends return them, and their conversion into typed records.

use super::StoreError;
use crate::domain::model::{Account, DayCounts, Token, User, STAT_COUNTERS};
use crate::domain::period::Month;
use crate::domain::plan::StatRow;
use crate::domain::rate::RateLimit;
use crate::domain::state::{Hash, PreviousSecret, Rules, TokenState};
use crate::domain::{net, scope::Scope};
use chrono::{DateTime, Utc};
use ipnet::IpNet;

pub(super) const ACCOUNT_COLS: &str = "id, name, status, max_tokens, monthly_quota, quota_used, \
     quota_period, created_at, updated_at, rate_limit, api_key, secret_calls";

pub(super) const USER_COLS: &str =
    "id, account_id, email, role, notify_expiry, status, created_at, updated_at, deleted_at";

pub(super) const TOKEN_COLS: &str = "id, account_id, user_id, issued_by, policy_name, \
     policy_period, name, description, role, scopes, allowed_ips, usage_limit, remaining, \
     refill_monthly, refill_period, expires_at, status, jwt_enabled, sealed_secret, secret_hash, \
     prev_secret_hash, prev_secret_valid_until, calls_month, calls_month_period, calls_total, \
     last_used_at, last_used_ip, created_at, updated_at, revoked_at, stats_day, day_valid, \
     day_cost, day_revoked, day_expired, day_account_inactive, day_ip_not_allowed, \
     day_scope_denied, day_account_quota_exceeded, day_usage_exceeded, day_bad_jwt, \
     day_user_inactive, user_role, user_active, rate_limit, kind";

/// The columns of a token's state (`StateRow`): what verification reads and changes.
pub(crate) const STATE_COLS: &str = "id, account_id, role, scopes, allowed_ips, remaining, \
     refill_monthly, refill_period, expires_at, status, secret_hash, prev_secret_hash, \
     prev_secret_valid_until, calls_month, calls_month_period, calls_total, last_used_at, \
     last_used_ip, stats_day, day_valid, day_cost, day_revoked, day_expired, \
     day_account_inactive, day_ip_not_allowed, day_scope_denied, day_account_quota_exceeded, \
     day_usage_exceeded, day_bad_jwt, day_user_inactive, user_role, user_active, rate_limit";

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("stored {what} is unreadable: {e}"))
}

#[derive(sqlx::FromRow)]
pub(super) struct AccountRow {
    id: String,
    name: String,
    status: String,
    max_tokens: i64,
    monthly_quota: Option<i64>,
    quota_used: i64,
    quota_period: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    rate_limit: Option<String>,
    api_key: Option<String>,
    secret_calls: Option<bool>,
}

impl TryFrom<AccountRow> for Account {
    type Error = StoreError;
    fn try_from(r: AccountRow) -> Result<Self, StoreError> {
        Ok(Account {
            status: r.status.parse().map_err(|e| corrupt("account status", e))?,
            id: r.id,
            name: r.name,
            max_tokens: r.max_tokens,
            monthly_quota: r.monthly_quota,
            quota_used: r.quota_used,
            quota_period: r.quota_period,
            rate_limit: rate_limit("account", r.rate_limit.as_deref())?,
            api_key: r.api_key.unwrap_or_default(),
            secret_calls: r.secret_calls,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A token row with its account's columns (`a_id`, `a_name`, …, in `ACCOUNT_COLS` order): the
/// PostgreSQL usage batch locks and reads both in one statement.
#[derive(sqlx::FromRow)]
pub(super) struct TokenAccountRow {
    #[sqlx(flatten)]
    token: StateRow,
    a_id: String,
    a_name: String,
    a_status: String,
    a_max_tokens: i64,
    a_monthly_quota: Option<i64>,
    a_quota_used: i64,
    a_quota_period: Option<String>,
    a_created_at: DateTime<Utc>,
    a_updated_at: DateTime<Utc>,
    a_rate_limit: Option<String>,
    a_api_key: Option<String>,
    a_secret_calls: Option<bool>,
}

impl TokenAccountRow {
    /// The token's row and its account's.
    pub fn into_parts(self) -> (StateRow, AccountRow) {
        let account = AccountRow {
            id: self.a_id,
            name: self.a_name,
            status: self.a_status,
            max_tokens: self.a_max_tokens,
            monthly_quota: self.a_monthly_quota,
            quota_used: self.a_quota_used,
            quota_period: self.a_quota_period,
            created_at: self.a_created_at,
            updated_at: self.a_updated_at,
            rate_limit: self.a_rate_limit,
            api_key: self.a_api_key,
            secret_calls: self.a_secret_calls,
        };
        (self.token, account)
    }
}

/// A `TokenAccountRow` with each row's version (`xmin`), read without a lock.
#[derive(sqlx::FromRow)]
pub(super) struct VersionedRow {
    #[sqlx(flatten)]
    pub rows: TokenAccountRow,
    pub t_version: String,
    pub a_version: String,
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    id: String,
    account_id: String,
    email: String,
    role: String,
    notify_expiry: bool,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;
    fn try_from(r: UserRow) -> Result<Self, StoreError> {
        Ok(User {
            role: r.role.parse().map_err(|e| corrupt("user role", e))?,
            status: r.status.parse().map_err(|e| corrupt("user status", e))?,
            deleted_at: r.deleted_at,
            id: r.id,
            account_id: r.account_id,
            email: r.email,
            notify_expiry: r.notify_expiry,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A whole token row: its state's columns and the record's others.
#[derive(sqlx::FromRow)]
pub(super) struct TokenRow {
    #[sqlx(flatten)]
    state: StateRow,
    user_id: Option<String>,
    issued_by: String,
    policy_name: Option<String>,
    policy_period: Option<String>,
    name: String,
    description: Option<String>,
    usage_limit: Option<i64>,
    jwt_enabled: bool,
    sealed_secret: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
    kind: String,
}

impl TryFrom<TokenRow> for Token {
    type Error = StoreError;
    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        let today = DayCounts {
            day: stats_day(r.state.stats_day.as_deref())?,
            counts: r.state.day_counts(),
        };
        let s = r.state;
        Ok(Token {
            role: s.role.parse().map_err(|e| corrupt("token role", e))?,
            user_role: user_role(s.user_role.as_deref())?,
            user_active: s.user_active,
            status: s.status.parse().map_err(|e| corrupt("token status", e))?,
            account_key: match r.kind.as_str() {
                "token" => false,
                "account" => true,
                k => return Err(corrupt("token kind", k)),
            },
            scopes: parse_scopes(&s.scopes)?,
            allowed_ips: parse_allowed_ips(&s.allowed_ips)?,
            rate_limit: rate_limit("token", s.rate_limit.as_deref())?,
            id: s.id,
            account_id: s.account_id,
            user_id: r.user_id,
            issued_by: r.issued_by,
            policy_name: r.policy_name,
            policy_period: r.policy_period,
            name: r.name,
            description: r.description,
            usage_limit: r.usage_limit,
            remaining: s.remaining,
            refill_monthly: s.refill_monthly,
            refill_period: s.refill_period,
            expires_at: s.expires_at,
            jwt_enabled: r.jwt_enabled,
            sealed_secret: r.sealed_secret,
            secret_hash: s.secret_hash,
            prev_secret_hash: s.prev_secret_hash,
            prev_secret_valid_until: s.prev_secret_valid_until,
            calls_month: s.calls_month,
            calls_month_period: s.calls_month_period,
            calls_total: s.calls_total,
            last_used_at: s.last_used_at,
            last_used_ip: s.last_used_ip,
            created_at: r.created_at,
            updated_at: r.updated_at,
            revoked_at: r.revoked_at,
            today,
        })
    }
}

/// A token's state as stored, in `STATE_COLS` order (also built by the SQLite usage
/// connection from its own rows).
#[derive(sqlx::FromRow)]
pub(crate) struct StateRow {
    pub id: String,
    pub account_id: String,
    pub role: String,
    pub scopes: String,
    pub allowed_ips: String,
    pub remaining: Option<i64>,
    pub refill_monthly: Option<i64>,
    pub refill_period: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub status: String,
    pub secret_hash: Vec<u8>,
    pub prev_secret_hash: Option<Vec<u8>>,
    pub prev_secret_valid_until: Option<DateTime<Utc>>,
    pub calls_month: i64,
    pub calls_month_period: Option<String>,
    pub calls_total: i64,
    pub last_used_at: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
    pub stats_day: Option<String>,
    pub day_valid: i64,
    pub day_cost: i64,
    pub day_revoked: i64,
    pub day_expired: i64,
    pub day_account_inactive: i64,
    pub day_ip_not_allowed: i64,
    pub day_scope_denied: i64,
    pub day_account_quota_exceeded: i64,
    pub day_usage_exceeded: i64,
    pub day_bad_jwt: i64,
    pub day_user_inactive: i64,
    pub user_role: Option<String>,
    pub user_active: bool,
    pub rate_limit: Option<String>,
}

impl StateRow {
    /// The `day_*` counters, in `plan::STAT_COLUMNS` order.
    fn day_counts(&self) -> [i64; STAT_COUNTERS] {
        [
            self.day_valid,
            self.day_cost,
            self.day_revoked,
            self.day_expired,
            self.day_account_inactive,
            self.day_ip_not_allowed,
            self.day_scope_denied,
            self.day_account_quota_exceeded,
            self.day_usage_exceeded,
            self.day_bad_jwt,
            self.day_user_inactive,
        ]
    }
}

/// A token's `stats_day`, `YYYY-MM-DD`.
fn stats_day(d: Option<&str>) -> Result<Option<chrono::NaiveDate>, StoreError> {
    d.map(|d| {
        chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
            .map_err(|e| corrupt("token stats_day", format!("{d:?}: {e}")))
    })
    .transpose()
}

/// A token's `user_role`: its user's current role, `None` for a token issued for no user.
fn user_role(r: Option<&str>) -> Result<Option<crate::domain::role::Role>, StoreError> {
    r.map(|r| r.parse().map_err(|e| corrupt("token user_role", e)))
        .transpose()
}

/// A `rate_limit` column (`limit/window_seconds`). One that does not read is a corrupt row, not
/// "no limit".
pub(crate) fn rate_limit(of: &str, s: Option<&str>) -> Result<Option<RateLimit>, StoreError> {
    s.map(|s| {
        RateLimit::from_column(s)
            .ok_or_else(|| corrupt(&format!("{of} rate_limit"), format!("{s:?}")))
    })
    .transpose()
}

fn hash(what: &str, h: &[u8]) -> Result<Hash, StoreError> {
    Hash::try_from(h).map_err(|_| corrupt(what, format!("{} bytes, not 32", h.len())))
}

fn month(what: &str, p: Option<&str>) -> Result<Option<Month>, StoreError> {
    p.map(|p| Month::parse(p).ok_or_else(|| corrupt(what, format!("{p:?} is not YYYY-MM"))))
        .transpose()
}

impl TryFrom<StateRow> for TokenState {
    type Error = StoreError;
    fn try_from(r: StateRow) -> Result<Self, StoreError> {
        let counts = r.day_counts();
        let day = stats_day(r.stats_day.as_deref())?;
        let today = (day.is_some() || counts != [0; STAT_COUNTERS])
            .then(|| Box::new(DayCounts { day, counts }));
        let previous = match (r.prev_secret_hash, r.prev_secret_valid_until) {
            (Some(h), Some(valid_until)) => Some(Box::new(PreviousSecret {
                hash: hash("token prev_secret_hash", &h)?,
                valid_until,
            })),
            _ => None,
        };
        Ok(TokenState {
            id: r.id.as_str().into(),
            account_id: r.account_id.into(),
            secret_hash: hash("token secret_hash", &r.secret_hash)?,
            previous,
            rules: Rules::boxed(
                parse_scopes(&r.scopes)?,
                parse_allowed_ips(&r.allowed_ips)?,
                rate_limit("token", r.rate_limit.as_deref())?,
            ),
            today,
            remaining: r.remaining,
            refill_monthly: r.refill_monthly,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            calls_month: r.calls_month,
            calls_total: r.calls_total,
            last_used_ip: r
                .last_used_ip
                .map(|ip| ip.parse().map_err(|e| corrupt("token last_used_ip", e)))
                .transpose()?,
            calls_month_period: month("token calls_month_period", r.calls_month_period.as_deref())?,
            refill_period: month("token refill_period", r.refill_period.as_deref())?,
            role: r.role.parse().map_err(|e| corrupt("token role", e))?,
            user_role: user_role(r.user_role.as_deref())?,
            user_active: r.user_active,
            status: r.status.parse().map_err(|e| corrupt("token status", e))?,
        })
    }
}

/// Encodes a list column.
pub(super) fn json_list<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(T::to_string).collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".into())
}

/// A token's `scopes` column, parsed once as the row is read. One that does not parse is a
/// corrupt row, not a scope to skip: skipping could leave a token with no scopes, which allows
/// every call.
pub(super) fn parse_scopes(json: &str) -> Result<Vec<Scope>, StoreError> {
    let items: Vec<String> = serde_json::from_str(json).map_err(|e| corrupt("token scopes", e))?;
    items
        .iter()
        .map(|s| Scope::parse(s, "scopes").map_err(|e| corrupt("token scopes", e)))
        .collect()
}

/// A token's `allowed_ips` column, parsed once as the row is read: CIDR form, or a bare address
/// (a policy token stored before policies were normalised).
pub(super) fn parse_allowed_ips(json: &str) -> Result<Vec<IpNet>, StoreError> {
    let items: Vec<String> =
        serde_json::from_str(json).map_err(|e| corrupt("token allowed_ips", e))?;
    items
        .iter()
        .map(|r| {
            r.parse::<IpNet>()
                .or_else(|_| net::parse_rule(r, "allowed_ips"))
                .map_err(|e| corrupt("token allowed_ips", e))
        })
        .collect()
}

/// One row of the daily statistics as a query returns it.
#[derive(sqlx::FromRow)]
pub(super) struct StatRecord {
    day: String,
    token_id: String,
    account_id: String,
    valid: i64,
    cost: i64,
    revoked: i64,
    expired: i64,
    account_inactive: i64,
    ip_not_allowed: i64,
    scope_denied: i64,
    account_quota_exceeded: i64,
    usage_exceeded: i64,
    bad_jwt: i64,
    user_inactive: i64,
}

impl From<StatRecord> for StatRow {
    fn from(r: StatRecord) -> Self {
        StatRow {
            day: r.day,
            token_id: r.token_id,
            account_id: r.account_id,
            valid: r.valid,
            cost: r.cost,
            revoked: r.revoked,
            expired: r.expired,
            account_inactive: r.account_inactive,
            ip_not_allowed: r.ip_not_allowed,
            scope_denied: r.scope_denied,
            account_quota_exceeded: r.account_quota_exceeded,
            usage_exceeded: r.usage_exceeded,
            bad_jwt: r.bad_jwt,
            user_inactive: r.user_inactive,
        }
    }
}
