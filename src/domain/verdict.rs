//! The verdict of one call: which outcome a presented token earns for a check, decided from the
//! token, its account and the instant, with no I/O. Checks run in an order that never spends a
//! use on a call refused for another reason: malformed → unknown → revoked → expired → account
//! inactive → user inactive → IP → scope → account quota → usage. The usage writer calls `decide` against the
//! state its commit holds to, so every answer reflects the store at the moment the call counts.

use super::{
    code::Code,
    model::Account,
    period::month_key,
    state::TokenState,
    status::{AccountStatus, TokenStatus},
    ParseError,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::net::IpAddr;

/// Largest cost one call may consume.
pub const MAX_COST: i64 = 1_000_000;

/// The answer to one verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// The call may proceed; its cost was consumed.
    Valid,
    /// Not a token of ours (shape or checksum).
    Malformed,
    /// No such token, or the secret does not match.
    NotFound,
    /// Revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Its account is inactive.
    AccountInactive,
    /// The user it was issued for is inactive.
    UserInactive,
    /// The client IP is not among the allowed ones.
    IpNotAllowed,
    /// The call is outside the token's scopes.
    ScopeDenied,
    /// The account's monthly quota would be passed.
    AccountQuotaExceeded,
    /// The token's (or the JWT's) uses are spent.
    UsageExceeded,
    /// A JWT with a bad signature, expired, or malformed.
    BadJwt,
    /// The token's or the account's rate limit has no room left in this window.
    RateLimited,
    /// An account secret (or a JWT it signed) while the account's secret calls are off.
    SecretCallsOff,
}

impl Outcome {
    /// Every outcome. A denial in the SQLite usage log names its outcome by its place here, so
    /// the order never changes and a new outcome goes last.
    pub const ALL: [Outcome; 14] = [
        Outcome::Valid,
        Outcome::Malformed,
        Outcome::NotFound,
        Outcome::Revoked,
        Outcome::Expired,
        Outcome::AccountInactive,
        Outcome::IpNotAllowed,
        Outcome::ScopeDenied,
        Outcome::AccountQuotaExceeded,
        Outcome::UsageExceeded,
        Outcome::BadJwt,
        Outcome::UserInactive,
        Outcome::RateLimited,
        Outcome::SecretCallsOff,
    ];

    /// The word on the wire.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Valid => "VALID",
            Outcome::Malformed => "MALFORMED",
            Outcome::NotFound => "NOT_FOUND",
            Outcome::Revoked => "REVOKED",
            Outcome::Expired => "EXPIRED",
            Outcome::AccountInactive => "ACCOUNT_INACTIVE",
            Outcome::UserInactive => "USER_INACTIVE",
            Outcome::IpNotAllowed => "IP_NOT_ALLOWED",
            Outcome::ScopeDenied => "SCOPE_DENIED",
            Outcome::AccountQuotaExceeded => "ACCOUNT_QUOTA_EXCEEDED",
            Outcome::UsageExceeded => "USAGE_EXCEEDED",
            Outcome::BadJwt => "BAD_JWT",
            Outcome::RateLimited => "RATE_LIMITED",
            Outcome::SecretCallsOff => "SECRET_CALLS_OFF",
        }
    }

    /// Its entry in the table of codes; the first three digits of the number are the status the
    /// forward-auth route answers with (the seeds' 4011 bad token, 4012 bad JWT and 4014 inactive
    /// keep their meaning).
    pub fn code(self) -> Code {
        match self {
            Outcome::Valid => Code::Verified,
            Outcome::Malformed | Outcome::NotFound => Code::BadToken,
            Outcome::BadJwt => Code::BadJwt,
            Outcome::AccountInactive => Code::AccountInactive,
            Outcome::UserInactive => Code::UserInactive,
            Outcome::Revoked => Code::TokenRevoked,
            Outcome::Expired => Code::TokenExpired,
            Outcome::IpNotAllowed => Code::IpNotAllowed,
            Outcome::ScopeDenied => Code::ScopeDenied,
            Outcome::UsageExceeded => Code::UsageExceeded,
            Outcome::AccountQuotaExceeded => Code::AccountQuotaExceeded,
            Outcome::RateLimited => Code::RateLimited,
            Outcome::SecretCallsOff => Code::SecretCallsOff,
        }
    }

    /// The HTTP status of the forward-auth answer.
    pub fn http_status(self) -> u16 {
        self.code().status()
    }

    /// The per-day statistics column that counts this outcome, for outcomes tied to a token.
    /// A rate-limited call has none: refusing a flood writes nothing (the metrics count it).
    pub fn stat_column(self) -> Option<&'static str> {
        Some(match self {
            Outcome::Valid => "valid",
            Outcome::Revoked => "revoked",
            Outcome::Expired => "expired",
            Outcome::AccountInactive => "account_inactive",
            Outcome::UserInactive => "user_inactive",
            Outcome::IpNotAllowed => "ip_not_allowed",
            Outcome::ScopeDenied => "scope_denied",
            Outcome::AccountQuotaExceeded => "account_quota_exceeded",
            Outcome::UsageExceeded => "usage_exceeded",
            Outcome::BadJwt => "bad_jwt",
            // Decided outside the batch, as the key row's REVOKED, which is counted.
            Outcome::SecretCallsOff => return None,
            Outcome::Malformed | Outcome::NotFound | Outcome::RateLimited => return None,
        })
    }
}

/// What the caller asks to do with the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Check {
    /// The call being made, checked against scopes.
    pub call: Option<String>,
    /// The end client's IP, checked against allowed IPs.
    pub client_ip: Option<IpAddr>,
    /// Uses this call consumes.
    pub cost: i64,
    /// The address a JWT is bound to (its `UserIp`): the call must come from it.
    pub bound_ip: Option<IpAddr>,
    /// Other readings of `call` (a forwarded path as servers that merge slashes or decode
    /// `%2F` read it), which the scopes must all allow too.
    pub other_readings: Vec<String>,
}

impl Check {
    /// Parses the caller's values, naming the field at fault.
    pub fn parse(
        call: Option<String>,
        client_ip: Option<&str>,
        cost: Option<i64>,
    ) -> Result<Check, ParseError> {
        let cost = cost.unwrap_or(1);
        if !(1..=MAX_COST).contains(&cost) {
            return Err(ParseError::new("cost", format!("must be 1 to {MAX_COST}")));
        }
        let client_ip = client_ip
            .map(|s| {
                s.trim().parse::<IpAddr>().map_err(|_| {
                    ParseError::new("client_ip", format!("`{s}` is not an IP address"))
                })
            })
            .transpose()?;
        let call = match call {
            // Characters, as the schema's maxLength counts them (bytes bound them from above).
            Some(c) if c.is_empty() || (c.len() > 256 && c.chars().count() > 256) => {
                return Err(ParseError::new("call", "must be 1 to 256 characters"))
            }
            c => c,
        };
        Ok(Check {
            call,
            client_ip,
            cost,
            bound_ip: None,
            other_readings: Vec::new(),
        })
    }
}

/// The account's figures a verification needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountState {
    /// Active or inactive.
    pub status: AccountStatus,
    /// Monthly quota, if any.
    pub monthly_quota: Option<i64>,
    /// Calls counted in `quota_period`.
    pub quota_used: i64,
    /// The month `quota_used` belongs to.
    pub quota_period: Option<String>,
}

impl AccountState {
    /// Of an account record.
    pub fn of(a: &Account) -> Self {
        Self {
            status: a.status,
            monthly_quota: a.monthly_quota,
            quota_used: a.quota_used,
            quota_period: a.quota_period.clone(),
        }
    }

    /// Quota used this month at `now` (an earlier month counts as zero; a later one, which a
    /// call stamped just before a month's end can meet, counts in full).
    pub fn used_this_month(&self, now: DateTime<Utc>) -> i64 {
        match &self.quota_period {
            Some(p) if *p >= month_key(now) => self.quota_used,
            _ => 0,
        }
    }
}

/// Decides a verification for a token whose secret matched, against the token and account state
/// the usage writer holds for its batch (so quota and uses already reflect the batch's earlier
/// calls). `Valid` means the call may consume its cost.
pub fn decide(
    token: &TokenState,
    account: &AccountState,
    check: &Check,
    now: DateTime<Utc>,
) -> Outcome {
    match token.status_at(now) {
        TokenStatus::Revoked => return Outcome::Revoked,
        TokenStatus::Expired => return Outcome::Expired,
        TokenStatus::Active | TokenStatus::Exhausted => {}
    }
    if account.status == AccountStatus::Inactive {
        return Outcome::AccountInactive;
    }
    if !token.user_active {
        return Outcome::UserInactive;
    }
    if !token.allows_ip(check.client_ip) {
        return Outcome::IpNotAllowed;
    }
    if let Some(bound) = check.bound_ip {
        // `::ffff:a.b.c.d` is the IPv4 client a.b.c.d, as in the allowed-IP check.
        if check.client_ip.map(|ip| ip.to_canonical()) != Some(bound.to_canonical()) {
            return Outcome::IpNotAllowed;
        }
    }
    let other_reading_denied = check
        .other_readings
        .iter()
        .any(|c| !token.allows_call(Some(c)));
    if !token.allows_call(check.call.as_deref()) || other_reading_denied {
        return Outcome::ScopeDenied;
    }
    if let Some(q) = account.monthly_quota {
        if account.used_this_month(now) + check.cost > q {
            return Outcome::AccountQuotaExceeded;
        }
    }
    if token.remaining.is_some_and(|r| r < check.cost) {
        return Outcome::UsageExceeded;
    }
    Outcome::Valid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::scope::Scope;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
    }

    /// `decide` on the state of a test's token.
    fn decide_on(
        t: &crate::domain::model::Token,
        a: &AccountState,
        c: &Check,
        now: DateTime<Utc>,
    ) -> Outcome {
        decide(&TokenState::from(t), a, c, now)
    }

    fn token() -> crate::domain::model::Token {
        crate::domain::model::Token {
            usage_limit: Some(10),
            remaining: Some(10),
            ..crate::domain::model::Token::sample("AAAAAAAA", now())
        }
    }

    fn account() -> AccountState {
        AccountState {
            status: AccountStatus::Active,
            monthly_quota: None,
            quota_used: 0,
            quota_period: None,
        }
    }

    fn check() -> Check {
        Check {
            cost: 1,
            ..Check::default()
        }
    }

    #[test]
    fn a_call_is_up_to_256_characters_however_many_bytes_they_take() {
        let wide = "é".repeat(256);
        assert_eq!(wide.len(), 512);
        let c = Check::parse(Some(wide.clone()), None, None).unwrap();
        assert_eq!(c.call.as_deref(), Some(wide.as_str()));
        let e = Check::parse(Some("é".repeat(257)), None, None).unwrap_err();
        assert_eq!(e.field, "call");
        assert!(Check::parse(Some(String::new()), None, None).is_err());
    }

    #[test]
    fn a_jwt_bound_to_an_address_is_refused_elsewhere_after_the_token_checks() {
        let mut t = token();
        let a = account();
        let mut c = check();
        c.bound_ip = Some("10.0.0.1".parse().unwrap());
        // Revoked, expired and inactive are told before the JWT's address.
        t.status = TokenStatus::Revoked;
        assert_eq!(decide_on(&t, &a, &c, now()), Outcome::Revoked);
        t.status = TokenStatus::Active;
        assert_eq!(
            decide_on(&t, &a, &c, now()),
            Outcome::IpNotAllowed,
            "no client IP"
        );
        c.client_ip = Some("10.0.0.2".parse().unwrap());
        assert_eq!(decide_on(&t, &a, &c, now()), Outcome::IpNotAllowed);
        c.client_ip = Some("::ffff:10.0.0.1".parse().unwrap());
        assert_eq!(decide_on(&t, &a, &c, now()), Outcome::Valid, "IPv4-mapped");
        // Before the scope check.
        t.scopes = vec![Scope::parse("convert:*", "scopes").unwrap()];
        c.client_ip = Some("10.0.0.2".parse().unwrap());
        assert_eq!(decide_on(&t, &a, &c, now()), Outcome::IpNotAllowed);
    }

    #[test]
    fn the_first_failing_check_wins_in_order() {
        let mut t = token();
        t.status = TokenStatus::Revoked;
        t.expires_at = Some(now());
        t.allowed_ips = vec!["10.0.0.0/8".parse().unwrap()];
        t.remaining = Some(0);
        let mut a = account();
        a.status = AccountStatus::Inactive;
        assert_eq!(decide_on(&t, &a, &check(), now()), Outcome::Revoked);
        t.status = TokenStatus::Active;
        assert_eq!(decide_on(&t, &a, &check(), now()), Outcome::Expired);
        t.expires_at = None;
        t.user_active = false;
        assert_eq!(decide_on(&t, &a, &check(), now()), Outcome::AccountInactive);
        a.status = AccountStatus::Active;
        assert_eq!(decide_on(&t, &a, &check(), now()), Outcome::UserInactive);
        t.user_active = true;
        assert_eq!(decide_on(&t, &a, &check(), now()), Outcome::IpNotAllowed);
        let mut c = check();
        c.client_ip = Some("10.9.8.7".parse().unwrap());
        t.scopes = vec![Scope::parse("convert:*", "scopes").unwrap()];
        assert_eq!(decide_on(&t, &a, &c, now()), Outcome::ScopeDenied);
        c.call = Some("convert:pdf".into());
        a.monthly_quota = Some(5);
        a.quota_used = 5;
        a.quota_period = Some("2026-11".into());
        assert_eq!(decide_on(&t, &a, &c, now()), Outcome::AccountQuotaExceeded);
        a.quota_period = Some("2026-10".into());
        assert_eq!(
            decide_on(&t, &a, &c, now()),
            Outcome::UsageExceeded,
            "last month's quota counts as zero"
        );
        t.remaining = Some(1);
        assert_eq!(decide_on(&t, &a, &c, now()), Outcome::Valid);
        c.cost = 2;
        assert_eq!(decide_on(&t, &a, &c, now()), Outcome::UsageExceeded);
    }

    #[test]
    fn codes_carry_the_forward_auth_status() {
        assert_eq!(Outcome::Valid.http_status(), 200);
        assert_eq!(Outcome::NotFound.http_status(), 401);
        assert_eq!(Outcome::IpNotAllowed.http_status(), 403);
        assert_eq!(Outcome::UsageExceeded.http_status(), 429);
        assert_eq!(Outcome::AccountQuotaExceeded.http_status(), 429);
        assert_eq!(Outcome::BadJwt.code().number(), 4012);
        assert_eq!(Outcome::Revoked.code().number(), 4015);
        assert_eq!(Outcome::UserInactive.code().number(), 4017);
        assert_eq!(Outcome::UserInactive.http_status(), 401);
        assert_eq!(Outcome::Valid.code().number(), 2005);
        assert_eq!(Outcome::RateLimited.code().number(), 4292);
        assert_eq!(Outcome::RateLimited.http_status(), 429);
    }

    #[test]
    fn check_input_is_parsed_with_field_names() {
        assert_eq!(Check::parse(None, None, Some(0)).unwrap_err().field, "cost");
        assert_eq!(
            Check::parse(None, Some("1.2.3"), None).unwrap_err().field,
            "client_ip"
        );
        assert_eq!(
            Check::parse(Some(String::new()), None, None)
                .unwrap_err()
                .field,
            "call"
        );
        assert_eq!(Check::parse(None, Some("::1"), None).unwrap().cost, 1);
    }
}
