//! The plan of a batch of calls: each call decided in order against the state its earlier calls
//! leave, and everything the batch must write (consumed uses and quota, rolled months, the day's
//! statistics, JWT counts) collected in memory. Pure: no I/O, no clock reads; the SQLite ledger
//! and the PostgreSQL writers share it, and each only reads state and writes the plan.

use super::credential::hashes_match;
use super::model::{Account, DayCounts, STAT_COUNTERS};
use super::period::{day_key, month_key, Month};
use super::rate::{Standing, Windows};
use super::state::TokenState;
use super::status::TokenStatus;
use super::verdict::{decide, AccountState, Check, Outcome};
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::{HashMap, HashSet};

/// One call to decide and, when valid, consume.
#[derive(Debug, Clone)]
pub struct Consume {
    /// The token's public id.
    pub token_id: String,
    /// SHA-256 of the presented token, checked in the batch (for a JWT, the signer's hash
    /// when its signature was checked, so a regeneration since then retires the JWT); `None`
    /// skips the check.
    pub secret_hash: Option<Vec<u8>>,
    /// The call, client IP and cost.
    pub check: Check,
    /// The instant of the check.
    pub now: DateTime<Utc>,
    /// When the call came with a JWT: its own use count to enforce.
    pub jwt: Option<JwtUse>,
    /// Decided VALID already (a usage-log record being folded into the store): consumed as it
    /// was then, whatever the token's state is now, with no check.
    pub decided: bool,
}

/// A JWT's own use limit.
#[derive(Debug, Clone)]
pub struct JwtUse {
    /// The JWT's `Id` claim.
    pub jwt_id: String,
    /// Its `RequestCount`.
    pub limit: i64,
    /// Its `ValidUntil`: the record is kept until then.
    pub expires_at: DateTime<Utc>,
}

/// The decision on one call, made in its batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// What was decided; when `Valid`, the cost was consumed.
    pub outcome: Outcome,
    /// The token as it stands after this call (`None` when it is unknown or the secret did not
    /// match); shared, as the SQLite ledger answers with its cached row.
    pub token: Option<std::sync::Arc<TokenState>>,
    /// Where the call stands against the tightest rate limit that applied to it, if any.
    pub rate: Option<Standing>,
}

/// A refused verification of a known token, counted in the daily statistics.
#[derive(Debug, Clone)]
pub struct Denial {
    /// The token.
    pub token_id: String,
    /// Its account.
    pub account_id: String,
    /// Why.
    pub outcome: Outcome,
    /// When.
    pub at: DateTime<Utc>,
}

/// One row of the daily statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatRow {
    /// UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Token id.
    pub token_id: String,
    /// Its account.
    pub account_id: String,
    /// Successful calls.
    pub valid: i64,
    /// Uses they consumed.
    pub cost: i64,
    /// Denials: revoked.
    pub revoked: i64,
    /// Denials: expired.
    pub expired: i64,
    /// Denials: account inactive.
    pub account_inactive: i64,
    /// Denials: IP not allowed.
    pub ip_not_allowed: i64,
    /// Denials: scope denied.
    pub scope_denied: i64,
    /// Denials: account quota exceeded.
    pub account_quota_exceeded: i64,
    /// Denials: usage exceeded.
    pub usage_exceeded: i64,
    /// Denials: bad JWT.
    pub bad_jwt: i64,
    /// Denials: the token's user inactive.
    pub user_inactive: i64,
}

/// The statistics columns, in CSV order after day, token and account (a new one goes last, so
/// readers of the CSV by position keep working).
pub const STAT_COLUMNS: [&str; STAT_COUNTERS] = [
    "valid",
    "cost",
    "revoked",
    "expired",
    "account_inactive",
    "ip_not_allowed",
    "scope_denied",
    "account_quota_exceeded",
    "usage_exceeded",
    "bad_jwt",
    "user_inactive",
];

impl StatRow {
    /// Adds `n` to the counter named `column`.
    pub fn add(&mut self, column: &str, n: i64) {
        let slot = match column {
            "valid" => &mut self.valid,
            "cost" => &mut self.cost,
            "revoked" => &mut self.revoked,
            "expired" => &mut self.expired,
            "account_inactive" => &mut self.account_inactive,
            "ip_not_allowed" => &mut self.ip_not_allowed,
            "scope_denied" => &mut self.scope_denied,
            "account_quota_exceeded" => &mut self.account_quota_exceeded,
            "usage_exceeded" => &mut self.usage_exceeded,
            "bad_jwt" => &mut self.bad_jwt,
            "user_inactive" => &mut self.user_inactive,
            _ => return,
        };
        *slot += n;
    }

    /// The counters in `STAT_COLUMNS` order.
    pub fn counts(&self) -> [i64; STAT_COUNTERS] {
        [
            self.valid,
            self.cost,
            self.revoked,
            self.expired,
            self.account_inactive,
            self.ip_not_allowed,
            self.scope_denied,
            self.account_quota_exceeded,
            self.usage_exceeded,
            self.bad_jwt,
            self.user_inactive,
        ]
    }
}

/// Which monthly archive a rolled counter goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// `token_monthly_usage`.
    Token,
    /// `account_monthly_usage`.
    Account,
}

/// A JWT's use count after a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtCount {
    /// The signing token.
    pub token_id: String,
    /// The JWT's `Id`.
    pub jwt_id: String,
    /// Its uses so far.
    pub uses: i64,
    /// Its `ValidUntil`.
    pub expires_at: DateTime<Utc>,
}

/// The state a batch is decided against: read under the write lock, or copies whose versions
/// the write checks.
#[derive(Debug, Default)]
pub struct BatchState {
    /// The batch's tokens, by id (an unknown id is absent).
    pub tokens: HashMap<String, TokenState>,
    /// Their accounts, by id.
    pub accounts: HashMap<String, Account>,
    /// Uses recorded so far for the batch's JWTs, by (token id, JWT id); absent means none.
    pub jwt_uses: HashMap<(String, String), i64>,
    /// The rate windows of the batch's tokens and accounts (this daemon's memory).
    pub rates: Windows,
}

/// What a batch decided and what it must write: everything in memory, so each driver only
/// reads the state and writes the plan, within one transaction.
#[derive(Debug, Default)]
pub struct Plan {
    /// One decision per call, in order.
    pub decided: Vec<Decided>,
    /// Tokens whose counters, status or refill changed, in id order.
    pub tokens: Vec<TokenState>,
    /// Accounts whose quota counter changed, in id order.
    pub accounts: Vec<Account>,
    /// Last months' counters to archive: (kind, id, period, calls).
    pub archives: Vec<(Archive, String, String, i64)>,
    /// Statistics to add, one row per (token, day).
    pub stats: Vec<StatRow>,
    /// JWT use counts to store.
    pub jwt_uses: Vec<JwtCount>,
    /// The rate windows as the batch left them, for the daemon to keep once it is written.
    pub rates: Windows,
}

/// The ids of the tokens a batch touches (its calls and its denials), sorted and unique: the
/// lock order.
pub fn batch_token_ids(reqs: &[Consume], denials: &[Denial]) -> Vec<String> {
    // Unique first: a fold has many calls per token.
    let unique: HashSet<&str> = reqs
        .iter()
        .map(|r| r.token_id.as_str())
        .chain(denials.iter().map(|d| d.token_id.as_str()))
        .collect();
    let mut v: Vec<String> = unique.into_iter().map(str::to_string).collect();
    v.sort();
    v
}

/// The (token, JWT) pairs a batch uses, sorted and unique.
pub fn batch_jwt_keys(reqs: &[Consume]) -> Vec<(String, String)> {
    let unique: HashSet<(&str, &str)> = reqs
        .iter()
        .filter_map(|r| {
            r.jwt
                .as_ref()
                .map(|j| (r.token_id.as_str(), j.jwt_id.as_str()))
        })
        .collect();
    let mut v: Vec<(String, String)> = unique
        .into_iter()
        .map(|(t, j)| (t.to_string(), j.to_string()))
        .collect();
    v.sort();
    v
}

/// Whether the presented secret is the token's current one, or its previous one within the
/// regeneration grace period. JWTs (no hash) were checked by signature already.
pub fn secret_matches(t: &TokenState, r: &Consume) -> bool {
    let Some(h) = &r.secret_hash else {
        return true;
    };
    let in_grace = t
        .previous
        .as_ref()
        .is_some_and(|p| r.now < p.valid_until && hashes_match(h, &p.hash));
    hashes_match(h, &t.secret_hash) || in_grace
}

fn archive_count(
    stats: &mut HashMap<(String, String), StatRow>,
    token: &str,
    account: &str,
    day: &str,
    col: &str,
    n: i64,
) {
    stats
        .entry((token.to_string(), day.to_string()))
        .or_insert_with(|| StatRow {
            day: day.to_string(),
            token_id: token.to_string(),
            account_id: account.to_string(),
            ..StatRow::default()
        })
        .add(col, n);
}

/// Adds `n` to the `col` statistic of `t` for the UTC day of `at`, in the token's own row. A
/// later day first hands the row's counters to the archive; an earlier one (a clock stepped
/// back) is counted in the archive directly.
fn count(
    t: &mut TokenState,
    (date, day): (NaiveDate, &str),
    col: &str,
    n: i64,
    stats: &mut HashMap<(String, String), StatRow>,
) {
    let (id, account) = (&t.id, &t.account_id);
    let today = t.today.get_or_insert_with(Box::default);
    match today.day {
        Some(d) if d == date => {}
        Some(d) if d > date => {
            return archive_count(stats, id, account, day, col, n);
        }
        held => {
            if let Some(held) = held {
                let held = held.to_string();
                for (c, v) in STAT_COLUMNS.iter().zip(today.counts) {
                    if v != 0 {
                        archive_count(stats, id, account, &held, c, v);
                    }
                }
            }
            **today = DayCounts {
                day: Some(date),
                counts: [0; STAT_COUNTERS],
            };
        }
    }
    if let Some(i) = STAT_COLUMNS.iter().position(|c| *c == col) {
        today.counts[i] += n;
    }
}

/// Decides `reqs` in order against `state` as the batch's earlier calls leave it, and collects
/// the writes: consumed uses and quota, rolled months, statistics (with `denials`) and JWT
/// counts. A refused call spends nothing. Pure: no I/O, so both drivers share it.
pub fn plan(reqs: &[Consume], denials: &[Denial], state: BatchState) -> Plan {
    plan_with(reqs, denials, state, true)
}

/// `plan` for a fold, which answers nobody: its decisions carry no token (a copy per call).
pub fn fold_plan(reqs: &[Consume], denials: &[Denial], state: BatchState) -> Plan {
    plan_with(reqs, denials, state, false)
}

/// The UTC day and month keys of the last instant asked for: a fold asks for thousands of
/// calls of the same day.
#[derive(Default)]
pub struct Keys {
    date: Option<NaiveDate>,
    day: String,
    month: String,
    month_no: Option<Month>,
}

/// A call's month, as an account's counter holds it (`YYYY-MM`) and as a token's does.
#[derive(Clone, Copy)]
pub struct Period<'a> {
    /// `YYYY-MM`.
    pub key: &'a str,
    /// The same month.
    pub month: Month,
}

impl Keys {
    /// The month of `at`.
    pub fn month(&mut self, at: DateTime<Utc>) -> Period<'_> {
        self.of(at).1
    }

    fn of(&mut self, at: DateTime<Utc>) -> ((NaiveDate, &str), Period<'_>) {
        let date = at.date_naive();
        if self.date != Some(date) {
            self.date = Some(date);
            self.day = day_key(at);
            self.month = month_key(at);
            self.month_no = Some(Month::of(at));
        }
        let month = self.month_no.unwrap_or_else(|| Month::of(at));
        (
            (date, &self.day),
            Period {
                key: &self.month,
                month,
            },
        )
    }
}

fn plan_with(reqs: &[Consume], denials: &[Denial], state: BatchState, answers: bool) -> Plan {
    let mut keys = Keys::default();
    let BatchState {
        mut tokens,
        mut accounts,
        mut jwt_uses,
        mut rates,
    } = state;
    // Rows for the archive: counters a token's row hands over when a later day starts, and
    // counts for a day before the one the row holds.
    let mut stats: HashMap<(String, String), StatRow> = HashMap::new();
    let mut dirty_tokens: HashSet<String> = HashSet::new();
    let dirty = |set: &mut HashSet<String>, id: &str| {
        if !set.contains(id) {
            set.insert(id.to_string());
        }
    };
    for d in denials {
        let Some(col) = d.outcome.stat_column() else {
            continue;
        };
        // A token with no row any more has nothing to count against (an archive row would
        // break its foreign key and fail the whole batch).
        if let Some(t) = tokens.get_mut(&d.token_id) {
            count(t, keys.of(d.at).0, col, 1, &mut stats);
            dirty(&mut dirty_tokens, &t.id);
        }
    }
    let mut dirty_accounts: HashSet<String> = HashSet::new();
    let mut dirty_jwts: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    let mut archives = Vec::new();
    let mut decided = Vec::with_capacity(reqs.len());
    for r in reqs {
        let (day, period) = keys.of(r.now);
        let known = tokens
            .get(&r.token_id)
            .filter(|t| r.decided || secret_matches(t, r))
            .map(|t| t.account_id.to_string())
            .filter(|a| accounts.contains_key(a));
        let (Some(account_id), Some(t), Some(a)) = (
            known.clone(),
            tokens.get_mut(&r.token_id),
            known.and_then(|a| accounts.get_mut(&a)),
        ) else {
            decided.push(Decided {
                outcome: Outcome::NotFound,
                token: None,
                rate: None,
            });
            continue;
        };
        // A new month: archive and restart the counters, apply the refill, before deciding.
        let (changed, archived) = t.roll_month(period.month);
        if changed {
            dirty(&mut dirty_tokens, &t.id);
        }
        archives
            .extend(archived.map(|(p, n)| (Archive::Token, t.id.to_string(), p.to_string(), n)));
        let (changed, archived) = a.roll_month(period.key);
        if changed {
            dirty(&mut dirty_accounts, &a.id);
        }
        archives.extend(archived.map(|(p, n)| (Archive::Account, a.id.clone(), p, n)));

        // A JWT call: its key, and its uses so far (counted by `consume_one`).
        let mut jwt = r.jwt.as_ref().map(|j| {
            let key = (r.token_id.clone(), j.jwt_id.clone());
            let used = jwt_uses.get(&key).copied().unwrap_or(0);
            (key, used, j.expires_at)
        });
        let (outcome, rate) =
            consume_one(t, a, jwt.as_mut().map(|j| &mut j.1), &mut rates, r, period);
        if outcome == Outcome::Valid {
            if let Some((key, used, expires_at)) = jwt {
                jwt_uses.insert(key.clone(), used);
                dirty_jwts.insert(key, expires_at);
            }
            dirty(&mut dirty_accounts, &account_id);
            count(t, day, "valid", 1, &mut stats);
            count(t, day, "cost", r.check.cost, &mut stats);
            dirty(&mut dirty_tokens, &t.id);
        } else if let Some(col) = outcome.stat_column() {
            count(t, day, col, 1, &mut stats);
            dirty(&mut dirty_tokens, &t.id);
        }
        decided.push(Decided {
            outcome,
            token: answers.then(|| std::sync::Arc::new(t.clone())),
            rate,
        });
    }
    let mut dirty_tokens: Vec<String> = dirty_tokens.into_iter().collect();
    dirty_tokens.sort();
    let mut dirty_accounts: Vec<String> = dirty_accounts.into_iter().collect();
    dirty_accounts.sort();
    let mut jwts: Vec<JwtCount> = dirty_jwts
        .into_iter()
        .map(|((token_id, jwt_id), expires_at)| JwtCount {
            uses: jwt_uses[&(token_id.clone(), jwt_id.clone())],
            token_id,
            jwt_id,
            expires_at,
        })
        .collect();
    jwts.sort_by(|a, b| (&a.token_id, &a.jwt_id).cmp(&(&b.token_id, &b.jwt_id)));
    let mut stats: Vec<StatRow> = stats.into_values().collect();
    stats.sort_by(|a, b| (&a.token_id, &a.day).cmp(&(&b.token_id, &b.day)));
    Plan {
        decided,
        tokens: dirty_tokens
            .iter()
            .filter_map(|id| tokens.remove(id))
            .collect(),
        accounts: dirty_accounts
            .iter()
            .filter_map(|id| accounts.remove(id))
            .collect(),
        archives,
        stats,
        jwt_uses: jwts,
        rates,
    }
}

/// Decides one call on `t` and `a` (both rolled to the call's month already) and, when it is
/// valid, consumes its cost: the account's quota, the token's counters, `remaining` and last
/// use, and, for a JWT call, its own count (`jwt_used`: its uses so far). A refusal changes
/// nothing. Shared by the batch plan and the SQLite ledger, which decides on its cached rows in
/// place; the statistics are the caller's.
pub fn consume_one(
    t: &mut TokenState,
    a: &mut Account,
    jwt_used: Option<&mut i64>,
    rates: &mut Windows,
    r: &Consume,
    period: Period<'_>,
) -> (Outcome, Option<Standing>) {
    let cost = r.check.cost;
    let outcome = if r.decided {
        Outcome::Valid
    } else {
        decide(t, &AccountState::of(a), &r.check, r.now)
    };
    // The rate limits come after every check of whether this credential may make this call at
    // all, and before anything is spent: a call refused for its quota or uses still took its
    // place in the window; a rate-limited one spends nothing.
    let mut rate = None;
    let spends = matches!(
        outcome,
        Outcome::Valid | Outcome::AccountQuotaExceeded | Outcome::UsageExceeded
    );
    if !r.decided && spends {
        match rates.admit((&t.id, t.rate_limit()), (&a.id, a.rate_limit), r.now) {
            Ok(s) => rate = s,
            Err(s) => return (Outcome::RateLimited, Some(s)),
        }
    }
    if outcome != Outcome::Valid {
        return (outcome, rate);
    }
    debug_assert_eq!(
        r.jwt.is_some(),
        jwt_used.is_some(),
        "a JWT call needs its count"
    );
    if let (Some(j), Some(used)) = (&r.jwt, jwt_used) {
        // The JWT's own count: its signer's row is locked (or the ledger's cache), so this
        // read-decide-write holds.
        if !r.decided && *used + cost > j.limit {
            return (Outcome::UsageExceeded, rate);
        }
        *used += cost;
    }
    a.quota_used = AccountState::of(a).used_this_month(r.now) + cost;
    // A call stamped in an earlier month than the counter holds (queued behind a later one, or
    // from a daemon whose clock lags) counts in the newer month: a counter never moves back.
    if a.quota_period.as_deref() < Some(period.key) {
        a.quota_period = Some(period.key.to_string());
    }
    t.calls_month = t.calls_this_month(r.now) + cost;
    if t.calls_month_period < Some(period.month) {
        t.calls_month_period = Some(period.month);
    }
    t.calls_total += cost;
    t.remaining = t.remaining.map(|x| x - cost);
    if t.status == TokenStatus::Active && t.remaining.is_some_and(|x| x <= 0) {
        t.status = TokenStatus::Exhausted;
    }
    // The address goes with the latest use: none when that use named none, and not replaced by
    // a call stamped earlier than the one recorded.
    if t.last_used_at.is_none_or(|l| r.now >= l) {
        t.last_used_ip = r.check.client_ip;
    }
    t.last_used_at = Some(t.last_used_at.map_or(r.now, |l| l.max(r.now)));
    (Outcome::Valid, rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::status::AccountStatus;
    use chrono::TimeZone;

    fn at(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).unwrap()
    }

    fn token(id: &str, remaining: Option<i64>) -> TokenState {
        TokenState::from(&crate::domain::model::Token {
            usage_limit: remaining,
            remaining,
            jwt_enabled: true,
            secret_hash: vec![7; 32],
            calls_month: 4,
            calls_month_period: Some("2026-10".into()),
            calls_total: 4,
            ..crate::domain::model::Token::sample(id, at(1, 0))
        })
    }

    fn state(tokens: Vec<TokenState>, quota: Option<i64>) -> BatchState {
        let account = Account {
            id: "acct".into(),
            name: "acme".into(),
            status: AccountStatus::Active,
            max_tokens: 10,
            monthly_quota: quota,
            quota_used: 0,
            quota_period: None,
            rate_limit: None,
            api_key: "Key00001".into(),
            secret_calls: None,
            created_at: at(1, 0),
            updated_at: at(1, 0),
        };
        BatchState {
            tokens: tokens.into_iter().map(|t| (t.id.to_string(), t)).collect(),
            accounts: HashMap::from([("acct".to_string(), account)]),
            jwt_uses: HashMap::new(),
            rates: Windows::default(),
        }
    }

    fn call(id: &str, hash: u8, now: DateTime<Utc>) -> Consume {
        Consume {
            token_id: id.into(),
            secret_hash: Some(vec![hash; 32]),
            check: Check {
                cost: 1,
                ..Check::default()
            },
            now,
            jwt: None,
            decided: false,
        }
    }

    fn outcomes(p: &Plan) -> Vec<Outcome> {
        p.decided.iter().map(|d| d.outcome).collect()
    }

    #[test]
    fn a_batch_spends_in_order_and_never_past_the_limit() {
        let reqs: Vec<Consume> = (0..3).map(|_| call("AAAA", 7, at(27, 12))).collect();
        let p = plan(&reqs, &[], state(vec![token("AAAA", Some(2))], None));
        assert_eq!(
            outcomes(&p),
            [Outcome::Valid, Outcome::Valid, Outcome::UsageExceeded]
        );
        let t = &p.tokens[0];
        assert_eq!(t.remaining, Some(0));
        assert_eq!(t.status, TokenStatus::Exhausted);
        assert_eq!(t.calls_total, 6);
        // Last month's 4 calls are archived and this month counts from zero.
        assert_eq!(t.calls_month, 2);
        assert!(p
            .archives
            .contains(&(Archive::Token, "AAAA".into(), "2026-10".into(), 4)));
        assert!(
            p.stats.is_empty(),
            "today's statistics stay in the token's row"
        );
        let c = t.today().counts;
        assert_eq!(t.today().day, NaiveDate::from_ymd_opt(2026, 11, 27));
        assert_eq!((c[0], c[1], c[8]), (2, 2, 1), "valid, cost, usage_exceeded");
        assert_eq!(p.accounts[0].quota_used, 2);
    }

    #[test]
    fn a_rate_limited_call_spends_nothing_and_a_usage_refusal_still_takes_its_place() {
        let mut t = token("AAAA", Some(3));
        t.rules = crate::domain::state::Rules::boxed(
            vec![],
            vec![],
            crate::domain::rate::RateLimit::new(4, 60, "rate_limit").ok(),
        );
        let reqs: Vec<Consume> = (0..6).map(|_| call("AAAA", 7, at(27, 12))).collect();
        let p = plan(&reqs, &[], state(vec![t], None));
        assert_eq!(
            outcomes(&p),
            [
                Outcome::Valid,
                Outcome::Valid,
                Outcome::Valid,
                Outcome::UsageExceeded,
                Outcome::RateLimited,
                Outcome::RateLimited
            ]
        );
        assert_eq!(p.tokens[0].remaining, Some(0));
        assert_eq!(p.accounts[0].quota_used, 3);
        assert_eq!(p.rates.tokens["AAAA"].count, 4);
        let standing = p.decided[5].rate.unwrap();
        assert_eq!((standing.limit, standing.remaining), (4, 0));
        // Refused for its rate, a call is in no statistics column: usage_exceeded counted one.
        let c = p.tokens[0].today().counts;
        assert_eq!((c[0], c[8]), (3, 1));
        // A wrong secret is not the token's caller: it takes no place in the window.
        let mut t = token("BBBB", None);
        t.rules = crate::domain::state::Rules::boxed(
            vec![],
            vec![],
            crate::domain::rate::RateLimit::new(1, 60, "rate_limit").ok(),
        );
        let p = plan(
            &[call("BBBB", 9, at(27, 12)), call("BBBB", 7, at(27, 12))],
            &[],
            state(vec![t], None),
        );
        assert_eq!(outcomes(&p), [Outcome::NotFound, Outcome::Valid]);
    }

    /// A fold applies calls decided earlier as they were, on the rows as they are now: a
    /// token revoked, refilled or with a new secret since is charged all the same, unchecked.
    #[test]
    fn a_call_decided_already_is_consumed_on_the_row_as_it_is_now() {
        let mut t = token("AAAA", Some(100));
        t.status = TokenStatus::Revoked;
        t.secret_hash = [9; 32];
        let decided = |cost| Consume {
            secret_hash: None,
            decided: true,
            check: Check {
                cost,
                ..Check::default()
            },
            jwt: Some(JwtUse {
                jwt_id: "j".into(),
                limit: 1,
                expires_at: at(28, 0),
            }),
            ..call("AAAA", 7, at(27, 12))
        };
        let p = plan(&[decided(2), decided(3)], &[], state(vec![t], None));
        assert_eq!(outcomes(&p), [Outcome::Valid, Outcome::Valid]);
        let t = &p.tokens[0];
        assert_eq!((t.remaining, t.calls_total), (Some(95), 9));
        assert_eq!(t.status, TokenStatus::Revoked, "the status is left alone");
        assert_eq!(p.accounts[0].quota_used, 5);
        assert_eq!(
            p.jwt_uses[0].uses, 5,
            "past the JWT's own count, as decided"
        );
        // The same calls undecided are refused, and spend nothing.
        let undecided = Consume {
            decided: false,
            ..decided(2)
        };
        let mut t = token("AAAA", Some(100));
        t.status = TokenStatus::Revoked;
        let p = plan(&[undecided], &[], state(vec![t], None));
        assert_eq!(outcomes(&p), [Outcome::Revoked]);
        assert_eq!(p.tokens[0].remaining, Some(100));
    }

    #[test]
    fn the_last_use_keeps_its_own_address_whatever_the_order_of_the_batch() {
        let from = |ip: &str, now| Consume {
            check: Check {
                cost: 1,
                client_ip: Some(ip.parse().unwrap()),
                ..Check::default()
            },
            ..call("AAAA", 7, now)
        };
        // A later call first, then one stamped earlier (queued behind it).
        let reqs = vec![from("192.0.2.2", at(27, 13)), from("192.0.2.1", at(27, 12))];
        let p = plan(&reqs, &[], state(vec![token("AAAA", None)], None));
        assert_eq!(outcomes(&p), [Outcome::Valid, Outcome::Valid]);
        let t = &p.tokens[0];
        assert_eq!(t.last_used_at, Some(at(27, 13)));
        assert_eq!(t.last_used_ip, Some("192.0.2.2".parse().unwrap()));
    }

    #[test]
    fn a_wrong_secret_or_unknown_token_spends_nothing() {
        let reqs = vec![call("AAAA", 9, at(27, 12)), call("ZZZZ", 7, at(27, 12))];
        let p = plan(&reqs, &[], state(vec![token("AAAA", Some(2))], None));
        assert_eq!(outcomes(&p), [Outcome::NotFound, Outcome::NotFound]);
        assert!(p.decided.iter().all(|d| d.token.is_none()));
        assert!(p.tokens.is_empty() || p.tokens[0].remaining == Some(2));
        assert!(p.stats.is_empty());
    }

    #[test]
    fn the_account_quota_is_shared_by_its_tokens() {
        let reqs = vec![
            call("AAAA", 7, at(27, 12)),
            call("BBBB", 7, at(27, 12)),
            call("AAAA", 7, at(27, 12)),
        ];
        let p = plan(
            &reqs,
            &[],
            state(vec![token("AAAA", None), token("BBBB", None)], Some(2)),
        );
        assert_eq!(
            outcomes(&p),
            [
                Outcome::Valid,
                Outcome::Valid,
                Outcome::AccountQuotaExceeded
            ]
        );
        assert_eq!(p.accounts[0].quota_used, 2);
        assert_eq!(p.accounts[0].quota_period.as_deref(), Some("2026-11"));
    }

    #[test]
    fn a_call_stamped_before_the_month_the_counters_hold_counts_in_that_month() {
        let dec = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 1).unwrap();
        let nov = Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap();
        let reqs = vec![call("AAAA", 7, dec), call("AAAA", 7, nov)];
        let p = plan(&reqs, &[], state(vec![token("AAAA", None)], Some(1)));
        assert_eq!(
            outcomes(&p),
            [Outcome::Valid, Outcome::AccountQuotaExceeded],
            "December's use is not forgotten by a late November call"
        );
        assert_eq!(p.accounts[0].quota_period.as_deref(), Some("2026-12"));
        assert_eq!(p.accounts[0].quota_used, 1);
        let reqs = vec![call("AAAA", 7, dec), call("AAAA", 7, nov)];
        let p = plan(&reqs, &[], state(vec![token("AAAA", None)], None));
        assert_eq!(outcomes(&p), [Outcome::Valid, Outcome::Valid]);
        let t = &p.tokens[0];
        assert_eq!(t.calls_month_period, Month::parse("2026-12"));
        assert_eq!(
            t.calls_month, 2,
            "both count in the month the counter holds"
        );
        assert_eq!(p.accounts[0].quota_period.as_deref(), Some("2026-12"));
    }

    #[test]
    fn a_jwt_count_is_kept_across_the_batch_and_the_store() {
        let mut st = state(vec![token("AAAA", Some(100))], None);
        st.jwt_uses.insert(("AAAA".into(), "j1".into()), 1);
        let jwt = |id: &str| JwtUse {
            jwt_id: id.into(),
            limit: 2,
            expires_at: at(27, 13),
        };
        let mut reqs = Vec::new();
        for id in ["j1", "j1", "j2"] {
            let mut c = call("AAAA", 0, at(27, 12));
            c.secret_hash = None;
            c.jwt = Some(jwt(id));
            reqs.push(c);
        }
        let p = plan(&reqs, &[], st);
        assert_eq!(
            outcomes(&p),
            [Outcome::Valid, Outcome::UsageExceeded, Outcome::Valid]
        );
        let counts: Vec<(&str, i64)> = p
            .jwt_uses
            .iter()
            .map(|j| (j.jwt_id.as_str(), j.uses))
            .collect();
        assert_eq!(counts, [("j1", 2), ("j2", 1)]);
        assert_eq!(
            p.tokens[0].remaining,
            Some(98),
            "the signer's uses are spent too"
        );
    }

    #[test]
    fn denials_and_calls_are_counted_per_token_and_utc_day() {
        let denial = Denial {
            token_id: "AAAA".into(),
            account_id: "acct".into(),
            outcome: Outcome::BadJwt,
            at: at(26, 23),
        };
        let reqs = vec![call("AAAA", 7, at(26, 23)), call("AAAA", 7, at(27, 0))];
        let mut late = call("AAAA", 7, at(25, 10));
        late.check.cost = 5;
        let reqs = [reqs, vec![late]].concat();
        let p = plan(&reqs, &[denial], state(vec![token("AAAA", None)], None));
        // The 26th moved to the archive when the 27th began; a call stamped before the day the
        // row holds (a clock stepped back) goes to the archive directly.
        let days: Vec<(&str, i64, i64, i64)> = p
            .stats
            .iter()
            .map(|s| (s.day.as_str(), s.valid, s.cost, s.bad_jwt))
            .collect();
        assert_eq!(days, [("2026-11-25", 1, 5, 0), ("2026-11-26", 1, 1, 1)]);
        let t = &p.tokens[0];
        assert_eq!(t.today().day, NaiveDate::from_ymd_opt(2026, 11, 27));
        assert_eq!(t.today().counts[..3], [1, 1, 0]);
    }
}
