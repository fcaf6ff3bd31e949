//! Configuration: built-in defaults, then a TOML file, then `TOKENWARDEN_*` environment variables
//! (`__` nests: `TOKENWARDEN_SERVER__LISTEN`), then command-line flags. Everything is checked at
//! load and every error names its source (file or variable), key and reason.

mod notify;

pub use notify::{
    EmailSettings, JobSettings, NotificationSettings, Policy, RawEmail, RawJobs, RawNotifications,
    RawPolicy, RawSmtp, Secret, SmtpSettings, SmtpTls, Webhook,
};

use crate::domain::{limits, net};
use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment, Metadata,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

/// The file keys as written, with their defaults. `check-config` prints this back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// Where the SQLite file, the operator credential and the outbox live.
    pub data_dir: PathBuf,
    /// The admin HTTP port.
    pub server: RawServer,
    /// The store.
    pub database: RawDatabase,
    /// Token format and issuance defaults.
    pub tokens: RawTokens,
    /// Account defaults.
    pub accounts: RawAccounts,
    /// Logging.
    pub log: RawLog,
    /// Keys.
    pub security: RawSecurity,
    /// Email sender, relay and templates.
    pub email: RawEmail,
    /// Expiry warnings, notices and the outbox's retries.
    pub notifications: RawNotifications,
    /// Job runs and housekeeping.
    pub jobs: RawJobs,
    /// The audit log.
    pub audit: RawAudit,
    /// Monthly quota token policies (`[[policy]]`).
    pub policy: Vec<RawPolicy>,
}

/// `[audit]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAudit {
    /// Records older than this many days are deleted by housekeeping.
    pub retention_days: i64,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            retention_days: 400,
        }
    }
}

/// `[security]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSecurity {
    /// File holding the 256-bit master key (64 hex digits) that seals JWT-signing tokens;
    /// empty = `<data_dir>/master.key`, generated on first start.
    pub master_key_file: String,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    /// Address and port of the admin HTTP port.
    pub listen: String,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
    /// Whether forward auth takes the call from `X-Tokenwarden-Call`.
    pub trust_call_header: bool,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// PEM certificate chain for TLS on the admin port; empty = plain HTTP.
    pub tls_cert_file: String,
    /// PEM private key for it.
    pub tls_key_file: String,
    /// Longest wait for a request's headers (and a TLS handshake), in seconds.
    pub header_timeout_seconds: u64,
    /// Longest time a request may take, in seconds (then 408).
    pub request_timeout_seconds: u64,
    /// Longest wait for in-flight requests at shutdown, in seconds.
    pub shutdown_grace_seconds: u64,
    /// Most client connections open at once; past it the longest-idle one is closed.
    pub max_connections: usize,
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDatabase {
    /// `sqlite://PATH` or `postgres://…`; empty means `<data_dir>/tokenwarden.db`.
    pub url: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// What an answered VALID survives: `power-loss` or `process-crash`.
    pub durability: String,
    /// How long a write waits for a lock another connection holds before it is answered 503.
    pub lock_timeout_seconds: u64,
    /// PostgreSQL: longest wait for one round trip of counting calls (a statement, a commit).
    pub statement_timeout_seconds: u64,
    /// Size of each of the two usage log files (SQLite), in MiB.
    pub usage_log_mib: u64,
    /// Longest time counted calls wait in the SQLite usage log before they are folded into
    /// the store.
    pub fold_interval_seconds: u64,
    /// Memory for the tokens verification keeps in memory, in MiB.
    pub token_cache_mib: u64,
}

/// `[tokens]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTokens {
    /// The prefix of every token (`tw_…`).
    pub prefix: String,
    /// `usage_limit` of a token created without one; absent = unlimited.
    pub default_usage_limit: Option<i64>,
    /// Lifetime of a token created without an expiry; absent = never expires.
    pub default_lifetime_seconds: Option<i64>,
    /// Longest lifetime a token may be given.
    pub max_lifetime_seconds: i64,
    /// Most tokens one create call may make (`count`).
    pub max_count_per_request: i64,
    /// A token expiring within this many days is listed with `expires_soon = true`.
    pub expires_soon_days: i64,
    /// Longest grace period a regeneration may keep the old secret working.
    pub max_regenerate_grace_seconds: i64,
    /// A token may regenerate (rotate) itself, a new expiry included.
    pub self_regenerate: bool,
    /// Longest lifetime of a JWT minted by `POST /v1/jwt`.
    pub max_jwt_lifetime_seconds: i64,
}

/// `[accounts]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAccounts {
    /// `max_tokens` of an account created without one.
    pub default_max_tokens: i64,
    /// Whether an account's secret authenticates verification calls (`/v1/verify`,
    /// `/v1/auth`, JWTs it signs) unless the account says otherwise.
    pub secret_calls: bool,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// A tracing filter (`info`, `tokenwarden=debug,sqlx=warn`); `RUST_LOG` wins when set.
    pub level: String,
    /// `human` or `json`.
    pub format: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            server: RawServer::default(),
            database: RawDatabase::default(),
            tokens: RawTokens::default(),
            accounts: RawAccounts::default(),
            log: RawLog::default(),
            security: RawSecurity::default(),
            email: RawEmail::default(),
            notifications: RawNotifications::default(),
            jobs: RawJobs::default(),
            audit: RawAudit::default(),
            policy: Vec::new(),
        }
    }
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8470".into(),
            trusted_proxies: vec!["127.0.0.1/32".into(), "::1/128".into()],
            trust_call_header: false,
            body_limit_bytes: 64 * 1024,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            header_timeout_seconds: 10,
            request_timeout_seconds: 30,
            shutdown_grace_seconds: 30,
            max_connections: 1024,
        }
    }
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: String::new(),
            max_connections: 8,
            durability: "power-loss".into(),
            lock_timeout_seconds: 10,
            statement_timeout_seconds: 15,
            usage_log_mib: 128,
            token_cache_mib: 512,
            fold_interval_seconds: 30,
        }
    }
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            prefix: "tw".into(),
            default_usage_limit: None,
            default_lifetime_seconds: None,
            max_lifetime_seconds: limits::MAX_LIFETIME_SECONDS,
            max_count_per_request: 100,
            expires_soon_days: 7,
            max_regenerate_grace_seconds: 7 * 24 * 3600,
            self_regenerate: true,
            max_jwt_lifetime_seconds: 24 * 3600,
        }
    }
}

impl Default for RawAccounts {
    fn default() -> Self {
        Self {
            default_max_tokens: 50,
            secret_calls: true,
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "human".into(),
        }
    }
}

/// What a call answered VALID survives: how long the meter waits before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Its consumption is on disk (flushed) before the answer: survives power loss.
    PowerLoss,
    /// Its consumption is committed, and handed to the operating system, before the answer, but
    /// not flushed: survives the daemon being killed, not a power loss or kernel crash.
    ProcessCrash,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Token issuance settings, checked.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Token prefix.
    pub prefix: String,
    /// Default usage limit.
    pub default_usage_limit: Option<i64>,
    /// Default lifetime in seconds.
    pub default_lifetime_seconds: Option<i64>,
    /// Maximum lifetime in seconds.
    pub max_lifetime_seconds: i64,
    /// Maximum `count` per create call.
    pub max_count_per_request: i64,
    /// Window of `expires_soon`, in days.
    pub expires_soon_days: i64,
    /// Maximum regeneration grace, in seconds.
    pub max_regenerate_grace_seconds: i64,
    /// A token may regenerate itself.
    pub self_regenerate: bool,
    /// Maximum lifetime of a minted JWT, in seconds.
    pub max_jwt_lifetime_seconds: i64,
}

/// The checked configuration the daemon runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Admin listen address.
    pub listen: SocketAddr,
    /// Trusted proxies.
    pub trusted_proxies: Vec<IpNet>,
    /// Forward auth takes the call from `X-Tokenwarden-Call` (the proxy sets or clears it).
    pub trust_call_header: bool,
    /// Request body limit in bytes.
    pub body_limit_bytes: usize,
    /// TLS certificate and key files for the admin port.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Deadline for request headers and TLS handshakes.
    pub header_timeout: std::time::Duration,
    /// Deadline for a whole request.
    pub request_timeout: std::time::Duration,
    /// Deadline for in-flight requests at shutdown.
    pub shutdown_grace: std::time::Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Where the store is.
    pub store: StoreLocation,
    /// Pool size.
    pub db_max_connections: u32,
    /// What an answered VALID survives.
    pub durability: Durability,
    /// How long a write waits for another connection's lock (SQLite's busy timeout,
    /// PostgreSQL's `lock_timeout`).
    pub db_lock_timeout: std::time::Duration,
    /// Longest wait for one round trip of counting calls (PostgreSQL); then the calls are
    /// answered 503, none counted, and the connection is replaced.
    pub db_statement_timeout: std::time::Duration,
    /// Size of each usage log file in bytes (SQLite).
    pub usage_log_bytes: u64,
    /// Longest wait of counted calls before a fold (SQLite).
    pub fold_interval: std::time::Duration,
    /// The most memory the tokens kept for verification may take, in bytes.
    pub token_cache_bytes: u64,
    /// Token settings.
    pub tokens: TokenSettings,
    /// Default `max_tokens` of new accounts.
    pub default_max_tokens: i64,
    /// Whether account secrets authenticate calls, for accounts that do not say.
    pub secret_calls: bool,
    /// Log filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// The master key file.
    pub master_key_file: PathBuf,
    /// Email.
    pub email: EmailSettings,
    /// Notifications and outbox retries.
    pub notifications: NotificationSettings,
    /// Job runs.
    pub jobs: JobSettings,
    /// Days an audit record is kept.
    pub audit_retention_days: i64,
    /// Monthly quota token policies.
    pub policies: Vec<Policy>,
    /// The raw values, for `check-config`.
    pub raw: RawConfig,
}

impl Config {
    /// Where the operator credential file goes.
    pub fn operator_token_path(&self) -> PathBuf {
        self.data_dir.join("operator.token")
    }
}

/// One configuration error: where it came from, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, environment variable or flag the value came from.
    pub source: String,
    /// Dotted key path (`server.listen`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.source, self.key, self.reason)
        }
    }
}

/// All errors found in one load.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(|e| e.to_string()).collect();
        write!(f, "invalid configuration:\n  {}", lines.join("\n  "))
    }
}

/// Values given on the command line; they override file and environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<String>,
}

fn describe(meta: Option<&Metadata>, key: &[String]) -> String {
    match meta {
        Some(m) => match &m.source {
            Some(figment::Source::File(p)) => p.display().to_string(),
            _ if m.name.contains("environment") => {
                format!(
                    "environment variable TOKENWARDEN_{}",
                    key.join("__").to_uppercase()
                )
            }
            _ => m.name.to_string(),
        },
        None => "configuration".into(),
    }
}

/// Environment variables with our prefix that are not configuration keys: `TOKENWARDEN_CONFIG`
/// (the `--config` flag) and the test suite's `TOKENWARDEN_TEST_*`.
fn is_config_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    k != "config" && !k.starts_with("test_")
}

fn figment(file: Option<&Path>, ov: &Overrides) -> Figment {
    let mut f = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = file {
        f = f.merge(Toml::file_exact(path));
    }
    f = f.merge(
        Env::prefixed("TOKENWARDEN_")
            .filter(|k| is_config_key(k.as_str()))
            .split("__"),
    );
    if let Some(d) = &ov.data_dir {
        f = f.merge(Serialized::global("data_dir", d));
    }
    if let Some(l) = &ov.listen {
        f = f.merge(Serialized::global("server.listen", l));
    }
    f
}

/// Loads and checks the configuration, returning every error found.
pub fn load(file: Option<&Path>, ov: &Overrides) -> Result<Config, ConfigErrors> {
    if let Some(p) = file {
        if !p.is_file() {
            return Err(ConfigErrors(vec![ConfigError {
                source: p.display().to_string(),
                key: String::new(),
                reason: "no such file".into(),
            }]));
        }
    }
    let fig = figment(file, ov);
    let raw: RawConfig = fig.extract().map_err(|err| {
        ConfigErrors(
            err.into_iter()
                .map(|e| {
                    let mut path = e.path.clone();
                    if let figment::error::Kind::UnknownField(name, _) = &e.kind {
                        if path.last() != Some(name) {
                            path.push(name.clone());
                        }
                    }
                    let reason = match &e.kind {
                        figment::error::Kind::UnknownField(..) => "unknown key".to_string(),
                        k => k.to_string(),
                    };
                    ConfigError {
                        source: describe(e.metadata.as_ref(), &path),
                        key: path.join("."),
                        reason,
                    }
                })
                .collect(),
        )
    })?;
    check(&raw, |key| {
        let key = key.split('[').next().unwrap_or(key);
        if key == "server.listen" && ov.listen.is_some() {
            return "--listen flag".into();
        }
        if key == "data_dir" && ov.data_dir.is_some() {
            return "--data-dir flag".into();
        }
        let parts: Vec<String> = key.split('.').map(String::from).collect();
        describe(fig.find_metadata(key), &parts)
    })
}

/// Checks raw values; `source_of` names where a key's value came from.
fn check(raw: &RawConfig, source_of: impl Fn(&str) -> String) -> Result<Config, ConfigErrors> {
    let mut errs = Vec::new();
    let jobs = notify::check(raw, &source_of, &mut errs);
    let mut bad = |key: &str, reason: String| {
        errs.push(ConfigError {
            source: source_of(key),
            key: key.into(),
            reason,
        })
    };

    let listen = raw
        .server
        .listen
        .parse::<SocketAddr>()
        .map_err(|_| {
            bad(
                "server.listen",
                format!("`{}` is not an address:port", raw.server.listen),
            )
        })
        .ok();
    let trusted_proxies =
        match net::parse_list(&raw.server.trusted_proxies, "server.trusted_proxies") {
            Ok(v) => v,
            Err(e) => {
                bad(&e.field, e.reason);
                Vec::new()
            }
        };
    if !(1024..=16 * 1024 * 1024).contains(&raw.server.body_limit_bytes) {
        bad("server.body_limit_bytes", "must be 1024 to 16777216".into());
    }
    let tls = match (
        raw.server.tls_cert_file.trim(),
        raw.server.tls_key_file.trim(),
    ) {
        ("", "") => None,
        ("", _) => {
            bad(
                "server.tls_cert_file",
                "must be set with tls_key_file".into(),
            );
            None
        }
        (_, "") => {
            bad(
                "server.tls_key_file",
                "must be set with tls_cert_file".into(),
            );
            None
        }
        (c, k) => {
            // Relative paths are systemd credentials (LoadCredential=), like the other secrets.
            let (c, k) = (notify::credential_path(c), notify::credential_path(k));
            for (key, f) in [("server.tls_cert_file", &c), ("server.tls_key_file", &k)] {
                if std::fs::File::open(f).is_err() {
                    bad(key, format!("cannot read {}", f.display()));
                }
            }
            Some((c, k))
        }
    };
    for (key, v) in [
        (
            "server.header_timeout_seconds",
            raw.server.header_timeout_seconds,
        ),
        (
            "server.request_timeout_seconds",
            raw.server.request_timeout_seconds,
        ),
        (
            "server.shutdown_grace_seconds",
            raw.server.shutdown_grace_seconds,
        ),
    ] {
        if !(1..=3600).contains(&v) {
            bad(key, "must be 1 to 3600".into());
        }
    }
    if raw.data_dir.as_os_str().is_empty() {
        bad("data_dir", "must not be empty".into());
    }
    let store = if raw.database.url.trim().is_empty() {
        Some(StoreLocation::Sqlite(raw.data_dir.join("tokenwarden.db")))
    } else {
        StoreLocation::from_url(raw.database.url.trim())
            .map_err(|r| bad("database.url", r))
            .ok()
    };
    if !(1..=1000).contains(&raw.database.max_connections) {
        bad("database.max_connections", "must be 1 to 1000".into());
    }
    if !(1..=300).contains(&raw.database.lock_timeout_seconds) {
        bad("database.lock_timeout_seconds", "must be 1 to 300".into());
    }
    if !(1..=300).contains(&raw.database.statement_timeout_seconds) {
        bad(
            "database.statement_timeout_seconds",
            "must be 1 to 300".into(),
        );
    }
    if !(16..=1_000_000).contains(&raw.server.max_connections) {
        bad("server.max_connections", "must be 16 to 1000000".into());
    }
    if !(1..=4096).contains(&raw.database.usage_log_mib) {
        bad("database.usage_log_mib", "must be 1 to 4096".into());
    }
    if !(1..=1_048_576).contains(&raw.database.token_cache_mib) {
        bad("database.token_cache_mib", "must be 1 to 1048576".into());
    }
    if !(1..=3600).contains(&raw.database.fold_interval_seconds) {
        bad("database.fold_interval_seconds", "must be 1 to 3600".into());
    }
    let durability = match raw.database.durability.as_str() {
        "power-loss" => Durability::PowerLoss,
        "process-crash" => Durability::ProcessCrash,
        _ => {
            bad(
                "database.durability",
                "must be power-loss or process-crash".into(),
            );
            Durability::PowerLoss
        }
    };
    let t = &raw.tokens;
    let prefix_ok = !t.prefix.is_empty()
        && t.prefix.len() <= 12
        && t.prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && t.prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !prefix_ok {
        bad(
            "tokens.prefix",
            "must be 1 to 12 lowercase letters or digits, starting with a letter".into(),
        );
    }
    if !(1..=limits::MAX_LIFETIME_SECONDS).contains(&t.max_lifetime_seconds) {
        bad(
            "tokens.max_lifetime_seconds",
            format!("must be 1 to {}", limits::MAX_LIFETIME_SECONDS),
        );
    }
    if let Some(u) = t.default_usage_limit {
        if let Err(e) = limits::usage_limit(u, "tokens.default_usage_limit") {
            bad(&e.field, e.reason);
        }
    }
    if let Some(l) = t.default_lifetime_seconds {
        if let Err(e) =
            limits::lifetime(l, t.max_lifetime_seconds, "tokens.default_lifetime_seconds")
        {
            bad(&e.field, e.reason);
        }
    }
    if !(1..=1000).contains(&t.max_count_per_request) {
        bad("tokens.max_count_per_request", "must be 1 to 1000".into());
    }
    if !(0..=365).contains(&t.expires_soon_days) {
        bad("tokens.expires_soon_days", "must be 0 to 365".into());
    }
    if !(0..=30 * 24 * 3600).contains(&t.max_regenerate_grace_seconds) {
        bad(
            "tokens.max_regenerate_grace_seconds",
            "must be 0 to 2592000 (30 days)".into(),
        );
    }
    if !(1..=30 * 24 * 3600).contains(&t.max_jwt_lifetime_seconds) {
        bad(
            "tokens.max_jwt_lifetime_seconds",
            "must be 1 to 2592000 (30 days)".into(),
        );
    }
    let max = crate::domain::limits::MAX_TOKENS_PER_ACCOUNT;
    if !(1..=max).contains(&raw.accounts.default_max_tokens) {
        bad("accounts.default_max_tokens", format!("must be 1 to {max}"));
    }
    if !(1..=36_500).contains(&raw.audit.retention_days) {
        bad("audit.retention_days", "must be 1 to 36500".into());
    }
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err()
        || !every_directive_has_a_level(&raw.log.level)
    {
        bad(
            "log.level",
            format!(
                "`{}` is not a log filter (try info or debug)",
                raw.log.level
            ),
        );
    }
    let log_format = match raw.log.format.as_str() {
        "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        _ => {
            bad("log.format", "must be human or json".into());
            LogFormat::Human
        }
    };

    match (listen, store, jobs) {
        (Some(listen), Some(store), Some(jobs)) if errs.is_empty() => Ok(Config {
            data_dir: raw.data_dir.clone(),
            listen,
            trusted_proxies,
            trust_call_header: raw.server.trust_call_header,
            body_limit_bytes: raw.server.body_limit_bytes,
            tls,
            header_timeout: std::time::Duration::from_secs(raw.server.header_timeout_seconds),
            request_timeout: std::time::Duration::from_secs(raw.server.request_timeout_seconds),
            shutdown_grace: std::time::Duration::from_secs(raw.server.shutdown_grace_seconds),
            max_connections: raw.server.max_connections,
            store,
            db_max_connections: raw.database.max_connections,
            durability,
            // Within four fifths of the request timeout, so a call that waits out a lock is
            // answered 503 before the request timeout answers 408.
            db_lock_timeout: std::time::Duration::from_secs(raw.database.lock_timeout_seconds)
                .min(std::time::Duration::from_secs(raw.server.request_timeout_seconds) * 4 / 5),
            // Likewise: a stalled round trip is answered 503 before the request timeout.
            db_statement_timeout: std::time::Duration::from_secs(
                raw.database.statement_timeout_seconds,
            )
            .min(std::time::Duration::from_secs(raw.server.request_timeout_seconds) * 4 / 5),
            usage_log_bytes: raw.database.usage_log_mib << 20,
            fold_interval: std::time::Duration::from_secs(raw.database.fold_interval_seconds),
            token_cache_bytes: raw.database.token_cache_mib << 20,
            tokens: TokenSettings {
                prefix: t.prefix.clone(),
                default_usage_limit: t.default_usage_limit,
                default_lifetime_seconds: t.default_lifetime_seconds,
                max_lifetime_seconds: t.max_lifetime_seconds,
                max_count_per_request: t.max_count_per_request,
                expires_soon_days: t.expires_soon_days,
                max_regenerate_grace_seconds: t.max_regenerate_grace_seconds,
                self_regenerate: t.self_regenerate,
                max_jwt_lifetime_seconds: t.max_jwt_lifetime_seconds,
            },
            default_max_tokens: raw.accounts.default_max_tokens,
            secret_calls: raw.accounts.secret_calls,
            log_level: raw.log.level.clone(),
            log_format,
            master_key_file: if raw.security.master_key_file.trim().is_empty() {
                raw.data_dir.join("master.key")
            } else {
                PathBuf::from(raw.security.master_key_file.trim())
            },
            email: jobs.email,
            notifications: jobs.notifications,
            jobs: jobs.jobs,
            audit_retention_days: raw.audit.retention_days,
            policies: jobs.policies,
            raw: raw.clone(),
        }),
        _ => Err(ConfigErrors(errs)),
    }
}

/// The effective configuration as TOML, with the password in a database URL masked, and in
/// webhook URLs the password and every query value (`?key=`, `?token=`: hooks often carry their
/// credential there).
pub fn render_effective(c: &Config) -> String {
    let mut raw = c.raw.clone();
    raw.database.url = mask_url(&raw.database.url);
    raw.notifications.webhook_url = mask_hook(&raw.notifications.webhook_url);
    for p in &mut raw.policy {
        p.deliver_webhook = mask_hook(&p.deliver_webhook);
    }
    toml::to_string_pretty(&raw).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
}

fn mask_hook(u: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(u) else {
        return u.to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    if parsed.query().is_some() {
        let keys: Vec<String> = parsed.query_pairs().map(|(k, _)| k.into_owned()).collect();
        parsed
            .query_pairs_mut()
            .clear()
            .extend_pairs(keys.iter().map(|k| (k.as_str(), "***")));
    }
    parsed.to_string()
}

fn mask_url(u: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(u) else {
        return u.to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    // PostgreSQL also takes the password as a parameter (`?password=`, `?sslpassword=`).
    let secret = |k: &str| k.to_ascii_lowercase().contains("password");
    if parsed.query_pairs().any(|(k, _)| secret(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if secret(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

impl Config {
    /// A default configuration rooted at `data_dir` (tests and tools build on it).
    pub fn for_data_dir(data_dir: &Path) -> Config {
        let raw = RawConfig {
            data_dir: data_dir.to_path_buf(),
            ..RawConfig::default()
        };
        // The built-in defaults always pass their own checks.
        match check(&raw, |_| "defaults".into()) {
            Ok(c) => c,
            Err(e) => unreachable!("built-in defaults are invalid: {e}"),
        }
    }
}

/// Whether each comma-separated directive of a log filter names a level: a bare word that is
/// not one (`warning`, `inf`) is read by the filter as a module name at TRACE, which would turn
/// every other line off without a word.
fn every_directive_has_a_level(filter: &str) -> bool {
    const LEVELS: [&str; 12] = [
        "off", "error", "warn", "info", "debug", "trace", "0", "1", "2", "3", "4", "5",
    ];
    let directives: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    !directives.is_empty()
        && directives.iter().all(|d| {
            let level = d.rsplit_once('=').map_or(*d, |(_, l)| l);
            LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level.trim()))
        })
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl StoreLocation {
    /// Picks the backend from the URL scheme; an unknown scheme is an error, never a new file.
    pub fn from_url(url: &str) -> std::result::Result<Self, String> {
        if let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let path = rest.split('?').next().unwrap_or(rest);
            if path.is_empty() {
                return Err(
                    "a sqlite URL needs a file path (sqlite:///var/lib/tokenwarden/tokenwarden.db)"
                        .into(),
                );
            }
            Ok(StoreLocation::Sqlite(path.into()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            sqlx::postgres::PgConnectOptions::from_str(url)
                .map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
            Ok(StoreLocation::Postgres(url.to_string()))
        } else {
            Err("must start with sqlite:// or postgres://".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(body: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(body.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_serve_from_data_on_loopback() {
        let c = load(None, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8470");
        assert_eq!(
            c.store,
            StoreLocation::Sqlite(PathBuf::from("./data/tokenwarden.db"))
        );
        assert_eq!(c.default_max_tokens, 50);
        assert_eq!(c.tokens.prefix, "tw");
        assert_eq!(c.durability, Durability::PowerLoss);
    }

    #[test]
    fn usage_log_size_is_checked() {
        let f = file(
            "[database]\nusage_log_mib = 2\nfold_interval_seconds = 7\ntoken_cache_mib = 64\n",
        );
        let c = load(Some(f.path()), &Overrides::default()).unwrap();
        assert_eq!(c.usage_log_bytes, 2 << 20);
        assert_eq!(c.token_cache_bytes, 64 << 20);
        for bad in [0, 1_048_577] {
            let f = file(&format!("[database]\ntoken_cache_mib = {bad}\n"));
            let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
            assert_eq!(errs[0].key, "database.token_cache_mib");
        }
        assert_eq!(c.fold_interval, std::time::Duration::from_secs(7));
        for bad in [0, 4097] {
            let f = file(&format!("[database]\nusage_log_mib = {bad}\n"));
            let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
            assert_eq!(errs[0].key, "database.usage_log_mib");
        }
        for bad in [0, 3601] {
            let f = file(&format!("[database]\nfold_interval_seconds = {bad}\n"));
            let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
            assert_eq!(errs[0].key, "database.fold_interval_seconds");
        }
    }

    #[test]
    fn lock_timeout_is_checked() {
        let f = file("[database]\nlock_timeout_seconds = 3\n");
        let c = load(Some(f.path()), &Overrides::default()).unwrap();
        assert_eq!(c.db_lock_timeout, std::time::Duration::from_secs(3));
        let f = file("[server]\nrequest_timeout_seconds = 5\n");
        let c = load(Some(f.path()), &Overrides::default()).unwrap();
        assert_eq!(c.db_lock_timeout, std::time::Duration::from_secs(4));
        for bad in ["0", "301"] {
            let f = file(&format!("[database]\nlock_timeout_seconds = {bad}\n"));
            let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert_eq!(errs[0].key, "database.lock_timeout_seconds");
        }
    }

    #[test]
    fn durability_is_one_of_two_words() {
        let f = file("[database]\ndurability = \"process-crash\"\n");
        let c = load(Some(f.path()), &Overrides::default()).unwrap();
        assert_eq!(c.durability, Durability::ProcessCrash);
        let f = file("[database]\ndurability = \"fast\"\n");
        let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "database.durability");
        assert!(errs[0].reason.contains("power-loss or process-crash"));
    }

    #[test]
    fn every_bad_key_is_reported_with_file_and_key() {
        let f = file(
            "[server]\nlisten = \"nowhere\"\ntrusted_proxies = [\"10.0.0.0/99\"]\n\
             [tokens]\nprefix = \"Bad_\"\ndefault_usage_limit = 0\n[log]\nformat = \"xml\"\n",
        );
        let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "server.listen",
                "server.trusted_proxies[0]",
                "tokens.prefix",
                "tokens.default_usage_limit",
                "log.format"
            ]
        );
        let name = f.path().display().to_string();
        assert!(errs.iter().all(|e| e.source == name), "{errs:?}");
    }

    /// A level word mistyped would have been read as a module name, turning logging off.
    #[test]
    fn a_log_level_that_is_no_level_and_an_admin_url_without_a_host_are_refused() {
        for level in [
            "warning",
            "inf",
            "tokenwarden=verbose",
            "info,hyper",
            "",
            " , ",
        ] {
            let f = file(&format!("[log]\nlevel = \"{level}\"\n"));
            let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
            assert_eq!(errs[0].key, "log.level", "{level}");
        }
        for level in [
            "warn",
            "info,hyper=warn",
            "tokenwarden=debug,sqlx=off",
            "info,",
            "3,tokenwarden=5",
            "tokenwarden[request]=debug",
            "tokenwarden[{route=/v1/verify}]=trace",
        ] {
            let f = file(&format!("[log]\nlevel = \"{level}\"\n"));
            let c = load(Some(f.path()), &Overrides::default()).unwrap();
            assert_eq!(c.log_level, level);
        }
        for url in ["tokens.example.com:8470", "mailto:ops@example.com"] {
            let f = file(&format!("[email]\nadmin_url = \"{url}\"\n"));
            let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
            assert_eq!(errs[0].key, "email.admin_url", "{url}");
        }
        let f = file("[email]\nadmin_url = \"https://tokens.example.com:8470/\"\n");
        assert!(load(Some(f.path()), &Overrides::default()).is_ok());
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let f = file("[server]\nlisen = \"127.0.0.1:1\"\n");
        let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
        assert_eq!(errs[0].key, "server.lisen");
        assert_eq!(errs[0].reason, "unknown key");
        let f = file("[database]\nmax_connections = \"many\"\n");
        let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
        assert_eq!(errs[0].key, "database.max_connections");
    }

    #[test]
    fn flags_override_the_file_and_a_missing_file_is_an_error() {
        let f = file("data_dir = \"/srv/tw\"\n[server]\nlisten = \"127.0.0.1:9000\"\n");
        let c = load(
            Some(f.path()),
            &Overrides {
                data_dir: None,
                listen: Some("127.0.0.1:9001".into()),
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.data_dir, PathBuf::from("/srv/tw"));
        assert!(load(
            Some(Path::new("/nonexistent/tw.toml")),
            &Overrides::default()
        )
        .is_err());
    }

    #[test]
    fn unknown_database_schemes_are_refused() {
        let f = file("[database]\nurl = \"mysql://x/y\"\n");
        let errs = load(Some(f.path()), &Overrides::default()).unwrap_err().0;
        assert_eq!(errs[0].key, "database.url");
    }

    #[test]
    fn database_passwords_given_as_parameters_are_masked() {
        assert_eq!(
            mask_url("postgres://tw@db/tw?sslmode=require&password=hunter2"),
            "postgres://tw@db/tw?sslmode=require&password=***"
        );
        assert_eq!(mask_url("postgres://tw@db/tw"), "postgres://tw@db/tw");
    }

    #[test]
    fn webhook_credentials_are_masked() {
        assert_eq!(
            mask_hook("https://chat.example/v1/hook?key=AIzaSecret&token=t0k"),
            "https://chat.example/v1/hook?key=***&token=***"
        );
        assert_eq!(
            mask_hook("https://u:pw@hooks.example/x"),
            "https://u:***@hooks.example/x"
        );
        assert_eq!(
            mask_hook("https://hooks.example/x"),
            "https://hooks.example/x"
        );
    }

    #[test]
    fn database_passwords_are_masked() {
        assert_eq!(
            mask_url("postgres://tw:hunter2@db/tw"),
            "postgres://tw:***@db/tw"
        );
    }
}
