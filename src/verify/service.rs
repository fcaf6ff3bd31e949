//! One verification end to end: parse what was presented (a token or a JWT signed with one),
//! look the token up, decide, and consume through the meter.

use super::{decide, jwt, meter::Meter, AccountState, Check, Outcome};
use crate::admin::Ctx;
use crate::domain::credential::{self, hashes_match, Presented};
use crate::store::{Consume, Consumed, Denial, JwtUse, StoreError, Token};
use chrono::DateTime;
use std::net::IpAddr;

/// The result of a verification.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What was decided.
    pub outcome: Outcome,
    /// The token, once identified (also for most refusals).
    pub token: Option<Token>,
    /// Uses left after this call.
    pub remaining: Option<i64>,
    /// Uses this month after this call.
    pub calls_this_month: i64,
}

impl Verdict {
    /// A verdict that identifies no token.
    pub fn bare(outcome: Outcome) -> Self {
        Verdict {
            outcome,
            token: None,
            remaining: None,
            calls_this_month: 0,
        }
    }
}

/// Verifies `presented` (a token, or a JWT signed with one) for `check`, consuming its cost when
/// valid. A store error is returned as an error (answered 503), never as a verdict.
pub async fn verify(
    ctx: &Ctx,
    meter: &Meter,
    presented: &str,
    check: &Check,
) -> Result<Verdict, StoreError> {
    let presented = presented.trim();
    if jwt::looks_like_jwt(presented) {
        return verify_jwt(ctx, meter, presented, check).await;
    }
    let now = ctx.clock.now();
    let (id, hash) = match credential::parse(&ctx.config.tokens.prefix, presented) {
        Ok(Presented::Token { id, hash }) => (id, hash),
        _ => return Ok(Verdict::bare(Outcome::Malformed)),
    };
    let Some(token) = ctx.store.token(&id).await? else {
        return Ok(Verdict::bare(Outcome::NotFound));
    };
    // During a regeneration grace period the previous secret still verifies calls.
    let in_grace = match (&token.prev_secret_hash, token.prev_secret_valid_until) {
        (Some(prev), Some(until)) => now < until && hashes_match(&hash, prev),
        _ => false,
    };
    if !hashes_match(&hash, &token.secret_hash) && !in_grace {
        return Ok(Verdict::bare(Outcome::NotFound));
    }
    decide_and_consume(ctx, meter, token, check, None).await
}

async fn verify_jwt(
    ctx: &Ctx,
    meter: &Meter,
    presented: &str,
    check: &Check,
) -> Result<Verdict, StoreError> {
    let now = ctx.clock.now();
    let Ok(unverified) = jwt::peek(presented) else {
        return Ok(Verdict::bare(Outcome::BadJwt));
    };
    let Some(token) = ctx.store.token(&unverified.api_key).await? else {
        return Ok(Verdict::bare(Outcome::BadJwt));
    };
    let key = match (&token.sealed_secret, token.jwt_enabled) {
        (Some(sealed), true) => match ctx.master_key.open(sealed, &token.id) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(token = %token.id, error = %e, "cannot open a JWT signer's sealed secret");
                return Ok(Verdict::bare(Outcome::BadJwt));
            }
        },
        _ => return Ok(Verdict::bare(Outcome::BadJwt)),
    };
    let claims = match jwt::check(
        presented,
        &key,
        now,
        ctx.config.tokens.max_jwt_lifetime_seconds,
    ) {
        Ok(c) => c,
        Err(_) => {
            // A known signer: count the refusal against it.
            meter.record_denial(Denial {
                token_id: token.id.clone(),
                account_id: token.account_id.clone(),
                outcome: Outcome::BadJwt,
                at: now,
            });
            return Ok(Verdict::bare(Outcome::BadJwt));
        }
    };
    if !claims.user_ip.is_empty() {
        let bound: Option<IpAddr> = claims.user_ip.parse().ok();
        if check.client_ip.is_none() || check.client_ip != bound {
            return Ok(refuse(meter, token, Outcome::IpNotAllowed, now));
        }
    }
    let use_ = JwtUse {
        jwt_id: claims.id,
        limit: claims.request_count,
        expires_at: DateTime::from_timestamp(claims.valid_until, 0).unwrap_or(now),
    };
    decide_and_consume(ctx, meter, token, check, Some(use_)).await
}

fn refuse(
    meter: &Meter,
    token: Token,
    outcome: Outcome,
    now: chrono::DateTime<chrono::Utc>,
) -> Verdict {
    meter.record_denial(Denial {
        token_id: token.id.clone(),
        account_id: token.account_id.clone(),
        outcome,
        at: now,
    });
    Verdict {
        outcome,
        remaining: token.remaining,
        calls_this_month: token.calls_this_month(now),
        token: Some(token),
    }
}

async fn decide_and_consume(
    ctx: &Ctx,
    meter: &Meter,
    token: Token,
    check: &Check,
    jwt: Option<JwtUse>,
) -> Result<Verdict, StoreError> {
    let now = ctx.clock.now();
    let Some(account) = ctx.store.account(&token.account_id).await? else {
        return Ok(Verdict::bare(Outcome::NotFound));
    };
    let outcome = decide(&token, &AccountState::of(&account), check, now);
    if outcome != Outcome::Valid {
        return Ok(refuse(meter, token, outcome, now));
    }
    let consumed = meter
        .consume(Consume {
            token_id: token.id.clone(),
            account_id: token.account_id.clone(),
            cost: check.cost,
            ip: check.client_ip.map(|ip| ip.to_string()),
            now,
            jwt,
        })
        .await?;
    Ok(match consumed {
        Consumed::Ok {
            remaining,
            calls_this_month,
        } => Verdict {
            outcome: Outcome::Valid,
            remaining,
            calls_this_month,
            token: Some(token),
        },
        Consumed::Denied(o) => Verdict {
            outcome: o,
            remaining: token.remaining,
            calls_this_month: token.calls_this_month(now),
            token: Some(token),
        },
    })
}
