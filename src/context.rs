//! What the daemon's operations share: the checked configuration, the store, the clock, the
//! master key and the hook that folds counted calls into the store. Built once by `app` and
//! handed to management, jobs and the API.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::store::Store;
use std::sync::Arc;

/// What the operations share: configuration, store and clock.
#[derive(Clone)]
pub struct Ctx {
    /// Checked configuration.
    pub config: Arc<Config>,
    /// The store.
    pub store: Store,
    /// Source of "now".
    pub clock: SharedClock,
    /// Seals the secrets of JWT-signing tokens.
    pub master_key: Arc<crate::seal::MasterKey>,
    /// Folds counted calls into the store before a read or change that depends on them.
    pub usage: crate::verify::meter::Settle,
}
