//! The PostgreSQL usage writer's own connection, and what is done when a round trip on it
//! stalls (a half-dead NAT entry, a failover, a paused server): the writer gives up on the
//! connection, opens a new one, and before anything more is written ends the old session on the
//! server (`pg_terminate_backend`), so a statement still on its way to it, or running in it, is
//! never applied after its calls were answered 503.
//!
//! The session also carries server-side bounds: `statement_timeout` and
//! `idle_in_transaction_session_timeout` (a transaction whose COMMIT is held up in the network
//! is rolled back, not committed late).

use super::{Result, StoreError};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A server session: its process id and start, which together name it (a pid alone may be
/// reused by a later session, another daemon's).
type Session = (i32, DateTime<Utc>);

/// The writer's connection (a pool of one, not pinged before each use: that ping was a round
/// trip per batch).
pub(super) struct UsagePg {
    opts: PgConnectOptions,
    pool: Mutex<PgPool>,
    /// The session the current connection opened, once known.
    session: Arc<Mutex<Option<Session>>>,
    /// Sessions given up on, still to be ended before the next write.
    fence: Mutex<Vec<Session>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl UsagePg {
    /// Options for the writer's sessions: `timeout` bounds each statement, and a transaction
    /// left waiting for its next statement or COMMIT that long is rolled back by the server.
    pub(super) fn new(opts: PgConnectOptions, timeout: Duration) -> UsagePg {
        let ms = timeout.as_millis().max(1).to_string();
        let opts = opts.options([
            ("statement_timeout", ms.clone()),
            ("idle_in_transaction_session_timeout", ms),
        ]);
        let session = Arc::new(Mutex::new(None));
        UsagePg {
            pool: Mutex::new(Self::pool(&opts, &session, timeout)),
            opts,
            session,
            fence: Mutex::new(Vec::new()),
        }
    }

    fn pool(
        opts: &PgConnectOptions,
        session: &Arc<Mutex<Option<Session>>>,
        timeout: Duration,
    ) -> PgPool {
        let session = session.clone();
        PgPoolOptions::new()
            .max_connections(1)
            // Longer than the writer's deadline, which therefore always fires first and gives
            // the connection up: a connection stuck while it is handed back (draining the end of
            // an answer) would otherwise only fail every later acquire.
            .acquire_timeout(timeout * 2)
            .test_before_acquire(false)
            .after_connect(move |conn, _| {
                let session = session.clone();
                Box::pin(async move {
                    let s: Session = sqlx::query_as(
                        "SELECT pid, backend_start FROM pg_stat_activity \
                         WHERE pid = pg_backend_pid()",
                    )
                    .fetch_one(conn)
                    .await?;
                    *lock(&session) = Some(s);
                    Ok(())
                })
            })
            .connect_lazy_with(opts.clone())
    }

    /// The connection to write with: first ends the sessions given up on, if any. An error
    /// here (the server cannot be reached) leaves that still to do.
    pub(super) async fn get(&self) -> Result<PgPool> {
        let pool = lock(&self.pool).clone();
        let fence = lock(&self.fence).clone();
        if !fence.is_empty() {
            let (pids, starts): (Vec<i32>, Vec<DateTime<Utc>>) = fence.iter().copied().unzip();
            let ended: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a \
                 JOIN unnest($1::int4[], $2::timestamptz[]) AS f(pid, started) \
                 ON a.pid = f.pid AND a.backend_start = f.started",
            )
            .bind(pids)
            .bind(starts)
            .fetch_all(&pool)
            .await?;
            tracing::info!(
                given_up = fence.len(),
                ended = ended.iter().filter(|e| **e).count(),
                "ended the stalled usage sessions still on the server"
            );
            lock(&self.fence).retain(|s| !fence.contains(s));
        }
        Ok(pool)
    }

    /// Gives up on the current connection: the next `get` opens another and, first, ends the
    /// session this one had on the server. The old connection is dropped, not closed
    /// politely: it is stuck.
    pub(super) fn replace(&self, timeout: Duration) {
        if let Some(s) = lock(&self.session).take() {
            lock(&self.fence).push(s);
        }
        let old = std::mem::replace(
            &mut *lock(&self.pool),
            Self::pool(&self.opts, &self.session, timeout),
        );
        drop(old);
    }

    /// Closes the connection (at shutdown), waiting at most `timeout` for it.
    pub(super) async fn close(&self, timeout: Duration) {
        let pool = lock(&self.pool).clone();
        if tokio::time::timeout(timeout, pool.close()).await.is_err() {
            tracing::warn!("the usage writer's connection did not close in time");
        }
    }
}

impl super::Store {
    /// The usage writer's PostgreSQL connection, for `what`: on SQLite calls are counted by
    /// the ledger.
    pub(super) async fn usage_pool(&self, what: &str) -> Result<PgPool> {
        match &self.usage_pg {
            Some(p) => p.get().await,
            None => Err(StoreError::Other(format!(
                "{what} is for PostgreSQL; SQLite calls are counted by the ledger"
            ))),
        }
    }

    /// Gives up on the usage writer's connection after a round trip on it passed its deadline
    /// (PostgreSQL): the next batch opens a new one and, before writing, ends the stalled
    /// session on the server, so nothing sent on it is applied later.
    pub fn replace_usage_connection(&self) {
        if let Some(p) = &self.usage_pg {
            p.replace(self.usage_timeout);
        }
    }

    /// Whether the usage writer's connection gets through: ends the sessions given up on and
    /// makes one round trip (PostgreSQL; nothing to do on SQLite).
    pub async fn probe_usage_connection(&self) -> Result<()> {
        if self.usage_pg.is_none() {
            return Ok(());
        }
        let pool = self.usage_pool("a probe").await?;
        sqlx::query("SELECT 1").execute(&pool).await?;
        Ok(())
    }

    /// The longest a round trip of counting calls may take (PostgreSQL).
    pub fn usage_timeout(&self) -> Duration {
        self.usage_timeout
    }
}
