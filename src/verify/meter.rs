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
use crate::store::{Consume, Decided, Denial, Store, StoreError};
use crate::verify::copies::Copies;
use crate::verify::ledger::Ledger;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most calls one PostgreSQL transaction consumes.
pub const MAX_BATCH: usize = 512;
const QUEUE: usize = 8192;

enum Msg {
    Consume(Consume, oneshot::Sender<Result<Decided, StoreError>>),
    Deny(Denial),
}

/// Handle to the meter; cheap to clone. It stops once every handle is dropped, after what was
/// counted is committed, so nothing counted is lost on shutdown.
#[derive(Clone)]
pub struct Meter(Inner);

#[derive(Clone)]
enum Inner {
    Ledger(Arc<Ledger>),
    Batches(mpsc::Sender<Msg>),
}

/// A handle that lets admin requests and jobs fold the counted calls into the store first,
/// without keeping the meter alive (`admin::Ctx::usage`). Empty on PostgreSQL and in the CLI,
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
                )?;
                let _ = settle.0.set(Arc::downgrade(&ledger));
                Ok((Meter(Inner::Ledger(ledger)), task))
            }
            None => {
                let copies = Copies::warm(&store).await;
                let (tx, rx) = mpsc::channel(QUEUE);
                let task = tokio::spawn(run(store, rx, flush, copies));
                Ok((Meter(Inner::Batches(tx)), task))
            }
        }
    }

    /// Why the meter refuses every call, if it does.
    pub fn failure(&self) -> Option<String> {
        match &self.0 {
            Inner::Ledger(l) => l.failure(),
            Inner::Batches(_) => None,
        }
    }

    /// Whether counted calls reach the store: on SQLite a fold commits, on PostgreSQL the lock
    /// a usage batch needs is granted (`Store::probe_usage_lock`).
    pub async fn probe(&self, store: &Store) -> Result<(), StoreError> {
        match &self.0 {
            Inner::Ledger(l) => l.probe().await,
            Inner::Batches(_) => store.probe_usage_lock().await,
        }
    }

    /// Decides one call and consumes it when valid; resolves once that is durable.
    pub async fn consume(&self, c: Consume) -> Result<Decided, StoreError> {
        let tx = match &self.0 {
            Inner::Ledger(l) => return l.consume(c).await,
            Inner::Batches(tx) => tx,
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
            Inner::Batches(tx) => {
                if tx.try_send(Msg::Deny(d)).is_err() {
                    tracing::warn!("meter queue full: a denial was not counted in the statistics");
                }
            }
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

async fn run(store: Store, mut rx: mpsc::Receiver<Msg>, flush: bool, mut copies: Copies) {
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Some((consumes, replies, denials)) = split(&mut batch) else {
            continue;
        };
        let results = copies.consume(&store, &consumes, &denials, flush).await;
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
