//! Request extractors that answer bad input with the API's own errors, naming the field:
//! `Body<T>` (JSON), `Params<T>` (query string) and `Auth` (the credential).

use super::error::{ApiError, Code};
use super::AppState;
use crate::admin::{self, Caller};
use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, request::Parts},
};
use serde::de::DeserializeOwned;

/// Turns a deserialisation error into an answer that names the field.
fn data_error(path: String, message: String) -> ApiError {
    // serde_json appends the position; the field name says more.
    let message = match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    let join = |name: &str| {
        // Unknown fields already carry their own name in the path; missing ones do not.
        if path == name || path.ends_with(&format!(".{name}")) {
            path.clone()
        } else if path == "." || path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    let quoted = |m: &str| m.split('`').nth(1).map(str::to_string);
    if message.starts_with("unknown field") {
        let name = quoted(&message).unwrap_or_default();
        return ApiError::field(
            Code::UnknownField,
            join(&name),
            format!("unknown field `{name}`"),
        );
    }
    if message.starts_with("duplicate field") {
        let name = quoted(&message).unwrap_or_default();
        return ApiError::field(
            Code::InvalidField,
            join(&name),
            "given twice (a field and its alias count as the same field)",
        );
    }
    if message.starts_with("missing field") {
        let name = quoted(&message).unwrap_or_default();
        return ApiError::field(Code::InvalidField, join(&name), "is required");
    }
    if path == "." || path.is_empty() {
        return ApiError::new(Code::MalformedRequest, message);
    }
    ApiError::field(Code::InvalidField, path, message)
}

/// A JSON request body, which the route requires: an empty one is refused (422, field
/// `body`), as the OpenAPI document marks it required. `{}` is a body.
pub struct Body<T>(pub T);

/// A JSON request body the route may go without: an empty one reads as `{}`.
pub struct OptionalBody<T>(pub T);

impl<T, S> FromRequest<S> for Body<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read_body(req, state, false).await.map(Body)
    }
}

impl<T, S> FromRequest<S> for OptionalBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        read_body(req, state, true).await.map(OptionalBody)
    }
}

/// Reads and parses a JSON body; an empty one is `{}` when `optional`, else refused.
async fn read_body<T: DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
    optional: bool,
) -> Result<T, ApiError> {
    {
        let json_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| {
                let mime = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            });
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(Code::BodyTooLarge, "the request body is too large")
            } else {
                ApiError::new(Code::MalformedRequest, "the request body could not be read")
            }
        })?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            if !optional {
                return Err(ApiError::field(
                    Code::InvalidField,
                    "body",
                    "is required: send a JSON object (`{}` changes nothing)",
                ));
            }
            b"{}"
        } else {
            if json_type == Some(false) {
                return Err(ApiError::new(
                    Code::UnsupportedMediaType,
                    "send the body as JSON (Content-Type: application/json)",
                ));
            }
            &bytes
        };
        // No stored text may hold a NUL (PostgreSQL refuses one mid-statement): refused here,
        // naming the field, before anything reads the value.
        if let Some(field) = nul_field(text) {
            return Err(ApiError::field(
                Code::InvalidField,
                field,
                "must not contain a NUL character",
            ));
        }
        if let Ok(v) = serde_json::from_slice(text) {
            return Ok(v);
        }
        // Read once more, tracking the path, only to name what went wrong.
        let mut de = serde_json::Deserializer::from_slice(text);
        match serde_path_to_error::deserialize::<_, T>(&mut de) {
            // A whole value followed by more than whitespace.
            Ok(v) => match de.end() {
                Ok(()) => Ok(v),
                Err(e) => Err(ApiError::new(
                    Code::MalformedRequest,
                    format!("the body is not valid JSON: {e}"),
                )),
            },
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if inner.is_data() {
                    Err(data_error(path, inner.to_string()))
                } else {
                    Err(ApiError::new(
                        Code::MalformedRequest,
                        format!("the body is not valid JSON: {inner}"),
                    ))
                }
            }
        }
    }
}

/// Where a JSON text holds a string with a NUL character (`\u0000`), as a field path
/// (`scopes[1]`, `name`); `None` when none does or the text is not JSON.
fn nul_field(text: &[u8]) -> Option<String> {
    // A NUL can only be written escaped; most bodies hold no escape at all.
    if !text.windows(6).any(|w| w == b"\\u0000") {
        return None;
    }
    fn find(v: &serde_json::Value, path: &str) -> Option<String> {
        use serde_json::Value;
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            Value::String(s) if s.contains('\0') => Some(if path.is_empty() {
                ".".into()
            } else {
                path.into()
            }),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| find(item, &format!("{path}[{i}]"))),
            Value::Object(map) => map.iter().find_map(|(k, item)| {
                if k.contains('\0') {
                    Some(join(&k.replace('\0', "\\u0000")))
                } else {
                    find(item, &join(k))
                }
            }),
            _ => None,
        }
    }
    find(&serde_json::from_slice(text).ok()?, "")
}

/// The query string, without the `Secret` credential parameter.
pub struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k != "Secret")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if let Some((k, _)) = kept
            .iter()
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(ApiError::field(
                Code::InvalidField,
                k.replace('\0', "%00"),
                "must not contain a NUL character",
            ));
        }
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish();
        let de =
            serde_urlencoded::Deserializer::new(url::form_urlencoded::parse(encoded.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Params)
            .map_err(|e| {
                let path = e.path().to_string();
                let msg = e.into_inner().to_string();
                // A bad number names no field in serde_urlencoded's message, but the path does.
                let msg = if msg.contains("invalid digit") || msg.contains("number too") {
                    "must be a whole number in range".to_string()
                } else {
                    msg
                };
                data_error(path, msg)
            })
    }
}

/// The credential of a management call: `Authorization: Bearer <c>`, `Authorization: APIKey
/// <c>`, or `?Secret=<c>`.
pub fn presented_credential(parts: &Parts) -> Option<String> {
    if let Some(v) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some((scheme, rest)) = v.split_once(' ') {
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("apikey") {
                let c = rest.trim();
                if !c.is_empty() {
                    return Some(c.to_string());
                }
            }
        }
    }
    url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "Secret")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The end client's address: the peer, unless the peer is a trusted proxy, in which case the
/// nearest untrusted address of `X-Forwarded-For` (or `X-Real-IP`). Every `X-Forwarded-For`
/// line counts, joined in order (a proxy may append a line of its own rather than extend the
/// client's), and the hops are walked from the nearest. A hop that is not an address
/// (`unknown`, an obfuscated name, bytes that are not text) ends the walk, and so do two
/// `X-Real-IP` lines: the client is then unknown (`None`), which no allowed-IP list admits.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    use crate::domain::net::allows_nonempty;
    if !allows_nonempty(trusted, peer) {
        return Some(peer);
    }
    let mut lines = headers.get_all("x-forwarded-for").iter().peekable();
    if lines.peek().is_some() {
        let mut hops: Vec<&str> = Vec::new();
        for line in lines {
            let Ok(line) = line.to_str() else {
                return None;
            };
            hops.extend(line.split(',').map(str::trim).filter(|h| !h.is_empty()));
        }
        // Walk from the nearest hop; the first one we do not trust is the client.
        for hop in hops.iter().rev() {
            match hop_address(hop) {
                Some(ip) if allows_nonempty(trusted, ip) => continue,
                found => return found,
            }
        }
        // Every hop is a trusted proxy: the farthest one is the client.
        if let Some(first) = hops.first() {
            return hop_address(first);
        }
    }
    let mut real = headers.get_all("x-real-ip").iter();
    match (real.next(), real.next()) {
        (None, _) => Some(peer),
        (Some(v), None) => v.to_str().ok().and_then(|v| hop_address(v.trim())),
        (Some(_), Some(_)) => None,
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`203.0.113.9:5555`,
/// `[2001:db8::1]:443`) or in brackets (`[2001:db8::1]`), as some proxies write them.
fn hop_address(hop: &str) -> Option<std::net::IpAddr> {
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
}

/// Who is calling, checked against the store. Every admin request authenticates, and then folds
/// the calls counted so far into the store (SQLite), so what it reads (remaining uses,
/// statistics) includes every call answered before it, and what it changes applies on top of
/// them; an unauthenticated request folds nothing.
pub struct Auth(pub Caller);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let c = presented_credential(parts).ok_or(admin::Error::NoCredentials)?;
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .and_then(|ci| client_ip(ci.0.ip(), &parts.headers, &state.ctx.config.trusted_proxies));
        let p = admin::authenticate(&state.ctx, &c, ip).await?;
        let span = tracing::Span::current();
        span.record("principal", tracing::field::display(p.label()));
        if let admin::Principal::Token { token, .. } = &p {
            span.record("token_id", tracing::field::display(&token.id));
        }
        // Who it is, for the audit of an attempt refused after this point.
        if let Some(slot) = parts.extensions.get::<super::audit::Slot>() {
            slot.set(p.actor(), p.account_id());
        }
        state.ctx.usage.settle().await.map_err(admin::Error::from)?;
        let from = ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
        Ok(Auth(Caller { who: p, from }))
    }
}
