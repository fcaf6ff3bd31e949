//! Plain values of the token domain, parsed once on arrival, and the pure rules over them: the
//! verdict of one call (`verdict`), the plan of a batch of calls (`plan`), the table of codes
//! (`code`). Nothing here knows HTTP, SQL, files or the clock: `now` is always an argument.

pub mod audit;
pub mod code;
pub mod credential;
pub mod email;
pub mod ids;
pub mod limits;
pub mod model;
pub mod net;
pub mod period;
pub mod plan;
pub mod rate;
pub mod retry;
pub mod role;
pub mod schema;
pub mod scope;
pub mod state;
pub mod status;
pub mod verdict;
pub mod warnings;

/// A value that failed to parse, naming the input field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ParseError {
    /// The input field at fault, as the caller spelled it (`usage_limit`, `allowed_ips[2]`).
    pub field: String,
    /// What is wrong with it, for people.
    pub reason: String,
}

impl ParseError {
    /// An error for `field` with `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
