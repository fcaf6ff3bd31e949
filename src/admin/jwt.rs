//! Short-lived JWTs, minted with a JWT-enabled token presented in full.

use super::*;

/// `POST /v1/jwt`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintJwt {
    /// The JWT-enabled token to sign with (it is the HMAC key).
    #[schema(required = true, schema_with = schema::any_text)]
    pub token: Option<String>,
    /// Uses the JWT allows, 1 to 999999999 (default 1).
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(schema_with = uses_or_null)]
    pub request_count: Option<i64>,
    /// Seconds until it expires, 1 to `tokens.max_jwt_lifetime_seconds` (default 300, or that
    /// maximum if lower).
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(schema_with = lifetime_or_null)]
    pub lifetime_seconds: Option<i64>,
    /// The only client IP that may use it; absent, `null` or blank = any.
    #[schema(schema_with = user_ip)]
    pub user_ip: Option<String>,
}

fn uses_or_null() -> utoipa::openapi::schema::Object {
    schema::int_or_null(1, limits::MAX_USAGE_LIMIT)
}

fn lifetime_or_null() -> utoipa::openapi::schema::Object {
    schema::int_or_null(1, limits::MAX_LIFETIME_SECONDS)
}

fn user_ip() -> utoipa::openapi::schema::Object {
    schema::ip_or_null(true)
}

/// Mints a short-lived JWT signed with a JWT-enabled token presented in full. Minting consumes
/// nothing; each use of the JWT does.
pub async fn mint_jwt(ctx: &Ctx, input: MintJwt) -> Result<(String, crate::verify::jwt::Claims)> {
    let now = ctx.clock.now();
    let max = ctx.config.tokens.max_jwt_lifetime_seconds;
    let presented = input
        .token
        .ok_or_else(|| ParseError::new("token", "is required"))?;
    let request_count = limits::usage_limit(input.request_count.unwrap_or(1), "request_count")?;
    let lifetime = limits::lifetime(
        input.lifetime_seconds.unwrap_or(300.min(max)),
        max,
        "lifetime_seconds",
    )?;
    let user_ip = match input.user_ip.as_deref().map(str::trim) {
        None | Some("") => String::new(),
        Some(ip) => ip
            .parse::<IpAddr>()
            .map_err(|_| ParseError::new("user_ip", format!("`{ip}` is not an IP address")))?
            .to_string(),
    };
    let (id, hash) = match credential::parse(&ctx.config.tokens.prefix, presented.trim()) {
        Ok(Presented::Token { id, hash }) => (id, hash),
        _ => return Err(Error::BadToken("malformed")),
    };
    let (token, _) = usable_token(ctx, &id, &hash, now).await?;
    if !token.jwt_enabled {
        return Err(Error::Forbidden(
            "this token may not sign JWTs (create it with \"jwt\": true)".into(),
        ));
    }
    // Never valid past the signing token's own expiry.
    let until = token
        .expires_at
        .map_or(now + lifetime, |e| e.min(now + lifetime));
    let claims = crate::verify::jwt::Claims {
        id: ids::random_id(8),
        request_count,
        valid_until: until.timestamp(),
        user_ip,
        api_key: token.id.clone(),
        role: Some(token.effective_role()),
    };
    let jwt = crate::verify::jwt::sign(&claims, presented.trim().as_bytes())
        .map_err(|e| Error::Store(StoreError::Other(format!("cannot sign a JWT: {e}"))))?;
    Ok((jwt, claims))
}
