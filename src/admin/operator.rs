//! The operator credential: made once for a new store, replaced on demand.

use super::*;

/// A new operator credential, not yet valid anywhere (`replace_operator` makes it so).
pub fn new_operator_credential(ctx: &Ctx) -> Plain {
    credential::new_operator_credential(&ctx.config.tokens.prefix)
}

/// Makes `plain` the operator credential; the old one stops working.
pub async fn replace_operator(ctx: &Ctx, p: &Caller, plain: &Plain) -> Result<()> {
    require_operator(p, "replace the operator credential")?;
    ctx.store
        .operator_replace(&plain.hash(), ctx.clock.now(), &p.stamp("operator.reset"))
        .await?;
    Ok(())
}

/// On a store without an operator credential, makes one and returns it (once, to this caller
/// only); on a store that has one, returns `None`.
pub async fn init_operator(ctx: &Ctx) -> Result<Option<Plain>> {
    let plain = new_operator_credential(ctx);
    let created = ctx
        .store
        .operator_init(
            &plain.hash(),
            ctx.clock.now(),
            &Stamp::job("start", "operator.create"),
        )
        .await?;
    Ok(created.then_some(plain))
}

/// Records that `p` ran `job` for `period` on demand, with its outcome (`ran`, `already_done`,
/// `busy`, `failed`). What the run changed is recorded by the job itself, change by change. The
/// run has happened whatever this write does: a failure is logged, not answered.
pub async fn record_job_run(ctx: &Ctx, p: &Caller, job: &str, period: &str, outcome: &str) {
    let changes = audit::set(&[("period", period.into()), ("outcome", outcome.into())]);
    let entry = p
        .stamp("job.run")
        .done(ctx.clock.now(), format!("job:{job}"), None, changes);
    if let Err(e) = ctx.store.append_audit(&entry).await {
        tracing::error!(error = %e, job, period, "the job run could not be recorded in the audit log");
    }
}
