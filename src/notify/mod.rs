//! Notifications: what the jobs queue (emails, webhooks, token files) and the outbox sender
//! that delivers it.
//!
//! Messages are composed here as rows for the durable outbox; the store inserts them in the
//! same transaction as the change they report. Rendering happens at send time from the stored
//! context, with the plain token unsealed only then and only for deliveries that carry it.

pub mod mailer;
pub mod sender;
pub mod templates;

use crate::config::{Config, Policy};
use crate::domain::model::{Account, Token, User};
use crate::domain::scope;
use crate::domain::status::UserStatus;
use crate::domain::{credential::Plain, ids, warnings};
use crate::seal::MasterKey;
use crate::store::{MessageKind, NewMessage, NewToken};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};

/// What SIGHUP can replace: the configuration the jobs and the sender read, the templates and
/// the mail transport built from it.
#[derive(Debug)]
pub struct Live {
    /// Configuration (policies, notifications, email).
    pub config: Arc<Config>,
    /// Compiled templates.
    pub templates: templates::Templates,
    /// Email transport.
    pub mailer: mailer::Mailer,
}

impl Live {
    /// Builds templates and transport from `config`; a broken template is an error naming its
    /// file and line.
    pub fn new(config: Arc<Config>) -> anyhow::Result<Live> {
        let templates = templates::Templates::load(config.email.templates_dir.as_deref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mailer = mailer::Mailer::new(&config.email, &config.data_dir)?;
        Ok(Live {
            config,
            templates,
            mailer,
        })
    }
}

/// The live settings, swapped whole on reload.
#[derive(Debug, Clone)]
pub struct SharedLive(Arc<RwLock<Arc<Live>>>);

impl SharedLive {
    /// Wraps the first settings.
    pub fn new(live: Live) -> Self {
        SharedLive(Arc::new(RwLock::new(Arc::new(live))))
    }

    /// The settings now in force.
    pub fn get(&self) -> Arc<Live> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Puts new settings in force.
    pub fn replace(&self, live: Live) {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(live);
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What messages say about a token (from a stored token or one about to be inserted).
#[derive(Debug, Clone)]
pub struct TokenFacts {
    /// Public id.
    pub id: String,
    /// Account id.
    pub account_id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: crate::domain::role::Role,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Usage limit.
    pub usage_limit: Option<i64>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<&Token> for TokenFacts {
    fn from(t: &Token) -> Self {
        TokenFacts {
            id: t.id.clone(),
            account_id: t.account_id.clone(),
            name: t.name.clone(),
            role: t.role,
            scopes: scope::to_strings(&t.scopes),
            usage_limit: t.usage_limit,
            expires_at: t.expires_at,
        }
    }
}

impl From<&NewToken> for TokenFacts {
    fn from(t: &NewToken) -> Self {
        TokenFacts {
            id: t.id.clone(),
            account_id: t.account_id.clone(),
            name: t.name.clone(),
            role: t.role,
            scopes: scope::to_strings(&t.scopes),
            usage_limit: t.usage_limit,
            expires_at: t.expires_at,
        }
    }
}

/// What every message about a token is rendered from.
pub fn token_context(config: &Config, t: &TokenFacts, account: &Account) -> Value {
    let base = &config.email.admin_url;
    json!({
        "token": {
            "id": t.id, "name": t.name, "role": t.role.as_str(), "scopes": t.scopes,
            "account_id": t.account_id, "usage_limit": t.usage_limit,
            "expires_at": t.expires_at.map(rfc3339),
        },
        "account": {"id": account.id, "name": account.name},
        "regenerate_command": format!("tokenwarden token regenerate {}", t.id),
        "rotate_command": format!("tokenwarden token regenerate {} --expires-on YYYY-MM-DD", t.id),
        "regenerate_url": format!("{base}/v1/tokens/{}/regenerate", t.id),
        "token_url": format!("{base}/v1/tokens/{}", t.id),
        "secret": null,
    })
}

/// Who hears about a token's expiry: the user it was issued for and the account's admins,
/// each only while active and with expiry emails on, each address once. Nobody hears about a
/// token whose user is inactive or deleted.
pub fn expiry_recipients(t: &Token, users: &[User]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if !t.user_active {
        return out;
    }
    let issuer = users.iter().filter(|u| Some(&u.id) == t.user_id.as_ref());
    let admins = users
        .iter()
        .filter(|u| u.role == crate::domain::role::Role::Admin);
    for u in issuer.chain(admins) {
        if u.status == UserStatus::Active && u.notify_expiry && !out.contains(&u.email) {
            out.push(u.email.clone());
        }
    }
    out
}

fn message(
    kind: MessageKind,
    topic: &str,
    target: &str,
    t: &TokenFacts,
    context: &Value,
) -> NewMessage {
    NewMessage {
        id: ids::random_id(16),
        kind,
        topic: topic.into(),
        target: target.into(),
        signer: None,
        account_id: Some(t.account_id.clone()),
        token_id: Some(t.id.clone()),
        context: context.clone(),
        sealed_secret: None,
    }
}

/// The emails (and webhook event) of an expiry warning or an expired notice.
pub fn expiry_messages(
    config: &Config,
    topic: &str,
    t: &Token,
    account: &Account,
    recipients: &[String],
    threshold: Option<u32>,
    now: DateTime<Utc>,
) -> Vec<NewMessage> {
    let t = &TokenFacts::from(t);
    let mut ctx = token_context(config, t, account);
    ctx["days_left"] = json!(t.expires_at.map_or(0, |e| warnings::days_left(e, now)));
    ctx["threshold_days"] = json!(threshold);
    let mut out: Vec<NewMessage> = recipients
        .iter()
        .map(|r| message(MessageKind::Email, topic, r, t, &ctx))
        .collect();
    if let Some(h) = &config.notifications.webhook {
        let mut m = message(MessageKind::Webhook, topic, h.url.as_str(), t, &ctx);
        m.signer = Some("notifications".into());
        out.push(m);
    }
    out
}

/// The deliveries of a policy's new token: webhook, file and emails, the plain token sealed
/// into those that carry it (each under its own message id).
pub fn issued_messages(
    config: &Config,
    key: &MasterKey,
    policy: &Policy,
    period: &str,
    t: &NewToken,
    account: &Account,
    plain: &Plain,
) -> Vec<NewMessage> {
    let t = &TokenFacts::from(t);
    let mut ctx = token_context(config, t, account);
    ctx["policy"] = json!(policy.name);
    ctx["period"] = json!(period);
    let sealed = |mut m: NewMessage| {
        m.sealed_secret = Some(key.seal(plain, &m.id));
        m
    };
    let mut out = Vec::new();
    if let Some(h) = &policy.webhook {
        let mut m = message(
            MessageKind::Webhook,
            "token_issued",
            h.url.as_str(),
            t,
            &ctx,
        );
        m.signer = Some(format!("policy:{}", policy.name));
        out.push(sealed(m));
    }
    if let Some(f) = &policy.file {
        let path = f.display().to_string();
        out.push(sealed(message(
            MessageKind::File,
            "token_issued",
            &path,
            t,
            &ctx,
        )));
    }
    for r in &policy.emails {
        let m = message(MessageKind::Email, "token_issued", r, t, &ctx);
        out.push(if policy.email_includes_token {
            sealed(m)
        } else {
            m
        });
    }
    out
}
