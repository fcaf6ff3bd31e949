//! Statistics export: per token per UTC day, successful calls, the uses they consumed and
//! denials by outcome, as CSV or JSON rows (per token, or summed per account). The API
//! (`/v1/stats.csv`, `/v1/stats`) and the CLI (`stats export`) share it.

use crate::admin::{self, Principal};
use crate::context::Ctx;
use crate::domain::plan::{StatRow, STAT_COLUMNS};
use crate::domain::{limits, ParseError};
use chrono::{Datelike, NaiveDate};

/// Longest range one export may span, in days.
pub const MAX_DAYS: i64 = 3660;

/// A query value, trimmed; empty is absent.
fn given(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|v| !v.is_empty())
}

/// Parses `from`/`to` (UTC dates, inclusive; an empty value is an absent one). By default `to`
/// is today and `from` the 1st of `to`'s month.
pub fn range(
    from: Option<&str>,
    to: Option<&str>,
    today: NaiveDate,
) -> Result<(NaiveDate, NaiveDate), ParseError> {
    let (from, to) = (given(from), given(to));
    let end = match to {
        Some(t) => limits::parse_date(t, "to")?,
        None => today,
    };
    let start = match from {
        Some(f) => limits::parse_date(f, "from")?,
        None => end.with_day(1).unwrap_or(end),
    };
    if end < start {
        // Blame the value the caller wrote: `from` alone after today is its fault.
        return Err(match to {
            Some(_) => ParseError::new("to", "must not be before from"),
            None => ParseError::new("from", "must not be after today when to is not given"),
        });
    }
    let (from, to) = (start, end);
    if (to - from).num_days() >= MAX_DAYS {
        return Err(ParseError::new(
            "to",
            format!("the range may span at most {MAX_DAYS} days"),
        ));
    }
    Ok((from, to))
}

/// The rows a principal may export: the operator every account (or `account`), an account's
/// admin its own account.
pub async fn rows(
    ctx: &Ctx,
    p: &Principal,
    from: NaiveDate,
    to: NaiveDate,
    account: Option<&str>,
) -> Result<Vec<StatRow>, admin::Error> {
    let account = match (p, account) {
        // An account the operator names must exist: a typo is an error, not an empty export.
        (Principal::Operator | Principal::Cli, Some(a)) => {
            Some(admin::find_account(ctx, a).await?.id)
        }
        (Principal::Operator | Principal::Cli, None) => None,
        (_, Some(a)) if Some(a) != p.account_id() => {
            return Err(admin::Error::Forbidden(
                "account_id: only your own account's statistics".into(),
            ))
        }
        (Principal::Token { role, .. }, _) if *role != crate::domain::role::Role::Admin => {
            return Err(admin::Error::Forbidden(
                "statistics need the account secret or an admin token".into(),
            ))
        }
        _ => p.account_id().map(str::to_string),
    };
    Ok(ctx.store.stats(from, to, account.as_deref()).await?)
}

/// The rows summed per account and day (`token_id` empty), in day then account order.
pub fn by_account(rows: &[StatRow]) -> Vec<StatRow> {
    let mut sums: std::collections::BTreeMap<(String, String), StatRow> = Default::default();
    for r in rows {
        let sum = sums
            .entry((r.day.clone(), r.account_id.clone()))
            .or_insert_with(|| StatRow {
                day: r.day.clone(),
                account_id: r.account_id.clone(),
                ..StatRow::default()
            });
        for (c, n) in STAT_COLUMNS.iter().zip(r.counts()) {
            sum.add(c, n);
        }
    }
    sums.into_values().collect()
}

/// One row as JSON: day, token (when per token), account, then every counter by its CSV name.
pub fn to_json(r: &StatRow) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("day".into(), r.day.clone().into());
    if !r.token_id.is_empty() {
        m.insert("token_id".into(), r.token_id.clone().into());
    }
    m.insert("account_id".into(), r.account_id.clone().into());
    for (c, n) in STAT_COLUMNS.iter().zip(r.counts()) {
        m.insert((*c).to_string(), n.into());
    }
    serde_json::Value::Object(m)
}

/// The CSV text: a header row, then one row per token and day.
pub fn to_csv(rows: &[StatRow]) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["day", "token_id", "account_id"];
    header.extend(STAT_COLUMNS);
    w.write_record(&header)?;
    for r in rows {
        let mut rec = vec![r.day.clone(), r.token_id.clone(), r.account_id.clone()];
        rec.extend(r.counts().iter().map(|n| n.to_string()));
        w.write_record(&rec)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_default_to_this_month_and_are_checked() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
        assert_eq!(
            range(None, None, today).unwrap().0,
            NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
        );
        assert_eq!(
            range(Some("2026-11-28"), Some("2026-11-27"), today)
                .unwrap_err()
                .field,
            "to"
        );
        assert_eq!(range(Some("27/11/2026"), None, today).unwrap().0, today);
        assert_eq!(
            range(Some("yesterday"), None, today).unwrap_err().field,
            "from"
        );
        let day = |m, d| NaiveDate::from_ymd_opt(2026, m, d).unwrap();
        // `to` alone: from the 1st of its month.
        assert_eq!(
            range(None, Some("2026-10-31"), today).unwrap(),
            (day(10, 1), day(10, 31))
        );
        // Empty values are absent ones (`?from=&to=`).
        assert_eq!(
            range(Some(""), Some(" "), today).unwrap(),
            (day(11, 1), today)
        );
        // A future `from` with no `to` names `from`.
        let e = range(Some("2026-12-05"), None, today).unwrap_err();
        assert_eq!(e.field, "from", "{e:?}");
    }

    #[test]
    fn per_account_rows_sum_each_counter_of_a_day() {
        let row = |day: &str, token: &str, account: &str, valid, denied| StatRow {
            day: day.into(),
            token_id: token.into(),
            account_id: account.into(),
            valid,
            cost: valid * 2,
            user_inactive: denied,
            ..StatRow::default()
        };
        let sums = by_account(&[
            row("2026-11-27", "A", "acct", 3, 1),
            row("2026-11-27", "B", "acct", 4, 2),
            row("2026-11-27", "C", "other", 1, 0),
            row("2026-11-28", "A", "acct", 5, 0),
        ]);
        let got: Vec<(String, String, i64, i64, i64)> = sums
            .iter()
            .map(|r| {
                (
                    r.day.clone(),
                    r.account_id.clone(),
                    r.valid,
                    r.cost,
                    r.user_inactive,
                )
            })
            .collect();
        let s = |v: &str| v.to_string();
        assert_eq!(
            got,
            [
                (s("2026-11-27"), s("acct"), 7, 14, 3),
                (s("2026-11-27"), s("other"), 1, 2, 0),
                (s("2026-11-28"), s("acct"), 5, 10, 0)
            ]
        );
        let j = to_json(&sums[0]);
        assert!(j.get("token_id").is_none());
        assert_eq!(j["user_inactive"], 3);
    }

    #[test]
    fn csv_has_a_header_and_one_row_per_token_and_day() {
        let rows = vec![StatRow {
            day: "2026-11-27".into(),
            token_id: "AAAAAAAA".into(),
            account_id: "acct".into(),
            valid: 3,
            cost: 5,
            usage_exceeded: 1,
            ..StatRow::default()
        }];
        let csv = to_csv(&rows).unwrap();
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some("day,token_id,account_id,valid,cost,revoked,expired,account_inactive,ip_not_allowed,scope_denied,account_quota_exceeded,usage_exceeded,bad_jwt,user_inactive")
        );
        assert_eq!(
            lines.next(),
            Some("2026-11-27,AAAAAAAA,acct,3,5,0,0,0,0,0,0,1,0,0")
        );
        assert_eq!(lines.next(), None);
    }
}
