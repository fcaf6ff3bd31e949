//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`. Labels never carry
//! a token, secret or id: only outcome words and fixed names.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Verifications by outcome (`result` label).
pub const VERIFICATIONS: &str = "tokenwarden_verifications_total";
/// Verification latency in seconds, from request to answer.
pub const VERIFY_SECONDS: &str = "tokenwarden_verify_duration_seconds";
/// Store errors seen while serving (`op` label: `verify`, or `api` for every other route).
pub const STORE_ERRORS: &str = "tokenwarden_store_errors_total";
/// Calls consumed per usage transaction (a PostgreSQL batch; a SQLite fold).
pub const BATCH_SIZE: &str = "tokenwarden_meter_batch_size";
/// Job runs by job and outcome (`done`, `failed`).
pub const JOB_RUNS: &str = "tokenwarden_job_runs_total";
/// Delivery attempts by kind (`email`, `webhook`, `file`) and outcome (`sent`, `retrying`,
/// `failed`).
pub const DELIVERIES: &str = "tokenwarden_deliveries_total";
/// Messages in the outbox by status (`pending`, `sent`, `failed`), read from the store when
/// scraped.
pub const OUTBOX: &str = "tokenwarden_outbox_messages";

/// Usage batches that passed `database.statement_timeout_seconds` (PostgreSQL): answered 503,
/// none of their calls counted, the writer's connection replaced.
pub const BATCH_TIMEOUTS: &str = "tokenwarden_meter_batch_timeouts_total";

/// Tokens verification holds in memory: the SQLite ledger's cache, or the PostgreSQL writer's
/// copies (at most what `database.token_cache_mib` holds).
pub const CACHED_TOKENS: &str = "tokenwarden_cached_tokens";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The verification counters (in `Outcome::ALL` order) and latency histogram, registered once
/// with the recorder: a lookup by name and label on every call costs more than the count.
static VERIFY: OnceLock<(Vec<metrics::Counter>, metrics::Histogram)> = OnceLock::new();

/// Counts one verification with its outcome and latency.
pub fn verified(outcome: crate::domain::verdict::Outcome, took: std::time::Duration) {
    let i = crate::domain::verdict::Outcome::ALL
        .iter()
        .position(|o| *o == outcome);
    match (VERIFY.get(), i) {
        (Some((counters, latency)), Some(i)) => {
            counters[i].increment(1);
            latency.record(took.as_secs_f64());
        }
        // No recorder installed through `handle` (some tests): register as usual.
        _ => {
            metrics::counter!(VERIFICATIONS, "result" => outcome.word()).increment(1);
            metrics::histogram!(VERIFY_SECONDS).record(took.as_secs_f64());
        }
    }
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the recorder on first use and returns the handle that renders it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            // Both bucket lists are non-empty constants, so this cannot fail; fall back to
            // summaries rather than panic if it ever did.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(VERIFY_SECONDS.into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes))
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Histogram samples are held raw until folded into buckets by a render or by
            // upkeep; with nobody scraping they would pile up with every verification.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                });
            // Fails only if another recorder is already installed; then ours just stays empty.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            let counters = crate::domain::verdict::Outcome::ALL
                .iter()
                .map(|o| {
                    let c = metrics::counter!(VERIFICATIONS, "result" => o.word());
                    c.absolute(0);
                    c
                })
                .collect();
            let _ = VERIFY.set((counters, metrics::histogram!(VERIFY_SECONDS)));
            for op in ["verify", "api"] {
                metrics::counter!(STORE_ERRORS, "op" => op).absolute(0);
            }
            handle
        })
        .clone()
}
