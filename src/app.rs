//! Assembling the daemon: open and migrate the store, make the operator credential on first
//! start, bind the port, and serve until told to stop.

use crate::admin;
use crate::api::{self, AppState};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::context::Ctx;
use crate::files::{private_files, tighten_sqlite_files, write_secret_file};
use crate::jobs::{RunOutcome, Runner};
use crate::notify::{sender::Sender, Live, SharedLive};
use crate::store::{Schema, Store};
use anyhow::Context;
use std::{future::Future, net::SocketAddr, sync::Arc};
use tokio::net::TcpListener;

/// What opening the store may change in its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// Bring it up to date (the daemon, `migrate`).
    Always,
    /// Set up a new store, but never upgrade one an older version set up: a command-line tool
    /// run from a newer package would otherwise upgrade a store its daemons share (and older
    /// daemons refuse an upgraded store).
    OnlyEmpty,
}

/// Connects to the store named by `config` (creating the data directory) and sets its schema up
/// as `upgrade` allows; a store migrated by a newer version is refused.
pub async fn open_store(config: &Config, upgrade: Upgrade) -> anyhow::Result<Store> {
    if !config.data_dir.exists() {
        // The store, the master key and the operator credential live here: this user only.
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
    }
    let store = Store::connect(
        &config.store,
        config.db_max_connections,
        config.db_lock_timeout,
        config.db_statement_timeout,
    )
    .await
    .with_context(|| format!("cannot open the {} store", kind(config)))?;
    if let Some(db) = store.sqlite_file() {
        tighten_sqlite_files(&db);
    }
    let schema = store
        .schema()
        .await
        .context("cannot read the store's schema")?;
    match (schema, upgrade) {
        (Schema::Ahead(v), _) => anyhow::bail!(
            "the store was migrated by a newer tokenwarden (migration {v} is unknown to this \
             one): run that version"
        ),
        (Schema::Behind, Upgrade::OnlyEmpty) => anyhow::bail!(
            "the store was set up by an older tokenwarden (or is being migrated right now): \
             upgrade it first with `tokenwarden migrate` (every daemon sharing it together)"
        ),
        (Schema::Current, Upgrade::OnlyEmpty) => {}
        // Up to date, yet a daemon stopped between the migrations and their keys may have left
        // accounts without ApiKeys.
        (Schema::Current, Upgrade::Always) => {
            store
                .give_accounts_keys()
                .await
                .context("cannot give the accounts their ApiKeys")?;
        }
        _ => store.migrate().await.context("cannot migrate the store")?,
    }
    Ok(store)
}

/// Opens the store named by `config` (see `open_store`) with the master key the store was set
/// up with: the first opening makes the key and records its fingerprint; later ones need that
/// key's file and never make another.
pub async fn open_ctx(config: Config, clock: SharedClock, upgrade: Upgrade) -> anyhow::Result<Ctx> {
    private_files();
    let store = open_store(&config, upgrade).await?;
    let recorded = store.setting("master_key_fingerprint").await?;
    if recorded.is_some() && !config.master_key_file.exists() {
        anyhow::bail!(
            "{}: no master key here, but the store was set up with one: copy that key file \
             here (every daemon sharing a store needs the same master key file)",
            config.master_key_file.display()
        );
    }
    let master_key = crate::seal::MasterKey::load_or_create(&config.master_key_file)?;
    // The first opening records the key; of two at once, the store keeps one fingerprint.
    let stored = match recorded {
        Some(fingerprint) => fingerprint,
        None => {
            store
                .setting_init("master_key_fingerprint", &master_key.fingerprint())
                .await?
        }
    };
    anyhow::ensure!(
        stored == master_key.fingerprint(),
        "{}: this master key is not the one the store was set up with; every daemon sharing a \
         store needs the same master key file",
        config.master_key_file.display()
    );
    Ok(Ctx {
        config: Arc::new(config),
        store,
        clock,
        master_key: Arc::new(master_key),
        usage: Default::default(),
    })
}

fn kind(c: &Config) -> &'static str {
    match c.store {
        crate::config::StoreLocation::Sqlite(_) => "SQLite",
        crate::config::StoreLocation::Postgres(_) => "PostgreSQL",
    }
}

/// On a store with no operator credential, makes one and writes it to
/// `<data_dir>/operator.token`; logs the path, never the value.
pub async fn ensure_operator(ctx: &Ctx) -> anyhow::Result<()> {
    let path = ctx.config.operator_token_path();
    match admin::init_operator(ctx).await? {
        Some(plain) => {
            write_secret_file(&path, plain.expose())?;
            tracing::info!(path = %path.display(), "operator credential created; it is in this file (mode 0600)");
        }
        None if path.exists() => {
            tracing::info!(path = %path.display(), "operator credential already set up");
        }
        None => tracing::info!(
            "the store already has an operator credential (made by another daemon or an earlier start); \
             `tokenwarden operator reset` makes a new one"
        ),
    }
    Ok(())
}

/// The runner and the outbox sender over `ctx`, with templates and mail transport built (and
/// checked) from its configuration, after checking that every policy's account exists.
pub async fn jobs_for(ctx: &Ctx) -> anyhow::Result<Arc<Runner>> {
    crate::jobs::check_policy_accounts(&ctx.store, &ctx.config.policies).await?;
    let live = SharedLive::new(Live::new(ctx.config.clone())?);
    let sender = Sender::new(
        ctx.store.clone(),
        ctx.clock.clone(),
        ctx.master_key.clone(),
        live.clone(),
    );
    Ok(Runner::new(ctx.clone(), live, sender))
}

/// A daemon ready to serve: store open and migrated, port bound, missed job periods run.
pub struct App {
    ctx: Ctx,
    listener: TcpListener,
    runner: Arc<Runner>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl App {
    /// Builds everything `serve` needs; binds `config.listen` (port 0 picks a free port).
    pub async fn build(config: Config, clock: SharedClock) -> anyhow::Result<App> {
        let listen = config.listen;
        // A bad certificate or key stops the start before anything else happens.
        let tls = match &config.tls {
            Some((cert, key)) => Some(crate::server::tls_acceptor(cert, key)?),
            None => None,
        };
        let ctx = open_ctx(config, clock, Upgrade::Always).await?;
        ensure_operator(&ctx).await?;
        // Accounts that leave secret calls to the daemon follow its setting from this start.
        let changed = ctx
            .store
            .apply_secret_calls_default(ctx.config.secret_calls, ctx.clock.now())
            .await
            .context("cannot apply accounts.secret_calls")?;
        if changed > 0 {
            tracing::info!(
                accounts = changed,
                secret_calls = ctx.config.secret_calls,
                "accounts.secret_calls applied to the accounts that leave it to the daemon"
            );
        }
        let runner = jobs_for(&ctx).await?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        // Catch up: every period that came due while no daemon ran is run once, now; then
        // policies new since this month's run get their token.
        for r in runner.catch_up().await {
            if let RunOutcome::Ran(summary) = &r.outcome {
                tracing::debug!(job = r.job.as_str(), period = %r.period, %summary, "caught up");
            }
        }
        if let Err(e) = runner.reconcile_policies().await {
            tracing::warn!(error = %e, "could not issue the tokens of new policies; the next start or reload retries");
        }
        Ok(App {
            ctx,
            listener,
            runner,
            tls,
        })
    }

    /// The job runner (tests wake it after moving the clock).
    pub fn runner(&self) -> &Arc<Runner> {
        &self.runner
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.ctx.config.listen)
    }

    /// The shared context (tests reach the store and clock through it).
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests and closes the store.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.run(shutdown, None).await
    }

    /// Serves until `shutdown` completes; with `reload`, SIGHUP re-reads the configuration and
    /// puts its policies, notification settings and templates in force (a bad one is refused
    /// and the old stays). Tells systemd READY=1 once the port answers, pings its watchdog, and
    /// says STOPPING=1 when the stop begins. The stop finishes in-flight requests (at most
    /// `server.shutdown_grace_seconds`), commits counted calls and makes a last outbox pass.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        reload: Option<Reload>,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let config = self.ctx.config.clone();
        let store = self.ctx.store.clone();
        let (meter, writer) =
            crate::verify::meter::Meter::start(store.clone(), &config, &self.ctx.usage)
                .await
                .context("cannot start counting calls")?;
        let mut scheduler = crate::jobs::start_scheduler(self.runner.clone())
            .await
            .context("cannot start the job scheduler")?;
        let (stop_outbox, outbox_stopped) = tokio::sync::watch::channel(false);
        let sender = tokio::spawn(self.runner.sender().clone().run(outbox_stopped));
        let verifier = crate::verify::service::Verifier {
            meter,
            store: store.clone(),
            clock: self.ctx.clock.clone(),
            master_key: self.ctx.master_key.clone(),
            prefix: config.tokens.prefix.as_str().into(),
            max_jwt_lifetime_seconds: config.tokens.max_jwt_lifetime_seconds,
            api_keys: Default::default(),
        };
        let router = api::router(AppState {
            ctx: self.ctx,
            verifier,
            runner: self.runner.clone(),
        });
        let tls = self.tls.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let opts = crate::server::ServeOptions {
            tls,
            header_timeout: config.header_timeout,
            grace: config.shutdown_grace,
            max_connections: crate::server::connection_cap(
                config.max_connections,
                config.db_max_connections,
            ),
        };
        // Listen for SIGHUP before the first request is served: a reload sent as soon as the
        // port answers must not meet the signal's default action (termination).
        let reloader = match reload {
            Some(r) => Some(tokio::spawn(reload_on_sighup(
                r,
                hangups()?,
                self.runner.clone(),
            ))),
            None => None,
        };
        let (stop_server, server_stopped) = tokio::sync::watch::channel(false);
        let mut server = tokio::spawn(crate::server::serve(
            self.listener,
            router,
            opts,
            server_stopped,
        ));
        self_check(scheme, addr).await;
        tracing::info!(%addr, scheme, backend = store.backend_name(), "tokenwarden serving");
        notify_systemd(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]);
        // What the catch-up left to serving time (the daily housekeeping), now the port is open.
        let due_at_start = {
            let runner = self.runner.clone();
            tokio::spawn(async move {
                runner.run_due().await;
            })
        };
        let watchdog = sd_notify::watchdog_enabled().map(|every| {
            tokio::spawn(async move {
                // Half the interval, as systemd recommends; a stuck runtime stops the pings.
                let mut tick = tokio::time::interval(every / 2);
                loop {
                    tick.tick().await;
                    notify_systemd(&[sd_notify::NotifyState::Watchdog]);
                }
            })
        });

        tokio::pin!(shutdown);
        let server_running = tokio::select! {
            _ = &mut shutdown => true,
            // The server only ends early if it failed.
            r = &mut server => {
                tracing::error!(result = ?r, "the HTTP server stopped unexpectedly");
                false
            }
        };
        notify_systemd(&[
            sd_notify::NotifyState::Stopping,
            sd_notify::NotifyState::Status("stopping"),
        ]);
        if let Some(r) = reloader {
            r.abort();
        }
        due_at_start.abort();
        let _ = stop_server.send(true);
        if server_running {
            let _ = server.await;
        }
        // Every handler is gone: let the meter commit what is queued before closing the store.
        // Its last batch is bounded by the store's usage timeout (PostgreSQL); a fold on
        // SQLite by the lock timeout.
        let last_batch = config.db_statement_timeout.max(config.db_lock_timeout)
            + std::time::Duration::from_secs(5);
        match tokio::time::timeout(last_batch, writer).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the usage writer failed"),
            Err(_) => {
                tracing::error!("the usage writer did not finish in time; stopping without it")
            }
        }
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "the job scheduler did not stop cleanly");
        }
        // One last outbox pass, bounded: what is not delivered stays queued for the next start.
        let _ = stop_outbox.send(true);
        if tokio::time::timeout(std::time::Duration::from_secs(20), sender)
            .await
            .is_err()
        {
            tracing::warn!(
                "outbox sender still busy at shutdown; undelivered messages stay queued"
            );
        }
        if let Some(w) = watchdog {
            w.abort();
        }
        store.close().await;
        tracing::info!("tokenwarden stopped");
        Ok(())
    }
}

/// Re-reads the configuration (the same file, environment and flags as at start).
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigErrors> + Send + Sync>;

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

fn hangups() -> anyhow::Result<Hangups> {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")
    }
    #[cfg(not(unix))]
    Ok(())
}

async fn reload_on_sighup(reload: Reload, hangups: Hangups, runner: Arc<Runner>) {
    #[cfg(unix)]
    {
        let mut hup = hangups;
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let result = match reload() {
                Ok(config) => runner.reload(config).await,
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(summary) => tracing::info!("{summary}"),
                Err(e) => tracing::error!(
                    "the new configuration is refused; the previous one stays in force: {e}"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reload, hangups, runner);
    }
}

/// Waits (5 s at most) until the server answers `/healthz` on `addr`, so READY=1 means the port
/// really serves.
async fn self_check(scheme: &str, addr: SocketAddr) {
    let probe = crate::server::probe_addr(addr);
    // The probe only asks our own port whether it answers; the certificate is not the point.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(std::time::Duration::from_secs(1))
        .build()
        .unwrap_or_default();
    let url = format!("{scheme}://{probe}/healthz");
    for _ in 0..50 {
        if client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tracing::warn!(%url, "the port did not answer its own health check");
}

fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Resolves when SIGINT or SIGTERM arrives. The handlers are installed when this is called (not
/// when the future is first polled), so a stop right after the start is never lost.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (mut term, mut int) = signals;
            async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = recv(term.as_mut()) => {},
                _ = recv(int.as_mut()) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown signal received; finishing in-flight requests");
    }
}
