//! Health, readiness, the OpenAPI document, body limits and unknown routes.

use crate::both_backends;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

both_backends!(
    health_and_readiness,
    openapi_covers_every_route,
    oversized_bodies_are_refused,
    an_unreachable_store_answers_503,
    a_lock_held_elsewhere_answers_503_and_spends_nothing,
    metrics_count_verifications_by_outcome,
);

async fn health_and_readiness(b: Backend) {
    let app = spawn_app(b).await;
    let (s, v) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, v) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["store"],
        if b == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    assert_error(
        &app.call(Method::GET, "/v1/nothing", None, None).await,
        404,
        4041,
        None,
    );
    assert_error(
        &app.call(Method::PUT, "/v1/tokens", None, None).await,
        405,
        4050,
        None,
    );
}

async fn openapi_covers_every_route(b: Backend) {
    let app = spawn_app(b).await;
    let (s, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut routes = vec![
        ("post", "/v1/accounts"),
        ("get", "/v1/accounts"),
        ("get", "/v1/accounts/{id}"),
        ("patch", "/v1/accounts/{id}"),
        ("post", "/v1/accounts/{id}/secret"),
        ("post", "/v1/accounts/{id}/users"),
        ("get", "/v1/accounts/{id}/users"),
        ("patch", "/v1/users/{id}"),
        ("delete", "/v1/users/{id}"),
        ("post", "/v1/tokens"),
        ("get", "/v1/tokens"),
        ("get", "/v1/tokens/{id}"),
        ("patch", "/v1/tokens/{id}"),
        ("delete", "/v1/tokens/{id}"),
        ("post", "/v1/tokens/{id}/regenerate"),
        ("post", "/v1/verify"),
        ("get", "/v1/stats.csv"),
        ("get", "/v1/stats"),
        ("post", "/v1/jwt"),
        ("get", "/v1/jobs"),
        ("post", "/v1/jobs/{job}/run"),
        ("get", "/v1/notifications"),
        ("get", "/v1/audit"),
        ("post", "/token/create"),
        ("delete", "/token/{id}"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/openapi.json"),
        ("get", "/metrics"),
    ];
    // Forward auth answers every method, on its own path and with the original path after it.
    for path in ["/v1/auth", "/v1/auth/{path}"] {
        for method in [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ] {
            routes.push((method, path));
        }
    }
    let mut documented = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            assert!(
                routes.contains(&(method.as_str(), path.as_str())),
                "undocumented in this test: {method} {path}"
            );
            documented += 1;
        }
    }
    assert_eq!(documented, routes.len());
    // Every documented route is really served: none answers "no such route".
    for (method, path) in routes {
        let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (s, v) = app
            .call(
                m,
                &path
                    .replace("{id}", "x")
                    .replace("{job}", "x")
                    .replace("{path}", "x"),
                None,
                None,
            )
            .await;
        assert!(
            s != StatusCode::NOT_FOUND || v["code"] != 4041,
            "{method} {path} is not served"
        );
        assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }
    // Request bodies are described, with field docs.
    let create = &doc["components"]["schemas"]["CreateTokens"]["properties"];
    for f in [
        "name",
        "usage_limit",
        "lifetime_seconds",
        "expires_on",
        "allowed_ips",
        "scopes",
        "count",
        "role",
    ] {
        assert!(
            create.get(f).is_some(),
            "CreateTokens.{f} missing: {create}"
        );
    }
}

async fn oversized_bodies_are_refused(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let body = json!({"name": "big", "description": "x".repeat(100 * 1024)});
    assert_error(
        &app.post("/v1/tokens", &secret, body).await,
        413,
        4130,
        None,
    );
    assert!(app.token_ids(&account).await.is_empty());
    // Within the limit but over the field's own limit: the field is named.
    let body = json!({"name": "big", "description": "x".repeat(1001)});
    assert_error(
        &app.post("/v1/tokens", &secret, body).await,
        422,
        4220,
        Some("description"),
    );
}

async fn an_unreachable_store_answers_503(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    app.ctx.store.close().await;
    let (s, v) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["code"], 5030);
    let got: (StatusCode, Value) = app.get("/v1/tokens", &secret).await;
    assert_error(&got, 503, 5030, None);
    assert!(
        !got.1.to_string().contains("pool"),
        "no internal detail leaks: {}",
        got.1
    );
    // Liveness does not depend on the store.
    assert_eq!(
        app.call(Method::GET, "/healthz", None, None).await.0,
        StatusCode::OK
    );
}

/// What another connection holding the store's write lock (another daemon's long transaction,
/// an operator's open `psql` session, the CLI) looks like: on PostgreSQL a verification is
/// answered 503 after `database.lock_timeout_seconds`, not left hanging until it times out; on
/// SQLite it is counted as usual and reaches the store once the lock is free. Admin writes and
/// readiness answer 503 on both.
async fn a_lock_held_elsewhere_answers_503_and_spends_nothing(b: Backend) {
    let app = spawn_app_with(b, |c| {
        c.db_lock_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(&secret, json!({"name": "svc", "usage_limit": 5}))
        .await;
    let verify = || app.call(Method::POST, "/v1/verify", None, Some(json!({"token": t})));
    // Hold the lock a usage batch needs, from a connection of the test's own.
    let mut pg = None;
    let mut lite = None;
    match app.pg_url() {
        Some(url) => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::raw_sql("BEGIN; LOCK TABLE tokens IN EXCLUSIVE MODE")
                .execute(&mut c)
                .await
                .unwrap();
            pg = Some(c);
        }
        None => {
            let file = app.ctx.store.sqlite_file().unwrap();
            let c = rusqlite::Connection::open(file).unwrap();
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            lite = Some(c);
        }
    }
    let start = std::time::Instant::now();
    let sqlite = b == Backend::Sqlite;
    if sqlite {
        // SQLite: the call is counted in memory and the usage log, which need no store lock;
        // it reaches the store with the next fold.
        let (s, v) = verify().await;
        assert_eq!((s, v["result"].as_str()), (StatusCode::OK, Some("VALID")));
        assert_eq!(v["remaining"], 4, "{v}");
    } else {
        assert_error(&verify().await, 503, 5030, None);
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(8),
        "answered after {:?}, not after the 1 s lock timeout",
        start.elapsed()
    );
    // Readiness says counted calls cannot reach the store (reads still work).
    let (s, v) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    // An admin write waits the same way.
    let renamed = app
        .patch(
            &format!("/v1/tokens/{id}"),
            &secret,
            json!({"name": "other"}),
        )
        .await;
    assert_error(&renamed, 503, 5030, None);
    drop(lite);
    if let Some(c) = pg {
        sqlx::Connection::close(c).await.unwrap();
    }
    assert_eq!(
        app.call(Method::GET, "/readyz", None, None).await.0,
        StatusCode::OK
    );
    // A refused call spent nothing; a counted one is in the store now.
    let (s, v) = verify().await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("VALID")),
        "{v}"
    );
    let spent = if sqlite { 2 } else { 1 };
    assert_eq!(v["remaining"], 5 - spent, "{v}");
    let (_, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(v["token"]["name"], "svc", "{v}");
    assert_eq!(v["token"]["calls_total"], spent, "{v}");
    let text = app.metrics().await;
    let verify_errors = if sqlite { 0 } else { 1 };
    assert!(
        text.contains(&format!(
            "tokenwarden_store_errors_total{{op=\"verify\"}} {verify_errors}"
        )),
        "{text}"
    );
    assert!(
        text.contains("tokenwarden_store_errors_total{op=\"api\"} 1"),
        "{text}"
    );
}

async fn metrics_count_verifications_by_outcome(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (_, t) = app
        .token(&secret, json!({"name": "svc", "usage_limit": 2}))
        .await;
    for _ in 0..3 {
        app.call(Method::POST, "/v1/verify", None, Some(json!({"token": t})))
            .await;
    }
    app.call(
        Method::POST,
        "/v1/verify",
        None,
        Some(json!({"token": "junk"})),
    )
    .await;
    // A forwarded request without any credential is a MALFORMED verification too.
    assert_eq!(
        app.call(Method::GET, "/v1/auth", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let text = app.metrics().await;
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} missing in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        value("tokenwarden_verifications_total{result=\"VALID\"}"),
        2.0
    );
    assert_eq!(
        value("tokenwarden_verifications_total{result=\"USAGE_EXCEEDED\"}"),
        1.0
    );
    assert_eq!(
        value("tokenwarden_verifications_total{result=\"MALFORMED\"}"),
        2.0
    );
    assert_eq!(
        value("tokenwarden_verifications_total{result=\"REVOKED\"}"),
        0.0
    );
    assert_eq!(value("tokenwarden_verify_duration_seconds_count"), 5.0);
    assert_eq!(value("tokenwarden_store_errors_total{op=\"verify\"}"), 0.0);
    assert_eq!(value("tokenwarden_store_errors_total{op=\"api\"}"), 0.0);
    assert!(
        !text.contains(&t) && !text.contains(&t[3..11]),
        "no token or token id in metrics"
    );
    app.ctx.store.close().await;
    app.call(Method::POST, "/v1/verify", None, Some(json!({"token": t})))
        .await;
    let text = app.metrics().await;
    assert!(
        text.contains("tokenwarden_store_errors_total{op=\"verify\"} 1"),
        "{text}"
    );
}

/// SQLite: with folds failing (the store's write lock held elsewhere), the usage log fills; then
/// calls are answered 503 and spend nothing, neither in the store nor in the counters the next
/// answers come from. The calls the log took are answered VALID once folds work again.
#[tokio::test]
async fn a_full_usage_log_refuses_calls_and_spends_nothing_for_them() {
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let app = spawn_app_with(Backend::Sqlite, |c| {
        // About 90 records a file, so a few hundred calls fill both and the writer's buffer.
        c.usage_log_bytes = 8 << 10;
        c.db_lock_timeout = std::time::Duration::from_millis(200);
    })
    .await;
    let (_, secret) = app.account("acme").await;
    let limit = 100_000;
    let (id, t) = app
        .token(&secret, json!({"name": "svc", "usage_limit": limit}))
        .await;
    let verify = || app.call(Method::POST, "/v1/verify", None, Some(json!({"token": t})));
    let lock = rusqlite::Connection::open(app.ctx.store.sqlite_file().unwrap()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();

    let (valid, refused) = (AtomicUsize::new(0), AtomicUsize::new(0));
    // More calls at once than the log's buffer holds, so those it cannot take come back while
    // the ones it took wait for a fold.
    let calls = futures::stream::iter(0..800)
        .map(|_| verify())
        .buffer_unordered(300)
        .for_each(|(s, v)| {
            match (s, v["result"].as_str()) {
                (StatusCode::OK, Some("VALID")) => valid.fetch_add(1, Ordering::SeqCst),
                (StatusCode::SERVICE_UNAVAILABLE, _) => {
                    assert_eq!(v["code"], 5030, "{v}");
                    refused.fetch_add(1, Ordering::SeqCst)
                }
                _ => panic!("unexpected answer {s}: {v}"),
            };
            async {}
        });
    let release = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while refused.load(Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log never filled ({} VALID)",
                valid.load(Ordering::SeqCst)
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        lock.execute_batch("ROLLBACK").unwrap();
    };
    tokio::join!(calls, release);
    let (valid, refused) = (valid.into_inner(), refused.into_inner());
    assert_eq!(valid + refused, 800);
    assert!(
        refused > 0 && valid > 100,
        "{valid} VALID, {refused} refused"
    );

    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.calls_total, valid as i64,
        "only calls answered VALID are counted"
    );
    assert_eq!(stored.remaining, Some(limit - valid as i64));
    // The daemon's own counters agree: the refused calls changed nothing there either.
    let (s, v) = verify().await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("VALID")),
        "{v}"
    );
    assert_eq!(v["remaining"], limit - valid as i64 - 1, "{v}");
}
