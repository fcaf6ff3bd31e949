//! Job runs (`/v1/jobs`) and the notification outbox (`/v1/notifications`).

use super::error::{ApiError, ApiResult, Code, ErrorBody};
use super::extract::{Auth, Params};
use super::AppState;
use crate::admin::{self, Principal};
use crate::jobs::{Job, RunError, RunOutcome, ALL};
use crate::store::{outbox::MessageFilter, JobRun, Message};
use axum::{
    extract::{Path, State},
    Json,
};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A job, its schedule and its latest run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// Name (for `POST /v1/jobs/{job}/run`).
    pub name: &'static str,
    /// Cron schedule, seconds first, UTC.
    pub schedule: &'static str,
    /// What it does.
    pub description: &'static str,
    /// The period due now.
    pub current_period: String,
    /// Next scheduled wake-up (UTC).
    pub next_run: Option<String>,
    /// The latest run, if any.
    pub last_run: Option<RunView>,
}

/// One run record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunView {
    /// Period.
    pub period: String,
    /// `running`, `done` or `failed`.
    pub status: String,
    /// Runs started for the period.
    pub attempts: i64,
    /// Latest start (UTC).
    pub started_at: String,
    /// End (UTC).
    pub finished_at: Option<String>,
    /// What it did.
    pub result: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<&JobRun> for RunView {
    fn from(r: &JobRun) -> Self {
        RunView {
            period: r.period.clone(),
            status: r.status.clone(),
            attempts: r.attempts,
            started_at: time(r.started_at),
            finished_at: r.finished_at.map(time),
            result: r.result.clone(),
            error: r.error.clone(),
        }
    }
}

/// The jobs.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// 2002.
    pub code: u32,
    /// Every job.
    pub jobs: Vec<JobView>,
}

/// List the jobs with their schedule, latest run and next run (operator).
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    responses((status = 200, body = JobList), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn list(State(s): State<AppState>, Auth(p): Auth) -> ApiResult<Json<JobList>> {
    admin::require_operator(&p, "see job runs")?;
    let runs = s
        .ctx
        .store
        .latest_runs(&crate::jobs::ALL.map(|j| j.as_str()))
        .await
        .map_err(admin::Error::Store)?;
    let now = s.ctx.clock.now();
    let jobs = ALL
        .iter()
        .map(|j| JobView {
            name: j.as_str(),
            schedule: j.schedule(),
            description: j.description(),
            current_period: j.period_at(now),
            next_run: j.next_run(now).map(time),
            last_run: runs.iter().find(|r| r.job == j.as_str()).map(RunView::from),
        })
        .collect();
    Ok(Json(JobList {
        code: Code::Ok.number(),
        jobs,
    }))
}

/// `POST /v1/jobs/{job}/run` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// `YYYY-MM` for the monthly jobs (default: the period due now).
    #[param(schema_with = crate::domain::schema::any_text)]
    pub period: Option<String>,
}

/// The outcome of a run on demand.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunAnswer {
    /// 2002 (ran, or done before).
    pub code: u32,
    /// The job.
    pub job: &'static str,
    /// The period.
    pub period: String,
    /// `ran` (this call did the work) or `already_done` (nothing done again).
    pub outcome: &'static str,
    /// What the run did.
    pub result: Option<String>,
    /// The run record.
    pub run: Option<RunView>,
}

/// Run one job for a period now, idempotently: a period done before is not run again (operator).
#[utoipa::path(post, path = "/v1/jobs/{job}/run", tag = "jobs",
    params(("job" = String, Path, description = "job name"), RunQuery),
    responses((status = 200, body = RunAnswer), (status = "4XX", body = ErrorBody), (status = 500, body = ErrorBody)),
    security(("credential" = [])))]
pub async fn run(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(job): Path<String>,
    Params(q): Params<RunQuery>,
) -> ApiResult<Json<RunAnswer>> {
    admin::require_operator(&p, "run jobs")?;
    let job: Job = job
        .parse()
        .map_err(|e: String| ApiError::new(Code::NotFound, e))?;
    let report = s
        .runner
        .run_on_demand(job, q.period.as_deref())
        .await
        .map_err(|e| match e {
            RunError::BadPeriod(m) => ApiError::field(Code::InvalidField, "period", m),
            RunError::Store(e) => admin::Error::Store(e).into(),
        })?;
    tracing::info!(job = job.as_str(), period = %report.period, by = %p.label(), "job run on demand");
    admin::record_job_run(
        &s.ctx,
        &p,
        job.as_str(),
        &report.period,
        report.outcome.word(),
    )
    .await;
    let run = s
        .ctx
        .store
        .job_run(job.as_str(), &report.period)
        .await
        .map_err(admin::Error::Store)?;
    let (outcome, result) = match report.outcome {
        RunOutcome::Ran(r) => ("ran", Some(r)),
        RunOutcome::AlreadyDone(r) => ("already_done", r.result),
        RunOutcome::Busy(r) => {
            return Err(ApiError::new(
                Code::JobBusy,
                format!(
                    "{} {} is being run by {} (or waits before a retry); try again later",
                    job.as_str(),
                    r.period,
                    r.owner
                ),
            ))
        }
        RunOutcome::Failed(e) => {
            return Err(ApiError::new(
                Code::JobFailed,
                format!(
                    "{} {} failed: {e}; it will be retried",
                    job.as_str(),
                    report.period
                ),
            ))
        }
    };
    Ok(Json(RunAnswer {
        code: Code::Ok.number(),
        job: job.as_str(),
        period: report.period,
        outcome,
        result,
        run: run.as_ref().map(RunView::from),
    }))
}

/// A queued, sent or failed message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageView {
    /// Id.
    pub id: String,
    /// `email`, `webhook` or `file`.
    pub kind: &'static str,
    /// `expiry_warning`, `expired` or `token_issued`.
    pub topic: String,
    /// Address, URL or path.
    pub target: String,
    /// Token it concerns.
    pub token_id: Option<String>,
    /// Account it concerns.
    pub account_id: Option<String>,
    /// `pending`, `sent`, `failed` or `cancelled`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// Next attempt (pending only).
    pub next_attempt_at: Option<String>,
    /// Error of the latest failed attempt.
    pub last_error: Option<String>,
    /// Queued at.
    pub created_at: String,
    /// Delivered at.
    pub sent_at: Option<String>,
}

impl From<&Message> for MessageView {
    fn from(m: &Message) -> Self {
        MessageView {
            id: m.id.clone(),
            kind: m.kind.as_str(),
            topic: m.topic.clone(),
            target: m.target.clone(),
            token_id: m.token_id.clone(),
            account_id: m.account_id.clone(),
            status: m.status.clone(),
            attempts: m.attempts,
            next_attempt_at: (m.status == "pending").then(|| time(m.next_attempt_at)),
            last_error: m.last_error.clone(),
            created_at: time(m.created_at),
            sent_at: m.sent_at.map(time),
        }
    }
}

/// `GET /v1/notifications` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MessageQuery {
    /// `pending`, `sent`, `failed` or `cancelled`.
    #[param(schema_with = message_status)]
    pub status: Option<String>,
    /// One token's messages.
    #[param(schema_with = crate::domain::schema::any_text)]
    pub token_id: Option<String>,
    /// One account's messages (operator).
    #[param(schema_with = crate::domain::schema::any_text)]
    pub account_id: Option<String>,
    /// Most rows, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

fn message_status() -> utoipa::openapi::schema::Object {
    crate::domain::schema::one_of(&["pending", "sent", "failed", "cancelled"])
}

/// Messages, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageList {
    /// 2002.
    pub code: u32,
    /// The messages.
    pub notifications: Vec<MessageView>,
}

/// The outbox: what was sent, what is pending and what failed (operator: all; an account's
/// admins: their account's).
#[utoipa::path(get, path = "/v1/notifications", tag = "jobs", params(MessageQuery),
    responses((status = 200, body = MessageList), (status = "4XX", body = ErrorBody)),
    security(("credential" = [])))]
pub async fn notifications(
    State(s): State<AppState>,
    Auth(p): Auth,
    Params(q): Params<MessageQuery>,
) -> ApiResult<Json<MessageList>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(crate::domain::ParseError::new("limit", "must be 1 to 500").into());
    }
    if let Some(st) = &q.status {
        if !["pending", "sent", "failed", "cancelled"].contains(&st.as_str()) {
            return Err(crate::domain::ParseError::new(
                "status",
                "must be pending, sent, failed or cancelled",
            )
            .into());
        }
    }
    let account_id = match &p.who {
        Principal::Operator | Principal::Cli => q.account_id.clone(),
        other => {
            let own = other.account_id().unwrap_or_default().to_string();
            if !other.is_account_admin_of(&own) {
                return Err(admin::Error::Forbidden(
                    "only the account's admins may see its notifications".into(),
                )
                .into());
            }
            if q.account_id.as_ref().is_some_and(|a| *a != own) {
                return Err(admin::Error::NotFound("account").into());
            }
            Some(own)
        }
    };
    let rows = s
        .ctx
        .store
        .list_messages(&MessageFilter {
            status: q.status,
            account_id,
            token_id: q.token_id,
            limit,
        })
        .await
        .map_err(admin::Error::Store)?;
    Ok(Json(MessageList {
        code: Code::Ok.number(),
        notifications: rows.iter().map(MessageView::from).collect(),
    }))
}
