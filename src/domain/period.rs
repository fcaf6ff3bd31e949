//! UTC calendar keys: the month a counter or a job run belongs to.

use chrono::{DateTime, Datelike, TimeZone, Utc};

/// The calendar month of `t` in UTC, as `YYYY-MM`.
pub fn month_key(t: DateTime<Utc>) -> String {
    format!("{:04}-{:02}", t.year(), t.month())
}

/// 00:00:00 UTC on the first day of the month after the one holding `t`.
pub fn next_month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if t.month() == 12 {
        (t.year() + 1, 1)
    } else {
        (t.year(), t.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().unwrap_or(t)
}

/// The UTC day of `t`, as `YYYY-MM-DD`.
pub fn day_key(t: DateTime<Utc>) -> String {
    // Not `format("%Y-%m-%d")`: this runs on every counted call, and strftime parses its
    // pattern each time.
    format!("{:04}-{:02}-{:02}", t.year(), t.month(), t.day())
}

/// The UTC minute of `t`, as `YYYY-MM-DDTHH:MM`.
pub fn minute_key(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M").to_string()
}

/// 00:00:00 UTC on the first day of the month `YYYY-MM` (years 1970 to 9999), or `None` when
/// `key` is not one.
pub fn month_start(key: &str) -> Option<DateTime<Utc>> {
    let (year, month) = month_parts(key)?;
    if year < 1970 {
        return None;
    }
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single()
}

/// The year and month of a `YYYY-MM` key (four and two digits; the month unchecked).
fn month_parts(key: &str) -> Option<(i32, u32)> {
    let (y, m) = key.split_once('-')?;
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|c| c.is_ascii_digit());
    if !digits(y, 4) || !digits(m, 2) {
        return None;
    }
    Some((y.parse().ok()?, m.parse().ok()?))
}

/// A calendar month in UTC, in four bytes (a token's counters hold two): `YYYY-MM` when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(std::num::NonZeroU32);

impl Month {
    /// The month holding `t`.
    pub fn of(t: DateTime<Utc>) -> Month {
        Month::from_parts(t.year(), t.month()).unwrap_or(Month(std::num::NonZeroU32::MIN))
    }

    fn from_parts(year: i32, month: u32) -> Option<Month> {
        let year = u32::try_from(year).ok().filter(|y| *y <= 9999)?;
        (1..=12).contains(&month).then_some(())?;
        std::num::NonZeroU32::new(year * 12 + month).map(Month)
    }

    /// Parses `YYYY-MM` (years 0 to 9999); `None` when `key` is not one.
    pub fn parse(key: &str) -> Option<Month> {
        let (year, month) = month_parts(key)?;
        Month::from_parts(year, month)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.get() - 1;
        write!(f, "{:04}-{:02}", n / 12, n % 12 + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_in_four_bytes_orders_and_writes_like_its_key() {
        assert_eq!(std::mem::size_of::<Option<Month>>(), 4);
        let dec = Month::parse("2026-12").unwrap();
        let jan = Month::parse("2027-01").unwrap();
        assert!(dec < jan);
        assert_eq!(
            (dec.to_string(), jan.to_string()),
            ("2026-12".into(), "2027-01".into())
        );
        assert_eq!(Month::of(month_start("2027-01").unwrap()), jan);
        assert_eq!(Month::parse("0000-01").unwrap().to_string(), "0000-01");
        for bad in [
            "2026-13", "2026-00", "2026-1", "226-12", "2026_12", "", "2026-1x",
        ] {
            assert_eq!(Month::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn month_keys_parse_back_and_bad_ones_do_not() {
        let t = month_start("2026-12").unwrap();
        assert_eq!(month_key(t), "2026-12");
        assert_eq!(month_key(next_month_start(t)), "2027-01");
        for bad in [
            "2026-13",
            "2026-1",
            "26-12",
            "2026/12",
            "",
            "2026-12-01",
            "0000-01",
            "1969-12",
            "+202-01",
            "2026-+1",
            " 2026-01",
        ] {
            assert!(month_start(bad).is_none(), "{bad}");
        }
        let t = Utc.with_ymd_and_hms(2026, 12, 1, 0, 5, 59).unwrap();
        assert_eq!(day_key(t), "2026-12-01");
        assert_eq!(minute_key(t), "2026-12-01T00:05");
    }

    #[test]
    fn month_keys_and_boundaries() {
        let t = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(month_key(t), "2026-12");
        assert_eq!(
            next_month_start(t),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        let feb = Utc.with_ymd_and_hms(2028, 2, 29, 12, 0, 0).unwrap();
        assert_eq!(
            next_month_start(feb),
            Utc.with_ymd_and_hms(2028, 3, 1, 0, 0, 0).unwrap()
        );
    }
}
