//! Accounts, users, secrets and credentials.

use crate::both_backends;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both_backends!(
    account_lifecycle,
    account_bad_input_changes_nothing,
    only_the_operator_manages_accounts,
    secret_reset_stops_the_old_secret_at_once,
    inactive_accounts_get_4014,
    users_and_their_bad_input,
    credentials_are_checked,
    credential_forms_are_all_accepted,
);

async fn account_lifecycle(b: Backend) {
    let app = spawn_app(b).await;
    let op = app.operator.clone();
    let (s, v) = app
        .post(
            "/v1/accounts",
            &op,
            json!({"name": "acme", "monthly_quota": 5000}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["code"], 2003);
    assert_eq!(v["account"]["status"], "active");
    assert_eq!(v["account"]["max_tokens"], 50, "default from config");
    assert_eq!(v["account"]["monthly_quota"], 5000);
    assert_eq!(v["account"]["created_at"], "2026-11-27T12:00:00Z");
    let id = v["account"]["id"].as_str().unwrap().to_string();
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("tw_sk_"), "{secret}");

    // The secret is never shown again.
    let (s, v) = app.get(&format!("/v1/accounts/{id}"), &op).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v.get("secret").is_none() && !v.to_string().contains(&secret));

    // The account's own secret may see it; another account's may not even learn it exists.
    assert_eq!(
        app.get(&format!("/v1/accounts/{id}"), &secret).await.0,
        StatusCode::OK
    );
    let (_, other) = app.account("globex").await;
    assert_error(
        &app.get(&format!("/v1/accounts/{id}"), &other).await,
        404,
        4040,
        None,
    );

    let (s, v) = app
        .patch(
            &format!("/v1/accounts/{id}"),
            &op,
            json!({"max_tokens": 3, "monthly_quota": null}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["account"]["max_tokens"], 3);
    assert!(v["account"]["monthly_quota"].is_null());

    let (s, v) = app.get("/v1/accounts", &op).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "globex"]);
    let (_, v) = app.get("/v1/accounts?limit=1", &op).await;
    assert_eq!(v["accounts"].as_array().unwrap().len(), 1);
    let next = v["next_page"].as_str().unwrap().to_string();
    let (_, v) = app
        .get(&format!("/v1/accounts?limit=1&page={next}"), &op)
        .await;
    assert_eq!(v["accounts"][0]["name"], "globex");
}

async fn account_bad_input_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let op = app.operator.clone();
    let (id, _) = app.account("acme").await;
    for (body, field, code) in [
        (json!({}), "name", 4220),
        (json!({"name": "  "}), "name", 4220),
        (json!({"name": "x".repeat(101)}), "name", 4220),
        (json!({"name": "a", "max_tokens": 0}), "max_tokens", 4220),
        (
            json!({"name": "a", "monthly_quota": -1}),
            "monthly_quota",
            4220,
        ),
        (
            json!({"name": "a", "max_tokens": "ten"}),
            "max_tokens",
            4220,
        ),
        (json!({"name": "a", "colour": "red"}), "colour", 4221),
    ] {
        let got = app.post("/v1/accounts", &op, body.clone()).await;
        assert_error(&got, 422, code, Some(field));
    }
    assert_error(
        &app.post("/v1/accounts", &op, json!({"name": "acme"})).await,
        409,
        4090,
        None,
    );
    let (_, v) = app.get("/v1/accounts", &op).await;
    assert_eq!(
        v["accounts"].as_array().unwrap().len(),
        1,
        "nothing was created: {v}"
    );

    for (body, field) in [
        (json!({"status": "paused"}), "status"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"monthly_quota": 0}), "monthly_quota"),
        (json!({"name": "renamed"}), "name"),
    ] {
        let got = app.patch(&format!("/v1/accounts/{id}"), &op, body).await;
        assert_eq!(got.1["field"], field, "{}", got.1);
    }
    let (_, v) = app.get(&format!("/v1/accounts/{id}"), &op).await;
    assert_eq!(v["account"]["status"], "active");
    assert_eq!(v["account"]["max_tokens"], 50);
    assert_eq!(v["account"]["name"], "acme");

    // A body sent as it is, with its content type: the status and the answer.
    let send = |content_type: &'static str, body: &'static str| {
        app.client
            .post(app.url("/v1/accounts"))
            .bearer_auth(&op)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    // Malformed JSON is a 400 that says so.
    let resp = send("application/json", "{\"name\": ").await.unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["code"], 4000);
    // A whole object followed by more is refused too, and nothing is made.
    let resp = send(
        "application/json",
        "{\"name\": \"tail\"} {\"name\": \"more\"}",
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["code"], 4000, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("trailing characters"),
        "{v}"
    );
    let (_, listed) = app.get("/v1/accounts", &op).await;
    assert!(
        !listed.to_string().contains("\"tail\""),
        "no account was made: {listed}"
    );
    // A body that is not JSON at all.
    let resp = send("text/plain", "name=x").await.unwrap();
    assert_eq!(resp.status(), 415);
    assert_eq!(
        app.get(&format!("/v1/accounts/{}", "nope"), &op).await.1["code"],
        4040
    );
}

async fn only_the_operator_manages_accounts(b: Backend) {
    let app = spawn_app(b).await;
    let (id, secret) = app.account("acme").await;
    assert_error(
        &app.post("/v1/accounts", &secret, json!({"name": "mine"}))
            .await,
        403,
        4030,
        None,
    );
    assert_error(&app.get("/v1/accounts", &secret).await, 403, 4030, None);
    assert_error(
        &app.patch(
            &format!("/v1/accounts/{id}"),
            &secret,
            json!({"max_tokens": 1000}),
        )
        .await,
        403,
        4030,
        None,
    );
    let (_, admin_token) = app
        .token(&secret, json!({"name": "adm", "role": "admin"}))
        .await;
    assert_error(
        &app.patch(
            &format!("/v1/accounts/{id}"),
            &admin_token,
            json!({"status": "inactive"}),
        )
        .await,
        403,
        4030,
        None,
    );
    let (_, v) = app
        .get(&format!("/v1/accounts/{id}"), &app.operator.clone())
        .await;
    assert_eq!(v["account"]["max_tokens"], 50);
    assert_eq!(v["account"]["status"], "active");
}

async fn secret_reset_stops_the_old_secret_at_once(b: Backend) {
    let app = spawn_app(b).await;
    let (id, old) = app.account("acme").await;
    let (s, v) = app
        .post(&format!("/v1/accounts/{id}/secret"), &old, json!({}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let new = v["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_error(&app.get("/v1/tokens", &old).await, 401, 4010, None);
    assert_eq!(app.get("/v1/tokens", &new).await.0, StatusCode::OK);
    // The operator may reset it too; another account may not.
    let (_, other) = app.account("globex").await;
    assert_error(
        &app.post(&format!("/v1/accounts/{id}/secret"), &other, json!({}))
            .await,
        404,
        4040,
        None,
    );
    assert_eq!(
        app.get("/v1/tokens", &new).await.0,
        StatusCode::OK,
        "a refused reset changed nothing"
    );
    let (s, _) = app
        .post(
            &format!("/v1/accounts/{id}/secret"),
            &app.operator.clone(),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_error(&app.get("/v1/tokens", &new).await, 401, 4010, None);
}

async fn inactive_accounts_get_4014(b: Backend) {
    let app = spawn_app(b).await;
    let op = app.operator.clone();
    let (id, secret) = app.account("acme").await;
    let (_, token) = app
        .token(&secret, json!({"name": "eng", "role": "engineer"}))
        .await;
    let (s, _) = app
        .patch(
            &format!("/v1/accounts/{id}"),
            &op,
            json!({"status": "inactive"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_error(&app.get("/v1/tokens", &secret).await, 401, 4014, None);
    assert_error(&app.get("/v1/tokens", &token).await, 401, 4014, None);
    assert_error(
        &app.post("/v1/tokens", &secret, json!({"name": "x"})).await,
        401,
        4014,
        None,
    );
    app.patch(
        &format!("/v1/accounts/{id}"),
        &op,
        json!({"status": "active"}),
    )
    .await;
    assert_eq!(app.get("/v1/tokens", &token).await.0, StatusCode::OK);
}

async fn users_and_their_bad_input(b: Backend) {
    let app = spawn_app(b).await;
    let op = app.operator.clone();
    let (id, secret) = app.account("acme").await;
    let path = format!("/v1/accounts/{id}/users");
    let (s, v) = app
        .post(
            &path,
            &secret,
            json!({"email": "Ann@Acme.Example", "role": "engineer"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["user"]["email"], "ann@acme.example");
    assert_eq!(v["user"]["notify_expiry"], true);
    let uid = v["user"]["id"].as_str().unwrap().to_string();

    for (body, field, code) in [
        (
            json!({"email": "not-an-email", "role": "user"}),
            "email",
            4220,
        ),
        (json!({"role": "user"}), "email", 4220),
        (
            json!({"email": "b@acme.example", "role": "root"}),
            "role",
            4220,
        ),
        (
            json!({"email": "b@acme.example", "notify_expiry": "yes"}),
            "notify_expiry",
            4220,
        ),
        (
            json!({"email": "b@acme.example", "phone": "1"}),
            "phone",
            4221,
        ),
    ] {
        assert_error(
            &app.post(&path, &secret, body).await,
            422,
            code,
            Some(field),
        );
    }
    assert_error(
        &app.post(&path, &secret, json!({"email": "ann@acme.example"}))
            .await,
        409,
        4090,
        None,
    );
    let (_, v) = app.get(&path, &secret).await;
    assert_eq!(
        v["users"].as_array().unwrap().len(),
        1,
        "nothing was created: {v}"
    );

    let (s, v) = app
        .patch(
            &format!("/v1/users/{uid}"),
            &op,
            json!({"role": "readonly", "notify_expiry": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"]["role"], "readonly");
    assert_eq!(v["user"]["notify_expiry"], false);
    assert_error(
        &app.patch(&format!("/v1/users/{uid}"), &op, json!({"role": "boss"}))
            .await,
        422,
        4220,
        Some("role"),
    );
    let (_, v) = app.get(&path, &op).await;
    assert_eq!(
        v["users"][0]["role"], "readonly",
        "a refused change changed nothing"
    );

    // Another account cannot see or change them.
    let (_, other) = app.account("globex").await;
    assert_error(&app.get(&path, &other).await, 404, 4040, None);
    assert_error(
        &app.patch(
            &format!("/v1/users/{uid}"),
            &other,
            json!({"role": "admin"}),
        )
        .await,
        404,
        4040,
        None,
    );
}

async fn credentials_are_checked(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    assert_error(
        &app.call(Method::GET, "/v1/tokens", None, None).await,
        401,
        4013,
        None,
    );
    // Right shape, wrong value: the checksum catches a typo before the store is asked.
    let mut typo: Vec<char> = secret.chars().collect();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
    let typo: String = typo.into_iter().collect();
    assert_error(&app.get("/v1/tokens", &typo).await, 401, 4010, None);
    assert_error(&app.get("/v1/tokens", "hunter2").await, 401, 4011, None);
    let (_, tok) = app.token(&secret, json!({"name": "t"})).await;
    let mut t2: Vec<char> = tok.chars().collect();
    let i = 12;
    t2[i] = if t2[i] == 'a' { 'b' } else { 'a' };
    assert_error(
        &app.get("/v1/tokens", &t2.into_iter().collect::<String>())
            .await,
        401,
        4011,
        None,
    );
    // A well-formed operator credential that is not the one in the store.
    let fake_op = tokenwarden::domain::credential::new_operator_credential("tw");
    assert_error(
        &app.get("/v1/accounts", fake_op.expose()).await,
        401,
        4010,
        None,
    );
    // No error message ever echoes the credential.
    let (_, v) = app.get("/v1/tokens", &typo).await;
    assert!(!v.to_string().contains(&typo));
}

async fn credential_forms_are_all_accepted(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let r = app
        .client
        .get(app.url("/v1/tokens"))
        .header("Authorization", format!("APIKey {secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(app.url(&format!("/v1/tokens?Secret={secret}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .client
        .get(app.url("/v1/tokens"))
        .header("Authorization", format!("Bearer {secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
