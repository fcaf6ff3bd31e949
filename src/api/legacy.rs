//! The seeds' own create/delete form (`POST /token/create?Secret=&RequestCount=&Lifetime=&Count=`,
//! `DELETE /token/{id}?Secret=`), answering in their PascalCase shapes, with their defaults
//! (RequestCount 1, Lifetime 3600 s) so existing clients of that API work unchanged.

use super::error::{ApiError, Code};
use super::extract::{Auth, Params};
use super::AppState;
use crate::admin::{self, CreateTokens};
use crate::domain::credential::{self, Presented};
use crate::patch::Patch;
use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};

/// An error in the seeds' shape.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct LegacyError {
    /// Numeric code.
    pub code: u32,
    /// The code's word.
    pub error: &'static str,
    /// For people.
    pub message: String,
    /// The query parameter at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Wraps an API error in the seeds' shape.
pub struct Legacy(ApiError);

impl<E: Into<ApiError>> From<E> for Legacy {
    fn from(e: E) -> Self {
        Legacy(e.into())
    }
}

impl IntoResponse for Legacy {
    fn into_response(self) -> Response {
        let b = self.0.body();
        let mut r = (
            super::error::http_status(self.0.code),
            Json(LegacyError {
                code: b.code,
                error: b.error,
                message: b.message,
                field: b.field,
            }),
        )
            .into_response();
        // As `ApiError` does: the audit of refused attempts reads the code.
        r.extensions_mut().insert(self.0.code);
        r
    }
}

/// `POST /token/create` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
#[allow(non_snake_case)]
pub struct LegacyCreate {
    /// Uses per token, 1 to 999999999 (default 1).
    #[param(minimum = 1, maximum = 999_999_999)]
    pub RequestCount: Option<i64>,
    /// Lifetime in seconds, 1 to `tokens.max_lifetime_seconds` (default 3600, or that maximum
    /// if lower).
    #[param(minimum = 1, maximum = 315_569_520)]
    pub Lifetime: Option<i64>,
    /// How many tokens, 1 to `tokens.max_count_per_request` (default 1).
    #[param(minimum = 1, maximum = 100)]
    pub Count: Option<i64>,
    /// The account, by id or name, when the operator credential is used.
    #[param(schema_with = crate::domain::schema::any_text)]
    pub AccountId: Option<String>,
    /// Token name, 1 to 100 characters (default `api token`).
    #[param(schema_with = crate::domain::schema::name)]
    pub Name: Option<String>,
}

/// One created token in the seeds' shape.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct LegacyToken {
    /// The token to present (the plain value, shown once).
    pub id: String,
    /// The public id, for management calls.
    pub token_id: String,
    /// Expiry (UTC).
    pub valid_until: Option<String>,
    /// Uses allowed.
    pub request_count: Option<i64>,
}

/// The seeds' create answer.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct LegacyCreated {
    /// 2000.
    pub code: u32,
    /// The tokens.
    pub tokens: Vec<LegacyToken>,
}

/// The seeds' delete answer.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct LegacyDeleted {
    /// 2001.
    pub code: u32,
    /// The public id of the revoked token.
    pub id: String,
}

fn rename(e: ApiError) -> ApiError {
    // Name the seeds' parameters, not the internal fields.
    let field = e.field.map(|f| match f.as_str() {
        "usage_limit" => "RequestCount".to_string(),
        "lifetime_seconds" => "Lifetime".to_string(),
        "count" => "Count".to_string(),
        "account_id" => "AccountId".to_string(),
        "name" => "Name".to_string(),
        _ => f,
    });
    ApiError { field, ..e }
}

/// Create tokens, the seeds' way. `Id` in the answer is the token itself.
#[utoipa::path(post, path = "/token/create", tag = "legacy", params(LegacyCreate, ("Secret" = Option<String>, Query, description = "account secret (or use Authorization)")),
    responses((status = 200, body = LegacyCreated), (status = "4XX", body = LegacyError)))]
pub async fn create(
    State(s): State<AppState>,
    auth: Result<Auth, ApiError>,
    params: Result<Params<LegacyCreate>, ApiError>,
) -> Result<(StatusCode, Json<LegacyCreated>), Legacy> {
    let Auth(p) = auth?;
    let Params(q) = params.map_err(rename)?;
    let input = CreateTokens {
        account_id: q.AccountId,
        name: Some(q.Name.unwrap_or_else(|| "api token".into())),
        usage_limit: Patch::Value(q.RequestCount.unwrap_or(1)),
        // The seeds' default hour, within what this daemon allows: a Lifetime the client
        // never sent must not be refused.
        lifetime_seconds: Patch::Value(
            q.Lifetime
                .unwrap_or_else(|| 3600.min(s.ctx.config.tokens.max_lifetime_seconds)),
        ),
        count: q.Count,
        ..CreateTokens::default()
    };
    let created = admin::create_tokens(&s.ctx, &p, input)
        .await
        .map_err(|e| rename(e.into()))?;
    tracing::info!(count = created.len(), by = %p.label(), "tokens created (legacy form)");
    Ok((
        StatusCode::OK,
        Json(LegacyCreated {
            code: Code::TokenCreated.number(),
            tokens: created
                .iter()
                .map(|(t, plain)| LegacyToken {
                    id: plain.expose().to_string(),
                    token_id: t.id.clone(),
                    valid_until: t
                        .expires_at
                        .map(|e| e.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                    request_count: t.usage_limit,
                })
                .collect(),
        }),
    ))
}

/// Delete (revoke) a token, the seeds' way. `{id}` is the public id or the token itself.
#[utoipa::path(delete, path = "/token/{id}", tag = "legacy", params(("id" = String, Path, description = "token id or the token"), ("Secret" = Option<String>, Query, description = "account secret (or use Authorization)")),
    responses((status = 200, body = LegacyDeleted), (status = "4XX", body = LegacyError)))]
pub async fn delete(
    State(s): State<AppState>,
    auth: Result<Auth, ApiError>,
    Path(id): Path<String>,
) -> Result<Json<LegacyDeleted>, Legacy> {
    let Auth(p) = auth?;
    let id = match credential::parse(&s.ctx.config.tokens.prefix, &id) {
        Ok(Presented::Token { id, .. }) => id,
        _ => id,
    };
    let t = admin::revoke_token(&s.ctx, &p, &id).await?;
    tracing::info!(token = %t.id, by = %p.label(), "token revoked (legacy form)");
    Ok(Json(LegacyDeleted {
        code: Code::TokenDeleted.number(),
        id: t.id,
    }))
}
