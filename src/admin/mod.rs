//! Issuance and management: the operations behind the admin HTTP routes and the CLI.
//!
//! Each operation takes who is asking (`Principal`), the caller's input as written (so errors can
//! name the caller's field), and the shared `Ctx`. It parses the input into domain values once,
//! applies the role rules of the spec, and calls the store. Nothing here knows HTTP.

use crate::domain::audit::{self, Actor, Stamp};
use crate::domain::model::{Account, Token, User};
use crate::domain::rate::{RateLimit, RateLimitInput};
use crate::domain::{
    credential::{self, hashes_match, Plain, Presented},
    email, ids, limits,
    limits::ExpiryRequest,
    net,
    role::Role,
    schema, scope,
    status::{AccountStatus, TokenStatus, UserStatus},
    ParseError,
};
use crate::patch::{whole, Patch};
use crate::store::{NewAccount, NewSecret, NewToken, Owner, StoreError, TokenFilter};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use std::net::IpAddr;

use crate::context::Ctx;

mod accounts;
mod jwt;
mod operator;
mod tokens;
mod users;

pub use accounts::*;
pub use jwt::*;
pub use operator::*;
pub use tokens::*;
pub use users::*;

/// Why an operation did not happen. Mapped to HTTP status and numeric code in `api::error` and to
/// an exit code in `cli`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input; names the field. Transparent: the parse error is the whole message, not a
    /// cause printed again after it.
    #[error(transparent)]
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
    /// The user the credential token was issued for is inactive.
    #[error("the token's user is inactive")]
    UserInactive,
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
            StoreError::Refused(why) => Error::Conflict(why),
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
    /// The command line on the server (`tokenwarden token create`, …): operator rights, given
    /// by access to the store itself.
    Cli,
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

/// Who is asking and from where: the credential, and the client's address (`cli` for the
/// command line). Every change records both in the audit log. It reads as its `Principal`.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The credential.
    pub who: Principal,
    /// The client's IP address, or `cli`.
    pub from: String,
}

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.who
    }
}

impl Caller {
    /// The command line on the server.
    pub fn cli() -> Caller {
        Caller {
            who: Principal::Cli,
            from: "cli".into(),
        }
    }

    /// The audit stamp of `action` done by this caller.
    pub fn stamp(&self, action: &'static str) -> Stamp {
        Stamp {
            actor: self.who.actor(),
            origin: self.from.clone(),
            action,
        }
    }
}

impl Principal {
    /// Who it is in the audit log: its kind and id, never a secret.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Operator => Actor {
                kind: "operator",
                id: None,
            },
            Principal::Cli => Actor {
                kind: "cli",
                id: None,
            },
            Principal::Account(a) => Actor {
                kind: "account",
                id: Some(a.id.clone()),
            },
            Principal::Token { token, .. } => Actor {
                kind: "token",
                id: Some(token.id.clone()),
            },
        }
    }

    /// The role the principal acts with.
    pub fn role(&self) -> Role {
        match self {
            Principal::Operator | Principal::Cli | Principal::Account(_) => Role::Admin,
            Principal::Token { role, .. } => *role,
        }
    }

    /// The account the principal belongs to (`None` for the operator).
    pub fn account_id(&self) -> Option<&str> {
        match self {
            Principal::Operator | Principal::Cli => None,
            Principal::Account(a) => Some(&a.id),
            Principal::Token { account, .. } => Some(&account.id),
        }
    }

    /// Whether it has operator rights (the operator credential or the CLI).
    pub fn is_operator(&self) -> bool {
        matches!(self, Principal::Operator | Principal::Cli)
    }

    /// What a token it issues records in `issued_by`: the credential, never a secret.
    pub fn issuer(&self) -> String {
        match self {
            Principal::Account(_) => "account".into(),
            other => other.label(),
        }
    }

    /// A label for logs: never a secret.
    pub fn label(&self) -> String {
        match self {
            Principal::Operator => "operator".into(),
            Principal::Cli => "cli".into(),
            Principal::Account(a) => format!("account:{}", a.id),
            Principal::Token { token, .. } => format!("token:{}", token.id),
        }
    }

    pub(crate) fn is_account_admin_of(&self, account_id: &str) -> bool {
        match self {
            Principal::Operator | Principal::Cli => true,
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
            // A token acts with at most its user's current role (kept in its row): demoting a
            // user demotes the tokens issued for it.
            let role = token.effective_role();
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
pub(crate) async fn usable_token(
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
    // An account's key row is its secret, which authenticates as the account, not as a token.
    if token.account_key || !hashes_match(hash, &token.secret_hash) {
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
    if !token.user_active {
        return Err(Error::UserInactive);
    }
    Ok((token, account))
}

pub(crate) fn require_operator(p: &Principal, what: &str) -> Result<()> {
    match p {
        Principal::Operator | Principal::Cli => Ok(()),
        _ => Err(Error::Forbidden(format!(
            "only the operator credential may {what}"
        ))),
    }
}

/// Fails unless `p` is the operator or an admin of `account_id`. A credential of another account
/// gets "not found", so account ids cannot be probed.
pub(crate) fn require_account_admin(p: &Principal, account_id: &str) -> Result<()> {
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

pub(crate) fn not_found_as(what: &'static str) -> impl Fn(Error) -> Error {
    move |e| match e {
        Error::NotFound(_) => Error::NotFound(what),
        e => e,
    }
}

pub(crate) fn parse_role(s: &str, field: &str) -> Result<Role, ParseError> {
    s.parse::<Role>().map_err(|r| ParseError::new(field, r))
}

pub(crate) fn opt_text(
    v: Option<&str>,
    max: usize,
    field: &str,
) -> Result<Option<String>, ParseError> {
    Ok(v.map(|s| limits::text(s, max, false, field))
        .transpose()?
        .filter(|s| !s.is_empty()))
}
