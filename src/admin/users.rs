//! Users: the people of an account, with the role their tokens may reach.

use super::*;

/// `POST /v1/accounts/{id}/users`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Where notifications go; unique within the account (compared lowercased).
    #[schema(required = true, schema_with = schema::email)]
    pub email: Option<String>,
    /// `admin`, `engineer`, `user` or `readonly` (default `user`).
    #[schema(schema_with = schema::role_or_null)]
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
    #[schema(schema_with = schema::role)]
    pub role: Option<String>,
    /// Expiry emails on or off.
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    #[schema(value_type = bool)]
    pub notify_expiry: Option<bool>,
    /// `active` or `inactive`: while inactive, every token issued for the user answers
    /// USER_INACTIVE (deletion is `DELETE /v1/users/{id}`).
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    #[schema(schema_with = user_status)]
    pub status: Option<String>,
}

fn user_status() -> utoipa::openapi::schema::Object {
    schema::one_of(&["active", "inactive"])
}

/// Adds a user to an account (operator or the account's admin).
pub async fn create_user(
    ctx: &Ctx,
    p: &Caller,
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
        status: UserStatus::Active,
        created_at: now,
        updated_at: now,
        deleted_at: None,
    };
    ctx.store
        .insert_user(&user, &p.stamp("user.create"))
        .await
        .map_err(|e| match e {
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

/// Changes a user's role, notification preference or status (operator or the account's
/// admin). A deleted user changes no more; a credential does not deactivate its own user.
pub async fn update_user(ctx: &Ctx, p: &Caller, user_id: &str, input: UpdateUser) -> Result<User> {
    let role = input
        .role
        .as_deref()
        .map(|r| parse_role(r, "role"))
        .transpose()?;
    let status = match input.status.as_deref() {
        None => None,
        Some("active") => Some(UserStatus::Active),
        Some("inactive") => Some(UserStatus::Inactive),
        Some("deleted") => {
            return Err(ParseError::new(
                "status",
                "a user is deleted with DELETE /v1/users/{id} (tokenwarden user delete)",
            )
            .into())
        }
        Some(_) => return Err(ParseError::new("status", "must be active or inactive").into()),
    };
    let user = visible_user(ctx, p, user_id).await?;
    if status == Some(UserStatus::Inactive) {
        not_self(p, &user, "deactivate")?;
    }
    let (user, _) = ctx
        .store
        .update_user(
            user_id,
            ctx.clock.now(),
            &p.stamp("user.update"),
            |mut u| {
                if u.status == UserStatus::Deleted {
                    return Err(Error::Conflict("the user is deleted".into()));
                }
                if let Some(r) = role {
                    u.role = r;
                }
                if let Some(n) = input.notify_expiry {
                    u.notify_expiry = n;
                }
                if let Some(s) = status {
                    u.status = s;
                }
                Ok::<_, Error>(u)
            },
        )
        .await
        .map_err(not_found_as("user"))?;
    Ok(user)
}

/// Deletes a user (operator or the account's admin): its tokens are revoked in the same
/// transaction, and the user stays listed, `deleted`, for the record. Returns the user and how
/// many tokens were revoked.
pub async fn delete_user(ctx: &Ctx, p: &Caller, user_id: &str) -> Result<(User, u64)> {
    let user = visible_user(ctx, p, user_id).await?;
    not_self(p, &user, "delete")?;
    ctx.store
        .update_user(
            user_id,
            ctx.clock.now(),
            &p.stamp("user.delete"),
            |mut u| {
                if u.status == UserStatus::Deleted {
                    return Err(Error::Conflict("the user is deleted already".into()));
                }
                u.status = UserStatus::Deleted;
                Ok::<_, Error>(u)
            },
        )
        .await
        .map_err(not_found_as("user"))
}

/// The user, if `p` administers its account (another account's user is "not found").
async fn visible_user(ctx: &Ctx, p: &Principal, user_id: &str) -> Result<User> {
    let user = ctx
        .store
        .user(user_id)
        .await?
        .ok_or(Error::NotFound("user"))?;
    require_account_admin(p, &user.account_id).map_err(not_found_as("user"))?;
    Ok(user)
}

/// A token credential may not switch off the user it was issued for: it would lock itself out.
fn not_self(p: &Principal, user: &User, what: &str) -> Result<()> {
    match p {
        Principal::Token { token, .. } if token.user_id.as_deref() == Some(user.id.as_str()) => {
            Err(Error::Forbidden(format!(
                "a token may not {what} the user it was issued for"
            )))
        }
        _ => Ok(()),
    }
}
