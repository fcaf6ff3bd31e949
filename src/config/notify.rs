//! The configuration of the time-driven work: `[email]`, `[email.smtp]`, `[notifications]`,
//! `[jobs]` and the `[[policy]]` entries that issue monthly quota tokens.

use super::{ConfigError, RawConfig};
use crate::domain::{email, limits, net, role::Role, scope};
use chrono::TimeDelta;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[email]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawEmail {
    /// Sender of every message.
    pub from: String,
    /// Folder with the message templates; empty = the built-in ones.
    pub templates_dir: String,
    /// How messages tell people to reach the admin API (regenerate links).
    pub admin_url: String,
    /// The relay; absent = `.eml` files in `<data_dir>/outbox/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<RawSmtp>,
}

/// `[email.smtp]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSmtp {
    /// Relay host name.
    pub host: String,
    /// Relay port; 0 = the usual one for `tls` (587, 465, 25).
    pub port: u16,
    /// `starttls`, `implicit` or `none` (loopback relays only).
    pub tls: String,
    /// AUTH user; empty = no AUTH.
    pub username: String,
    /// File holding the AUTH password (a relative path is looked up in systemd's
    /// `$CREDENTIALS_DIRECTORY`).
    pub password_file: String,
    /// Extra trust root (PEM) for a relay with a private CA.
    pub ca_file: String,
    /// Longest wait on the relay per message.
    pub timeout_seconds: u64,
}

/// `[notifications]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawNotifications {
    /// Days before expiry an expiry warning goes out.
    pub expiry_warning_days: Vec<i64>,
    /// Email (and webhook) when a token expires.
    pub expired_notice: bool,
    /// Also send expiry warnings and expired notices to this webhook; empty = none.
    pub webhook_url: String,
    /// File holding that webhook's HMAC secret.
    pub webhook_secret_file: String,
    /// Tries per message before it is marked failed.
    pub max_attempts: i64,
    /// First retry delay; each further one doubles.
    pub retry_base_seconds: i64,
    /// Longest retry delay.
    pub retry_max_seconds: i64,
}

/// `[jobs]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawJobs {
    /// How long a job run's claim holds without renewal before another daemon may take it over.
    pub lease_seconds: i64,
    /// Daily statistics older than this many days are dropped.
    pub stats_retention_days: i64,
    /// Sent and failed messages older than this many days are dropped from the outbox.
    pub outbox_retention_days: i64,
}

/// One `[[policy]]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPolicy {
    /// Unique name.
    pub name: String,
    /// Account name or id.
    pub account: String,
    /// Token name; `{period}` becomes `YYYY-MM`, `{policy}` the policy name.
    pub token_name: String,
    /// Uses of each month's token; absent = unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<i64>,
    /// Role of the tokens.
    pub role: String,
    /// Allowed calls.
    pub scopes: Vec<String>,
    /// Allowed client IPs/CIDRs.
    pub allowed_ips: Vec<String>,
    /// `{ limit = n, window_seconds = s }`: at most n calls per s seconds for each token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::domain::rate::RateLimitInput>,
    /// Note on each token.
    pub description: String,
    /// Revoke last month's token when this month's is issued.
    pub revoke_previous: bool,
    /// POST the new token here.
    pub deliver_webhook: String,
    /// File holding the webhook's HMAC secret.
    pub webhook_secret_file: String,
    /// Write the new token to this file (mode 0600).
    pub deliver_file: String,
    /// Email these recipients.
    pub deliver_email: Vec<String>,
    /// Put the plain token in the email.
    pub email_includes_token: bool,
}

impl Default for RawEmail {
    fn default() -> Self {
        Self {
            from: "tokenwarden <tokenwarden@localhost>".into(),
            templates_dir: String::new(),
            admin_url: "http://127.0.0.1:8470".into(),
            smtp: None,
        }
    }
}

impl Default for RawSmtp {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 0,
            tls: "starttls".into(),
            username: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            timeout_seconds: 30,
        }
    }
}

impl Default for RawNotifications {
    fn default() -> Self {
        Self {
            expiry_warning_days: vec![7, 1],
            expired_notice: false,
            webhook_url: String::new(),
            webhook_secret_file: String::new(),
            max_attempts: 8,
            retry_base_seconds: 60,
            retry_max_seconds: 6 * 3600,
        }
    }
}

impl Default for RawJobs {
    fn default() -> Self {
        Self {
            lease_seconds: 60,
            stats_retention_days: 400,
            outbox_retention_days: 90,
        }
    }
}

/// A secret read from a file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required).
    StartTls,
    /// TLS from the first byte (SMTPS).
    Implicit,
    /// No TLS: only for a relay on a loopback address.
    None,
}

/// `[email.smtp]`, checked.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    /// Relay host.
    pub host: String,
    /// Relay port.
    pub port: u16,
    /// TLS mode.
    pub tls: SmtpTls,
    /// AUTH user and password, if any.
    pub credentials: Option<(String, Secret)>,
    /// Extra trust root.
    pub ca_file: Option<PathBuf>,
    /// Per-message timeout.
    pub timeout: std::time::Duration,
}

/// `[email]`, checked.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// Sender.
    pub from: lettre::message::Mailbox,
    /// Template folder; `None` = built-in templates.
    pub templates_dir: Option<PathBuf>,
    /// Base URL of the admin API, for links in messages.
    pub admin_url: String,
    /// Relay; `None` = `.eml` files.
    pub smtp: Option<SmtpSettings>,
}

/// A webhook destination with its signing secret.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Where to POST.
    pub url: url::Url,
    /// HMAC-SHA256 key of `X-Tokenwarden-Signature`.
    pub secret: Secret,
}

/// `[notifications]`, checked.
#[derive(Debug, Clone)]
pub struct NotificationSettings {
    /// Warning thresholds in days, most distant first.
    pub expiry_warning_days: Vec<u32>,
    /// Whether expiry sends a notice.
    pub expired_notice: bool,
    /// Webhook for warnings and notices.
    pub webhook: Option<Webhook>,
    /// Tries per message.
    pub max_attempts: u32,
    /// First retry delay.
    pub retry_base: TimeDelta,
    /// Longest retry delay.
    pub retry_max: TimeDelta,
}

/// `[jobs]`, checked.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// Lease of a job run's claim.
    pub lease: std::time::Duration,
    /// Retention of daily statistics, in days.
    pub stats_retention_days: i64,
    /// Retention of sent and failed messages, in days.
    pub outbox_retention_days: i64,
}

/// One `[[policy]]`, checked (its account is resolved against the store at start).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Unique name.
    pub name: String,
    /// Account name or id, as written.
    pub account: String,
    /// Token name template.
    pub token_name: String,
    /// Uses per month's token.
    pub usage_limit: Option<i64>,
    /// Role.
    pub role: Role,
    /// Allowed calls.
    pub scopes: Vec<scope::Scope>,
    /// Allowed client networks.
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Calls allowed per window for each token.
    pub rate_limit: Option<crate::domain::rate::RateLimit>,
    /// Note.
    pub description: Option<String>,
    /// Revoke the previous month's token.
    pub revoke_previous: bool,
    /// Webhook delivery.
    pub webhook: Option<Webhook>,
    /// File delivery.
    pub file: Option<PathBuf>,
    /// Email recipients.
    pub emails: Vec<String>,
    /// Whether emails carry the plain token.
    pub email_includes_token: bool,
    /// Where it was written (file name), for errors found later.
    pub source: String,
}

impl Policy {
    /// The token name for `period`.
    pub fn token_name_for(&self, period: &str) -> String {
        self.token_name
            .replace("{period}", period)
            .replace("{policy}", &self.name)
    }
}

/// A path for a secret file: absolute as written, or relative to systemd's
/// `$CREDENTIALS_DIRECTORY` when that is set (as it is under `LoadCredential=`).
pub(super) fn credential_path(p: &str) -> PathBuf {
    let path = Path::new(p);
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if path.is_relative() => Path::new(&dir).join(path),
        _ => path.to_path_buf(),
    }
}

fn read_secret(p: &str) -> Result<Secret, String> {
    let path = credential_path(p);
    let s = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret(s))
}

fn webhook_url(u: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(u).map_err(|e| format!("`{u}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{u}` must be an http:// or https:// URL"));
    }
    Ok(url)
}

fn is_loopback_host(h: &str) -> bool {
    h == "localhost"
        || h.trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The checked sections, or nothing when an error was reported through `bad`.
pub(super) struct Checked {
    pub email: EmailSettings,
    pub notifications: NotificationSettings,
    pub jobs: JobSettings,
    pub policies: Vec<Policy>,
}

pub(super) fn check(
    raw: &RawConfig,
    source_of: &dyn Fn(&str) -> String,
    errs: &mut Vec<ConfigError>,
) -> Option<Checked> {
    let before = errs.len();
    let mut bad = |key: &str, reason: String| {
        errs.push(ConfigError {
            source: source_of(key),
            key: key.into(),
            reason,
        })
    };

    let e = &raw.email;
    let from = e
        .from
        .parse::<lettre::message::Mailbox>()
        .map_err(|err| {
            bad(
                "email.from",
                format!("`{}` is not an address: {err}", e.from),
            )
        })
        .ok();
    let admin_url = e.admin_url.trim_end_matches('/').to_string();
    // Links in the emails are built on it: a scheme other than http(s) or no host (a bare
    // `host:port` parses as a URL with scheme `host`) would send broken links without a word.
    let admin_ok = url::Url::parse(&admin_url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
    if !admin_ok {
        bad(
            "email.admin_url",
            format!(
                "`{}` is not an http:// or https:// URL with a host",
                e.admin_url
            ),
        );
    }
    let templates_dir =
        (!e.templates_dir.trim().is_empty()).then(|| PathBuf::from(&e.templates_dir));
    if let Some(d) = &templates_dir {
        if !d.is_dir() {
            bad(
                "email.templates_dir",
                format!("{} is not a folder", d.display()),
            );
        }
    }
    let smtp = e.smtp.as_ref().and_then(|s| {
        let tls = match s.tls.as_str() {
            "starttls" => SmtpTls::StartTls,
            "implicit" => SmtpTls::Implicit,
            "none" => SmtpTls::None,
            _ => {
                bad(
                    "email.smtp.tls",
                    "must be starttls, implicit or none".into(),
                );
                return None;
            }
        };
        if s.host.trim().is_empty() {
            bad(
                "email.smtp.host",
                "must be set when [email.smtp] is present".into(),
            );
            return None;
        }
        if tls == SmtpTls::None && !is_loopback_host(&s.host) {
            bad(
                "email.smtp.tls",
                "none is only allowed for a relay on a loopback address; use starttls or implicit"
                    .into(),
            );
        }
        let port = match (s.port, tls) {
            (0, SmtpTls::StartTls) => 587,
            (0, SmtpTls::Implicit) => 465,
            (0, SmtpTls::None) => 25,
            (p, _) => p,
        };
        let credentials = match (s.username.is_empty(), s.password_file.is_empty()) {
            (true, true) => None,
            (false, false) => match read_secret(&s.password_file) {
                Ok(pw) => Some((s.username.clone(), pw)),
                Err(r) => {
                    bad("email.smtp.password_file", r);
                    None
                }
            },
            (false, true) => {
                bad(
                    "email.smtp.password_file",
                    "must be set with username".into(),
                );
                None
            }
            (true, false) => {
                bad(
                    "email.smtp.username",
                    "must be set with password_file".into(),
                );
                None
            }
        };
        let ca_file = (!s.ca_file.is_empty()).then(|| PathBuf::from(&s.ca_file));
        if let Some(ca) = &ca_file {
            if !ca.is_file() {
                bad(
                    "email.smtp.ca_file",
                    format!("cannot read {}", ca.display()),
                );
            }
        }
        if !(1..=60).contains(&s.timeout_seconds) {
            bad("email.smtp.timeout_seconds", "must be 1 to 60".into());
        }
        Some(SmtpSettings {
            host: s.host.trim().to_string(),
            port,
            tls,
            credentials,
            ca_file,
            timeout: std::time::Duration::from_secs(s.timeout_seconds),
        })
    });

    let n = &raw.notifications;
    let mut days = Vec::new();
    for (i, d) in n.expiry_warning_days.iter().enumerate() {
        match u32::try_from(*d) {
            Ok(d) if (1..=365).contains(&d) => days.push(d),
            _ => bad(
                &format!("notifications.expiry_warning_days[{i}]"),
                "must be 1 to 365".into(),
            ),
        }
    }
    days.sort_unstable_by(|a, b| b.cmp(a));
    days.dedup();
    let webhook = hook(
        &n.webhook_url,
        &n.webhook_secret_file,
        "notifications.webhook_url",
        "notifications.webhook_secret_file",
        &mut bad,
    );
    if !(1..=100).contains(&n.max_attempts) {
        bad("notifications.max_attempts", "must be 1 to 100".into());
    }
    if !(1..=86_400).contains(&n.retry_base_seconds) {
        bad(
            "notifications.retry_base_seconds",
            "must be 1 to 86400".into(),
        );
    }
    if !(n.retry_base_seconds.max(1)..=7 * 86_400).contains(&n.retry_max_seconds) {
        bad(
            "notifications.retry_max_seconds",
            "must be at least retry_base_seconds and at most 604800 (7 days)".into(),
        );
    }

    let j = &raw.jobs;
    if !(5..=3600).contains(&j.lease_seconds) {
        bad("jobs.lease_seconds", "must be 5 to 3600".into());
    }
    if !(1..=3650).contains(&j.stats_retention_days) {
        bad("jobs.stats_retention_days", "must be 1 to 3650".into());
    }
    if !(1..=3650).contains(&j.outbox_retention_days) {
        bad("jobs.outbox_retention_days", "must be 1 to 3650".into());
    }

    let mut policies = Vec::new();
    for (i, p) in raw.policy.iter().enumerate() {
        let k = |f: &str| format!("policy[{i}].{f}");
        let name_ok = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            bad(
                &k("name"),
                "must be 1 to 64 letters, digits, '-', '_' or '.'".into(),
            );
        } else if raw.policy[..i].iter().any(|q| q.name == p.name) {
            bad(
                &k("name"),
                format!("`{}` is used by an earlier policy", p.name),
            );
        }
        if p.account.trim().is_empty() {
            bad(
                &k("account"),
                "must name an account (its name or id)".into(),
            );
        }
        let token_name = if p.token_name.is_empty() {
            "{policy} {period}".to_string()
        } else {
            p.token_name.clone()
        };
        let rest = token_name.replace("{period}", "").replace("{policy}", "");
        if rest.contains(['{', '}']) {
            bad(
                &k("token_name"),
                "only {period} and {policy} may be filled in".into(),
            );
        } else if let Err(e) = limits::text(&token_name, 200, true, &k("token_name")) {
            bad(&e.field, e.reason);
        }
        if let Some(u) = p.usage_limit {
            if let Err(e) = limits::usage_limit(u, &k("usage_limit")) {
                bad(&e.field, e.reason);
            }
        }
        let role = if p.role.is_empty() {
            Some(Role::User)
        } else {
            p.role
                .parse::<Role>()
                .map_err(|_| {
                    bad(
                        &k("role"),
                        "must be admin, engineer, user or readonly".into(),
                    )
                })
                .ok()
        };
        let scopes = scope::parse_list(&p.scopes, &k("scopes")).unwrap_or_else(|e| {
            bad(&e.field, e.reason);
            Vec::new()
        });
        // Stored as the API stores them (`203.0.113.7/32`), whatever the file's spelling.
        let allowed_ips = match net::parse_list(&p.allowed_ips, &k("allowed_ips")) {
            Ok(rules) => rules,
            Err(e) => {
                bad(&e.field, e.reason);
                Vec::new()
            }
        };
        let rate_limit = match p.rate_limit.map(|r| r.check(&k("rate_limit"))).transpose() {
            Ok(r) => r,
            Err(e) => {
                bad(&e.field, e.reason);
                None
            }
        };
        let description = match limits::text(&p.description, 1000, false, &k("description")) {
            Ok(d) => (!d.is_empty()).then_some(d),
            Err(e) => {
                bad(&e.field, e.reason);
                None
            }
        };
        let webhook = hook(
            &p.deliver_webhook,
            &p.webhook_secret_file,
            &k("deliver_webhook"),
            &k("webhook_secret_file"),
            &mut bad,
        );
        let file = (!p.deliver_file.is_empty()).then(|| PathBuf::from(&p.deliver_file));
        if let Some(f) = &file {
            if f.is_relative() {
                bad(&k("deliver_file"), "must be an absolute path".into());
            } else if !f.parent().is_some_and(|d| d.is_dir()) {
                bad(
                    &k("deliver_file"),
                    format!("the folder of {} does not exist", f.display()),
                );
            }
        }
        let mut emails = Vec::new();
        for (j, addr) in p.deliver_email.iter().enumerate() {
            match email::parse(addr, &k(&format!("deliver_email[{j}]"))) {
                Ok(a) if !emails.contains(&a) => emails.push(a),
                Ok(_) => {}
                Err(e) => bad(&e.field, e.reason),
            }
        }
        if p.email_includes_token && emails.is_empty() {
            bad(
                &k("email_includes_token"),
                "needs deliver_email recipients".into(),
            );
        }
        if p.deliver_webhook.is_empty() && file.is_none() && emails.is_empty() {
            bad(
                &k("deliver_webhook"),
                "a policy needs a delivery: deliver_webhook, deliver_file or deliver_email".into(),
            );
        }
        if let Some(role) = role {
            policies.push(Policy {
                name: p.name.clone(),
                account: p.account.trim().to_string(),
                token_name,
                usage_limit: p.usage_limit,
                role,
                scopes,
                allowed_ips,
                rate_limit,
                description,
                revoke_previous: p.revoke_previous,
                webhook,
                file,
                emails,
                email_includes_token: p.email_includes_token,
                source: source_of(&k("account")),
            });
        }
    }

    if errs.len() > before {
        return None;
    }
    Some(Checked {
        email: EmailSettings {
            from: from?,
            templates_dir,
            admin_url,
            smtp,
        },
        notifications: NotificationSettings {
            expiry_warning_days: days,
            expired_notice: n.expired_notice,
            webhook,
            max_attempts: n.max_attempts as u32,
            retry_base: TimeDelta::seconds(n.retry_base_seconds),
            retry_max: TimeDelta::seconds(n.retry_max_seconds),
        },
        jobs: JobSettings {
            lease: std::time::Duration::from_secs(j.lease_seconds as u64),
            stats_retention_days: j.stats_retention_days,
            outbox_retention_days: j.outbox_retention_days,
        },
        policies,
    })
}

/// A webhook URL and its secret file: both or neither.
fn hook(
    url: &str,
    secret_file: &str,
    url_key: &str,
    secret_key: &str,
    bad: &mut impl FnMut(&str, String),
) -> Option<Webhook> {
    match (url.is_empty(), secret_file.is_empty()) {
        (true, true) => None,
        (true, false) => {
            bad(url_key, format!("must be set with {secret_key}"));
            None
        }
        (false, true) => {
            bad(
                secret_key,
                "a webhook needs a secret file to sign its body with".into(),
            );
            None
        }
        (false, false) => {
            let u = webhook_url(url).map_err(|r| bad(url_key, r)).ok();
            let s = read_secret(secret_file)
                .map_err(|r| bad(secret_key, r))
                .ok();
            Some(Webhook {
                url: u?,
                secret: s?,
            })
        }
    }
}
