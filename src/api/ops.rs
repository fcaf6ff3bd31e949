//! Operations routes: liveness, readiness and the OpenAPI document.

use super::error::{ApiError, Code, ErrorBody};
use super::AppState;
use axum::{extract::State, Extension, Json};
use serde::Serialize;
use std::sync::Arc;

/// A health answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// 2002.
    pub code: u32,
    /// `ok`.
    pub status: &'static str,
    /// `sqlite` or `postgres` (readiness only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
}

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        code: Code::Ok.number(),
        status: "ok",
        store: None,
    })
}

/// Readiness: the meter can count calls, and the store takes them: on SQLite a fold of the
/// counted calls commits, on PostgreSQL the lock a usage batch needs is granted (each within the
/// lock timeout). 503 when not.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(s): State<AppState>) -> Result<Json<Health>, ApiError> {
    let unavailable = || ApiError::new(Code::StoreUnavailable, "the token store is unavailable");
    if let Some(why) = s.verifier.meter.failure() {
        tracing::warn!(
            error = %why,
            "readiness check failed: the meter refuses every call"
        );
        return Err(unavailable());
    }
    s.verifier.meter.probe(&s.ctx.store).await.map_err(|e| {
        tracing::warn!(error = %e, "readiness check failed");
        unavailable()
    })?;
    Ok(Json(Health {
        code: Code::Ok.number(),
        status: "ok",
        store: Some(s.ctx.store.backend_name()),
    }))
}

/// Prometheus metrics: verifications by outcome, verification latency, store errors, usage
/// batch sizes, job runs, deliveries and the outbox by status.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>) -> impl axum::response::IntoResponse {
    match s.ctx.store.outbox_counts().await {
        Ok(counts) => {
            for status in ["pending", "sent", "failed"] {
                let n = counts
                    .iter()
                    .find(|(st, _)| st == status)
                    .map_or(0, |c| c.1);
                metrics::gauge!(crate::metrics::OUTBOX, "status" => status).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot count the outbox for /metrics"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::handle().render(),
    )
}

/// This OpenAPI 3 document, generated from the routes themselves.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3 document")))]
pub async fn openapi(Extension(doc): Extension<Arc<serde_json::Value>>) -> Json<serde_json::Value> {
    Json((*doc).clone())
}
