//! What the API (and the CLI) shows of accounts, users and tokens.

use crate::domain::model::{Account, Token, User};
use crate::domain::rate::{RateLimit, RateLimitInput};
use crate::domain::{
    role::Role,
    status::{AccountStatus, TokenStatus, UserStatus},
};
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::{Serialize, Serializer};

fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn rfc3339_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// An account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    /// Public id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// `active` or `inactive`.
    pub status: AccountStatus,
    /// Active tokens allowed.
    pub max_tokens: i64,
    /// Calls per calendar month over all tokens, if limited.
    pub monthly_quota: Option<i64>,
    /// Calls counted against the quota this month.
    pub quota_used_this_month: i64,
    /// At most `limit` calls per `window_seconds` over all its tokens; null = none.
    #[schema(value_type = Option<RateLimitInput>)]
    pub rate_limit: Option<RateLimit>,
    /// Its public ApiKey (not a secret; stable across secret resets): the user name of HTTP
    /// Basic with the secret, the `ApiKey` claim of JWTs the secret signs, and the `token_id`
    /// its secret's calls are counted under.
    pub api_key: String,
    /// Whether its secret authenticates calls itself; null = the daemon's
    /// `accounts.secret_calls`.
    pub secret_calls: Option<bool>,
    /// Creation time (UTC).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// Last change (UTC).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

impl AccountView {
    /// The view of `a` at `now`.
    pub fn new(a: &Account, now: DateTime<Utc>) -> Self {
        let this_month = crate::domain::period::month_key(now);
        Self {
            id: a.id.clone(),
            name: a.name.clone(),
            status: a.status,
            max_tokens: a.max_tokens,
            monthly_quota: a.monthly_quota,
            quota_used_this_month: if a.quota_period.as_deref() == Some(this_month.as_str()) {
                a.quota_used
            } else {
                0
            },
            rate_limit: a.rate_limit,
            api_key: a.api_key.clone(),
            secret_calls: a.secret_calls,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// A user.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserView {
    /// Public id.
    pub id: String,
    /// Its account.
    pub account_id: String,
    /// Email address.
    pub email: String,
    /// Role.
    pub role: Role,
    /// Whether it gets expiry emails.
    pub notify_expiry: bool,
    /// `active`, `inactive` (its tokens answer USER_INACTIVE) or `deleted`.
    pub status: UserStatus,
    /// Creation time (UTC).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// Last change (UTC).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    /// Deletion time (UTC), once deleted.
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        Self {
            id: u.id.clone(),
            account_id: u.account_id.clone(),
            email: u.email.clone(),
            role: u.role,
            notify_expiry: u.notify_expiry,
            status: u.status,
            created_at: u.created_at,
            updated_at: u.updated_at,
            deleted_at: u.deleted_at,
        }
    }
}

/// A token, never with its secret except in the one answer that creates it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    /// Public id.
    pub id: String,
    /// The plain token: only in the create and regenerate answers, never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Owning account.
    pub account_id: String,
    /// The user it was issued for.
    pub user_id: Option<String>,
    /// The credential that issued it: `operator`, `cli`, `account`, `token:<id>`,
    /// `policy:<name>`, or `unknown` (issued before issuers were recorded).
    pub issued_by: String,
    /// Name.
    pub name: String,
    /// Note.
    pub description: Option<String>,
    /// Role.
    pub role: Role,
    /// The role it acts with: `role`, capped by its user's current role.
    pub effective_role: Role,
    /// Whether its user is active (always true for a token issued for no user); while not,
    /// the token answers USER_INACTIVE.
    pub user_active: bool,
    /// Allowed calls; empty = all.
    pub scopes: Vec<String>,
    /// Allowed client IPs/CIDRs; empty = any.
    pub allowed_ips: Vec<String>,
    /// Uses allowed; null = unlimited.
    pub usage_limit: Option<i64>,
    /// Uses left; null = unlimited.
    pub remaining: Option<i64>,
    /// Monthly refill amount.
    pub refill_monthly: Option<i64>,
    /// At most `limit` calls per `window_seconds`; null = none.
    #[schema(value_type = Option<RateLimitInput>)]
    pub rate_limit: Option<RateLimit>,
    /// Expiry (UTC); null = never.
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Expires within the configured window (7 days by default).
    pub expires_soon: bool,
    /// Status now.
    pub status: TokenStatus,
    /// Whether it may sign JWTs.
    pub jwt: bool,
    /// Calls in the current calendar month (UTC).
    pub calls_this_month: i64,
    /// Calls since creation.
    pub calls_total: i64,
    /// Last successful use (UTC).
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Client IP of the last successful use.
    pub last_used_ip: Option<String>,
    /// The issuing policy, if any.
    pub policy: Option<String>,
    /// Creation time (UTC).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// Last change (UTC).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    /// Revocation time (UTC).
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenView {
    /// The view of `t` at `now`; `soon_days` is the `expires_soon` window.
    pub fn new(t: &Token, now: DateTime<Utc>, soon_days: i64) -> Self {
        let status = t.status_at(now);
        let expires_soon = status != TokenStatus::Revoked
            && status != TokenStatus::Expired
            && t.expires_at
                .is_some_and(|e| e - now <= TimeDelta::days(soon_days));
        Self {
            id: t.id.clone(),
            token: None,
            account_id: t.account_id.clone(),
            user_id: t.user_id.clone(),
            issued_by: t.issued_by.clone(),
            name: t.name.clone(),
            description: t.description.clone(),
            role: t.role,
            effective_role: t.effective_role(),
            user_active: t.user_active,
            scopes: crate::domain::scope::to_strings(&t.scopes),
            allowed_ips: t.allowed_ips.iter().map(ToString::to_string).collect(),
            usage_limit: t.usage_limit,
            remaining: t.remaining_at(now),
            refill_monthly: t.refill_monthly,
            rate_limit: t.rate_limit,
            expires_at: t.expires_at,
            expires_soon,
            status,
            jwt: t.jwt_enabled,
            calls_this_month: t.calls_this_month(now),
            calls_total: t.calls_total,
            last_used_at: t.last_used_at,
            last_used_ip: t.last_used_ip.clone(),
            policy: t.policy_name.clone(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            revoked_at: t.revoked_at,
        }
    }

    /// The same view carrying the plain token (create and regenerate answers only).
    pub fn with_secret(mut self, plain: &str) -> Self {
        self.token = Some(plain.to_string());
        self
    }
}
