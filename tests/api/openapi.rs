//! The OpenAPI document is as strict as the daemon: what it requires, bounds and enumerates is
//! what the daemon enforces, and a request it allows is one the daemon takes.

use crate::both_backends;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

both_backends!(
    openapi_request_schemas_say_what_is_required,
    openapi_bounds_and_enums_match_validation,
    openapi_forward_auth_lists_every_method,
    openapi_whole_numbers_written_as_floats_are_accepted,
    openapi_empty_bodies_behave_as_documented,
    openapi_aliases_and_exclusions_are_enforced,
);

async fn doc(app: &TestApp) -> Value {
    let (s, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    doc
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "no schema {name}");
    s
}

fn required(s: &Value) -> Vec<&str> {
    s["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn query_param<'a>(doc: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    doc["paths"][path][method]["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("no parameter {name} on {method} {path}"))
}

async fn openapi_request_schemas_say_what_is_required(b: Backend) {
    let app = spawn_app(b).await;
    let doc = doc(&app).await;
    for (name, fields) in [
        ("CreateAccount", vec!["name"]),
        ("CreateUser", vec!["email"]),
        ("CreateTokens", vec!["name"]),
        ("VerifyRequest", vec!["token"]),
        ("MintJwt", vec!["token"]),
    ] {
        let s = schema(&doc, name);
        assert_eq!(required(s), fields, "{name}");
        for f in fields {
            // A required field is a string, never `null`.
            assert_eq!(s["properties"][f]["type"], "string", "{name}.{f}");
        }
    }
    // Unknown fields are refused, and the document says so.
    for name in [
        "CreateAccount",
        "UpdateAccount",
        "CreateUser",
        "UpdateUser",
        "CreateTokens",
        "UpdateToken",
        "Regenerate",
        "VerifyRequest",
        "MintJwt",
    ] {
        assert_eq!(
            schema(&doc, name)["additionalProperties"],
            false,
            "{name} allows unknown fields"
        );
    }
    // Fields that may not be `null` are not nullable.
    let update = schema(&doc, "UpdateToken");
    assert_eq!(update["properties"]["name"]["type"], "string");
    assert_eq!(
        update["properties"]["usage_limit"]["type"],
        json!(["integer", "null"])
    );
    // A PATCH body is required; a regeneration's is not.
    let body =
        |path: &str, method: &str| doc["paths"][path][method]["requestBody"]["required"].clone();
    assert_eq!(body("/v1/tokens/{id}", "patch"), true);
    assert_eq!(body("/v1/accounts/{id}", "patch"), true);
    assert_eq!(body("/v1/users/{id}", "patch"), true);
    assert_ne!(body("/v1/tokens/{id}/regenerate", "post"), true);
}

async fn openapi_bounds_and_enums_match_validation(b: Backend) {
    let app = spawn_app_with(b, |c| c.tokens.max_count_per_request = 7).await;
    let doc = doc(&app).await;
    let limit = query_param(&doc, "/v1/tokens", "get", "limit");
    assert_eq!(
        (limit["minimum"].as_i64(), limit["maximum"].as_i64()),
        (Some(1), Some(500))
    );
    let status = query_param(&doc, "/v1/tokens", "get", "status");
    assert_eq!(
        status["enum"],
        json!(["active", "expired", "exhausted", "revoked"])
    );
    let cost = &schema(&doc, "VerifyRequest")["properties"]["cost"];
    assert_eq!(
        (cost["minimum"].as_i64(), cost["maximum"].as_i64()),
        (Some(1), Some(1_000_000))
    );
    let create = &schema(&doc, "CreateTokens")["properties"];
    assert_eq!(
        create["role"]["enum"],
        json!(["admin", "engineer", "user", "readonly", null])
    );
    // The configured maximum, not a built-in one.
    assert_eq!(create["count"]["maximum"].as_i64(), Some(7));
    assert!(create["expires_on"]["pattern"].is_string());
    let account = &schema(&doc, "UpdateAccount")["properties"];
    assert_eq!(account["status"]["enum"], json!(["active", "inactive"]));
    let user = &schema(&doc, "UpdateUser")["properties"];
    assert_eq!(user["status"]["enum"], json!(["active", "inactive"]));
    let grace = &schema(&doc, "Regenerate")["properties"]["grace_seconds"];
    assert_eq!(grace["minimum"].as_i64(), Some(0));
    // And the daemon holds to them, naming the field.
    let (_, secret) = app.account("acme").await;
    assert_error(
        &app.post("/v1/tokens", &secret, json!({"name": "n", "count": 8}))
            .await,
        422,
        4220,
        Some("count"),
    );
    assert_error(
        &app.get("/v1/tokens?limit=501", &secret).await,
        422,
        4220,
        Some("limit"),
    );
    assert_error(
        &app.post(
            "/v1/tokens",
            &secret,
            json!({"name": "n", "allowed_ips": ["010.0.0.0/8"]}),
        )
        .await,
        422,
        4220,
        Some("allowed_ips[0]"),
    );
    assert_error(
        &app.post(
            "/v1/tokens",
            &secret,
            json!({"name": "n", "expires_on": "2030-02-30"}),
        )
        .await,
        422,
        4220,
        Some("expires_on"),
    );
}

async fn openapi_forward_auth_lists_every_method(b: Backend) {
    let app = spawn_app(b).await;
    let doc = doc(&app).await;
    let methods = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    for path in ["/v1/auth", "/v1/auth/{path}"] {
        let item = doc["paths"][path].as_object().unwrap();
        let mut listed: Vec<&str> = item.keys().map(String::as_str).collect();
        listed.sort_unstable();
        let mut all = methods.to_vec();
        all.sort_unstable();
        assert_eq!(listed, all, "{path}");
    }
    // And each is answered: a refusal of the (absent) token, never 404 or 405.
    for m in methods {
        let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        for path in ["/v1/auth", "/v1/auth/convert/pdf"] {
            let resp = app
                .client
                .request(method.clone(), app.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{m} {path}");
        }
    }
}

async fn openapi_whole_numbers_written_as_floats_are_accepted(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (s, v) = app
        .post(
            "/v1/tokens",
            &secret,
            json!({"name": "n", "usage_limit": 5.0, "count": 2.0, "lifetime_seconds": 3.6e3}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["tokens"][0]["usage_limit"], 5);
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
    let token = v["tokens"][0]["token"].as_str().unwrap().to_string();
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/verify",
            None,
            Some(json!({"token": token, "cost": 2.0})),
        )
        .await;
    assert_eq!((s, &v["result"]), (StatusCode::OK, &json!("VALID")), "{v}");
    assert_eq!(v["remaining"], 3);
    // A fraction is not a whole number: refused, naming the field.
    assert_error(
        &app.post(
            "/v1/tokens",
            &secret,
            json!({"name": "n", "usage_limit": 1.5}),
        )
        .await,
        422,
        4220,
        Some("usage_limit"),
    );
    assert_error(
        &app.call(
            Method::POST,
            "/v1/verify",
            None,
            Some(json!({"token": token, "cost": 0.5})),
        )
        .await,
        422,
        4220,
        Some("cost"),
    );
    let op = app.operator.clone();
    let (account, _) = app.account("other").await;
    let (s, v) = app
        .patch(
            &format!("/v1/accounts/{account}"),
            &op,
            json!({"max_tokens": 1e2}),
        )
        .await;
    assert_eq!(
        (s, &v["account"]["max_tokens"]),
        (StatusCode::OK, &json!(100)),
        "{v}"
    );
    assert_error(
        &app.patch(
            &format!("/v1/accounts/{account}"),
            &op,
            json!({"monthly_quota": "5"}),
        )
        .await,
        422,
        4220,
        Some("monthly_quota"),
    );
}

async fn openapi_empty_bodies_behave_as_documented(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let (id, _) = app.token(&secret, json!({"name": "n"})).await;
    let empty = |method: Method, path: String| {
        let app = &app;
        let secret = secret.clone();
        async move {
            let resp = app
                .client
                .request(method, app.url(&path))
                .bearer_auth(&secret)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    // A required body that is missing is refused, naming the body.
    for path in [
        format!("/v1/tokens/{id}"),
        format!("/v1/accounts/{account}"),
    ] {
        assert_error(&empty(Method::PATCH, path).await, 422, 4220, Some("body"));
    }
    assert_error(
        &empty(Method::POST, "/v1/tokens".into()).await,
        422,
        4220,
        Some("body"),
    );
    // `{}` is a body: it changes nothing.
    let (s, v) = app
        .patch(&format!("/v1/tokens/{id}"), &secret, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // A regeneration's body is optional.
    let (s, v) = empty(Method::POST, format!("/v1/tokens/{id}/regenerate")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn openapi_aliases_and_exclusions_are_enforced(b: Backend) {
    let app = spawn_app(b).await;
    let doc = doc(&app).await;
    let create = schema(&doc, "CreateTokens");
    assert_eq!(
        create["properties"]["RequestCount"]["maximum"].as_i64(),
        Some(999_999_999)
    );
    // A field and its alias, and a lifetime and a date, are never given together.
    let deps = &create["dependentSchemas"];
    assert_eq!(deps["RequestCount"]["properties"]["usage_limit"], false);
    assert_eq!(deps["expires_on"]["properties"]["lifetime_seconds"], false);
    assert_eq!(deps["expires_on"]["properties"]["Lifetime"], false);
    let (_, secret) = app.account("acme").await;
    assert_error(
        &app.post(
            "/v1/tokens",
            &secret,
            json!({"name": "n", "lifetime_seconds": null, "expires_on": "2030-01-01"}),
        )
        .await,
        422,
        4220,
        Some("expires_on"),
    );
    assert_error(
        &app.post(
            "/v1/tokens",
            &secret,
            json!({"name": "n", "usage_limit": 2, "RequestCount": 2}),
        )
        .await,
        422,
        4220,
        Some("usage_limit"),
    );
    let (s, v) = app
        .post(
            "/v1/tokens",
            &secret,
            json!({"name": "n", "RequestCount": 2.0}),
        )
        .await;
    assert_eq!(
        (s, &v["tokens"][0]["usage_limit"]),
        (StatusCode::CREATED, &json!(2)),
        "{v}"
    );
}
