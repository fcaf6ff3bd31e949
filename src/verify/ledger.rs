//! The SQLite ledger: verification decided against counters in memory, each counted call made
//! durable in the usage log before it is answered, and the counts folded into the store in rare
//! passes (about twice the throughput of a transaction per batch when it was measured against
//! that design; BENCHMARKS.md, "What limits each number").
//!
//! - **Cache.** The rows a verification decides on (tokens, their accounts, JWT use counts) are
//!   read once and then kept, with every decision applied to them in place. A decision and the
//!   append of its record happen under one lock, so records are in the order of the decisions.
//! - **Log.** A VALID call appends its record (`usage_log`) and is answered once that is
//!   flushed (`durability = "power-loss"`) or written ("process-crash"); one flush serves every
//!   call that arrived meanwhile. A refusal appends its record too, without waiting: it only
//!   feeds the statistics.
//! - **Fold.** A thread applies the records to the rows as they are in the store now (so a new
//!   limit or a refill set meanwhile is kept), in one transaction that also records how far the
//!   log is folded; then that part of the log may be reused. It runs every
//!   `fold_interval_seconds`, when half a log file waits, when asked (`settle`: every
//!   authenticated admin request and the monthly reset fold first, so they read counters that
//!   include every answered call), and at shutdown.
//!   A start folds what the last run left in the log before serving. A panic in the fold or
//!   log thread aborts the process: the next start replays the log.
//! - **Coherence.** Whoever changes a token or an account through the store bumps its change
//!   number (`Store::change_no`): at once in this process, and through `settings.change_no` for
//!   the CLI, which the fold thread reads every `POLL`. A decision that sees the number moved
//!   waits for a fold, which empties the cache, and reads the rows again. Only one daemon may
//!   use a SQLite file (a lock beside it); daemons share PostgreSQL instead.
//!
//! Invariant: a token, account or JWT count absent from the cache has no record waiting to be
//! folded, so reading it from the store gives its whole state. Records are appended only for
//! cached rows, and the cache is emptied only when no record waiting was decided on it.

use super::table::Tokens;
use super::usage_log::{self, Durability, LogError, Seq, UsageLog};
use crate::domain::model::Account;
use crate::domain::plan::{consume_one, secret_matches, Consume, Decided, Denial, JwtUse, Keys};
use crate::domain::rate::Windows;
use crate::domain::state::TokenState;
use crate::store::usage_sqlite::{LogPosition, UsageConn, UsageReader};
use crate::store::{Store, StoreError};
use crate::verify::{Check, Outcome};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often the fold thread looks for changes another process made (and folds when due).
const POLL: Duration = Duration::from_millis(100);

/// How soon a fold that failed is tried again at first (each try also waits up to the store's
/// lock timeout for its write lock; each further failure doubles it, up to the fold interval).
const RETRY_FAILED_FOLD: Duration = Duration::from_millis(250);

/// JWT use counts kept in memory (each JWT id used since the cache was last emptied) past
/// which a fold drops those no waiting record needs.
const MAX_CACHED_JWTS: usize = 100_000;
/// Active tokens read at start, before serving (the most recently used first); the rest, up to
/// the cache's size, are read in the background once serving has begun.
const PRELOADED_TOKENS: usize = 10_000;
/// Tokens read by one background read.
const PRELOAD_STEP: usize = 20_000;
/// Records waiting past which a fold is asked for at once, whatever the fold interval: under
/// heavy load a fold stays a few chunks long, so an admin request or a job, which folds first,
/// waits about a second at most.
const FOLD_SOON_RECORDS: usize = 100_000;
/// Records folded by one transaction: a fold of more is several transactions, each recording
/// how far the log is folded, so the rows a fold holds in memory and the time it holds the
/// write lock stay bounded however many calls waited.
const FOLD_CHUNK: usize = 20_000;

/// A call counted in memory and in the log, not yet folded into the store.
#[derive(Debug, Clone)]
enum Entry {
    Use(Consume),
    Deny(Denial),
}

#[derive(Default)]
struct Cache {
    /// The change number the rows below are good for.
    gen: u64,
    /// Shared with the answers that carry them; a decision changes its row in place, copying
    /// it only while an answer still holds it. The day's statistics in these rows (`today`)
    /// are not kept: a fold counts them on the stored rows.
    tokens: Tokens<Arc<TokenState>>,
    /// Keyed by the id the cached tokens share.
    accounts: HashMap<Arc<str>, Account>,
    /// Tokens kept (`database.token_cache_mib`): past it a fold drops some of those no waiting
    /// record needs.
    max_tokens: usize,
    jwt_uses: HashMap<(String, String), i64>,
    /// The rate windows of the tokens and accounts used lately: memory only, kept when the
    /// rows are dropped.
    rates: Windows,
    /// Records appended and not yet folded, numbered up to `last_seq` without a gap.
    pending: Pending,
    last_seq: Seq,
    fold_asked: bool,
    /// Counts the times rows were dropped (`clear_rows`, `trim`): a load that read the store
    /// before a drop must not put its rows back, as they may lack records folded meanwhile.
    drops: u64,
    /// The month of the last call decided, formatted once a day rather than once a call.
    keys: Keys,
}

impl Cache {
    fn clear_rows(&mut self) {
        self.drops += 1;
        self.tokens.clear();
        self.accounts.clear();
        self.jwt_uses.clear();
    }

    /// Drops the JWT use counts no waiting record was decided on (tokens and accounts stay).
    fn trim_jwts(&mut self) {
        self.drops += 1;
        let mut jwts = HashSet::new();
        for e in self.pending.entries() {
            if let Some(Entry::Use(Consume {
                token_id,
                jwt: Some(j),
                ..
            })) = e
            {
                jwts.insert((token_id, j.jwt_id));
            }
        }
        self.jwt_uses.retain(|k, _| jwts.contains(k));
    }

    /// Drops tokens no waiting record was decided on until three quarters of `max_tokens` are
    /// left, and the accounts no token left needs.
    fn trim(&mut self) {
        self.drops += 1;
        let mut needed = HashSet::new();
        for e in self.pending.entries() {
            if let Some(Entry::Use(c)) = e {
                needed.insert(c.token_id);
            }
        }
        self.tokens
            .shrink_to(self.max_tokens / 4 * 3, |t| needed.contains(t.id.as_str()));
        let keep: HashSet<&str> = self.tokens.values().map(|t| &*t.account_id).collect();
        self.accounts.retain(|id, _| keep.contains(&**id));
    }

    /// Adds a token read from the store (unless it is held already), sharing its account's id
    /// with the account's entry, which it adds when absent.
    fn insert(&mut self, mut token: TokenState, account: Option<Account>) {
        let key = match self.accounts.get_key_value(&*token.account_id) {
            Some((k, _)) => k.clone(),
            None => match account {
                Some(a) if *a.id == *token.account_id => {
                    self.accounts.insert(token.account_id.clone(), a);
                    token.account_id.clone()
                }
                _ => return,
            },
        };
        token.account_id = key;
        // The day's statistics are counted by the fold on the stored rows.
        token.today = None;
        self.tokens.insert_new(Arc::new(token));
    }
}

/// Records waiting to be folded, as their log payloads: a tenth of the memory of the values.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Where each record ends in `bytes`.
    ends: Vec<usize>,
}

impl Pending {
    fn push(&mut self, payload: &[u8]) {
        self.bytes.extend_from_slice(payload);
        self.ends.push(self.bytes.len());
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Bytes these records take in the log.
    fn log_bytes(&self) -> u64 {
        (self.bytes.len() + self.ends.len() * usage_log::HEADER) as u64
    }

    /// The first `n` records, and the rest.
    fn split_front(self, n: usize) -> (Pending, Pending) {
        if n >= self.ends.len() {
            return (self, Pending::default());
        }
        let cut = self.ends[n - 1];
        let mut bytes = self.bytes;
        let rest_bytes = bytes.split_off(cut);
        let mut ends = self.ends;
        let rest_ends = ends.split_off(n).into_iter().map(|e| e - cut).collect();
        (
            Pending { bytes, ends },
            Pending {
                bytes: rest_bytes,
                ends: rest_ends,
            },
        )
    }

    /// Puts `earlier` in front.
    fn prepend(&mut self, earlier: Pending) {
        let shift = earlier.bytes.len();
        let mut bytes = earlier.bytes;
        bytes.extend_from_slice(&self.bytes);
        let mut ends = earlier.ends;
        ends.extend(self.ends.iter().map(|e| e + shift));
        *self = Pending { bytes, ends };
    }

    /// The records, in order (`None` for one this version cannot read, which cannot happen:
    /// each was encoded here).
    fn entries(&self) -> impl Iterator<Item = Option<Entry>> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter().copied())
            .map(|(a, b)| decode(&self.bytes[a..b]))
    }
}

/// What the ledger's handles and its fold thread share.
struct Shared {
    store: Store,
    cache: Mutex<Cache>,
    log: UsageLog,
    /// Pending bytes past which a fold is asked for at once.
    early_fold: u64,
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum FoldCall {
    /// Fold everything appended so far, then answer.
    Wait(oneshot::Sender<Result<(), String>>),
    /// Answer whether the store takes folds: while folds fail, a fold's result; else whether
    /// the store's write lock is granted now (`/readyz`, which anyone may call: on a healthy
    /// daemon it takes the lock and lets it go, and writes nothing).
    Probe(oneshot::Sender<Result<(), String>>),
    /// Fold soon; nobody waits.
    Soon,
}

/// The ledger of one SQLite store; shared by every handler (`Meter`).
pub struct Ledger {
    shared: Arc<Shared>,
    /// Reads rows the cache lacks, on a blocking thread.
    reader: Arc<Mutex<UsageReader>>,
    folds: Sender<FoldCall>,
}

/// What one pass over the cache found for a call.
enum Step {
    /// Decided; when it is a VALID call, answered once its record is durable.
    Decided(Box<Decided>, Option<Durability>),
    /// The cache lacks a row the call needs.
    Missing,
    /// Tokens or accounts changed since the cache was filled: fold, empty it, read again.
    Stale,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn log_refused(e: LogError) -> StoreError {
    match e {
        LogError::Behind => unavailable("the usage log is full, waiting for a fold"),
        e => unavailable(e),
    }
}

impl Ledger {
    /// Opens the ledger of the SQLite store at `path`: takes the one-daemon lock, folds what the
    /// last run left in the usage log (files `<path>-usage.0/.1` of `log_size` bytes), and
    /// starts the fold thread under a new epoch. The returned task ends once every handle is
    /// dropped, after a last fold.
    pub fn open(
        store: Store,
        path: &Path,
        flush: bool,
        log_size: u64,
        fold_every: Duration,
        max_tokens: usize,
    ) -> Result<(Arc<Ledger>, tokio::task::JoinHandle<()>), StoreError> {
        // The file itself, however it is reached: the lock and the log go beside it.
        let path = &std::fs::canonicalize(path)
            .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
        let lock = lock_store(path)?;
        let lock_timeout = store.lock_timeout();
        // The start's own fold is flushed whatever the durability: it moves to a new epoch, and
        // an epoch used twice could make old records look like new ones.
        let mut conn = UsageConn::open(path, lock_timeout, true)?;
        let reader = UsageReader::open(path, lock_timeout)?;
        let last = conn.log_position()?;
        let (records, beyond) = usage_log::replay(path, last.folded, last.epoch)
            .map_err(|e| StoreError::Other(format!("cannot read the usage log: {e}")))?;
        if beyond > 0 {
            tracing::warn!(
                records = beyond,
                "usage log records after a gap were never acknowledged; not counted"
            );
        }
        let mut entries = Vec::with_capacity(records.len());
        for (seq, payload) in &records {
            entries.push(decode(payload).ok_or_else(|| {
                StoreError::Other(format!(
                    "usage log record {seq} of run {} is unreadable by this version",
                    last.epoch
                ))
            })?);
        }
        let (uses, denials) = split(entries);
        let epoch = last.epoch + 1;
        // The replayed records and the new epoch in one transaction: a crash here replays the
        // same records again.
        conn.fold(&uses, &denials, LogPosition { epoch, folded: 0 })?;
        conn.set_flush(flush)?;
        if !records.is_empty() {
            tracing::info!(
                calls = uses.len(),
                refusals = denials.len(),
                "counted the calls the last run left in the usage log"
            );
        }
        let (log, writer) = UsageLog::open(path, log_size, flush, 1, epoch)
            .map_err(|e| StoreError::Other(format!("cannot open the usage log: {e}")))?;
        store.observe_change(conn.change_no()?);
        // Nothing is counted yet (the log was just folded), so the rows in the store are whole.
        // The change number is taken first: a change committed meanwhile makes them stale.
        let gen = store.change_no();
        let limit = PRELOADED_TOKENS.min(max_tokens);
        let (tokens, accounts) = reader.active_rows(limit)?;
        // A read cut short of its limit read every active token: nothing left to read ahead.
        let more = tokens.len() == limit && max_tokens > limit;
        let mut cache = Cache {
            gen,
            max_tokens,
            ..Cache::default()
        };
        let mut accounts: HashMap<String, Account> =
            accounts.into_iter().map(|a| (a.id.clone(), a)).collect();
        for t in tokens {
            let a = accounts.remove(&*t.account_id);
            cache.insert(t, a);
        }
        let shared = Arc::new(Shared {
            store,
            cache: Mutex::new(cache),
            log,
            // Half a file: the other half leaves the fold time to finish before appends
            // would have to wait for it.
            early_fold: log_size / 2,
        });
        let (folds, calls) = std::sync::mpsc::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("usage-fold".into())
                .spawn(move || {
                    // Behind the threads that answer calls: a fold is never urgent, and on a
                    // busy machine it would otherwise take their CPU in bursts.
                    lower_priority();
                    abort_on_panic("fold", || {
                        run_folds(&shared, &mut conn, &calls, epoch, fold_every)
                    });
                    shared.log.close(writer);
                    drop(lock);
                })
                .map_err(|e| StoreError::Other(format!("cannot start the fold thread: {e}")))?
        };
        let task = tokio::task::spawn_blocking(move || {
            if thread.join().is_err() {
                tracing::error!("the fold thread panicked; the next start folds the usage log");
            }
        });
        if more {
            let shared = shared.clone();
            let reader = UsageReader::open(path, lock_timeout)?;
            let spawned = std::thread::Builder::new()
                .name("token-preload".into())
                .spawn(move || {
                    lower_priority();
                    preload(&shared, &reader);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start reading tokens ahead of calls");
            }
        }
        let ledger = Ledger {
            shared,
            reader: Arc::new(Mutex::new(reader)),
            folds,
        };
        Ok((Arc::new(ledger), task))
    }

    /// Why every call is refused, if it is: the usage log failed (until a restart).
    pub fn failure(&self) -> Option<String> {
        self.shared.log.failure().map(|e| e.to_string())
    }

    /// Decides one call against the cache and, when it is valid, consumes it; resolves once
    /// its record is durable.
    pub async fn consume(&self, c: Consume) -> Result<Decided, StoreError> {
        // Each pass either decides, or fills or empties the cache, which the next pass sees.
        loop {
            match self.step(&c)? {
                Step::Decided(d, None) => return Ok(*d),
                Step::Decided(d, Some(durable)) => {
                    durable.wait().await.map_err(unavailable)?;
                    return Ok(*d);
                }
                Step::Stale => self.settle().await?,
                Step::Missing => {
                    if !self.load(&c).await? {
                        return Ok(Decided {
                            outcome: Outcome::NotFound,
                            token: None,
                            rate: None,
                        });
                    }
                }
            }
        }
    }

    fn step(&self, c: &Consume) -> Result<Step, StoreError> {
        // Shutting down: nothing more is counted.
        if self.shared.store.is_closed() {
            return Err(unavailable("the store is closed"));
        }
        let mut guard = self.shared.cache();
        let cache = &mut *guard;
        if cache.gen != self.shared.store.change_no() {
            return Ok(Step::Stale);
        }
        let Some(row) = cache.tokens.get_mut(&c.token_id) else {
            return Ok(Step::Missing);
        };
        let Some(a) = cache.accounts.get_mut(&*row.account_id) else {
            return Ok(Step::Missing);
        };
        let jwt_used = match &c.jwt {
            Some(j) => {
                let key = (c.token_id.clone(), j.jwt_id.clone());
                let Some(uses) = cache.jwt_uses.get_mut(&key) else {
                    return Ok(Step::Missing);
                };
                Some(uses)
            }
            None => None,
        };
        if !c.decided && !secret_matches(row, c) {
            // Not this token's secret: nothing to count.
            let answer = Decided {
                outcome: Outcome::NotFound,
                token: None,
                rate: None,
            };
            return Ok(Step::Decided(Box::new(answer), None));
        }
        // The decision changes the cached rows in place, so it is made only once the log is
        // known to take its record. Appends happen under this lock, so that holds unless the
        // log fails for good meanwhile; then every call is refused until a restart reads the
        // store and the log again.
        let bound = record_bound(c, &row.account_id);
        self.shared.log.admits(bound).map_err(log_refused)?;
        let period = cache.keys.month(c.now);
        let t = Arc::make_mut(row);
        // A new month restarts the counters and applies the refill; the fold archives them.
        t.roll_month(period.month);
        a.roll_month(period.key);
        let (outcome, rate) = consume_one(t, a, jwt_used, &mut cache.rates, c, period);
        let entry = match outcome {
            // Not in the statistics: a flood of them writes nothing.
            Outcome::RateLimited => {
                let answer = Decided {
                    outcome,
                    token: Some(Arc::clone(row)),
                    rate,
                };
                return Ok(Step::Decided(Box::new(answer), None));
            }
            // What a fold needs, no more: it waits in memory until then.
            Outcome::Valid => Entry::Use(Consume {
                token_id: c.token_id.clone(),
                secret_hash: None,
                check: Check {
                    client_ip: c.check.client_ip,
                    cost: c.check.cost,
                    ..Check::default()
                },
                now: c.now,
                jwt: c.jwt.clone(),
                decided: true,
            }),
            o => Entry::Deny(Denial {
                token_id: t.id.to_string(),
                account_id: t.account_id.to_string(),
                outcome: o,
                at: c.now,
            }),
        };
        let answer = Decided {
            outcome,
            token: Some(Arc::clone(row)),
            rate,
        };
        let durable = self.append(cache, entry, outcome == Outcome::Valid)?;
        Ok(Step::Decided(Box::new(answer), durable))
    }

    /// Appends `entry`'s record to the log and the waiting list (with `wait`, returning what
    /// resolves once it is durable). Called with the cache locked, so the records are in the
    /// order of the decisions and `UsageLog::admits` asked under the same lock still holds.
    fn append(
        &self,
        cache: &mut Cache,
        entry: Entry,
        wait: bool,
    ) -> Result<Option<Durability>, StoreError> {
        let bytes = encode(&entry);
        let appended = if wait {
            self.shared
                .log
                .append_waiting(&bytes)
                .map(|(seq, d)| (seq, Some(d)))
        } else {
            self.shared.log.append(&bytes).map(|seq| (seq, None))
        };
        let (seq, durable) = appended.map_err(log_refused)?;
        cache.pending.push(&bytes);
        cache.last_seq = seq;
        if cache.pending.log_bytes() >= self.shared.early_fold
            || cache.pending.len() >= FOLD_SOON_RECORDS
        {
            self.fold_soon(cache);
        }
        Ok(durable)
    }

    /// Asks the fold thread for a fold, unless one is asked for already.
    fn fold_soon(&self, cache: &mut Cache) {
        if !cache.fold_asked {
            cache.fold_asked = true;
            let _ = self.folds.send(FoldCall::Soon);
        }
    }

    /// Reads the rows `c` needs into the cache (keeping those already there, which may hold
    /// calls not yet folded); false when its token or account does not exist.
    async fn load(&self, c: &Consume) -> Result<bool, StoreError> {
        let (gen, drops) = {
            let cache = self.shared.cache();
            (cache.gen, cache.drops)
        };
        let reader = self.reader.clone();
        let token_id = c.token_id.clone();
        let jwt_id = c.jwt.as_ref().map(|j| j.jwt_id.clone());
        let read = tokio::task::spawn_blocking(move || {
            let reader = reader.lock().unwrap_or_else(|e| e.into_inner());
            let Some(t) = reader.token(&token_id)? else {
                return Ok(None);
            };
            let Some(a) = reader.account(&t.account_id)? else {
                return Ok(None);
            };
            let uses = match &jwt_id {
                Some(j) => Some(reader.jwt_uses(&t.id, j)?),
                None => None,
            };
            Ok::<_, StoreError>(Some((t, a, uses)))
        })
        .await
        .map_err(|e| StoreError::Other(format!("reading a token failed: {e}")))??;
        let Some((token, account, uses)) = read else {
            return Ok(false);
        };
        let mut cache = self.shared.cache();
        // Rows were dropped meanwhile (they may have been folded into the store after this read),
        // or a change has committed since: the next pass reads again, or sees it is stale.
        if cache.gen != gen || cache.drops != drops || self.shared.store.change_no() != gen {
            return Ok(true);
        }
        if let (Some(uses), Some(j)) = (uses, &c.jwt) {
            cache
                .jwt_uses
                .entry((token.id.to_string(), j.jwt_id.clone()))
                .or_insert(uses);
        }
        cache.insert(token, Some(account));
        // Past its size the cache is trimmed by a fold, which frees what no record needs.
        if cache.tokens.len() > cache.max_tokens {
            self.fold_soon(&mut cache);
        }
        Ok(true)
    }

    /// Counts a refusal decided outside the cache (a bad JWT of a known signer) in the
    /// statistics; never waits.
    pub fn deny(&self, d: Denial) {
        // Nothing a decision reads changes: the record only feeds the statistics.
        let mut cache = self.shared.cache();
        if let Err(e) = self.append(&mut cache, Entry::Deny(d), false) {
            tracing::warn!(error = %e, "a refusal was not counted in the statistics");
        }
    }

    /// Whether counted calls reach the store: the last fold succeeded, and the store's write
    /// lock is granted now.
    pub async fn probe(&self) -> Result<(), StoreError> {
        self.ask(FoldCall::Probe).await
    }

    /// Folds every call counted so far into the store, and re-reads tokens and accounts
    /// another connection changed; resolves once that is committed.
    pub async fn settle(&self) -> Result<(), StoreError> {
        self.ask(FoldCall::Wait).await
    }

    /// Sends the fold thread `call` and waits for its answer.
    async fn ask(
        &self,
        call: fn(oneshot::Sender<Result<(), String>>) -> FoldCall,
    ) -> Result<(), StoreError> {
        let stopped = || unavailable("the usage ledger has stopped");
        let (tx, rx) = oneshot::channel();
        self.folds.send(call(tx)).map_err(|_| stopped())?;
        rx.await
            .map_err(|_| stopped())?
            .map_err(StoreError::Unavailable)
    }
}

/// Takes the lock that keeps a second daemon off this SQLite file: its counters live in this
/// process's memory between folds.
fn lock_store(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push("-usage.lock");
    let lock_path = PathBuf::from(lock_path);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Other(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Other(format!(
            "another tokenwarden daemon is serving the SQLite store {} (it holds {}); \
             only one daemon may use a SQLite file — share a PostgreSQL store between daemons",
            path.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Other(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

fn split(entries: impl IntoIterator<Item = Entry>) -> (Vec<Consume>, Vec<Denial>) {
    let mut uses = Vec::new();
    let mut denials = Vec::new();
    for e in entries {
        match e {
            Entry::Use(c) => uses.push(c),
            Entry::Deny(d) => denials.push(d),
        }
    }
    (uses, denials)
}

/// Runs `f`; a panic aborts the process instead of leaving calls counted in memory with no
/// thread to fold them (and the one-daemon lock released). The next start replays the log.
pub(crate) fn abort_on_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => {
            tracing::error!(
                thread = what,
                "a usage thread panicked; stopping the daemon"
            );
            std::process::abort();
        }
    }
}

/// Lowers the calling thread's scheduling priority (Linux: `setpriority` on a thread id).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread, no memory passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Reads the active tokens the start did not, a step at a time in id order, into the cache
/// until it holds as many as it may keep: after a start, calls across many tokens find them
/// in memory within seconds instead of each reading its row first. A step read while rows
/// were dropped or a change committed is not kept (calls read those rows themselves).
fn preload(shared: &Shared, reader: &UsageReader) {
    let started = Instant::now();
    let mut after = String::new();
    let mut added = 0usize;
    loop {
        let (gen, drops, full) = {
            let cache = shared.cache();
            (
                cache.gen,
                cache.drops,
                cache.tokens.len() >= cache.max_tokens,
            )
        };
        if full || shared.store.is_closed() {
            break;
        }
        let mut tokens = match reader.tokens_after(&after, PRELOAD_STEP) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "reading tokens ahead of calls stopped");
                return;
            }
        };
        let Some(last) = tokens.last() else {
            break;
        };
        after = last.id.to_string();
        tokens.retain(|t| t.status == crate::domain::status::TokenStatus::Active);
        let mut accounts = HashMap::new();
        {
            let cache = shared.cache();
            for t in &tokens {
                if !cache.accounts.contains_key(&*t.account_id) {
                    accounts.insert(t.account_id.to_string(), None);
                }
            }
        }
        for (id, slot) in accounts.iter_mut() {
            match reader.account(id) {
                Ok(a) => *slot = a,
                Err(e) => {
                    tracing::warn!(error = %e, "reading tokens ahead of calls stopped");
                    return;
                }
            }
        }
        let mut cache = shared.cache();
        if cache.gen != gen || cache.drops != drops || shared.store.change_no() != gen {
            continue;
        }
        for t in tokens {
            if cache.tokens.len() >= cache.max_tokens {
                break;
            }
            let a = accounts.get_mut(&*t.account_id).and_then(Option::take);
            let before = cache.tokens.len();
            cache.insert(t, a);
            added += cache.tokens.len() - before;
        }
        metrics::gauge!(crate::metrics::CACHED_TOKENS).set(cache.tokens.len() as f64);
    }
    tracing::info!(
        tokens = added,
        ms = started.elapsed().as_millis() as u64,
        "read tokens ahead of calls"
    );
}

/// The fold thread: folds when due or asked, looks for other processes' changes every `POLL`,
/// and makes a last fold once every handle is gone.
fn run_folds(
    shared: &Shared,
    conn: &mut UsageConn,
    calls: &Receiver<FoldCall>,
    epoch: u64,
    fold_every: Duration,
) {
    let mut last = Instant::now();
    let mut failing: Option<String> = None;
    let mut retry_after = RETRY_FAILED_FOLD;
    loop {
        let mut waiters = Vec::new();
        let mut probes = Vec::new();
        let mut asked = false;
        let mut closed = false;
        let mut take = |call| match call {
            FoldCall::Wait(w) => waiters.push(w),
            FoldCall::Probe(w) => probes.push(w),
            FoldCall::Soon => asked = true,
        };
        match calls.recv_timeout(POLL) {
            Ok(call) => take(call),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }
        while let Ok(call) = calls.try_recv() {
            take(call);
        }
        match conn.change_no() {
            Ok(n) => shared.store.observe_change(n),
            Err(e) => tracing::warn!(error = %e, "cannot read the store's change number"),
        }
        let stale = shared.cache().gen != shared.store.change_no();
        // After a failure the next fold is tried soon, not a whole interval later: calls may be
        // waiting for the log space only a fold frees. Each failure in a row doubles the wait,
        // up to the interval.
        let every = match failing {
            Some(_) => retry_after.min(fold_every),
            None => fold_every,
        };
        if closed || asked || stale || !waiters.is_empty() || last.elapsed() >= every {
            let result = fold(shared, conn, epoch).map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, "folding counted calls into the store failed; retrying");
            }
            last = Instant::now();
            for w in waiters {
                let _ = w.send(result.clone());
            }
            let failed_before = failing.is_some();
            failing = result.clone().err();
            if failing.is_some() && failed_before {
                retry_after = (retry_after * 2).min(fold_every);
            } else {
                retry_after = RETRY_FAILED_FOLD;
            }
            if closed && result.is_err() {
                tracing::error!("stopping with counted calls not folded; the next start folds them from the usage log");
            }
        }
        if !probes.is_empty() {
            let answer = if failing.is_some() {
                // Folds fail: try again, so readiness comes back as soon as they work.
                let result = fold(shared, conn, epoch).map_err(|e| e.to_string());
                last = Instant::now();
                failing = result.clone().err();
                result
            } else if shared.store.is_closed() {
                Err("the store is closed".to_string())
            } else {
                conn.probe().map_err(|e| e.to_string())
            };
            for p in probes {
                let _ = p.send(answer.clone());
            }
        }
        if closed {
            return;
        }
    }
}

/// One fold: everything waiting, in one transaction; then the log's space is freed and, when
/// tokens or accounts changed elsewhere, the cache is emptied.
fn fold(shared: &Shared, conn: &mut UsageConn, epoch: u64) -> Result<(), StoreError> {
    if shared.store.is_closed() {
        return Err(unavailable("the store is closed"));
    }
    let started = Instant::now();
    let (entries, upto, gen) = {
        let mut cache = shared.cache();
        cache.fold_asked = false;
        (
            std::mem::take(&mut cache.pending),
            cache.last_seq,
            shared.store.change_no(),
        )
    };
    if entries.is_empty() {
        // Nothing to write; still make sure the store would take a fold (`/readyz`).
        conn.probe()?;
    } else {
        let n = entries.len();
        // The records are numbered without a gap up to `upto`.
        let mut folded = upto - n as Seq;
        let mut rest = entries;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_front(FOLD_CHUNK);
            metrics::histogram!(crate::metrics::BATCH_SIZE).record(chunk.len() as f64);
            let through = folded + chunk.len() as Seq;
            let (uses, denials) = split(chunk.entries().flatten());
            if let Err(e) = conn.fold(
                &uses,
                &denials,
                LogPosition {
                    epoch,
                    folded: through,
                },
            ) {
                // Back in front of what came meanwhile, for the next fold.
                let mut back = tail;
                back.prepend(chunk);
                shared.cache().pending.prepend(back);
                return Err(e);
            }
            shared.log.release(through);
            folded = through;
            rest = tail;
        }
        tracing::debug!(
            records = n,
            ms = started.elapsed().as_millis() as u64,
            "folded"
        );
    }
    let mut cache = shared.cache();
    if cache.gen != gen {
        // No call was decided since the change was seen (each one waits for this fold), so
        // what waits now is refusals only, which need no cached row.
        cache.clear_rows();
        cache.gen = gen;
    } else if cache.tokens.len() > cache.max_tokens {
        cache.trim();
    } else if cache.jwt_uses.len() > MAX_CACHED_JWTS {
        cache.trim_jwts();
    }
    metrics::gauge!(crate::metrics::CACHED_TOKENS).set(cache.tokens.len() as f64);
    Ok(())
}

// ----- records -----

const USE: u8 = 1;
const DENY: u8 = 2;

/// The most bytes `encode` makes for `c`'s record, whatever the decision (a use, or a refusal
/// of a token of `account_id`).
fn record_bound(c: &Consume, account_id: &str) -> usize {
    let jwt = c.jwt.as_ref().map_or(0, |j| j.jwt_id.len() + 2 + 8 + 12);
    // Kind, instant, two length-prefixed ids, cost, an IPv6 address, the outcome.
    1 + 12 + (2 + c.token_id.len()) + (2 + account_id.len()) + 8 + 17 + 1 + 1 + jwt
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_le_bytes());
    b.extend_from_slice(&s.as_bytes()[..s.len().min(u16::MAX as usize)]);
}

fn put_time(b: &mut Vec<u8>, t: DateTime<Utc>) {
    b.extend_from_slice(&t.timestamp().to_le_bytes());
    b.extend_from_slice(&t.timestamp_subsec_nanos().to_le_bytes());
}

/// A record's payload: what a fold needs to apply the call again (for a VALID call: token,
/// instant, cost, client address, JWT), never a secret.
fn encode(e: &Entry) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    match e {
        Entry::Use(c) => {
            b.push(USE);
            put_time(&mut b, c.now);
            put_str(&mut b, &c.token_id);
            b.extend_from_slice(&c.check.cost.to_le_bytes());
            match c.check.client_ip {
                None => b.push(0),
                Some(IpAddr::V4(ip)) => {
                    b.push(4);
                    b.extend_from_slice(&ip.octets());
                }
                Some(IpAddr::V6(ip)) => {
                    b.push(6);
                    b.extend_from_slice(&ip.octets());
                }
            }
            match &c.jwt {
                None => b.push(0),
                Some(j) => {
                    b.push(1);
                    put_str(&mut b, &j.jwt_id);
                    b.extend_from_slice(&j.limit.to_le_bytes());
                    put_time(&mut b, j.expires_at);
                }
            }
        }
        Entry::Deny(d) => {
            b.push(DENY);
            put_time(&mut b, d.at);
            put_str(&mut b, &d.token_id);
            put_str(&mut b, &d.account_id);
            let i = Outcome::ALL
                .iter()
                .position(|o| *o == d.outcome)
                .unwrap_or(0);
            b.push(i as u8);
        }
    }
    b
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn time(&mut self) -> Option<DateTime<Utc>> {
        let secs = self.i64()?;
        let nanos = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        DateTime::from_timestamp(secs, nanos)
    }
    fn str(&mut self) -> Option<String> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn decode(payload: &[u8]) -> Option<Entry> {
    let mut c = Cursor(payload);
    let entry = match c.u8()? {
        USE => {
            let now = c.time()?;
            let token_id = c.str()?;
            let cost = c.i64()?;
            let client_ip = match c.u8()? {
                0 => None,
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(c.take(4)?).ok()?)),
                6 => Some(IpAddr::from(<[u8; 16]>::try_from(c.take(16)?).ok()?)),
                _ => return None,
            };
            let jwt = match c.u8()? {
                0 => None,
                1 => Some(JwtUse {
                    jwt_id: c.str()?,
                    limit: c.i64()?,
                    expires_at: c.time()?,
                }),
                _ => return None,
            };
            Entry::Use(Consume {
                token_id,
                secret_hash: None,
                check: Check {
                    client_ip,
                    cost,
                    ..Check::default()
                },
                now,
                jwt,
                decided: true,
            })
        }
        DENY => Entry::Deny(Denial {
            at: c.time()?,
            token_id: c.str()?,
            account_id: c.str()?,
            outcome: *Outcome::ALL.get(c.u8()? as usize)?,
        }),
        _ => return None,
    };
    c.0.is_empty().then_some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counted call as the ledger records it.
    fn counted(token_id: &str, ip: &str, cost: i64, jwt: Option<JwtUse>) -> Consume {
        Consume {
            token_id: token_id.into(),
            secret_hash: None,
            check: Check {
                client_ip: Some(ip.parse().unwrap()),
                cost,
                ..Check::default()
            },
            now: DateTime::from_timestamp(1_790_000_000, 123_456_789).unwrap(),
            jwt,
            decided: true,
        }
    }

    /// The log is asked for room before a call is decided, with this bound: a record made
    /// after the decision must never be larger, whatever the decision.
    #[test]
    fn no_record_is_larger_than_its_bound() {
        for jwt in [None, Some("j".repeat(40))] {
            let token = "t".repeat(30);
            let c = counted(
                &token,
                "2001:db8::7",
                3,
                jwt.map(|jwt_id| JwtUse {
                    jwt_id,
                    limit: 10,
                    expires_at: Utc::now(),
                }),
            );
            let account = "a".repeat(25);
            let bound = record_bound(&c, &account);
            assert!(encode(&Entry::Use(c.clone())).len() <= bound);
            for outcome in Outcome::ALL {
                let d = Denial {
                    token_id: c.token_id.clone(),
                    account_id: account.clone(),
                    outcome,
                    at: c.now,
                };
                assert!(encode(&Entry::Deny(d)).len() <= bound);
            }
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let now = DateTime::from_timestamp(1_790_000_000, 123_456_789).unwrap();
        let uses = [
            counted(
                "tok_1",
                "2001:db8::7",
                3,
                Some(JwtUse {
                    jwt_id: "j-1".into(),
                    limit: 10,
                    expires_at: now + chrono::Duration::minutes(5),
                }),
            ),
            counted("tok_2", "192.0.2.1", 1, None),
        ];
        for u in uses {
            let Some(Entry::Use(back)) = decode(&encode(&Entry::Use(u.clone()))) else {
                panic!("not a use")
            };
            assert_eq!(back.token_id, u.token_id);
            assert_eq!(back.now, u.now);
            assert_eq!(back.check.cost, u.check.cost);
            assert_eq!(back.check.client_ip, u.check.client_ip);
            assert_eq!(
                back.jwt.map(|j| (j.jwt_id, j.limit, j.expires_at)),
                u.jwt.map(|j| (j.jwt_id, j.limit, j.expires_at))
            );
            assert!(back.decided);
        }
        for outcome in Outcome::ALL {
            let d = Denial {
                token_id: "tok_3".into(),
                account_id: "acc_1".into(),
                outcome,
                at: now,
            };
            let Some(Entry::Deny(back)) = decode(&encode(&Entry::Deny(d.clone()))) else {
                panic!("not a denial")
            };
            assert_eq!(
                (back.token_id, back.account_id, back.outcome, back.at),
                (d.token_id, d.account_id, d.outcome, d.at)
            );
        }
    }

    /// A fold takes the waiting records a chunk at a time; a chunk that fails goes back in
    /// front of the rest, in order.
    #[test]
    fn waiting_records_split_into_chunks_and_join_back_in_order() {
        let mut p = Pending::default();
        for i in 0..5u8 {
            p.push(&vec![i; usize::from(i) + 1]);
        }
        let (front, rest) = p.split_front(2);
        assert_eq!((front.len(), rest.len()), (2, 3));
        assert_eq!(front.bytes, [0, 1, 1]);
        assert_eq!(rest.ends, [3, 7, 12]);
        let (all, none) = Pending {
            bytes: rest.bytes.clone(),
            ends: rest.ends.clone(),
        }
        .split_front(9);
        assert_eq!((all.len(), none.len()), (3, 0));
        let mut back = rest;
        back.prepend(front);
        assert_eq!(back.len(), 5);
        assert_eq!(back.ends, [1, 3, 6, 10, 15]);
        assert_eq!(&back.bytes[10..], [4; 5]);
    }

    #[test]
    fn a_cut_or_unknown_record_is_refused() {
        let d = Entry::Deny(Denial {
            token_id: "tok_3".into(),
            account_id: "acc_1".into(),
            outcome: Outcome::Revoked,
            at: Utc::now(),
        });
        let b = encode(&d);
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_none(), "cut at {n}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode(&longer).is_none());
        let mut unknown = b;
        unknown[0] = 9;
        assert!(decode(&unknown).is_none());
    }
}
