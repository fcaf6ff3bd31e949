//! One verification end to end: parse what was presented (a token, or a JWT signed with one)
//! and hand it to the meter, whose writer decides it against the store as its batch commits and
//! consumes it when valid. No per-call store read happens outside that batch.

use super::{jwt, meter::Meter, Check, Outcome};
use crate::clock::SharedClock;
use crate::domain::credential::{self, Presented};
use crate::domain::model::Token;
use crate::domain::plan::{Consume, Denial, JwtUse};
use crate::domain::rate::Standing;
use crate::domain::state::TokenState;
use crate::seal::MasterKey;
use crate::store::{Store, StoreError};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The result of a verification.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// What was decided.
    pub outcome: Outcome,
    /// The token, once identified (also for most refusals), as it stands after this call.
    pub token: Option<Arc<TokenState>>,
    /// The instant of the check: what "this month" means for the token's counter.
    pub at: DateTime<Utc>,
    /// Where the call stands against the tightest rate limit that applied, if one did.
    pub rate: Option<Standing>,
}

impl Verdict {
    /// A verdict that identifies no token.
    pub fn bare(outcome: Outcome, at: DateTime<Utc>) -> Self {
        Verdict {
            outcome,
            token: None,
            at,
            rate: None,
        }
    }

    /// The token's uses this month, this call included.
    pub fn calls_this_month(&self) -> Option<i64> {
        self.token.as_ref().map(|t| t.calls_this_month(self.at))
    }
}

/// What a verification needs: the meter that decides and counts, the store (a JWT's signer), the
/// clock, the master key (the signer's sealed secret) and the limits it checks.
#[derive(Clone)]
pub struct Verifier {
    /// Decides and counts calls.
    pub meter: Meter,
    /// Where a JWT's signer is read.
    pub store: Store,
    /// Source of "now".
    pub clock: SharedClock,
    /// Opens the sealed secrets of JWT-signing tokens.
    pub master_key: Arc<MasterKey>,
    /// The token prefix (`tokens.prefix`).
    pub prefix: Arc<str>,
    /// The longest JWT lifetime accepted (`tokens.max_jwt_lifetime_seconds`).
    pub max_jwt_lifetime_seconds: i64,
    /// Accounts' ApiKeys by account id, read once each: a key never changes.
    pub api_keys: Arc<std::sync::RwLock<HashMap<String, String>>>,
}

/// ApiKeys remembered at most; past it the map starts again.
const MAX_API_KEYS: usize = 100_000;

impl Verifier {
    /// The ApiKey of account `id` (`None`: no such account).
    async fn api_key_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        let known = self.api_keys.read().ok().and_then(|m| m.get(id).cloned());
        if known.is_some() {
            return Ok(known);
        }
        let key = self.store.account_api_key(id).await?;
        if let (Some(k), Ok(mut m)) = (&key, self.api_keys.write()) {
            if m.len() >= MAX_API_KEYS {
                m.clear();
            }
            m.insert(id.to_string(), k.clone());
        }
        Ok(key)
    }
}

/// Verifies `presented` (a token, an account secret, or a JWT signed with either) for `check`,
/// consuming its cost when valid. A store error is returned as an error (answered 503), never
/// as a verdict.
pub async fn verify(v: &Verifier, presented: &str, check: &Check) -> Result<Verdict, StoreError> {
    verify_keyed(v, presented, None, check).await
}

/// `verify`, for an account secret given with the account's ApiKey (HTTP Basic): the key must be
/// that account's, or the secret is not found.
pub async fn verify_keyed(
    v: &Verifier,
    presented: &str,
    api_key: Option<&str>,
    check: &Check,
) -> Result<Verdict, StoreError> {
    let presented = presented.trim();
    if jwt::looks_like_jwt(presented) {
        return verify_jwt(v, presented, check).await;
    }
    let now = v.clock.now();
    let (id, hash, secret) = match credential::parse(&v.prefix, presented) {
        Ok(Presented::Token { id, hash }) => (id, hash, false),
        // The account's key row holds the secret's hash: the call is decided and counted as the
        // key's, under the account's quota and rate limit.
        Ok(Presented::AccountSecret { account_id, hash }) => {
            let key = match api_key {
                Some(k) => Some(k.to_string()),
                None => v.api_key_of(&account_id).await?,
            };
            let Some(key) = key else {
                return Ok(Verdict::bare(Outcome::NotFound, now));
            };
            (key, hash, true)
        }
        _ => return Ok(Verdict::bare(Outcome::Malformed, now)),
    };
    let decided = v
        .meter
        .consume(Consume {
            token_id: id,
            secret_hash: Some(hash),
            check: check.clone(),
            now,
            jwt: None,
            decided: false,
        })
        .await?;
    Ok(Verdict {
        outcome: secret_outcome(decided.outcome, secret),
        token: decided.token,
        at: now,
        rate: decided.rate,
    })
}

/// A key row is revoked while its account's secret calls are off: said so for its calls.
fn secret_outcome(outcome: Outcome, account_key: bool) -> Outcome {
    match outcome {
        Outcome::Revoked if account_key => Outcome::SecretCallsOff,
        o => o,
    }
}

async fn verify_jwt(v: &Verifier, presented: &str, check: &Check) -> Result<Verdict, StoreError> {
    let now = v.clock.now();
    let Ok(unverified) = jwt::peek(presented) else {
        return Ok(Verdict::bare(Outcome::BadJwt, now));
    };
    let Some(token) = v.store.token(&unverified.api_key).await? else {
        return Ok(Verdict::bare(Outcome::BadJwt, now));
    };
    let claims = match signature_check(v, &token, presented, now) {
        Ok(c) => c,
        // A known signer: count the refusal against it.
        Err(_) if token.jwt_enabled => return Ok(refuse_bad_jwt(&v.meter, &token, now)),
        Err(_) => return Ok(Verdict::bare(Outcome::BadJwt, now)),
    };
    // The address is checked in the batch, after revoked, expired and inactive account
    // (`jwt::check` refused a UserIp that is not an address).
    let bound_ip = claims.user_ip.trim().parse::<IpAddr>().ok();
    let decided = v
        .meter
        .consume(Consume {
            token_id: token.id.clone(),
            // Checked again under the batch's lock, so a regeneration that commits after the
            // signature check above retires this JWT too (its grace period, when it has one,
            // still admits it for those milliseconds).
            secret_hash: Some(token.secret_hash.clone()),
            check: Check {
                bound_ip,
                ..check.clone()
            },
            now,
            jwt: Some(JwtUse {
                jwt_id: claims.id,
                limit: claims.request_count,
                expires_at: DateTime::from_timestamp(claims.valid_until, 0).unwrap_or(now),
            }),
            decided: false,
        })
        .await?;
    // The signer's secret changed under it: the JWT's signature is no longer good.
    if decided.outcome == Outcome::NotFound {
        return Ok(refuse_bad_jwt(&v.meter, &token, now));
    }
    Ok(Verdict {
        outcome: secret_outcome(decided.outcome, token.account_key),
        token: decided.token,
        at: now,
        rate: decided.rate,
    })
}

/// A bad JWT of a known signer, refused before the batch and counted in the statistics with the
/// next one. The answer does not name the token: the JWT's signature or claims are not good.
fn refuse_bad_jwt(meter: &Meter, token: &Token, now: DateTime<Utc>) -> Verdict {
    meter.record_denial(Denial {
        token_id: token.id.clone(),
        account_id: token.account_id.clone(),
        outcome: Outcome::BadJwt,
        at: now,
    });
    Verdict::bare(Outcome::BadJwt, now)
}

/// Opens the signer's sealed secret and checks the JWT with it.
fn signature_check(
    v: &Verifier,
    token: &Token,
    presented: &str,
    now: DateTime<Utc>,
) -> Result<jwt::Claims, jwt::JwtError> {
    let (Some(sealed), true) = (&token.sealed_secret, token.jwt_enabled) else {
        return Err(jwt::JwtError::Malformed);
    };
    let key = v.master_key.open(sealed, &token.id).map_err(|e| {
        tracing::error!(token = %token.id, error = %e, "cannot open a JWT signer's sealed secret");
        jwt::JwtError::Malformed
    })?;
    jwt::check(presented, &key, now, v.max_jwt_lifetime_seconds)
}
