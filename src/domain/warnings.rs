//! Which expiry warning a token is due, if any.
//!
//! Thresholds are whole days before expiry (`[7, 1]`). At `now`, a token is due the most urgent
//! threshold it has entered — the smallest N with `expires_at - now <= N days` — provided it ever
//! had more than N days to live and that N was not claimed already. Choosing the most urgent one
//! is what makes a daemon that slept through the 7-day window send only the 1-day warning.

use chrono::{DateTime, TimeDelta, Utc};

/// The warning threshold (in days) due at `now`, if any.
pub fn due_threshold(
    thresholds: &[u32],
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
    claimed: &[u32],
) -> Option<u32> {
    if expires_at <= now {
        return None;
    }
    let left = expires_at - now;
    let lifetime = expires_at - created_at;
    let days = |n: u32| TimeDelta::days(i64::from(n));
    let most_urgent = thresholds
        .iter()
        .copied()
        .filter(|&n| left <= days(n))
        .min()?;
    // A token that never had more than N days to live gets no N-day warning.
    (lifetime > days(most_urgent) && !claimed.contains(&most_urgent)).then_some(most_urgent)
}

/// Whole days left, rounded up (a token expiring in 23 hours has 1 day left).
pub fn days_left(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let secs = (expires_at - now).num_seconds().max(0);
    (secs + 86_399) / 86_400
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, d, h, 0, 0).unwrap()
    }

    const T: &[u32] = &[7, 1];

    #[test]
    fn seven_then_one_day_before() {
        let created = at(1, 0);
        let expires = at(20, 12);
        assert_eq!(due_threshold(T, created, expires, at(13, 11), &[]), None);
        assert_eq!(due_threshold(T, created, expires, at(13, 12), &[]), Some(7));
        assert_eq!(due_threshold(T, created, expires, at(15, 0), &[7]), None);
        assert_eq!(
            due_threshold(T, created, expires, at(19, 12), &[7]),
            Some(1)
        );
        assert_eq!(due_threshold(T, created, expires, at(20, 0), &[7, 1]), None);
        assert_eq!(due_threshold(T, created, expires, at(20, 12), &[7]), None);
    }

    #[test]
    fn a_short_lived_token_skips_the_windows_it_never_had() {
        // Created 3 days before expiry: no 7-day warning, the 1-day one still comes.
        let created = at(10, 0);
        let expires = at(13, 0);
        assert_eq!(due_threshold(T, created, expires, at(10, 0), &[]), None);
        assert_eq!(due_threshold(T, created, expires, at(12, 0), &[]), Some(1));
        // Created 1 day before expiry: nothing at all.
        assert_eq!(due_threshold(T, at(12, 0), expires, at(12, 0), &[]), None);
    }

    #[test]
    fn after_downtime_only_the_most_urgent_goes_out() {
        let created = at(1, 0);
        let expires = at(20, 0);
        // Down from 8 days before until half a day before: only the 1-day warning.
        assert_eq!(due_threshold(T, created, expires, at(19, 12), &[]), Some(1));
        assert_eq!(due_threshold(T, created, expires, at(19, 13), &[1]), None);
    }

    #[test]
    fn days_left_rounds_up() {
        assert_eq!(days_left(at(20, 0), at(19, 1)), 1);
        assert_eq!(days_left(at(20, 0), at(13, 0)), 7);
        assert_eq!(days_left(at(20, 0), at(12, 23)), 8);
    }
}
