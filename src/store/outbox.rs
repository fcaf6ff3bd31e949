//! The durable outbox: messages queued in the transaction of the change they report, leased by
//! one sender at a time, and their delivery attempts.

use super::{sql, Arg, Backend, Result, Store, StoreError};
use chrono::{DateTime, Utc};

/// How a message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// An email to one address.
    Email,
    /// A signed JSON POST.
    Webhook,
    /// A file written with mode 0600.
    File,
}

impl MessageKind {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Email => "email",
            MessageKind::Webhook => "webhook",
            MessageKind::File => "file",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "email" => Ok(MessageKind::Email),
            "webhook" => Ok(MessageKind::Webhook),
            "file" => Ok(MessageKind::File),
            other => Err(StoreError::Other(format!("unknown message kind {other}"))),
        }
    }
}

/// A message to queue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Public id (also the sealing context of its secret).
    pub id: String,
    /// Delivery.
    pub kind: MessageKind,
    /// `expiry_warning`, `expired` or `token_issued`.
    pub topic: String,
    /// Address, URL or path.
    pub target: String,
    /// Whose webhook secret signs it.
    pub signer: Option<String>,
    /// Account it concerns.
    pub account_id: Option<String>,
    /// Token it concerns.
    pub token_id: Option<String>,
    /// What it is rendered from.
    pub context: serde_json::Value,
    /// The plain token sealed under the master key, when the delivery carries it.
    pub sealed_secret: Option<Vec<u8>>,
}

/// A queued, sent or failed message.
#[derive(Debug, Clone)]
pub struct Message {
    /// Public id.
    pub id: String,
    /// Delivery.
    pub kind: MessageKind,
    /// Topic.
    pub topic: String,
    /// Address, URL or path.
    pub target: String,
    /// Whose webhook secret signs it.
    pub signer: Option<String>,
    /// Account.
    pub account_id: Option<String>,
    /// Token.
    pub token_id: Option<String>,
    /// Render context.
    pub context: serde_json::Value,
    /// Sealed plain token (erased once sent or failed).
    pub sealed_secret: Option<Vec<u8>>,
    /// `pending`, `sent`, `failed` or `cancelled` (a warning whose token was revoked, expired or
    /// given another expiry before it went out).
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt (pending only).
    pub next_attempt_at: DateTime<Utc>,
    /// Error of the last failed attempt.
    pub last_error: Option<String>,
    /// Queued at.
    pub created_at: DateTime<Utc>,
    /// Delivered at.
    pub sent_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: String,
    kind: String,
    topic: String,
    target: String,
    signer: Option<String>,
    account_id: Option<String>,
    token_id: Option<String>,
    context: String,
    sealed_secret: Option<Vec<u8>>,
    status: String,
    attempts: i64,
    next_attempt_at: DateTime<Utc>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
}

const COLS: &str =
    "id, kind, topic, target, signer, account_id, token_id, context, sealed_secret, \
     status, attempts, next_attempt_at, last_error, created_at, sent_at";

impl TryFrom<MessageRow> for Message {
    type Error = StoreError;
    fn try_from(r: MessageRow) -> Result<Self> {
        Ok(Message {
            kind: MessageKind::parse(&r.kind)?,
            context: serde_json::from_str(&r.context)
                .map_err(|e| StoreError::Other(format!("stored message context: {e}")))?,
            id: r.id,
            topic: r.topic,
            target: r.target,
            signer: r.signer,
            account_id: r.account_id,
            token_id: r.token_id,
            sealed_secret: r.sealed_secret,
            status: r.status,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            last_error: r.last_error,
            created_at: r.created_at,
            sent_at: r.sent_at,
        })
    }
}

/// The insert of one message, due at once, for running inside another write's transaction.
pub(super) fn insert(m: &NewMessage, now: DateTime<Utc>) -> (String, Vec<Arg>) {
    (
        "INSERT INTO outbox (id, kind, topic, target, signer, account_id, token_id, context, \
         sealed_secret, status, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 0, $10, $10)"
            .to_string(),
        vec![
            Arg::Str(m.id.clone()),
            Arg::Str(m.kind.as_str().into()),
            Arg::Str(m.topic.clone()),
            Arg::Str(m.target.clone()),
            Arg::OptStr(m.signer.clone()),
            Arg::OptStr(m.account_id.clone()),
            Arg::OptStr(m.token_id.clone()),
            Arg::Str(m.context.to_string()),
            Arg::OptBytes(m.sealed_secret.clone()),
            Arg::Time(now),
        ],
    )
}

/// Filter of the outbox listing.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// `pending`, `sent` or `failed`.
    pub status: Option<String>,
    /// One account's messages.
    pub account_id: Option<String>,
    /// One token's messages.
    pub token_id: Option<String>,
    /// Most rows.
    pub limit: i64,
}

impl Store {
    /// Queues messages on their own (outside another change).
    pub async fn enqueue(&self, messages: &[NewMessage], now: DateTime<Utc>) -> Result<()> {
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            queue_messages!(tx, messages, now);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Pending messages due at `now` that no sender holds at `wall_now`, oldest first.
    pub async fn due_messages(
        &self,
        now: DateTime<Utc>,
        wall_now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Message>> {
        let q = format!(
            "SELECT {COLS} FROM outbox WHERE status = 'pending' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $2) ORDER BY next_attempt_at, id LIMIT $3"
        );
        let rows = with_pool!(self, p => sqlx::query_as::<_, MessageRow>(sql(q))
            .bind(now).bind(wall_now).bind(limit).fetch_all(p).await?);
        rows.into_iter().map(Message::try_from).collect()
    }

    /// Takes message `m`, as `due_messages` read it, for sending until `lease_until` (wall
    /// clock); `false` when another sender has it, it is no longer pending, or another sender
    /// has made an attempt since it was read (only an attempt moves `next_attempt_at`, so an
    /// unchanged count means it is still due, and the count the caller records is the store's).
    pub async fn lease_message(
        &self,
        m: &Message,
        wall_now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool> {
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE outbox SET lease_until = $3 WHERE id = $1 AND status = 'pending' \
             AND (lease_until IS NULL OR lease_until < $2) AND attempts = $4")
            .bind(&m.id).bind(wall_now).bind(lease_until).bind(m.attempts)
            .execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Records one delivery attempt of a message this sender leased until `lease`; `false` (and
    /// nothing recorded) when another sender took the lease over meanwhile. `error = None`
    /// marks it sent; otherwise it is retried at `retry_at`, or marked failed when that is
    /// `None`. A sent or failed message's sealed secret is erased.
    pub async fn record_attempt(
        &self,
        id: &str,
        lease: DateTime<Utc>,
        at: DateTime<Utc>,
        error: Option<&str>,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let (status, next) = match (error, retry_at) {
            (None, _) => ("sent", at),
            (Some(_), Some(t)) => ("pending", t),
            (Some(_), None) => ("failed", at),
        };
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let attempt: Option<i64> = sqlx::query_scalar(
                "UPDATE outbox SET attempts = attempts + 1, status = $2, next_attempt_at = $3, \
                 last_error = COALESCE($4, last_error), lease_until = NULL, \
                 sent_at = CASE WHEN $2 = 'sent' THEN $5 ELSE sent_at END, \
                 sealed_secret = CASE WHEN $2 = 'pending' THEN sealed_secret ELSE NULL END \
                 WHERE id = $1 AND lease_until = $6 RETURNING attempts")
                .bind(id).bind(status).bind(next).bind(error).bind(at).bind(lease)
                .fetch_optional(&mut *tx).await?;
            let Some(attempt) = attempt else {
                return Ok(false);
            };
            sqlx::query("INSERT INTO outbox_attempts (outbox_id, attempt, at, error) VALUES ($1, $2, $3, $4)")
                .bind(id).bind(attempt).bind(at).bind(error).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Cancels a pending message that must no longer be sent, saying why.
    pub async fn cancel_message(&self, id: &str, at: DateTime<Utc>, reason: &str) -> Result<()> {
        with_pool!(self, p => sqlx::query(
            "UPDATE outbox SET status = 'cancelled', last_error = $3, lease_until = NULL, \
             sealed_secret = NULL, next_attempt_at = $2 WHERE id = $1 AND status = 'pending'")
            .bind(id).bind(at).bind(reason).execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Messages matching `f`, newest first.
    pub async fn list_messages(&self, f: &MessageFilter) -> Result<Vec<Message>> {
        let mut args = Vec::new();
        let mut w = Vec::new();
        for (col, v) in [
            ("status", &f.status),
            ("account_id", &f.account_id),
            ("token_id", &f.token_id),
        ] {
            if let Some(v) = v {
                args.push(Arg::Str(v.clone()));
                w.push(format!("{col} = ${}", args.len()));
            }
        }
        args.push(Arg::I64(f.limit));
        let where_sql = if w.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", w.join(" AND "))
        };
        let q = format!(
            "SELECT {COLS} FROM outbox {where_sql} ORDER BY created_at DESC, id DESC LIMIT ${}",
            args.len()
        );
        let rows = with_pool!(self, p => {
            bind_args!(sqlx::query_as::<_, MessageRow>(sql(q)), args).fetch_all(p).await?
        });
        rows.into_iter().map(Message::try_from).collect()
    }

    /// Each attempt's time and error (`None` = delivered), for one message.
    pub async fn message_attempts(
        &self,
        id: &str,
    ) -> Result<Vec<(i64, DateTime<Utc>, Option<String>)>> {
        let rows = with_pool!(self, p => sqlx::query_as::<_, (i64, DateTime<Utc>, Option<String>)>(
            "SELECT attempt, at, error FROM outbox_attempts WHERE outbox_id = $1 ORDER BY attempt")
            .bind(id).fetch_all(p).await?);
        Ok(rows)
    }

    /// Messages by status, for `/metrics`.
    pub async fn outbox_counts(&self) -> Result<Vec<(String, i64)>> {
        let rows = with_pool!(self, p => sqlx::query_as::<_, (String, i64)>(
            "SELECT status, COUNT(*) FROM outbox GROUP BY status").fetch_all(p).await?);
        Ok(rows)
    }
}
