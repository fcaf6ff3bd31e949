//! Short-lived JWTs: signed by an independent HS256 implementation (hmac + sha2 here, not the
//! daemon's jsonwebtoken), minted by the daemon, and refused when tampered, expired, bound to
//! another IP or used more often than they allow.

use crate::both_backends;
use crate::helpers::*;
use base64::Engine;
use chrono::TimeDelta;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;

both_backends!(
    independently_signed_jwts_verify_and_count,
    bad_jwts_are_refused,
    minted_jwts_work_and_minting_checks_its_input,
    regeneration_retires_jwts_signed_with_the_old_secret,
    a_jwts_address_is_checked_after_the_tokens_state,
    a_reused_jwt_id_keeps_its_count_until_its_latest_expiry,
);

/// Two JWTs with one `Id` share a count; its record lives until the later one expires, so the
/// daily housekeeping does not hand the later JWT a fresh count.
async fn a_reused_jwt_id_keeps_its_count_until_its_latest_expiry(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = signer(&app, &secret, None).await;
    let first = sign(&claims(&id, 1, 60, ""), &t);
    assert_eq!(
        verify(&app, json!({"token": first})).await["result"],
        "VALID"
    );
    // Valid until 01:00 the next day.
    let later = sign(&claims(&id, 2, 13 * 3600, ""), &t);
    assert_eq!(
        verify(&app, json!({"token": later})).await["result"],
        "VALID"
    );
    // The next UTC day: housekeeping drops records past their expiry.
    app.clock.set(
        t0().date_naive()
            .succ_opt()
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc(),
    );
    app.tick().await;
    assert_eq!(
        verify(&app, json!({"token": later})).await["result"],
        "USAGE_EXCEEDED",
        "the shared count (2) is spent"
    );
}

/// A JWT-enabled token of the account `secret` administers: (id, plain token).
async fn signer(app: &TestApp, secret: &str, usage_limit: Option<i64>) -> (String, String) {
    app.token(
        secret,
        json!({"name": "spa", "jwt": true, "usage_limit": usage_limit}),
    )
    .await
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// HS256 written from RFC 7515, independent of the daemon's implementation.
fn sign(claims: &Value, key: &str) -> String {
    sign_with_header(br#"{"alg":"HS256","typ":"JWT"}"#, claims, key)
}

fn sign_with_header(header: &[u8], claims: &Value, key: &str) -> String {
    let signing_input = format!("{}.{}", b64(header), b64(claims.to_string().as_bytes()));
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64(&mac.finalize().into_bytes()))
}

fn claims(id: &str, count: i64, valid_for: i64, user_ip: &str) -> Value {
    json!({"Id": "8A4MpB1P", "RequestCount": count, "ValidUntil": t0().timestamp() + valid_for, "UserIp": user_ip, "ApiKey": id})
}

async fn verify(app: &TestApp, body: Value) -> Value {
    let (s, v) = app.call(Method::POST, "/v1/verify", None, Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn independently_signed_jwts_verify_and_count(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = signer(&app, &secret, Some(10)).await;
    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert!(stored.jwt_enabled);
    let sealed = stored.sealed_secret.expect("sealed secret");
    assert!(
        !String::from_utf8_lossy(&sealed).contains(&t[3..]),
        "the secret is not stored in the clear"
    );

    let jwt = sign(&claims(&id, 2, 60, ""), &t);
    let v = verify(&app, json!({"token": jwt})).await;
    assert_eq!(
        (
            v["result"].as_str(),
            v["token_id"].as_str(),
            v["remaining"].as_i64()
        ),
        (Some("VALID"), Some(id.as_str()), Some(9))
    );
    // As a bearer token through forward auth, too.
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tokenwarden-remaining"], "8");
    // Its own RequestCount (2) is spent; the token's remaining is untouched by the refusal.
    let v = verify(&app, json!({"token": jwt})).await;
    assert_eq!(v["result"], "USAGE_EXCEEDED");
    assert_eq!(
        app.settled()
            .await
            .token(&id)
            .await
            .unwrap()
            .unwrap()
            .remaining,
        Some(8)
    );
    // Another JWT (another Id) has its own count.
    let mut other = claims(&id, 1, 60, "");
    other["Id"] = json!("otherJWT");
    assert_eq!(
        verify(&app, json!({"token": sign(&other, &t)})).await["result"],
        "VALID"
    );
}

async fn bad_jwts_are_refused(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = signer(&app, &secret, Some(10)).await;
    let (plain_id, plain_t) = app.token(&secret, json!({"name": "plain"})).await;
    let good = sign(&claims(&id, 5, 60, "10.0.0.1"), &t);

    // Tampered: claims changed after signing.
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = b64(claims(&id, 500, 60, "10.0.0.1").to_string().as_bytes());
    let tampered = parts.join(".");
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (tampered, Some("10.0.0.1"), "BAD_JWT"),
        (
            sign(&claims(&id, 5, 60, ""), "tw_wrongkey"),
            None,
            "BAD_JWT",
        ),
        (
            sign(&claims(&plain_id, 5, 60, ""), &plain_t),
            None,
            "BAD_JWT",
        ),
        (sign(&claims(&id, 5, 0, ""), &t), None, "BAD_JWT"),
        (sign(&claims(&id, 5, 400 * 86400, ""), &t), None, "BAD_JWT"),
        (sign(&claims(&id, 0, 60, ""), &t), None, "BAD_JWT"),
        (
            sign_with_header(br#"{"alg":"none"}"#, &claims(&id, 5, 60, ""), &t),
            None,
            "BAD_JWT",
        ),
        (sign(&claims("ZZZZZZZZ", 5, 60, ""), &t), None, "BAD_JWT"),
        ("a.b.c".into(), None, "BAD_JWT"),
        (good.clone(), Some("10.0.0.2"), "IP_NOT_ALLOWED"),
        (good.clone(), None, "IP_NOT_ALLOWED"),
    ];
    for (jwt, ip, want) in cases {
        let v = verify(&app, json!({"token": jwt, "client_ip": ip})).await;
        assert_eq!(v["result"], want, "{jwt}: {v}");
        if want == "BAD_JWT" {
            assert_eq!(v["code"], 4012);
        }
    }
    assert_eq!(
        app.settled()
            .await
            .token(&id)
            .await
            .unwrap()
            .unwrap()
            .remaining,
        Some(10),
        "no refusal spent a use"
    );
    assert_eq!(
        verify(&app, json!({"token": good, "client_ip": "10.0.0.1"})).await["result"],
        "VALID"
    );
    // Expired by the clock.
    app.clock.advance(TimeDelta::seconds(60));
    assert_eq!(
        verify(&app, json!({"token": good, "client_ip": "10.0.0.1"})).await["result"],
        "BAD_JWT"
    );
}

async fn minted_jwts_work_and_minting_checks_its_input(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = signer(&app, &secret, None).await;
    let (_, plain) = app.token(&secret, json!({"name": "plain"})).await;
    let (s, v) = app
        .call(Method::POST, "/v1/jwt", None, Some(json!({"token": t, "request_count": 3, "lifetime_seconds": 120, "user_ip": "10.1.1.1"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["code"], 2006);
    assert_eq!(v["claims"]["ApiKey"], id.as_str());
    assert_eq!(v["claims"]["RequestCount"], 3);
    assert_eq!(v["claims"]["UserIp"], "10.1.1.1");
    assert_eq!(v["claims"]["ValidUntil"], t0().timestamp() + 120);
    assert_eq!(v["valid_until"], "2026-11-27T12:02:00Z");
    assert_eq!(v["claims"]["Id"].as_str().unwrap().len(), 8);
    let jwt = v["jwt"].as_str().unwrap().to_string();
    assert_eq!(
        verify(&app, json!({"token": jwt, "client_ip": "10.1.1.1"})).await["result"],
        "VALID"
    );

    assert_error(
        &app.call(Method::POST, "/v1/jwt", None, Some(json!({"token": plain})))
            .await,
        403,
        4030,
        None,
    );
    for (body, field) in [
        (json!({}), "token"),
        (json!({"token": t, "request_count": 0}), "request_count"),
        (
            json!({"token": t, "lifetime_seconds": 86401}),
            "lifetime_seconds",
        ),
        (json!({"token": t, "user_ip": "nope"}), "user_ip"),
        (json!({"token": t, "claims": {}}), "claims"),
    ] {
        let got = app.call(Method::POST, "/v1/jwt", None, Some(body)).await;
        assert_eq!(got.1["field"], field, "{}", got.1);
    }
    app.delete(&format!("/v1/tokens/{id}"), &secret).await;
    assert_error(
        &app.call(Method::POST, "/v1/jwt", None, Some(json!({"token": t})))
            .await,
        401,
        4011,
        None,
    );
    assert_eq!(
        verify(&app, json!({"token": jwt, "client_ip": "10.1.1.1"})).await["result"],
        "REVOKED"
    );
}

async fn regeneration_retires_jwts_signed_with_the_old_secret(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, old) = signer(&app, &secret, None).await;
    let (_, v) = app
        .post(&format!("/v1/tokens/{id}/regenerate"), &secret, json!({}))
        .await;
    let new = v["token"]["token"].as_str().unwrap().to_string();
    assert_eq!(
        verify(&app, json!({"token": sign(&claims(&id, 1, 60, ""), &old)})).await["result"],
        "BAD_JWT"
    );
    assert_eq!(
        verify(&app, json!({"token": sign(&claims(&id, 1, 60, ""), &new)})).await["result"],
        "VALID"
    );
}

async fn a_jwts_address_is_checked_after_the_tokens_state(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = signer(&app, &secret, Some(10)).await;
    let bound = sign(&claims(&id, 5, 60, "10.0.0.1"), &t);
    let from = |ip: &str| json!({"token": bound, "client_ip": ip});
    // The same IPv4 client written as an IPv4-mapped IPv6 address.
    assert_eq!(
        verify(&app, from("::ffff:10.0.0.1")).await["result"],
        "VALID"
    );
    let v = verify(&app, from("10.0.0.2")).await;
    assert_eq!(
        (v["result"].as_str(), v["code"].as_u64()),
        (Some("IP_NOT_ALLOWED"), Some(4032))
    );
    // A UserIp that is not an address makes the JWT malformed.
    let odd = sign(&claims(&id, 5, 60, "office"), &t);
    let v = verify(&app, json!({"token": odd, "client_ip": "10.0.0.1"})).await;
    assert_eq!(v["result"], "BAD_JWT");
    // Once the signer is revoked, that is what every caller hears, wherever it calls from.
    let (s, v) = app.delete(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let v = verify(&app, from("10.0.0.2")).await;
    assert_eq!(v["result"], "REVOKED", "{v}");
    assert_eq!(
        app.settled()
            .await
            .token(&id)
            .await
            .unwrap()
            .unwrap()
            .remaining,
        Some(9),
        "only the first call was counted"
    );
}
