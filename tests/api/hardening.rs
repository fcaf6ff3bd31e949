//! Role rules and limits that a credential might try to get around.

use crate::both_backends;
use crate::helpers::*;
use chrono::TimeDelta;
use reqwest::StatusCode;
use serde_json::json;

both_backends!(
    a_token_cannot_lift_its_own_limits,
    tokens_never_outlive_the_token_that_made_them,
    roles_follow_the_user,
    reviving_an_expired_token_respects_max_tokens,
    engineers_list_only_what_they_may_show,
    odd_input_is_refused_with_the_field,
    no_tokens_for_an_inactive_account,
);

async fn a_token_cannot_lift_its_own_limits(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, me) = app
        .token(
            &secret,
            json!({"name": "eng", "role": "engineer", "usage_limit": 10, "scopes": ["a"]}),
        )
        .await;
    let path = format!("/v1/tokens/{id}");
    assert_error(
        &app.patch(&path, &me, json!({"usage_limit": null, "scopes": []}))
            .await,
        403,
        4030,
        None,
    );
    // Rotating itself takes a new secret and expiry only, never a limit.
    assert_error(
        &app.post(
            &format!("{path}/regenerate"),
            &me,
            json!({"usage_limit": null}),
        )
        .await,
        422,
        4221,
        Some("usage_limit"),
    );
    let (_, v) = app.get(&path, &secret).await;
    assert_eq!(
        (
            v["token"]["usage_limit"].as_i64(),
            v["token"]["scopes"].clone()
        ),
        (Some(10), json!(["a"]))
    );
    // It may still show and revoke itself.
    assert_eq!(app.get(&path, &me).await.0, StatusCode::OK);
    assert_eq!(app.delete(&path, &me).await.1["code"], 2001);
}

async fn tokens_never_outlive_the_token_that_made_them(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (_, eng) = app
        .token(
            &secret,
            json!({"name": "eng", "role": "engineer", "expires_on": "2027-01-01"}),
        )
        .await;
    let (s, v) = app.post("/v1/tokens", &eng, json!({"name": "child"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        v["tokens"][0]["expires_at"], "2027-01-01T00:00:00Z",
        "inherits the maker's expiry"
    );
    let child = v["tokens"][0]["id"].as_str().unwrap().to_string();
    assert_error(
        &app.post(
            "/v1/tokens",
            &eng,
            json!({"name": "x", "expires_on": "2027-01-02"}),
        )
        .await,
        422,
        4220,
        Some("expires_on"),
    );
    assert_error(
        &app.post(
            "/v1/tokens",
            &eng,
            json!({"name": "x", "lifetime_seconds": null}),
        )
        .await,
        422,
        4220,
        Some("lifetime_seconds"),
    );
    assert_error(
        &app.patch(
            &format!("/v1/tokens/{child}"),
            &eng,
            json!({"expires_on": null}),
        )
        .await,
        422,
        4220,
        Some("lifetime_seconds"),
    );
    let (s, v) = app
        .post(
            "/v1/tokens",
            &eng,
            json!({"name": "short", "lifetime_seconds": 60}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

async fn roles_follow_the_user(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let ro = app.user(&account, "ro@acme.example", "readonly").await;
    let (ro_token, _) = app
        .token(
            &secret,
            json!({"name": "ro", "role": "readonly", "user_id": ro}),
        )
        .await;
    // PATCH cannot raise a token above its user's role.
    assert_error(
        &app.patch(
            &format!("/v1/tokens/{ro_token}"),
            &secret,
            json!({"role": "admin"}),
        )
        .await,
        403,
        4031,
        Some("role"),
    );
    assert_eq!(
        app.get(&format!("/v1/tokens/{ro_token}"), &secret).await.1["token"]["role"],
        "readonly"
    );

    // Demoting a user demotes what its tokens may do at once.
    let eng = app.user(&account, "eng@acme.example", "engineer").await;
    let (_, eng_token) = app
        .token(
            &secret,
            json!({"name": "eng", "role": "engineer", "user_id": eng}),
        )
        .await;
    assert_eq!(
        app.post("/v1/tokens", &eng_token, json!({"name": "ok"}))
            .await
            .0,
        StatusCode::CREATED
    );
    app.patch(
        &format!("/v1/users/{eng}"),
        &app.operator.clone(),
        json!({"role": "readonly"}),
    )
    .await;
    assert_error(
        &app.post(
            "/v1/tokens",
            &eng_token,
            json!({"name": "no", "role": "readonly"}),
        )
        .await,
        403,
        4030,
        None,
    );
    assert_error(&app.get("/v1/tokens", &eng_token).await, 403, 4030, None);
}

async fn reviving_an_expired_token_respects_max_tokens(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app
        .account_with(json!({"name": "one", "max_tokens": 1}))
        .await;
    let (a, _) = app
        .token(&secret, json!({"name": "a", "lifetime_seconds": 1}))
        .await;
    app.clock.advance(TimeDelta::seconds(2));
    app.token(&secret, json!({"name": "b"})).await;
    assert_error(
        &app.patch(
            &format!("/v1/tokens/{a}"),
            &secret,
            json!({"lifetime_seconds": 3600}),
        )
        .await,
        409,
        4091,
        None,
    );
    let (_, v) = app
        .get(
            &format!("/v1/tokens?account_id={account}&status=active"),
            &app.operator.clone(),
        )
        .await;
    assert_eq!(v["tokens"].as_array().unwrap().len(), 1);
    // Other edits of the expired token are fine: it stays expired and uncounted.
    assert_eq!(
        app.patch(&format!("/v1/tokens/{a}"), &secret, json!({"name": "old"}))
            .await
            .0,
        StatusCode::OK
    );
}

async fn engineers_list_only_what_they_may_show(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let boss = app.user(&account, "boss@acme.example", "admin").await;
    let (eng, eng_plain) = app
        .token(
            &secret,
            json!({"name": "eng", "role": "engineer", "user_id": boss}),
        )
        .await;
    let (adm, _) = app
        .token(
            &secret,
            json!({"name": "adm", "role": "admin", "user_id": boss}),
        )
        .await;
    let (_, v) = app.get("/v1/tokens", &eng_plain).await;
    let ids: Vec<&str> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [eng.as_str()]);
    assert_error(
        &app.get(&format!("/v1/tokens/{adm}"), &eng_plain).await,
        404,
        4040,
        None,
    );
}

async fn odd_input_is_refused_with_the_field(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    assert_error(
        &app.post(
            "/v1/tokens",
            &secret,
            json!({"name": "x", "usage_limit": 5, "RequestCount": 6}),
        )
        .await,
        422,
        4220,
        Some("usage_limit"),
    );
    assert_error(
        &app.post("/v1/tokens", &secret, json!({"name": "acme\u{200b}"}))
            .await,
        422,
        4220,
        Some("name"),
    );
    assert_error(
        &app.post("/v1/tokens", &secret, json!({"name": "\u{202e}gnp.exe"}))
            .await,
        422,
        4220,
        Some("name"),
    );
    assert_error(
        &app.post(
            "/v1/accounts",
            &app.operator.clone(),
            json!({"name": "acme\u{feff}"}),
        )
        .await,
        422,
        4220,
        Some("name"),
    );
    let (id, _) = app.token(&secret, json!({"name": "t"})).await;
    for (body, field) in [
        (json!({"name": null}), "name"),
        (json!({"scopes": null}), "scopes"),
        (json!({"role": null}), "role"),
    ] {
        assert_error(
            &app.patch(&format!("/v1/tokens/{id}"), &secret, body).await,
            422,
            4220,
            Some(field),
        );
    }
    for (body, field) in [
        (json!({"max_tokens": null}), "max_tokens"),
        (json!({"status": null}), "status"),
    ] {
        assert_error(
            &app.patch(
                &format!("/v1/accounts/{account}"),
                &app.operator.clone(),
                body,
            )
            .await,
            422,
            4220,
            Some(field),
        );
    }
    assert_error(
        &app.get("/v1/tokens?page=1.x", &secret).await,
        422,
        4220,
        Some("page"),
    );
    assert_eq!(app.token_ids(&account).await.len(), 1);
}

async fn no_tokens_for_an_inactive_account(b: Backend) {
    let app = spawn_app(b).await;
    let op = app.operator.clone();
    let (account, _) = app.account("acme").await;
    app.patch(
        &format!("/v1/accounts/{account}"),
        &op,
        json!({"status": "inactive"}),
    )
    .await;
    assert_error(
        &app.post(
            "/v1/tokens",
            &op,
            json!({"name": "x", "account_id": account}),
        )
        .await,
        409,
        4090,
        None,
    );
    assert!(app.token_ids(&account).await.is_empty());
}
