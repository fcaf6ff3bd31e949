//! The outbox sender: delivers due messages (email, signed webhook, token file), records each
//! attempt, retries failures with exponential backoff and gives up after
//! `notifications.max_attempts`. A message is leased before sending, so two daemons never send
//! the same message at the same time.

use super::SharedLive;
use crate::clock::SharedClock;
use crate::domain::retry::backoff;
use crate::seal::MasterKey;
use crate::store::{Message, MessageKind, Store};
use chrono::{TimeDelta, Utc};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::{sync::Arc, time::Duration};
use tokio::sync::{Mutex, Notify};

/// How long a sender holds a message it is delivering (wall clock). A delivery that has not
/// finished well within it is abandoned (and retried), so no other sender takes over a message
/// still being sent.
const LEASE: TimeDelta = TimeDelta::seconds(300);
const DELIVERY_DEADLINE: Duration = Duration::from_secs(240);
/// Messages taken per round.
const BATCH: i64 = 32;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Delivered.
    pub sent: usize,
    /// Failed and due again later.
    pub retrying: usize,
    /// Failed for the last time.
    pub failed: usize,
}

/// Delivers the outbox.
pub struct Sender {
    store: Store,
    clock: SharedClock,
    key: Arc<MasterKey>,
    live: SharedLive,
    http: reqwest::Client,
    /// One pass at a time in this process.
    pass_lock: Mutex<()>,
    wake: Notify,
}

/// `sha256=<hex HMAC-SHA256 of body>` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl Sender {
    /// A sender over `store`.
    pub fn new(
        store: Store,
        clock: SharedClock,
        key: Arc<MasterKey>,
        live: SharedLive,
    ) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("tokenwarden/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Arc::new(Sender {
            store,
            clock,
            key,
            live,
            http,
            pass_lock: Mutex::new(()),
            wake: Notify::new(),
        })
    }

    /// Asks the background loop to look at the outbox now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers every message due now, until none is left.
    pub async fn pass(&self) -> anyhow::Result<PassReport> {
        let _one = self.pass_lock.lock().await;
        let mut report = PassReport::default();
        loop {
            let wall = Utc::now();
            let due = self
                .store
                .due_messages(self.clock.now(), wall, BATCH)
                .await?;
            if due.is_empty() {
                break;
            }
            let mut took_any = false;
            for m in due {
                let lease = Utc::now() + LEASE;
                if !self.store.lease_message(&m, wall, lease).await? {
                    continue;
                }
                took_any = true;
                if let Some(reason) = self.stale(&m).await? {
                    self.store
                        .cancel_message(&m.id, self.clock.now(), &reason)
                        .await?;
                    tracing::info!(id = %m.id, topic = %m.topic, %reason, "message cancelled");
                    continue;
                }
                let result = match tokio::time::timeout(DELIVERY_DEADLINE, self.deliver(&m)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "no answer within {} s",
                        DELIVERY_DEADLINE.as_secs()
                    )),
                };
                let now = self.clock.now();
                let live = self.live.get();
                let n = &live.config.notifications;
                let attempts = u32::try_from(m.attempts + 1).unwrap_or(u32::MAX);
                let outcome = match &result {
                    Ok(()) => "sent",
                    Err(_) if attempts < n.max_attempts => "retrying",
                    Err(_) => "failed",
                };
                let retry_at = (outcome == "retrying")
                    .then(|| now + backoff(attempts, n.retry_base, n.retry_max));
                if !self
                    .store
                    .record_attempt(
                        &m.id,
                        lease,
                        now,
                        result.as_ref().err().map(String::as_str),
                        retry_at,
                    )
                    .await?
                {
                    tracing::warn!(id = %m.id, "the message's lease was taken over while it was sent; not recording this attempt");
                    continue;
                }
                metrics::counter!(crate::metrics::DELIVERIES, "kind" => m.kind.as_str(), "outcome" => outcome)
                    .increment(1);
                match &result {
                    Ok(()) => {
                        report.sent += 1;
                        tracing::info!(id = %m.id, kind = m.kind.as_str(), topic = %m.topic, target = %shown_target(&m), "message delivered");
                    }
                    Err(e) => {
                        if outcome == "failed" {
                            report.failed += 1;
                        } else {
                            report.retrying += 1;
                        }
                        tracing::warn!(id = %m.id, kind = m.kind.as_str(), topic = %m.topic, target = %shown_target(&m), attempt = attempts, outcome, error = %e, "message not delivered");
                    }
                }
            }
            if !took_any {
                break;
            }
        }
        Ok(report)
    }

    /// Runs passes when woken and every few seconds, until `shutdown`; then one last pass.
    pub async fn run(self: Arc<Self>, shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut shutdown = shutdown;
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "outbox pass failed; retrying shortly");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.changed() => break,
            }
        }
        if let Err(e) = self.pass().await {
            tracing::warn!(error = %e, "last outbox pass failed; pending messages stay queued");
        }
    }

    /// Why a message queued earlier must not go out any more: its token was revoked, expired
    /// (for a warning, or a new token whose delivery kept failing: a late retry must not put a
    /// dead token where its successor was delivered) or given another expiry since.
    async fn stale(&self, m: &Message) -> anyhow::Result<Option<String>> {
        if !matches!(
            m.topic.as_str(),
            "expiry_warning" | "expired" | "token_issued"
        ) {
            return Ok(None);
        }
        let Some(id) = &m.token_id else {
            return Ok(None);
        };
        let Some(t) = self.store.token(id).await? else {
            return Ok(Some("the token no longer exists".into()));
        };
        if m.topic == "token_issued" {
            use crate::domain::status::TokenStatus;
            return Ok(match t.status_at(self.clock.now()) {
                TokenStatus::Revoked => {
                    Some("the token was revoked before it was delivered".into())
                }
                TokenStatus::Expired => Some("the token expired before it was delivered".into()),
                TokenStatus::Active | TokenStatus::Exhausted => None,
            });
        }
        let queued_expiry = m.context["token"]["expires_at"].as_str();
        let expiry = t
            .expires_at
            .map(|e| e.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let now = self.clock.now();
        Ok(if t.status == crate::domain::status::TokenStatus::Revoked {
            Some("the token was revoked".into())
        } else if queued_expiry != expiry.as_deref() {
            Some("the token's expiry changed".into())
        } else if m.topic == "expiry_warning" && t.expires_at.is_some_and(|e| e <= now) {
            Some("the token expired before the warning could be sent".into())
        } else {
            None
        })
    }

    fn secret(&self, m: &Message) -> Result<Option<String>, String> {
        let Some(sealed) = &m.sealed_secret else {
            return Ok(None);
        };
        let plain = self
            .key
            .open(sealed, &m.id)
            .map_err(|_| "the sealed token cannot be opened with this master key".to_string())?;
        String::from_utf8(plain)
            .map(Some)
            .map_err(|_| "the sealed token is not text".to_string())
    }

    async fn deliver(&self, m: &Message) -> Result<(), String> {
        let live = self.live.get();
        let secret = self.secret(m)?;
        let mut ctx = m.context.clone();
        ctx["secret"] = json!(secret);
        match m.kind {
            MessageKind::Email => {
                let rendered = live.templates.render(&m.topic, &ctx)?;
                live.mailer
                    .send(&live.config.email.from, &m.target, &rendered)
                    .await
            }
            MessageKind::Webhook => {
                let key = match m.signer.as_deref() {
                    Some("notifications") => live.config.notifications.webhook.as_ref(),
                    Some(s) => s.strip_prefix("policy:").and_then(|name| {
                        live.config
                            .policies
                            .iter()
                            .find(|p| p.name == name)
                            .and_then(|p| p.webhook.as_ref())
                    }),
                    None => None,
                }
                .map(|h| h.secret.clone())
                .ok_or_else(|| {
                    format!(
                        "no webhook secret for {} in the configuration now in force",
                        m.signer.as_deref().unwrap_or("this message")
                    )
                })?;
                let body = serde_json::to_vec(&json!({
                    "event": m.topic,
                    "id": m.id,
                    "created_at": m.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "data": ctx,
                }))
                .map_err(|e| e.to_string())?;
                let resp = self
                    .http
                    .post(&m.target)
                    .header("content-type", "application/json")
                    .header("x-tokenwarden-event", &m.topic)
                    .header("x-tokenwarden-delivery", &m.id)
                    .header("x-tokenwarden-signature", signature(key.expose(), &body))
                    .body(body)
                    .send()
                    .await
                    // Without the URL: its query string may carry a key.
                    .map_err(|e| format!("webhook request failed: {}", e.without_url()))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("webhook answered {}", resp.status()))
                }
            }
            MessageKind::File => {
                let Some(secret) = secret else {
                    return Err("a file delivery without its token (already delivered?)".into());
                };
                let path = std::path::PathBuf::from(&m.target);
                tokio::task::spawn_blocking(move || crate::files::write_secret_file(&path, &secret))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{e:#}"))
            }
        }
    }
}

/// The target as logs show it (addresses and paths as they are; URLs without query strings).
fn shown_target(m: &Message) -> String {
    match m.kind {
        MessageKind::Webhook => m.target.split('?').next().unwrap_or("").to_string(),
        _ => m.target.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
