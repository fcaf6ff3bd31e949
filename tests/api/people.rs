//! Users that can be switched off and deleted, the role a token acts with, and the issuer a
//! token records.

use crate::both_backends;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

both_backends!(
    an_inactive_users_tokens_answer_user_inactive_everywhere_until_reactivated,
    a_demoted_users_token_acts_with_the_demoted_role_everywhere,
    deleting_a_user_revokes_its_tokens_and_keeps_it_listed,
    user_changes_check_their_input_and_change_nothing_when_refused,
    a_token_records_the_credential_that_issued_it,
    deleting_a_user_while_tokens_are_issued_for_it_never_fails_either,
);

async fn verify(app: &TestApp, token: &str) -> Value {
    app.call(
        Method::POST,
        "/v1/verify",
        None,
        Some(json!({"token": token})),
    )
    .await
    .1
}

/// `GET /v1/auth` with `token`: the status and the result and role headers.
async fn forward(app: &TestApp, token: &str) -> (u16, String, Option<String>) {
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    (
        r.status().as_u16(),
        h("x-tokenwarden-result").unwrap_or_default(),
        h("x-tokenwarden-role"),
    )
}

async fn mint(app: &TestApp, signer: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/v1/jwt",
        None,
        Some(json!({"token": signer, "request_count": 5})),
    )
    .await
}

async fn an_inactive_users_tokens_answer_user_inactive_everywhere_until_reactivated(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let ann = app.user(&account, "ann@acme.example", "admin").await;
    let bob = app.user(&account, "bob@acme.example", "engineer").await;
    let (ann_t, ann_plain) = app
        .token(
            &secret,
            json!({"name": "ann-ci", "role": "engineer", "user_id": ann, "jwt": true}),
        )
        .await;
    let (_, bob_plain) = app
        .token(&secret, json!({"name": "bob-ci", "user_id": bob}))
        .await;
    let (_, jwt) = mint(&app, &ann_plain).await;
    let jwt = jwt["jwt"].as_str().unwrap().to_string();
    assert_eq!(verify(&app, &ann_plain).await["result"], "VALID");
    assert_eq!(verify(&app, &jwt).await["result"], "VALID");

    let (s, v) = app
        .patch(
            &format!("/v1/users/{ann}"),
            &secret,
            json!({"status": "inactive"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"]["status"], "inactive");

    // At once: verification, forward auth, a JWT it signed, management and signing.
    let v = verify(&app, &ann_plain).await;
    assert_eq!(
        (v["result"].as_str(), v["code"].as_u64()),
        (Some("USER_INACTIVE"), Some(4017)),
        "{v}"
    );
    assert_eq!(v["valid"], false);
    assert_eq!(forward(&app, &ann_plain).await.0, 401);
    assert_eq!(forward(&app, &ann_plain).await.1, "USER_INACTIVE");
    assert_eq!(verify(&app, &jwt).await["result"], "USER_INACTIVE");
    assert_error(&app.get("/v1/tokens", &ann_plain).await, 401, 4017, None);
    assert_error(&mint(&app, &ann_plain).await, 401, 4017, None);
    // Another user's token is untouched.
    assert_eq!(verify(&app, &bob_plain).await["result"], "VALID");
    // No token is issued for an inactive user.
    assert_error(
        &app.post(
            "/v1/tokens",
            &secret,
            json!({"name": "more", "user_id": ann}),
        )
        .await,
        409,
        4090,
        None,
    );
    // The listing says so, and nothing was counted.
    let (_, t) = app.get(&format!("/v1/tokens/{ann_t}"), &secret).await;
    assert_eq!(t["token"]["user_active"], false, "{t}");
    assert_eq!(t["token"]["calls_total"], 2, "{t}");
    let (_, users) = app
        .get(&format!("/v1/accounts/{account}/users"), &secret)
        .await;
    let listed: Vec<(String, String)> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["email"].as_str().unwrap().into(),
                u["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("ann@acme.example".to_string(), "inactive".to_string()),
            ("bob@acme.example".to_string(), "active".to_string())
        ]
    );

    // Reactivated: everything works again.
    let (s, v) = app
        .patch(
            &format!("/v1/users/{ann}"),
            &secret,
            json!({"status": "active"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(verify(&app, &ann_plain).await["result"], "VALID");
    assert_eq!(forward(&app, &ann_plain).await.0, 200);
    assert_eq!(verify(&app, &jwt).await["result"], "VALID");
    assert_eq!(mint(&app, &ann_plain).await.0, StatusCode::CREATED);

    // The refusals are in the day's statistics, in their own column.
    let r = app
        .client
        .get(app.url("/v1/stats.csv?from=2026-11-01&to=2026-11-30"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    let csv = r.text().await.unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header.iter().position(|c| *c == "user_inactive").unwrap();
    assert_eq!(col, header.len() - 1, "a new column goes last");
    let row = lines
        .find(|l| l.contains(&ann_t))
        .unwrap_or_else(|| panic!("{csv}"));
    let cells: Vec<&str> = row.split(',').collect();
    // verify, forward auth twice, the JWT: four refusals.
    assert_eq!(cells[col], "4", "{csv}");
}

async fn a_demoted_users_token_acts_with_the_demoted_role_everywhere(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let ann = app.user(&account, "ann@acme.example", "admin").await;
    let (id, plain) = app
        .token(
            &secret,
            json!({"name": "ann-admin", "role": "admin", "user_id": ann, "jwt": true}),
        )
        .await;
    assert_eq!(verify(&app, &plain).await["role"], "admin");
    let (s, v) = app
        .patch(
            &format!("/v1/users/{ann}"),
            &secret,
            json!({"role": "readonly"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let v = verify(&app, &plain).await;
    assert_eq!(
        (v["result"].as_str(), v["role"].as_str()),
        (Some("VALID"), Some("readonly")),
        "{v}"
    );
    let (status, _, role) = forward(&app, &plain).await;
    assert_eq!((status, role.as_deref()), (200, Some("readonly")));
    let (s, m) = mint(&app, &plain).await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    assert_eq!(m["claims"]["Role"], "readonly", "{m}");
    let jwt = m["jwt"].as_str().unwrap();
    assert_eq!(verify(&app, jwt).await["role"], "readonly");
    let (_, shown) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(shown["token"]["role"], "admin", "its own role is kept");
    assert_eq!(shown["token"]["effective_role"], "readonly");
    // Management uses the same role: a readonly token shows only itself.
    assert_error(&app.get("/v1/tokens", &plain).await, 403, 4030, None);

    // Promoted back: the token's own role is the cap again.
    app.patch(
        &format!("/v1/users/{ann}"),
        &secret,
        json!({"role": "admin"}),
    )
    .await;
    assert_eq!(verify(&app, &plain).await["role"], "admin");
    assert_eq!(forward(&app, &plain).await.2.as_deref(), Some("admin"));
}

async fn deleting_a_user_revokes_its_tokens_and_keeps_it_listed(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app
        .account_with(json!({"name": "acme", "max_tokens": 3}))
        .await;
    let ann = app.user(&account, "ann@acme.example", "engineer").await;
    let (t1, p1) = app
        .token(&secret, json!({"name": "a", "user_id": ann}))
        .await;
    let (_, p2) = app
        .token(&secret, json!({"name": "b", "user_id": ann}))
        .await;
    let (_, other) = app.token(&secret, json!({"name": "c"})).await;
    app.delete(&format!("/v1/tokens/{t1}"), &secret).await;
    let (s, v) = app.delete(&format!("/v1/users/{ann}"), &secret).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"]["status"], "deleted");
    assert_eq!(v["user"]["deleted_at"], "2026-11-27T12:00:00Z");
    assert_eq!(v["tokens_revoked"], 1, "one was revoked already");
    assert_eq!(verify(&app, &p1).await["result"], "REVOKED");
    assert_eq!(verify(&app, &p2).await["result"], "REVOKED");
    assert_eq!(verify(&app, &other).await["result"], "VALID");
    // Revoked tokens no longer count against max_tokens: two new ones fit.
    app.token(&secret, json!({"name": "d"})).await;
    app.token(&secret, json!({"name": "e"})).await;
    // Listed for the record; final.
    let (_, users) = app
        .get(&format!("/v1/accounts/{account}/users"), &secret)
        .await;
    assert_eq!(users["users"][0]["status"], "deleted", "{users}");
    assert_error(
        &app.patch(
            &format!("/v1/users/{ann}"),
            &secret,
            json!({"status": "active"}),
        )
        .await,
        409,
        4090,
        None,
    );
    assert_error(
        &app.delete(&format!("/v1/users/{ann}"), &secret).await,
        409,
        4090,
        None,
    );
    assert_error(
        &app.post("/v1/tokens", &secret, json!({"name": "x", "user_id": ann}))
            .await,
        409,
        4090,
        None,
    );
}

async fn user_changes_check_their_input_and_change_nothing_when_refused(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let (_, other_secret) = app.account("other").await;
    let ann = app.user(&account, "ann@acme.example", "admin").await;
    let (_, ann_plain) = app
        .token(
            &secret,
            json!({"name": "ann", "role": "admin", "user_id": ann}),
        )
        .await;
    let path = format!("/v1/users/{ann}");
    let before = app
        .get(&format!("/v1/accounts/{account}/users"), &secret)
        .await
        .1;
    for (body, status, code, field) in [
        (json!({"status": "deleted"}), 422, 4220, Some("status")),
        (json!({"status": "gone"}), 422, 4220, Some("status")),
        (json!({"status": null}), 422, 4220, Some("status")),
        (json!({"status": 1}), 422, 4220, Some("status")),
        (json!({"state": "inactive"}), 422, 4221, Some("state")),
    ] {
        assert_error(&app.patch(&path, &secret, body).await, status, code, field);
    }
    // A token may not switch off its own user, nor another account reach it.
    assert_error(
        &app.patch(&path, &ann_plain, json!({"status": "inactive"}))
            .await,
        403,
        4030,
        None,
    );
    assert_error(&app.delete(&path, &ann_plain).await, 403, 4030, None);
    assert_error(
        &app.patch(&path, &other_secret, json!({"status": "inactive"}))
            .await,
        404,
        4040,
        None,
    );
    assert_error(&app.delete(&path, &other_secret).await, 404, 4040, None);
    assert_error(
        &app.delete("/v1/users/nosuchuser", &secret).await,
        404,
        4040,
        None,
    );
    let after = app
        .get(&format!("/v1/accounts/{account}/users"), &secret)
        .await
        .1;
    assert_eq!(before, after, "nothing changed");
    assert_eq!(verify(&app, &ann_plain).await["result"], "VALID");
}

async fn a_token_records_the_credential_that_issued_it(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let ann = app.user(&account, "ann@acme.example", "admin").await;
    let (op_t, _) = app
        .token(
            &app.operator.clone(),
            json!({"name": "by-op", "account_id": account, "user_id": ann}),
        )
        .await;
    let (acc_t, _) = app
        .token(
            &secret,
            json!({"name": "by-account", "role": "admin", "user_id": ann}),
        )
        .await;
    let (admin_id, acc_plain) = app
        .token(&secret, json!({"name": "admin", "role": "admin"}))
        .await;
    let (tok_t, _) = app
        .token(&acc_plain, json!({"name": "by-token", "user_id": ann}))
        .await;
    let shown = |id: String| {
        let app = &app;
        let secret = secret.clone();
        async move {
            let (_, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
            (
                v["token"]["issued_by"].as_str().unwrap().to_string(),
                v["token"]["user_id"].as_str().map(String::from),
            )
        }
    };
    assert_eq!(shown(op_t).await, ("operator".into(), Some(ann.clone())));
    assert_eq!(shown(acc_t).await, ("account".into(), Some(ann.clone())));
    assert_eq!(
        shown(tok_t.clone()).await,
        (format!("token:{admin_id}"), Some(ann.clone()))
    );
    let (_, v) = app
        .get(&format!("/v1/tokens?issued_by=token:{admin_id}"), &secret)
        .await;
    assert_eq!(v["tokens"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["tokens"][0]["id"], tok_t.as_str());
    let (_, v) = app.get(&format!("/v1/tokens?user_id={ann}"), &secret).await;
    assert_eq!(v["tokens"].as_array().unwrap().len(), 3, "{v}");
    assert_error(
        &app.get(&format!("/v1/tokens?user_id={}", "x".repeat(101)), &secret)
            .await,
        422,
        4220,
        Some("user_id"),
    );
}

/// A user deleted while tokens are being issued for it: each issue either lands before the
/// deletion (and is revoked by it) or is refused after it (409); neither side fails. (The
/// deletion's revocations update the account's live count, so it takes the account's lock
/// before the user's, as an issue does.)
async fn deleting_a_user_while_tokens_are_issued_for_it_never_fails_either(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app
        .account_with(json!({"name": "acme", "max_tokens": 1000}))
        .await;
    for round in 0..15 {
        let user = app
            .user(&account, &format!("u{round}@acme.example"), "user")
            .await;
        app.token(&secret, json!({"name": "first", "user_id": user}))
            .await;
        let issue = || {
            app.post(
                "/v1/tokens",
                &secret,
                json!({"name": "more", "user_id": user}),
            )
        };
        let path = format!("/v1/users/{user}");
        let (d, a, b2, c) = tokio::join!(app.delete(&path, &secret), issue(), issue(), issue());
        assert_eq!(d.0, StatusCode::OK, "round {round}: delete {:?}", d.1);
        for (s, v) in [a, b2, c] {
            assert!(
                s == StatusCode::CREATED || (s == StatusCode::CONFLICT && v["code"] == 4090),
                "round {round}: issue {s} {v}"
            );
        }
        // Whatever was issued is revoked: the user has no live token.
        let (_, v) = app
            .get(&format!("/v1/tokens?user_id={user}&status=active"), &secret)
            .await;
        assert_eq!(
            v["tokens"].as_array().unwrap().len(),
            0,
            "round {round}: {v}"
        );
    }
}
