//! Accounts: create, show, list, change, and reset their secret.

use super::*;

/// `POST /v1/accounts`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Unique name, 1 to 100 characters (surrounding white space is trimmed).
    #[schema(required = true, schema_with = schema::name)]
    pub name: Option<String>,
    /// Active tokens allowed (default from `accounts.default_max_tokens`).
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(schema_with = max_tokens_or_null)]
    pub max_tokens: Option<i64>,
    /// Calls per calendar month over all its tokens; absent = no account quota.
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(schema_with = quota_or_null)]
    pub monthly_quota: Option<i64>,
    /// At most `limit` calls per `window_seconds` over all its tokens; absent or `null` = none.
    #[serde(default)]
    pub rate_limit: Option<RateLimitInput>,
    /// Whether the account's secret authenticates calls itself (`/v1/verify`, `/v1/auth`,
    /// JWTs it signs); absent or `null` = the daemon's `accounts.secret_calls`.
    pub secret_calls: Option<bool>,
}

/// `PATCH /v1/accounts/{id}`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    /// `active` or `inactive`; an inactive account's credentials get 4014.
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    #[schema(schema_with = account_status)]
    pub status: Option<String>,
    /// Active tokens allowed; existing tokens above a lowered limit stay.
    #[serde(default, deserialize_with = "whole::non_null")]
    #[schema(schema_with = max_tokens_schema)]
    pub max_tokens: Option<i64>,
    /// Calls per calendar month; `null` removes the quota.
    #[serde(default, deserialize_with = "whole::patch")]
    #[schema(schema_with = quota_or_null)]
    pub monthly_quota: Patch<i64>,
    /// New rate limit over all its tokens; `null` removes it.
    #[serde(default)]
    #[schema(value_type = Option<RateLimitInput>)]
    pub rate_limit: Patch<RateLimitInput>,
    /// Whether the secret authenticates calls; `null` = the daemon's default.
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    pub secret_calls: Patch<bool>,
}

const MAX_QUOTA: i64 = 1_000_000_000_000;

fn account_status() -> utoipa::openapi::schema::Object {
    schema::one_of(&["active", "inactive"])
}

fn max_tokens_schema() -> utoipa::openapi::schema::Object {
    schema::int(1, limits::MAX_TOKENS_PER_ACCOUNT)
}

fn max_tokens_or_null() -> utoipa::openapi::schema::Object {
    schema::int_or_null(1, limits::MAX_TOKENS_PER_ACCOUNT)
}

fn quota_or_null() -> utoipa::openapi::schema::Object {
    schema::int_or_null(1, MAX_QUOTA)
}

fn max_tokens(v: i64) -> Result<i64, ParseError> {
    let max = limits::MAX_TOKENS_PER_ACCOUNT;
    if (1..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ParseError::new("max_tokens", format!("must be 1 to {max}")))
    }
}

fn monthly_quota(v: i64) -> Result<i64, ParseError> {
    if (1..=MAX_QUOTA).contains(&v) {
        Ok(v)
    } else {
        Err(ParseError::new(
            "monthly_quota",
            format!("must be 1 to {MAX_QUOTA}"),
        ))
    }
}

/// Creates an account and its secret (returned once).
pub async fn create_account(
    ctx: &Ctx,
    p: &Caller,
    input: CreateAccount,
) -> Result<(Account, Plain)> {
    require_operator(p, "create accounts")?;
    let name = limits::text(input.name.as_deref().unwrap_or(""), 100, true, "name")?;
    let max = max_tokens(input.max_tokens.unwrap_or(ctx.config.default_max_tokens))?;
    let quota = input.monthly_quota.map(monthly_quota).transpose()?;
    let rate_limit = input
        .rate_limit
        .map(|r| r.check("rate_limit"))
        .transpose()?;
    let id = ids::random_id(ids::ENTITY_ID_LEN);
    let secret = credential::new_account_secret(&ctx.config.tokens.prefix, &id);
    // The key row shares the tokens' id space (and table).
    let api_key = credential::new_token_ids(1).remove(0);
    let sealed_secret = ctx.master_key.seal(&secret, &api_key);
    let account = ctx
        .store
        .insert_account(
            &NewAccount {
                id,
                name,
                max_tokens: max,
                monthly_quota: quota,
                secret_hash: secret.hash(),
                rate_limit,
                sealed_secret,
                key_active: input.secret_calls.unwrap_or(ctx.config.secret_calls),
                secret_calls: input.secret_calls,
                api_key,
            },
            ctx.clock.now(),
            &p.stamp("account.create"),
        )
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => {
                Error::Conflict("an account with this name already exists".into())
            }
            e => e.into(),
        })?;
    Ok((account, secret))
}

/// Looks an account up by id, then by name.
pub async fn find_account(ctx: &Ctx, id_or_name: &str) -> Result<Account> {
    if let Some(a) = ctx.store.account(id_or_name).await? {
        return Ok(a);
    }
    ctx.store
        .account_by_name(id_or_name)
        .await?
        .ok_or(Error::NotFound("account"))
}

/// Shows an account to the operator or to its own admin.
pub async fn show_account(ctx: &Ctx, p: &Principal, id: &str) -> Result<Account> {
    require_account_admin(p, id)?;
    ctx.store
        .account(id)
        .await?
        .ok_or(Error::NotFound("account"))
}

/// Lists accounts by name (operator only).
pub async fn list_accounts(
    ctx: &Ctx,
    p: &Principal,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Account>> {
    require_operator(p, "list accounts")?;
    Ok(ctx.store.list_accounts(after, limit).await?)
}

/// Changes an account's status, max_tokens or quota (operator only).
pub async fn update_account(
    ctx: &Ctx,
    p: &Caller,
    id: &str,
    input: UpdateAccount,
) -> Result<Account> {
    require_operator(p, "change accounts")?;
    let status = input
        .status
        .as_deref()
        .map(|s| {
            s.parse::<AccountStatus>()
                .map_err(|r| ParseError::new("status", r))
        })
        .transpose()?;
    let max = input.max_tokens.map(max_tokens).transpose()?;
    let quota = input.monthly_quota.try_given(monthly_quota)?;
    let rate_limit = input.rate_limit.try_given(|r| r.check("rate_limit"))?;
    let secret_calls = input.secret_calls.given();
    let default = ctx.config.secret_calls;
    ctx.store
        .update_account(
            id,
            ctx.clock.now(),
            default,
            &p.stamp("account.update"),
            |mut a| {
                if let Some(s) = status {
                    a.status = s;
                }
                if let Some(m) = max {
                    a.max_tokens = m;
                }
                if let Some(q) = quota {
                    a.monthly_quota = q;
                }
                if let Some(r) = rate_limit {
                    a.rate_limit = r;
                }
                if let Some(c) = secret_calls {
                    a.secret_calls = c;
                }
                Ok::<_, Error>(a)
            },
        )
        .await
        .map_err(not_found_as("account"))
}

/// Gives an account a new secret (returned once); the old one stops working at once.
pub async fn reset_account_secret(ctx: &Ctx, p: &Caller, id: &str) -> Result<Plain> {
    require_account_admin(p, id)?;
    let account = ctx
        .store
        .account(id)
        .await?
        .ok_or(Error::NotFound("account"))?;
    let secret = credential::new_account_secret(&ctx.config.tokens.prefix, id);
    ctx.store
        .set_account_secret(
            id,
            &secret.hash(),
            &ctx.master_key.seal(&secret, &account.api_key),
            ctx.clock.now(),
            &p.stamp("account.secret_reset"),
        )
        .await
        .map_err(|e| not_found_as("account")(e.into()))?;
    Ok(secret)
}
