//! Users: the people of an account, with the role their tokens may reach.

use super::*;

/// `POST /v1/accounts/{id}/users`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Where notifications go; unique within the account.
    pub email: Option<String>,
    /// `admin`, `engineer`, `user` or `readonly` (default `user`).
    pub role: Option<String>,
    /// Whether the user gets expiry emails (default true).
    pub notify_expiry: Option<bool>,
}

/// `PATCH /v1/users/{id}`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New role.
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    pub role: Option<String>,
    /// Expiry emails on or off.
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    pub notify_expiry: Option<bool>,
}

/// Adds a user to an account (operator or the account's admin).
pub async fn create_user(
    ctx: &Ctx,
    p: &Principal,
    account_id: &str,
    input: CreateUser,
) -> Result<User> {
    require_account_admin(p, account_id)?;
    let email = email::parse(input.email.as_deref().unwrap_or(""), "email")?;
    let role = parse_role(input.role.as_deref().unwrap_or("user"), "role")?;
    if role > p.role() {
        return Err(Error::RoleTooHigh {
            requested: role,
            allowed: p.role(),
        });
    }
    ctx.store
        .account(account_id)
        .await?
        .ok_or(Error::NotFound("account"))?;
    let now = ctx.clock.now();
    let user = User {
        id: ids::random_id(ids::ENTITY_ID_LEN),
        account_id: account_id.to_string(),
        email,
        role,
        notify_expiry: input.notify_expiry.unwrap_or(true),
        created_at: now,
        updated_at: now,
    };
    ctx.store.insert_user(&user).await.map_err(|e| match e {
        StoreError::Conflict(_) => {
            Error::Conflict("a user with this email already exists in the account".into())
        }
        e => e.into(),
    })
}

/// An account's users (operator or the account's admin).
pub async fn list_users(ctx: &Ctx, p: &Principal, account_id: &str) -> Result<Vec<User>> {
    require_account_admin(p, account_id)?;
    ctx.store
        .account(account_id)
        .await?
        .ok_or(Error::NotFound("account"))?;
    Ok(ctx.store.list_users(account_id).await?)
}

/// Changes a user's role or notification preference (operator or the account's admin).
pub async fn update_user(
    ctx: &Ctx,
    p: &Principal,
    user_id: &str,
    input: UpdateUser,
) -> Result<User> {
    let user = ctx
        .store
        .user(user_id)
        .await?
        .ok_or(Error::NotFound("user"))?;
    require_account_admin(p, &user.account_id).map_err(not_found_as("user"))?;
    let role = input
        .role
        .as_deref()
        .map(|r| parse_role(r, "role"))
        .transpose()?;
    ctx.store
        .update_user(user_id, ctx.clock.now(), |mut u| {
            if let Some(r) = role {
                u.role = r;
            }
            if let Some(n) = input.notify_expiry {
                u.notify_expiry = n;
            }
            Ok::<_, Error>(u)
        })
        .await
        .map_err(not_found_as("user"))
}
