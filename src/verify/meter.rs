//! The meter: consumes verified calls with group commit. Concurrent requests queue here; one
//! writer task takes everything waiting (up to a batch limit), consumes it in one transaction
//! and answers each request only after that transaction is durably committed. Under load a batch
//! fills while the previous one commits, so one fsync serves many calls.

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
    /// Starts the writer task.
    pub fn start(store: Store) -> (Meter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(store, rx));
        (Meter { tx }, task)
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

async fn run(store: Store, mut rx: mpsc::Receiver<Msg>) {
    let mut batch: Vec<Msg> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
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
        match store.consume_batch(&consumes, &denials).await {
            Ok(results) => {
                for (r, res) in replies.into_iter().zip(results) {
                    let _ = r.send(Ok(res));
                }
            }
            Err(e) => {
                // Nothing of this batch was committed: every caller gets an error, none VALID.
                tracing::error!(error = %e, calls = replies.len(), "usage batch failed");
                let msg = e.to_string();
                for r in replies {
                    let _ = r.send(Err(StoreError::Unavailable(msg.clone())));
                }
            }
        }
    }
}
