//! Accounts, their secrets and their users.

use super::error::{ApiResult, Code, ErrorBody};
use super::extract::{Auth, Body, Params};
use super::views::{AccountView, UserView};
use super::AppState;
use crate::admin::{self, CreateAccount, CreateUser, UpdateAccount, UpdateUser};
use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use serde::{Deserialize, Serialize};

/// A created account with its secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountCreated {
    /// 2003.
    pub code: u32,
    /// The account.
    pub account: AccountView,
    /// The account secret: shown once.
    pub secret: String,
}

/// One account.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountAnswer {
    /// 2002.
    pub code: u32,
    /// The account.
    pub account: AccountView,
}

/// A page of accounts.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountList {
    /// 2002.
    pub code: u32,
    /// Accounts by name.
    pub accounts: Vec<AccountView>,
    /// Pass as `page` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
}

/// `GET /v1/accounts` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccountQuery {
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// `next_page` of the previous answer.
    #[param(schema_with = crate::domain::schema::any_text)]
    pub page: Option<String>,
}

/// A new account secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SecretAnswer {
    /// 2003.
    pub code: u32,
    /// The account.
    pub account_id: String,
    /// The new secret: shown once. The old one no longer works.
    pub secret: String,
}

/// One user.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserAnswer {
    /// 2003 when created, 2002 otherwise.
    pub code: u32,
    /// The user.
    pub user: UserView,
}

/// An account's users.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserList {
    /// 2002.
    pub code: u32,
    /// Users by email.
    pub users: Vec<UserView>,
}

/// Create an account (operator). Its secret is returned once.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = CreateAccount,
    responses((status = 201, body = AccountCreated), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    Body(input): Body<CreateAccount>,
) -> ApiResult<(StatusCode, Json<AccountCreated>)> {
    let (account, secret) = admin::create_account(&s.ctx, &p, input).await?;
    tracing::info!(account = %account.id, by = %p.label(), "account created");
    Ok((
        StatusCode::CREATED,
        Json(AccountCreated {
            code: Code::Created.number(),
            account: AccountView::new(&account, s.ctx.clock.now()),
            secret: secret.expose().to_string(),
        }),
    ))
}

/// List accounts (operator).
#[utoipa::path(get, path = "/v1/accounts", tag = "accounts", params(AccountQuery),
    responses((status = 200, body = AccountList), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    Params(q): Params<AccountQuery>,
) -> ApiResult<Json<AccountList>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(crate::domain::ParseError::new("limit", "must be 1 to 500").into());
    }
    let mut accounts = admin::list_accounts(&s.ctx, &p, q.page.as_deref(), limit + 1).await?;
    let next_page = if accounts.len() as i64 > limit {
        accounts.truncate(limit as usize);
        accounts.last().map(|a| a.name.clone())
    } else {
        None
    };
    let now = s.ctx.clock.now();
    Ok(Json(AccountList {
        code: Code::Ok.number(),
        accounts: accounts.iter().map(|a| AccountView::new(a, now)).collect(),
        next_page,
    }))
}

/// Show an account (operator, or the account's own admin).
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = AccountAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn show(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<AccountAnswer>> {
    let a = admin::show_account(&s.ctx, &p, &id).await?;
    Ok(Json(AccountAnswer {
        code: Code::Ok.number(),
        account: AccountView::new(&a, s.ctx.clock.now()),
    }))
}

/// Change an account's status, max_tokens or monthly_quota (operator).
#[utoipa::path(patch, path = "/v1/accounts/{id}", tag = "accounts", params(("id" = String, Path, description = "account id")),
    request_body = UpdateAccount,
    responses((status = 200, body = AccountAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn update(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(input): Body<UpdateAccount>,
) -> ApiResult<Json<AccountAnswer>> {
    let a = admin::update_account(&s.ctx, &p, &id, input).await?;
    tracing::info!(account = %a.id, by = %p.label(), "account updated");
    Ok(Json(AccountAnswer {
        code: Code::Ok.number(),
        account: AccountView::new(&a, s.ctx.clock.now()),
    }))
}

/// Reset the account secret; the new one is returned once and the old one stops working.
#[utoipa::path(post, path = "/v1/accounts/{id}/secret", tag = "accounts", params(("id" = String, Path, description = "account id")),
    responses((status = 201, body = SecretAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn reset_secret(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<SecretAnswer>)> {
    let secret = admin::reset_account_secret(&s.ctx, &p, &id).await?;
    tracing::info!(account = %id, by = %p.label(), "account secret reset");
    Ok((
        StatusCode::CREATED,
        Json(SecretAnswer {
            code: Code::Created.number(),
            account_id: id,
            secret: secret.expose().to_string(),
        }),
    ))
}

/// Add a user to an account (operator, or the account's admin).
#[utoipa::path(post, path = "/v1/accounts/{id}/users", tag = "users", params(("id" = String, Path, description = "account id")),
    request_body = CreateUser,
    responses((status = 201, body = UserAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn create_user(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(input): Body<CreateUser>,
) -> ApiResult<(StatusCode, Json<UserAnswer>)> {
    let u = admin::create_user(&s.ctx, &p, &id, input).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserAnswer {
            code: Code::Created.number(),
            user: (&u).into(),
        }),
    ))
}

/// List an account's users (operator, or the account's admin).
#[utoipa::path(get, path = "/v1/accounts/{id}/users", tag = "users", params(("id" = String, Path, description = "account id")),
    responses((status = 200, body = UserList), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn list_users(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<UserList>> {
    let users = admin::list_users(&s.ctx, &p, &id).await?;
    Ok(Json(UserList {
        code: Code::Ok.number(),
        users: users.iter().map(UserView::from).collect(),
    }))
}

/// Change a user's role, notification preference or status (operator, or the account's admin).
/// `"status": "inactive"` makes every token issued for the user answer USER_INACTIVE (4017) at
/// once, on every daemon sharing the store; `"active"` restores them.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path, description = "user id")),
    request_body = UpdateUser,
    responses((status = 200, body = UserAnswer), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn update_user(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    Body(input): Body<UpdateUser>,
) -> ApiResult<Json<UserAnswer>> {
    let u = admin::update_user(&s.ctx, &p, &id, input).await?;
    Ok(Json(UserAnswer {
        code: Code::Ok.number(),
        user: (&u).into(),
    }))
}

/// The answer to a user's deletion.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UserDeleted {
    /// 2002.
    pub code: u32,
    /// The user, now `deleted`.
    pub user: UserView,
    /// How many of its tokens the deletion revoked.
    pub tokens_revoked: u64,
}

/// Delete a user (operator, or the account's admin): its tokens are revoked in the same
/// transaction, and it stays listed as `deleted` for the record.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", params(("id" = String, Path, description = "user id")),
    responses((status = 200, body = UserDeleted), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn delete_user(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<UserDeleted>> {
    let (u, revoked) = admin::delete_user(&s.ctx, &p, &id).await?;
    Ok(Json(UserDeleted {
        code: Code::Ok.number(),
        user: (&u).into(),
        tokens_revoked: revoked,
    }))
}
