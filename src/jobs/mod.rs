//! The scheduled jobs of the daemon: monthly quota tokens, expiry, the monthly reset, expiry
//! warnings and housekeeping.
//!
//! Every job works in *periods* taken from the injected clock (a month, a day or a minute).
//! Each (job, period) is claimed in the store before it runs, so two daemons never run the same
//! period, and marked done when finished. A period with no done record is run at the next
//! wake-up — the first one being the daemon's start — which is how a period missed while the
//! daemon was down runs once, and a run that crashed half way is completed (each job's work is
//! idempotent). tokio-cron-scheduler only wakes the runner; it never decides what is due.

mod scheduler;
mod work;

pub use scheduler::start_scheduler;

use crate::context::Ctx;
use crate::domain::period::{day_key, minute_key, month_key, month_start};
use crate::notify::{sender::Sender, SharedLive};
use crate::store::{Claim, JobRun};
use chrono::{DateTime, Utc};
use std::{str::FromStr, sync::Arc};
use tokio::sync::Mutex;

/// A job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    /// Monthly reset: counters archived and restarted, refills applied.
    MonthlyReset,
    /// One token per policy per month.
    MonthlyTokens,
    /// Marks expired tokens, with the optional notice.
    Expiry,
    /// The N-day expiry warnings.
    ExpiryWarnings,
    /// Drops spent JWT records, old statistics and delivered messages.
    Housekeeping,
}

/// Every job, in the order a wake-up runs them (the reset before issuance; expiry before
/// warnings).
pub const ALL: [Job; 5] = [
    Job::MonthlyReset,
    Job::MonthlyTokens,
    Job::Expiry,
    Job::ExpiryWarnings,
    Job::Housekeeping,
];

/// The jobs a wake-up runs side by side, each list in order: no job waits on another list's
/// (a long monthly reset does not hold back expiry, warnings or housekeeping).
const CHAINS: [&[Job]; 3] = [
    &[Job::MonthlyReset, Job::MonthlyTokens],
    &[Job::Expiry, Job::ExpiryWarnings],
    &[Job::Housekeeping],
];

impl Job {
    /// Its place in `ALL`.
    fn index(self) -> usize {
        ALL.iter().position(|j| *j == self).unwrap_or(0)
    }

    /// Its name in the API and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Job::MonthlyReset => "monthly_reset",
            Job::MonthlyTokens => "monthly_tokens",
            Job::Expiry => "expiry",
            Job::ExpiryWarnings => "expiry_warnings",
            Job::Housekeeping => "housekeeping",
        }
    }

    /// Its schedule (tokio-cron-scheduler syntax: seconds first, UTC).
    pub fn schedule(self) -> &'static str {
        match self {
            Job::MonthlyReset | Job::MonthlyTokens => "0 0 0 1 * *",
            Job::Expiry | Job::ExpiryWarnings => "0 * * * * *",
            Job::Housekeeping => "0 0 0 * * *",
        }
    }

    /// What it does, for people.
    pub fn description(self) -> &'static str {
        match self {
            Job::MonthlyReset => "archive and restart the accounts' monthly quotas; tokens' monthly counters and refills roll from the month's first instant without a rewrite (00:00 UTC on the 1st)",
            Job::MonthlyTokens => "issue each [[policy]]'s token for the month and deliver it (00:00 UTC on the 1st)",
            Job::Expiry => "mark tokens past their expiry as expired and send the optional notice (every minute)",
            Job::ExpiryWarnings => "queue the expiry warnings that are due (every minute)",
            Job::Housekeeping => "drop spent JWT use records, old statistics, delivered messages and old run records (daily)",
        }
    }

    /// The period that is due at `now`.
    pub fn period_at(self, now: DateTime<Utc>) -> String {
        match self {
            Job::MonthlyReset | Job::MonthlyTokens => month_key(now),
            Job::Expiry | Job::ExpiryWarnings => minute_key(now),
            Job::Housekeeping => day_key(now),
        }
    }

    /// Whether runs of this job on demand may name a period (the monthly ones: `YYYY-MM`).
    pub fn takes_period(self) -> bool {
        matches!(self, Job::MonthlyReset | Job::MonthlyTokens)
    }

    /// The next time its schedule fires after `now`.
    pub fn next_run(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(self.schedule())
            .ok()?;
        cron.find_next_occurrence(&now, false).ok()
    }
}

impl FromStr for Job {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ALL.into_iter().find(|j| j.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = ALL.iter().map(|j| j.as_str()).collect();
            format!("unknown job `{s}`; the jobs are {}", names.join(", "))
        })
    }
}

/// Checks that every policy's account exists in the store: a policy naming an unknown account
/// stops the start (and fails `check-config`) with its file, key and reason.
pub async fn check_policy_accounts(
    store: &crate::store::Store,
    policies: &[crate::config::Policy],
) -> Result<(), crate::config::ConfigErrors> {
    let mut errs = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        let found = match store.account(&p.account).await {
            Ok(Some(_)) => true,
            Ok(None) => matches!(store.account_by_name(&p.account).await, Ok(Some(_))),
            Err(_) => true, // an unreachable store is reported by whoever opened it
        };
        if !found {
            errs.push(crate::config::ConfigError {
                source: p.source.clone(),
                key: format!("policy[{i}].account"),
                reason: format!(
                    "no account named `{}` (or with that id) in the store; create it first \
                     (tokenwarden account create {})",
                    p.account, p.account
                ),
            });
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(crate::config::ConfigErrors(errs))
    }
}

/// How a request to run a period ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// This call ran it to the end; what it did.
    Ran(String),
    /// It had run before; nothing was done again.
    AlreadyDone(JobRun),
    /// Another run holds it (or a failed one waits before its retry).
    Busy(JobRun),
    /// This call ran it and it failed; it will be retried.
    Failed(String),
}

impl RunOutcome {
    /// Its word in answers and the audit log.
    pub fn word(&self) -> &'static str {
        match self {
            RunOutcome::Ran(_) => "ran",
            RunOutcome::AlreadyDone(_) => "already_done",
            RunOutcome::Busy(_) => "busy",
            RunOutcome::Failed(_) => "failed",
        }
    }
}

/// One job period's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The job.
    pub job: Job,
    /// The period.
    pub period: String,
    /// What happened.
    pub outcome: RunOutcome,
}

/// Why a run on demand was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad period for this job.
    #[error("{0}")]
    BadPeriod(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Runs jobs for periods: each job one period at a time in this process, different jobs side
/// by side.
pub struct Runner {
    ctx: Ctx,
    live: SharedLive,
    sender: Arc<Sender>,
    owner: String,
    /// One per job, in `ALL` order: held while a period of that job runs here.
    running: [Mutex<()>; 5],
}

impl Runner {
    /// A runner for this daemon (or CLI invocation).
    pub fn new(ctx: Ctx, live: SharedLive, sender: Arc<Sender>) -> Arc<Runner> {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "host".into());
        let owner = format!(
            "{host}:{}:{}",
            std::process::id(),
            crate::domain::ids::random_id(6)
        );
        Arc::new(Runner {
            ctx,
            live,
            sender,
            owner,
            running: Default::default(),
        })
    }

    /// The live settings.
    pub fn live(&self) -> &SharedLive {
        &self.live
    }

    /// The outbox sender.
    pub fn sender(&self) -> &Arc<Sender> {
        &self.sender
    }

    /// Runs every job whose period due now has not been done: every scheduler wake-up. The
    /// chains of jobs run side by side; a job still running here from an earlier wake-up is
    /// waited for by its own chain only.
    pub async fn run_due(&self) -> Vec<RunReport> {
        self.run_due_of(&ALL).await
    }

    /// The start-up catch-up: every period that came due while no daemon ran, except the daily
    /// housekeeping, which never holds up serving (`run_due` takes it once the port is open).
    pub async fn catch_up(&self) -> Vec<RunReport> {
        self.run_due_of(&[
            Job::MonthlyReset,
            Job::MonthlyTokens,
            Job::Expiry,
            Job::ExpiryWarnings,
        ])
        .await
    }

    async fn run_due_of(&self, jobs: &[Job]) -> Vec<RunReport> {
        let now = self.ctx.clock.now();
        let chains = CHAINS.map(|chain| async move {
            let mut out = Vec::new();
            for &job in chain.iter().filter(|j| jobs.contains(j)) {
                let period = job.period_at(now);
                match self.run_period(job, &period, false, false).await {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        tracing::warn!(job = job.as_str(), %period, error = %e, "job run could not start");
                    }
                }
            }
            out
        });
        let [a, b, c] = chains;
        let (a, b, c) = tokio::join!(a, b, c);
        let mut out: Vec<RunReport> = a.into_iter().chain(b).chain(c).collect();
        out.sort_by_key(|r| r.job.index());
        out
    }

    /// Runs `job` for `period` (default: the one due now) on demand. A done period is not run
    /// again; a failed one is retried at once.
    pub async fn run_on_demand(
        &self,
        job: Job,
        period: Option<&str>,
    ) -> Result<RunReport, RunError> {
        let now = self.ctx.clock.now();
        let current = job.period_at(now);
        let period = match period {
            None => current,
            Some(p) if !job.takes_period() && p != current => {
                return Err(RunError::BadPeriod(format!(
                    "{} runs for the current {} only ({current}); omit period",
                    job.as_str(),
                    if job == Job::Housekeeping {
                        "day"
                    } else {
                        "minute"
                    }
                )))
            }
            Some(p) if job.takes_period() => {
                if month_start(p).is_none() {
                    return Err(RunError::BadPeriod(format!(
                        "`{p}` is not a month (YYYY-MM)"
                    )));
                }
                if p > current.as_str() {
                    return Err(RunError::BadPeriod(format!(
                        "{p} has not started yet (the current month is {current})"
                    )));
                }
                p.to_string()
            }
            Some(p) => p.to_string(),
        };
        // Policies configured since this month's run get their token now, not next month (as
        // at a start or a reload); a past month stays as it was run.
        let reopen = job == Job::MonthlyTokens
            && period == job.period_at(now)
            && self
                .policy_token_missing(&period)
                .await
                .map_err(RunError::Store)?;
        self.run_period(job, &period, true, reopen)
            .await
            .map_err(RunError::Store)
    }

    /// Whether a configured policy has no token for `period`.
    async fn policy_token_missing(&self, period: &str) -> Result<bool, crate::store::StoreError> {
        for p in &self.live.get().config.policies {
            if self
                .ctx
                .store
                .policy_token(&p.name, period)
                .await?
                .is_none()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Puts a reloaded configuration's policies, notification and email settings and templates
    /// in force (SIGHUP). Everything is checked first — values, templates, the policies'
    /// accounts — and on any error the settings in force stay. Other sections need a restart;
    /// a change there is reported, not applied.
    pub async fn reload(&self, new: crate::config::Config) -> Result<String, String> {
        check_policy_accounts(&self.ctx.store, &new.policies)
            .await
            .map_err(|e| e.to_string())?;
        let old = self.live.get().config.clone();
        let mut ignored = Vec::new();
        if !same(&old.raw.server, &new.raw.server) {
            ignored.push("server");
        }
        if !same(&old.raw.database, &new.raw.database) || old.raw.data_dir != new.raw.data_dir {
            ignored.push("database/data_dir");
        }
        if !same(&old.raw.tokens, &new.raw.tokens) || !same(&old.raw.accounts, &new.raw.accounts) {
            ignored.push("tokens/accounts");
        }
        if !same(&old.raw.security, &new.raw.security) || !same(&old.raw.log, &new.raw.log) {
            ignored.push("security/log");
        }
        let policies = new.policies.len();
        // Only the reloadable sections are taken; the rest stays as the daemon started with it
        // (a policy token must carry the prefix verification checks, for one).
        let mut merged = (*old).clone();
        merged.email = new.email;
        merged.notifications = new.notifications;
        merged.jobs = new.jobs;
        merged.policies = new.policies;
        merged.raw.email = new.raw.email;
        merged.raw.notifications = new.raw.notifications;
        merged.raw.jobs = new.raw.jobs;
        merged.raw.policy = new.raw.policy;
        let live = crate::notify::Live::new(Arc::new(merged)).map_err(|e| format!("{e:#}"))?;
        self.live.replace(live);
        if let Err(e) = self.reconcile_policies().await {
            tracing::warn!(error = %e, "could not issue the tokens of new policies yet");
        }
        self.sender.wake();
        let mut summary = format!("configuration reloaded: {policies} policies");
        if !ignored.is_empty() {
            summary.push_str(&format!(
                "; changes to [{}] need a restart and were not applied",
                ignored.join("], [")
            ));
        }
        Ok(summary)
    }

    /// Issues this month's token of every policy that has none yet, even when the month's run
    /// is done: policies added since (a restart or a reload with a new `[[policy]]`) get their
    /// token now rather than next month.
    pub async fn reconcile_policies(&self) -> Result<Option<RunReport>, crate::store::StoreError> {
        let period = Job::MonthlyTokens.period_at(self.ctx.clock.now());
        if !self.policy_token_missing(&period).await? {
            return Ok(None);
        }
        self.run_period(Job::MonthlyTokens, &period, false, true)
            .await
            .map(Some)
    }

    async fn run_period(
        &self,
        job: Job,
        period: &str,
        on_demand: bool,
        reopen_done: bool,
    ) -> Result<RunReport, crate::store::StoreError> {
        // One period of a job at a time here; other jobs go on meanwhile.
        let _running = self.running[job.index()].lock().await;
        let store = &self.ctx.store;
        let lease = self.live.get().config.jobs.lease;
        let lease_until = || Utc::now() + chrono::TimeDelta::from_std(lease).unwrap_or_default();
        let claim = store
            .claim_run(
                job.as_str(),
                period,
                &self.owner,
                self.ctx.clock.now(),
                Utc::now(),
                lease_until(),
                on_demand,
                reopen_done,
            )
            .await?;
        let report = |outcome| RunReport {
            job,
            period: period.to_string(),
            outcome,
        };
        match claim {
            Claim::Done(run) => return Ok(report(RunOutcome::AlreadyDone(run))),
            Claim::Busy(run) => return Ok(report(RunOutcome::Busy(run))),
            Claim::Claimed => {}
        }

        // Keep the claim alive while the work runs; a crashed daemon stops renewing it. A
        // failed renewal is retried; a claim found taken over stops the work, so two daemons
        // never run the same period.
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let renew = {
            let store = store.clone();
            let (job_s, period_s, owner) = (job.as_str(), period.to_string(), self.owner.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 4).await;
                    let until = Utc::now() + chrono::TimeDelta::from_std(lease).unwrap_or_default();
                    match store.renew_run(job_s, &period_s, &owner, until).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let _ = lost_tx.send(());
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(job = job_s, period = %period_s, error = %e, "cannot renew the job claim; retrying");
                        }
                    }
                }
            })
        };
        let started = std::time::Instant::now();
        let live = self.live.get();
        let result = tokio::select! {
            r = work::run(job, period, &self.ctx, &live) => r,
            _ = lost_rx => {
                tracing::error!(job = job.as_str(), %period, "the job's claim lapsed and another daemon took it over; stopping this run");
                renew.abort();
                let run = store.job_run(job.as_str(), period).await?.ok_or(crate::store::StoreError::NotFound)?;
                return Ok(report(RunOutcome::Busy(run)));
            }
        };
        renew.abort();
        let now = self.ctx.clock.now();
        let outcome = match result {
            Ok(summary) => {
                // The monthly reset changes every account's counters at once: one record of
                // the month it started, committed with the run's end. Other jobs record each
                // change they make as they make it.
                let audit =
                    (job == Job::MonthlyReset).then(|| {
                        let changes = crate::domain::audit::set(&[
                            ("period", period.into()),
                            ("result", summary.as_str().into()),
                        ]);
                        crate::domain::audit::Stamp::job(job.as_str(), "accounts.monthly_reset")
                            .done(now, format!("job:{}", job.as_str()), None, changes)
                    });
                store
                    .finish_run(
                        job.as_str(),
                        period,
                        &self.owner,
                        now,
                        Ok(&summary),
                        audit.as_ref(),
                    )
                    .await?;
                tracing::info!(job = job.as_str(), %period, result = %summary, elapsed_ms = started.elapsed().as_millis() as u64, "job run done");
                RunOutcome::Ran(summary)
            }
            Err(error) => {
                let attempts = store
                    .job_run(job.as_str(), period)
                    .await?
                    .map_or(1, |r| r.attempts);
                let wait = crate::domain::retry::backoff(
                    u32::try_from(attempts).unwrap_or(u32::MAX),
                    chrono::TimeDelta::seconds(60),
                    chrono::TimeDelta::hours(1),
                );
                store
                    .finish_run(
                        job.as_str(),
                        period,
                        &self.owner,
                        now,
                        Err((&error, Utc::now() + wait)),
                        None,
                    )
                    .await?;
                tracing::error!(job = job.as_str(), %period, %error, retry_in_s = wait.num_seconds(), "job run failed");
                RunOutcome::Failed(error)
            }
        };
        metrics::counter!(crate::metrics::JOB_RUNS, "job" => job.as_str(), "outcome" => match outcome { RunOutcome::Ran(_) => "done", _ => "failed" }).increment(1);
        self.sender.wake();
        Ok(report(outcome))
    }
}

/// Whether two configuration sections are the same (compared as TOML).
fn same<T: serde::Serialize>(a: &T, b: &T) -> bool {
    toml::to_string(a).ok() == toml::to_string(b).ok()
}
