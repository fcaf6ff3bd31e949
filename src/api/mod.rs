//! The admin HTTP port: one router per area, merged here, with the OpenAPI document generated
//! from the same route list (a route cannot be served without being documented).

pub mod accounts;
pub mod audit;
pub mod doc;
pub mod error;
pub mod extract;
pub mod jobs;
pub mod legacy;
pub mod ops;
pub mod tokens;
pub mod verify;
pub mod views;

use crate::context::Ctx;
use axum::{extract::DefaultBodyLimit, Extension, Router};
use error::{ApiError, Code};
use std::sync::Arc;
use tower_http::trace::TraceLayer;
use utoipa::{
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};
use utoipa_axum::{router::OpenApiRouter, routes};

/// What every handler receives.
#[derive(Clone)]
pub struct AppState {
    /// Config, store and clock.
    pub ctx: Ctx,
    /// Verifies and counts calls.
    pub verifier: crate::verify::service::Verifier,
    /// Runs jobs on demand.
    pub runner: Arc<crate::jobs::Runner>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tokenwarden",
        description = "Issues, verifies and meters API tokens. Every JSON answer carries a numeric `code`; errors add `error`, `message` and, for bad input, `field`."
    ),
    paths(verify::forward_auth),
    modifiers(&CredentialScheme)
)]
struct ApiDoc;

struct CredentialScheme;

impl Modify for CredentialScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "credential",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator credential, an account secret, or a token whose role allows the call. \
                         Also accepted as `Authorization: APIKey <c>` or `?Secret=<c>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The routes and their OpenAPI document.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accounts::create, accounts::list))
        .routes(routes!(accounts::show, accounts::update))
        .routes(routes!(accounts::reset_secret))
        .routes(routes!(accounts::create_user, accounts::list_users))
        .routes(routes!(accounts::update_user, accounts::delete_user))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::show, tokens::update, tokens::revoke))
        .routes(routes!(tokens::regenerate))
        .routes(routes!(verify::verify))
        .routes(routes!(verify::stats_csv))
        .routes(routes!(verify::stats_json))
        .routes(routes!(verify::mint_jwt))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::run))
        .routes(routes!(jobs::notifications))
        .routes(routes!(audit::list))
        .routes(routes!(legacy::create))
        .routes(routes!(legacy::delete))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::openapi))
        .routes(routes!(ops::metrics))
        .split_for_parts();
    // Forward auth answers any method: proxies pass the original one, and Envoy's ext_authz
    // HTTP service the original path after `/v1/auth` (`path_prefix`). `doc::finish` documents
    // every method of both paths (the `ApiDoc` above carries the GET it starts from).
    use axum::routing::any;
    let router = router
        .route("/v1/auth", any(verify::forward_auth))
        .route("/v1/auth/", any(verify::forward_auth_path))
        .route("/v1/auth/{*path}", any(verify::forward_auth_path));
    (router, doc)
}

/// A path holding a NUL (`%00`) names nothing that can exist, and no statement may see one
/// (PostgreSQL refuses it mid-statement): 404 before any handler runs. Forward auth is left
/// alone: its path is the upstream's, checked against scopes, never stored.
async fn refuse_nul_paths(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    if !path.starts_with("/v1/auth") && path.contains("%00") {
        return ApiError::new(Code::NotFound, "nothing is named with a NUL character")
            .into_response();
    }
    next.run(req).await
}

/// The complete service.
pub fn router(state: AppState) -> Router {
    crate::metrics::handle();
    let body_limit = state.ctx.config.body_limit_bytes;
    let request_timeout = state.ctx.config.request_timeout;
    let (router, doc) = routes();
    let doc = doc::finish(&doc, &state.ctx.config);
    router
        .fallback(|| async { ApiError::new(Code::NoRoute, "no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                Code::MethodNotAllowed,
                "this route does not take that method; see /openapi.json",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record_refusals,
        ))
        .layer(Extension(Arc::new(doc)))
        .layer(axum::middleware::from_fn(refuse_nul_paths))
        .layer(DefaultBodyLimit::max(body_limit))
        // A request over server.request_timeout_seconds gets 408 with its code, like any error.
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async {
                        ApiError::new(Code::RequestTimeout, "the request took too long")
                    },
                ))
                .layer(tower::timeout::TimeoutLayer::new(request_timeout)),
        )
        // Spans name the route pattern, never the URI: a query string may hold `Secret=` and a
        // path may hold a token (`DELETE /token/{id}`). Handlers record the token id (never the
        // token) and the principal; one line per request at INFO carries status and latency.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<_>| {
                    let route = req
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("unmatched", |m| m.as_str());
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        route,
                        principal = tracing::field::Empty,
                        token_id = tracing::field::Empty,
                        result = tracing::field::Empty
                    )
                })
                .on_request(())
                .on_response(
                    |res: &axum::http::Response<_>,
                     latency: std::time::Duration,
                     _: &tracing::Span| {
                        tracing::info!(
                            status = res.status().as_u16(),
                            latency_us = latency.as_micros() as u64,
                            "request"
                        );
                    },
                ),
        )
        .with_state(state)
}
