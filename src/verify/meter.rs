//! The meter: consumes verified calls with group commit. Concurrent requests queue here; one
//! writer task takes everything waiting (up to a batch limit), consumes it in one transaction
//! and answers each request only after that transaction is durably committed. Under load a batch
//! fills while the previous one commits, so one fsync serves many calls. On SQLite the writer
//! is a blocking thread with a connection of its own (no per-statement thread hop); on
//! PostgreSQL it is a task using the pool.

use crate::store::{usage_sqlite::UsageConn, Consume, Decided, Denial, Store, StoreError};
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
    /// Starts the writer task.
    /// Starts the writer. On SQLite it opens its own connection here, so a file it cannot
    /// open stops the start instead of failing every verification.
    pub fn start(store: Store) -> Result<(Meter, JoinHandle<()>), StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = match store.sqlite_file() {
            Some(path) => {
                let conn = UsageConn::open(&path)?;
                tokio::task::spawn_blocking(move || run_sqlite(store, &path, conn, rx))
            }
            None => tokio::spawn(run(store, rx)),
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
type Split = (
    Vec<Consume>,
    Vec<oneshot::Sender<Result<Decided, StoreError>>>,
    Vec<Denial>,
);

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

/// Answers every caller of a batch: its decision, or (nothing of the batch was committed) an
/// error, never VALID.
fn answer(
    replies: Vec<oneshot::Sender<Result<Decided, StoreError>>>,
    result: Result<Vec<Decided>, StoreError>,
) {
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

async fn run(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (consumes, replies, denials) = split(&mut batch);
        answer(replies, store.consume_batch(&consumes, &denials).await);
    }
}

/// The SQLite writer: takes everything queued, runs it as one batch on its own connection, and
/// repeats. A batch that fails drops the connection (it may be stuck in a transaction, or the
/// file may have been replaced); the next batch opens a new one.
fn run_sqlite(store: Store, path: &std::path::Path, conn: UsageConn, mut rx: mpsc::Receiver<Msg>) {
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
                let r = c.consume_batch(&consumes, &denials);
                if r.is_ok() {
                    conn = Some(c);
                }
                r
            })
        };
        answer(replies, result);
    }
}
