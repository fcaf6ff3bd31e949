//! Short-lived JWTs (HS256) signed with a JWT-enabled token: the token itself is the HMAC key,
//! and the claims are the seeds' `Id`, `RequestCount`, `ValidUntil`, `UserIp` and `ApiKey` (the
//! signing token's public id), and the signer's `Role`.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The claims of a tokenwarden JWT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct Claims {
    /// A random id of this JWT (the seeds use 8 alphanumerics); its uses are counted under it.
    pub id: String,
    /// Uses this JWT allows.
    pub request_count: i64,
    /// Unix time after which it is refused.
    pub valid_until: i64,
    /// The only client IP that may use it; empty = any.
    #[serde(default)]
    pub user_ip: String,
    /// The signing token's public id.
    pub api_key: String,
    /// The role the signing token acted with when it signed (its own, capped by its user's).
    /// Informative only: whoever holds the token can sign any claims, so verification reports
    /// the signing token's role at the moment of the call, never this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::domain::role::Role>,
}

/// Why a JWT was refused before any token check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with JSON claims of the right shape.
    #[error("malformed JWT")]
    Malformed,
    /// The signature does not match the signing token.
    #[error("bad signature")]
    Signature,
    /// `ValidUntil` has passed.
    #[error("expired")]
    Expired,
    /// Valid for longer than the configured maximum, or claims out of range.
    #[error("claims out of range")]
    OutOfRange,
}

/// Whether `s` has the shape of a JWT rather than of a token.
pub fn looks_like_jwt(s: &str) -> bool {
    s.bytes().filter(|b| *b == b'.').count() == 2
}

/// Reads the claims without checking the signature, to find the signing token.
pub fn peek(jwt: &str) -> Result<Claims, JwtError> {
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| JwtError::Malformed)?;
    if header.alg != Algorithm::HS256 {
        return Err(JwtError::Malformed);
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(jwt).map_err(|_| JwtError::Malformed)
}

/// Checks the signature with `key` (the plain signing token) and the claims against `now`;
/// `max_lifetime` bounds how far ahead `ValidUntil` may lie, so self-signed JWTs stay short-lived.
pub fn check(
    jwt: &str,
    key: &[u8],
    now: DateTime<Utc>,
    max_lifetime: i64,
) -> Result<Claims, JwtError> {
    let mut v = Validation::new(Algorithm::HS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<Claims>(jwt, &DecodingKey::from_secret(key), &v)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => JwtError::Signature,
            _ => JwtError::Malformed,
        })?
        .claims;
    let id_ok = !claims.id.is_empty()
        && claims.id.len() <= 64
        && claims
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok || !(1..=crate::domain::limits::MAX_USAGE_LIMIT).contains(&claims.request_count) {
        return Err(JwtError::OutOfRange);
    }
    if !claims.user_ip.is_empty() && claims.user_ip.parse::<IpAddr>().is_err() {
        return Err(JwtError::OutOfRange);
    }
    if claims.valid_until <= now.timestamp() {
        return Err(JwtError::Expired);
    }
    if claims.valid_until > now.timestamp() + max_lifetime {
        return Err(JwtError::OutOfRange);
    }
    Ok(claims)
}

/// Signs `claims` with `key` (the plain signing token).
pub fn sign(claims: &Claims, key: &[u8]) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            id: "8A4MpB1P".into(),
            request_count: 1,
            valid_until: now().timestamp() + 60,
            user_ip: String::new(),
            api_key: "AbCdEf12".into(),
            role: None,
        }
    }

    #[test]
    fn signed_claims_check_back_and_tampering_does_not() {
        let jwt = sign(&claims(), b"tw_secret").unwrap();
        assert!(looks_like_jwt(&jwt));
        assert_eq!(peek(&jwt).unwrap().api_key, "AbCdEf12");
        assert_eq!(check(&jwt, b"tw_secret", now(), 3600), Ok(claims()));
        assert_eq!(
            check(&jwt, b"tw_other", now(), 3600),
            Err(JwtError::Signature)
        );
        let mut parts: Vec<String> = jwt.split('.').map(String::from).collect();
        let mut c = claims();
        c.request_count = 1000;
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&c).unwrap(),
        );
        assert_eq!(
            check(&parts.join("."), b"tw_secret", now(), 3600),
            Err(JwtError::Signature)
        );
        assert_eq!(
            check(
                &jwt,
                b"tw_secret",
                now() + chrono::TimeDelta::seconds(60),
                3600
            ),
            Err(JwtError::Expired)
        );
        assert_eq!(
            check(&jwt, b"tw_secret", now(), 30),
            Err(JwtError::OutOfRange)
        );
        assert_eq!(check("a.b.c", b"k", now(), 30), Err(JwtError::Malformed));
        assert!(peek("nope").is_err());
    }
}
