//! What the store is asked to insert and to list: inputs that are not records.

use crate::domain::{
    model::{DayCounts, Token},
    rate::RateLimit,
    role::Role,
    scope::Scope,
    status::TokenStatus,
};
use chrono::{DateTime, Utc};
use ipnet::IpNet;

/// Everything needed to insert an account.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Public id.
    pub id: String,
    /// Unique name.
    pub name: String,
    /// Active tokens allowed.
    pub max_tokens: i64,
    /// Calls per calendar month, if limited.
    pub monthly_quota: Option<i64>,
    /// SHA-256 of the account secret.
    pub secret_hash: Vec<u8>,
    /// Calls allowed per window over all its tokens, if limited.
    pub rate_limit: Option<RateLimit>,
    /// Its public ApiKey, the id of its key row.
    pub api_key: String,
    /// The secret sealed under the master key (for the JWTs it signs).
    pub sealed_secret: Vec<u8>,
    /// Whether its secret authenticates calls; `None`: the daemon's default.
    pub secret_calls: Option<bool>,
    /// Whether it does now (`secret_calls` or the default).
    pub key_active: bool,
}

/// Everything needed to insert a token.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Public id.
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// The user it is issued for.
    pub user_id: Option<String>,
    /// That user's role as the issue read it; the creation refuses the issue if the user's
    /// role or status changed before its transaction locked the user.
    pub user_role: Option<Role>,
    /// The credential that issues it.
    pub issued_by: String,
    /// Issuing policy and its period.
    pub policy: Option<(String, String)>,
    /// Name.
    pub name: String,
    /// Note.
    pub description: Option<String>,
    /// Role.
    pub role: Role,
    /// Allowed calls.
    pub scopes: Vec<Scope>,
    /// Allowed client networks.
    pub allowed_ips: Vec<IpNet>,
    /// Calls allowed per window, if limited.
    pub rate_limit: Option<RateLimit>,
    /// Uses allowed; `remaining` starts here.
    pub usage_limit: Option<i64>,
    /// Monthly refill amount.
    pub refill_monthly: Option<i64>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// May sign JWTs.
    pub jwt_enabled: bool,
    /// Sealed plain token (JWT signers).
    pub sealed_secret: Option<Vec<u8>>,
    /// SHA-256 of the plain token.
    pub secret_hash: Vec<u8>,
}

impl NewToken {
    /// The token as `insert_tokens` stores it for `account_id` at `now`: active, counters at
    /// zero, `remaining` at `usage_limit`, the refill of `now`'s month taken. Built here rather
    /// than read back, so a creation of a thousand tokens writes them and reads none.
    pub(crate) fn inserted(&self, account_id: &str, now: DateTime<Utc>) -> Token {
        let (policy_name, policy_period) = self.policy.clone().unzip();
        Token {
            id: self.id.clone(),
            account_id: account_id.to_string(),
            user_id: self.user_id.clone(),
            issued_by: self.issued_by.clone(),
            policy_name,
            policy_period,
            name: self.name.clone(),
            description: self.description.clone(),
            role: self.role,
            user_role: self.user_role,
            user_active: true,
            scopes: self.scopes.clone(),
            allowed_ips: self.allowed_ips.clone(),
            rate_limit: self.rate_limit,
            usage_limit: self.usage_limit,
            remaining: self.usage_limit,
            refill_monthly: self.refill_monthly,
            refill_period: Some(crate::domain::period::month_key(now)),
            expires_at: self.expires_at,
            status: TokenStatus::Active,
            account_key: false,
            jwt_enabled: self.jwt_enabled,
            sealed_secret: self.sealed_secret.clone(),
            secret_hash: self.secret_hash.clone(),
            prev_secret_hash: None,
            prev_secret_valid_until: None,
            calls_month: 0,
            calls_month_period: None,
            calls_total: 0,
            last_used_at: None,
            last_used_ip: None,
            created_at: now,
            updated_at: now,
            revoked_at: None,
            today: DayCounts::default(),
        }
    }
}

/// A token's new secret, given in a rotation.
#[derive(Debug, Clone)]
pub struct NewSecret {
    /// SHA-256 of the new plain token.
    pub hash: Vec<u8>,
    /// The new plain token sealed (kept only on a JWT signer).
    pub sealed: Option<Vec<u8>>,
    /// Until when the previous secret keeps working; `None`: it stops at once.
    pub grace_until: Option<DateTime<Utc>>,
}

/// Which tokens a listing returns.
#[derive(Debug, Clone, Default)]
pub struct TokenFilter {
    /// Only this account's.
    pub account_id: Option<String>,
    /// Only those a non-admin credential owns.
    pub owner: Option<Owner>,
    /// Only those with this status at `now`.
    pub status: Option<TokenStatus>,
    /// Only this role.
    pub role: Option<Role>,
    /// Only those issued by this credential (`issued_by`).
    pub issued_by: Option<String>,
    /// Only those issued for this user.
    pub user_id: Option<String>,
    /// Only those expiring (and not yet expired) before this instant.
    pub expiring_before: Option<DateTime<Utc>>,
    /// Name or description containing this (case-insensitive).
    pub q: Option<String>,
    /// Continue after this (created_at, id), newest first.
    pub after: Option<(DateTime<Utc>, String)>,
    /// Page size.
    pub limit: i64,
}

/// The tokens a non-admin token credential may see: its user's, or, for a token issued for no
/// user, the ones it issued itself, and always itself; never one above `engineer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The credential token's id.
    pub token_id: String,
    /// The credential token's user.
    pub user_id: Option<String>,
}
