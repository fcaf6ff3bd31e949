//! Log output through tracing: human lines or JSON, filtered by config or `RUST_LOG`.

use crate::config::LogFormat;
use std::io::IsTerminal;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber once; later calls (tests) are ignored. `RUST_LOG`, when set,
/// wins over the configured level.
pub fn init(level: &str, format: LogFormat) {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .unwrap_or_else(|| level.to_string());
    let mut filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    // Dependencies that chatter at INFO (the scheduler's state changes, PostgreSQL notices)
    // stay at WARN unless the filter names them.
    for (target, directive) in [
        ("tokio_cron_scheduler", "tokio_cron_scheduler=warn"),
        ("sqlx", "sqlx::postgres::notice=warn"),
    ] {
        if !spec.contains(target) {
            if let Ok(d) = directive.parse() {
                filter = filter.add_directive(d);
            }
        }
    }
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Human => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}
