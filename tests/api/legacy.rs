//! The seeds' `/token/create` and `/token/{id}` forms.

use crate::both_backends;
use crate::helpers::*;
use serde_json::Value;

both_backends!(
    legacy_create_and_delete,
    legacy_defaults_are_the_seeds,
    legacy_bad_input_names_the_parameter,
);

async fn post_query(app: &TestApp, query: &str) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(&format!("/token/create?{query}")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn legacy_create_and_delete(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let (s, v) = post_query(
        &app,
        &format!("Secret={secret}&RequestCount=5&Lifetime=60&Count=2"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["Code"], 2000);
    let tokens = v["Tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0]["ValidUntil"], "2026-11-27T12:01:00Z");
    assert_eq!(tokens[0]["RequestCount"], 5);
    let plain = tokens[0]["Id"].as_str().unwrap().to_string();
    let id = tokens[0]["TokenId"].as_str().unwrap().to_string();
    assert!(plain.starts_with(&format!("tw_{id}")));

    // Delete by public id, and by the token itself.
    let r = app
        .client
        .delete(app.url(&format!("/token/{id}?Secret={secret}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["Code"].as_u64(), v["Id"].as_str()),
        (Some(2001), Some(id.as_str()))
    );
    let other_plain = tokens[1]["Id"].as_str().unwrap();
    let r = app
        .client
        .delete(app.url(&format!("/token/{other_plain}?Secret={secret}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = app
        .get(
            &format!("/v1/tokens?account_id={account}&status=revoked"),
            &app.operator.clone(),
        )
        .await;
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
    // Without the secret nothing is deleted.
    let r = app
        .client
        .delete(app.url(&format!("/token/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["Code"], 4013);
}

async fn legacy_defaults_are_the_seeds(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (s, v) = post_query(&app, &format!("Secret={secret}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["Tokens"][0]["RequestCount"], 1);
    assert_eq!(v["Tokens"][0]["ValidUntil"], "2026-11-27T13:00:00Z");

    // The default hour is cut to what the daemon allows; a longer Lifetime sent is refused.
    let app = spawn_app_with(b, |c| c.tokens.max_lifetime_seconds = 600).await;
    let (_, secret) = app.account("acme").await;
    let (s, v) = post_query(&app, &format!("Secret={secret}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["Tokens"][0]["ValidUntil"], "2026-11-27T12:10:00Z");
    let (s, v) = post_query(&app, &format!("Secret={secret}&Lifetime=3600")).await;
    assert_eq!((s, v["Field"].as_str()), (422, Some("Lifetime")), "{v}");
}

async fn legacy_bad_input_names_the_parameter(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    for (q, field) in [
        ("RequestCount=0", "RequestCount"),
        ("RequestCount=1000000000", "RequestCount"),
        ("Lifetime=abc", "Lifetime"),
        ("Lifetime=315569521", "Lifetime"),
        ("Count=0", "Count"),
        ("Colour=red", "Colour"),
    ] {
        let (s, v) = post_query(&app, &format!("Secret={secret}&{q}")).await;
        assert_eq!(s, 422, "{q}: {v}");
        assert_eq!(v["Field"], field, "{q}: {v}");
        assert!(v["Code"].as_u64().unwrap() >= 4220);
    }
    let (s, v) = post_query(&app, "RequestCount=5").await;
    assert_eq!((s, v["Code"].as_u64()), (401, Some(4013)));
    let (s, v) = post_query(&app, "Secret=tw_sk_wrong").await;
    assert_eq!((s, v["Code"].as_u64()), (401, Some(4010)));
    assert!(app.token_ids(&account).await.is_empty());
}
