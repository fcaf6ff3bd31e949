//! The work of each job for one period. Each is idempotent: run twice, or completed after a
//! crash half way, it does each thing once (unique keys and conditional updates in the store).

use super::Job;
use crate::config::Policy;
use crate::context::Ctx;
use crate::domain::model::Account;
use crate::domain::{
    credential,
    period::{month_start, next_month_start},
    status::AccountStatus,
    warnings,
};
use crate::notify::{self, Live};
use crate::store::{NewToken, StoreError};
use chrono::TimeDelta;
use std::collections::HashMap;

/// Rows per transaction of the bulk jobs.
const BATCH: i64 = 500;

/// Runs `job` for `period`; `Ok` carries a summary for people, `Err` the reason it must be
/// retried.
pub(super) async fn run(job: Job, period: &str, ctx: &Ctx, live: &Live) -> Result<String, String> {
    let r = match job {
        Job::MonthlyReset => monthly_reset(ctx, period).await,
        Job::MonthlyTokens => return monthly_tokens(ctx, live, period).await,
        Job::Expiry => expiry(ctx, live).await,
        Job::ExpiryWarnings => expiry_warnings(ctx, live).await,
        Job::Housekeeping => housekeeping(ctx, live).await,
    };
    r.map_err(|e| e.to_string())
}

/// Rolls the accounts' quota counters into `period`, archiving the month before. Tokens are
/// not rewritten: a token's counter from an earlier month already reads as zero and its refill
/// as applied from the month's first instant (`TokenState::calls_this_month`,
/// `Token::remaining_at`), and the first call or change in the month writes both, so the work
/// here does not grow with the tokens.
async fn monthly_reset(ctx: &Ctx, period: &str) -> Result<String, StoreError> {
    // The counters archived and rolled over include every call answered so far.
    ctx.usage.settle().await?;
    let (accounts, _) = roll_all(period, |after| async move {
        ctx.store
            .roll_accounts_step(period, &after, ctx.store.walk_step_rows())
            .await
    })
    .await?;
    Ok(format!(
        "rolled {accounts} accounts into {period}; tokens roll as they are next used or changed"
    ))
}

/// Walks a table with `step` from its first id to its last; returns the rows changed and the
/// rows read. `what` names the walk in the log.
pub(super) async fn roll_all<F, Fut>(what: &str, mut step: F) -> Result<(u64, u64), StoreError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<crate::store::RollStep, StoreError>>,
{
    let (mut rolled, mut scanned) = (0, 0);
    let mut after = String::new();
    loop {
        let s = step(after).await?;
        rolled += s.rolled;
        scanned += s.scanned;
        tracing::debug!(%what, rolled, scanned, "keyset walk step");
        match s.next {
            Some(next) => after = next,
            None => return Ok((rolled, scanned)),
        }
        // Lets the usage writer and the fold in between two steps.
        tokio::task::yield_now().await;
    }
}

/// Finds a policy's account by id, then by name.
async fn policy_account(ctx: &Ctx, p: &Policy) -> Result<Option<Account>, StoreError> {
    if let Some(a) = ctx.store.account(&p.account).await? {
        return Ok(Some(a));
    }
    ctx.store.account_by_name(&p.account).await
}

async fn monthly_tokens(ctx: &Ctx, live: &Live, period: &str) -> Result<String, String> {
    let config = &live.config;
    let Some(start) = month_start(period) else {
        return Err(format!("`{period}` is not a month"));
    };
    let expires_at = next_month_start(start);
    let now = ctx.clock.now();
    let (mut issued, mut had, mut skipped) = (0, 0, 0);
    let mut errors = Vec::new();
    for p in &config.policies {
        let fail = |e: String| format!("policy {}: {e}", p.name);
        let account = match policy_account(ctx, p).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                errors.push(fail(format!("no account named `{}`", p.account)));
                continue;
            }
            Err(e) => {
                errors.push(fail(e.to_string()));
                continue;
            }
        };
        if account.status == AccountStatus::Inactive {
            tracing::info!(policy = %p.name, account = %account.name, "account inactive; no token issued");
            skipped += 1;
            continue;
        }
        if expires_at <= now {
            // A month already over gets no token: it would be born expired.
            skipped += 1;
            continue;
        }
        match ctx.store.policy_token(&p.name, period).await {
            Ok(Some(_)) => {
                had += 1;
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                errors.push(fail(e.to_string()));
                continue;
            }
        }
        let id = credential::new_token_ids(1).remove(0);
        let plain = credential::new_token(&config.tokens.prefix, &id);
        let new = NewToken {
            id: id.clone(),
            account_id: account.id.clone(),
            user_id: None,
            user_role: None,
            issued_by: format!("policy:{}", p.name),
            policy: Some((p.name.clone(), period.to_string())),
            name: p.token_name_for(period),
            description: p.description.clone(),
            role: p.role,
            scopes: p.scopes.clone(),
            allowed_ips: p.allowed_ips.clone(),
            rate_limit: p.rate_limit,
            usage_limit: p.usage_limit,
            refill_monthly: None,
            expires_at: Some(expires_at),
            jwt_enabled: false,
            sealed_secret: None,
            secret_hash: plain.hash(),
        };
        let messages =
            notify::issued_messages(config, &ctx.master_key, p, period, &new, &account, &plain);
        let revoke = p.revoke_previous.then_some((p.name.as_str(), period));
        match ctx
            .store
            .create_tokens_with(
                &account.id,
                std::slice::from_ref(&new),
                revoke,
                &messages,
                now,
                &crate::domain::audit::Stamp::job("monthly_tokens", "policy.issue"),
            )
            .await
        {
            Ok(_) => {
                issued += 1;
                tracing::info!(policy = %p.name, account = %account.name, token_id = %id, %period, deliveries = messages.len(), "monthly token issued");
            }
            // Another daemon issued it between the check and the insert.
            Err(StoreError::Conflict(_)) => had += 1,
            Err(e) => errors.push(fail(e.to_string())),
        }
    }
    let summary = format!("{issued} issued, {had} already issued, {skipped} skipped for {period}");
    if errors.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}; {}", errors.join("; ")))
    }
}

/// Accounts and their users, loaded once per run.
#[derive(Default)]
struct People(HashMap<String, (Account, Vec<crate::domain::model::User>)>);

impl People {
    async fn of(
        &mut self,
        ctx: &Ctx,
        account_id: &str,
    ) -> Result<Option<&(Account, Vec<crate::domain::model::User>)>, StoreError> {
        if !self.0.contains_key(account_id) {
            let Some(a) = ctx.store.account(account_id).await? else {
                return Ok(None);
            };
            let users = ctx.store.list_users(account_id).await?;
            self.0.insert(account_id.to_string(), (a, users));
        }
        Ok(self.0.get(account_id))
    }
}

async fn expiry(ctx: &Ctx, live: &Live) -> Result<String, StoreError> {
    let config = &live.config;
    let now = ctx.clock.now();
    let mut people = People::default();
    let (mut expired, mut notices) = (0, 0);
    loop {
        let due = ctx.store.tokens_to_expire(now, BATCH).await?;
        if due.is_empty() {
            break;
        }
        let mut progressed = false;
        for t in due {
            // Nothing is sent about the token of an inactive or deleted user.
            let messages = match (
                config.notifications.expired_notice && t.user_active,
                people.of(ctx, &t.account_id).await?,
            ) {
                (true, Some((account, users))) => {
                    let to = notify::expiry_recipients(&t, users);
                    notify::expiry_messages(config, "expired", &t, account, &to, None, now)
                }
                _ => Vec::new(),
            };
            if ctx.store.mark_expired(&t.id, now, &messages).await? {
                expired += 1;
                notices += messages.len();
            }
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    Ok(format!(
        "{expired} tokens expired, {notices} notices queued"
    ))
}

async fn expiry_warnings(ctx: &Ctx, live: &Live) -> Result<String, StoreError> {
    let config = &live.config;
    let days = &config.notifications.expiry_warning_days;
    let Some(&max) = days.iter().max() else {
        return Ok("no warning thresholds configured".into());
    };
    let now = ctx.clock.now();
    let mut people = People::default();
    let (mut warned, mut queued) = (0, 0);
    for (t, claimed) in ctx
        .store
        .warning_candidates(now, now + TimeDelta::days(i64::from(max)))
        .await?
    {
        let Some(expires_at) = t.expires_at else {
            continue;
        };
        let Some(n) = warnings::due_threshold(days, t.created_at, expires_at, now, &claimed) else {
            continue;
        };
        let messages = match people.of(ctx, &t.account_id).await? {
            Some((account, users)) => {
                let to = notify::expiry_recipients(&t, users);
                notify::expiry_messages(config, "expiry_warning", &t, account, &to, Some(n), now)
            }
            None => Vec::new(),
        };
        if ctx
            .store
            .claim_warning(&t.id, n, expires_at, now, &messages)
            .await?
        {
            warned += 1;
            queued += messages.len();
            tracing::info!(token_id = %t.id, threshold_days = n, recipients = messages.len(), "expiry warning queued");
        }
    }
    Ok(format!("{warned} tokens warned, {queued} messages queued"))
}

async fn housekeeping(ctx: &Ctx, live: &Live) -> Result<String, StoreError> {
    let j = &live.config.jobs;
    let now = ctx.clock.now();
    let stats_before =
        crate::domain::period::day_key(now - TimeDelta::days(j.stats_retention_days));
    let outbox_before = now - TimeDelta::days(j.outbox_retention_days);
    // Per-minute run records are only kept for a week; monthly and daily ones stay.
    let runs_before = now - TimeDelta::days(7);
    let (cleared, _) = roll_all(&stats_before, |after| {
        let stats_before = &stats_before;
        async move {
            ctx.store
                .clear_old_days_step(stats_before, &after, ctx.store.walk_step_rows())
                .await
        }
    })
    .await?;
    let [jwt, stats, outbox, runs] = ctx
        .store
        .housekeeping(
            now,
            &stats_before,
            outbox_before,
            runs_before,
            &[Job::Expiry.as_str(), Job::ExpiryWarnings.as_str()],
        )
        .await?;
    let audit_before = now - TimeDelta::days(live.config.audit_retention_days);
    let audit = ctx.store.expire_audit(audit_before).await?;
    Ok(format!(
        "dropped {jwt} JWT use records, {stats} statistics rows, {outbox} messages, {runs} run records, {audit} audit records; cleared {cleared} tokens' old day counters"
    ))
}
