//! Tokens: issue, list, show, change, revoke and regenerate.

use super::*;

/// `POST /v1/tokens`
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokens {
    /// The account to issue in, by id or name (the operator, who must give it; others issue in
    /// their own).
    #[schema(schema_with = schema::any_text_or_null)]
    pub account_id: Option<String>,
    /// The user the tokens are issued for (operator and admins; others issue for their own user).
    #[schema(schema_with = schema::any_text_or_null)]
    pub user_id: Option<String>,
    /// Name, 1 to 100 characters (surrounding white space is trimmed).
    #[schema(required = true, schema_with = schema::name)]
    pub name: Option<String>,
    /// Free-text note, up to 1000 characters.
    #[schema(schema_with = schema::note)]
    pub description: Option<String>,
    /// `admin`, `engineer`, `user` (default) or `readonly`; never above the caller's.
    #[schema(schema_with = schema::role_or_null)]
    pub role: Option<String>,
    /// Allowed calls; empty = all; `prefix:*` wildcards.
    #[serde(default)]
    #[schema(schema_with = schema::scopes)]
    pub scopes: Vec<String>,
    /// Allowed client IPs or CIDR blocks; empty = any.
    #[serde(default)]
    #[schema(schema_with = schema::ip_rules)]
    pub allowed_ips: Vec<String>,
    /// Uses allowed, 1 to 999999999; `null` = unlimited; absent = the configured default.
    /// Also read as `RequestCount`.
    #[serde(default, alias = "RequestCount", deserialize_with = "whole::patch")]
    #[schema(schema_with = uses_or_null)]
    pub usage_limit: Patch<i64>,
    /// Seconds until it expires, 1 to `tokens.max_lifetime_seconds`; `null` = never. Also read
    /// as `Lifetime`; not with `expires_on`.
    #[serde(default, alias = "Lifetime", deserialize_with = "whole::patch")]
    #[schema(schema_with = lifetime_or_null)]
    pub lifetime_seconds: Patch<i64>,
    /// UTC date (`YYYY-MM-DD` or `dd/MM/yyyy`) after today and within the maximum lifetime; it
    /// stops working at 00:00 UTC that day. `null` = never; not with `lifetime_seconds`.
    #[serde(default)]
    #[schema(schema_with = schema::date_or_null)]
    pub expires_on: Patch<String>,
    /// How many identical tokens to create, 1 to `tokens.max_count_per_request` (default 1).
    /// Also read as `Count`.
    #[serde(default, alias = "Count", deserialize_with = "whole::option")]
    #[schema(schema_with = count_or_null)]
    pub count: Option<i64>,
    /// `remaining` is set back to this at 00:00 UTC on the 1st of each month; needs a usage
    /// limit.
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(schema_with = uses_or_null)]
    pub refill_monthly: Option<i64>,
    /// Whether the tokens may sign short-lived JWTs (their secret is then kept sealed under the
    /// master key). Default false.
    pub jwt: Option<bool>,
    /// At most `limit` calls per `window_seconds` for each token; absent or `null` = none.
    #[serde(default)]
    pub rate_limit: Option<RateLimitInput>,
}

fn uses_or_null() -> utoipa::openapi::schema::Object {
    schema::int_or_null(1, limits::MAX_USAGE_LIMIT)
}

fn lifetime_or_null() -> utoipa::openapi::schema::Object {
    schema::int_or_null(1, limits::MAX_LIFETIME_SECONDS)
}

fn count_or_null() -> utoipa::openapi::schema::Object {
    // The document carries the configured `tokens.max_count_per_request` in its place.
    schema::int_or_null(1, 100)
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

/// A change of expiry asked for (`None`: none), and the instant it resolves to (`Some(None)`:
/// never), by the rules of creation.
#[allow(clippy::type_complexity)]
fn changed_expiry(
    lifetime: Patch<i64>,
    on: Patch<String>,
    cfg: &crate::config::TokenSettings,
    now: DateTime<Utc>,
) -> Result<(Option<ExpiryRequest>, Option<Option<DateTime<Utc>>>), ParseError> {
    let expiry = expiry_request(lifetime, on, None)?;
    let expires_at = expiry
        .as_ref()
        .map(|req| {
            limits::resolve_expiry(
                req,
                cfg.max_lifetime_seconds,
                now,
                "lifetime_seconds",
                "expires_on",
            )
        })
        .transpose()?;
    Ok((expiry, expires_at))
}

/// A change that would bring one token back to life counts it against `max_tokens`; the
/// refusal says one was asked for. A token gone is `NotFound("token")`.
fn one_token_back(e: Error) -> Error {
    match e {
        Error::TokenLimit { max, active, .. } => Error::TokenLimit {
            max,
            active,
            requested: 1,
        },
        e => not_found_as("token")(e),
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

fn refill(v: i64) -> Result<i64, ParseError> {
    limits::usage_limit(v, "refill_monthly")
}

/// Creates `count` tokens; returns each with its plain value, which is never shown again.
pub async fn create_tokens(
    ctx: &Ctx,
    p: &Caller,
    input: CreateTokens,
) -> Result<Vec<(Token, Plain)>> {
    let now = ctx.clock.now();
    if !p.role().may_manage_tokens() {
        return Err(Error::Forbidden(format!(
            "a {} token may not create tokens",
            p.role()
        )));
    }
    // Validate the input first: a bad field is reported whoever asks.
    let spec = TokenSpec::parse(&input, &ctx.config.tokens, now)?;
    let account_id = issuing_account(ctx, p, input.account_id.as_deref()).await?;
    if spec.role > p.role() {
        return Err(Error::RoleTooHigh {
            requested: spec.role,
            allowed: p.role(),
        });
    }
    let expires_at = cap_expiry(p, spec.expires_at, &spec.expiry)?;
    if p.is_operator() {
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
    let (user_id, user_role) = issued_for(ctx, p, input.user_id, &account_id, spec.role).await?;
    let issue = Issue {
        account_id,
        user_id,
        user_role,
        issued_by: p.issuer(),
        expires_at,
    };
    write_tokens(ctx, &spec, issue, now, &p.stamp("token.create")).await
}

/// What `POST /v1/tokens` asks for, checked: every field valid, before any authorization.
struct TokenSpec {
    name: String,
    description: Option<String>,
    role: Role,
    scopes: Vec<scope::Scope>,
    allowed_ips: Vec<ipnet::IpNet>,
    usage_limit: Option<i64>,
    expiry: Option<ExpiryRequest>,
    expires_at: Option<DateTime<Utc>>,
    count: usize,
    refill_monthly: Option<i64>,
    jwt: bool,
    rate_limit: Option<RateLimit>,
}

impl TokenSpec {
    fn parse(
        input: &CreateTokens,
        cfg: &crate::config::TokenSettings,
        now: DateTime<Utc>,
    ) -> Result<TokenSpec, ParseError> {
        // In the order the fields are reported when several are bad.
        let name = limits::text(input.name.as_deref().unwrap_or(""), 100, true, "name")?;
        let description = opt_text(input.description.as_deref(), 1000, "description")?;
        let role = parse_role(input.role.as_deref().unwrap_or("user"), "role")?;
        let scopes = scope::parse_list(&input.scopes, "scopes")?;
        let allowed_ips = net::parse_list(&input.allowed_ips, "allowed_ips")?;
        let usage_limit = match input.usage_limit {
            Patch::Absent => cfg.default_usage_limit,
            Patch::Null => None,
            Patch::Value(v) => Some(limits::usage_limit(v, "usage_limit")?),
        };
        let expiry = expiry_request(
            input.lifetime_seconds.clone(),
            input.expires_on.clone(),
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
            return Err(ParseError::new(
                "refill_monthly",
                "needs a usage_limit to refill",
            ));
        }
        let rate_limit = input
            .rate_limit
            .map(|r| r.check("rate_limit"))
            .transpose()?;
        Ok(TokenSpec {
            name,
            description,
            role,
            scopes,
            allowed_ips,
            usage_limit,
            expiry,
            expires_at,
            count,
            refill_monthly,
            jwt: input.jwt.unwrap_or(false),
            rate_limit,
        })
    }
}

/// The account new tokens go to: the operator names it; anyone else issues in their own.
async fn issuing_account(ctx: &Ctx, p: &Principal, asked: Option<&str>) -> Result<String> {
    match (p, asked) {
        (Principal::Operator | Principal::Cli, Some(a)) => Ok(find_account(ctx, a)
            .await
            .map_err(|_| Error::Invalid(ParseError::new("account_id", "no such account")))?
            .id),
        (Principal::Operator | Principal::Cli, None) => Err(ParseError::new(
            "account_id",
            "is required when the operator creates tokens",
        )
        .into()),
        (_, Some(a)) if Some(a) != p.account_id() => Err(Error::Forbidden(
            "account_id: tokens can only be created in the credential's own account".into(),
        )),
        _ => Ok(p.account_id().unwrap_or_default().to_string()),
    }
}

/// Whom new tokens are for: the user and that user's role as read now (the creation refuses
/// the issue if either changes before it commits). Only an admin (or the account secret, the
/// operator or the CLI) issues for another user, never above that user's role, and never for a
/// user who is not active.
async fn issued_for(
    ctx: &Ctx,
    p: &Principal,
    asked: Option<String>,
    account_id: &str,
    role: Role,
) -> Result<(Option<String>, Option<Role>)> {
    let own = |token: &Token| (token.user_id.clone(), token.user_role);
    match (p, asked) {
        (Principal::Token { token, role, .. }, given) if *role != Role::Admin => {
            if given.is_some() && given != token.user_id {
                return Err(Error::Forbidden(
                    "user_id: only an admin may issue tokens for another user".into(),
                ));
            }
            Ok(own(token))
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
            if user.status != UserStatus::Active {
                return Err(Error::Conflict(format!(
                    "user_id: the user is {}",
                    user.status.as_str()
                )));
            }
            if role > user.role {
                return Err(Error::RoleTooHigh {
                    requested: role,
                    allowed: user.role,
                });
            }
            Ok((Some(user.id), Some(user.role)))
        }
        (Principal::Token { token, .. }, None) => Ok(own(token)),
        (_, None) => Ok((None, None)),
    }
}

/// Where authorized tokens go, for whom, by whom, and until when.
struct Issue {
    account_id: String,
    user_id: Option<String>,
    user_role: Option<Role>,
    issued_by: String,
    expires_at: Option<DateTime<Utc>>,
}

/// Makes `spec.count` tokens and writes them at once (the store holds the account's
/// `max_tokens`).
async fn write_tokens(
    ctx: &Ctx,
    spec: &TokenSpec,
    issue: Issue,
    now: DateTime<Utc>,
    stamp: &Stamp,
) -> Result<Vec<(Token, Plain)>> {
    let mut plains = Vec::with_capacity(spec.count);
    let mut new = Vec::with_capacity(spec.count);
    for id in credential::new_token_ids(spec.count) {
        let plain = credential::new_token(&ctx.config.tokens.prefix, &id);
        let sealed_secret = spec.jwt.then(|| ctx.master_key.seal(&plain, &id));
        new.push(NewToken {
            id,
            account_id: issue.account_id.clone(),
            user_id: issue.user_id.clone(),
            user_role: issue.user_role,
            issued_by: issue.issued_by.clone(),
            policy: None,
            name: spec.name.clone(),
            description: spec.description.clone(),
            role: spec.role,
            scopes: spec.scopes.clone(),
            allowed_ips: spec.allowed_ips.clone(),
            rate_limit: spec.rate_limit,
            usage_limit: spec.usage_limit,
            refill_monthly: spec.refill_monthly,
            expires_at: issue.expires_at,
            jwt_enabled: spec.jwt,
            sealed_secret,
            secret_hash: plain.hash(),
        });
        plains.push(plain);
    }
    let tokens = ctx
        .store
        .create_tokens(&issue.account_id, &new, now, stamp)
        .await
        .map_err(|e| match e {
            StoreError::TokenLimit { max, active } => Error::TokenLimit {
                max,
                active,
                requested: spec.count,
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
    #[param(schema_with = schema::any_text)]
    pub account_id: Option<String>,
    /// `active`, `expired`, `exhausted` or `revoked`, as of now.
    #[param(schema_with = token_status)]
    pub status: Option<String>,
    /// Only this role.
    #[param(schema_with = schema::role)]
    pub role: Option<String>,
    /// Only tokens issued by this credential: `operator`, `cli`, `account`, `token:<id>`,
    /// `policy:<name>` or `unknown` (up to 200 characters).
    #[param(schema_with = issuer_filter)]
    pub issued_by: Option<String>,
    /// Only tokens issued for this user (up to 100 characters).
    #[param(schema_with = id_filter)]
    pub user_id: Option<String>,
    /// Only tokens that expire within this many days (0 to 3650).
    #[param(minimum = 0, maximum = 3650)]
    pub expiring_within_days: Option<i64>,
    /// Name or description contains this (case-insensitive; up to 100 characters).
    #[param(schema_with = id_filter)]
    pub q: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// The `next_page` value of the previous page.
    #[param(schema_with = token_cursor)]
    pub page: Option<String>,
}

fn token_status() -> utoipa::openapi::schema::Object {
    schema::one_of(&["active", "expired", "exhausted", "revoked"])
}

fn issuer_filter() -> utoipa::openapi::schema::Object {
    schema::text(200, false)
}

fn id_filter() -> utoipa::openapi::schema::Object {
    schema::text(100, false)
}

/// A page cursor: milliseconds since the epoch (at most 15 digits), a dot, a token id.
fn token_cursor() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some("^-?[0-9]{1,15}\\.[0-9A-Za-z]{8}$"))
        .build()
}

fn parse_cursor(s: &str) -> Result<(DateTime<Utc>, String), ParseError> {
    let bad = || ParseError::new("page", "is not a page cursor from a previous answer");
    let (ms, id) = s.split_once('.').ok_or_else(bad)?;
    let digits = ms.strip_prefix('-').unwrap_or(ms);
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
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
    let user_id = opt_text(q.user_id.as_deref(), 100, "user_id")?;
    let account_id = match (p, q.account_id) {
        (Principal::Operator | Principal::Cli, a) => a,
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
        user_id,
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
        Principal::Operator | Principal::Cli => Access::Manage,
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
    let token = ctx
        .store
        .token(id)
        .await?
        .filter(|t| !t.account_key)
        .ok_or(Error::NotFound("token"))?;
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
    #[schema(schema_with = schema::name)]
    pub name: Option<String>,
    /// New note; `null` or `""` clears it.
    #[serde(default)]
    #[schema(schema_with = schema::note)]
    pub description: Patch<String>,
    /// New role, never above the caller's.
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    #[schema(schema_with = schema::role)]
    pub role: Option<String>,
    /// New scopes (replaces the list).
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    #[schema(schema_with = schema::scopes)]
    pub scopes: Option<Vec<String>>,
    /// New allowed IPs/CIDRs (replaces the list).
    #[serde(default, deserialize_with = "crate::patch::non_null")]
    #[schema(schema_with = schema::ip_rules)]
    pub allowed_ips: Option<Vec<String>>,
    /// New usage limit; `remaining` becomes the new limit minus the uses already counted
    /// against the old one. `null` = unlimited. Also read as `RequestCount`.
    #[serde(default, alias = "RequestCount", deserialize_with = "whole::patch")]
    #[schema(schema_with = uses_or_null)]
    pub usage_limit: Patch<i64>,
    /// New lifetime from now; `null` = never expires. Also read as `Lifetime`; not with
    /// `expires_on`.
    #[serde(default, alias = "Lifetime", deserialize_with = "whole::patch")]
    #[schema(schema_with = lifetime_or_null)]
    pub lifetime_seconds: Patch<i64>,
    /// New expiry date (UTC), after today; `null` = never expires.
    #[serde(default)]
    #[schema(schema_with = schema::date_or_null)]
    pub expires_on: Patch<String>,
    /// New monthly refill amount; `null` = none.
    #[serde(default, deserialize_with = "whole::patch")]
    #[schema(schema_with = uses_or_null)]
    pub refill_monthly: Patch<i64>,
    /// New rate limit (`{limit, window_seconds}`); `null` = none.
    #[serde(default)]
    #[schema(value_type = Option<RateLimitInput>)]
    pub rate_limit: Patch<RateLimitInput>,
}

/// Changes a token's editable fields.
pub async fn update_token(ctx: &Ctx, p: &Caller, id: &str, input: UpdateToken) -> Result<Token> {
    let now = ctx.clock.now();
    let current = load_token(ctx, p, id, Access::Manage).await?;
    let mut change = TokenChange::parse(input, &ctx.config.tokens, now)?;
    if let Some(r) = change.role {
        // Never above the caller, nor above the user the token was issued for (whose current
        // role the token's row carries).
        let allowed = crate::domain::role::effective(p.role(), current.user_role);
        if r > allowed {
            return Err(Error::RoleTooHigh {
                requested: r,
                allowed,
            });
        }
    }
    if let Some(at) = change.expires_at {
        change.expires_at = Some(cap_expiry(p, at, &change.expiry)?);
    }
    ctx.store
        .update_token(id, now, None, &p.stamp("token.update"), |t| {
            change.apply(t, now)
        })
        .await
        .map_err(one_token_back)
}

/// What `PATCH /v1/tokens/{id}` asks to change, checked; `None` leaves a field as it is.
struct TokenChange {
    name: Option<String>,
    description: Option<Option<String>>,
    role: Option<Role>,
    scopes: Option<Vec<scope::Scope>>,
    allowed_ips: Option<Vec<ipnet::IpNet>>,
    usage_limit: Option<Option<i64>>,
    expiry: Option<ExpiryRequest>,
    expires_at: Option<Option<DateTime<Utc>>>,
    refill_monthly: Option<Option<i64>>,
    rate_limit: Option<Option<RateLimit>>,
}

impl TokenChange {
    fn parse(
        input: UpdateToken,
        cfg: &crate::config::TokenSettings,
        now: DateTime<Utc>,
    ) -> Result<TokenChange, ParseError> {
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
        let scopes = input
            .scopes
            .as_deref()
            .map(|s| scope::parse_list(s, "scopes"))
            .transpose()?;
        let allowed_ips = input
            .allowed_ips
            .as_deref()
            .map(|s| net::parse_list(s, "allowed_ips"))
            .transpose()?;
        let usage_limit = input
            .usage_limit
            .try_given(|v| limits::usage_limit(v, "usage_limit"))?;
        let (expiry, expires_at) =
            changed_expiry(input.lifetime_seconds, input.expires_on, cfg, now)?;
        let refill_monthly = input.refill_monthly.try_given(refill)?;
        let rate_limit = input.rate_limit.try_given(|r| r.check("rate_limit"))?;
        Ok(TokenChange {
            name,
            description,
            role,
            scopes,
            allowed_ips,
            usage_limit,
            expiry,
            expires_at,
            refill_monthly,
            rate_limit,
        })
    }

    /// The token with the change made, as it stands in the store at the write.
    fn apply(&self, mut t: Token, now: DateTime<Utc>) -> Result<Token> {
        if t.status == TokenStatus::Revoked {
            return Err(Error::Conflict(
                "the token is revoked and can no longer be changed".into(),
            ));
        }
        // The uses left this month are the starting point of a new limit.
        t.apply_refill(now);
        if let Some(n) = &self.name {
            t.name = n.clone();
        }
        if let Some(d) = &self.description {
            t.description = d.clone();
        }
        if let Some(r) = self.role {
            t.role = r;
        }
        if let Some(s) = &self.scopes {
            t.scopes = s.clone();
        }
        if let Some(i) = &self.allowed_ips {
            t.allowed_ips = i.clone();
        }
        if let Some(limit) = self.usage_limit {
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
        if let Some(e) = self.expires_at {
            t.expires_at = e;
        }
        if let Some(r) = self.rate_limit {
            t.rate_limit = r;
        }
        if let Some(r) = self.refill_monthly {
            if r.is_some() && t.usage_limit.is_none() {
                return Err(
                    ParseError::new("refill_monthly", "needs a usage_limit to refill").into(),
                );
            }
            // A refill added now starts with next month, as on a token created now; the month it
            // was created in would otherwise refill it at once.
            if t.refill_monthly.is_none() && r.is_some() {
                t.refill_period = Some(crate::domain::period::month_key(now));
            }
            t.refill_monthly = r;
        }
        t.status = t.status_at(now);
        Ok(t)
    }
}

/// Revokes a token: it stops working at once and stays listed for audit. Revoking a revoked
/// token changes nothing.
pub async fn revoke_token(ctx: &Ctx, p: &Caller, id: &str) -> Result<Token> {
    let now = ctx.clock.now();
    load_token(ctx, p, id, Access::Revoke).await?;
    ctx.store
        .update_token(id, now, None, &p.stamp("token.revoke"), |mut t| {
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
    /// Seconds the old secret keeps working, 0 to `tokens.max_regenerate_grace_seconds`
    /// (default 0: it stops at once).
    #[serde(default, deserialize_with = "whole::option")]
    #[schema(schema_with = grace_or_null)]
    pub grace_seconds: Option<i64>,
    /// A new lifetime from now; `null` = never expires. Absent (with `expires_on`): the expiry
    /// stays. Also read as `Lifetime`; not with `expires_on`.
    #[serde(default, alias = "Lifetime", deserialize_with = "whole::patch")]
    #[schema(schema_with = lifetime_or_null)]
    pub lifetime_seconds: Patch<i64>,
    /// A new expiry date (UTC midnight), after today; `null` = never expires.
    #[serde(default)]
    #[schema(schema_with = schema::date_or_null)]
    pub expires_on: Patch<String>,
}

fn grace_or_null() -> utoipa::openapi::schema::Object {
    schema::int_or_null(0, i64::from(u32::MAX))
}

/// Gives a token a new secret with the same id, settings and counters, and with
/// `lifetime_seconds` or `expires_on` a new expiry, in one write; returns the new plain value
/// once. A token may rotate itself (`tokens.self_regenerate`), so a service can renew its own
/// credential before it expires.
pub async fn regenerate_token(
    ctx: &Ctx,
    p: &Caller,
    id: &str,
    input: Regenerate,
) -> Result<(Token, Plain)> {
    let now = ctx.clock.now();
    let cfg = &ctx.config.tokens;
    let max = cfg.max_regenerate_grace_seconds;
    let grace = match input.grace_seconds {
        None | Some(0) => None,
        Some(s) if (1..=max).contains(&s) => Some(now + TimeDelta::seconds(s)),
        Some(_) => {
            return Err(ParseError::new("grace_seconds", format!("must be 0 to {max}")).into())
        }
    };
    let (expiry, mut expires_at) =
        changed_expiry(input.lifetime_seconds, input.expires_on, cfg, now)?;
    let itself = matches!(&p.who, Principal::Token { token, .. } if token.id == id);
    let token = if itself {
        if !cfg.self_regenerate {
            return Err(Error::Forbidden(
                "a token may not regenerate itself here (tokens.self_regenerate is off); ask an admin"
                    .into(),
            ));
        }
        load_token(ctx, p, id, Access::Show).await?
    } else {
        let token = load_token(ctx, p, id, Access::Manage).await?;
        // A managing token never gives another a life beyond its own.
        if let Some(at) = expires_at {
            expires_at = Some(cap_expiry(p, at, &expiry)?);
        }
        token
    };
    let plain = credential::new_token(&cfg.prefix, &token.id);
    let secret = NewSecret {
        hash: plain.hash(),
        sealed: token
            .jwt_enabled
            .then(|| ctx.master_key.seal(&plain, &token.id)),
        grace_until: grace,
    };
    let token = ctx
        .store
        .update_token(
            id,
            now,
            Some(&secret),
            &p.stamp("token.regenerate"),
            |mut t| {
                // Revoked, even since it was read.
                if t.status == TokenStatus::Revoked {
                    return Err(Error::Conflict(
                        "the token is revoked; create a new one instead".into(),
                    ));
                }
                t.apply_refill(now);
                if let Some(e) = expires_at {
                    t.expires_at = e;
                }
                t.status = t.status_at(now);
                Ok(t)
            },
        )
        .await
        .map_err(one_token_back)?;
    Ok((token, plain))
}
