//! The account secret as a call credential (ConvertAPI's Secret), its public ApiKey with HTTP
//! Basic, and JWTs the secret signs, signed here by PyJWT, an implementation independent of
//! the daemon's.

use crate::both_backends;
use crate::helpers::*;
use base64::Engine;
use chrono::TimeDelta;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

both_backends!(
    an_account_secret_verifies_counts_and_is_refused_when_off_or_inactive,
    the_daemon_default_decides_for_accounts_that_do_not_say,
    forward_auth_takes_the_secret_with_its_api_key_in_either_basic_form,
    jwts_signed_by_the_account_secret_verify_and_count_against_the_account,
);

async fn verify(app: &TestApp, body: Value) -> Value {
    let (s, v) = app.call(Method::POST, "/v1/verify", None, Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn api_key(app: &TestApp, account: &str) -> String {
    let (s, v) = app
        .get(&format!("/v1/accounts/{account}"), &app.operator.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["account"]["api_key"].as_str().unwrap().to_string()
}

async fn an_account_secret_verifies_counts_and_is_refused_when_off_or_inactive(b: Backend) {
    let app = spawn_app(b).await;
    let (acct, secret) = app
        .account_with(json!({"name": "acme", "monthly_quota": 3, "max_tokens": 1}))
        .await;
    let key = api_key(&app, &acct).await;
    assert_eq!(key.len(), 8);

    let v = verify(&app, json!({"token": secret, "call": "convert:pdf"})).await;
    assert_eq!(v["result"], "VALID", "{v}");
    assert_eq!(v["account_id"], acct.as_str());
    assert_eq!(v["token_id"], key.as_str(), "counted under the ApiKey");
    assert_eq!(v["role"], "admin");
    for _ in 0..2 {
        assert_eq!(
            verify(&app, json!({"token": secret})).await["result"],
            "VALID"
        );
    }
    let v = verify(&app, json!({"token": secret})).await;
    assert_eq!(v["result"], "ACCOUNT_QUOTA_EXCEEDED", "{v}");
    let (_, a) = app.get(&format!("/v1/accounts/{acct}"), &secret).await;
    assert_eq!(a["account"]["quota_used_this_month"], 3, "{a}");
    let (_, stats) = app.get("/v1/stats", &secret).await;
    let row = &stats["rows"][0];
    assert_eq!(
        (
            row["token_id"].as_str(),
            &row["valid"],
            &row["account_quota_exceeded"]
        ),
        (Some(key.as_str()), &json!(3), &json!(1)),
        "{stats}"
    );

    // The key is not one of the account's tokens: not listed, not managed, not in max_tokens.
    let (_, list) = app.get("/v1/tokens", &secret).await;
    assert_eq!(list["tokens"], json!([]), "{list}");
    let got = app.get(&format!("/v1/tokens/{key}"), &secret).await;
    assert_eq!(got.0, StatusCode::NOT_FOUND, "{}", got.1);
    let got = app.delete(&format!("/v1/tokens/{key}"), &secret).await;
    assert_eq!(got.0, StatusCode::NOT_FOUND, "{}", got.1);
    app.token(&secret, json!({"name": "the one token"})).await;

    // Turned off: refused with its own code; the secret still manages the account.
    let op = app.operator.clone();
    let path = format!("/v1/accounts/{acct}");
    let (s, v) = app
        .patch(
            &path,
            &op,
            json!({"secret_calls": false, "monthly_quota": null}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["account"]["secret_calls"], false);
    let v = verify(&app, json!({"token": secret})).await;
    assert_eq!(
        (v["result"].as_str(), v["code"].as_u64()),
        (Some("SECRET_CALLS_OFF"), Some(4034))
    );
    let r = app.forward_auth(&secret).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.get("/v1/tokens", &secret).await.0, StatusCode::OK);
    // Back to the daemon's default (on).
    app.patch(&path, &op, json!({"secret_calls": null})).await;
    assert_eq!(
        verify(&app, json!({"token": secret})).await["result"],
        "VALID"
    );

    // An inactive account's secret is refused.
    app.patch(&path, &op, json!({"status": "inactive"})).await;
    assert_eq!(
        verify(&app, json!({"token": secret})).await["result"],
        "ACCOUNT_INACTIVE"
    );
    app.patch(&path, &op, json!({"status": "active"})).await;

    // A reset: the old secret is refused at once, the new one works, the ApiKey stays.
    let (s, v) = app.post(&format!("{path}/secret"), &op, json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let new_secret = v["secret"].as_str().unwrap().to_string();
    let old = verify(&app, json!({"token": secret})).await;
    assert_eq!(
        (old["result"].as_str(), old["code"].as_u64()),
        (Some("NOT_FOUND"), Some(4011))
    );
    let v = verify(&app, json!({"token": new_secret})).await;
    assert_eq!(v["result"], "VALID", "{v}");
    assert_eq!(v["token_id"], key.as_str());
    assert_eq!(api_key(&app, &acct).await, key);
}

async fn the_daemon_default_decides_for_accounts_that_do_not_say(b: Backend) {
    let app = spawn_app_with(b, |c| c.secret_calls = false).await;
    let (_, quiet) = app.account("quiet").await;
    let (_, loud) = app
        .account_with(json!({"name": "loud", "secret_calls": true}))
        .await;
    assert_eq!(
        verify(&app, json!({"token": quiet})).await["result"],
        "SECRET_CALLS_OFF"
    );
    assert_eq!(
        verify(&app, json!({"token": loud})).await["result"],
        "VALID"
    );
    // The default is applied at each start: on now, for the account that left it open.
    let app = app.restart_with(|c| c.secret_calls = true).await;
    assert_eq!(
        verify(&app, json!({"token": quiet})).await["result"],
        "VALID"
    );
    let (_, off) = app
        .account_with(json!({"name": "off", "secret_calls": false}))
        .await;
    assert_eq!(
        verify(&app, json!({"token": off})).await["result"],
        "SECRET_CALLS_OFF"
    );
}

async fn forward_auth_takes_the_secret_with_its_api_key_in_either_basic_form(b: Backend) {
    let app = spawn_app(b).await;
    let (acct, secret) = app.account("acme").await;
    let key = api_key(&app, &acct).await;
    let (other, _) = app.account("other").await;
    let other_key = api_key(&app, &other).await;
    let auth = |authorization: String, uri: Option<String>| {
        let mut rb = app
            .client
            .get(app.url("/v1/auth"))
            .header("Authorization", authorization);
        if let Some(u) = uri {
            rb = rb.header("X-Original-URI", u);
        }
        rb.send()
    };
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    for authorization in [
        format!("Basic {key} {secret}"),
        format!("Basic {}", b64(format!("{key}:{secret}"))),
    ] {
        let r = auth(authorization.clone(), None).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{authorization}");
        assert_eq!(r.headers()["x-tokenwarden-token-id"], key.as_str());
        assert_eq!(r.headers()["x-tokenwarden-account-id"], acct.as_str());
    }
    // Another account's ApiKey with this secret: not found.
    for authorization in [
        format!("Basic {other_key} {secret}"),
        format!("Basic {}", b64(format!("{other_key}:{secret}"))),
    ] {
        let r = auth(authorization.clone(), None).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{authorization}");
    }
    // ?Secret= in the original URI, as the seeds' clients send it.
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .header("X-Original-URI", format!("/convert/pdf?Secret={secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-tokenwarden-token-id"], key.as_str());
}

/// HS256 by PyJWT (Debian's python3-jwt), run with the system Python.
fn pyjwt(claims: &Value, key: &str) -> String {
    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, jwt; \
             print(jwt.encode(json.loads(sys.argv[1]), sys.argv[2], algorithm='HS256'))",
        ])
        .arg(claims.to_string())
        .arg(key)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "PyJWT is needed (apt-get install python3-jwt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn jwts_signed_by_the_account_secret_verify_and_count_against_the_account(b: Backend) {
    let app = spawn_app(b).await;
    let (acct, secret) = app
        .account_with(json!({"name": "acme", "monthly_quota": 100}))
        .await;
    let key = api_key(&app, &acct).await;
    let claims = |id: &str, count: i64, valid_for: i64, ip: &str| {
        json!({"Id": id, "RequestCount": count, "ValidUntil": t0().timestamp() + valid_for,
               "UserIp": ip, "ApiKey": key})
    };
    let jwt = pyjwt(&claims("Job00001", 2, 600, ""), &secret);
    let v = verify(&app, json!({"token": jwt})).await;
    assert_eq!(v["result"], "VALID", "{v}");
    assert_eq!(v["token_id"], key.as_str());
    assert_eq!(v["account_id"], acct.as_str());
    // As a bearer through forward auth, its second and last use.
    let r = app.forward_auth(&jwt).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Over its own RequestCount.
    assert_eq!(
        verify(&app, json!({"token": jwt})).await["result"],
        "USAGE_EXCEEDED"
    );
    let (_, a) = app.get(&format!("/v1/accounts/{acct}"), &secret).await;
    assert_eq!(a["account"]["quota_used_this_month"], 2, "{a}");

    // Tampered: the payload changed after signing.
    let mut parts: Vec<String> = jwt.split('.').map(str::to_string).collect();
    parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(claims("Job00001", 999, 600, "").to_string());
    let v = verify(&app, json!({"token": parts.join(".")})).await;
    assert_eq!(v["result"], "BAD_JWT", "{v}");
    // Signed with another key.
    let (_, other_secret) = app.account("other").await;
    let v = verify(
        &app,
        json!({"token": pyjwt(&claims("Job00002", 5, 600, ""), &other_secret)}),
    )
    .await;
    assert_eq!(v["result"], "BAD_JWT", "{v}");
    // Expired.
    let expired = pyjwt(&claims("Job00003", 5, 600, ""), &secret);
    app.clock.advance(TimeDelta::seconds(601));
    assert_eq!(
        verify(&app, json!({"token": expired})).await["result"],
        "BAD_JWT"
    );
    app.clock.set(t0());
    // Bound to one address, used from another.
    let bound = pyjwt(&claims("Job00004", 5, 600, "10.0.0.1"), &secret);
    let v = verify(&app, json!({"token": bound, "client_ip": "10.0.0.2"})).await;
    assert_eq!(v["result"], "IP_NOT_ALLOWED", "{v}");
    let v = verify(&app, json!({"token": bound, "client_ip": "10.0.0.1"})).await;
    assert_eq!(v["result"], "VALID", "{v}");

    // A reset retires every JWT the old secret signed; the new secret signs again.
    let before = pyjwt(&claims("Job00005", 5, 600, ""), &secret);
    let (_, v) = app
        .post(&format!("/v1/accounts/{acct}/secret"), &secret, json!({}))
        .await;
    let new_secret = v["secret"].as_str().unwrap().to_string();
    assert_eq!(
        verify(&app, json!({"token": before})).await["result"],
        "BAD_JWT"
    );
    let after = pyjwt(&claims("Job00006", 5, 600, ""), &new_secret);
    assert_eq!(
        verify(&app, json!({"token": after})).await["result"],
        "VALID"
    );
    // Secret calls off: its JWTs are refused too.
    app.patch(
        &format!("/v1/accounts/{acct}"),
        &app.operator.clone(),
        json!({"secret_calls": false}),
    )
    .await;
    assert_eq!(
        verify(&app, json!({"token": after})).await["result"],
        "SECRET_CALLS_OFF"
    );
    let (_, a) = app.get(&format!("/v1/accounts/{acct}"), &new_secret).await;
    assert_eq!(a["account"]["quota_used_this_month"], 4, "{a}");
}
