//! One verification end to end: parse what was presented (a token or a JWT signed with one),
//! look the token up, decide, and consume through the meter.

use super::{cache::Snapshot, decide, jwt, meter::Meter, AccountState, Check, Outcome};
use crate::admin::Ctx;
use crate::domain::credential::{self, hashes_match, Presented};
use crate::store::{Consume, Consumed, Denial, JwtUse, StoreError, Token};
use chrono::DateTime;
use std::{net::IpAddr, sync::Arc};

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
    let matches = |t: &Token| {
        // During a regeneration grace period the previous secret still verifies calls.
        let in_grace = match (&t.prev_secret_hash, t.prev_secret_valid_until) {
            (Some(prev), Some(until)) => now < until && hashes_match(&hash, prev),
            _ => false,
        };
        hashes_match(&hash, &t.secret_hash) || in_grace
    };
    let Some(mut snap) = load(ctx, meter, &id, false).await? else {
        return Ok(Verdict::bare(Outcome::NotFound));
    };
    if !matches(&snap.token) {
        // The cached secret may be older than a regeneration on another daemon: ask the store.
        match load(ctx, meter, &id, true).await? {
            Some(fresh) if matches(&fresh.token) => snap = fresh,
            _ => return Ok(Verdict::bare(Outcome::NotFound)),
        }
    }
    decide_and_consume(ctx, meter, &snap, check, None, Some(hash)).await
}

/// Token and account state for the pre-check: from the cache when it is current, else from the
/// store (then cached).
async fn load(
    ctx: &Ctx,
    meter: &Meter,
    id: &str,
    fresh: bool,
) -> Result<Option<Arc<Snapshot>>, StoreError> {
    let generation = ctx.store.generation();
    if !fresh {
        if let Some(s) = meter.cache.get(id, generation) {
            return Ok(Some(s));
        }
    }
    let Some(token) = ctx.store.token(id).await? else {
        return Ok(None);
    };
    let Some(account) = ctx.store.account(&token.account_id).await? else {
        return Ok(None);
    };
    let snap = Arc::new(Snapshot {
        token,
        account: AccountState::of(&account),
    });
    meter.cache.put(id, snap.clone(), generation);
    Ok(Some(snap))
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
    let Some(mut snap) = load(ctx, meter, &unverified.api_key, false).await? else {
        return Ok(Verdict::bare(Outcome::BadJwt));
    };
    let max = ctx.config.tokens.max_jwt_lifetime_seconds;
    let mut checked = signature_check(ctx, &snap.token, presented, now, max);
    if checked == Err(jwt::JwtError::Signature) {
        // The cached signer may be older than a regeneration on another daemon: ask the store.
        if let Some(fresh) = load(ctx, meter, &unverified.api_key, true).await? {
            checked = signature_check(ctx, &fresh.token, presented, now, max);
            snap = fresh;
        }
    }
    let token = &snap.token;
    let claims = match checked {
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
            return Ok(refuse(meter, token.clone(), Outcome::IpNotAllowed, now));
        }
    }
    let use_ = JwtUse {
        jwt_id: claims.id,
        limit: claims.request_count,
        expires_at: DateTime::from_timestamp(claims.valid_until, 0).unwrap_or(now),
    };
    decide_and_consume(ctx, meter, &snap, check, Some(use_), None).await
}

/// Opens the signer's sealed secret and checks the JWT with it.
fn signature_check(
    ctx: &Ctx,
    token: &Token,
    presented: &str,
    now: chrono::DateTime<chrono::Utc>,
    max_lifetime: i64,
) -> Result<jwt::Claims, jwt::JwtError> {
    let (Some(sealed), true) = (&token.sealed_secret, token.jwt_enabled) else {
        return Err(jwt::JwtError::Malformed);
    };
    let key = ctx.master_key.open(sealed, &token.id).map_err(|e| {
        tracing::error!(token = %token.id, error = %e, "cannot open a JWT signer's sealed secret");
        jwt::JwtError::Malformed
    })?;
    jwt::check(presented, &key, now, max_lifetime)
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
    snap: &Snapshot,
    check: &Check,
    jwt: Option<JwtUse>,
    secret_hash: Option<Vec<u8>>,
) -> Result<Verdict, StoreError> {
    let now = ctx.clock.now();
    let token = snap.token.clone();
    let outcome = decide(&token, &snap.account, check, now);
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
            secret_hash,
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
        // The secret changed under us (regenerated elsewhere): nothing to identify.
        Consumed::Denied {
            outcome: Outcome::NotFound,
            ..
        } => Verdict::bare(Outcome::NotFound),
        Consumed::Denied {
            outcome,
            remaining,
            calls_this_month,
        } => Verdict {
            outcome,
            remaining,
            calls_this_month,
            token: Some(token),
        },
    })
}
