//! The parsers' rules as JSON Schemas, for the OpenAPI document: a value a schema here allows is
//! one the parser beside it accepts, and the other way round. Patterns are written for any
//! ECMA-262 or Python engine: explicit character ranges, no `\s`, `\d` or property escapes, whose
//! meaning differs between engines.

use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};

/// What `str::trim` removes: Unicode `White_Space`.
const SPACE: &str = r"[\t-\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]";
/// A character `limits::text` keeps: no control character (`Cc`), nothing invisible.
const KEPT: &str = r"[^\x00-\x1F\x7F-\x9F\xAD\u034F\u061C\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u2069\uFEFF]";
/// A kept character that is not white space.
const SHOWN: &str = r"[^\x00-\x20\x7F-\xA0\xAD\u034F\u061C\u1680\u180E\u2000-\u200F\u2028-\u202F\u205F-\u2064\u2066-\u2069\u3000\uFEFF]";

/// Text without a NUL character (which no stored text may hold).
const NO_NUL: &str = "^[^\\x00]*$";

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable(o: ObjectBuilder, t: Type) -> ObjectBuilder {
    o.schema_type(SchemaType::from_iter([t, Type::Null]))
}

/// The pattern of `limits::text(_, max, required, _)`: surrounding white space is trimmed, and
/// what is left holds at most `max` characters (at least one if `required`), none of them a
/// control or invisible character.
pub fn text_pattern(max: usize, required: bool) -> String {
    let body = match max {
        0 => String::new(),
        1 => SHOWN.to_string(),
        _ => format!("{SHOWN}(?:{KEPT}{{0,{}}}{SHOWN})?", max - 2),
    };
    if required {
        format!("^{SPACE}*{body}{SPACE}*$")
    } else {
        format!("^{SPACE}*(?:{body})?{SPACE}*$")
    }
}

/// A free-text field checked by `limits::text`.
pub fn text(max: usize, required: bool) -> Object {
    string().pattern(Some(text_pattern(max, required))).build()
}

/// A text field that may also be `null` (taken as absent).
pub fn text_or_null(max: usize, required: bool) -> Object {
    nullable(ObjectBuilder::new(), Type::String)
        .pattern(Some(text_pattern(max, required)))
        .build()
}

/// A name: 1 to 100 characters once trimmed.
pub fn name() -> Object {
    text(100, true)
}

/// A note: up to 1000 characters once trimmed; `null` or blank clears it.
pub fn note() -> Object {
    text_or_null(1000, false)
}

/// The pattern of `email::parse`: trimmed, at most 254 characters, a local part of 1 to 64
/// characters with no `@`, white space or control character, and a domain of ASCII letters,
/// digits, dots and hyphens holding a dot, neither starting nor ending with one.
pub fn email_pattern() -> String {
    let local = r"[^@\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]{1,64}";
    let label = "[A-Za-z0-9-]";
    let any = "[A-Za-z0-9.-]";
    format!("^{SPACE}*{local}@{label}{any}*\\.{any}*{label}{SPACE}*$")
}

/// A user's email address.
pub fn email() -> Object {
    string()
        .max_length(Some(super::email::MAX_LEN))
        .pattern(Some(email_pattern()))
        .build()
}

/// Days as `limits::parse_date` reads them: `YYYY-MM-DD` or `dd/MM/yyyy`, a day that exists
/// (29 February in leap years only).
pub fn date_pattern() -> String {
    format!("^{}$", day())
}

const YEAR: &str = "[0-9]{4}";
/// Leap years: divisible by 4, and by 400 when a century.
const LEAP: &str = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[02468][048]|[13579][26])00)";
/// Days every month has.
const DAY28: &str = "(?:0[1-9]|1[0-9]|2[0-8])";

/// `YYYY-MM-DD`, a day that exists, unanchored.
fn iso_day() -> String {
    format!(
        "(?:{YEAR}-(?:(?:0[1-9]|1[0-2])-{DAY28}|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)|{LEAP}-02-29)"
    )
}

/// A day of either form, unanchored.
fn day() -> String {
    let eu = format!(
        "{DAY28}/(?:0[1-9]|1[0-2])/{YEAR}|(?:29|30)/(?:0[13-9]|1[0-2])/{YEAR}|31/(?:0[13578]|1[02])/{YEAR}|29/02/{LEAP}"
    );
    format!("(?:{}|{eu})", iso_day())
}

/// A UTC day.
pub fn date() -> Object {
    string().pattern(Some(date_pattern())).build()
}

/// An instant or a day as the audit filter reads them: RFC 3339 with an upper-case `T` and `Z`
/// (or an offset up to ±23:59), seconds 00 to 59 and at most nine fractional digits; or a day,
/// `YYYY-MM-DD`.
pub fn instant_pattern() -> String {
    let time = "(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]{1,9})?";
    let offset = "(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";
    format!("^{}(?:T{time}{offset})?$", iso_day())
}

/// An instant or a day (`instant_pattern`).
pub fn instant() -> Object {
    string().pattern(Some(instant_pattern())).build()
}

/// A UTC day in a query, where surrounding white space is trimmed and an empty value is an
/// absent one.
pub fn day_filter() -> Object {
    string()
        .pattern(Some(format!("^{SPACE}*(?:{})?{SPACE}*$", day())))
        .build()
}

/// A UTC day, or `null`.
pub fn date_or_null() -> Object {
    nullable(ObjectBuilder::new(), Type::String)
        .pattern(Some(date_pattern()))
        .build()
}

/// One of `words`.
pub fn one_of(words: &[&str]) -> Object {
    string().enum_values(Some(words.iter().copied())).build()
}

/// One of `words`, or `null` (taken as absent).
pub fn one_of_or_null(words: &[&str]) -> Object {
    let values = words
        .iter()
        .map(|w| serde_json::Value::from(*w))
        .chain([serde_json::Value::Null]);
    nullable(ObjectBuilder::new(), Type::String)
        .enum_values(Some(values))
        .build()
}

/// A role.
pub fn role() -> Object {
    one_of(&super::role::NAMES)
}

/// A role, or `null` (the default).
pub fn role_or_null() -> Object {
    one_of_or_null(&super::role::NAMES)
}

/// A whole number from `min` to `max`. `1.0` is a whole number too, and is read as one.
pub fn int(min: i64, max: i64) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
        .build()
}

/// A whole number from `min` to `max`, or `null`.
pub fn int_or_null(min: i64, max: i64) -> Object {
    nullable(ObjectBuilder::new(), Type::Integer)
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
        .build()
}

/// An IPv4 address as `Ipv4Addr` reads it: four decimal octets, no leading zero.
pub fn ipv4_pattern() -> String {
    let octet = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    format!("{octet}(?:\\.{octet}){{3}}")
}

/// An IPv6 address as `Ipv6Addr` reads it: eight groups of one to four hex digits, the last
/// two of which may be an IPv4 address, or fewer around one `::` that stands for at least one
/// group.
pub fn ipv6_pattern() -> String {
    let h = "[0-9A-Fa-f]{1,4}";
    let v4 = ipv4_pattern();
    let mut forms = vec![format!("(?:{h}:){{7}}{h}"), format!("(?:{h}:){{6}}{v4}")];
    // `head::tail`: `k` groups before, at most `7 - k` after.
    for k in 0..=7usize {
        let head = match k {
            0 => String::new(),
            1 => h.to_string(),
            _ => format!("{h}(?::{h}){{{}}}", k - 1),
        };
        let n = 7 - k;
        let tail = match n {
            0 => String::new(),
            1 => format!("(?:{h})?"),
            _ => format!(
                "(?:(?:{h}:){{0,{}}}{v4}|(?:{h}(?::{h}){{0,{}}})?)",
                n - 2,
                n - 1
            ),
        };
        forms.push(format!("{head}::{tail}"));
    }
    format!("(?:{})", forms.join("|"))
}

/// An IP address, surrounding white space allowed (`client_ip`, `user_ip`).
pub fn ip_pattern(empty_allowed: bool) -> String {
    let ip = format!("(?:{}|{})", ipv4_pattern(), ipv6_pattern());
    let ip = if empty_allowed { format!("{ip}?") } else { ip };
    format!("^{SPACE}*{ip}{SPACE}*$")
}

/// The pattern of `net::parse_rule`: an IP address or a CIDR block (IPv4 prefix 0 to 32, IPv6
/// 0 to 128, no leading zero), surrounding white space allowed.
pub fn ip_rule_pattern() -> String {
    let v4 = format!("{}(?:/(?:3[0-2]|[12]?[0-9]))?", ipv4_pattern());
    let v6 = format!("{}(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?", ipv6_pattern());
    format!("^{SPACE}*(?:{v4}|{v6}){SPACE}*$")
}

/// A list of IP addresses or CIDR blocks (`allowed_ips`).
pub fn ip_rules() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(string().pattern(Some(ip_rule_pattern())))
        .max_items(Some(super::net::MAX_RULES))
        .build()
}

/// A scope: 1 to 128 characters, letters, digits and `_ . : / -`, with an optional trailing `*`.
pub fn scope_pattern() -> String {
    "^[A-Za-z0-9_.:/-]*\\*?$".to_string()
}

/// A list of scopes (`scopes`).
pub fn scopes() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(
            string()
                .min_length(Some(1))
                .max_length(Some(super::scope::MAX_LEN))
                .pattern(Some(scope_pattern())),
        )
        .max_items(Some(super::scope::MAX_SCOPES))
        .build()
}

/// Any text without a NUL character (which no stored text may hold).
pub fn any_text() -> Object {
    string().pattern(Some(NO_NUL)).build()
}

/// Any text without a NUL character, or `null`.
pub fn any_text_or_null() -> Object {
    nullable(ObjectBuilder::new(), Type::String)
        .pattern(Some(NO_NUL))
        .build()
}

/// Text of 1 to `max` characters without a NUL, or also `null` when `nullable`.
pub fn short_text(max: usize, nullable_: bool) -> Object {
    let o = if nullable_ {
        nullable(ObjectBuilder::new(), Type::String)
    } else {
        string()
    };
    o.min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(NO_NUL))
        .build()
}

/// A token id: `ids::TOKEN_ID_LEN` letters or digits.
pub fn token_id() -> Object {
    string()
        .pattern(Some(format!(
            "^[0-9A-Za-z]{{{}}}$",
            super::ids::TOKEN_ID_LEN
        )))
        .build()
}

/// An IP address or `null`.
pub fn ip_or_null(empty_allowed: bool) -> Object {
    nullable(ObjectBuilder::new(), Type::String)
        .pattern(Some(ip_pattern(empty_allowed)))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_built_as_documented() {
        assert!(text_pattern(100, true).contains("{0,98}"));
        assert!(
            date_pattern().starts_with("^(?:(?:[0-9]{4}-") && date_pattern().contains("|29/02/")
        );
        assert!(email_pattern().contains("{1,64}@"));
    }
}
