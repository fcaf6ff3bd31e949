//! The PostgreSQL batch writer's copies of token and account rows, each with the version it was
//! read at. A batch is decided on the copies in memory and written in one statement that checks
//! those versions (`Store::write_unlocked`): one round trip and one commit per batch, where
//! deciding under row locks takes four (`Store::consume_batch`).
//!
//! A copy can be stale only when something else wrote its row (another daemon sharing the
//! database, an admin change, a job; a batch this writer ran under locks drops the copies of
//! what it wrote): then the versions differ, the statement writes nothing, and the batch runs again
//! under locks, against the rows as they are. A decision made on a stale copy is therefore never
//! answered. After such a conflict the writer keeps to the locked way for a while, since daemons
//! that count calls of one account at once would fail most checks.

use super::table::{Keyed, Tokens};
use crate::domain::model::Account;
use crate::domain::plan::{
    batch_token_ids, plan, secret_matches, BatchState, Consume, Decided, Denial, Plan,
};
use crate::domain::rate::Windows;
use crate::domain::state::TokenState;
use crate::store::{usage::Versioned, Store, StoreError};
use crate::verify::Outcome;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Active tokens read at start, before serving (the most recently used first); the rest, up to
/// `max_tokens`, are read in the background once serving has begun (`meter::warm`).
const PRELOADED: usize = 10_000;
/// How long batches are decided under locks after a write found a row changed.
const LOCKED_AFTER_CONFLICT: Duration = Duration::from_secs(1);

/// One result per call, in order.
pub type Results = Vec<Result<Decided, StoreError>>;

/// A token's copy and the version of the row it was read at (`xmin`).
struct Copied {
    state: Arc<TokenState>,
    version: u32,
}

impl Keyed for Copied {
    fn id(&self) -> &str {
        &self.state.id
    }
}

/// The writer's copies.
pub struct Copies {
    tokens: Tokens<Copied>,
    /// Keyed by the id the copied tokens share.
    accounts: HashMap<Arc<str>, (Account, String)>,
    locked_until: Option<Instant>,
    /// Copies kept (`database.token_cache_mib`): past it some are dropped, and read again as
    /// calls need them.
    max_tokens: usize,
    /// This daemon's rate windows (memory only): the one writer decides every call, so they
    /// are exact for it.
    rates: Windows,
}

/// A row version as PostgreSQL writes it (`xmin::text`); 0, which no row has, for one that
/// does not parse, so its write finds the row changed and runs under locks.
fn version(v: &str) -> u32 {
    v.parse().unwrap_or(0)
}

impl Copies {
    /// No copies; at most `max_tokens` will be kept.
    pub fn new(max_tokens: usize) -> Copies {
        Copies {
            tokens: Tokens::default(),
            accounts: HashMap::new(),
            locked_until: None,
            max_tokens,
            rates: Windows::default(),
        }
    }

    /// Copies of the most recently used active tokens and their accounts (at most
    /// `max_tokens`), and whether active tokens may be left to read ahead (the read was cut at
    /// its limit, or failed). A read that fails leaves them empty: calls then read the rows they
    /// need.
    pub async fn warm(store: &Store, max_tokens: usize) -> (Copies, bool) {
        let mut copies = Copies::new(max_tokens);
        let limit = PRELOADED.min(max_tokens);
        let more = match store.read_active_versioned(limit).await {
            Ok(rows) => {
                let cut = rows.len() == limit;
                rows.into_iter().for_each(|v| copies.put(v));
                cut
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read tokens ahead of the first calls");
                true
            }
        };
        let more = more && copies.room() > 0;
        (copies, more)
    }

    /// Keeps `v`, in place of any copy of its rows.
    fn put(&mut self, v: Versioned) {
        self.keep_account(v.account, v.account_version);
        self.set(v.token, version(&v.token_version));
    }

    /// Keeps the copy of an account at `version`, in place of any other.
    fn keep_account(&mut self, a: Account, version: String) {
        match self.accounts.get_mut(a.id.as_str()) {
            Some(held) => *held = (a, version),
            None => {
                self.accounts.insert(a.id.as_str().into(), (a, version));
            }
        }
    }

    /// Keeps `v` unless its token has a copy already or the copies are full (a background
    /// read after a start). Whether there is room for more.
    pub fn put_absent(&mut self, v: Versioned) -> bool {
        if self.tokens.len() >= self.max_tokens {
            return false;
        }
        if self.tokens.get(&v.token.id).is_none() {
            if !self.accounts.contains_key(v.account.id.as_str()) {
                self.keep_account(v.account, v.account_version);
            }
            self.set(v.token, version(&v.token_version));
        }
        true
    }

    /// Copies held.
    pub fn held(&self) -> usize {
        self.tokens.len()
    }

    /// Active tokens past those `warm` read: how many more a background read may bring.
    pub fn room(&self) -> usize {
        self.max_tokens.saturating_sub(self.tokens.len())
    }

    /// Keeps `state` (sharing its account's id with the account's copy) at `version`.
    fn set(&mut self, mut state: TokenState, version: u32) {
        if let Some((id, _)) = self.accounts.get_key_value(&*state.account_id) {
            state.account_id = id.clone();
        }
        match self.tokens.get_mut(&state.id) {
            Some(c) => {
                *c = Copied {
                    state: Arc::new(state),
                    version,
                }
            }
            None => {
                self.tokens.insert_new(Copied {
                    state: Arc::new(state),
                    version,
                });
            }
        }
    }

    /// Keeps the copies within `max_tokens`: drops a quarter (in no order of use), and the
    /// accounts no copy left needs.
    fn trim(&mut self) {
        if self.tokens.len() <= self.max_tokens {
            return;
        }
        self.tokens.shrink_to(self.max_tokens / 4 * 3, |_| false);
        let keep: HashSet<&str> = self.tokens.values().map(|c| &*c.state.account_id).collect();
        self.accounts.retain(|id, _| keep.contains(&**id));
    }

    /// Drops the copies of `ids` and of their accounts.
    fn evict(&mut self, ids: &[String]) {
        for id in ids {
            if let Some(c) = self.tokens.remove(id) {
                self.accounts.remove(&*c.state.account_id);
            }
        }
    }

    /// Decides `reqs` in order, consumes the valid ones, and counts them and `denials` in the
    /// daily statistics, durably (with `flush`) before it returns. A JWT call is decided under
    /// locks, as its own use count is not copied.
    pub async fn consume(
        &mut self,
        store: &Store,
        reqs: &[Consume],
        denials: &[Denial],
        flush: bool,
    ) -> Results {
        self.trim();
        metrics::gauge!(crate::metrics::CACHED_TOKENS).set(self.tokens.len() as f64);
        let locked = self.locked_until.is_some_and(|t| Instant::now() < t);
        if !locked && reqs.iter().all(|r| r.jwt.is_none()) {
            return every(reqs.len(), self.unlocked(store, reqs, denials, flush).await);
        }
        let (jwts, plain): (Vec<usize>, Vec<usize>) =
            (0..reqs.len()).partition(|&i| locked || reqs[i].jwt.is_some());
        if plain.is_empty() {
            return every(reqs.len(), self.locked(store, reqs, denials, flush).await);
        }
        let pick = |idx: &[usize]| idx.iter().map(|&i| reqs[i].clone()).collect::<Vec<_>>();
        let (jwt_reqs, plain_reqs) = (pick(&jwts), pick(&plain));
        let first = every(jwts.len(), self.locked(store, &jwt_reqs, &[], flush).await);
        let second = every(
            plain.len(),
            self.unlocked(store, &plain_reqs, denials, flush).await,
        );
        let mut out: Vec<Option<Result<Decided, StoreError>>> = Vec::new();
        out.resize_with(reqs.len(), || None);
        for (i, r) in jwts
            .into_iter()
            .zip(first)
            .chain(plain.into_iter().zip(second))
        {
            out[i] = Some(r);
        }
        out.into_iter().flatten().collect()
    }

    /// The batch under row locks; the copies of the rows it wrote are dropped: its tokens and
    /// their accounts, also those of tokens not copied.
    async fn locked(
        &mut self,
        store: &Store,
        reqs: &[Consume],
        denials: &[Denial],
        flush: bool,
    ) -> Result<Vec<Decided>, StoreError> {
        let ids = batch_token_ids(reqs, denials);
        self.evict(&ids);
        // The account windows are few; the batch's accounts are known only once it reads them.
        let accounts: Vec<String> = self.rates.accounts.keys().cloned().collect();
        let rates = self.rates.of(
            ids.iter().map(String::as_str),
            accounts.iter().map(String::as_str),
        );
        let (decided, rates) = store.consume_batch(reqs, denials, flush, &rates).await?;
        self.rates.absorb(rates, latest(reqs));
        let tokens = decided.iter().filter_map(|d| d.token.as_deref());
        for account in tokens
            .map(|t| &*t.account_id)
            .chain(denials.iter().map(|d| d.account_id.as_str()))
        {
            self.accounts.remove(account);
        }
        Ok(decided)
    }

    /// The batch decided on the copies, written if its rows are still as copied; else under
    /// locks.
    async fn unlocked(
        &mut self,
        store: &Store,
        reqs: &[Consume],
        denials: &[Denial],
        flush: bool,
    ) -> Result<Vec<Decided>, StoreError> {
        let ids = batch_token_ids(reqs, denials);
        // Rows to read: not copied, or presented with a secret the copy does not hold (the
        // token may have been regenerated since it was copied).
        let mut missing: BTreeSet<&String> = ids
            .iter()
            .filter(|id| match self.tokens.get(id) {
                Some(c) => !self.accounts.contains_key(&*c.state.account_id),
                None => true,
            })
            .collect();
        for r in reqs {
            if let Some(c) = self.tokens.get(&r.token_id) {
                if !secret_matches(&c.state, r) {
                    missing.insert(&r.token_id);
                }
            }
        }
        if !missing.is_empty() {
            let missing: Vec<String> = missing.into_iter().cloned().collect();
            let read = store.read_versioned(&missing).await?;
            // An id not read has no row any more.
            for id in &missing {
                self.tokens.remove(id);
            }
            read.into_iter().for_each(|v| self.put(v));
        }
        let mut state = BatchState::default();
        for id in &ids {
            let Some(c) = self.tokens.get(id) else {
                continue;
            };
            if let Some((a, _)) = self.accounts.get(&*c.state.account_id) {
                state
                    .accounts
                    .entry(a.id.clone())
                    .or_insert_with(|| a.clone());
                state.tokens.insert(id.clone(), TokenState::clone(&c.state));
            }
        }
        let decided_on: Vec<String> = state.accounts.keys().cloned().collect();
        state.rates = self.rates.of(
            state.tokens.keys().map(String::as_str),
            decided_on.iter().map(String::as_str),
        );
        let mut plan = plan(reqs, denials, state);
        // Tokens refused for their rate limit write nothing; their copies must still be the
        // rows as they are (a limit lifted meanwhile), so the write checks their versions.
        let mut limited: BTreeSet<&String> = reqs
            .iter()
            .zip(&plan.decided)
            .filter(|(_, d)| d.outcome == Outcome::RateLimited)
            .map(|(r, _)| &r.token_id)
            .collect();
        if !limited.is_empty() {
            for t in &plan.tokens {
                limited.remove(&t.id.to_string());
            }
        }
        let limited: Vec<(String, String)> = limited
            .into_iter()
            .map(|id| {
                let v = self.tokens.get(id).map_or(0, |c| c.version);
                (id.clone(), v.to_string())
            })
            .collect();
        if plan.tokens.is_empty() && plan.accounts.is_empty() && limited.is_empty() {
            // Nothing was counted (every call named an unknown token or a wrong secret).
            return Ok(plan.decided);
        }
        let rates = std::mem::take(&mut plan.rates);
        let token_versions = plan
            .tokens
            .iter()
            .map(|t| self.tokens.get(&t.id).map_or(0, |c| c.version).to_string())
            .collect();
        let account_versions = plan
            .accounts
            .iter()
            .map(|a| {
                self.accounts
                    .get(a.id.as_str())
                    .map(|c| c.1.clone())
                    .unwrap_or_default()
            })
            .collect();
        let unwritten_accounts = decided_on
            .into_iter()
            .filter(|id| !plan.accounts.iter().any(|a| &a.id == id))
            .filter_map(|id| self.accounts.get(id.as_str()).map(|c| (id, c.1.clone())))
            .collect();
        match store
            .write_unlocked(
                &plan,
                token_versions,
                account_versions,
                unwritten_accounts,
                limited,
                flush,
            )
            .await
        {
            Ok(Some(v)) => {
                let Plan {
                    decided,
                    tokens,
                    accounts,
                    ..
                } = plan;
                for a in accounts {
                    self.keep_account(a, v.clone());
                }
                let written = version(&v);
                for t in tokens {
                    self.set(t, written);
                }
                self.rates.absorb(rates, latest(reqs));
                Ok(decided)
            }
            Ok(None) => {
                tracing::debug!(
                    calls = reqs.len(),
                    "rows changed since they were copied; the batch runs under locks"
                );
                self.locked_until = Some(Instant::now() + LOCKED_AFTER_CONFLICT);
                self.locked(store, reqs, denials, flush).await
            }
            Err(e) => {
                self.evict(&ids);
                Err(e)
            }
        }
    }
}

/// The latest instant of a batch's calls: what "now" is for dropping ended rate windows.
fn latest(reqs: &[Consume]) -> chrono::DateTime<chrono::Utc> {
    reqs.iter()
        .map(|r| r.now)
        .max()
        .unwrap_or(chrono::DateTime::UNIX_EPOCH)
}

/// One result per call: the decisions, or the error for each.
fn every(n: usize, r: Result<Vec<Decided>, StoreError>) -> Results {
    match r {
        Ok(d) => d.into_iter().map(Ok).collect(),
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(error = %msg, calls = n, "usage batch failed");
            (0..n)
                .map(|_| Err(StoreError::Unavailable(msg.clone())))
                .collect()
        }
    }
}
