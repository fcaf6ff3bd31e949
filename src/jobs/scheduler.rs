//! tokio-cron-scheduler wakes the runner on each job's schedule (UTC). What is due is decided
//! by the runner from the injected clock and the run records, never by the scheduler, whose
//! own state is in memory and forgets missed runs.

use super::{Runner, ALL};
use std::sync::Arc;
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};

/// Starts the scheduler; every wake-up runs whatever is due (so a failed period is retried at
/// the next minute's wake-up after its wait).
pub async fn start_scheduler(runner: Arc<Runner>) -> anyhow::Result<JobScheduler> {
    let sched = JobScheduler::new().await?;
    let mut schedules: Vec<&str> = ALL.iter().map(|j| j.schedule()).collect();
    schedules.sort_unstable();
    schedules.dedup();
    for schedule in schedules {
        let runner = runner.clone();
        let job = CronJob::new_async(schedule, move |_, _| {
            let runner = runner.clone();
            Box::pin(async move {
                runner.run_due().await;
            })
        })?;
        sched.add(job).await?;
    }
    sched.start().await?;
    Ok(sched)
}
