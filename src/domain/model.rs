//! The records of the token domain as the store holds them: accounts, users and tokens, with
//! the rules that read them (status at an instant, IP and scope checks, the month roll). Scopes
//! and IP rules are parsed when a row is read, so a check compares parsed values.

use super::{
    rate::RateLimit,
    role::Role,
    scope::Scope,
    status::{AccountStatus, TokenStatus, UserStatus},
};
use chrono::{DateTime, Utc};
use ipnet::IpNet;

/// A customer account.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// Public id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Active or inactive.
    pub status: AccountStatus,
    /// Active tokens allowed.
    pub max_tokens: i64,
    /// Calls per calendar month over all tokens, if limited.
    pub monthly_quota: Option<i64>,
    /// Calls counted in `quota_period`.
    pub quota_used: i64,
    /// The `YYYY-MM` month `quota_used` belongs to.
    pub quota_period: Option<String>,
    /// Calls allowed per window over all its tokens, if limited.
    pub rate_limit: Option<RateLimit>,
    /// Its public ApiKey: the id of its key row, which holds its secret as a call credential.
    pub api_key: String,
    /// Whether its secret authenticates calls; `None`: the daemon's default.
    pub secret_calls: Option<bool>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A person of an account.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Public id.
    pub id: String,
    /// The account it belongs to.
    pub account_id: String,
    /// Where notifications go.
    pub email: String,
    /// Its role: the highest role of the tokens issued for it.
    pub role: Role,
    /// Whether it receives expiry emails.
    pub notify_expiry: bool,
    /// Active, inactive or deleted.
    pub status: UserStatus,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it was deleted.
    pub deleted_at: Option<DateTime<Utc>>,
}

/// An API token as stored (never the plain value).
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// Public id, also embedded in the plain token.
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// The user it was issued for, if any.
    pub user_id: Option<String>,
    /// The credential that issued it: `operator`, `cli`, `account`, `token:<id>`,
    /// `policy:<name>`, or `unknown` (issued before issuers were recorded).
    pub issued_by: String,
    /// The policy that issued it, if any.
    pub policy_name: Option<String>,
    /// The `YYYY-MM` period the policy issued it for.
    pub policy_period: Option<String>,
    /// Name.
    pub name: String,
    /// Free-text note.
    pub description: Option<String>,
    /// Role.
    pub role: Role,
    /// Its user's current role (`None`: issued for no user); the token acts with at most it.
    pub user_role: Option<Role>,
    /// Whether its user is active (always, for a token issued for no user).
    pub user_active: bool,
    /// Allowed calls; empty = all.
    pub scopes: Vec<Scope>,
    /// Allowed client networks; empty = any.
    pub allowed_ips: Vec<IpNet>,
    /// Calls allowed per window, if limited.
    pub rate_limit: Option<RateLimit>,
    /// Uses allowed in all; `None` = unlimited.
    pub usage_limit: Option<i64>,
    /// Uses left; `None` = unlimited.
    pub remaining: Option<i64>,
    /// `remaining` is set back to this on the 1st of each month.
    pub refill_monthly: Option<i64>,
    /// The `YYYY-MM` month whose refill `remaining` holds.
    pub refill_period: Option<String>,
    /// When it stops working; `None` = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Stored status (see `TokenStatus::effective` for the status at an instant).
    pub status: TokenStatus,
    /// An account's key row (its secret as a call credential), not a token of its own.
    pub account_key: bool,
    /// Whether it may sign JWTs.
    pub jwt_enabled: bool,
    /// The plain token sealed under the master key (JWT signers only).
    pub sealed_secret: Option<Vec<u8>>,
    /// SHA-256 of the plain token.
    pub secret_hash: Vec<u8>,
    /// SHA-256 of the previous plain token during a regeneration grace period.
    pub prev_secret_hash: Option<Vec<u8>>,
    /// End of that grace period.
    pub prev_secret_valid_until: Option<DateTime<Utc>>,
    /// Calls counted in `calls_month_period`.
    pub calls_month: i64,
    /// The `YYYY-MM` month `calls_month` belongs to.
    pub calls_month_period: Option<String>,
    /// Calls since creation.
    pub calls_total: i64,
    /// Last successful use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Client IP of the last successful use.
    pub last_used_ip: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Its statistics for the latest UTC day it was presented.
    pub today: DayCounts,
}

/// Counters of a token's day: `plan::STAT_COLUMNS`.
pub const STAT_COUNTERS: usize = 11;

/// A token's statistics for one UTC day, kept in the token's own row: a counted call then
/// rewrites one row, not two. When a call on a later day arrives the counters move to the
/// `token_stats_daily` archive and start again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayCounts {
    /// The UTC day the counters belong to (`YYYY-MM-DD` when stored); `None` before the first
    /// call. A date rather than its text: verification's copies hold one per token.
    pub day: Option<chrono::NaiveDate>,
    /// The counters, in `plan::STAT_COLUMNS` order.
    pub counts: [i64; STAT_COUNTERS],
}

impl Token {
    /// A plain active token of account `acct` for unit tests: no limits, rules or uses.
    #[cfg(test)]
    pub fn sample(id: &str, created_at: DateTime<Utc>) -> Token {
        Token {
            id: id.into(),
            account_id: "acct".into(),
            user_id: None,
            issued_by: "account".into(),
            policy_name: None,
            policy_period: None,
            name: "t".into(),
            description: None,
            role: Role::User,
            user_role: None,
            user_active: true,
            scopes: vec![],
            allowed_ips: vec![],
            rate_limit: None,
            usage_limit: None,
            remaining: None,
            refill_monthly: None,
            refill_period: None,
            expires_at: None,
            status: TokenStatus::Active,
            account_key: false,
            jwt_enabled: false,
            sealed_secret: None,
            secret_hash: vec![],
            prev_secret_hash: None,
            prev_secret_valid_until: None,
            calls_month: 0,
            calls_month_period: None,
            calls_total: 0,
            last_used_at: None,
            last_used_ip: None,
            created_at,
            updated_at: created_at,
            revoked_at: None,
            today: DayCounts::default(),
        }
    }

    /// The role it acts with: its own, capped by its user's current role.
    pub fn effective_role(&self) -> Role {
        super::role::effective(self.role, self.user_role)
    }

    /// Its status at `now`, a monthly refill due by then included.
    pub fn status_at(&self, now: DateTime<Utc>) -> TokenStatus {
        TokenStatus::effective(self.status, self.expires_at, self.remaining_at(now), now)
    }

    /// Whether a monthly refill is due in the month of `now`. No job rewrites the tokens at a
    /// month's start: the row keeps the last refill applied until a call, a change or a view
    /// meets the token in a later month, and each of them applies it the same way
    /// (`TokenState::roll_month` for calls, `apply_refill` for changes, `remaining_at` for
    /// views).
    pub fn refill_due(&self, now: DateTime<Utc>) -> bool {
        self.refill_monthly.is_some()
            && self
                .refill_period
                .as_deref()
                .is_none_or(|p| p < crate::domain::period::month_key(now).as_str())
    }

    /// Uses left at `now`, a monthly refill due by then included; `None` = unlimited.
    pub fn remaining_at(&self, now: DateTime<Utc>) -> Option<i64> {
        if self.refill_due(now) {
            self.refill_monthly
        } else {
            self.remaining
        }
    }

    /// Applies a monthly refill due at `now` to the record, so a change written back keeps it.
    pub fn apply_refill(&mut self, now: DateTime<Utc>) {
        if let (true, Some(refill)) = (self.refill_due(now), self.refill_monthly) {
            self.remaining = Some(refill);
            self.refill_period = Some(crate::domain::period::month_key(now));
            if self.status == TokenStatus::Exhausted && refill > 0 {
                self.status = TokenStatus::Active;
            }
        }
    }

    /// Whether a call from `ip` may use the token (any address when it has no IP rules; none
    /// when it has rules and the address is unknown).
    pub fn allows_ip(&self, ip: Option<std::net::IpAddr>) -> bool {
        self.allowed_ips.is_empty()
            || ip.is_some_and(|ip| super::net::allows(&self.allowed_ips, ip))
    }

    /// Calls this month at `now`: a counter from an earlier month counts as zero (one from a
    /// later month, met by a call stamped just before a month's end, counts in full).
    pub fn calls_this_month(&self, now: DateTime<Utc>) -> i64 {
        match &self.calls_month_period {
            Some(p) if *p >= crate::domain::period::month_key(now) => self.calls_month,
            _ => 0,
        }
    }
}

impl Account {
    /// Brings the quota counter into `period`, handing back an earlier month's use for the
    /// archive. Returns `(changed, archived (period, calls))`.
    pub fn roll_month(&mut self, period: &str) -> (bool, Option<(String, i64)>) {
        if self.quota_period.as_deref().is_some_and(|p| p < period) {
            let archived = self.quota_period.take().map(|p| (p, self.quota_used));
            self.quota_used = 0;
            self.quota_period = Some(period.to_string());
            return (true, archived);
        }
        (false, None)
    }
}
