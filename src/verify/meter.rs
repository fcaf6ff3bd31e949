//! The meter: consumes verified calls with group commit. Concurrent requests queue here; one
//! writer task takes everything waiting (up to a batch limit), consumes it in one transaction
//! and answers each request only after that transaction is committed and (with the default
//! `durability = "power-loss"`) flushed to disk. Under load a batch fills while the previous one
//! commits, so one fsync serves many calls. On SQLite the writer is a blocking thread with a
//! connection of its own (no per-statement thread hop), and a second thread flushes the log and
//! answers, so the next batch is written while the last one's flush is in flight; on PostgreSQL
//! it is a task using the pool.

use crate::config::Durability;
use crate::store::usage_sqlite::{UsageConn, WalFile};
use crate::store::{Consume, Decided, Denial, Store, StoreError};
use std::sync::{Arc, OnceLock};
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
    failed: Failure,
}

/// Set once the SQLite log could not be flushed: its state on disk is then unknown, so the
/// meter consumes nothing more (every call is answered 503, `/readyz` fails) until a restart,
/// when SQLite recovers the log.
type Failure = Arc<OnceLock<String>>;

impl Meter {
    /// Starts the writer. On SQLite it opens its own connection here, so a file it cannot
    /// open stops the start instead of failing every verification.
    /// `durability` says whether an answer waits for the batch to be flushed to disk.
    pub fn start(
        store: Store,
        durability: Durability,
    ) -> Result<(Meter, JoinHandle<()>), StoreError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let failed = Failure::default();
        let flush = durability == Durability::PowerLoss;
        let task = match store.sqlite_file() {
            Some(path) => {
                let conn = UsageConn::open(&path, store.lock_timeout())?;
                let syncer = if flush {
                    Some(Syncer::start(failed.clone())?)
                } else {
                    None
                };
                let failed = failed.clone();
                tokio::task::spawn_blocking(move || {
                    run_sqlite(store, &path, conn, rx, syncer, &failed)
                })
            }
            None => tokio::spawn(run(store, rx, flush)),
        };
        Ok((Meter { tx, failed }, task))
    }

    /// Why the meter refuses every call, if it does (see `Failure`).
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
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
        }
    }
    if consumes.is_empty() && denials.is_empty() {
        return None;
    }
    metrics::histogram!(crate::metrics::BATCH_SIZE).record(consumes.len() as f64);
    Some((consumes, replies, denials))
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
        let Some((consumes, replies, denials)) = split(&mut batch) else {
            continue;
        };
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

/// The thread that flushes the SQLite log and answers (`run_syncer`).
struct Syncer {
    tx: std::sync::mpsc::Sender<Committed>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    fn start(failed: Failure) -> Result<Syncer, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel::<Committed>();
        let thread = std::thread::Builder::new()
            .name("sqlite-sync".into())
            .spawn(move || run_syncer(rx, &failed))
            .map_err(|e| StoreError::Other(format!("cannot start the log sync thread: {e}")))?;
        Ok(Syncer { tx, thread })
    }
}

/// The SQLite writer: takes everything queued, runs it as one batch on its own connection, and
/// hands the committed batch to the sync thread, which answers it (with no `syncer`, in
/// `durability = "process-crash"`, it answers at once: the commit is in the operating system's
/// hands). A batch that fails drops the connection (it may be stuck in a transaction, or the
/// file may have been replaced); the next batch opens a new one.
fn run_sqlite(
    store: Store,
    path: &std::path::Path,
    conn: UsageConn,
    mut rx: mpsc::Receiver<Msg>,
    syncer: Option<Syncer>,
    failed: &Failure,
) {
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
        let Some((consumes, replies, denials)) = split(&mut batch) else {
            continue;
        };
        let result = if let Some(why) = failed.get() {
            Err(StoreError::Unavailable(why.clone()))
        } else if store.is_closed() {
            Err(StoreError::Unavailable("the store is closed".into()))
        } else {
            let opened = match conn.take() {
                Some(c) => Ok(c),
                None => UsageConn::open(path, store.lock_timeout()),
            };
            opened.and_then(|mut c| {
                let r = c.consume_batch(&consumes, &denials).map(|d| (d, c.wal()));
                if r.is_ok() {
                    conn = Some(c);
                }
                r
            })
        };
        match (result, &syncer) {
            (Ok((decided, wal)), Some(s)) => {
                let _ = s.tx.send(Committed {
                    wal,
                    replies,
                    decided,
                });
            }
            (Ok((decided, _)), None) => answer(replies, Ok(decided)),
            (Err(e), _) => answer(replies, Err(e)),
        }
    }
    // Everything committed is flushed and answered before the meter reports it has stopped.
    if let Some(Syncer { tx, thread }) = syncer {
        drop(tx);
        let _ = thread.join();
    }
}

/// Flushes the log under everything committed so far, then answers those batches. A flush that
/// fails sets `failed` and answers 503 (see `Failure`).
fn run_syncer(rx: std::sync::mpsc::Receiver<Committed>, failed: &Failure) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        if failed.get().is_none() {
            let mut synced: Vec<&WalFile> = Vec::new();
            for c in &group {
                if synced.iter().any(|w| w.same(&c.wal)) {
                    continue;
                }
                if let Err(e) = c.wal.sync() {
                    tracing::error!(error = %e, "flushing the SQLite log failed; verification is unavailable until restart");
                    let _ = failed.set(format!("flushing the store's log failed: {e}"));
                    break;
                }
                synced.push(&c.wal);
            }
        }
        for c in group {
            match failed.get() {
                None => answer(c.replies, Ok(c.decided)),
                Some(why) => answer(c.replies, Err(StoreError::Unavailable(why.clone()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Outcome;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    fn committed(wal: &WalFile) -> (Committed, oneshot::Receiver<Result<Decided, StoreError>>) {
        let (reply, answer) = oneshot::channel();
        let decided = Decided {
            outcome: Outcome::Valid,
            token: None,
        };
        let c = Committed {
            wal: wal.clone(),
            replies: vec![reply],
            decided: vec![decided],
        };
        (c, answer)
    }

    #[test]
    fn a_call_whose_caller_has_gone_is_not_consumed() {
        let call = |id: &str| Consume {
            token_id: id.into(),
            secret_hash: None,
            check: crate::verify::Check::default(),
            now: chrono::Utc::now(),
            jwt: None,
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

    #[test]
    fn no_call_is_answered_before_its_log_is_flushed() {
        let (flushed, flush) = channel::<()>();
        let flush = std::sync::Mutex::new(flush);
        // The flush returns only when the test lets it.
        let wal = WalFile::fake(move || {
            flush.lock().unwrap().recv().unwrap();
            Ok(())
        });
        let s = Syncer::start(Failure::default()).unwrap();
        let (c, mut answer) = committed(&wal);
        s.tx.send(c).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(answer.try_recv().is_err(), "answered before the flush");
        flushed.send(()).unwrap();
        drop(s.tx);
        s.thread.join().unwrap();
        let got = answer.try_recv().unwrap().unwrap();
        assert_eq!(got.outcome, Outcome::Valid);
    }

    #[test]
    fn a_failed_flush_refuses_that_batch_and_every_later_one() {
        let failed = Failure::default();
        let wal = WalFile::fake(|| Err(std::io::Error::other("EIO")));
        let good = WalFile::fake(|| Ok(()));
        let s = Syncer::start(failed.clone()).unwrap();
        let (first, a1) = committed(&wal);
        s.tx.send(first).unwrap();
        let a1 = a1.blocking_recv().unwrap();
        assert!(
            matches!(&a1, Err(StoreError::Unavailable(m)) if m.contains("EIO")),
            "{a1:?}"
        );
        // A later batch on a log that flushes fine is refused too: the first log's state on
        // disk is unknown.
        let (second, a2) = committed(&good);
        s.tx.send(second).unwrap();
        assert!(matches!(
            a2.blocking_recv().unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert!(failed.get().unwrap().contains("EIO"));
        drop(s.tx);
        s.thread.join().unwrap();
    }
}
