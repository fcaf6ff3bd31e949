//! Rate limits: at most `limit` calls in each window of `window_seconds`, per token and per
//! account. Windows are fixed and aligned to the Unix epoch (a 60-second window runs from each
//! UTC minute's first second), so every daemon and the answer's `X-RateLimit-Reset` agree on
//! where a window ends. A call counts in a window once its credential is good and its token may
//! make it (status, account, user, IP, scope); then the limit is checked before any use is spent.
//!
//! The counts are memory: each daemon keeps its own, and a restart forgets them. Daemons sharing
//! a store therefore admit together at most `limit` per window each.

use super::limits::Whole;
use super::ParseError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The longest window: a day.
pub const MAX_WINDOW_SECONDS: u32 = 86_400;
/// The highest limit a window may have.
pub const MAX_LIMIT: u32 = 1_000_000_000;

/// At most `limit` calls per `window_seconds`.
/// Its schema is `RateLimitInput`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// Calls allowed in one window.
    pub limit: u32,
    /// The window's length in seconds (windows start at multiples of it since
    /// 1970-01-01T00:00:00Z).
    pub window_seconds: u32,
}

impl RateLimit {
    /// A limit from the values a caller gave, naming `field` when one is out of range.
    pub fn new(limit: i64, window_seconds: i64, field: &str) -> Result<RateLimit, ParseError> {
        if !(1..=i64::from(MAX_LIMIT)).contains(&limit) {
            return Err(ParseError::new(
                format!("{field}.limit"),
                format!("must be 1 to {MAX_LIMIT}"),
            ));
        }
        if !(1..=i64::from(MAX_WINDOW_SECONDS)).contains(&window_seconds) {
            return Err(ParseError::new(
                format!("{field}.window_seconds"),
                format!("must be 1 to {MAX_WINDOW_SECONDS}"),
            ));
        }
        Ok(RateLimit {
            limit: limit as u32,
            window_seconds: window_seconds as u32,
        })
    }

    /// The stored form, `limit/window_seconds`.
    pub fn to_column(self) -> String {
        format!("{}/{}", self.limit, self.window_seconds)
    }

    /// Reads the stored form; `None` for a value not of that form (a corrupt column).
    pub fn from_column(s: &str) -> Option<RateLimit> {
        let (l, w) = s.split_once('/')?;
        RateLimit::new(l.parse().ok()?, w.parse().ok()?, "rate_limit").ok()
    }

    /// The start of the window holding `now`, in Unix seconds.
    fn window_start(self, now: DateTime<Utc>) -> i64 {
        let w = i64::from(self.window_seconds);
        now.timestamp().div_euclid(w) * w
    }
}

/// A `rate_limit` as a request gives it; `check` bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RateLimit)]
pub struct RateLimitInput {
    /// Calls allowed in one window, 1 to 1,000,000,000.
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000)]
    pub limit: Whole,
    /// The window's length in seconds, 1 to 86,400.
    #[schema(value_type = i64, minimum = 1, maximum = 86_400)]
    pub window_seconds: Whole,
}

impl RateLimitInput {
    /// An input of these values (the CLI's).
    pub fn of(limit: i64, window_seconds: i64) -> Self {
        RateLimitInput {
            limit: Whole(limit),
            window_seconds: Whole(window_seconds),
        }
    }

    /// The limit, naming `field` (`rate_limit`) when a value is out of range.
    pub fn check(self, field: &str) -> Result<RateLimit, ParseError> {
        RateLimit::new(self.limit.0, self.window_seconds.0, field)
    }
}

/// Calls counted in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// The window's first second (Unix time).
    pub start: i64,
    /// Its end: the first second after it.
    pub end: i64,
    /// Calls counted in it.
    pub count: u32,
}

impl Window {
    /// Calls counted in the window of `limit` holding `now` (none when this one is another).
    fn used(&self, limit: RateLimit, now: DateTime<Utc>) -> u32 {
        if self.start == limit.window_start(now)
            && self.end - self.start == i64::from(limit.window_seconds)
        {
            self.count
        } else {
            0
        }
    }

    /// Counts one call in the window of `limit` holding `now`.
    fn take(&mut self, limit: RateLimit, now: DateTime<Utc>) {
        let used = self.used(limit, now);
        let start = limit.window_start(now);
        *self = Window {
            start,
            end: start + i64::from(limit.window_seconds),
            count: used + 1,
        };
    }
}

/// Where a call stands against the tightest limit that applied to it: the answer's
/// `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// The limit.
    pub limit: u32,
    /// Calls left in the window after this one.
    pub remaining: u32,
    /// When the window ends (Unix seconds): the next call may come then.
    pub reset_at: i64,
}

/// The windows a daemon counts in, by token id and by account id.
#[derive(Debug, Clone, Default)]
pub struct Windows {
    /// By token id.
    pub tokens: HashMap<String, Window>,
    /// By account id.
    pub accounts: HashMap<String, Window>,
    /// Past this many windows, those that ended are dropped (then it doubles what is left).
    prune_at: usize,
}

/// Windows held before any is dropped.
const PRUNE_FROM: usize = 4096;

impl Windows {
    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && self.accounts.is_empty()
    }

    /// Takes `other`'s windows over these (a batch's windows once it is written).
    pub fn absorb(&mut self, other: Windows, now: DateTime<Utc>) {
        self.tokens.extend(other.tokens);
        self.accounts.extend(other.accounts);
        self.keep_small(now);
    }

    /// A copy of the windows of these tokens and accounts, for one batch to decide on.
    pub fn of<'a>(
        &self,
        tokens: impl IntoIterator<Item = &'a str>,
        accounts: impl IntoIterator<Item = &'a str>,
    ) -> Windows {
        let mut w = Windows::default();
        for t in tokens {
            if let Some(x) = self.tokens.get(t) {
                w.tokens.insert(t.to_string(), *x);
            }
        }
        for a in accounts {
            if let Some(x) = self.accounts.get(a) {
                w.accounts.insert(a.to_string(), *x);
            }
        }
        w
    }

    /// Drops the windows that ended by `now` (they count nothing any more).
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let t = now.timestamp();
        self.tokens.retain(|_, w| w.end > t);
        self.accounts.retain(|_, w| w.end > t);
    }

    /// Prunes once the windows outgrow the last mark, so they stay about the windows of the
    /// tokens used lately at a cost spread over the calls.
    fn keep_small(&mut self, now: DateTime<Utc>) {
        let held = self.tokens.len() + self.accounts.len();
        if held > self.prune_at.max(PRUNE_FROM) {
            self.prune(now);
            self.prune_at = 2 * (self.tokens.len() + self.accounts.len());
        }
    }

    /// Checks the token's and the account's limits for one call at `now`, and counts it in both
    /// when each has room. `Err` when one has none: nothing is counted, and the standing says
    /// when that window ends.
    pub fn admit(
        &mut self,
        token: (&str, Option<RateLimit>),
        account: (&str, Option<RateLimit>),
        now: DateTime<Utc>,
    ) -> Result<Option<Standing>, Standing> {
        let (tid, tl) = token;
        let (aid, al) = account;
        if tl.is_none() && al.is_none() {
            return Ok(None);
        }
        let tw = tl.map(|l| (l, self.tokens.get(tid).copied().unwrap_or_default()));
        let aw = al.map(|l| (l, self.accounts.get(aid).copied().unwrap_or_default()));
        let standing = |(l, w): (RateLimit, Window), after: u32| Standing {
            limit: l.limit,
            remaining: l.limit.saturating_sub(w.used(l, now) + after),
            reset_at: l.window_start(now) + i64::from(l.window_seconds),
        };
        // Refused: the full window that ends last says when a call can pass both.
        let full = [tw, aw]
            .into_iter()
            .flatten()
            .filter(|(l, w)| w.used(*l, now) >= l.limit)
            .map(|lw| standing(lw, 0))
            .max_by_key(|s| s.reset_at);
        if let Some(s) = full {
            return Err(s);
        }
        let mut tightest: Option<Standing> = None;
        if let Some((l, mut w)) = tw {
            w.take(l, now);
            self.tokens.insert(tid.to_string(), w);
            tightest = Some(standing((l, w), 0));
        }
        if let Some((l, mut w)) = aw {
            w.take(l, now);
            self.accounts.insert(aid.to_string(), w);
            let s = standing((l, w), 0);
            // The fewer calls left; at a tie, the window that ends last.
            if tightest.is_none_or(|t| (s.remaining, -s.reset_at) < (t.remaining, -t.reset_at)) {
                tightest = Some(s);
            }
        }
        self.keep_small(now);
        Ok(tightest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 0).unwrap() + chrono::Duration::seconds(s.into())
    }

    fn ten_a_minute() -> Option<RateLimit> {
        Some(RateLimit::new(10, 60, "rate_limit").unwrap())
    }

    #[test]
    fn a_window_admits_its_limit_then_refuses_until_it_ends() {
        let mut w = Windows::default();
        for i in 0..10 {
            let s = w
                .admit(("tok", ten_a_minute()), ("acct", None), at(5))
                .unwrap()
                .unwrap();
            assert_eq!(s.remaining, 9 - i);
            assert_eq!(s.reset_at, at(60).timestamp());
        }
        let refused = w
            .admit(("tok", ten_a_minute()), ("acct", None), at(59))
            .unwrap_err();
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.reset_at, at(60).timestamp());
        // The next minute is a new window.
        let s = w
            .admit(("tok", ten_a_minute()), ("acct", None), at(60))
            .unwrap()
            .unwrap();
        assert_eq!(s.remaining, 9);
        assert_eq!(s.reset_at, at(120).timestamp());
    }

    #[test]
    fn a_refusal_by_one_limit_counts_in_neither() {
        let mut w = Windows::default();
        let two = Some(RateLimit::new(2, 60, "rate_limit").unwrap());
        w.admit(("a", ten_a_minute()), ("acct", two), at(0))
            .unwrap();
        w.admit(("b", ten_a_minute()), ("acct", two), at(1))
            .unwrap();
        // The account's window is full: token a is refused and its own window keeps 1.
        assert!(w
            .admit(("a", ten_a_minute()), ("acct", two), at(2))
            .is_err());
        assert_eq!(w.tokens["a"].count, 1);
        // The tightest standing is reported: the account's.
        let mut w = Windows::default();
        let s = w
            .admit(("a", ten_a_minute()), ("acct", two), at(0))
            .unwrap()
            .unwrap();
        assert_eq!((s.limit, s.remaining), (2, 1));
    }

    #[test]
    fn a_refusal_says_when_every_full_window_has_ended() {
        // The token's minute and the account's hour are both full: a retry at the end of the
        // minute would be refused by the hour, so the hour's end is reported.
        let mut w = Windows::default();
        let one_a_minute = Some(RateLimit::new(1, 60, "rate_limit").unwrap());
        let one_an_hour = Some(RateLimit::new(1, 3600, "rate_limit").unwrap());
        w.admit(("t", one_a_minute), ("acct", one_an_hour), at(10))
            .unwrap();
        let s = w
            .admit(("t", one_a_minute), ("acct", one_an_hour), at(20))
            .unwrap_err();
        assert_eq!((s.limit, s.remaining), (1, 0));
        assert_eq!(s.reset_at, at(3600).timestamp());
        // At a tie in calls left, an admitted call reports the window that ends last.
        let mut w = Windows::default();
        let two_a_minute = Some(RateLimit::new(2, 60, "rate_limit").unwrap());
        let two_an_hour = Some(RateLimit::new(2, 3600, "rate_limit").unwrap());
        let s = w
            .admit(("t", two_a_minute), ("acct", two_an_hour), at(10))
            .unwrap()
            .unwrap();
        assert_eq!((s.remaining, s.reset_at), (1, at(3600).timestamp()));
    }

    #[test]
    fn no_limit_keeps_no_window_and_a_changed_window_length_starts_afresh() {
        let mut w = Windows::default();
        assert_eq!(w.admit(("t", None), ("a", None), at(0)), Ok(None));
        assert!(w.is_empty());
        for _ in 0..10 {
            w.admit(("t", ten_a_minute()), ("a", None), at(0)).unwrap();
        }
        let per_two = Some(RateLimit::new(10, 120, "rate_limit").unwrap());
        assert!(w.admit(("t", per_two), ("a", None), at(1)).is_ok());
        w.prune(at(200));
        assert!(w.is_empty());
    }

    #[test]
    fn limits_are_bounded_with_their_field_named() {
        let input = RateLimitInput::of;
        assert_eq!(
            input(10, 60).check("rate_limit"),
            RateLimit::new(10, 60, "x")
        );
        for (i, field) in [
            (input(0, 60), "rate_limit.limit"),
            (input(1_000_000_001, 60), "rate_limit.limit"),
            (input(1, 0), "rate_limit.window_seconds"),
            (input(1, 86_401), "rate_limit.window_seconds"),
        ] {
            assert_eq!(i.check("rate_limit").unwrap_err().field, field, "{i:?}");
        }
        assert_eq!(
            RateLimit::from_column("10/60"),
            RateLimit::new(10, 60, "x").ok()
        );
        assert_eq!(RateLimit::from_column("0/60"), None);
        assert_eq!(RateLimit::from_column("ten"), None);
    }
}
