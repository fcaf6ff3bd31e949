//! One verification end to end: parse the presented token, look it up, decide, and consume
//! through the meter.

use super::{decide, meter::Meter, AccountState, Check, Outcome};
use crate::admin::Ctx;
use crate::domain::credential::{self, hashes_match, Presented};
use crate::store::{Consume, Consumed, Denial, StoreError, Token};

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
    fn bare(outcome: Outcome) -> Self {
        Verdict {
            outcome,
            token: None,
            remaining: None,
            calls_this_month: 0,
        }
    }
}

/// Verifies `presented` for `check`, consuming its cost when valid. A store error is returned
/// as an error (answered 503), never as a verdict.
pub async fn verify(
    ctx: &Ctx,
    meter: &Meter,
    presented: &str,
    check: &Check,
) -> Result<Verdict, StoreError> {
    let now = ctx.clock.now();
    let (id, hash) = match credential::parse(&ctx.config.tokens.prefix, presented.trim()) {
        Ok(Presented::Token { id, hash }) => (id, hash),
        _ => return Ok(Verdict::bare(Outcome::Malformed)),
    };
    let Some(token) = ctx.store.token(&id).await? else {
        return Ok(Verdict::bare(Outcome::NotFound));
    };
    let in_grace = match (&token.prev_secret_hash, token.prev_secret_valid_until) {
        (Some(prev), Some(until)) => now < until && hashes_match(&hash, prev),
        _ => false,
    };
    if !hashes_match(&hash, &token.secret_hash) && !in_grace {
        return Ok(Verdict::bare(Outcome::NotFound));
    }
    let Some(account) = ctx.store.account(&token.account_id).await? else {
        return Ok(Verdict::bare(Outcome::NotFound));
    };
    let outcome = decide(&token, &AccountState::of(&account), check, now);
    if outcome != Outcome::Valid {
        meter.record_denial(Denial {
            token_id: token.id.clone(),
            account_id: token.account_id.clone(),
            outcome,
            at: now,
        });
        return Ok(Verdict {
            outcome,
            remaining: token.remaining,
            calls_this_month: token.calls_this_month(now),
            token: Some(token),
        });
    }
    let consumed = meter
        .consume(Consume {
            token_id: token.id.clone(),
            account_id: token.account_id.clone(),
            cost: check.cost,
            ip: check.client_ip.map(|ip| ip.to_string()),
            now,
            jwt: None,
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
