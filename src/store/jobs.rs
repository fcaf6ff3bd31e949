//! What the scheduled jobs read and write: run records per (job, period), the monthly roll,
//! expiry, expiry-warning claims, and housekeeping. Every change that reports something queues
//! its messages in the same transaction.

use super::outbox::NewMessage;
use super::rows::{TokenRow, TOKEN_COLS};
use super::{audit, sql, Arg, Backend, Result, Store, StoreError, WritePool};
use crate::domain::audit::Stamp;
use crate::domain::model::Token;
use crate::domain::plan::Archive;
use chrono::{DateTime, Utc};

/// The record of one job's run for one period.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct JobRun {
    /// Job name.
    pub job: String,
    /// Period key.
    pub period: String,
    /// `running`, `done` or `failed`.
    pub status: String,
    /// The daemon that holds or held it.
    pub owner: String,
    /// Wall-clock end of the claim (or, when failed, of the wait before a retry).
    pub lease_until: DateTime<Utc>,
    /// Runs started for this period.
    pub attempts: i64,
    /// When the latest started (daemon clock).
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// What it did.
    pub result: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What one step of a keyset walk did (`Store::roll_accounts_step`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollStep {
    /// Where the next step starts; `None` when the walk is done.
    pub next: Option<String>,
    /// Rows the step's range held (each row of the table is in exactly one step's range).
    pub scanned: u64,
    /// Rows it rolled.
    pub rolled: u64,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This daemon runs the period now.
    Claimed,
    /// The period is done already.
    Done(JobRun),
    /// Another run holds it, or a failed run waits before its retry.
    Busy(JobRun),
}

const RUN_COLS: &str =
    "job, period, status, owner, lease_until, attempts, started_at, finished_at, result, error";

impl Store {
    /// Claims `(job, period)` for `owner` until `lease_until` (wall clock). A period never run is
    /// claimed by inserting its row (the primary key lets one daemon win); one whose run crashed
    /// (lease lapsed) or failed (retry wait over, or `retry_failed_now`) is taken over, and a
    /// done one only with `reopen_done` (new policies in the configuration).
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_run(
        &self,
        job: &str,
        period: &str,
        owner: &str,
        now: DateTime<Utc>,
        wall_now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        retry_failed_now: bool,
        reopen_done: bool,
    ) -> Result<Claim> {
        let q = format!("SELECT {RUN_COLS} FROM job_runs WHERE job = $1 AND period = $2");
        with_pool!(self, p => {
            let inserted = sqlx::query(
                "INSERT INTO job_runs (job, period, status, owner, lease_until, attempts, started_at) \
                 VALUES ($1, $2, 'running', $3, $4, 1, $5) ON CONFLICT (job, period) DO NOTHING")
                .bind(job).bind(period).bind(owner).bind(lease_until).bind(now)
                .execute(p).await?.rows_affected();
            if inserted == 1 {
                return Ok(Claim::Claimed);
            }
            let taken = sqlx::query(
                "UPDATE job_runs SET status = 'running', owner = $3, lease_until = $4, \
                 attempts = attempts + 1, started_at = $5, finished_at = NULL, error = NULL \
                 WHERE job = $1 AND period = $2 AND ( \
                   (status = 'running' AND lease_until < $6) \
                   OR (status = 'failed' AND (lease_until < $6 OR $7)) \
                   OR (status = 'done' AND $8))")
                .bind(job).bind(period).bind(owner).bind(lease_until).bind(now).bind(wall_now)
                .bind(retry_failed_now).bind(reopen_done).execute(p).await?.rows_affected();
            if taken == 1 {
                return Ok(Claim::Claimed);
            }
            let run = sqlx::query_as::<_, JobRun>(sql(q)).bind(job).bind(period).fetch_one(p).await?;
            Ok(if run.status == "done" { Claim::Done(run) } else { Claim::Busy(run) })
        })
    }

    /// Extends `owner`'s claim; `false` when it lost it.
    pub async fn renew_run(
        &self,
        job: &str,
        period: &str,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> Result<bool> {
        let n = with_pool!(self, p => sqlx::query(
            "UPDATE job_runs SET lease_until = $4 WHERE job = $1 AND period = $2 AND owner = $3 \
             AND status = 'running'")
            .bind(job).bind(period).bind(owner).bind(lease_until).execute(p).await?.rows_affected());
        Ok(n == 1)
    }

    /// Records the end of `owner`'s run: done with a result, or failed with an error and a
    /// wall-clock time before which no retry starts; with `record`, that audit record too, in the same
    /// transaction.
    pub async fn finish_run(
        &self,
        job: &str,
        period: &str,
        owner: &str,
        now: DateTime<Utc>,
        outcome: std::result::Result<&str, (&str, DateTime<Utc>)>,
        record: Option<&crate::domain::audit::Entry>,
    ) -> Result<()> {
        let (status, result, error, until) = match outcome {
            Ok(r) => ("done", Some(r), None, now),
            Err((e, retry)) => ("failed", None, Some(e), retry),
        };
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "UPDATE job_runs SET status = $4, result = $5, error = $6, finished_at = $7, \
                 lease_until = $8 WHERE job = $1 AND period = $2 AND owner = $3")
                .bind(job).bind(period).bind(owner).bind(status).bind(result).bind(error)
                .bind(now).bind(until).execute(&mut *tx).await?;
            if let Some(e) = record {
                audit::record_audit!(tx, e).map_err(StoreError::from)?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The latest run (by start) of each of `jobs`.
    pub async fn latest_runs(&self, jobs: &[&str]) -> Result<Vec<JobRun>> {
        let q = format!(
            "SELECT {RUN_COLS} FROM job_runs WHERE job = $1 \
             ORDER BY started_at DESC, period DESC LIMIT 1"
        );
        let mut out = Vec::new();
        for job in jobs {
            let row = with_pool!(self, p => sqlx::query_as::<_, JobRun>(sql(q.clone()))
                .bind(job).fetch_optional(p).await?);
            out.extend(row);
        }
        Ok(out)
    }

    /// One run record.
    pub async fn job_run(&self, job: &str, period: &str) -> Result<Option<JobRun>> {
        let q = format!("SELECT {RUN_COLS} FROM job_runs WHERE job = $1 AND period = $2");
        let row = with_pool!(self, p => sqlx::query_as::<_, JobRun>(sql(q))
            .bind(job).bind(period).fetch_optional(p).await?);
        Ok(row)
    }

    // ----- monthly tokens -----

    /// The token `policy` issued for `period`, if any.
    pub async fn policy_token(&self, policy: &str, period: &str) -> Result<Option<Token>> {
        let q = format!(
            "SELECT {TOKEN_COLS} FROM tokens WHERE policy_name = $1 AND policy_period = $2"
        );
        let row = with_pool!(self, p => sqlx::query_as::<_, TokenRow>(sql(q))
            .bind(policy).bind(period).fetch_optional(p).await?);
        row.map(Token::try_from).transpose()
    }

    // ----- monthly reset -----

    /// Rows per step of a keyset walk (the accounts' monthly roll, housekeeping's clearing of
    /// old day counters from the tokens). On
    /// PostgreSQL a step locks its rows, and a call to one of them waits for the step: 2,000
    /// rows keep that to milliseconds. SQLite's ledger decides calls in memory and only its fold
    /// waits for a step, so steps are larger there and the walk takes fewer lock turns against
    /// the folds.
    pub fn walk_step_rows(&self) -> i64 {
        match &*self.backend {
            Backend::Sqlite(_) => 20_000,
            Backend::Postgres(_) => 2_000,
        }
    }

    /// Rolls the next `limit` accounts by id after `after` (`""` to start) into `period`: a
    /// quota counter from before it is archived and restarted. A keyset walk: each step reads
    /// its own id range once, and each write transaction covers `limit` rows only.
    pub async fn roll_accounts_step(
        &self,
        period: &str,
        after: &str,
        limit: i64,
    ) -> Result<RollStep> {
        let lock = "SELECT id FROM accounts WHERE id > $1 AND id <= $2 AND quota_period < $3 \
                    ORDER BY id FOR UPDATE";
        let archive = format!(
            "{} SELECT id, quota_period, quota_used FROM accounts \
             WHERE id > $1 AND id <= $2 AND quota_period < $3 ON CONFLICT DO NOTHING",
            super::usage::archive_insert(Archive::Account)
        );
        let update = "UPDATE accounts SET quota_used = 0, quota_period = $3 \
                      WHERE id > $1 AND id <= $2 AND quota_period < $3";
        self.walk_step("accounts", after, limit, period, lock, &[&archive, update])
            .await
    }

    /// One step of a keyset walk over `table`: bounds the next `limit` ids after `after`, then
    /// in one short write transaction locks the due rows of that range (`lock`, PostgreSQL
    /// only, in id order as the usage writer locks them) and runs `statements`. Each binds
    /// `$1`/`$2` (the range, exclusive/inclusive) and `$3` (`value`); the last one's row count is
    /// what the step did.
    async fn walk_step(
        &self,
        table: &str,
        after: &str,
        limit: i64,
        value: &str,
        lock: &str,
        statements: &[&str],
    ) -> Result<RollStep> {
        let bounds = format!(
            "SELECT COUNT(*), MAX(id) FROM (SELECT id FROM {table} WHERE id > $1 ORDER BY id LIMIT $2) s"
        );
        with_pool!(self, p => {
            let (scanned, upto): (i64, Option<String>) = sqlx::query_as(sql(bounds))
                .bind(after).bind(limit).fetch_one(p).await?;
            let Some(upto) = upto else {
                return Ok(RollStep { next: None, scanned: 0, rolled: 0 });
            };
            let mut tx = p.begin_write().await?;
            if !p.for_update().is_empty() {
                sqlx::query(sql(lock.to_string())).bind(after).bind(&upto).bind(value)
                    .execute(&mut *tx).await?;
            }
            let mut rolled = 0;
            for q in statements {
                rolled = sqlx::query(sql(q.to_string())).bind(after).bind(&upto).bind(value)
                    .execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            Ok(RollStep {
                next: (scanned == limit).then_some(upto),
                scanned: scanned as u64,
                rolled,
            })
        })
    }

    /// Clears the day counters that tokens unused since before `stats_before` still hold in
    /// their rows (the archive keeps those days until housekeeping drops them), for the next
    /// `limit` tokens after `after`: a keyset walk in short transactions, like the monthly roll.
    pub async fn clear_old_days_step(
        &self,
        stats_before: &str,
        after: &str,
        limit: i64,
    ) -> Result<RollStep> {
        self.walk_step(
            "tokens",
            after,
            limit,
            stats_before,
            "SELECT id FROM tokens WHERE id > $1 AND id <= $2 AND stats_day < $3 \
             ORDER BY id FOR UPDATE",
            &["UPDATE tokens SET stats_day = NULL, day_valid = 0, day_cost = 0, day_revoked = 0, \
               day_expired = 0, day_account_inactive = 0, day_ip_not_allowed = 0, \
               day_scope_denied = 0, day_account_quota_exceeded = 0, day_usage_exceeded = 0, \
               day_bad_jwt = 0, day_user_inactive = 0 WHERE id > $1 AND id <= $2 AND stats_day < $3"],
        )
        .await
    }

    /// A token's archived monthly calls.
    pub async fn token_month_archive(&self, token_id: &str) -> Result<Vec<(String, i64)>> {
        let rows = with_pool!(self, p => sqlx::query_as::<_, (String, i64)>(
            "SELECT period, calls FROM token_monthly_usage WHERE token_id = $1 ORDER BY period")
            .bind(token_id).fetch_all(p).await?);
        Ok(rows)
    }

    /// An account's archived monthly quota use.
    pub async fn account_month_archive(&self, account_id: &str) -> Result<Vec<(String, i64)>> {
        let rows = with_pool!(self, p => sqlx::query_as::<_, (String, i64)>(
            "SELECT period, calls FROM account_monthly_usage WHERE account_id = $1 ORDER BY period")
            .bind(account_id).fetch_all(p).await?);
        Ok(rows)
    }

    // ----- expiry -----

    /// Up to `limit` tokens still marked active or exhausted whose expiry has passed at `now`.
    pub async fn tokens_to_expire(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<Token>> {
        let q = format!(
            "SELECT {TOKEN_COLS} FROM tokens WHERE status IN ('active', 'exhausted') \
             AND expires_at IS NOT NULL AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2"
        );
        let rows = with_pool!(self, p => sqlx::query_as::<_, TokenRow>(sql(q))
            .bind(now).bind(limit).fetch_all(p).await?);
        rows.into_iter().map(Token::try_from).collect()
    }

    /// Marks one token expired if it still is due, queuing `messages` with it; `false` when
    /// another daemon (or a change) got there first.
    pub async fn mark_expired(
        &self,
        id: &str,
        now: DateTime<Utc>,
        messages: &[NewMessage],
    ) -> Result<bool> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let account: Option<String> = sqlx::query_scalar(
                "UPDATE tokens SET status = 'expired', updated_at = $2 WHERE id = $1 \
                 AND status IN ('active', 'exhausted') AND expires_at IS NOT NULL AND expires_at <= $2 \
                 RETURNING account_id")
                .bind(id).bind(now).fetch_optional(&mut *tx).await?;
            let mut change = 0;
            let marked = account.is_some();
            if let Some(account) = account {
                queue_messages!(tx, messages, now);
                let changes = crate::domain::audit::set(&[("status", "expired".into())]);
                let entry = Stamp::job("expiry", "token.expire")
                    .done(now, format!("token:{id}"), Some(account), changes);
                audit::record_audit!(tx, &entry).map_err(StoreError::from)?;
                change = p.note_change(&mut tx).await?;
            }
            tx.commit().await?;
            self.observe_change(change);
            Ok(marked)
        })
    }

    // ----- expiry warnings -----

    /// Tokens that may be due a warning: usable, their user (if any) active, expiring after
    /// `now` and by `until`, with the thresholds already claimed for their current expiry.
    pub async fn warning_candidates(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(Token, Vec<u32>)>> {
        let q = format!(
            "SELECT {TOKEN_COLS} FROM tokens WHERE status IN ('active', 'exhausted') \
             AND user_active AND expires_at > $1 AND expires_at <= $2 ORDER BY expires_at, id"
        );
        let (rows, claims) = with_pool!(self, p => {
            let rows = sqlx::query_as::<_, TokenRow>(sql(q)).bind(now).bind(until).fetch_all(p).await?;
            let claims = sqlx::query_as::<_, (String, i64)>(
                "SELECT w.token_id, w.threshold_days FROM token_expiry_warnings w \
                 JOIN tokens t ON t.id = w.token_id AND t.expires_at = w.expires_at \
                 WHERE t.status IN ('active', 'exhausted') AND t.expires_at > $1 AND t.expires_at <= $2")
                .bind(now).bind(until).fetch_all(p).await?;
            (rows, claims)
        });
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let t = Token::try_from(row)?;
            let claimed = claims
                .iter()
                .filter(|(id, _)| *id == t.id)
                .filter_map(|(_, d)| u32::try_from(*d).ok())
                .collect();
            out.push((t, claimed));
        }
        Ok(out)
    }

    /// Claims the `threshold`-day warning of a token for its expiry `expires_at` and queues
    /// `messages` with it, in one transaction — only if the token still has that expiry and is
    /// usable. `false` when it was claimed already (by this or another daemon).
    pub async fn claim_warning(
        &self,
        token_id: &str,
        threshold: u32,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
        messages: &[NewMessage],
    ) -> Result<bool> {
        with_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let n = sqlx::query(
                "INSERT INTO token_expiry_warnings (token_id, threshold_days, expires_at, claimed_at) \
                 SELECT id, $2, expires_at, $4 FROM tokens WHERE id = $1 AND expires_at = $3 \
                 AND status IN ('active', 'exhausted') \
                 ON CONFLICT (token_id, threshold_days, expires_at) DO NOTHING")
                .bind(token_id).bind(i64::from(threshold)).bind(expires_at).bind(now)
                .execute(&mut *tx).await?.rows_affected();
            if n == 1 {
                queue_messages!(tx, messages, now);
            }
            tx.commit().await?;
            Ok(n == 1)
        })
    }

    // ----- housekeeping -----

    /// Drops spent JWT use records, statistics before `stats_before` (a day key), finished
    /// outbox messages created before `outbox_before`, and run records of per-minute jobs
    /// started before `runs_before`. Returns the rows dropped from each.
    pub async fn housekeeping(
        &self,
        now: DateTime<Utc>,
        stats_before: &str,
        outbox_before: DateTime<Utc>,
        runs_before: DateTime<Utc>,
        minute_jobs: &[&str],
    ) -> Result<[u64; 4]> {
        let jobs_list: Vec<Arg> = minute_jobs
            .iter()
            .map(|j| Arg::Str(j.to_string()))
            .collect();
        let in_list = (0..jobs_list.len())
            .map(|i| format!("${}", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let runs_q = format!(
            "DELETE FROM job_runs WHERE status = 'done' AND started_at < $1 AND job IN ({in_list})"
        );
        let out = with_pool!(self, p => {
            let jwt = sqlx::query("DELETE FROM jwt_uses WHERE expires_at < $1")
                .bind(now).execute(p).await?.rows_affected();
            let stats = sqlx::query("DELETE FROM token_stats_daily WHERE day < $1")
                .bind(stats_before).execute(p).await?.rows_affected();
            let mut tx = p.begin().await?;
            sqlx::query(
                "DELETE FROM outbox_attempts WHERE outbox_id IN (SELECT id FROM outbox \
                 WHERE status <> 'pending' AND created_at < $1)")
                .bind(outbox_before).execute(&mut *tx).await?;
            let outbox = sqlx::query("DELETE FROM outbox WHERE status <> 'pending' AND created_at < $1")
                .bind(outbox_before).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            let runs = if jobs_list.is_empty() { 0 } else {
                bind_args!(sqlx::query(sql(runs_q)).bind(runs_before), jobs_list)
                    .execute(p).await?.rows_affected()
            };
            [jwt, stats, outbox, runs]
        });
        Ok(out)
    }
}
