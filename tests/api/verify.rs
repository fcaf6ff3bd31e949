//! Verification: outcomes and their order, usage counting under concurrency, month boundaries,
//! forward auth.

use crate::both_backends;
use crate::helpers::*;
use chrono::{TimeDelta, TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

both_backends!(
    every_outcome_has_its_word_and_code,
    refused_calls_spend_nothing,
    concurrent_verifies_never_overspend,
    counters_from_an_earlier_month_count_as_zero,
    verify_bad_input_names_the_field,
    an_unreachable_store_never_answers_valid,
    forward_auth_reads_every_token_form,
    forward_auth_trusts_forwarded_for_only_from_proxies,
    forward_auth_checks_the_path_the_upstream_will_serve,
    forward_auth_answers_envoy_ext_authz_requests,
    statistics_per_token_and_day_as_csv,
    the_last_use_records_its_own_address_or_none,
    a_refill_added_mid_month_starts_with_the_next_month,
    a_change_between_counted_calls_builds_on_every_call_before_it,
);

/// An operator's change made between counted calls starts from every call counted before it
/// (raising the limit keeps the calls made), and the calls after it count from the change.
async fn a_change_between_counted_calls_builds_on_every_call_before_it(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(&secret, json!({"name": "svc", "usage_limit": 10}))
        .await;
    for _ in 0..3 {
        assert_eq!(result(&app, json!({"token": t})).await, "VALID");
    }
    // 3 used of 10; raising the limit to 20 leaves 17.
    let (s, v) = app
        .patch(
            &format!("/v1/tokens/{id}"),
            &secret,
            json!({"usage_limit": 20}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = verify(&app, json!({"token": t})).await;
    assert_eq!(v["remaining"].as_i64(), Some(16), "{v}");
    let (_, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(
        (
            v["token"]["remaining"].as_i64(),
            v["token"]["calls_total"].as_i64()
        ),
        (Some(16), Some(4)),
        "{v}"
    );
}

/// A monthly refill added to an older token behaves as on a token created that day: the first
/// refill comes on the 1st, not at the next call.
async fn a_refill_added_mid_month_starts_with_the_next_month(b: Backend) {
    let app = spawn_app(b).await;
    app.clock
        .set(Utc.with_ymd_and_hms(2026, 10, 15, 9, 0, 0).unwrap());
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(&secret, json!({"name": "svc", "usage_limit": 2}))
        .await;
    for want in ["VALID", "VALID", "USAGE_EXCEEDED"] {
        assert_eq!(result(&app, json!({"token": t})).await, want);
    }
    app.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap());
    let (s, v) = app
        .patch(
            &format!("/v1/tokens/{id}"),
            &secret,
            json!({"refill_monthly": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(result(&app, json!({"token": t})).await, "USAGE_EXCEEDED");
    app.clock
        .set(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap());
    let v = verify(&app, json!({"token": t})).await;
    assert_eq!(
        (v["result"].as_str(), v["remaining"].as_i64()),
        (Some("VALID"), Some(1)),
        "{v}"
    );
}

async fn the_last_use_records_its_own_address_or_none(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app.token(&secret, json!({"name": "svc"})).await;
    let last = || async {
        let (_, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
        (
            v["token"]["last_used_at"].clone(),
            v["token"]["last_used_ip"].clone(),
        )
    };
    assert_eq!(
        result(&app, json!({"token": t, "client_ip": "192.0.2.1"})).await,
        "VALID"
    );
    assert_eq!(
        last().await,
        (json!("2026-11-27T12:00:00Z"), json!("192.0.2.1"))
    );
    app.clock.advance(TimeDelta::minutes(1));
    assert_eq!(result(&app, json!({"token": t})).await, "VALID");
    assert_eq!(
        last().await,
        (json!("2026-11-27T12:01:00Z"), Value::Null),
        "the last use named no address"
    );
}

async fn verify(app: &TestApp, body: Value) -> Value {
    let (s, v) = app.call(Method::POST, "/v1/verify", None, Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn result(app: &TestApp, body: Value) -> String {
    verify(app, body).await["result"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn every_outcome_has_its_word_and_code(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app
        .account_with(json!({"name": "acme", "monthly_quota": 3}))
        .await;
    let (id, t) = app
        .token(&secret, json!({"name": "svc", "role": "engineer", "usage_limit": 2, "scopes": ["convert:*"], "allowed_ips": ["10.0.0.0/8"], "lifetime_seconds": 3600}))
        .await;
    let ok = json!({"token": t, "call": "convert:pdf", "client_ip": "10.1.2.3"});
    let v = verify(&app, ok.clone()).await;
    assert_eq!(v["result"], "VALID");
    assert_eq!(v["valid"], true);
    assert_eq!(v["code"], 2005);
    assert_eq!(v["token_id"], id.as_str());
    assert_eq!(v["account_id"], account.as_str());
    assert_eq!(v["role"], "engineer");
    assert_eq!(v["scopes"], json!(["convert:*"]));
    assert_eq!(v["remaining"], 1);
    assert_eq!(v["calls_this_month"], 1);
    assert_eq!(v["expires_at"], "2026-11-27T13:00:00Z");

    let cases: Vec<(Value, &str, u64)> = vec![
        (json!({"token": "not-a-token"}), "MALFORMED", 4011),
        (
            // A changed last character breaks the checksum (pick one that differs).
            json!({"token": format!("{}{}", &t[..t.len() - 1], if t.ends_with('x') { 'y' } else { 'x' })}),
            "MALFORMED",
            4011,
        ),
        (
            json!({"token": tokenwarden::domain::credential::new_token("tw", "ZZZZZZZZ").expose()}),
            "NOT_FOUND",
            4011,
        ),
        // The operator credential is no call credential.
        (json!({"token": app.operator.clone()}), "MALFORMED", 4011),
        (
            json!({"token": t, "call": "convert:pdf", "client_ip": "192.168.1.1"}),
            "IP_NOT_ALLOWED",
            4032,
        ),
        (
            json!({"token": t, "call": "convert:pdf"}),
            "IP_NOT_ALLOWED",
            4032,
        ),
        (
            json!({"token": t, "call": "delete:all", "client_ip": "10.1.2.3"}),
            "SCOPE_DENIED",
            4033,
        ),
        (
            json!({"token": t, "client_ip": "10.1.2.3"}),
            "SCOPE_DENIED",
            4033,
        ),
        (
            json!({"token": t, "call": "convert:pdf", "client_ip": "10.1.2.3", "cost": 2}),
            "USAGE_EXCEEDED",
            4290,
        ),
    ];
    for (body, word, code) in cases {
        let v = verify(&app, body.clone()).await;
        assert_eq!(
            (
                v["result"].as_str(),
                v["code"].as_u64(),
                v["valid"].as_bool()
            ),
            (Some(word), Some(code), Some(false)),
            "{body}: {v}"
        );
    }
    // The account quota (3) is checked before the token's uses.
    let (_, t2) = app
        .token(&secret, json!({"name": "other", "usage_limit": 10}))
        .await;
    assert_eq!(result(&app, json!({"token": t2, "cost": 2})).await, "VALID");
    let v = verify(&app, json!({"token": t2})).await;
    assert_eq!(
        (v["result"].as_str(), v["code"].as_u64()),
        (Some("ACCOUNT_QUOTA_EXCEEDED"), Some(4291))
    );
    app.patch(
        &format!("/v1/accounts/{account}"),
        &app.operator.clone(),
        json!({"monthly_quota": null}),
    )
    .await;
    assert_eq!(result(&app, json!({"token": t2})).await, "VALID");
    assert_eq!(result(&app, json!(ok.clone())).await, "VALID");
    assert_eq!(result(&app, json!(ok.clone())).await, "USAGE_EXCEEDED");

    // Inactive account, then revoked, then expired.
    app.patch(
        &format!("/v1/accounts/{account}"),
        &app.operator.clone(),
        json!({"status": "inactive"}),
    )
    .await;
    let v = verify(&app, json!({"token": t2})).await;
    assert_eq!(
        (v["result"].as_str(), v["code"].as_u64()),
        (Some("ACCOUNT_INACTIVE"), Some(4014))
    );
    app.patch(
        &format!("/v1/accounts/{account}"),
        &app.operator.clone(),
        json!({"status": "active"}),
    )
    .await;
    app.clock.advance(TimeDelta::hours(1));
    let v = verify(&app, ok.clone()).await;
    assert_eq!(
        (v["result"].as_str(), v["code"].as_u64()),
        (Some("EXPIRED"), Some(4016))
    );
    app.delete(&format!("/v1/tokens/{id}"), &secret).await;
    let v = verify(&app, ok).await;
    assert_eq!(
        (v["result"].as_str(), v["code"].as_u64()),
        (Some("REVOKED"), Some(4015))
    );

    // The last use is recorded on the token.
    let (_, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(v["token"]["last_used_ip"], "10.1.2.3");
    assert_eq!(v["token"]["last_used_at"], "2026-11-27T12:00:00Z");
    assert_eq!(v["token"]["calls_total"], 2);
    assert_eq!(v["token"]["status"], "revoked");
}

async fn refused_calls_spend_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app
        .account_with(json!({"name": "acme", "monthly_quota": 100}))
        .await;
    let (id, t) = app
        .token(
            &secret,
            json!({"name": "svc", "usage_limit": 5, "allowed_ips": ["10.0.0.1"], "scopes": ["a"]}),
        )
        .await;
    for body in [
        json!({"token": t, "call": "a", "client_ip": "10.0.0.2"}),
        json!({"token": t, "call": "b", "client_ip": "10.0.0.1"}),
        json!({"token": t, "call": "a", "client_ip": "10.0.0.1", "cost": 6}),
    ] {
        assert_ne!(result(&app, body).await, "VALID");
    }
    let (_, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(
        (
            v["token"]["remaining"].as_i64(),
            v["token"]["calls_this_month"].as_i64()
        ),
        (Some(5), Some(0))
    );
    let (_, v) = app.get(&format!("/v1/accounts/{account}"), &secret).await;
    assert_eq!(v["account"]["quota_used_this_month"], 0);
    assert_eq!(
        result(
            &app,
            json!({"token": t, "call": "a", "client_ip": "10.0.0.1", "cost": 5})
        )
        .await,
        "VALID"
    );
    let (_, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(
        (
            v["token"]["remaining"].as_i64(),
            v["token"]["status"].as_str()
        ),
        (Some(0), Some("exhausted"))
    );
    let (_, v) = app.get(&format!("/v1/accounts/{account}"), &secret).await;
    assert_eq!(v["account"]["quota_used_this_month"], 5);
}

async fn concurrent_verifies_never_overspend(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(&secret, json!({"name": "hot", "usage_limit": 50}))
        .await;
    let calls = (0..500).map(|_| {
        let app = &app;
        let body = json!({"token": t});
        async move { app.call(Method::POST, "/v1/verify", None, Some(body)).await }
    });
    let results = futures::future::join_all(calls).await;
    let valid = results
        .iter()
        .filter(|(_, v)| v["result"] == "VALID")
        .count();
    let exceeded = results
        .iter()
        .filter(|(_, v)| v["result"] == "USAGE_EXCEEDED")
        .count();
    assert_eq!((valid, exceeded), (50, 450));
    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(stored.remaining, Some(0));
    assert_eq!(stored.calls_total, 50);
}

/// A usage batch on PostgreSQL that meets a row an operator is changing waits for the change and
/// is decided on the changed row: the change is never overwritten by counters read before it.
#[tokio::test]
#[cfg_attr(
    not(tw_pg_tests),
    ignore = "PostgreSQL: set TOKENWARDEN_TEST_PG_URL to run"
)]
async fn a_row_changed_under_a_batch_is_never_overwritten() {
    if !postgres_enabled("verify::a_row_changed_under_a_batch_is_never_overwritten") {
        return;
    }
    let app = spawn_app(Backend::Postgres).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(&secret, json!({"name": "svc", "usage_limit": 10}))
        .await;
    assert_eq!(verify(&app, json!({"token": t})).await["remaining"], 9);
    let pg = sqlx::PgPool::connect(&app.pg_url().unwrap()).await.unwrap();
    let mut tx = pg.begin().await.unwrap();
    sqlx::query("UPDATE tokens SET remaining = 7 WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let call = tokio::spawn({
        let (client, url) = (app.client.clone(), app.url("/v1/verify"));
        async move {
            let r = client.post(url).json(&json!({"token": t})).send().await;
            r.unwrap().json::<Value>().await.unwrap()
        }
    });
    // The batch waits for the operator's lock.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!call.is_finished(), "the batch waits for the locked row");
    tx.commit().await.unwrap();
    let v = call.await.unwrap();
    assert_eq!(
        (v["result"].as_str(), v["remaining"].as_i64()),
        (Some("VALID"), Some(6))
    );
    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!((stored.remaining, stored.calls_total), (Some(6), 2));
}

async fn counters_from_an_earlier_month_count_as_zero(b: Backend) {
    let app = spawn_app(b).await;
    app.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap());
    let (account, secret) = app
        .account_with(json!({"name": "acme", "monthly_quota": 2}))
        .await;
    let (id, t) = app.token(&secret, json!({"name": "svc"})).await;
    assert_eq!(result(&app, json!({"token": t, "cost": 2})).await, "VALID");
    assert_eq!(
        result(&app, json!({"token": t})).await,
        "ACCOUNT_QUOTA_EXCEEDED"
    );
    // No job has run: the new month is seen at the moment of the check.
    app.clock.advance(TimeDelta::seconds(1));
    let (_, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(v["token"]["calls_this_month"], 0);
    assert_eq!(v["token"]["calls_total"], 2);
    let (_, v) = app.get(&format!("/v1/accounts/{account}"), &secret).await;
    assert_eq!(v["account"]["quota_used_this_month"], 0);
    let v = verify(&app, json!({"token": t})).await;
    assert_eq!(
        (v["result"].as_str(), v["calls_this_month"].as_i64()),
        (Some("VALID"), Some(1))
    );
}

async fn verify_bad_input_names_the_field(b: Backend) {
    let app = spawn_app(b).await;
    let (id, t) = {
        let (_, secret) = app.account("acme").await;
        app.token(&secret, json!({"name": "svc", "usage_limit": 3}))
            .await
    };
    for (body, field, code) in [
        (json!({}), "token", 4220),
        (json!({"token": t, "cost": 0}), "cost", 4220),
        (json!({"token": t, "cost": 1_000_001}), "cost", 4220),
        (json!({"token": t, "cost": "1"}), "cost", 4220),
        (
            json!({"token": t, "client_ip": "10.0.0.999"}),
            "client_ip",
            4220,
        ),
        (json!({"token": t, "call": ""}), "call", 4220),
        (json!({"token": t, "ip": "1.2.3.4"}), "ip", 4221),
    ] {
        let got = app.call(Method::POST, "/v1/verify", None, Some(body)).await;
        assert_error(&got, 422, code, Some(field));
    }
    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.remaining,
        Some(3),
        "no refused request consumed a use"
    );
}

async fn an_unreachable_store_never_answers_valid(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (_, t) = app.token(&secret, json!({"name": "svc"})).await;
    assert_eq!(result(&app, json!({"token": t})).await, "VALID");
    app.ctx.store.close().await;
    let got = app
        .call(Method::POST, "/v1/verify", None, Some(json!({"token": t})))
        .await;
    assert_error(&got, 503, 5030, None);
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

async fn forward_auth_reads_every_token_form(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let (id, t) = app
        .token(
            &secret,
            json!({"name": "svc", "role": "engineer", "usage_limit": 6, "scopes": ["/convert/*"]}),
        )
        .await;
    let auth = || {
        app.client
            .get(app.url("/v1/auth"))
            .header("X-Original-URI", "/convert/pdf?x=1")
    };
    let r = auth().bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["x-tokenwarden-result"], "VALID");
    assert_eq!(h["x-tokenwarden-token-id"], id.as_str());
    assert_eq!(h["x-tokenwarden-account-id"], account.as_str());
    assert_eq!(h["x-tokenwarden-role"], "engineer");
    assert_eq!(h["x-tokenwarden-remaining"], "5");
    assert_eq!(
        auth()
            .header("Authorization", format!("APIKey {t}"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        auth()
            .basic_auth("apikey", Some(&t))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .header("X-Forwarded-Uri", format!("/convert/doc?Token={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Outside the scopes: 403; no token: 401; spent: 429.
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .header("X-Original-URI", "/admin")
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-tokenwarden-result"], "SCOPE_DENIED");
    let r = app.client.get(app.url("/v1/auth")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = auth()
        .bearer_auth(&t)
        .header("X-Tokenwarden-Cost", "3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["result"], "USAGE_EXCEEDED");
    let r = auth()
        .bearer_auth(&t)
        .header("X-Tokenwarden-Cost", "lots")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "X-Tokenwarden-Cost");
    let r = auth()
        .bearer_auth(&t)
        .header("X-Tokenwarden-Cost", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tokenwarden-remaining"], "0");
}

async fn forward_auth_trusts_forwarded_for_only_from_proxies(b: Backend) {
    // Tests connect from 127.0.0.1, a trusted proxy by default.
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (_, t) = app
        .token(
            &secret,
            json!({"name": "svc", "allowed_ips": ["203.0.113.7"]}),
        )
        .await;
    let call = |xff: &'static str| {
        app.client
            .get(app.url("/v1/auth"))
            .bearer_auth(&t)
            .header("X-Forwarded-For", xff)
    };
    assert_eq!(call("203.0.113.7").send().await.unwrap().status(), 200);
    assert_eq!(
        call("198.51.100.1, 203.0.113.7")
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the nearest untrusted hop is the client"
    );
    assert_eq!(
        call("203.0.113.7, 198.51.100.1")
            .send()
            .await
            .unwrap()
            .status(),
        403,
        "a client cannot prepend its way in"
    );
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&t)
        .header("X-Real-IP", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Hops written with a port are addresses too; a hop that is not an address ends the walk
    // (the client is unknown) instead of being skipped to reach one the client wrote.
    for (xff, status) in [
        ("198.51.100.1, 203.0.113.7:443", 200),
        ("203.0.113.7, 198.51.100.1:5555", 403),
        ("203.0.113.7, [2001:db8::1]:443", 403),
        ("203.0.113.7, unknown", 403),
        ("203.0.113.7, _hidden", 403),
        ("203.0.113.7,", 200),
    ] {
        assert_eq!(call(xff).send().await.unwrap().status(), status, "{xff}");
    }

    // With no trusted proxies, forwarded headers are ignored and the peer (127.0.0.1) counts.
    let app = spawn_app_with(b, |c| c.trusted_proxies.clear()).await;
    let (_, secret) = app.account("acme").await;
    let (_, t) = app
        .token(
            &secret,
            json!({"name": "svc", "allowed_ips": ["203.0.113.7"]}),
        )
        .await;
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&t)
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let (_, t) = app
        .token(
            &secret,
            json!({"name": "local", "allowed_ips": ["127.0.0.1"]}),
        )
        .await;
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&t)
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A token with 10 uses, allowed the paths under `/convert/`: (id, token).
async fn convert_token(app: &TestApp) -> (String, String) {
    let (_, secret) = app.account("acme").await;
    app.token(
        &secret,
        json!({"name": "svc", "usage_limit": 10, "scopes": ["/convert/*"]}),
    )
    .await
}

async fn forward_auth_checks_the_path_the_upstream_will_serve(b: Backend) {
    let app = spawn_app(b).await;
    let (id, t) = convert_token(&app).await;
    let auth = |uri: &str| {
        app.client
            .get(app.url("/v1/auth"))
            .bearer_auth(&t)
            .header("X-Original-URI", uri)
    };
    for (uri, status) in [
        ("/convert/../admin", 403),
        ("/convert/%2e%2e/admin?x=1", 403),
        ("/convert/.%2E/admin", 403),
        // Upstreams that decode `%2F`, take `\` for `/` or drop `;params` read these as /admin.
        ("/convert/..%2fadmin", 403),
        ("/convert/%2e%2e%2Fadmin", 403),
        ("/convert/..%5cadmin", 403),
        ("/convert/..;/admin", 403),
        ("/convert/./pdf", 200),
        ("/convert/group%2Fproject", 200),
        ("/convert/", 200),
    ] {
        let r = auth(uri).send().await.unwrap();
        assert_eq!(r.status(), status, "{uri}");
    }
    // A path longer than a JSON `call` may be is still checked, not refused as bad input.
    let long = format!("/convert/{}", "a".repeat(400));
    assert_eq!(auth(&long).send().await.unwrap().status(), 200);
    // X-Tokenwarden-Call is the client's own unless the operator says the proxy sets it.
    let r = auth("/admin")
        .header("X-Tokenwarden-Call", "/convert/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-tokenwarden-result"], "SCOPE_DENIED");
    // Two URI headers that disagree: one came from the client. Refused, nothing spent.
    let r = auth("/convert/x")
        .header("X-Forwarded-Uri", "/admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "X-Original-URI", "{body}");
    let r = auth("/convert/x")
        .header("X-Forwarded-Uri", "/convert/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the same URI twice is fine");
    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(stored.remaining, Some(5), "five VALID, nothing else spent");

    // With the proxy trusted to set it, X-Tokenwarden-Call names the call.
    let app = spawn_app_with(b, |c| c.trust_call_header = true).await;
    let (_, secret) = app.account("acme").await;
    let (_, t) = app
        .token(&secret, json!({"name": "svc", "scopes": ["convert:*"]}))
        .await;
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&t)
        .header("X-Original-URI", "/api/v2/convert")
        .header("X-Tokenwarden-Call", "convert:pdf")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&t)
        .header("X-Tokenwarden-Call", &"x".repeat(300))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["field"], "X-Tokenwarden-Call", "{body}");
}

async fn forward_auth_answers_envoy_ext_authz_requests(b: Backend) {
    // Envoy's HTTP ext_authz with `path_prefix: /v1/auth` sends the original method and the
    // original path and query after the prefix.
    let app = spawn_app(b).await;
    let (id, t) = convert_token(&app).await;
    let send =
        |method: Method, path: &str| app.client.request(method, app.url(path)).bearer_auth(&t);
    let r = send(Method::POST, "/v1/auth/convert/pdf")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tokenwarden-token-id"], id.as_str());
    let r = send(Method::DELETE, "/v1/auth/admin/users/7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-tokenwarden-result"], "SCOPE_DENIED");
    // The proxy's path is believed before a URI header the client could have sent.
    let r = send(Method::GET, "/v1/auth/admin")
        .header("X-Original-URI", "/convert/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = send(Method::PATCH, "/v1/auth/convert/..%2fadmin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Dot segments as sent on the wire (an HTTP client library would resolve them first).
    let raw = format!(
        "GET /v1/auth/convert/../admin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\
         Connection: close\r\n\r\n"
    );
    let mut conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut conn, raw.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // The root of the upstream, and a method no HTTP library names.
    let r = send(Method::GET, "/v1/auth/").send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = send(Method::from_bytes(b"PROPFIND").unwrap(), "/v1/auth")
        .header("X-Original-URI", "/convert/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The token in the original query.
    let r = app
        .client
        .get(app.url(&format!("/v1/auth/convert/doc?Token={t}&page=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain /v1/auth with another method, the URI in a header.
    let r = send(Method::PUT, "/v1/auth")
        .header("X-Original-URI", "/convert/x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(stored.remaining, Some(6));
}

async fn statistics_per_token_and_day_as_csv(b: Backend) {
    let app = spawn_app(b).await;
    app.clock
        .set(Utc.with_ymd_and_hms(2026, 11, 30, 22, 0, 0).unwrap());
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(
            &secret,
            json!({"name": "svc", "usage_limit": 10, "scopes": ["a"]}),
        )
        .await;
    assert_eq!(
        result(&app, json!({"token": t, "call": "a", "cost": 3})).await,
        "VALID"
    );
    assert_eq!(
        result(&app, json!({"token": t, "call": "b"})).await,
        "SCOPE_DENIED"
    );
    assert_eq!(
        result(&app, json!({"token": t, "call": "a", "cost": 8})).await,
        "USAGE_EXCEEDED"
    );
    assert_eq!(
        result(&app, json!({"token": t, "call": "a"})).await,
        "VALID"
    );
    app.clock.advance(TimeDelta::hours(3)); // 2026-12-01 01:00 UTC: a new day and a new month
    assert_eq!(
        result(&app, json!({"token": t, "call": "a", "cost": 2})).await,
        "VALID"
    );

    let get = |q: &str| {
        let url = app.url(&format!("/v1/stats.csv?{q}"));
        let secret = secret.clone();
        let client = app.client.clone();
        async move {
            let r = client.get(url).bearer_auth(secret).send().await.unwrap();
            let status = r.status();
            let ct = r
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string());
            (status, ct, r.text().await.unwrap())
        }
    };
    let (s, ct, body) = get("from=2026-11-01&to=2026-12-31").await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(ct.as_deref(), Some("text/csv; charset=utf-8"));
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "day,token_id,account_id,valid,cost,revoked,expired,account_inactive,ip_not_allowed,scope_denied,account_quota_exceeded,usage_exceeded,bad_jwt,user_inactive");
    let acct = app
        .settled()
        .await
        .token(&id)
        .await
        .unwrap()
        .unwrap()
        .account_id;
    assert_eq!(
        lines[1],
        format!("2026-11-30,{id},{acct},2,4,0,0,0,0,1,0,1,0,0")
    );
    assert_eq!(
        lines[2],
        format!("2026-12-01,{id},{acct},1,2,0,0,0,0,0,0,0,0,0")
    );
    assert_eq!(lines.len(), 3);
    // The default range is the current month; last month's rows are kept, not reset.
    let (_, _, body) = get("").await;
    assert_eq!(body.lines().count(), 2);
    let (_, _, body) = get("from=&to=").await;
    assert_eq!(body.lines().count(), 2, "empty values are the defaults");
    // `to` alone reaches back to the 1st of its month.
    let (s, _, body) = get("to=2026-11-30").await;
    assert_eq!((s.as_u16(), body.lines().count()), (200, 2), "{body}");
    let (_, _, body) = get("from=30/11/2026&to=2026-11-30").await;
    assert_eq!(body.lines().count(), 2);
    // Another account sees none of them; bad ranges name the field.
    let (_, other) = app.account("globex").await;
    let r = app
        .client
        .get(app.url("/v1/stats.csv?from=2026-11-01"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().lines().count(), 1);
    // A day's rows are in byte order of token id on both backends (ids mix upper and lower case).
    for n in 0..6 {
        let (_, other) = app.token(&secret, json!({"name": format!("t{n}")})).await;
        assert_eq!(result(&app, json!({"token": other})).await, "VALID");
    }
    let (_, _, body) = get("from=2026-12-01").await;
    let ids: Vec<&str> = body
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(ids.len(), 7, "{body}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // The operator naming an account that does not exist gets 404, not an empty export.
    let r = app
        .client
        .get(app.url("/v1/stats.csv?account_id=nosuchacct"))
        .bearer_auth(&app.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .get(app.url(&format!(
            "/v1/stats.csv?from=2026-11-30&to=2026-11-30&account_id={acct}"
        )))
        .bearer_auth(&app.operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().lines().count(), 2);
    for (q, field) in [
        ("from=2026-02-30", "from"),
        ("from=2026-12-02&to=2026-12-01", "to"),
        ("from=2026-12-02", "from"),
        ("day=1", "day"),
    ] {
        let r = app
            .client
            .get(app.url(&format!("/v1/stats.csv?{q}")))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422, "{q}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["field"], field, "{q}");
    }

    // The same numbers as JSON: every CSV row, its columns by name.
    let (_, _, csv) = get("from=2026-11-01&to=2026-12-31").await;
    let (s, v) = app
        .get("/v1/stats?from=2026-11-01&to=2026-12-31", &secret)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows = v["rows"].as_array().unwrap();
    let csv_rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), csv_rows.len(), "{v}");
    for (row, line) in rows.iter().zip(&csv_rows) {
        let cells: Vec<String> = header
            .iter()
            .map(|h| match &row[*h] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(cells.join(","), *line);
    }
    // Per account: the day's rows summed; one token's rows alone.
    let (_, v) = app
        .get(
            "/v1/stats?from=2026-12-01&to=2026-12-01&per=account",
            &secret,
        )
        .await;
    assert_eq!(v["per"], "account");
    assert_eq!(v["rows"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["rows"][0]["valid"], 7, "{v}");
    assert!(v["rows"][0].get("token_id").is_none());
    let (_, v) = app
        .get(
            &format!("/v1/stats?from=2026-11-01&to=2026-12-31&token_id={id}"),
            &secret,
        )
        .await;
    assert_eq!(v["rows"].as_array().unwrap().len(), 2, "{v}");
    for (q, field) in [
        ("per=user", "per"),
        ("token_id=../x", "token_id"),
        ("from=2026-13-01", "from"),
    ] {
        assert_error(
            &app.get(&format!("/v1/stats?{q}"), &secret).await,
            422,
            4220,
            Some(field),
        );
    }
    let (_, v) = app.get("/v1/stats?from=2026-11-01", &other).await;
    assert_eq!(
        v["rows"].as_array().unwrap().len(),
        0,
        "another account's rows: {v}"
    );
}
