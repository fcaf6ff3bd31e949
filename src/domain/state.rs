//! A token as verification decides and counts on it: the columns a call reads or changes, in
//! compact parsed form. Names, descriptions, issuers and timestamps of the record stay in the
//! store (`model::Token`). The SQLite ledger and the PostgreSQL writer keep one of these per
//! token they hold in memory, so its size is what a cached token costs (about 200 bytes, plus
//! the rare boxed parts: scope and IP rules, a previous secret in its grace period, and the
//! day's statistics where a writer keeps them).

use super::model::DayCounts;
use super::period::Month;
use super::rate::RateLimit;
use super::{role::Role, scope::Scope, status::TokenStatus};
use chrono::{DateTime, Utc};
use compact_str::CompactString;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Arc;

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The state of one token that verification reads and changes.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenState {
    /// Public id (inline: ids are short).
    pub id: CompactString,
    /// Owning account (shared with the account's other tokens where a cache can).
    pub account_id: Arc<str>,
    /// SHA-256 of the plain token.
    pub secret_hash: Hash,
    /// The previous secret during a regeneration grace period.
    pub previous: Option<Box<PreviousSecret>>,
    /// Scope and IP rules; `None` when it has neither.
    pub rules: Option<Box<Rules>>,
    /// Its statistics for the latest UTC day it was presented (`None`: none held). Only the
    /// writers that write them back keep them.
    pub today: Option<Box<DayCounts>>,
    /// Uses left; `None` = unlimited.
    pub remaining: Option<i64>,
    /// `remaining` is set back to this on the 1st of each month.
    pub refill_monthly: Option<i64>,
    /// When it stops working; `None` = never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last successful use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Calls counted in `calls_month_period`.
    pub calls_month: i64,
    /// Calls since creation.
    pub calls_total: i64,
    /// Client IP of the last successful use.
    pub last_used_ip: Option<IpAddr>,
    /// The month `calls_month` belongs to.
    pub calls_month_period: Option<Month>,
    /// The month whose refill `remaining` holds.
    pub refill_period: Option<Month>,
    /// Role.
    pub role: Role,
    /// Its user's current role (`None`: issued for no user).
    pub user_role: Option<Role>,
    /// Whether its user is active (always, for a token issued for no user).
    pub user_active: bool,
    /// Stored status (see `TokenStatus::effective` for the status at an instant).
    pub status: TokenStatus,
}

/// A token's previous secret, accepted until `valid_until`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviousSecret {
    /// Its SHA-256.
    pub hash: Hash,
    /// End of the grace period.
    pub valid_until: DateTime<Utc>,
}

/// A token's restrictions; a token has none unless it was given some.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rules {
    /// Allowed calls; empty = all.
    pub scopes: Vec<Scope>,
    /// Allowed client networks; empty = any.
    pub allowed_ips: Vec<IpNet>,
    /// Calls allowed per window, if limited.
    pub rate_limit: Option<RateLimit>,
}

impl Rules {
    /// The rules, boxed, or `None` when there are none (the common case costs no allocation).
    pub fn boxed(
        scopes: Vec<Scope>,
        allowed_ips: Vec<IpNet>,
        rate_limit: Option<RateLimit>,
    ) -> Option<Box<Rules>> {
        (!scopes.is_empty() || !allowed_ips.is_empty() || rate_limit.is_some()).then(|| {
            Box::new(Rules {
                scopes,
                allowed_ips,
                rate_limit,
            })
        })
    }
}

impl TokenState {
    /// Allowed calls; empty = all.
    pub fn scopes(&self) -> &[Scope] {
        self.rules.as_ref().map_or(&[], |r| &r.scopes)
    }

    /// Allowed client networks; empty = any.
    pub fn allowed_ips(&self) -> &[IpNet] {
        self.rules.as_ref().map_or(&[], |r| &r.allowed_ips)
    }

    /// Calls allowed per window, if limited.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        self.rules.as_ref().and_then(|r| r.rate_limit)
    }

    /// The role it acts with: its own, capped by its user's current role.
    pub fn effective_role(&self) -> Role {
        super::role::effective(self.role, self.user_role)
    }

    /// Its status at `now`.
    pub fn status_at(&self, now: DateTime<Utc>) -> TokenStatus {
        TokenStatus::effective(self.status, self.expires_at, self.remaining, now)
    }

    /// Whether a call from `ip` may use the token (any address when it has no IP rules; none
    /// when it has rules and the address is unknown).
    pub fn allows_ip(&self, ip: Option<IpAddr>) -> bool {
        let rules = self.allowed_ips();
        rules.is_empty() || ip.is_some_and(|ip| super::net::allows(rules, ip))
    }

    /// Whether the token's scopes allow `call` (any call when it has none; none when it has
    /// scopes and the call is not named).
    pub fn allows_call(&self, call: Option<&str>) -> bool {
        let scopes = self.scopes();
        scopes.is_empty() || call.is_some_and(|call| super::scope::allows(scopes, call))
    }

    /// Calls this month at `now`: a counter from an earlier month counts as zero (one from a
    /// later month, met by a call stamped just before a month's end, counts in full).
    pub fn calls_this_month(&self, now: DateTime<Utc>) -> i64 {
        match self.calls_month_period {
            Some(p) if p >= Month::of(now) => self.calls_month,
            _ => 0,
        }
    }

    /// Brings the monthly counter and the refill into `period`: an earlier month's calls are
    /// handed back for the archive and the counter restarts at zero; a token with a monthly
    /// refill gets `remaining` set back to it (and is active again if it was exhausted).
    /// Whoever reaches the token first in a new month does this — the monthly reset or a
    /// verification — and it happens once. Returns `(changed, archived (period, calls))`.
    pub fn roll_month(&mut self, period: Month) -> (bool, Option<(Month, i64)>) {
        let mut changed = false;
        let mut archived = None;
        if self.calls_month_period.is_some_and(|p| p < period) {
            archived = self
                .calls_month_period
                .take()
                .map(|p| (p, self.calls_month));
            self.calls_month = 0;
            self.calls_month_period = Some(period);
            changed = true;
        }
        if let Some(refill) = self.refill_monthly {
            if self.refill_period.is_none_or(|p| p < period) {
                self.remaining = Some(refill);
                self.refill_period = Some(period);
                if self.status == TokenStatus::Exhausted && refill > 0 {
                    self.status = TokenStatus::Active;
                }
                changed = true;
            }
        }
        (changed, archived)
    }

    /// The day's statistics (zero, of no day, when none are held).
    #[cfg(test)]
    pub fn today(&self) -> DayCounts {
        self.today.as_deref().cloned().unwrap_or_default()
    }
}

#[cfg(test)]
impl From<&super::model::Token> for TokenState {
    /// The state of a test's token (a hash that is not 32 bytes becomes zeros).
    fn from(t: &super::model::Token) -> Self {
        let hash = |h: &[u8]| <Hash>::try_from(h).unwrap_or([0; 32]);
        TokenState {
            id: t.id.as_str().into(),
            account_id: t.account_id.as_str().into(),
            secret_hash: hash(&t.secret_hash),
            previous: t
                .prev_secret_hash
                .as_deref()
                .zip(t.prev_secret_valid_until)
                .map(|(h, valid_until)| {
                    Box::new(PreviousSecret {
                        hash: hash(h),
                        valid_until,
                    })
                }),
            rules: Rules::boxed(t.scopes.clone(), t.allowed_ips.clone(), t.rate_limit),
            today: (t.today != DayCounts::default()).then(|| Box::new(t.today.clone())),
            remaining: t.remaining,
            refill_monthly: t.refill_monthly,
            expires_at: t.expires_at,
            last_used_at: t.last_used_at,
            calls_month: t.calls_month,
            calls_total: t.calls_total,
            last_used_ip: t.last_used_ip.as_deref().and_then(|ip| ip.parse().ok()),
            calls_month_period: t.calls_month_period.as_deref().and_then(Month::parse),
            refill_period: t.refill_period.as_deref().and_then(Month::parse),
            role: t.role,
            user_role: t.user_role,
            user_active: t.user_active,
            status: t.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_state_fits_a_224_byte_allocation_with_its_shared_count() {
        // An `Arc<TokenState>` is the state plus two counters; 224 bytes is an allocator size
        // class. Growing past it costs every cached token the next class up.
        assert!(
            std::mem::size_of::<TokenState>() + 16 <= 224,
            "{}",
            std::mem::size_of::<TokenState>()
        );
        // A writer that keeps the day's statistics holds one of these per token.
        assert!(std::mem::size_of::<super::DayCounts>() <= 96);
        // Ids are inline.
        let id: CompactString = "AbCdEfGh".into();
        assert!(!id.is_heap_allocated());
    }
}
