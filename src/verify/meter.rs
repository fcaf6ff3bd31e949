//! The meter: decides verified calls and consumes the valid ones, durably, for many requests at
//! a time.
//!
//! - On SQLite it is the ledger (`verify::ledger`): decisions against counters in memory, each
//!   counted call's record flushed to the usage log in groups before it is answered, and the
//!   counts folded into the store every few seconds.
//! - On PostgreSQL, which several daemons may share, every call is decided against the rows as
//!   they are when its batch commits: concurrent requests queue here, and one writer task takes
//!   everything waiting (up to a batch limit), decides it on its copies of the rows and writes it
//!   in one statement that checks they are unchanged (else under row locks: `verify::copies`),
//!   and answers each request once that is committed (and, with the default `durability =
//!   "power-loss"`, flushed). Under load a batch fills while the previous one commits.

use crate::config::{Config, Durability};
use crate::domain::plan::{Consume, Decided, Denial};
use crate::store::{Store, StoreError};
use crate::verify::copies::Copies;
use crate::verify::ledger::Ledger;

/// What one token kept in memory costs (`database.token_cache_mib`): its state in a shared
/// allocation and its slot in the table, as `bench/scale.sh` measures the resident memory a
/// million of them add (rounded up). The PostgreSQL writer's copies also hold each token's
/// statistics of the day and its row version.
const LEDGER_TOKEN_BYTES: u64 = 300;
const COPY_TOKEN_BYTES: u64 = 330;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most calls one PostgreSQL transaction consumes.
pub const MAX_BATCH: usize = 512;
const QUEUE: usize = 8192;

enum Msg {
    Consume(Consume, oneshot::Sender<Result<Decided, StoreError>>),
    Deny(Denial),
    /// Rows read in the background after a start, to copy unless copied already.
    Warm(Vec<crate::store::usage::Versioned>),
}

/// Tokens read by one background read after a start (PostgreSQL).
const WARM_STEP: usize = 20_000;

/// Handle to the meter; cheap to clone. It stops once every handle is dropped, after what was
/// counted is committed, so nothing counted is lost on shutdown.
#[derive(Clone)]
pub struct Meter(Inner);

#[derive(Clone)]
enum Inner {
    Ledger(Arc<Ledger>),
    Batches(mpsc::Sender<Msg>, Arc<Health>),
}

/// The PostgreSQL writer's state as `/readyz` sees it.
#[derive(Default)]
struct Health {
    /// When the running batch started, in milliseconds since `start`; 0 when none runs.
    busy_since: AtomicU64,
    /// The last batch passed its deadline, and nothing has gone through since.
    stalled: AtomicBool,
    start: std::sync::OnceLock<Instant>,
}

impl Health {
    fn now_ms(&self) -> u64 {
        // Never 0, which means idle.
        self.start.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
    }

    /// Why counted calls cannot get through now, if they cannot: the last batch stalled, or
    /// the one running has taken over half its deadline.
    fn trouble(&self, deadline: Duration) -> Option<&'static str> {
        if self.stalled.load(Ordering::Acquire) {
            return Some("the usage writer's last batch stalled; its connection is being replaced");
        }
        let since = self.busy_since.load(Ordering::Acquire);
        let half = (deadline / 2).as_millis() as u64;
        (since != 0 && self.now_ms().saturating_sub(since) > half)
            .then_some("the usage writer has waited on the store for over half its deadline")
    }
}

/// A handle that lets admin requests and jobs fold the counted calls into the store first,
/// without keeping the meter alive (`context::Ctx::usage`). Empty on PostgreSQL and in the CLI,
/// where nothing waits to be folded.
#[derive(Clone, Default)]
pub struct Settle(Arc<std::sync::OnceLock<std::sync::Weak<Ledger>>>);

impl Settle {
    /// Folds every call counted so far into the store, when a ledger is running.
    pub async fn settle(&self) -> Result<(), StoreError> {
        match self.0.get().and_then(std::sync::Weak::upgrade) {
            Some(l) => l.settle().await,
            None => Ok(()),
        }
    }
}

impl Meter {
    /// Starts the meter. On SQLite it opens the ledger (and folds what the last run left in its
    /// usage log) here, so a store it cannot open stops the start instead of failing every
    /// verification. `config.durability` says whether an answer waits for a flush to disk;
    /// the usage log's size and fold interval are `config`'s too (SQLite). `settle` is pointed
    /// at it.
    pub async fn start(
        store: Store,
        config: &Config,
        settle: &Settle,
    ) -> Result<(Meter, JoinHandle<()>), StoreError> {
        let flush = config.durability == Durability::PowerLoss;
        match store.sqlite_file() {
            Some(path) => {
                let (ledger, task) = Ledger::open(
                    store,
                    &path,
                    flush,
                    config.usage_log_bytes,
                    config.fold_interval,
                    (config.token_cache_bytes / LEDGER_TOKEN_BYTES) as usize,
                )?;
                let _ = settle.0.set(Arc::downgrade(&ledger));
                Ok((Meter(Inner::Ledger(ledger)), task))
            }
            None => {
                let max_tokens = (config.token_cache_bytes / COPY_TOKEN_BYTES) as usize;
                let (copies, more) = Copies::warm(&store, max_tokens).await;
                let (tx, rx) = mpsc::channel(QUEUE);
                if more {
                    tokio::spawn(warm(store.clone(), tx.downgrade(), copies.room()));
                }
                let health = Arc::new(Health::default());
                let task = tokio::spawn(run(store, rx, flush, copies, health.clone(), max_tokens));
                Ok((Meter(Inner::Batches(tx, health)), task))
            }
        }
    }

    /// Why the meter refuses every call, if it does.
    pub fn failure(&self) -> Option<String> {
        match &self.0 {
            Inner::Ledger(l) => l.failure(),
            Inner::Batches(..) => None,
        }
    }

    /// Whether counted calls reach the store: on SQLite a fold commits; on PostgreSQL the
    /// writer is not stuck on a round trip (after one stalled, its new connection answers) and
    /// the lock a usage batch needs is granted (`Store::probe_usage_lock`).
    pub async fn probe(&self, store: &Store) -> Result<(), StoreError> {
        match &self.0 {
            Inner::Ledger(l) => l.probe().await,
            Inner::Batches(_, health) => {
                let deadline = store.usage_timeout();
                match health.trouble(deadline) {
                    Some(why) if health.busy_since.load(Ordering::Acquire) != 0 => {
                        return Err(StoreError::Unavailable(why.into()))
                    }
                    Some(why) => {
                        // Nothing is running: see whether a new connection gets through.
                        match tokio::time::timeout(deadline, store.probe_usage_connection()).await {
                            Ok(Ok(())) => health.stalled.store(false, Ordering::Release),
                            Ok(Err(e)) => return Err(e),
                            Err(_) => return Err(StoreError::Unavailable(why.into())),
                        }
                    }
                    None => {}
                }
                store.probe_usage_lock().await
            }
        }
    }

    /// Decides one call and consumes it when valid; resolves once that is durable.
    pub async fn consume(&self, c: Consume) -> Result<Decided, StoreError> {
        let tx = match &self.0 {
            Inner::Ledger(l) => return l.consume(c).await,
            Inner::Batches(tx, _) => tx,
        };
        let (reply, answer) = oneshot::channel();
        tx.send(Msg::Consume(c, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the meter has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the meter dropped the request".into()))?
    }

    /// Counts a refusal in the statistics, soon; never waits.
    pub fn record_denial(&self, d: Denial) {
        match &self.0 {
            Inner::Ledger(l) => l.deny(d),
            Inner::Batches(tx, _) => {
                if tx.try_send(Msg::Deny(d)).is_err() {
                    tracing::warn!("meter queue full: a denial was not counted in the statistics");
                }
            }
        }
    }
}

/// Reads the active tokens a step at a time in id order and hands them to the writer, up to
/// `room` of them: after a start, calls across many tokens find copies instead of each batch
/// reading its rows first. Stops when the meter does.
async fn warm(store: Store, tx: mpsc::WeakSender<Msg>, room: usize) {
    let started = Instant::now();
    let mut after = String::new();
    let mut sent = 0;
    while sent < room {
        let mut rows = match store.read_after(&after, WARM_STEP).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "reading tokens ahead of calls stopped");
                return;
            }
        };
        let Some(last) = rows.last() else {
            break;
        };
        after = last.token.id.to_string();
        rows.retain(|v| v.token.status == crate::domain::status::TokenStatus::Active);
        rows.truncate(room - sent);
        sent += rows.len();
        let Some(tx) = tx.upgrade() else {
            return;
        };
        if tx.send(Msg::Warm(rows)).await.is_err() {
            return;
        }
    }
    tracing::info!(
        tokens = sent,
        ms = started.elapsed().as_millis() as u64,
        "read tokens ahead of calls"
    );
}

/// Splits a drained batch into calls to consume (with their reply slots) and denials to count;
/// `None` when nothing is left to write.
type Split = (Vec<Consume>, Replies, Vec<Denial>);

fn split(batch: &mut Vec<Msg>) -> Option<Split> {
    let mut consumes = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut denials = Vec::new();
    for m in batch.drain(..) {
        match m {
            // Its caller has gone (disconnected, timed out, cut off at shutdown): nobody
            // would learn of the use, so it is not spent.
            Msg::Consume(_, r) if r.is_closed() => {}
            Msg::Consume(c, r) => {
                consumes.push(c);
                replies.push(r);
            }
            Msg::Deny(d) => denials.push(d),
            // Taken out by the writer before.
            Msg::Warm(_) => {}
        }
    }
    if consumes.is_empty() && denials.is_empty() {
        return None;
    }
    metrics::histogram!(crate::metrics::BATCH_SIZE).record(consumes.len() as f64);
    Some((consumes, replies, denials))
}

type Replies = Vec<oneshot::Sender<Result<Decided, StoreError>>>;

/// The PostgreSQL writer: one batch at a time, each bounded by the store's usage timeout. A
/// batch past it is answered 503 and its connection given up on: the next batch opens a new
/// one and ends the stalled session on the server before writing (`Store::replace_usage_connection`),
/// so none of the calls answered 503 is counted later. (One case stays open: the server
/// committed the batch and only its answer was lost on the way back.)
async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Msg>,
    flush: bool,
    mut copies: Copies,
    health: Arc<Health>,
    max_tokens: usize,
) {
    let deadline = store.usage_timeout();
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut warmed = false;
        batch.retain_mut(|m| match m {
            Msg::Warm(rows) => {
                for v in std::mem::take(rows) {
                    if !copies.put_absent(v) {
                        break;
                    }
                }
                warmed = true;
                false
            }
            _ => true,
        });
        if warmed {
            metrics::gauge!(crate::metrics::CACHED_TOKENS).set(copies.held() as f64);
        }
        let Some((consumes, replies, denials)) = split(&mut batch) else {
            continue;
        };
        health.busy_since.store(health.now_ms(), Ordering::Release);
        let written =
            tokio::time::timeout(deadline, copies.consume(&store, &consumes, &denials, flush))
                .await;
        health.busy_since.store(0, Ordering::Release);
        let results = match written {
            Ok(results) => {
                health.stalled.store(false, Ordering::Release);
                results
            }
            Err(_) => {
                metrics::counter!(crate::metrics::BATCH_TIMEOUTS).increment(1);
                tracing::error!(
                    calls = consumes.len(),
                    timeout_ms = deadline.as_millis() as u64,
                    "a usage batch got no answer from PostgreSQL in time: its calls are answered \
                     503 and not counted; the connection is replaced"
                );
                health.stalled.store(true, Ordering::Release);
                // What the rows hold now is unknown: read them again.
                copies = Copies::new(max_tokens);
                store.replace_usage_connection();
                consumes
                    .iter()
                    .map(|_| {
                        Err(StoreError::Unavailable(
                            "the store did not answer in time".into(),
                        ))
                    })
                    .collect()
            }
        };
        for (r, res) in replies.into_iter().zip(results) {
            let _ = r.send(res);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_whose_caller_has_gone_is_not_consumed() {
        let call = |id: &str| Consume {
            token_id: id.into(),
            secret_hash: None,
            check: crate::verify::Check::default(),
            now: chrono::Utc::now(),
            jwt: None,
            decided: false,
        };
        let (kept, _waiting) = oneshot::channel();
        let (gone, dropped) = oneshot::channel();
        drop(dropped);
        let mut batch = vec![
            Msg::Consume(call("gone"), gone),
            Msg::Consume(call("kept"), kept),
        ];
        let (consumes, replies, _) = split(&mut batch).unwrap();
        let ids: Vec<&str> = consumes.iter().map(|c| c.token_id.as_str()).collect();
        assert_eq!(ids, ["kept"]);
        assert_eq!(replies.len(), 1);
        // Nothing left: no transaction at all.
        let (gone, dropped) = oneshot::channel();
        drop(dropped);
        assert!(split(&mut vec![Msg::Consume(call("gone"), gone)]).is_none());
    }
}
