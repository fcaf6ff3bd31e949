//! Rate limits per token and per account: exact on one daemon, the window on the injected
//! clock, the forward-auth headers, and bad input named.

use crate::both_backends;
use crate::helpers::*;
use chrono::TimeDelta;
use reqwest::StatusCode;
use serde_json::{json, Value};

both_backends!(
    fifty_concurrent_calls_on_ten_a_minute_admit_exactly_ten,
    an_account_rate_limit_spans_its_tokens_and_can_be_lifted,
    a_bad_rate_limit_is_named_and_changes_nothing,
);

async fn verify(app: &TestApp, token: &str) -> Value {
    let (s, v) = app
        .call(
            reqwest::Method::POST,
            "/v1/verify",
            None,
            Some(json!({ "token": token })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn results(app: &TestApp, tokens: &[String], n: usize) -> Vec<String> {
    let calls = (0..n).map(|i| {
        let token = tokens[i % tokens.len()].clone();
        async move {
            verify(app, &token).await["result"]
                .as_str()
                .unwrap()
                .to_string()
        }
    });
    futures::future::join_all(calls).await
}

fn count(results: &[String], word: &str) -> usize {
    results.iter().filter(|r| *r == word).count()
}

async fn fifty_concurrent_calls_on_ten_a_minute_admit_exactly_ten(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, token) = app
        .token(
            &secret,
            json!({"name": "limited", "usage_limit": 100,
                   "rate_limit": {"limit": 10, "window_seconds": 60}}),
        )
        .await;
    // 12:00:00 at the start: the window is 12:00:00 to 12:01:00.
    app.clock.advance(TimeDelta::seconds(20));
    let r = results(&app, std::slice::from_ref(&token), 50).await;
    assert_eq!(count(&r, "VALID"), 10, "{r:?}");
    assert_eq!(count(&r, "RATE_LIMITED"), 40, "{r:?}");

    // The limited calls spent nothing: 10 uses of 100.
    let (_, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(v["token"]["remaining"], 90, "{v}");
    assert_eq!(v["token"]["calls_total"], 10, "{v}");
    assert_eq!(
        v["token"]["rate_limit"],
        json!({"limit": 10, "window_seconds": 60})
    );

    // A refusal names its code and when the window ends.
    let v = verify(&app, &token).await;
    assert_eq!(v["code"], 4292, "{v}");
    assert_eq!(v["valid"], false);
    assert_eq!(
        v["rate_limit"],
        json!({"limit": 10, "remaining": 0, "reset_at": "2026-11-27T12:01:00Z"})
    );

    // Forward auth: 429 with Retry-After and the X-RateLimit-* headers.
    let resp = app.forward_auth(&token).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let window_end = (t0() + TimeDelta::seconds(60)).timestamp().to_string();
    assert_eq!(h("retry-after").as_deref(), Some("40"));
    assert_eq!(h("x-ratelimit-limit").as_deref(), Some("10"));
    assert_eq!(h("x-ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(h("x-ratelimit-reset").as_deref(), Some(window_end.as_str()));
    assert_eq!(h("x-tokenwarden-result").as_deref(), Some("RATE_LIMITED"));

    // The last second of the window still refuses; its end admits again.
    app.clock.set(t0() + TimeDelta::milliseconds(59_999));
    assert_eq!(verify(&app, &token).await["result"], "RATE_LIMITED");
    app.clock.set(t0() + TimeDelta::seconds(60));
    let resp = app.forward_auth(&token).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let remaining = resp.headers()["x-ratelimit-remaining"].to_str().unwrap();
    assert_eq!(remaining, "9");
    let r = results(&app, std::slice::from_ref(&token), 20).await;
    assert_eq!(count(&r, "VALID"), 9, "{r:?}");

    // Metrics count the refusals; the daily statistics do not (a flood writes nothing).
    assert!(app.metrics().await.contains("result=\"RATE_LIMITED\""));
    let (_, stats) = app.get("/v1/stats", &secret).await;
    let day = &stats["rows"][0];
    assert_eq!(day["valid"], 20, "{stats}");
}

async fn an_account_rate_limit_spans_its_tokens_and_can_be_lifted(b: Backend) {
    let app = spawn_app(b).await;
    let (acct, secret) = app
        .account_with(json!({"name": "acme", "rate_limit": {"limit": 5, "window_seconds": 3600}}))
        .await;
    let (_, v) = app.get(&format!("/v1/accounts/{acct}"), &secret).await;
    assert_eq!(
        v["account"]["rate_limit"],
        json!({"limit": 5, "window_seconds": 3600})
    );
    let (_, a) = app.token(&secret, json!({"name": "a"})).await;
    let (_, b2) = app.token(&secret, json!({"name": "b"})).await;
    let r = results(&app, &[a.clone(), b2.clone()], 8).await;
    assert_eq!(count(&r, "VALID"), 5, "{r:?}");
    assert_eq!(count(&r, "RATE_LIMITED"), 3, "{r:?}");
    // The tighter of the token's and the account's limits is reported.
    let (tid, c) = app
        .token(
            &secret,
            json!({"name": "c", "rate_limit": {"limit": 100, "window_seconds": 60}}),
        )
        .await;
    let v = verify(&app, &c).await;
    assert_eq!(v["result"], "RATE_LIMITED", "{v}");
    assert_eq!(v["rate_limit"]["limit"], 5);
    // Lifted by the operator: calls pass at once, the token's own limit remains.
    let (s, v) = app
        .patch(
            &format!("/v1/accounts/{acct}"),
            &app.operator.clone(),
            json!({"rate_limit": null}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["account"]["rate_limit"], Value::Null);
    let v = verify(&app, &c).await;
    assert_eq!(v["result"], "VALID", "{v}");
    assert_eq!(v["rate_limit"]["limit"], 100);
    assert_eq!(v["rate_limit"]["remaining"], 99);
    // A token's limit is changed the same way, and the change is audited.
    let (s, v) = app
        .patch(
            &format!("/v1/tokens/{tid}"),
            &secret,
            json!({"rate_limit": {"limit": 1, "window_seconds": 60}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(verify(&app, &c).await["result"], "RATE_LIMITED");
    let (_, audit) = app
        .get(
            &format!("/v1/audit?action=token.update&target=token:{tid}"),
            &secret,
        )
        .await;
    assert_eq!(
        audit["records"][0]["changes"]["rate_limit"],
        json!([{"limit": 100, "window_seconds": 60}, {"limit": 1, "window_seconds": 60}]),
        "{audit}"
    );
}

async fn a_bad_rate_limit_is_named_and_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let (acct, secret) = app.account("acme").await;
    for (body, field) in [
        (
            json!({"limit": 0, "window_seconds": 60}),
            "rate_limit.limit",
        ),
        (
            json!({"limit": 10, "window_seconds": 86_401}),
            "rate_limit.window_seconds",
        ),
        (json!({"limit": 10}), "rate_limit"),
        (
            json!({"limit": 10, "window_seconds": 60, "burst": 2}),
            "rate_limit",
        ),
        (json!("10/60"), "rate_limit"),
    ] {
        let got = app
            .post(
                "/v1/tokens",
                &secret,
                json!({"name": "t", "rate_limit": body}),
            )
            .await;
        assert_eq!(got.0, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", got.1);
        let named = got.1["field"].as_str().unwrap_or_default();
        assert!(named.starts_with(field), "{body}: {}", got.1);
        let got = app
            .patch(
                &format!("/v1/accounts/{acct}"),
                &app.operator.clone(),
                json!({"rate_limit": body}),
            )
            .await;
        assert_eq!(got.0, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", got.1);
    }
    assert!(app.token_ids(&acct).await.is_empty(), "no token was issued");
    let (_, v) = app.get(&format!("/v1/accounts/{acct}"), &secret).await;
    assert_eq!(v["account"]["rate_limit"], Value::Null, "{v}");
}
