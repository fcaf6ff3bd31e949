//! The audit log: records appended in the transaction of the change they describe
//! (`record_audit!`), refused attempts appended on their own, the filtered listing, and the
//! deletion of records past their retention. No statement here updates a record.

use super::{sql, Arg, Backend, Result, Store, StoreError, WritePool};
use crate::domain::audit::Entry;
use chrono::{DateTime, Utc};

/// Appends one record.
pub(crate) const INSERT: &str = "INSERT INTO audit_log (at, actor_kind, actor_id, origin, \
     account_id, action, target, changes, outcome, code) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Appends `entry` inside the open transaction `tx`, so it commits (or not) with its change.
/// Evaluates to the statement's `Result<_, sqlx::Error>`.
macro_rules! record_audit {
    ($tx:expr, $entry:expr) => {{
        let e: &$crate::domain::audit::Entry = $entry;
        sqlx::query($crate::store::audit::INSERT)
            .bind(e.at)
            .bind(&e.actor_kind)
            .bind(&e.actor_id)
            .bind(&e.origin)
            .bind(&e.account_id)
            .bind(&e.action)
            .bind(&e.target)
            .bind(e.changes.to_string())
            .bind(&e.outcome)
            .bind(e.code.map(i64::from))
            .execute(&mut *$tx)
            .await
    }};
}
pub(crate) use record_audit;

/// Which records a listing returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only those about this account.
    pub account_id: Option<String>,
    /// Only this actor: a kind (`operator`, `cli`, `job`, …) or `kind:id` (`token:AbCd1234`).
    pub actor: Option<String>,
    /// Only this target (`token:AbCd1234`).
    pub target: Option<String>,
    /// Only this action (`token.revoke`).
    pub action: Option<String>,
    /// Only this outcome (`ok`, `refused`).
    pub outcome: Option<String>,
    /// From this instant on.
    pub from: Option<DateTime<Utc>>,
    /// Before this instant.
    pub to: Option<DateTime<Utc>>,
    /// Older than the record with this id (the next page).
    pub before_id: Option<i64>,
    /// Page size.
    pub limit: i64,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: DateTime<Utc>,
    actor_kind: String,
    actor_id: Option<String>,
    origin: String,
    account_id: Option<String>,
    action: String,
    target: String,
    changes: String,
    outcome: String,
    code: Option<i64>,
}

impl TryFrom<AuditRow> for (i64, Entry) {
    type Error = StoreError;
    fn try_from(r: AuditRow) -> Result<Self> {
        let changes = serde_json::from_str(&r.changes)
            .map_err(|e| StoreError::Other(format!("stored audit changes are unreadable: {e}")))?;
        Ok((
            r.id,
            Entry {
                at: r.at,
                actor_kind: r.actor_kind,
                actor_id: r.actor_id,
                origin: r.origin,
                account_id: r.account_id,
                action: r.action,
                target: r.target,
                changes,
                outcome: r.outcome,
                code: r.code.and_then(|c| u32::try_from(c).ok()),
            },
        ))
    }
}

impl Store {
    /// Appends one record on its own (a refused attempt, which changes nothing else).
    pub async fn append_audit(&self, entry: &Entry) -> Result<()> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            record_audit!(tx, entry)?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Records matching `f`, newest first, with their ids (the page cursor).
    pub async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<(i64, Entry)>> {
        let mut args: Vec<Arg> = Vec::new();
        let mut next = |a: Arg| {
            args.push(a);
            format!("${}", args.len())
        };
        let mut w: Vec<String> = Vec::new();
        if let Some(a) = &f.account_id {
            w.push(format!("account_id = {}", next(Arg::Str(a.clone()))));
        }
        if let Some(a) = &f.actor {
            match a.split_once(':') {
                Some((kind, id)) => {
                    w.push(format!("actor_kind = {}", next(Arg::Str(kind.into()))));
                    w.push(format!("actor_id = {}", next(Arg::Str(id.into()))));
                }
                None => w.push(format!("actor_kind = {}", next(Arg::Str(a.clone())))),
            }
        }
        if let Some(t) = &f.target {
            w.push(format!("target = {}", next(Arg::Str(t.clone()))));
        }
        if let Some(a) = &f.action {
            w.push(format!("action = {}", next(Arg::Str(a.clone()))));
        }
        if let Some(o) = &f.outcome {
            w.push(format!("outcome = {}", next(Arg::Str(o.clone()))));
        }
        if let Some(t) = f.from {
            w.push(format!("at >= {}", next(Arg::Time(t))));
        }
        if let Some(t) = f.to {
            w.push(format!("at < {}", next(Arg::Time(t))));
        }
        if let Some(id) = f.before_id {
            w.push(format!("id < {}", next(Arg::I64(id))));
        }
        let limit = next(Arg::I64(f.limit));
        let filter = if w.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", w.join(" AND "))
        };
        let q = format!(
            "SELECT id, at, actor_kind, actor_id, origin, account_id, action, target, changes, \
             outcome, code FROM audit_log {filter} ORDER BY id DESC LIMIT {limit}"
        );
        let rows = with_pool!(self, p => {
            bind_args!(sqlx::query_as::<_, AuditRow>(sql(q)), args).fetch_all(p).await?
        });
        rows.into_iter().map(TryFrom::try_from).collect()
    }

    /// Deletes the records from before `before`; returns how many.
    pub async fn expire_audit(&self, before: DateTime<Utc>) -> Result<u64> {
        let n = with_pool!(self, p => sqlx::query("DELETE FROM audit_log WHERE at < $1")
            .bind(before).execute(p).await?.rows_affected());
        Ok(n)
    }
}
