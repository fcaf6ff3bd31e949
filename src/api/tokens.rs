//! Token issuance and management: create, list, show, update, revoke, regenerate.

use super::error::{ApiResult, Code, ErrorBody};
use super::extract::{Auth, Body, OptionalBody, Params};
use super::views::TokenView;
use super::AppState;
use crate::admin::{self, CreateTokens, ListTokens, Regenerate, UpdateToken};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use serde::Serialize;

/// Created tokens, each with its plain value (shown once).
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokensCreated {
    /// 2000.
    pub code: u32,
    /// The tokens, with `token` set.
    pub tokens: Vec<TokenView>,
}

/// A page of tokens.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenList {
    /// 2002.
    pub code: u32,
    /// Newest first.
    pub tokens: Vec<TokenView>,
    /// Pass as `page` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
}

/// One token.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenAnswer {
    /// 2002 (shown, updated), 2001 (revoked), 2004 (regenerated).
    pub code: u32,
    /// The token; `token` is set only after a regeneration.
    pub token: TokenView,
}

fn soon(s: &AppState) -> i64 {
    s.ctx.config.tokens.expires_soon_days
}

/// Create `count` tokens (default 1). The plain tokens are in this answer only.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateTokens,
    responses((status = 201, body = TokensCreated), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    Body(input): Body<CreateTokens>,
) -> ApiResult<(StatusCode, Json<TokensCreated>)> {
    let created = admin::create_tokens(&s.ctx, &p, input).await?;
    let now = s.ctx.clock.now();
    let ids: Vec<&str> = created.iter().map(|(t, _)| t.id.as_str()).collect();
    tracing::info!(tokens = ?ids, by = %p.label(), "tokens created");
    Ok((
        StatusCode::CREATED,
        Json(TokensCreated {
            code: Code::TokenCreated.number(),
            tokens: created
                .iter()
                .map(|(t, plain)| TokenView::new(t, now, soon(&s)).with_secret(plain.expose()))
                .collect(),
        }),
    ))
}

/// List the tokens the credential may see, newest first, with filters and paging.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(ListTokens),
    responses((status = 200, body = TokenList), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Params(q): Params<ListTokens>,
) -> ApiResult<Json<TokenList>> {
    let (tokens, next_page) = admin::list_tokens(&s.ctx, &p, q).await?;
    let now = s.ctx.clock.now();
    Ok(Json(TokenList {
        code: Code::Ok.number(),
        tokens: tokens
            .iter()
            .map(|t| TokenView::new(t, now, soon(&s)))
            .collect(),
        next_page,
    }))
}

/// Show one token.
#[utoipa::path(get, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "token id")),
    responses((status = 200, body = TokenAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn show(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenAnswer>> {
    let t = admin::show_token(&s.ctx, &p, &id).await?;
    Ok(Json(TokenAnswer {
        code: Code::Ok.number(),
        token: TokenView::new(&t, s.ctx.clock.now(), soon(&s)),
    }))
}

/// Change a token's name, note, role, scopes, usage limit, expiry or allowed IPs.
#[utoipa::path(patch, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "token id")),
    request_body = UpdateToken,
    responses((status = 200, body = TokenAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn update(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(input): Body<UpdateToken>,
) -> ApiResult<Json<TokenAnswer>> {
    let t = admin::update_token(&s.ctx, &p, &id, input).await?;
    tracing::info!(token = %t.id, by = %p.label(), "token updated");
    Ok(Json(TokenAnswer {
        code: Code::Ok.number(),
        token: TokenView::new(&t, s.ctx.clock.now(), soon(&s)),
    }))
}

/// Revoke a token (code 2001). It stops working at once and stays listed for audit.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path, description = "token id")),
    responses((status = 200, body = TokenAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn revoke(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenAnswer>> {
    let t = admin::revoke_token(&s.ctx, &p, &id).await?;
    tracing::info!(token = %t.id, by = %p.label(), "token revoked");
    Ok(Json(TokenAnswer {
        code: Code::TokenDeleted.number(),
        token: TokenView::new(&t, s.ctx.clock.now(), soon(&s)),
    }))
}

/// New secret, same id, settings and counters. The old secret stops working at once, or after
/// `grace_seconds`.
#[utoipa::path(post, path = "/v1/tokens/{id}/regenerate", tag = "tokens", params(("id" = String, Path, description = "token id")),
    request_body(content = Regenerate, description = "optional: an empty body is `{}`"),
    responses((status = 200, body = TokenAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn regenerate(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    OptionalBody(input): OptionalBody<Regenerate>,
) -> ApiResult<Json<TokenAnswer>> {
    let (t, plain) = admin::regenerate_token(&s.ctx, &p, &id, input).await?;
    tracing::info!(token = %t.id, by = %p.label(), "token regenerated");
    Ok(Json(TokenAnswer {
        code: Code::TokenRegenerated.number(),
        token: TokenView::new(&t, s.ctx.clock.now(), soon(&s)).with_secret(plain.expose()),
    }))
}
