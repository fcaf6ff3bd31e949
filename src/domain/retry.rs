//! Retry timing for deliveries that failed: exponential backoff with a ceiling.

use chrono::TimeDelta;

/// The wait before attempt `attempts + 1`, after `attempts` failed ones: `base`, `2·base`,
/// `4·base`, … never more than `max`.
pub fn backoff(attempts: u32, base: TimeDelta, max: TimeDelta) -> TimeDelta {
    let factor = 1i32
        .checked_shl(attempts.saturating_sub(1).min(30))
        .unwrap_or(i32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling() {
        let b = TimeDelta::seconds(30);
        let m = TimeDelta::hours(1);
        let waits: Vec<i64> = (1..=9).map(|a| backoff(a, b, m).num_seconds()).collect();
        assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(backoff(100, b, m), m);
    }
}
