//! Verification: one call, from what was presented to a counted answer. Counting has one owner,
//! this module; the verdict and the batch plan are pure domain code, the statements are the
//! store's.
//!
//! The path of a call:
//!
//! 1. **Parse the credential** (`service::verify`): a token (`<prefix>_…`: its id and the hash of
//!    its secret), or a JWT (`jwt`: its signer read from the store, the signer's sealed secret
//!    opened, signature and claims checked). Anything else is MALFORMED or BAD_JWT at once.
//! 2. **Find the rows, decide, count durably** (`meter`), in one step per backend:
//!    - SQLite (`ledger`): the token and account rows are cached in memory under the store's
//!      single-writer lock; each call is decided on them in place
//!      (`domain::plan::consume_one`, which calls `domain::verdict::decide`) and, when valid,
//!      appended to the `usage_log` and answered once that is flushed. A background fold writes
//!      the counts into the database (`Store`'s SQLite usage connection).
//!    - PostgreSQL (`copies`): a writer task takes every waiting call as one batch, plans it on
//!      row copies with their versions (`domain::plan::plan`) and writes the plan in one checked
//!      statement (`Store::write_unlocked`); if a row changed meanwhile, the batch is planned
//!      again under row locks (`Store::consume_batch`). The answer waits for the commit.
//! 3. **Answer** with the outcome and the token as it stands after the call. A refusal of a known
//!    token spends nothing and is counted in its day's statistics.

pub mod copies;
pub mod jwt;
pub mod ledger;
pub mod meter;
pub mod service;
pub mod table;
pub mod usage_log;

pub use crate::domain::verdict::{decide, AccountState, Check, Outcome, MAX_COST};
