//! The command line. `serve` runs the daemon; every other subcommand works on the store directly,
//! with operator rights, so an operator can script it without the HTTP port.

use crate::admin::{self, CreateAccount, CreateTokens, ListTokens, Regenerate};
use crate::api::views::{AccountView, TokenView};
use crate::app::{self, App};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{self, Config, Overrides};
use crate::domain::rate::RateLimitInput;
use crate::patch::Patch;
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use std::{path::PathBuf, sync::Arc};

/// tokenwarden: issues, verifies and meters API tokens.
#[derive(Debug, Parser)]
#[command(name = "tokenwarden", version, about)]
pub struct Cli {
    /// TOML configuration file (every key is optional).
    #[arg(long, global = true, env = "TOKENWARDEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite file, operator credential, outbox); overrides `data_dir`.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve {
        /// Address and port to listen on; overrides `server.listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Bring the store's schema up to date and exit.
    Migrate,
    /// Check the configuration: print the effective values and every error.
    CheckConfig,
    /// The operator credential.
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Users of an account.
    #[command(subcommand)]
    User(UserCmd),
    /// Tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Usage statistics.
    #[command(subcommand)]
    Stats(StatsCmd),
    /// Scheduled jobs.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Records, newest first, one JSON object a line.
    List {
        /// Only about this account (id or name).
        #[arg(long)]
        account: Option<String>,
        /// Only this actor: operator, cli, anonymous, account:<id>, token:<id>, job:<name>, or a
        /// kind alone.
        #[arg(long)]
        actor: Option<String>,
        /// Only this target: account:<id>, user:<id>, token:<id>, operator, job:<name>.
        #[arg(long)]
        target: Option<String>,
        /// Only this action (token.revoke, user.update, …).
        #[arg(long)]
        action: Option<String>,
        /// Only ok (changes made) or refused (attempts refused).
        #[arg(long)]
        outcome: Option<String>,
        /// From this instant (RFC 3339) or UTC day on.
        #[arg(long)]
        from: Option<String>,
        /// Before this instant, or up to the end of this UTC day.
        #[arg(long)]
        to: Option<String>,
        /// At most this many records (default 100, at most 500).
        #[arg(long)]
        limit: Option<i64>,
        /// Older than the record with this id.
        #[arg(long)]
        before: Option<i64>,
    },
}

/// `jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// Each job's schedule, latest run and next run.
    List,
    /// Run one job now for a period (default: the one due now), then deliver what it queued.
    /// A period done before is not run again.
    Run {
        /// monthly_reset, monthly_tokens, expiry, expiry_warnings or housekeeping.
        job: String,
        /// YYYY-MM, for the monthly jobs.
        #[arg(long)]
        period: Option<String>,
    },
}

/// `stats` subcommands.
#[derive(Debug, Subcommand)]
pub enum StatsCmd {
    /// Per-token daily statistics as CSV on stdout.
    Export {
        /// First UTC day (YYYY-MM-DD); default the 1st of this month.
        #[arg(long)]
        from: Option<String>,
        /// Last UTC day, inclusive; default today.
        #[arg(long)]
        to: Option<String>,
        /// Only this account (id or name).
        #[arg(long)]
        account: Option<String>,
    },
}

/// `operator` subcommands.
#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Make a new operator credential (the old one stops working) and write it to
    /// `<data_dir>/operator.token`.
    Reset,
}

/// `account` subcommands.
#[derive(Debug, Subcommand)]
pub enum AccountCmd {
    /// Create an account; prints it with its secret (shown once).
    Create {
        /// Unique name.
        name: String,
        /// Active tokens allowed.
        #[arg(long)]
        max_tokens: Option<i64>,
        /// Calls per calendar month over all its tokens.
        #[arg(long)]
        monthly_quota: Option<i64>,
        /// At most LIMIT calls per SECONDS over all its tokens (`100/60`).
        #[arg(long, value_name = "LIMIT/SECONDS", value_parser = rate_limit_arg)]
        rate_limit: Option<RateLimitInput>,
        /// Whether its secret authenticates calls itself (default: accounts.secret_calls).
        #[arg(long)]
        secret_calls: Option<bool>,
    },
    /// List accounts.
    List,
    /// Show one account, by id or name.
    Show {
        /// Account id or name.
        account: String,
    },
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add a user to an account.
    Create {
        /// Account id or name.
        account: String,
        /// Where its notifications go; unique within the account.
        #[arg(long)]
        email: String,
        /// admin, engineer, user (default) or readonly.
        #[arg(long)]
        role: Option<String>,
        /// No expiry emails for this user.
        #[arg(long)]
        no_expiry_emails: bool,
    },
    /// Switch a user off: every token issued for it answers USER_INACTIVE until it is
    /// activated again.
    Deactivate {
        /// User id.
        id: String,
    },
    /// Switch a user back on: its tokens work again.
    Activate {
        /// User id.
        id: String,
    },
    /// Delete a user: its tokens are revoked; it stays listed as deleted.
    Delete {
        /// User id.
        id: String,
    },
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create tokens; prints them with their plain values (shown once).
    Create(Box<TokenCreateArgs>),
    /// List tokens.
    List(TokenListArgs),
    /// Show one token.
    Show {
        /// Token id.
        id: String,
    },
    /// Revoke a token.
    Revoke {
        /// Token id.
        id: String,
    },
    /// Give a token a new secret (same id, settings and counters).
    Regenerate {
        /// Token id.
        id: String,
        /// Seconds the old secret keeps working.
        #[arg(long)]
        grace_seconds: Option<i64>,
        /// A new lifetime in seconds from now.
        #[arg(long, conflicts_with_all = ["expires_on", "never_expires"])]
        lifetime_seconds: Option<i64>,
        /// A new expiry date (UTC), YYYY-MM-DD or dd/MM/yyyy.
        #[arg(long, conflicts_with = "never_expires")]
        expires_on: Option<String>,
        /// Never expires from now on.
        #[arg(long)]
        never_expires: bool,
    },
}

/// `token create` options.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// Account id or name.
    #[arg(long)]
    pub account: String,
    /// Token name.
    #[arg(long)]
    pub name: String,
    /// Note.
    #[arg(long)]
    pub description: Option<String>,
    /// admin, engineer, user or readonly.
    #[arg(long)]
    pub role: Option<String>,
    /// The user the token is issued for.
    #[arg(long)]
    pub user: Option<String>,
    /// Allowed call (repeat for more); none = all.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Allowed client IP or CIDR (repeat for more); none = any.
    #[arg(long = "allowed-ip")]
    pub allowed_ips: Vec<String>,
    /// Uses allowed.
    #[arg(long, conflicts_with = "unlimited")]
    pub usage_limit: Option<i64>,
    /// No usage limit, whatever the configured default.
    #[arg(long)]
    pub unlimited: bool,
    /// Lifetime in seconds.
    #[arg(long, conflicts_with_all = ["expires_on", "never_expires"])]
    pub lifetime_seconds: Option<i64>,
    /// Expiry date (UTC), YYYY-MM-DD or dd/MM/yyyy.
    #[arg(long, conflicts_with = "never_expires")]
    pub expires_on: Option<String>,
    /// Never expires, whatever the configured default.
    #[arg(long)]
    pub never_expires: bool,
    /// Monthly refill of `remaining`.
    #[arg(long)]
    pub refill_monthly: Option<i64>,
    /// How many tokens.
    #[arg(long)]
    pub count: Option<i64>,
    /// The tokens may sign short-lived JWTs.
    #[arg(long)]
    pub jwt: bool,
    /// At most LIMIT calls per SECONDS for each token (`100/60`).
    #[arg(long, value_name = "LIMIT/SECONDS", value_parser = rate_limit_arg)]
    pub rate_limit: Option<RateLimitInput>,
}

/// `LIMIT/SECONDS`, bounded later as the API bounds it.
fn rate_limit_arg(s: &str) -> Result<RateLimitInput, String> {
    let (l, w) = s
        .split_once('/')
        .ok_or_else(|| "write it as LIMIT/SECONDS, e.g. 100/60".to_string())?;
    let num = |v: &str| v.trim().parse::<i64>().map_err(|e| format!("{v:?}: {e}"));
    Ok(RateLimitInput::of(num(l)?, num(w)?))
}

/// `token list` options.
#[derive(Debug, Args)]
pub struct TokenListArgs {
    /// Account id or name.
    #[arg(long)]
    pub account: Option<String>,
    /// active, expired, exhausted or revoked.
    #[arg(long)]
    pub status: Option<String>,
    /// Role.
    #[arg(long)]
    pub role: Option<String>,
    /// The credential that issued them: operator, cli, account, token:<id>, policy:<name>.
    #[arg(long)]
    pub issued_by: Option<String>,
    /// Issued for this user id.
    #[arg(long)]
    pub user: Option<String>,
    /// Expiring within N days.
    #[arg(long)]
    pub expiring_within_days: Option<i64>,
    /// Name search.
    #[arg(long)]
    pub q: Option<String>,
    /// Page size.
    #[arg(long)]
    pub limit: Option<i64>,
    /// Cursor from a previous page.
    #[arg(long)]
    pub page: Option<String>,
}

fn load_config(cli: &Cli, listen: Option<String>) -> anyhow::Result<Config> {
    let ov = Overrides {
        data_dir: cli.data_dir.clone(),
        listen,
    };
    Ok(config::load(cli.config.as_deref(), &ov)?)
}

fn print(v: serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    crate::files::private_files();
    let clock: SharedClock = Arc::new(SystemClock);
    match &cli.command {
        Command::CheckConfig => {
            let c = load_config(&cli, None)?;
            check_email(&c, &cli)?;
            print!("{}", config::render_effective(&c));
            // Policies name accounts: check them against the store when it is there, changing
            // nothing (no store is created, no schema upgraded).
            if !c.policies.is_empty() {
                check_policy_accounts(&c).await?;
            }
            eprintln!("configuration OK");
            return Ok(());
        }
        Command::Migrate => {
            let config = load_config(&cli, None)?;
            crate::telemetry::init("warn", config.log_format);
            let store = app::open_store(&config, app::Upgrade::Always).await?;
            eprintln!("store is up to date ({})", store.backend_name());
            store.close().await;
            return print(json!({ "store": store.backend_name(), "schema": "current" }));
        }
        Command::Serve { listen } => {
            let config = load_config(&cli, listen.clone())?;
            crate::telemetry::init(&config.log_level, config.log_format);
            let app = App::build(config, clock).await?;
            let (file, data_dir) = (cli.config.clone(), cli.data_dir.clone());
            let listen = listen.clone();
            let reload: app::Reload = Box::new(move || {
                let ov = Overrides {
                    data_dir: data_dir.clone(),
                    listen: listen.clone(),
                };
                config::load(file.as_deref(), &ov)
            });
            return app.run(app::shutdown_signal(), Some(reload)).await;
        }
        _ => {}
    }
    let config = load_config(&cli, None)?;
    crate::telemetry::init("warn", config.log_format);
    let ctx = app::open_ctx(config, clock, app::Upgrade::OnlyEmpty).await?;
    let result = run_store_command(&ctx, cli.command).await;
    ctx.store.close().await;
    result
}

/// `check-config`'s look at what the email settings name: the templates, and the relay's CA
/// file. Errors name the key, like the configuration's own; nothing is created (the file outbox
/// is made by the daemon).
fn check_email(c: &Config, cli: &Cli) -> anyhow::Result<()> {
    let error = |key: &str, e: anyhow::Error| {
        config::ConfigErrors(vec![config::ConfigError {
            source: cli
                .config
                .as_ref()
                .map_or("the configuration".into(), |p| p.display().to_string()),
            key: key.into(),
            reason: format!("{e:#}"),
        }])
    };
    crate::notify::templates::Templates::load(c.email.templates_dir.as_deref())
        .map_err(|e| error("email.templates_dir", anyhow::anyhow!("{e}")))?;
    if let Some(smtp) = &c.email.smtp {
        let key = if smtp.ca_file.is_some() {
            "email.smtp.ca_file"
        } else {
            "email.smtp"
        };
        crate::notify::mailer::Mailer::new(&c.email, &c.data_dir).map_err(|e| error(key, e))?;
    }
    Ok(())
}

/// `check-config`'s look at the store: the policies' accounts must exist. A store that is not
/// there (or not set up) is noted and left alone; one a newer version migrated is an error
/// (`serve` would refuse it).
async fn check_policy_accounts(c: &Config) -> anyhow::Result<()> {
    if let crate::config::StoreLocation::Sqlite(path) = &c.store {
        if !path.exists() {
            eprintln!(
                "note: the policies' accounts were not checked: no store at {} yet",
                path.display()
            );
            return Ok(());
        }
    }
    let store =
        match crate::store::Store::connect(&c.store, 1, c.db_lock_timeout, c.db_statement_timeout)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!(
                    "note: the policies' accounts were not checked: cannot open the store: {e}"
                );
                return Ok(());
            }
        };
    let checked = match store.schema().await {
        // An older version's store has the accounts too (the table is in the first migration):
        // the usual moment to check a new package's configuration.
        Ok(crate::store::Schema::Current | crate::store::Schema::Behind) => {
            crate::jobs::check_policy_accounts(&store, &c.policies)
                .await
                .map_err(anyhow::Error::from)
        }
        Ok(crate::store::Schema::Ahead(v)) => Err(anyhow::anyhow!(
            "the store was migrated by a newer tokenwarden (migration {v} is unknown to this one): \
             serve would refuse it"
        )),
        Ok(crate::store::Schema::Empty) => {
            eprintln!(
                "note: the policies' accounts were not checked: the store is not set up yet \
                 (serve or migrate will do it)"
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    };
    store.close().await;
    checked
}

/// `user activate|deactivate ID`.
async fn set_user_status(
    ctx: &crate::context::Ctx,
    op: &admin::Caller,
    id: &str,
    status: &str,
) -> anyhow::Result<()> {
    let input = admin::UpdateUser {
        status: Some(status.into()),
        ..Default::default()
    };
    let u = admin::update_user(ctx, op, id, input).await?;
    print(json!({ "user": crate::api::views::UserView::from(&u) }))
}

async fn run_store_command(ctx: &crate::context::Ctx, cmd: Command) -> anyhow::Result<()> {
    let op = admin::Caller::cli();
    let now = ctx.clock.now();
    let soon = ctx.config.tokens.expires_soon_days;
    match cmd {
        Command::Serve { .. } | Command::CheckConfig | Command::Migrate => Ok(()),
        Command::Operator(OperatorCmd::Reset) => {
            // The new credential's file is written before the store takes it: a directory this
            // user cannot write refuses the reset with the old credential still working.
            let plain = admin::new_operator_credential(ctx);
            let path = ctx.config.operator_token_path();
            let staged = crate::files::stage_secret_file(&path, plain.expose())?;
            admin::replace_operator(ctx, &op, &plain).await?;
            staged.publish()?;
            eprintln!(
                "new operator credential written to {} (mode 0600); the old one no longer works",
                path.display()
            );
            print(json!({ "operator_token_file": path }))
        }
        Command::Account(AccountCmd::Create {
            name,
            max_tokens,
            monthly_quota,
            rate_limit,
            secret_calls,
        }) => {
            let (a, secret) = admin::create_account(
                ctx,
                &op,
                CreateAccount {
                    name: Some(name),
                    max_tokens,
                    monthly_quota,
                    rate_limit,
                    secret_calls,
                },
            )
            .await?;
            print(json!({"account": AccountView::new(&a, now), "secret": secret.expose()}))
        }
        Command::Account(AccountCmd::List) => {
            let mut all = Vec::new();
            let mut after: Option<String> = None;
            loop {
                let page = admin::list_accounts(ctx, &op, after.as_deref(), 500).await?;
                let done = page.len() < 500;
                after = page.last().map(|a| a.name.clone());
                all.extend(page.iter().map(|a| AccountView::new(a, now)));
                if done {
                    break;
                }
            }
            print(json!({ "accounts": all }))
        }
        Command::Account(AccountCmd::Show { account }) => {
            let a = admin::find_account(ctx, &account).await?;
            let users = admin::list_users(ctx, &op, &a.id).await?;
            let users: Vec<crate::api::views::UserView> = users.iter().map(Into::into).collect();
            print(json!({"account": AccountView::new(&a, now), "users": users}))
        }
        Command::User(UserCmd::Create {
            account,
            email,
            role,
            no_expiry_emails,
        }) => {
            let a = admin::find_account(ctx, &account).await?;
            let input = admin::CreateUser {
                email: Some(email),
                role,
                notify_expiry: Some(!no_expiry_emails),
            };
            let u = admin::create_user(ctx, &op, &a.id, input).await?;
            print(json!({ "user": crate::api::views::UserView::from(&u) }))
        }
        Command::User(UserCmd::Deactivate { id }) => {
            set_user_status(ctx, &op, &id, "inactive").await
        }
        Command::User(UserCmd::Activate { id }) => set_user_status(ctx, &op, &id, "active").await,
        Command::User(UserCmd::Delete { id }) => {
            let (u, revoked) = admin::delete_user(ctx, &op, &id).await?;
            print(json!({
                "user": crate::api::views::UserView::from(&u),
                "tokens_revoked": revoked,
            }))
        }
        Command::Token(TokenCmd::Create(a)) => {
            let a = *a;
            let account = admin::find_account(ctx, &a.account).await?;
            let input = CreateTokens {
                account_id: Some(account.id),
                user_id: a.user,
                name: Some(a.name),
                description: a.description,
                role: a.role,
                scopes: a.scopes,
                allowed_ips: a.allowed_ips,
                usage_limit: if a.unlimited {
                    Patch::Null
                } else {
                    Patch::from_option(a.usage_limit)
                },
                lifetime_seconds: if a.never_expires {
                    Patch::Null
                } else {
                    Patch::from_option(a.lifetime_seconds)
                },
                expires_on: Patch::from_option(a.expires_on),
                count: a.count,
                refill_monthly: a.refill_monthly,
                jwt: Some(a.jwt),
                rate_limit: a.rate_limit,
            };
            let created = admin::create_tokens(ctx, &op, input).await?;
            let views: Vec<TokenView> = created
                .iter()
                .map(|(t, p)| TokenView::new(t, now, soon).with_secret(p.expose()))
                .collect();
            print(json!({ "tokens": views }))
        }
        Command::Token(TokenCmd::List(a)) => {
            let account_id = match a.account {
                Some(acc) => Some(admin::find_account(ctx, &acc).await?.id),
                None => None,
            };
            let q = ListTokens {
                account_id,
                status: a.status,
                role: a.role,
                issued_by: a.issued_by,
                user_id: a.user,
                expiring_within_days: a.expiring_within_days,
                q: a.q,
                limit: a.limit,
                page: a.page,
            };
            let (tokens, next) = admin::list_tokens(ctx, &op, q).await?;
            let views: Vec<TokenView> = tokens
                .iter()
                .map(|t| TokenView::new(t, now, soon))
                .collect();
            print(json!({ "tokens": views, "next_page": next }))
        }
        Command::Stats(StatsCmd::Export { from, to, account }) => {
            let (from, to) = crate::stats::range(from.as_deref(), to.as_deref(), now.date_naive())
                .map_err(admin::Error::from)?;
            let account = match account {
                Some(a) => Some(admin::find_account(ctx, &a).await?.id),
                None => None,
            };
            let rows = crate::stats::rows(ctx, &op, from, to, account.as_deref()).await?;
            print!("{}", crate::stats::to_csv(&rows)?);
            Ok(())
        }
        Command::Token(TokenCmd::Show { id }) => {
            let t = admin::show_token(ctx, &op, &id).await?;
            print(json!({ "token": TokenView::new(&t, now, soon) }))
        }
        Command::Token(TokenCmd::Revoke { id }) => {
            let t = admin::revoke_token(ctx, &op, &id).await?;
            print(json!({ "token": TokenView::new(&t, now, soon) }))
        }
        Command::Jobs(JobsCmd::List) => {
            let runs = ctx.store.latest_runs(&crate::jobs::ALL.map(|j| j.as_str())).await?;
            let jobs: Vec<_> = crate::jobs::ALL
                .iter()
                .map(|j| {
                    let last = runs.iter().find(|r| r.job == j.as_str());
                    json!({
                        "name": j.as_str(), "schedule": j.schedule(), "current_period": j.period_at(now),
                        "next_run": j.next_run(now), "last_period": last.map(|r| &r.period),
                        "last_status": last.map(|r| &r.status), "last_result": last.and_then(|r| r.result.as_ref()),
                        "last_error": last.and_then(|r| r.error.as_ref()),
                    })
                })
                .collect();
            print(json!({ "jobs": jobs }))
        }
        Command::Audit(AuditCmd::List {
            account,
            actor,
            target,
            action,
            outcome,
            from,
            to,
            limit,
            before,
        }) => {
            let account_id = match account {
                Some(a) => Some(admin::find_account(ctx, &a).await?.id),
                None => None,
            };
            let q = crate::api::audit::AuditQuery {
                account_id,
                actor,
                target,
                action,
                outcome,
                from,
                to,
                limit,
                page: before.map(|b| b.to_string()),
            };
            let f = crate::api::audit::filter(&op, q)?;
            let rows = ctx.store.list_audit(&f).await?;
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            for (id, e) in rows {
                let line = serde_json::to_string(&crate::api::audit::AuditRecord::new(id, e))?;
                writeln!(out, "{line}")?;
            }
            Ok(())
        }
        Command::Jobs(JobsCmd::Run { job, period }) => {
            let job: crate::jobs::Job = job
                .parse()
                .map_err(|e: String| admin::Error::Invalid(crate::domain::ParseError::new("JOB", e)))?;
            let runner = app::jobs_for(ctx).await?;
            let report = runner.run_on_demand(job, period.as_deref()).await.map_err(|e| match e {
                crate::jobs::RunError::BadPeriod(m) => {
                    anyhow::Error::from(admin::Error::Invalid(crate::domain::ParseError::new("--period", m)))
                }
                crate::jobs::RunError::Store(e) => admin::Error::Store(e).into(),
            })?;
            admin::record_job_run(ctx, &op, job.as_str(), &report.period, report.outcome.word()).await;
            use crate::jobs::RunOutcome::*;
            let (outcome, result) = match report.outcome {
                Ran(r) => ("ran", Some(r)),
                AlreadyDone(r) => ("already_done", r.result),
                // Someone else holds the period: a conflict to retry later, as the API's 409.
                Busy(r) => {
                    return Err(admin::Error::Conflict(format!(
                        "{} {} is being run by {}; try again later",
                        job.as_str(),
                        r.period,
                        r.owner
                    ))
                    .into())
                }
                Failed(e) => {
                    // What it queued before failing still goes out now.
                    if let Err(d) = runner.sender().pass().await {
                        tracing::warn!(error = %format!("{d:#}"), "delivery pass failed");
                    }
                    anyhow::bail!("{} {} failed: {e}", job.as_str(), report.period)
                }
            };
            // The run is recorded whatever happens to the deliveries, so its report is printed
            // either way (a rerun would only say already_done); a failed pass is the exit code.
            let delivered = runner.sender().pass().await;
            let (sent, failures) = match &delivered {
                Ok(d) => (d.sent, d.retrying + d.failed),
                Err(_) => (0, 0),
            };
            print(json!({
                "job": job.as_str(), "period": report.period, "outcome": outcome, "result": result,
                "delivered": sent, "delivery_failures": failures,
                "delivery_error": delivered.as_ref().err().map(|e| format!("{e:#}")),
            }))?;
            delivered.map(|_| ())
        }
        Command::Token(TokenCmd::Regenerate {
            id,
            grace_seconds,
            lifetime_seconds,
            expires_on,
            never_expires,
        }) => {
            let input = Regenerate {
                grace_seconds,
                lifetime_seconds: if never_expires {
                    Patch::Null
                } else {
                    Patch::from_option(lifetime_seconds)
                },
                expires_on: Patch::from_option(expires_on),
            };
            let (t, p) = admin::regenerate_token(ctx, &op, &id, input).await?;
            print(json!({ "token": TokenView::new(&t, now, soon).with_secret(p.expose()) }))
        }
    }
    .context("command failed")
}

/// The exit code for an error: 2 bad input or configuration, 3 not found, 4 conflict or limit,
/// 5 store unavailable, 1 anything else.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.chain()
        .any(|c| c.downcast_ref::<config::ConfigErrors>().is_some())
    {
        return 2;
    }
    for cause in e.chain() {
        if let Some(a) = cause.downcast_ref::<admin::Error>() {
            return match a {
                admin::Error::Invalid(_) | admin::Error::RoleTooHigh { .. } => 2,
                admin::Error::NotFound(_) => 3,
                admin::Error::Conflict(_) | admin::Error::TokenLimit { .. } => 4,
                admin::Error::Store(crate::store::StoreError::Unavailable(_)) => 5,
                _ => 1,
            };
        }
        if let Some(crate::store::StoreError::Unavailable(_)) = cause.downcast_ref() {
            return 5;
        }
    }
    1
}
