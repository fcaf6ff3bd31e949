//! The audit log's records: who changed what, from where, when, and with what outcome. A record
//! names fields and their old and new values, never a secret, a token or a hash: the changes
//! of accounts, users and tokens are taken from their records by the functions here, which
//! list only the fields a person may see.

use super::model::{Account, Token, User};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

/// Who made a change: the credential's kind and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `operator`, `cli`, `account`, `token`, `job` or `anonymous` (a refused credential).
    pub kind: &'static str,
    /// The account's id, the token's id or the job's name; none for the operator and the CLI.
    pub id: Option<String>,
}

/// Who and from where, and what they did: everything of a record but what the change itself
/// says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Who.
    pub actor: Actor,
    /// From where: the client's IP address, `cli`, or `job:<name>`.
    pub origin: String,
    /// What: `account.create`, `token.revoke`, …
    pub action: &'static str,
}

impl Stamp {
    /// A job's own change: actor and origin name the job.
    pub fn job(name: &str, action: &'static str) -> Stamp {
        Stamp {
            actor: Actor {
                kind: "job",
                id: Some(name.to_string()),
            },
            origin: format!("job:{name}"),
            action,
        }
    }

    /// The record of a change made at `at` to `target` (in `account_id`).
    pub fn done(
        &self,
        at: DateTime<Utc>,
        target: String,
        account_id: Option<String>,
        changes: Map<String, Value>,
    ) -> Entry {
        Entry {
            at,
            actor_kind: self.actor.kind.to_string(),
            actor_id: self.actor.id.clone(),
            origin: self.origin.clone(),
            account_id,
            action: self.action.to_string(),
            target,
            changes: Value::Object(changes),
            outcome: "ok".into(),
            code: None,
        }
    }

    /// The record of an attempt refused with `code`: no changes, no body.
    pub fn refused(
        &self,
        at: DateTime<Utc>,
        target: String,
        account_id: Option<String>,
        code: u32,
    ) -> Entry {
        Entry {
            outcome: "refused".into(),
            code: Some(code),
            ..self.done(at, target, account_id, Map::new())
        }
    }
}

/// One record of the audit log. Records are appended and never updated.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When (the injected clock).
    pub at: DateTime<Utc>,
    /// Who: the credential's kind.
    pub actor_kind: String,
    /// Who: the credential's id.
    pub actor_id: Option<String>,
    /// From where.
    pub origin: String,
    /// The account the change concerns (none for the operator credential or a store-wide job).
    pub account_id: Option<String>,
    /// What.
    pub action: String,
    /// On what: `account:<id>`, `user:<id>`, `token:<id>`, `operator`, `job:<name>`.
    pub target: String,
    /// The fields changed, each `[old, new]`; a creation's old values are null.
    pub changes: Value,
    /// `ok` or `refused`.
    pub outcome: String,
    /// The numeric code a refusal was answered with.
    pub code: Option<u32>,
}

/// Changes naming `fields`, each set from nothing to its value (what a job did, a secret
/// replaced: `("secret", "reset")`).
pub fn set(fields: &[(&str, Value)]) -> Map<String, Value> {
    fields
        .iter()
        .map(|(k, v)| (k.to_string(), json!([null, v])))
        .collect()
}

fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    })
}

/// `[old, new]` of each field whose value differs, in the order given.
fn diff(fields: Vec<(&'static str, Value, Value)>) -> Map<String, Value> {
    fields
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(k, old, new)| (k.to_string(), json!([old, new])))
        .collect()
}

fn account_fields(a: Option<&Account>) -> [Value; 5] {
    match a {
        None => [
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
        Some(a) => [
            json!(a.name),
            json!(a.status.as_str()),
            json!(a.max_tokens),
            json!(a.monthly_quota),
            json!(a.rate_limit),
        ],
    }
}

/// What changed from `before` (none: created) to `after` of an account's settings.
pub fn account_changes(before: Option<&Account>, after: &Account) -> Map<String, Value> {
    let [n0, s0, m0, q0, r0] = account_fields(before);
    let [n1, s1, m1, q1, r1] = account_fields(Some(after));
    diff(vec![
        ("name", n0, n1),
        ("status", s0, s1),
        ("max_tokens", m0, m1),
        ("monthly_quota", q0, q1),
        ("rate_limit", r0, r1),
    ])
}

fn user_fields(u: Option<&User>) -> [Value; 4] {
    match u {
        None => [Value::Null, Value::Null, Value::Null, Value::Null],
        Some(u) => [
            json!(u.email),
            json!(u.role.as_str()),
            json!(u.notify_expiry),
            json!(u.status.as_str()),
        ],
    }
}

/// What changed from `before` (none: created) to `after` of a user.
pub fn user_changes(before: Option<&User>, after: &User) -> Map<String, Value> {
    let [e0, r0, n0, s0] = user_fields(before);
    let [e1, r1, n1, s1] = user_fields(Some(after));
    diff(vec![
        ("email", e0, e1),
        ("role", r0, r1),
        ("notify_expiry", n0, n1),
        ("status", s0, s1),
    ])
}

fn token_fields(t: Option<&Token>) -> Vec<(&'static str, Value)> {
    let Some(t) = t else {
        return Vec::new();
    };
    vec![
        ("name", json!(t.name)),
        ("description", json!(t.description)),
        ("user_id", json!(t.user_id)),
        ("role", json!(t.role.as_str())),
        ("scopes", json!(super::scope::to_strings(&t.scopes))),
        (
            "allowed_ips",
            json!(t
                .allowed_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()),
        ),
        ("usage_limit", json!(t.usage_limit)),
        ("remaining", json!(t.remaining)),
        ("refill_monthly", json!(t.refill_monthly)),
        ("rate_limit", json!(t.rate_limit)),
        ("expires_at", time(t.expires_at)),
        ("status", json!(t.status.as_str())),
        ("jwt", json!(t.jwt_enabled)),
    ]
}

/// What changed from `before` (none: created) to `after` of a token's settings. Its secret is
/// never named, only whether it was replaced (`regenerated`).
pub fn token_changes(before: Option<&Token>, after: &Token) -> Map<String, Value> {
    let old = token_fields(before);
    let new = token_fields(Some(after));
    let mut fields: Vec<(&'static str, Value, Value)> = new
        .into_iter()
        .map(|(k, v)| {
            let o = old
                .iter()
                .find(|(ko, _)| *ko == k)
                .map_or(Value::Null, |(_, o)| o.clone());
            (k, o, v)
        })
        .collect();
    if let Some(b) = before {
        if b.secret_hash != after.secret_hash {
            fields.push(("secret", Value::Null, json!("regenerated")));
        }
    }
    diff(fields)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn changes_name_the_fields_that_differ_and_never_a_secret() {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap();
        let mut before = Token::sample("AbCdEfGh", now);
        before.secret_hash = vec![1; 32];
        before.sealed_secret = Some(vec![9; 40]);
        let mut after = before.clone();
        after.usage_limit = Some(10);
        after.expires_at = Some(now);
        after.secret_hash = vec![2; 32];
        let c = token_changes(Some(&before), &after);
        let keys: Vec<&str> = c.keys().map(String::as_str).collect();
        assert_eq!(keys, ["expires_at", "secret", "usage_limit"]);
        assert_eq!(c["usage_limit"], json!([null, 10]));
        assert_eq!(c["expires_at"], json!([null, "2026-11-27T12:00:00Z"]));
        assert_eq!(c["secret"], json!([null, "regenerated"]));
        let text = Value::Object(c).to_string();
        assert!(!text.contains("[1,1") && !text.contains("[2,2") && !text.contains("[9,9"));
        // A creation lists every field with null before it.
        let created = token_changes(None, &after);
        assert_eq!(created["name"], json!([null, "t"]));
        assert!(!created.contains_key("secret"));
        // Nothing changed: nothing listed.
        assert!(token_changes(Some(&after), &after).is_empty());
    }
}
