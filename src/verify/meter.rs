//! The meter: consumes verified calls with group commit. Concurrent requests queue here; one
//! writer task takes everything waiting (up to a batch limit), consumes it in one transaction
//! and answers each request only after that transaction is durably committed. Under load a batch
//! fills while the previous one commits, so one fsync serves many calls. On SQLite the writer
//! is a blocking thread with a connection of its own (no per-statement thread hop), and a second
//! thread flushes the log and answers, so the next batch is written while the last one's flush
//! is in flight; on PostgreSQL it is a task using the pool.

use crate::config::Durability;
use crate::store::usage_sqlite::{UsageConn, WalFile};
use crate::store::{Consume, Decided, Denial, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most calls one transaction consumes.
pub const MAX_BATCH: usize = 512;
const QUEUE: usize = 8192;

enum Msg {
    Consume(Consume, oneshot::Sender<Result<Decided, StoreError>>),
    Deny(Denial),
}

/// Handle to the writer task; cheap to clone. The task ends once every handle is dropped and
/// the queue is drained, so nothing queued is lost on shutdown.
#[derive(Clone)]
pub struct Meter {
    tx: mpsc::Sender<Msg>,
}

impl Meter {
    /// Starts the writer. On SQLite it opens its own connection here, so a file it cannot
    /// open stops the start instead of failing every verification.
    /// `durability` says whether an answer waits for the batch to be flushed to disk.
    pub fn start(
        store: Store,
        durability: Durability,
    ) -> Result<(Meter, JoinHandle<()>), StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let flush = durability == Durability::PowerLoss;
        let task = match store.sqlite_file() {
            Some(path) => {
                let conn = UsageConn::open(&path)?;
                tokio::task::spawn_blocking(move || run_sqlite(store, &path, conn, rx, flush))
            }
            None => tokio::spawn(run(store, rx, flush)),
        };
        Ok((Meter { tx }, task))
    }

    /// Decides one call and consumes it when valid; resolves once its batch is committed.
    pub async fn consume(&self, c: Consume) -> Result<Decided, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Msg::Consume(c, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the meter has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the meter dropped the request".into()))?
    }

    /// Counts a refusal in the statistics, with the next batch; never waits.
    pub fn record_denial(&self, d: Denial) {
        if self.tx.try_send(Msg::Deny(d)).is_err() {
            tracing::warn!("meter queue full: a denial was not counted in the statistics");
        }
    }
}

/// Splits a drained batch into calls to consume (with their reply slots) and denials to count.
type Split = (Vec<Consume>, Replies, Vec<Denial>);

fn split(batch: &mut Vec<Msg>) -> Split {
    let mut consumes = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut denials = Vec::new();
    for m in batch.drain(..) {
        match m {
            Msg::Consume(c, r) => {
                consumes.push(c);
                replies.push(r);
            }
            Msg::Deny(d) => denials.push(d),
        }
    }
    metrics::histogram!(crate::metrics::BATCH_SIZE).record(consumes.len() as f64);
    (consumes, replies, denials)
}

type Replies = Vec<oneshot::Sender<Result<Decided, StoreError>>>;

/// Answers every caller of a batch: its decision, or (nothing of the batch was committed) an
/// error, never VALID.
fn answer(replies: Replies, result: Result<Vec<Decided>, StoreError>) {
    match result {
        Ok(results) => {
            for (r, res) in replies.into_iter().zip(results) {
                let _ = r.send(Ok(res));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, calls = replies.len(), "usage batch failed");
            let msg = e.to_string();
            for r in replies {
                let _ = r.send(Err(StoreError::Unavailable(msg.clone())));
            }
        }
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Msg>, flush: bool) {
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (consumes, replies, denials) = split(&mut batch);
        answer(
            replies,
            store.consume_batch(&consumes, &denials, flush).await,
        );
    }
}

/// A committed SQLite batch waiting for its log to be flushed.
struct Committed {
    wal: WalFile,
    replies: Replies,
    decided: Vec<Decided>,
}

/// The SQLite writer: takes everything queued, runs it as one batch on its own connection, and
/// hands the committed batch to the sync thread, which answers it (or, with `flush` off, answers
/// it at once: the commit is in the operating system's hands). A batch that fails drops the
/// connection (it may be stuck in a transaction, or the file may have been replaced); the next
/// batch opens a new one.
fn run_sqlite(
    store: Store,
    path: &std::path::Path,
    conn: UsageConn,
    mut rx: mpsc::Receiver<Msg>,
    flush: bool,
) {
    let (sync_tx, sync_rx) = std::sync::mpsc::channel::<Committed>();
    let syncer = std::thread::Builder::new()
        .name("sqlite-sync".into())
        .spawn(move || run_syncer(sync_rx));
    let syncer = match syncer {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the log sync thread; verification is unavailable");
            while let Some(m) = rx.blocking_recv() {
                if let Msg::Consume(_, r) = m {
                    let _ = r.send(Err(StoreError::Unavailable("the meter cannot sync".into())));
                }
            }
            return;
        }
    };
    let mut conn = Some(conn);
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let (consumes, replies, denials) = split(&mut batch);
        let result = if store.is_closed() {
            Err(StoreError::Unavailable("the store is closed".into()))
        } else {
            let opened = match conn.take() {
                Some(c) => Ok(c),
                None => UsageConn::open(path),
            };
            opened.and_then(|mut c| {
                let r = c.consume_batch(&consumes, &denials).map(|d| (d, c.wal()));
                if r.is_ok() {
                    conn = Some(c);
                }
                r
            })
        };
        match result {
            Ok((decided, _)) if !flush => answer(replies, Ok(decided)),
            Ok((decided, wal)) => {
                let _ = sync_tx.send(Committed {
                    wal,
                    replies,
                    decided,
                });
            }
            Err(e) => answer(replies, Err(e)),
        }
    }
    // Everything committed is flushed and answered before the meter reports it has stopped.
    drop(sync_tx);
    let _ = syncer.join();
}

/// Flushes the log under everything committed so far, then answers those batches. A flush that
/// fails leaves the log's state on disk unknown, so every later call is refused (503) until the
/// daemon restarts and SQLite recovers the log.
fn run_syncer(rx: std::sync::mpsc::Receiver<Committed>) {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        if failed.is_none() {
            let mut synced: Vec<&WalFile> = Vec::new();
            for c in &group {
                if synced.iter().any(|w| w.same(&c.wal)) {
                    continue;
                }
                if let Err(e) = c.wal.sync() {
                    tracing::error!(error = %e, "flushing the SQLite log failed; verification is unavailable until restart");
                    failed = Some(format!("flushing the store's log failed: {e}"));
                    break;
                }
                synced.push(&c.wal);
            }
        }
        for c in group {
            match &failed {
                None => answer(c.replies, Ok(c.decided)),
                Some(m) => answer(c.replies, Err(StoreError::Unavailable(m.clone()))),
            }
        }
    }
}
