//! One verification end to end: parse what was presented (a token, or a JWT signed with one)
//! and hand it to the meter, whose writer decides it against the store under a lock and consumes
//! it when valid. No per-call store read happens outside that batch.

use super::{jwt, meter::Meter, Check, Outcome};
use crate::admin::Ctx;
use crate::domain::credential::{self, Presented};
use crate::store::{Consume, Decided, Denial, JwtUse, StoreError, Token};
use chrono::{DateTime, Utc};
use std::net::IpAddr;

/// The result of a verification.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What was decided.
    pub outcome: Outcome,
    /// The token, once identified (also for most refusals), as it stands after this call.
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

    fn of(d: Decided, now: DateTime<Utc>) -> Self {
        match d.token {
            Some(t) => Verdict {
                outcome: d.outcome,
                remaining: t.remaining,
                calls_this_month: t.calls_this_month(now),
                token: Some(t),
            },
            None => Verdict::bare(d.outcome),
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
    let decided = meter
        .consume(Consume {
            token_id: id,
            secret_hash: Some(hash),
            check: check.clone(),
            now,
            jwt: None,
        })
        .await?;
    Ok(Verdict::of(decided, now))
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
    let claims = match signature_check(ctx, &token, presented, now) {
        Ok(c) => c,
        Err(_) => {
            if token.jwt_enabled {
                // A known signer: count the refusal against it.
                meter.record_denial(Denial {
                    token_id: token.id.clone(),
                    account_id: token.account_id.clone(),
                    outcome: Outcome::BadJwt,
                    at: now,
                });
            }
            return Ok(Verdict::bare(Outcome::BadJwt));
        }
    };
    if !claims.user_ip.is_empty() {
        let bound: Option<IpAddr> = claims.user_ip.parse().ok();
        if check.client_ip.is_none() || check.client_ip != bound {
            meter.record_denial(Denial {
                token_id: token.id.clone(),
                account_id: token.account_id.clone(),
                outcome: Outcome::IpNotAllowed,
                at: now,
            });
            return Ok(Verdict {
                outcome: Outcome::IpNotAllowed,
                remaining: token.remaining,
                calls_this_month: token.calls_this_month(now),
                token: Some(token),
            });
        }
    }
    let decided = meter
        .consume(Consume {
            token_id: token.id.clone(),
            secret_hash: None,
            check: check.clone(),
            now,
            jwt: Some(JwtUse {
                jwt_id: claims.id,
                limit: claims.request_count,
                expires_at: DateTime::from_timestamp(claims.valid_until, 0).unwrap_or(now),
            }),
        })
        .await?;
    Ok(Verdict::of(decided, now))
}

/// Opens the signer's sealed secret and checks the JWT with it.
fn signature_check(
    ctx: &Ctx,
    token: &Token,
    presented: &str,
    now: DateTime<Utc>,
) -> Result<jwt::Claims, jwt::JwtError> {
    let (Some(sealed), true) = (&token.sealed_secret, token.jwt_enabled) else {
        return Err(jwt::JwtError::Malformed);
    };
    let key = ctx.master_key.open(sealed, &token.id).map_err(|e| {
        tracing::error!(token = %token.id, error = %e, "cannot open a JWT signer's sealed secret");
        jwt::JwtError::Malformed
    })?;
    jwt::check(
        presented,
        &key,
        now,
        ctx.config.tokens.max_jwt_lifetime_seconds,
    )
}
