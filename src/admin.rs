//! Issuance and management: the operations behind the admin HTTP routes and the CLI.
//!
//! Each operation takes who is asking (`Principal`), the caller's input as written (so errors can
//! name the caller's field), and the shared `Ctx`. It parses the input into domain values once,
//! applies the role rules of the spec, and calls the store. Nothing here knows HTTP.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::domain::{
    credential::{self, hashes_match, Plain, Presented},
    email, ids, limits,
    limits::ExpiryRequest,
    net,
    role::Role,
    scope,
    status::{AccountStatus, TokenStatus},
    ParseError,
};
use crate::patch::Patch;
use crate::store::{
    Account, NewAccount, NewToken, Owner, Store, StoreError, Token, TokenFilter, User,
};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use std::{net::IpAddr, sync::Arc};

/// What the operations share: configuration, store and clock.
#[derive(Clone)]
pub struct Ctx {
    /// Checked configuration.
    pub config: Arc<Config>,
    /// The store.
    pub store: Store,
    /// Source of "now".
    pub clock: SharedClock,
    /// Seals the secrets of JWT-signing tokens.
    pub master_key: Arc<crate::seal::MasterKey>,
    /// Folds counted calls into the store before a read or change that depends on them.
    pub usage: crate::verify::meter::Settle,
}

/// Why an operation did not happen. Mapped to HTTP status and numeric code in `api::error` and to
/// an exit code in `cli`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; names the field.
    #[error("{}: {}", .0.field, .0.reason)]
    Invalid(#[from] ParseError),
    /// No credential was presented.
    #[error("no credentials given: send Authorization: Bearer <credential>, Authorization: APIKey <credential>, or ?Secret=<credential>")]
    NoCredentials,
    /// An account secret or operator credential that does not match.
    #[error("invalid credentials: bad secret")]
    BadSecret,
    /// A token that is malformed, unknown, revoked or expired.
    #[error("invalid credentials: bad token ({0})")]
    BadToken(&'static str),
    /// The credential's account is inactive.
    #[error("the account is inactive")]
    AccountInactive,
    /// The credential may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// A token role above what the credential (or the user) holds.
    #[error("role {requested} is above {allowed}, the highest this credential may give")]
    RoleTooHigh {
        /// The role asked for.
        requested: Role,
        /// The highest role allowed.
        allowed: Role,
    },
    /// The thing named does not exist, or is not visible to this credential.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A duplicate name, or a change the record's state does not allow.
    #[error("{0}")]
    Conflict(String),
    /// The account's `max_tokens` would be passed.
    #[error("the account has {active} of {max} active tokens; {requested} more would pass its max_tokens")]
    TokenLimit {
        /// The account's limit.
        max: i64,
        /// Active tokens now.
        active: i64,
        /// Tokens asked for.
        requested: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Error::NotFound("record"),
            StoreError::Conflict(what) => Error::Conflict(format!("{what} already exists")),
            StoreError::TokenLimit { max, active } => Error::TokenLimit {
                max,
                active,
                requested: 0,
            },
            other => Error::Store(other),
        }
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The operator credential: every account.
    Operator,
    /// An account secret: that account's admin.
    Account(Account),
    /// An API token of an account, with its role.
    Token {
        /// The credential token.
        token: Box<Token>,
        /// Its account.
        account: Account,
        /// The role it acts with: its own, capped by its user's current role.
        role: Role,
    },
}

impl Principal {
    /// The role the principal acts with.
    pub fn role(&self) -> Role {
        match self {
            Principal::Operator | Principal::Account(_) => Role::Admin,
            Principal::Token { role, .. } => *role,
        }
    }

    /// The account the principal belongs to (`None` for the operator).
    pub fn account_id(&self) -> Option<&str> {
        match self {
            Principal::Operator => None,
            Principal::Account(a) => Some(&a.id),
            Principal::Token { account, .. } => Some(&account.id),
        }
    }

    /// A label for logs: never a secret.
    pub fn label(&self) -> String {
        match self {
            Principal::Operator => "operator".into(),
            Principal::Account(a) => format!("account:{}", a.id),
            Principal::Token { token, .. } => format!("token:{}", token.id),
        }
    }

    pub(crate) fn is_account_admin_of(&self, account_id: &str) -> bool {
        match self {
            Principal::Operator => true,
            Principal::Account(a) => a.id == account_id,
            Principal::Token { account, role, .. } => {
                account.id == account_id && *role == Role::Admin
            }
        }
    }
}

/// Checks a presented credential and says who it is. `client_ip` is where the call comes from:
/// a token restricted to some addresses manages only from those.
pub async fn authenticate(
    ctx: &Ctx,
    presented: &str,
    client_ip: Option<IpAddr>,
) -> Result<Principal> {
    let now = ctx.clock.now();
    let prefix = &ctx.config.tokens.prefix;
    let parsed = credential::parse(prefix, presented.trim()).map_err(|_| {
        // Say which kind was meant when the shape makes it clear.
        let p = presented.trim();
        if p.starts_with(&format!("{prefix}_sk_")) || p.starts_with(&format!("{prefix}_op_")) {
            Error::BadSecret
        } else {
            Error::BadToken("malformed")
        }
    })?;
    match parsed {
        Presented::Operator { hash } => match ctx.store.operator_hash().await? {
            Some(stored) if hashes_match(&hash, &stored) => Ok(Principal::Operator),
            _ => Err(Error::BadSecret),
        },
        Presented::AccountSecret { account_id, hash } => {
            let stored = ctx.store.account_secret_hash(&account_id).await?;
            if !stored.is_some_and(|s| hashes_match(&hash, &s)) {
                return Err(Error::BadSecret);
            }
            let account = ctx
                .store
                .account(&account_id)
                .await?
                .ok_or(Error::BadSecret)?;
            if account.status == AccountStatus::Inactive {
                return Err(Error::AccountInactive);
            }
            Ok(Principal::Account(account))
        }
        Presented::Token { id, hash } => {
            let (token, account) = usable_token(ctx, &id, &hash, now).await?;
            if !token.allows_ip(client_ip) {
                return Err(Error::Forbidden(
                    "this token may not be used from this address".into(),
                ));
            }
            // A token acts with at most its user's current role: demoting a user demotes the
            // tokens issued for it.
            let mut role = token.role;
            if let Some(u) = &token.user_id {
                match ctx.store.user(u).await? {
                    Some(user) => role = role.min(user.role),
                    None => return Err(Error::BadToken("unknown")),
                }
            }
            Ok(Principal::Token {
                token: Box::new(token),
                account,
                role,
            })
        }
    }
}

/// A token presented in full as a credential (management, JWT minting): its current secret
/// only (a secret in its regeneration grace period still verifies calls, but must not manage or
/// sign), not revoked or expired, its account active. Management is not metered, so a used-up
/// token still qualifies.
async fn usable_token(
    ctx: &Ctx,
    id: &str,
    hash: &[u8],
    now: DateTime<Utc>,
) -> Result<(Token, Account)> {
    let token = ctx
        .store
        .token(id)
        .await?
        .ok_or(Error::BadToken("unknown"))?;
    if !hashes_match(hash, &token.secret_hash) {
        return Err(Error::BadToken("unknown"));
    }
    match token.status_at(now) {
        TokenStatus::Revoked => return Err(Error::BadToken("revoked")),
        TokenStatus::Expired => return Err(Error::BadToken("expired")),
        TokenStatus::Active | TokenStatus::Exhausted => {}
    }
    let account = ctx
        .store
        .account(&token.account_id)
        .await?
        .ok_or(Error::BadToken("unknown"))?;
    if account.status == AccountStatus::Inactive {
        return Err(Error::AccountInactive);
    }
    Ok((token, account))
}

pub(crate) fn require_operator(p: &Principal, what: &str) -> Result<()> {
    match p {
        Principal::Operator => Ok(()),
        _ => Err(Error::Forbidden(format!(
            "only the operator credential may {what}"
        ))),
    }
}

/// Fails unless `p` is the operator or an admin of `account_id`. A credential of another account
/// gets "not found", so account ids cannot be probed.
fn require_account_admin(p: &Principal, account_id: &str) -> Result<()> {
    if p.is_account_admin_of(account_id) {
        Ok(())
    } else if p.account_id() == Some(account_id) {
        Err(Error::Forbidden(
            "this needs the account secret or an admin token".into(),
        ))
    } else {
        Err(Error::NotFound("account"))
    }
}

// ----- accounts -----

/// `POST /v1/accounts`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Unique name, 1 to 100 characters.
    pub name: Option<String>,
    /// Active tokens allowed (default from `accounts.default_max_tokens`).
    pub max_tokens: Option<i64>,
    /// Calls per calendar month over all its tokens; absent = no account quota.
    pub monthly_quota: Option<i64>,
}

/// `PATCH /v1/accounts/{id}`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAccount {
    /// `active` or `inactive`; an inactive account's credentials get 4014.
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    pub status: Option<String>,
    /// Active tokens allowed; existing tokens above a lowered limit stay.
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    pub max_tokens: Option<i64>,
    /// Calls per calendar month; `null` removes the quota.
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    pub monthly_quota: Patch<i64>,
}

const MAX_QUOTA: i64 = 1_000_000_000_000;

fn max_tokens(v: i64) -> Result<i64, ParseError> {
    if (1..=1_000_000).contains(&v) {
        Ok(v)
    } else {
        Err(ParseError::new("max_tokens", "must be 1 to 1000000"))
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
    p: &Principal,
    input: CreateAccount,
) -> Result<(Account, Plain)> {
    require_operator(p, "create accounts")?;
    let name = limits::text(input.name.as_deref().unwrap_or(""), 100, true, "name")?;
    let max = max_tokens(input.max_tokens.unwrap_or(ctx.config.default_max_tokens))?;
    let quota = input.monthly_quota.map(monthly_quota).transpose()?;
    let id = ids::random_id(ids::ENTITY_ID_LEN);
    let secret = credential::new_account_secret(&ctx.config.tokens.prefix, &id);
    let account = ctx
        .store
        .insert_account(
            &NewAccount {
                id,
                name,
                max_tokens: max,
                monthly_quota: quota,
                secret_hash: secret.hash(),
            },
            ctx.clock.now(),
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
    p: &Principal,
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
    ctx.store
        .update_account(id, ctx.clock.now(), |mut a| {
            if let Some(s) = status {
                a.status = s;
            }
            if let Some(m) = max {
                a.max_tokens = m;
            }
            if let Some(q) = quota {
                a.monthly_quota = q;
            }
            Ok::<_, Error>(a)
        })
        .await
        .map_err(not_found_as("account"))
}

/// Gives an account a new secret (returned once); the old one stops working at once.
pub async fn reset_account_secret(ctx: &Ctx, p: &Principal, id: &str) -> Result<Plain> {
    require_account_admin(p, id)?;
    let secret = credential::new_account_secret(&ctx.config.tokens.prefix, id);
    ctx.store
        .set_account_secret(id, &secret.hash(), ctx.clock.now())
        .await
        .map_err(|e| not_found_as("account")(e.into()))?;
    Ok(secret)
}

fn not_found_as(what: &'static str) -> impl Fn(Error) -> Error {
    move |e| match e {
        Error::NotFound(_) => Error::NotFound(what),
        e => e,
    }
}

// ----- users -----

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

fn parse_role(s: &str, field: &str) -> Result<Role, ParseError> {
    s.parse::<Role>().map_err(|r| ParseError::new(field, r))
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

// ----- tokens -----

/// `POST /v1/tokens`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokens {
    /// The account to issue in (operator only; others issue in their own).
    pub account_id: Option<String>,
    /// The user the tokens are issued for (operator and admins; others issue for their own user).
    pub user_id: Option<String>,
    /// Name, 1 to 100 characters.
    pub name: Option<String>,
    /// Free-text note, up to 1000 characters.
    pub description: Option<String>,
    /// `admin`, `engineer`, `user` (default) or `readonly`; never above the caller's.
    pub role: Option<String>,
    /// Allowed calls; empty = all; `prefix:*` wildcards.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Allowed client IPs or CIDR blocks; empty = any.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Uses allowed, 1 to 999999999; `null` = unlimited; absent = the configured default.
    #[serde(default, alias = "RequestCount")]
    #[schema(value_type = Option<i64>)]
    pub usage_limit: Patch<i64>,
    /// Seconds until it expires, 1 to 315569520; `null` = never.
    #[serde(default, alias = "Lifetime")]
    #[schema(value_type = Option<i64>)]
    pub lifetime_seconds: Patch<i64>,
    /// UTC date (`YYYY-MM-DD` or `dd/MM/yyyy`); it stops working at 00:00 UTC that day.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub expires_on: Patch<String>,
    /// How many identical tokens to create (default 1).
    #[serde(alias = "Count")]
    pub count: Option<i64>,
    /// `remaining` is set back to this at 00:00 UTC on the 1st of each month.
    pub refill_monthly: Option<i64>,
    /// Whether the tokens may sign short-lived JWTs (their secret is then kept sealed under the
    /// master key). Default false.
    pub jwt: Option<bool>,
}

fn expiry_request(
    lifetime: Patch<i64>,
    on: Patch<String>,
    default: Option<i64>,
) -> Result<Option<ExpiryRequest>, ParseError> {
    match (lifetime, on) {
        (Patch::Absent, Patch::Absent) => Ok(default.map(ExpiryRequest::Lifetime)),
        (Patch::Value(s), Patch::Absent) => Ok(Some(ExpiryRequest::Lifetime(s))),
        (Patch::Absent, Patch::Value(d)) => Ok(Some(ExpiryRequest::On(d))),
        (Patch::Null, Patch::Absent) | (Patch::Absent, Patch::Null) => {
            Ok(Some(ExpiryRequest::Never))
        }
        // Both given, even one as null ("never") and the other as a date: which one was meant?
        _ => Err(ParseError::new(
            "expires_on",
            "give lifetime_seconds or expires_on, not both",
        )),
    }
}

/// A token credential never issues or extends a token beyond its own expiry; with no expiry
/// asked for, the new one expires with it.
fn cap_expiry(
    p: &Principal,
    wanted: Option<DateTime<Utc>>,
    req: &Option<ExpiryRequest>,
) -> Result<Option<DateTime<Utc>>, ParseError> {
    let Principal::Token { token, .. } = p else {
        return Ok(wanted);
    };
    let Some(limit) = token.expires_at else {
        return Ok(wanted);
    };
    match wanted {
        Some(w) if w <= limit => Ok(Some(w)),
        None if !matches!(req, Some(ExpiryRequest::Never)) => Ok(Some(limit)),
        _ => {
            let field = match req {
                Some(ExpiryRequest::On(_)) => "expires_on",
                _ => "lifetime_seconds",
            };
            Err(ParseError::new(
                field,
                format!(
                    "must not outlive the token making this call (it expires {})",
                    limit.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                ),
            ))
        }
    }
}

fn opt_text(v: Option<&str>, max: usize, field: &str) -> Result<Option<String>, ParseError> {
    Ok(v.map(|s| limits::text(s, max, false, field))
        .transpose()?
        .filter(|s| !s.is_empty()))
}

fn refill(v: i64) -> Result<i64, ParseError> {
    limits::usage_limit(v, "refill_monthly")
}

/// Creates `count` tokens; returns each with its plain value, which is never shown again.
pub async fn create_tokens(
    ctx: &Ctx,
    p: &Principal,
    input: CreateTokens,
) -> Result<Vec<(Token, Plain)>> {
    let now = ctx.clock.now();
    let cfg = &ctx.config.tokens;
    if !p.role().may_manage_tokens() {
        return Err(Error::Forbidden(format!(
            "a {} token may not create tokens",
            p.role()
        )));
    }
    // Validate the input first: a bad field is reported whoever asks.
    let name = limits::text(input.name.as_deref().unwrap_or(""), 100, true, "name")?;
    let description = opt_text(input.description.as_deref(), 1000, "description")?;
    let role = parse_role(input.role.as_deref().unwrap_or("user"), "role")?;
    let scopes = scope::parse_list(&input.scopes, "scopes")?;
    let ips = net::parse_list(&input.allowed_ips, "allowed_ips")?;
    let usage_limit = match input.usage_limit {
        Patch::Absent => cfg.default_usage_limit,
        Patch::Null => None,
        Patch::Value(v) => Some(limits::usage_limit(v, "usage_limit")?),
    };
    let expiry = expiry_request(
        input.lifetime_seconds,
        input.expires_on,
        cfg.default_lifetime_seconds,
    )?;
    let expires_at = match &expiry {
        Some(req) => limits::resolve_expiry(
            req,
            cfg.max_lifetime_seconds,
            now,
            "lifetime_seconds",
            "expires_on",
        )?,
        None => None,
    };
    let count = limits::count(input.count.unwrap_or(1), cfg.max_count_per_request, "count")?;
    let refill_monthly = input.refill_monthly.map(refill).transpose()?;
    if refill_monthly.is_some() && usage_limit.is_none() {
        return Err(ParseError::new("refill_monthly", "needs a usage_limit to refill").into());
    }

    // Where, for whom, and by whom.
    let account_id = match (p, &input.account_id) {
        (Principal::Operator, Some(a)) => {
            find_account(ctx, a)
                .await
                .map_err(|_| Error::Invalid(ParseError::new("account_id", "no such account")))?
                .id
        }
        (Principal::Operator, None) => {
            return Err(ParseError::new(
                "account_id",
                "is required when the operator creates tokens",
            )
            .into())
        }
        (_, Some(a)) if Some(a.as_str()) != p.account_id() => {
            return Err(Error::Forbidden(
                "account_id: tokens can only be created in the credential's own account".into(),
            ))
        }
        _ => p.account_id().unwrap_or_default().to_string(),
    };
    if role > p.role() {
        return Err(Error::RoleTooHigh {
            requested: role,
            allowed: p.role(),
        });
    }
    let expires_at = cap_expiry(p, expires_at, &expiry)?;
    if let Principal::Operator = p {
        let account = ctx
            .store
            .account(&account_id)
            .await?
            .ok_or(Error::NotFound("account"))?;
        if account.status == AccountStatus::Inactive {
            return Err(Error::Conflict(
                "the account is inactive; activate it before issuing tokens".into(),
            ));
        }
    }
    let (user_id, issued_by) = match (p, input.user_id) {
        (Principal::Token { token, role, .. }, given) if *role != Role::Admin => {
            if given.is_some() && given != token.user_id {
                return Err(Error::Forbidden(
                    "user_id: only an admin may issue tokens for another user".into(),
                ));
            }
            match &token.user_id {
                Some(u) => (Some(u.clone()), format!("user:{u}")),
                None => (None, format!("token:{}", token.id)),
            }
        }
        (_, Some(u)) => {
            let user = ctx
                .store
                .user(&u)
                .await?
                .filter(|x| x.account_id == account_id)
                .ok_or_else(|| {
                    Error::Invalid(ParseError::new("user_id", "no such user in this account"))
                })?;
            if role > user.role {
                return Err(Error::RoleTooHigh {
                    requested: role,
                    allowed: user.role,
                });
            }
            (Some(user.id.clone()), format!("user:{}", user.id))
        }
        (Principal::Operator, None) => (None, "operator".to_string()),
        (Principal::Account(_), None) => (None, "account".to_string()),
        (Principal::Token { token, .. }, None) => match &token.user_id {
            Some(u) => (Some(u.clone()), format!("user:{u}")),
            None => (None, format!("token:{}", token.id)),
        },
    };

    let mut plains = Vec::with_capacity(count);
    let mut new = Vec::with_capacity(count);
    let jwt = input.jwt.unwrap_or(false);
    for _ in 0..count {
        let id = credential::new_token_id();
        let plain = credential::new_token(&cfg.prefix, &id);
        let sealed_secret = jwt.then(|| ctx.master_key.seal(&plain, &id));
        new.push(NewToken {
            id,
            account_id: account_id.clone(),
            user_id: user_id.clone(),
            issued_by: issued_by.clone(),
            policy: None,
            name: name.clone(),
            description: description.clone(),
            role,
            scopes: scopes.iter().map(|s| s.as_str().to_string()).collect(),
            allowed_ips: ips.iter().map(|n| n.to_string()).collect(),
            usage_limit,
            refill_monthly,
            expires_at,
            jwt_enabled: jwt,
            sealed_secret,
            secret_hash: plain.hash(),
        });
        plains.push(plain);
    }
    let tokens = ctx
        .store
        .create_tokens(&account_id, &new, now)
        .await
        .map_err(|e| match e {
            StoreError::TokenLimit { max, active } => Error::TokenLimit {
                max,
                active,
                requested: count,
            },
            StoreError::NotFound => Error::NotFound("account"),
            e => e.into(),
        })?;
    Ok(tokens.into_iter().zip(plains).collect())
}

/// `GET /v1/tokens` query.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListTokens {
    /// Only this account's tokens (operator only; others see their own account).
    pub account_id: Option<String>,
    /// `active`, `expired`, `exhausted` or `revoked`, as of now.
    pub status: Option<String>,
    /// Only this role.
    pub role: Option<String>,
    /// Only tokens issued by this user id or issuer (`operator`, `account`, `user:<id>`, `policy:<name>`).
    pub issued_by: Option<String>,
    /// Only tokens that expire within this many days (0 to 3650).
    pub expiring_within_days: Option<i64>,
    /// Name or description contains this (case-insensitive).
    pub q: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// The `next_page` value of the previous page.
    pub page: Option<String>,
}

fn parse_cursor(s: &str) -> Result<(DateTime<Utc>, String), ParseError> {
    let bad = || ParseError::new("page", "is not a page cursor from a previous answer");
    let (ms, id) = s.split_once('.').ok_or_else(bad)?;
    let at = ms
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .ok_or_else(bad)?;
    if id.len() != ids::TOKEN_ID_LEN || !ids::is_base62(id) {
        return Err(bad());
    }
    Ok((at, id.to_string()))
}

fn cursor(t: &Token) -> String {
    format!("{}.{}", t.created_at.timestamp_millis(), t.id)
}

/// Lists the tokens the principal may see, newest first. Returns the page and the cursor of the
/// next one.
pub async fn list_tokens(
    ctx: &Ctx,
    p: &Principal,
    q: ListTokens,
) -> Result<(Vec<Token>, Option<String>)> {
    let now = ctx.clock.now();
    if !p.role().may_manage_tokens() {
        return Err(Error::Forbidden(format!(
            "a {} token may only show itself (GET /v1/tokens/{{id}})",
            p.role()
        )));
    }
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<TokenStatus>()
                .map_err(|r| ParseError::new("status", r))
        })
        .transpose()?;
    let role = q
        .role
        .as_deref()
        .map(|r| parse_role(r, "role"))
        .transpose()?;
    let expiring_before = match q.expiring_within_days {
        Some(d) if (0..=3650).contains(&d) => Some(now + TimeDelta::days(d)),
        Some(_) => return Err(ParseError::new("expiring_within_days", "must be 0 to 3650").into()),
        None => None,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ParseError::new("limit", "must be 1 to 500").into());
    }
    let after = q.page.as_deref().map(parse_cursor).transpose()?;
    let text = opt_text(q.q.as_deref(), 100, "q")?;
    let issued_by = opt_text(q.issued_by.as_deref(), 200, "issued_by")?;
    let account_id = match (p, q.account_id) {
        (Principal::Operator, a) => a,
        (_, Some(a)) if Some(a.as_str()) != p.account_id() => {
            return Err(Error::Forbidden(
                "account_id: only your own account's tokens can be listed".into(),
            ))
        }
        _ => p.account_id().map(String::from),
    };
    let owner = match p {
        Principal::Token { token, role, .. } if *role != Role::Admin => Some(Owner {
            token_id: token.id.clone(),
            user_id: token.user_id.clone(),
        }),
        _ => None,
    };
    let filter = TokenFilter {
        account_id,
        owner,
        status,
        role,
        issued_by,
        expiring_before,
        q: text,
        after,
        limit: limit + 1,
    };
    let mut tokens = ctx.store.list_tokens(&filter, now).await?;
    let next = if tokens.len() as i64 > limit {
        tokens.truncate(limit as usize);
        tokens.last().map(cursor)
    } else {
        None
    };
    Ok((tokens, next))
}

/// What a principal may do with one token, least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    None,
    Show,
    Revoke,
    Manage,
}

fn access(p: &Principal, t: &Token) -> Access {
    match p {
        Principal::Operator => Access::Manage,
        Principal::Account(a) if a.id == t.account_id => Access::Manage,
        Principal::Account(_) => Access::None,
        Principal::Token {
            token: me,
            account,
            role,
        } => {
            if account.id != t.account_id {
                return Access::None;
            }
            if t.id == me.id {
                // A token never edits or regenerates itself (it could lift its own limits);
                // a managing one may give itself up.
                return if role.may_manage_tokens() {
                    Access::Revoke
                } else {
                    Access::Show
                };
            }
            let own = match &me.user_id {
                Some(u) => t.user_id.as_deref() == Some(u.as_str()),
                None => t.issued_by == format!("token:{}", me.id),
            };
            match role {
                Role::Admin => Access::Manage,
                // A token never manages one that outranks it.
                Role::Engineer if own && t.role <= Role::Engineer => Access::Manage,
                _ => Access::None,
            }
        }
    }
}

async fn load_token(ctx: &Ctx, p: &Principal, id: &str, need: Access) -> Result<Token> {
    let token = ctx.store.token(id).await?.ok_or(Error::NotFound("token"))?;
    match access(p, &token) {
        Access::None => Err(Error::NotFound("token")),
        granted if granted < need => Err(Error::Forbidden(match granted {
            Access::Show => format!("a {} token may only show itself", p.role()),
            _ => "a token may not change or regenerate itself; ask an admin".into(),
        })),
        _ => Ok(token),
    }
}

/// Shows one token the principal may see.
pub async fn show_token(ctx: &Ctx, p: &Principal, id: &str) -> Result<Token> {
    load_token(ctx, p, id, Access::Show).await
}

/// `PATCH /v1/tokens/{id}`: only the fields given change; `null` clears.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateToken {
    /// New name.
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    pub name: Option<String>,
    /// New note; `null` or `""` clears it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub description: Patch<String>,
    /// New role, never above the caller's.
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    pub role: Option<String>,
    /// New scopes (replaces the list).
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    pub scopes: Option<Vec<String>>,
    /// New allowed IPs/CIDRs (replaces the list).
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    pub allowed_ips: Option<Vec<String>>,
    /// New usage limit; `remaining` becomes the new limit minus the uses already counted
    /// against the old one. `null` = unlimited.
    #[serde(default, alias = "RequestCount")]
    #[schema(value_type = Option<i64>)]
    pub usage_limit: Patch<i64>,
    /// New lifetime from now; `null` = never expires.
    #[serde(default, alias = "Lifetime")]
    #[schema(value_type = Option<i64>)]
    pub lifetime_seconds: Patch<i64>,
    /// New expiry date (UTC); `null` = never expires.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub expires_on: Patch<String>,
    /// New monthly refill amount; `null` = none.
    #[serde(default)]
    #[schema(value_type = Option<i64>)]
    pub refill_monthly: Patch<i64>,
}

/// Changes a token's editable fields.
pub async fn update_token(ctx: &Ctx, p: &Principal, id: &str, input: UpdateToken) -> Result<Token> {
    let now = ctx.clock.now();
    let cfg = &ctx.config.tokens;
    let current = load_token(ctx, p, id, Access::Manage).await?;
    let name = input
        .name
        .as_deref()
        .map(|n| limits::text(n, 100, true, "name"))
        .transpose()?;
    let description = match input.description.given() {
        None => None,
        Some(d) => Some(opt_text(d.as_deref(), 1000, "description")?),
    };
    let role = input
        .role
        .as_deref()
        .map(|r| parse_role(r, "role"))
        .transpose()?;
    if let Some(r) = role {
        // Never above the caller, nor above the user the token was issued for.
        let mut allowed = p.role();
        if let Some(u) = &current.user_id {
            if let Some(user) = ctx.store.user(u).await? {
                allowed = allowed.min(user.role);
            }
        }
        if r > allowed {
            return Err(Error::RoleTooHigh {
                requested: r,
                allowed,
            });
        }
    }
    let scopes = input
        .scopes
        .as_deref()
        .map(|s| scope::parse_list(s, "scopes"))
        .transpose()?;
    let ips = input
        .allowed_ips
        .as_deref()
        .map(|s| net::parse_list(s, "allowed_ips"))
        .transpose()?;
    let usage_limit = input
        .usage_limit
        .try_given(|v| limits::usage_limit(v, "usage_limit"))?;
    let expiry = expiry_request(input.lifetime_seconds, input.expires_on, None)?;
    let expires_at = match &expiry {
        None => None,
        Some(req) => {
            let at = limits::resolve_expiry(
                req,
                cfg.max_lifetime_seconds,
                now,
                "lifetime_seconds",
                "expires_on",
            )?;
            Some(cap_expiry(p, at, &expiry)?)
        }
    };
    let refill_monthly = input.refill_monthly.try_given(refill)?;
    ctx.store
        .update_token(id, now, |mut t| {
            if t.status == TokenStatus::Revoked {
                return Err(Error::Conflict(
                    "the token is revoked and can no longer be changed".into(),
                ));
            }
            if let Some(n) = name {
                t.name = n;
            }
            if let Some(d) = description {
                t.description = d;
            }
            if let Some(r) = role {
                t.role = r;
            }
            if let Some(s) = scopes {
                t.scopes = s.iter().map(|s| s.as_str().to_string()).collect();
            }
            if let Some(i) = ips {
                t.allowed_ips = i.iter().map(|n| n.to_string()).collect();
            }
            if let Some(limit) = usage_limit {
                let used = match (t.usage_limit, t.remaining) {
                    (Some(l), Some(r)) => (l - r).max(0),
                    _ => 0,
                };
                t.usage_limit = limit;
                t.remaining = limit.map(|l| (l - used).max(0));
                if limit.is_none() {
                    t.refill_monthly = None;
                }
            }
            if let Some(e) = expires_at {
                t.expires_at = e;
            }
            if let Some(r) = refill_monthly {
                if r.is_some() && t.usage_limit.is_none() {
                    return Err(
                        ParseError::new("refill_monthly", "needs a usage_limit to refill").into(),
                    );
                }
                // A refill added now starts with next month, as on a token created now; the
                // month it was created in would otherwise refill it at once.
                if t.refill_monthly.is_none() && r.is_some() {
                    t.refill_period = Some(crate::domain::period::month_key(now));
                }
                t.refill_monthly = r;
            }
            t.status = t.status_at(now);
            Ok(t)
        })
        .await
        .map_err(|e| match e {
            Error::TokenLimit { max, active, .. } => Error::TokenLimit {
                max,
                active,
                requested: 1,
            },
            e => not_found_as("token")(e),
        })
}

/// Revokes a token: it stops working at once and stays listed for audit. Revoking a revoked
/// token changes nothing.
pub async fn revoke_token(ctx: &Ctx, p: &Principal, id: &str) -> Result<Token> {
    let now = ctx.clock.now();
    load_token(ctx, p, id, Access::Revoke).await?;
    ctx.store
        .update_token(id, now, |mut t| {
            if t.status != TokenStatus::Revoked {
                t.status = TokenStatus::Revoked;
                t.revoked_at = Some(now);
            }
            Ok::<_, Error>(t)
        })
        .await
        .map_err(not_found_as("token"))
}

/// `POST /v1/tokens/{id}/regenerate`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Regenerate {
    /// Seconds the old secret keeps working (default 0: it stops at once).
    pub grace_seconds: Option<i64>,
}

/// Gives a token a new secret with the same id, settings and counters; returns the new plain
/// value once.
pub async fn regenerate_token(
    ctx: &Ctx,
    p: &Principal,
    id: &str,
    input: Regenerate,
) -> Result<(Token, Plain)> {
    let now = ctx.clock.now();
    let max = ctx.config.tokens.max_regenerate_grace_seconds;
    let grace = match input.grace_seconds {
        None | Some(0) => None,
        Some(s) if (1..=max).contains(&s) => Some(now + TimeDelta::seconds(s)),
        Some(_) => {
            return Err(ParseError::new("grace_seconds", format!("must be 0 to {max}")).into())
        }
    };
    let token = load_token(ctx, p, id, Access::Manage).await?;
    let plain = credential::new_token(&ctx.config.tokens.prefix, &token.id);
    let sealed = token
        .jwt_enabled
        .then(|| ctx.master_key.seal(&plain, &token.id));
    let token = match ctx
        .store
        .regenerate_token(id, &plain.hash(), sealed.as_deref(), grace, now)
        .await
    {
        // Revoked, even since it was read: the store regenerates only a token not revoked.
        Err(StoreError::NotFound) => {
            return Err(Error::Conflict(
                "the token is revoked; create a new one instead".into(),
            ))
        }
        r => r.map_err(|e| not_found_as("token")(e.into()))?,
    };
    Ok((token, plain))
}

/// A new operator credential, not yet valid anywhere (`replace_operator` makes it so).
pub fn new_operator_credential(ctx: &Ctx) -> Plain {
    credential::new_operator_credential(&ctx.config.tokens.prefix)
}

/// Makes `plain` the operator credential; the old one stops working.
pub async fn replace_operator(ctx: &Ctx, plain: &Plain) -> Result<()> {
    ctx.store
        .operator_replace(&plain.hash(), ctx.clock.now())
        .await?;
    Ok(())
}

/// On a store without an operator credential, makes one and returns it (once, to this caller
/// only); on a store that has one, returns `None`.
pub async fn init_operator(ctx: &Ctx) -> Result<Option<Plain>> {
    let plain = new_operator_credential(ctx);
    let created = ctx
        .store
        .operator_init(&plain.hash(), ctx.clock.now())
        .await?;
    Ok(created.then_some(plain))
}

/// `POST /v1/jwt`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintJwt {
    /// The JWT-enabled token to sign with (it is the HMAC key).
    pub token: Option<String>,
    /// Uses the JWT allows (default 1).
    pub request_count: Option<i64>,
    /// Seconds until it expires (default 300, at most `tokens.max_jwt_lifetime_seconds`).
    pub lifetime_seconds: Option<i64>,
    /// The only client IP that may use it; absent = any.
    pub user_ip: Option<String>,
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
    };
    let jwt = crate::verify::jwt::sign(&claims, presented.trim().as_bytes())
        .map_err(|e| Error::Store(StoreError::Other(format!("cannot sign a JWT: {e}"))))?;
    Ok((jwt, claims))
}
