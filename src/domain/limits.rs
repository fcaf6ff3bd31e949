//! Numeric limits and expiry inputs: usage limits, lifetimes, `expires_on` dates, counts.

use super::ParseError;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

/// Most tokens one account may be allowed (`max_tokens`): issuing checks it at the same cost
/// whatever the count.
pub const MAX_TOKENS_PER_ACCOUNT: i64 = 100_000_000;
/// Largest `usage_limit` / `RequestCount` (the seeds' maximum).
pub const MAX_USAGE_LIMIT: i64 = 999_999_999;
/// Largest `lifetime_seconds` / `Lifetime`: ten years, the seeds' maximum.
pub const MAX_LIFETIME_SECONDS: i64 = 315_569_520;

/// Checks a usage limit: 1 to 999 999 999.
pub fn usage_limit(v: i64, field: &str) -> Result<i64, ParseError> {
    if (1..=MAX_USAGE_LIMIT).contains(&v) {
        Ok(v)
    } else {
        Err(ParseError::new(
            field,
            format!("must be 1 to {MAX_USAGE_LIMIT}"),
        ))
    }
}

/// Checks a lifetime in seconds against `max` (itself at most ten years).
pub fn lifetime(v: i64, max: i64, field: &str) -> Result<TimeDelta, ParseError> {
    let max = max.min(MAX_LIFETIME_SECONDS);
    if (1..=max).contains(&v) {
        Ok(TimeDelta::seconds(v))
    } else {
        Err(ParseError::new(
            field,
            format!("must be 1 to {max} seconds"),
        ))
    }
}

/// Parses a UTC date written exactly `YYYY-MM-DD` or `dd/MM/yyyy`: ten characters, digits
/// where digits go (no spaces, signs or extended years, which chrono's parser would take).
pub fn parse_date(s: &str, field: &str) -> Result<NaiveDate, ParseError> {
    let shaped = |pattern: &[u8]| {
        s.len() == pattern.len()
            && s.bytes().zip(pattern).all(|(c, p)| match p {
                b'9' => c.is_ascii_digit(),
                sep => c == *sep,
            })
    };
    let parsed = if shaped(b"9999-99-99") {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
    } else if shaped(b"99/99/9999") {
        NaiveDate::parse_from_str(s, "%d/%m/%Y").ok()
    } else {
        None
    };
    parsed.ok_or_else(|| {
        ParseError::new(
            field,
            format!("`{s}` is not a date (use YYYY-MM-DD or dd/MM/yyyy)"),
        )
    })
}

/// 00:00:00 UTC on `date`, the instant a token with that `expires_on` stops working.
pub fn start_of_day(date: NaiveDate) -> DateTime<Utc> {
    date.and_time(chrono::NaiveTime::MIN).and_utc()
}

/// How a caller asked a token to expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpiryRequest {
    /// `lifetime_seconds` from now.
    Lifetime(i64),
    /// `expires_on`: a UTC date.
    On(String),
    /// Never expires.
    Never,
}

/// Resolves an expiry request at `now` to the instant it stops working (`None`: never).
/// A date must lie in the future and within `max_lifetime` seconds from now.
pub fn resolve_expiry(
    req: &ExpiryRequest,
    max_lifetime: i64,
    now: DateTime<Utc>,
    lifetime_field: &str,
    date_field: &str,
) -> Result<Option<DateTime<Utc>>, ParseError> {
    match req {
        ExpiryRequest::Never => Ok(None),
        ExpiryRequest::Lifetime(s) => Ok(Some(now + lifetime(*s, max_lifetime, lifetime_field)?)),
        ExpiryRequest::On(d) => {
            let at = start_of_day(parse_date(d, date_field)?);
            if at <= now {
                return Err(ParseError::new(
                    date_field,
                    "must be a date after today (UTC)",
                ));
            }
            if at - now > TimeDelta::seconds(max_lifetime.min(MAX_LIFETIME_SECONDS)) {
                return Err(ParseError::new(
                    date_field,
                    format!("is further away than the maximum lifetime of {max_lifetime} seconds"),
                ));
            }
            Ok(Some(at))
        }
    }
}

/// Checks a count against `1..=max`.
pub fn count(v: i64, max: i64, field: &str) -> Result<usize, ParseError> {
    if (1..=max).contains(&v) {
        Ok(v as usize)
    } else {
        Err(ParseError::new(field, format!("must be 1 to {max}")))
    }
}

/// Checks a free-text field's length; `required` rejects an empty or blank value.
pub fn text(v: &str, max: usize, required: bool, field: &str) -> Result<String, ParseError> {
    let t = v.trim();
    if required && t.is_empty() {
        return Err(ParseError::new(field, "must not be empty"));
    }
    if t.chars().count() > max {
        return Err(ParseError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if t.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(ParseError::new(
            field,
            "must not contain control, zero-width or direction-changing characters",
        ));
    }
    Ok(t.to_string())
}

/// Characters that render as nothing or reorder text: they let two names look identical
/// (`acme` and `acme\u{200b}`) or disguise one (`\u{202e}gnp.exe`).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}'
        | '\u{feff}')
}

/// A whole number in a request body, however it was written: `5`, `5.0` and `5e0` alike;
/// `5.5` or a string is refused (JSON has one number type, and a generator working from the
/// OpenAPI document, where `1.0` is an integer, may write one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Whole(pub i64);

impl serde::Serialize for Whole {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Whole;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Whole, E> {
                Ok(Whole(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Whole, E> {
                i64::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Whole, E> {
                // Within ±2^63 (exclusive at the top, where i64 ends).
                const LIMIT: f64 = 9_223_372_036_854_775_808.0;
                if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
                    Ok(Whole(v as i64))
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0).unwrap()
    }

    #[test]
    fn both_date_forms_mean_midnight_utc() {
        let a = resolve_expiry(
            &ExpiryRequest::On("2026-12-24".into()),
            MAX_LIFETIME_SECONDS,
            now(),
            "l",
            "d",
        );
        let b = resolve_expiry(
            &ExpiryRequest::On("24/12/2026".into()),
            MAX_LIFETIME_SECONDS,
            now(),
            "l",
            "d",
        );
        let midnight = Utc.with_ymd_and_hms(2026, 12, 24, 0, 0, 0).unwrap();
        assert_eq!(a, Ok(Some(midnight)));
        assert_eq!(b, Ok(Some(midnight)));
    }

    #[test]
    fn bad_and_past_dates_are_refused() {
        for bad in [
            "2026-13-01",
            "31/02/2027",
            "tomorrow",
            "2026-11-27",
            "12/24/2026",
            " 2027-01-01",
            "2027-01-01 ",
            "+002027-01-01",
            "2027-1-01",
            "1/02/2027",
            "+1/02/2027",
        ] {
            let r = resolve_expiry(
                &ExpiryRequest::On(bad.into()),
                MAX_LIFETIME_SECONDS,
                now(),
                "l",
                "expires_on",
            );
            assert_eq!(r.unwrap_err().field, "expires_on", "{bad}");
        }
    }

    #[test]
    fn ranges() {
        assert!(usage_limit(0, "u").is_err());
        assert!(usage_limit(1_000_000_000, "u").is_err());
        assert_eq!(usage_limit(999_999_999, "u"), Ok(999_999_999));
        assert!(lifetime(315_569_521, MAX_LIFETIME_SECONDS, "l").is_err());
        assert!(lifetime(100, 50, "l").is_err());
        assert_eq!(
            resolve_expiry(&ExpiryRequest::Lifetime(60), 3600, now(), "l", "d"),
            Ok(Some(now() + TimeDelta::seconds(60)))
        );
        assert_eq!(count(0, 100, "count").unwrap_err().field, "count");
        assert_eq!(text("  ", 10, true, "name").unwrap_err().field, "name");
        assert_eq!(text(" a ", 10, true, "name"), Ok("a".into()));
        assert!(text("acme\u{200b}", 10, true, "name").is_err());
        assert!(text("\u{202e}gnp.exe", 10, true, "name").is_err());
        assert_eq!(text("Ärger", 10, true, "name"), Ok("Ärger".into()));
    }
}
