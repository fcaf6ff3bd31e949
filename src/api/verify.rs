//! Verification over HTTP: `POST /v1/verify` (JSON) and `GET /v1/auth`, the same check for
//! reverse proxies (nginx `auth_request`, Traefik ForwardAuth, Envoy ext_authz).

use super::error::{ApiError, ErrorBody};
use super::extract::Body;
use super::AppState;
use crate::domain::rate::Standing;
use crate::domain::schema;
use crate::verify::{service, service::Verdict, Check, Outcome};
use axum::{
    extract::{ConnectInfo, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use base64::Engine;
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// `POST /v1/verify`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The token (or a JWT signed with one) presented by the client.
    #[schema(required = true, schema_with = schema::any_text)]
    pub token: Option<String>,
    /// The call being made, checked against the token's scopes: 1 to 256 characters.
    #[schema(schema_with = call)]
    pub call: Option<String>,
    /// The end client's IP, checked against the token's allowed IPs.
    #[schema(schema_with = client_ip)]
    pub client_ip: Option<String>,
    /// Uses this call consumes, 1 to 1000000 (default 1).
    #[serde(default, deserialize_with = "crate::patch::whole::option")]
    #[schema(schema_with = cost)]
    pub cost: Option<i64>,
}

fn call() -> utoipa::openapi::schema::Object {
    schema::short_text(256, true)
}

fn client_ip() -> utoipa::openapi::schema::Object {
    schema::ip_or_null(false)
}

fn cost() -> utoipa::openapi::schema::Object {
    schema::int_or_null(1, crate::domain::verdict::MAX_COST)
}

/// The answer to a verification: 200 whatever the outcome.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyAnswer {
    /// Numeric code of the outcome (2005 when valid).
    pub code: u32,
    /// Whether the call may proceed.
    pub valid: bool,
    /// The outcome's word.
    pub result: Outcome,
    /// The token's id, once identified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<String>,
    /// Its account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// The role it acts with, for the protected service to authorise on: its own, capped by
    /// its user's current role.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Its scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Uses left after this call (null = unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<Option<i64>>,
    /// Expiry (UTC), null = never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Option<String>>,
    /// Uses this month after this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls_this_month: Option<i64>,
    /// Where the call stands against the tightest rate limit of the token or its account,
    /// when one applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateStanding>,
}

/// A call's standing against a rate limit.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RateStanding {
    /// Calls allowed per window.
    pub limit: u32,
    /// Calls left in this window after this one.
    pub remaining: u32,
    /// When the window ends (UTC, RFC 3339): calls may come again then.
    pub reset_at: String,
}

impl From<Standing> for RateStanding {
    fn from(s: Standing) -> Self {
        RateStanding {
            limit: s.limit,
            remaining: s.remaining,
            reset_at: chrono::DateTime::from_timestamp(s.reset_at, 0)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                .unwrap_or_default(),
        }
    }
}

impl From<&Verdict> for VerifyAnswer {
    fn from(v: &Verdict) -> Self {
        let t = v.token.as_ref();
        VerifyAnswer {
            code: v.outcome.code().number(),
            valid: v.outcome == Outcome::Valid,
            result: v.outcome,
            token_id: t.map(|t| t.id.to_string()),
            account_id: t.map(|t| t.account_id.to_string()),
            role: t.map(|t| t.effective_role().to_string()),
            scopes: t.map(|t| crate::domain::scope::to_strings(t.scopes())),
            remaining: t.map(|t| t.remaining),
            expires_at: t.map(|t| {
                t.expires_at
                    .map(|e| e.to_rfc3339_opts(SecondsFormat::AutoSi, true))
            }),
            calls_this_month: v.calls_this_month(),
            rate_limit: v.rate.map(RateStanding::from),
        }
    }
}

/// Verify a token for one call, consuming its cost when valid. Answers 200 whatever the outcome;
/// 503 only when the store cannot be reached (never VALID then).
#[utoipa::path(post, path = "/v1/verify", tag = "verification", request_body = VerifyRequest,
    responses((status = 200, body = VerifyAnswer), (status = "4XX", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn verify(
    State(s): State<AppState>,
    Body(req): Body<VerifyRequest>,
) -> Result<Json<VerifyAnswer>, ApiError> {
    let token = req
        .token
        .ok_or_else(|| crate::domain::ParseError::new("token", "is required"))?;
    let check = Check::parse(req.call, req.client_ip.as_deref(), req.cost)?;
    let verdict = measured(service::verify(&s.verifier, &token, &check)).await?;
    Ok(Json(VerifyAnswer::from(&verdict)))
}

/// Runs a verification, recording its outcome and latency (or the store error) in the metrics.
async fn measured(
    f: impl std::future::Future<Output = Result<Verdict, crate::store::StoreError>>,
) -> Result<Verdict, ApiError> {
    let start = std::time::Instant::now();
    match f.await {
        Ok(v) => {
            let span = tracing::Span::current();
            span.record("result", tracing::field::display(v.outcome.word()));
            if let Some(t) = &v.token {
                span.record("token_id", tracing::field::display(&t.id));
            }
            crate::metrics::verified(v.outcome, start.elapsed());
            Ok(v)
        }
        Err(e) => Err(ApiError::from_store(&e, "verify")),
    }
}

/// The credential of a forwarded request, and the ApiKey given with it: `Authorization: Bearer
/// <c>` or `APIKey <c>`; HTTP Basic as the seeds write it, `Basic <api_key> <secret>`, or
/// standard, `Basic base64(user:password)` (the password, with the user name as the ApiKey; or
/// the user name when the password is empty); else `Token=` or `Secret=` in the original URI.
pub fn forwarded_credential(
    headers: &HeaderMap,
    original: Option<&str>,
) -> Option<(String, Option<String>)> {
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some((scheme, rest)) = v.trim().split_once(' ') {
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey") {
                return nonempty(rest).map(|c| (c, None));
            }
            if scheme.eq_ignore_ascii_case("basic") {
                if let Some((key, secret)) = rest.split_once(char::is_whitespace) {
                    let secret = secret.trim();
                    return nonempty(secret).map(|c| (c, nonempty(key)));
                }
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(rest)
                    .ok()?;
                let pair = String::from_utf8(raw).ok()?;
                let (user, pass) = pair.split_once(':').unwrap_or((pair.as_str(), ""));
                return match pass {
                    "" => nonempty(user).map(|c| (c, None)),
                    p => Some((p.to_string(), nonempty(user))),
                };
            }
        }
    }
    let query = original?.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "Token" || k == "Secret")
        .map(|(_, v)| (v.into_owned(), None))
}

/// The original request's URI as the proxy forwarded it: `X-Original-URI` (nginx) or
/// `X-Forwarded-Uri` (Traefik). Proxies pass a client's own headers on, so when both are
/// present and differ (byte for byte), one of them is the client's and neither is believed.
/// Either header given twice is refused the same way: one line is the client's.
fn original_uri(headers: &HeaderMap) -> Result<Option<String>, crate::domain::ParseError> {
    for (name, field) in [
        ("x-original-uri", "X-Original-URI"),
        ("x-forwarded-uri", "X-Forwarded-Uri"),
    ] {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(crate::domain::ParseError::new(
                field,
                "given more than once, so one line came from the client: have the proxy set \
                 it, replacing the client's",
            ));
        }
    }
    let get = |h: &str| headers.get(h).map(HeaderValue::as_bytes);
    let uri = match (get("x-original-uri"), get("x-forwarded-uri")) {
        (Some(a), Some(b)) if a != b => {
            return Err(crate::domain::ParseError::new(
                "X-Original-URI",
                "differs from X-Forwarded-Uri, so one of them came from the client: have the \
                 proxy set one and clear the other",
            ))
        }
        (a, b) => a.or(b),
    };
    // A raw byte above 0x7F (nginx passes them through) cannot be in a scope; keep the rest.
    Ok(uri.map(|u| String::from_utf8_lossy(u).into_owned()))
}

/// The call of an original request URI, and the other readings of its path that the token's
/// scopes must allow too. Servers disagree on how to read a path: some resolve dot segments as
/// RFC 3986 says (`/convert//..//admin` is `/convert//admin`), some merge repeated slashes first
/// (then it is `/admin`), some decode every escape (`%2F` included), take `\` for `/` and drop
/// `;parameters` (`/convert/..%2fadmin` and `/convert/..;/admin` are `/admin`). Whichever the
/// upstream does, a path is allowed only when every reading is.
fn call_of(uri: &str) -> (String, Vec<String>) {
    let path = uri.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return (path.to_string(), Vec::new());
    }
    let resolved = url::Url::parse(&format!("http://host{path}"))
        .map(|u| u.path().to_string())
        .unwrap_or_else(|_| path.to_string());
    let mut others: Vec<String> = Vec::new();
    for decode in [false, true] {
        for merge in [false, true] {
            for from in [path, resolved.as_str()] {
                let r = reading(from, decode, merge);
                if r != resolved && !others.contains(&r) {
                    others.push(r);
                }
            }
        }
    }
    (resolved, others)
}

/// `path` as read by a server that (with `decode`) decodes escapes, takes `\` for `/` and drops
/// `;parameters`, (with `merge`) merges repeated slashes, and then resolves dot segments.
fn reading(path: &str, decode: bool, merge: bool) -> String {
    let decoded;
    let path = if decode {
        decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
        decoded.as_ref()
    } else {
        path
    };
    let separators: &[char] = if decode { &['/', '\\'] } else { &['/'] };
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    // The first piece is what precedes the leading slash: nothing.
    for segment in path.split(separators).skip(1) {
        let segment = if decode {
            segment.split(';').next().unwrap_or("")
        } else {
            segment
        };
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "." => {}
            "" if merge => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    if trailing_slash && segments.last().is_some_and(|s| !s.is_empty()) {
        segments.push("");
    }
    format!("/{}", segments.join("/"))
}

fn header(name: &'static str, v: &str) -> Option<(HeaderName, HeaderValue)> {
    HeaderValue::from_str(v)
        .ok()
        .map(|v| (HeaderName::from_static(name), v))
}

/// Forward auth: 200 with identity headers when the forwarded request may proceed, else 401,
/// 403 or 429 with the outcome. The call checked against scopes is the original URI's path
/// (dot segments resolved), or `X-Tokenwarden-Call` when `server.trust_call_header` is on; the
/// cost is `X-Tokenwarden-Cost` (default 1). Any method is answered, so is a path after
/// `/v1/auth` (Envoy ext_authz); the OpenAPI document lists every method of both paths.
#[utoipa::path(get, path = "/v1/auth", tag = "verification",
    responses((status = 200, description = "valid; identity in X-Tokenwarden-* headers"),
              (status = 401, body = VerifyAnswer), (status = 403, body = VerifyAnswer),
              (status = 429, body = VerifyAnswer), (status = 503, body = ErrorBody)))]
pub async fn forward_auth(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let original = original_uri(&headers)?;
    forwarded(&s, peer, &headers, original).await
}

/// Forward auth with the original request's path and query after `/v1/auth`, for any method:
/// Envoy's ext_authz HTTP service (`path_prefix: /v1/auth`) sends the original method and URI
/// that way. The path is the proxy's, so it is believed before any URI header.
pub async fn forward_auth_path(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pq = uri.path_and_query().map_or("", |p| p.as_str());
    let original = pq.strip_prefix("/v1/auth").unwrap_or(pq).to_string();
    forwarded(&s, peer, &headers, Some(original)).await
}

/// The check behind both forward-auth routes; `original` is the original request's URI.
async fn forwarded(
    s: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    original: Option<String>,
) -> Result<Response, ApiError> {
    let ip = super::extract::client_ip(peer.ip(), headers, &s.ctx.config.trusted_proxies);
    let named = headers
        .get("x-tokenwarden-call")
        .filter(|_| s.ctx.config.trust_call_header)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cost = match headers
        .get("x-tokenwarden-cost")
        .and_then(|v| v.to_str().ok())
    {
        Some(c) => Some(c.trim().parse::<i64>().map_err(|_| {
            crate::domain::ParseError::new("X-Tokenwarden-Cost", "must be a whole number")
        })?),
        None => None,
    };
    let parsed = Check::parse(named, None, cost).map_err(|mut e| {
        e.field = match e.field.as_str() {
            "cost" => "X-Tokenwarden-Cost",
            _ => "X-Tokenwarden-Call",
        }
        .into();
        e
    })?;
    // A path taken from the URI has no length limit of its own: the proxy accepted it.
    let (call, other_readings) = match (parsed.call, original.as_deref().map(call_of)) {
        (Some(named), _) => (Some(named), Vec::new()),
        (None, Some((path, others))) if !path.is_empty() => (Some(path), others),
        (None, _) => (None, Vec::new()),
    };
    let check = Check {
        call,
        other_readings,
        client_ip: ip,
        cost: parsed.cost,
        bound_ip: None,
    };
    let verdict = match forwarded_credential(headers, original.as_deref()) {
        Some((c, key)) => {
            measured(service::verify_keyed(
                &s.verifier,
                &c,
                key.as_deref(),
                &check,
            ))
            .await?
        }
        // Counted like any verification: behind a proxy this is the commonest refusal.
        None => {
            let bare = Verdict::bare(Outcome::Malformed, s.ctx.clock.now());
            measured(std::future::ready(Ok(bare))).await?
        }
    };
    let answer = VerifyAnswer::from(&verdict);
    let status =
        StatusCode::from_u16(verdict.outcome.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let mut resp = if verdict.outcome == Outcome::Valid {
        status.into_response()
    } else {
        (status, Json(&answer)).into_response()
    };
    let h = resp.headers_mut();
    let remaining = verdict
        .token
        .as_ref()
        .and_then(|t| t.remaining)
        .map(|r| r.to_string())
        .unwrap_or_else(|| "unlimited".into());
    let pairs = [
        header("x-tokenwarden-result", verdict.outcome.word()),
        verdict
            .token
            .as_ref()
            .and_then(|t| header("x-tokenwarden-token-id", &t.id)),
        verdict
            .token
            .as_ref()
            .and_then(|t| header("x-tokenwarden-account-id", &t.account_id)),
        verdict
            .token
            .as_ref()
            .and_then(|t| header("x-tokenwarden-role", t.effective_role().as_str())),
        verdict.token.as_ref().and_then(|t| {
            header(
                "x-tokenwarden-scopes",
                &crate::domain::scope::to_strings(t.scopes()).join(" "),
            )
        }),
        verdict
            .token
            .as_ref()
            .and_then(|_| header("x-tokenwarden-remaining", &remaining)),
    ];
    for (k, v) in pairs.into_iter().flatten() {
        h.insert(k, v);
    }
    if let Some(r) = verdict.rate {
        // The conventional names (IETF draft, GitHub): Reset is the window's end in Unix
        // seconds; Retry-After, on a refusal, the seconds until then.
        let limit = [
            ("x-ratelimit-limit", r.limit.to_string()),
            ("x-ratelimit-remaining", r.remaining.to_string()),
            ("x-ratelimit-reset", r.reset_at.to_string()),
        ];
        for (k, v) in limit.into_iter().filter_map(|(k, v)| header(k, &v)) {
            h.insert(k, v);
        }
        if verdict.outcome == Outcome::RateLimited {
            let wait = (r.reset_at - verdict.at.timestamp()).max(1);
            if let Some((k, v)) = header("retry-after", &wait.to_string()) {
                h.insert(k, v);
            }
        }
    }
    if verdict.outcome == Outcome::NotFound || verdict.outcome == Outcome::Malformed {
        h.insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer realm=\"tokenwarden\""),
        );
    }
    Ok(resp)
}

/// `GET /v1/stats.csv` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// First UTC day (`YYYY-MM-DD` or `dd/MM/yyyy`); default the 1st of `to`'s month. The range
    /// spans fewer than 3660 days.
    #[param(schema_with = schema::day_filter)]
    pub from: Option<String>,
    /// Last UTC day, inclusive, not before `from`; default today.
    #[param(schema_with = schema::day_filter)]
    pub to: Option<String>,
    /// One account (operator only; others get their own).
    #[param(schema_with = schema::any_text)]
    pub account_id: Option<String>,
}

/// Per-token daily statistics as CSV: a header row, then one row per token and day with
/// successful calls, the uses they consumed, and denials by outcome.
#[utoipa::path(get, path = "/v1/stats.csv", tag = "verification", params(StatsQuery),
    responses((status = 200, description = "CSV", content_type = "text/csv"), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn stats_csv(
    State(s): State<AppState>,
    super::extract::Auth(p): super::extract::Auth,
    super::extract::Params(q): super::extract::Params<StatsQuery>,
) -> Result<Response, ApiError> {
    let (from, to) = crate::stats::range(
        q.from.as_deref(),
        q.to.as_deref(),
        s.ctx.clock.now().date_naive(),
    )?;
    let rows = crate::stats::rows(&s.ctx, &p, from, to, q.account_id.as_deref()).await?;
    let body = crate::stats::to_csv(&rows).map_err(|e| {
        ApiError::new(
            super::error::Code::Internal,
            format!("cannot write CSV: {e}"),
        )
    })?;
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"tokenwarden-stats.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// `GET /v1/stats` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsJsonQuery {
    /// First UTC day (`YYYY-MM-DD` or `dd/MM/yyyy`); default the 1st of `to`'s month. The range
    /// spans fewer than 3660 days.
    #[param(schema_with = schema::day_filter)]
    pub from: Option<String>,
    /// Last UTC day, inclusive, not before `from`; default today.
    #[param(schema_with = schema::day_filter)]
    pub to: Option<String>,
    /// One account (operator only; others get their own).
    #[param(schema_with = schema::any_text)]
    pub account_id: Option<String>,
    /// One token's rows only: a token id (8 letters or digits).
    #[param(schema_with = schema::token_id)]
    pub token_id: Option<String>,
    /// `token` (default: a row per token and day) or `account` (a row per account and day).
    #[param(schema_with = per)]
    pub per: Option<String>,
}

fn per() -> utoipa::openapi::schema::Object {
    schema::one_of(&["token", "account"])
}

/// Statistics as JSON.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsAnswer {
    /// 2002.
    pub code: u32,
    /// First day.
    pub from: String,
    /// Last day, inclusive.
    pub to: String,
    /// `token` or `account`.
    pub per: &'static str,
    /// One per token (or account) and day: `day`, `token_id` (per token), `account_id`, then
    /// `valid`, `cost` and each denial by outcome, named as the CSV's columns.
    #[schema(value_type = Vec<Object>)]
    pub rows: Vec<serde_json::Value>,
}

/// Per-token (or per-account) daily statistics as JSON: the numbers of `/v1/stats.csv`.
#[utoipa::path(get, path = "/v1/stats", tag = "verification", params(StatsJsonQuery),
    responses((status = 200, body = StatsAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn stats_json(
    State(s): State<AppState>,
    super::extract::Auth(p): super::extract::Auth,
    super::extract::Params(q): super::extract::Params<StatsJsonQuery>,
) -> Result<Json<StatsAnswer>, ApiError> {
    let (from, to) = crate::stats::range(
        q.from.as_deref(),
        q.to.as_deref(),
        s.ctx.clock.now().date_naive(),
    )?;
    let per = match q.per.as_deref() {
        None | Some("token") => "token",
        Some("account") => "account",
        Some(_) => {
            return Err(crate::domain::ParseError::new("per", "must be token or account").into())
        }
    };
    if q.token_id.as_deref().is_some_and(|t| {
        t.len() != crate::domain::ids::TOKEN_ID_LEN || !crate::domain::ids::is_base62(t)
    }) {
        return Err(crate::domain::ParseError::new("token_id", "is not a token id").into());
    }
    let mut rows = crate::stats::rows(&s.ctx, &p, from, to, q.account_id.as_deref()).await?;
    if let Some(t) = &q.token_id {
        rows.retain(|r| &r.token_id == t);
    }
    if per == "account" {
        rows = crate::stats::by_account(&rows);
    }
    Ok(Json(StatsAnswer {
        code: super::error::Code::Ok.number(),
        from: from.to_string(),
        to: to.to_string(),
        per,
        rows: rows.iter().map(crate::stats::to_json).collect(),
    }))
}

/// A minted JWT.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JwtAnswer {
    /// 2006.
    pub code: u32,
    /// The JWT, to present as `Authorization: Bearer <jwt>` or in `/v1/verify`'s `token`.
    pub jwt: String,
    /// Its claims.
    pub claims: crate::verify::jwt::Claims,
    /// `ValidUntil` as RFC 3339 (UTC).
    pub valid_until: String,
}

/// Mint a short-lived JWT signed with a JWT-enabled token (presented in `token`). Clients may
/// equally sign their own: HS256 with the token as key, claims `Id`, `RequestCount`,
/// `ValidUntil`, `UserIp`, `ApiKey` (the token's id).
#[utoipa::path(post, path = "/v1/jwt", tag = "verification", request_body = crate::admin::MintJwt,
    responses((status = 201, body = JwtAnswer), (status = "4XX", body = ErrorBody)))]
pub async fn mint_jwt(
    State(s): State<AppState>,
    Body(input): Body<crate::admin::MintJwt>,
) -> Result<(StatusCode, Json<JwtAnswer>), ApiError> {
    let (jwt, claims) = crate::admin::mint_jwt(&s.ctx, input).await?;
    tracing::info!(token = %claims.api_key, jwt_id = %claims.id, "JWT minted");
    let valid_until = chrono::DateTime::from_timestamp(claims.valid_until, 0)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        Json(JwtAnswer {
            code: super::error::Code::JwtCreated.number(),
            jwt,
            claims,
            valid_until,
        }),
    ))
}
