//! The audit log over HTTP: `GET /v1/audit`, and the record of every management attempt refused
//! for who made it (no or a bad credential, a role too low, a record not visible). Changes that
//! succeed are recorded by the store, in their own transaction.

use super::error::{ApiError, ApiResult, Code};
use super::extract::{client_ip, Auth, Params};
use super::AppState;
use crate::admin::{self, Principal};
use crate::domain::audit::{Actor, Entry, Stamp};
use crate::domain::ids;
use crate::store::audit::AuditFilter;
use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
    Json,
};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// An actor and its account.
type Who = (Actor, Option<String>);

/// Who the request authenticated as, set by `Auth`, read once the answer is known.
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Who>>>);

impl Slot {
    /// Records the authenticated actor and its account.
    pub fn set(&self, actor: Actor, account_id: Option<&str>) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some((actor, account_id.map(String::from)));
        }
    }

    fn take(&self) -> Option<Who> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

/// The action and target kind of a management route (`None`: not a management route, or one
/// that changes nothing worth a refusal record: verification, health, metrics).
fn action_of(method: &axum::http::Method, route: &str) -> Option<(&'static str, &'static str)> {
    use axum::http::Method as M;
    Some(match (method, route) {
        (&M::POST, "/v1/accounts") => ("account.create", ""),
        (&M::GET, "/v1/accounts") => ("account.list", ""),
        (&M::GET, "/v1/accounts/{id}") => ("account.show", "account"),
        (&M::PATCH, "/v1/accounts/{id}") => ("account.update", "account"),
        (&M::POST, "/v1/accounts/{id}/secret") => ("account.secret_reset", "account"),
        (&M::POST, "/v1/accounts/{id}/users") => ("user.create", "account"),
        (&M::GET, "/v1/accounts/{id}/users") => ("user.list", "account"),
        (&M::PATCH, "/v1/users/{id}") => ("user.update", "user"),
        (&M::DELETE, "/v1/users/{id}") => ("user.delete", "user"),
        (&M::POST, "/v1/tokens") | (&M::POST, "/token/create") => ("token.create", ""),
        (&M::GET, "/v1/tokens") => ("token.list", ""),
        (&M::GET, "/v1/tokens/{id}") => ("token.show", "token"),
        (&M::PATCH, "/v1/tokens/{id}") => ("token.update", "token"),
        (&M::DELETE, "/v1/tokens/{id}") => ("token.revoke", "token"),
        // The seeds' route takes the token itself in the path: never recorded.
        (&M::DELETE, "/token/{id}") => ("token.revoke", ""),
        (&M::POST, "/v1/tokens/{id}/regenerate") => ("token.regenerate", "token"),
        (&M::GET, "/v1/stats.csv") | (&M::GET, "/v1/stats") => ("stats.export", ""),
        (&M::GET, "/v1/jobs") => ("job.list", ""),
        (&M::POST, "/v1/jobs/{job}/run") => ("job.run", "job"),
        (&M::GET, "/v1/notifications") => ("notification.list", ""),
        (&M::GET, "/v1/audit") => ("audit.list", ""),
        _ => return None,
    })
}

/// Codes that refuse the caller rather than its input. A request with no credential at all is
/// not recorded: it claims to be no one, and crawlers send many.
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::BadSecret
            | Code::BadToken
            | Code::BadJwt
            | Code::AccountInactive
            | Code::UserInactive
            | Code::Forbidden
            | Code::RoleTooHigh
            | Code::NotFound
    )
}

/// The path's one parameter, as a record may hold it: only a value of the exact shape of the
/// kind's ids (a token's 8 base62 characters, an account's or user's 10, a job's name). Anything
/// else is recorded as `?`: a traversal, NUL, or a credential sent where an id belongs (a plain
/// token in `DELETE /v1/tokens/{id}` must not reach the log).
fn target_of(kind: &str, route: &str, path: &str) -> String {
    if kind.is_empty() {
        return route.to_string();
    }
    let shaped = |v: &&str| match kind {
        "token" => v.len() == ids::TOKEN_ID_LEN && ids::is_base62(v),
        "account" | "user" => v.len() == ids::ENTITY_ID_LEN && ids::is_base62(v),
        "job" => crate::jobs::ALL.iter().any(|j| j.as_str() == *v),
        _ => false,
    };
    let value = route
        .split('/')
        .zip(path.split('/'))
        .find(|(r, _)| r.starts_with('{'))
        .map(|(_, v)| v)
        .filter(shaped)
        .unwrap_or("?");
    format!("{kind}:{value}")
}

/// Middleware: records a management attempt refused for its caller, without its body.
pub async fn record_refusals(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    // Verification and health routes pass without an allocation: only a management route's
    // pattern is kept.
    let Some((action, kind, route)) = req.extensions().get::<MatchedPath>().and_then(|m| {
        action_of(req.method(), m.as_str()).map(|(a, k)| (a, k, m.as_str().to_string()))
    }) else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    let origin = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .and_then(|ci| client_ip(ci.0.ip(), req.headers(), &s.ctx.config.trusted_proxies))
        .map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
    let slot = Slot::default();
    req.extensions_mut().insert(slot.clone());
    let response = next.run(req).await;
    let Some(code) = response.extensions().get::<Code>().copied() else {
        return response;
    };
    if !refused(code) {
        return response;
    }
    let (actor, account_id) = slot.take().unwrap_or((
        Actor {
            kind: "anonymous",
            id: None,
        },
        None,
    ));
    let stamp = Stamp {
        actor,
        origin,
        action,
    };
    let entry = stamp.refused(
        s.ctx.clock.now(),
        target_of(kind, &route, &path),
        account_id,
        code.number(),
    );
    if let Err(e) = s.ctx.store.append_audit(&entry).await {
        tracing::warn!(error = %e, action, "a refused attempt could not be recorded in the audit log");
    }
    response
}

/// `GET /v1/audit` query.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only records about this account (the operator; an account's admins see their own).
    #[param(schema_with = filter_text)]
    pub account_id: Option<String>,
    /// Only this actor: `operator`, `cli`, `anonymous`, `account:<id>`, `token:<id>`,
    /// `job:<name>`, or a kind alone.
    #[param(schema_with = filter_text)]
    pub actor: Option<String>,
    /// Only this target: `account:<id>`, `user:<id>`, `token:<id>`, `operator`, `job:<name>`.
    #[param(schema_with = filter_text)]
    pub target: Option<String>,
    /// Only this action: `token.revoke`, …
    #[param(schema_with = filter_text)]
    pub action: Option<String>,
    /// Only `ok` (changes made) or `refused` (attempts refused).
    #[param(schema_with = outcome)]
    pub outcome: Option<String>,
    /// From this instant (RFC 3339, `T` and `Z` upper-case) or UTC day (`YYYY-MM-DD`) on.
    #[param(schema_with = crate::domain::schema::instant)]
    pub from: Option<String>,
    /// Before this instant, or up to the end of this UTC day.
    #[param(schema_with = crate::domain::schema::instant)]
    pub to: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The `next_page` value of the previous page.
    #[param(schema_with = page)]
    pub page: Option<String>,
}

/// 1 to 200 characters, no NUL.
fn filter_text() -> utoipa::openapi::schema::Object {
    crate::domain::schema::short_text(200, false)
}

fn outcome() -> utoipa::openapi::schema::Object {
    crate::domain::schema::one_of(&["ok", "refused"])
}

/// A record number: 1 to 18 digits.
fn page() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some("^[0-9]{1,18}$"))
        .build()
}

/// Whether `s` is an instant as `schema::instant_pattern` writes it (its day is checked when
/// it is read).
fn shaped_instant(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || !s.is_ascii() {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(u32::MAX);
    let fixed = digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && num(11..13) <= 23
        && num(14..16) <= 59
        && num(17..19) <= 59;
    if !fixed {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return false;
        }
        rest = &frac[n..];
    }
    if rest == "Z" {
        return true;
    }
    let o = rest.as_bytes();
    o.len() == 6
        && (o[0] == b'+' || o[0] == b'-')
        && o[1..3].iter().all(u8::is_ascii_digit)
        && o[3] == b':'
        && o[4..6].iter().all(u8::is_ascii_digit)
        && rest[1..3].parse::<u32>().is_ok_and(|h| h <= 23)
        && rest[4..6].parse::<u32>().is_ok_and(|m| m <= 59)
}

/// One audit record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Its number, increasing.
    pub id: i64,
    /// When (UTC).
    pub at: String,
    /// Who: `operator`, `cli`, `account`, `token`, `job` or `anonymous`.
    pub actor_kind: String,
    /// Who: the account's or token's id, or the job's name.
    pub actor_id: Option<String>,
    /// From where: the client's IP, `cli` or `job:<name>`.
    pub origin: String,
    /// The account it concerns.
    pub account_id: Option<String>,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// The fields changed, each `[old, new]`.
    #[schema(value_type = Object)]
    pub changes: serde_json::Value,
    /// `ok` or `refused`.
    pub outcome: String,
    /// The code a refusal was answered with.
    pub code: Option<u32>,
}

impl AuditRecord {
    /// The view of record `id`.
    pub fn new(id: i64, e: Entry) -> Self {
        AuditRecord {
            id,
            at: e.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            actor_kind: e.actor_kind,
            actor_id: e.actor_id,
            origin: e.origin,
            account_id: e.account_id,
            action: e.action,
            target: e.target,
            changes: e.changes,
            outcome: e.outcome,
            code: e.code,
        }
    }
}

/// A page of audit records.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditList {
    /// 2002.
    pub code: u32,
    /// Newest first.
    pub records: Vec<AuditRecord>,
    /// Pass as `page` for the next (older) page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
}

/// An instant given as RFC 3339 or as a UTC day (its start; with `end`, the next day's start).
fn instant(s: &str, end: bool, field: &str) -> Result<DateTime<Utc>, crate::domain::ParseError> {
    if shaped_instant(s) {
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    let day_shaped = s.len() == 10
        && s.bytes().zip(b"9999-99-99").all(|(c, p)| {
            if *p == b'9' {
                c.is_ascii_digit()
            } else {
                c == *p
            }
        });
    Some(s)
        .filter(|_| day_shaped)
        .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .and_then(|d| if end { d.succ_opt() } else { Some(d) })
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            crate::domain::ParseError::new(field, "must be an RFC 3339 instant or YYYY-MM-DD")
        })
}

/// Checks an audit query and builds its filter for `p`: the operator sees every record, an
/// account's admins their account's, nobody else any.
pub fn filter(p: &Principal, q: AuditQuery) -> Result<AuditFilter, admin::Error> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(crate::domain::ParseError::new("limit", "must be 1 to 500").into());
    }
    let text = |v: Option<String>, field: &str| -> Result<Option<String>, admin::Error> {
        match v {
            Some(v) if v.is_empty() || v.chars().count() > 200 => {
                Err(crate::domain::ParseError::new(field, "must be 1 to 200 characters").into())
            }
            v => Ok(v),
        }
    };
    let before_id = q
        .page
        .as_deref()
        .map(|p| {
            let shaped = (1..=18).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
            p.parse::<i64>().ok().filter(|_| shaped).ok_or_else(|| {
                crate::domain::ParseError::new(
                    "page",
                    "is not a page cursor from a previous answer",
                )
            })
        })
        .transpose()?;
    let outcome = match q.outcome.as_deref() {
        None => None,
        Some(o @ ("ok" | "refused")) => Some(o.to_string()),
        Some(_) => {
            return Err(crate::domain::ParseError::new("outcome", "must be ok or refused").into())
        }
    };
    let from = q
        .from
        .as_deref()
        .map(|s| instant(s, false, "from"))
        .transpose()?;
    let to =
        q.to.as_deref()
            .map(|s| instant(s, true, "to"))
            .transpose()?;
    let account_id = text(q.account_id, "account_id")?;
    let account_id = if p.is_operator() {
        account_id
    } else {
        let own = p.account_id().unwrap_or_default();
        if !p.is_account_admin_of(own) {
            return Err(admin::Error::Forbidden(
                "only the operator and an account's admins read its audit log".into(),
            ));
        }
        if account_id.as_deref().is_some_and(|a| a != own) {
            return Err(admin::Error::Forbidden(
                "account_id: only your own account's records can be read".into(),
            ));
        }
        Some(own.to_string())
    };
    Ok(AuditFilter {
        account_id,
        actor: text(q.actor, "actor")?,
        target: text(q.target, "target")?,
        action: text(q.action, "action")?,
        outcome,
        from,
        to,
        before_id,
        limit,
    })
}

/// Read the audit log, newest first (operator: every record; an account's admins: their
/// account's).
#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditList), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Params(q): Params<AuditQuery>,
) -> ApiResult<Json<AuditList>> {
    let mut f = filter(&p, q)?;
    let limit = f.limit as usize;
    // One more than the page, to know whether another follows.
    f.limit += 1;
    let mut rows = s
        .ctx
        .store
        .list_audit(&f)
        .await
        .map_err(|e| ApiError::from_store(&e, "api"))?;
    let next_page = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|(id, _)| id.to_string())
    } else {
        None
    };
    Ok(Json(AuditList {
        code: Code::Ok.number(),
        records: rows
            .into_iter()
            .map(|(id, e)| AuditRecord::new(id, e))
            .collect(),
        next_page,
    }))
}

use super::error::ErrorBody;
