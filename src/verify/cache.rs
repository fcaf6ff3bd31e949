//! A short-lived cache of token and account state for the verification pre-check, so a call
//! costs no store reads. It is never the last word: the usage writer re-checks secret,
//! revocation, expiry, account status, quota and uses against the store under a lock. An entry is
//! dropped as soon as this daemon changes any token, account or user (the store's generation
//! moves), and after `ttl` at the latest, which bounds how long a change made elsewhere (another
//! daemon, the CLI) to a token's IPs, scopes or role takes to be seen here.

use super::AccountState;
use crate::store::Token;
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

/// What a verification needs to know about a token.
#[derive(Debug)]
pub struct Snapshot {
    /// The token.
    pub token: Token,
    /// Its account's figures.
    pub account: AccountState,
}

struct Entry {
    snap: Arc<Snapshot>,
    generation: u64,
    loaded: Instant,
}

/// The cache; share it behind an `Arc`.
pub struct Cache {
    map: RwLock<HashMap<String, Entry>>,
    ttl: Duration,
    max_entries: usize,
}

impl Cache {
    /// A cache whose entries live at most `ttl` (zero disables it).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            ttl,
            max_entries,
        }
    }

    /// The entry for `id`, if it was loaded at `generation` and is younger than the TTL.
    pub fn get(&self, id: &str, generation: u64) -> Option<Arc<Snapshot>> {
        if self.ttl.is_zero() {
            return None;
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|e| e.generation == generation && e.loaded.elapsed() < self.ttl)
            .map(|e| e.snap.clone())
    }

    /// Stores `snap`, read from the store when its generation was `generation`.
    pub fn put(&self, id: &str, snap: Arc<Snapshot>, generation: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.max_entries {
            // Drop what is stale; if everything is fresh, start over rather than grow.
            map.retain(|_, e| e.generation == generation && e.loaded.elapsed() < self.ttl);
            if map.len() >= self.max_entries {
                map.clear();
            }
        }
        map.insert(
            id.to_string(),
            Entry {
                snap,
                generation,
                loaded: Instant::now(),
            },
        );
    }
}
