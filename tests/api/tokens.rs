//! Token issuance and management.

use crate::both_backends;
use crate::helpers::*;
use chrono::TimeDelta;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokenwarden::clock::Clock;

both_backends!(
    create_returns_the_plain_token_once,
    count_creates_distinct_tokens,
    a_created_token_is_the_token_the_store_reads_back,
    both_date_forms_expire_at_midnight_utc,
    seed_aliases_are_accepted,
    create_bad_input_names_the_field_and_creates_nothing,
    max_tokens_is_enforced_whole,
    max_tokens_holds_under_concurrent_creates,
    role_rules,
    list_filters_and_paging,
    expires_soon_is_set_within_seven_days,
    update_changes_only_what_is_given,
    update_bad_input_changes_nothing,
    revoke_keeps_the_token_for_audit,
    regenerate_keeps_id_settings_and_grace,
    regenerate_with_a_new_expiry_outlives_the_old_one,
    a_token_rotates_itself_unless_self_regenerate_is_off,
    expiry_is_exact_to_the_millisecond,
    accounts_cannot_see_each_others_tokens,
);

fn first(v: &Value) -> &Value {
    &v["tokens"][0]
}

async fn create_returns_the_plain_token_once(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let (s, v) = app
        .post(
            "/v1/tokens",
            &secret,
            json!({"name": "ci", "description": "build box", "role": "engineer", "usage_limit": 100,
                   "scopes": ["convert:*", "stats"], "allowed_ips": ["10.1.2.3", "192.168.7.9/16", "2001:db8::/32"],
                   "lifetime_seconds": 3600, "refill_monthly": 100}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["code"], 2000);
    let t = first(&v);
    let plain = t["token"].as_str().unwrap();
    let id = t["id"].as_str().unwrap();
    assert!(plain.starts_with(&format!("tw_{id}")), "{plain}");
    assert_eq!(plain.len(), 3 + 8 + 22 + 6);
    assert_eq!(t["account_id"], account.as_str());
    assert_eq!(t["role"], "engineer");
    assert_eq!(t["usage_limit"], 100);
    assert_eq!(t["remaining"], 100);
    assert_eq!(t["refill_monthly"], 100);
    assert_eq!(t["scopes"], json!(["convert:*", "stats"]));
    assert_eq!(
        t["allowed_ips"],
        json!(["10.1.2.3/32", "192.168.0.0/16", "2001:db8::/32"])
    );
    assert_eq!(t["expires_at"], "2026-11-27T13:00:00Z");
    assert_eq!(t["status"], "active");
    assert_eq!(t["issued_by"], "account");
    assert_eq!(t["calls_this_month"], 0);
    assert!(t["last_used_at"].is_null());

    let (s, v) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v["token"].get("token").is_none(),
        "the plain token is never shown again"
    );
    assert!(!v.to_string().contains(plain));
    let (_, v) = app.get("/v1/tokens", &secret).await;
    assert!(!v.to_string().contains(plain));
    // Only its hash is stored.
    let stored = app.settled().await.token(id).await.unwrap().unwrap();
    assert_eq!(
        stored.secret_hash,
        tokenwarden::domain::credential::sha256(plain)
    );
    // As a management credential it is held to its allowed IPs too: these tests call from
    // 127.0.0.1, outside 10.1.2.3/32, 192.168.0.0/16 and 2001:db8::/32.
    assert_error(&app.get("/v1/tokens", plain).await, 403, 4030, None);
    let (_, open) = app
        .token(&secret, json!({"name": "open", "role": "engineer"}))
        .await;
    assert_eq!(app.get("/v1/tokens", &open).await.0, StatusCode::OK);
}

async fn count_creates_distinct_tokens(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let (s, v) = app
        .post(
            "/v1/tokens",
            &secret,
            json!({"name": "batch", "count": 5, "usage_limit": 10}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    let mut ids: Vec<&str> = tokens.iter().map(|t| t["id"].as_str().unwrap()).collect();
    let mut plains: Vec<&str> = tokens
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    plains.sort();
    plains.dedup();
    assert_eq!((ids.len(), plains.len()), (5, 5));
    assert_eq!(app.token_ids(&account).await.len(), 5);
}

/// Creation answers with tokens built from what it inserted, not read back: every field of
/// them, a policy's and a JWT signer's included, is what a later read finds.
async fn a_created_token_is_the_token_the_store_reads_back(b: Backend) {
    use tokenwarden::store::NewToken;
    let app = spawn_app(b).await;
    let (account, _) = app.account("acme").await;
    let user = app.user(&account, "dev@example.com", "engineer").await;
    let now = app.clock.now();
    let new = |id: &str, policy: Option<(String, String)>| NewToken {
        id: id.into(),
        account_id: account.clone(),
        user_id: Some(user.clone()),
        user_role: Some(tokenwarden::domain::role::Role::Engineer),
        issued_by: "token:Zz000001".into(),
        policy,
        name: "ci".into(),
        description: Some("build box".into()),
        role: tokenwarden::domain::role::Role::Engineer,
        scopes: vec![tokenwarden::domain::scope::Scope::parse("files:read", "scopes").unwrap()],
        allowed_ips: vec!["10.0.0.0/8".parse().unwrap()],
        rate_limit: tokenwarden::domain::rate::RateLimit::new(7, 30, "rate_limit").ok(),
        usage_limit: Some(50),
        refill_monthly: Some(40),
        expires_at: Some(now + TimeDelta::days(30)),
        jwt_enabled: true,
        sealed_secret: Some(vec![1, 2, 3]),
        secret_hash: vec![7; 32],
    };
    let store = &app.ctx.store;
    let stamp = tokenwarden::domain::audit::Stamp::job("test", "token.create");
    let plain = store
        .create_tokens(&account, &[new("Ab000001", None)], now, &stamp)
        .await
        .unwrap();
    let mut policy = new("Ab000002", Some(("monthly".into(), "2026-12".into())));
    (policy.usage_limit, policy.refill_monthly, policy.expires_at) = (None, None, None);
    let by_policy = store
        .create_tokens_with(
            &account,
            &[policy],
            Some(("monthly", "2026-12")),
            &[],
            now,
            &stamp,
        )
        .await
        .unwrap();
    for created in plain.into_iter().chain(by_policy) {
        let read = store.token(&created.id).await.unwrap().unwrap();
        assert_eq!(created, read);
    }
}

async fn both_date_forms_expire_at_midnight_utc(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    for d in ["2026-12-24", "24/12/2026"] {
        let (s, v) = app
            .post(
                "/v1/tokens",
                &secret,
                json!({"name": "xmas", "expires_on": d}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(first(&v)["expires_at"], "2026-12-24T00:00:00Z", "{d}");
    }
    let (_, v) = app
        .post("/v1/tokens", &secret, json!({"name": "forever"}))
        .await;
    assert!(
        first(&v)["expires_at"].is_null(),
        "no expiry given and no default: never expires"
    );
    assert!(
        first(&v)["usage_limit"].is_null() && first(&v)["remaining"].is_null(),
        "unlimited by default"
    );
}

async fn seed_aliases_are_accepted(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (s, v) = app
        .post(
            "/v1/tokens",
            &secret,
            json!({"name": "seed", "RequestCount": 7, "Lifetime": 60, "Count": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
    assert_eq!(first(&v)["usage_limit"], 7);
    assert_eq!(first(&v)["expires_at"], "2026-11-27T12:01:00Z");
}

async fn create_bad_input_names_the_field_and_creates_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let cases: Vec<(Value, &str, u64)> = vec![
        (json!({}), "name", 4220),
        (json!({"name": ""}), "name", 4220),
        (json!({"name": "x", "usage_limit": 0}), "usage_limit", 4220),
        (
            json!({"name": "x", "usage_limit": 1_000_000_000}),
            "usage_limit",
            4220,
        ),
        (
            json!({"name": "x", "usage_limit": "lots"}),
            "usage_limit",
            4220,
        ),
        (
            json!({"name": "x", "usage_limit": 1.5}),
            "usage_limit",
            4220,
        ),
        (
            json!({"name": "x", "lifetime_seconds": 0}),
            "lifetime_seconds",
            4220,
        ),
        (
            json!({"name": "x", "lifetime_seconds": 315_569_521}),
            "lifetime_seconds",
            4220,
        ),
        (
            json!({"name": "x", "expires_on": "2026-13-01"}),
            "expires_on",
            4220,
        ),
        // "Never" and a date at once: neither wins silently.
        (
            json!({"name": "x", "lifetime_seconds": null, "expires_on": "2027-01-01"}),
            "expires_on",
            4220,
        ),
        (
            json!({"name": "x", "lifetime_seconds": 3600, "expires_on": null}),
            "expires_on",
            4220,
        ),
        (
            json!({"name": "x", "expires_on": "31/02/2027"}),
            "expires_on",
            4220,
        ),
        (
            json!({"name": "x", "expires_on": "12/24/2026"}),
            "expires_on",
            4220,
        ),
        (
            json!({"name": "x", "expires_on": "2026-11-27"}),
            "expires_on",
            4220,
        ),
        (
            json!({"name": "x", "expires_on": "2040-01-01"}),
            "expires_on",
            4220,
        ),
        (
            json!({"name": "x", "expires_on": "2027-01-01", "lifetime_seconds": 60}),
            "expires_on",
            4220,
        ),
        (
            json!({"name": "x", "allowed_ips": ["10.0.0.1", "10.0.0.256"]}),
            "allowed_ips[1]",
            4220,
        ),
        (
            json!({"name": "x", "allowed_ips": ["10.0.0.0/33"]}),
            "allowed_ips[0]",
            4220,
        ),
        (
            json!({"name": "x", "allowed_ips": "10.0.0.1"}),
            "allowed_ips",
            4220,
        ),
        (
            json!({"name": "x", "scopes": ["ok", "no spaces"]}),
            "scopes[1]",
            4220,
        ),
        (json!({"name": "x", "role": "root"}), "role", 4220),
        (json!({"name": "x", "count": 0}), "count", 4220),
        (json!({"name": "x", "count": 101}), "count", 4220),
        (
            json!({"name": "x", "refill_monthly": 10}),
            "refill_monthly",
            4220,
        ),
        (json!({"name": "x", "owner": "me"}), "owner", 4221),
        (json!({"name": "x", "account_id": "someoneelse"}), "", 0),
    ];
    for (body, field, code) in cases {
        let got = app.post("/v1/tokens", &secret, body.clone()).await;
        if code == 0 {
            assert_error(&got, 403, 4030, None);
        } else {
            assert_error(&got, 422, code, Some(field));
        }
    }
    assert!(
        app.token_ids(&account).await.is_empty(),
        "no bad request created a token"
    );
    // The operator must say which account.
    assert_error(
        &app.post("/v1/tokens", &app.operator.clone(), json!({"name": "x"}))
            .await,
        422,
        4220,
        Some("account_id"),
    );
    assert_error(
        &app.post(
            "/v1/tokens",
            &app.operator.clone(),
            json!({"name": "x", "account_id": "nope"}),
        )
        .await,
        422,
        4220,
        Some("account_id"),
    );
    assert!(app.token_ids(&account).await.is_empty());
}

async fn max_tokens_is_enforced_whole(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app
        .account_with(json!({"name": "small", "max_tokens": 3}))
        .await;
    let (s, _) = app
        .post("/v1/tokens", &secret, json!({"name": "a", "count": 2}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let got = app
        .post("/v1/tokens", &secret, json!({"name": "b", "count": 2}))
        .await;
    assert_error(&got, 409, 4091, None);
    assert!(
        got.1["message"].as_str().unwrap().contains("max_tokens"),
        "{}",
        got.1
    );
    assert_eq!(app.token_ids(&account).await.len(), 2, "all or nothing");
    let (id, _) = app.token(&secret, json!({"name": "c"})).await;
    assert_error(
        &app.post("/v1/tokens", &secret, json!({"name": "d"})).await,
        409,
        4091,
        None,
    );
    // A revoked token frees its slot; so does an expired one.
    app.delete(&format!("/v1/tokens/{id}"), &secret).await;
    let (short, _) = app
        .token(&secret, json!({"name": "short", "lifetime_seconds": 60}))
        .await;
    assert_error(
        &app.post("/v1/tokens", &secret, json!({"name": "e"})).await,
        409,
        4091,
        None,
    );
    app.clock.advance(TimeDelta::seconds(60));
    let (s, v) = app.post("/v1/tokens", &secret, json!({"name": "f"})).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "expired {short} no longer counts: {v}"
    );
}

async fn max_tokens_holds_under_concurrent_creates(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app
        .account_with(json!({"name": "race", "max_tokens": 5}))
        .await;
    let calls = (0..20).map(|i| {
        let app = &app;
        let secret = secret.clone();
        async move {
            app.post("/v1/tokens", &secret, json!({"name": format!("t{i}")}))
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let created = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let refused = results.iter().filter(|(_, v)| v["code"] == 4091).count();
    assert_eq!((created, refused), (5, 15), "{results:?}");
    assert_eq!(app.token_ids(&account).await.len(), 5);
}

async fn role_rules(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let ann = app.user(&account, "ann@acme.example", "engineer").await;
    let bob = app.user(&account, "bob@acme.example", "engineer").await;
    let (ann_eng, ann_eng_plain) = app
        .token(
            &secret,
            json!({"name": "ann", "role": "engineer", "user_id": ann}),
        )
        .await;
    let (_, bob_eng_plain) = app
        .token(
            &secret,
            json!({"name": "bob", "role": "engineer", "user_id": bob}),
        )
        .await;
    let (_, admin_plain) = app
        .token(&secret, json!({"name": "adm", "role": "admin"}))
        .await;

    // A role above the issuer's, or above the user's, is refused and nothing is created.
    assert_error(
        &app.post(
            "/v1/tokens",
            &ann_eng_plain,
            json!({"name": "x", "role": "admin"}),
        )
        .await,
        403,
        4031,
        Some("role"),
    );
    assert_error(
        &app.post(
            "/v1/tokens",
            &secret,
            json!({"name": "x", "role": "admin", "user_id": ann}),
        )
        .await,
        403,
        4031,
        Some("role"),
    );
    // An engineer issues for its own user only.
    assert_error(
        &app.post(
            "/v1/tokens",
            &ann_eng_plain,
            json!({"name": "x", "user_id": bob}),
        )
        .await,
        403,
        4030,
        None,
    );
    let (ann_user, ann_user_plain) = app
        .token(&ann_eng_plain, json!({"name": "ann-user", "role": "user"}))
        .await;
    let (bob_user, _) = app
        .token(
            &bob_eng_plain,
            json!({"name": "bob-user", "role": "readonly"}),
        )
        .await;
    let (_, v) = app.get(&format!("/v1/tokens/{ann_user}"), &secret).await;
    // Issued by the engineer's token, for the engineer's user.
    assert_eq!(v["token"]["issued_by"], format!("token:{ann_eng}"));
    assert_eq!(v["token"]["user_id"], ann.as_str());

    // Engineers see their own user's tokens; admins and the account secret see all.
    let ids = |v: &Value| -> Vec<String> {
        let mut x: Vec<String> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        x.sort();
        x
    };
    let (_, v) = app.get("/v1/tokens", &ann_eng_plain).await;
    let mut want = vec![ann_eng.clone(), ann_user.clone()];
    want.sort();
    assert_eq!(ids(&v), want);
    let (_, v) = app.get("/v1/tokens", &admin_plain).await;
    assert_eq!(ids(&v).len(), 5);
    assert_eq!(ids(&app.get("/v1/tokens", &secret).await.1).len(), 5);

    // Engineers cannot touch another user's token (it is invisible to them).
    assert_error(
        &app.delete(&format!("/v1/tokens/{bob_user}"), &ann_eng_plain)
            .await,
        404,
        4040,
        None,
    );
    assert_error(
        &app.patch(
            &format!("/v1/tokens/{bob_user}"),
            &ann_eng_plain,
            json!({"name": "mine"}),
        )
        .await,
        404,
        4040,
        None,
    );
    // ...but may manage their own user's.
    assert_eq!(
        app.patch(
            &format!("/v1/tokens/{ann_user}"),
            &ann_eng_plain,
            json!({"name": "renamed"})
        )
        .await
        .0,
        StatusCode::OK
    );
    // An engineer cannot raise a token above itself.
    assert_error(
        &app.patch(
            &format!("/v1/tokens/{ann_user}"),
            &ann_eng_plain,
            json!({"role": "admin"}),
        )
        .await,
        403,
        4031,
        Some("role"),
    );

    // user and readonly tokens may only show themselves.
    assert_eq!(
        app.get(&format!("/v1/tokens/{ann_user}"), &ann_user_plain)
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &app.get(&format!("/v1/tokens/{ann_eng}"), &ann_user_plain)
            .await,
        404,
        4040,
        None,
    );
    assert_error(
        &app.get("/v1/tokens", &ann_user_plain).await,
        403,
        4030,
        None,
    );
    assert_error(
        &app.post(
            "/v1/tokens",
            &ann_user_plain,
            json!({"name": "x", "role": "readonly"}),
        )
        .await,
        403,
        4030,
        None,
    );
    assert_error(
        &app.delete(&format!("/v1/tokens/{ann_user}"), &ann_user_plain)
            .await,
        403,
        4030,
        None,
    );
    // ...but it may rotate itself (`tokens.self_regenerate`, on by default).
    let (s, v) = app
        .post(
            &format!("/v1/tokens/{ann_user}/regenerate"),
            &ann_user_plain,
            json!({}),
        )
        .await;
    assert_eq!((s, v["code"].as_u64()), (StatusCode::OK, Some(2004)), "{v}");
    // The admin may revoke anyone's.
    let (s, v) = app
        .delete(&format!("/v1/tokens/{bob_user}"), &admin_plain)
        .await;
    assert_eq!((s, v["code"].as_u64()), (StatusCode::OK, Some(2001)));
    assert_eq!(
        app.token_ids(&account).await.len(),
        5,
        "nothing refused above created anything"
    );
}

async fn list_filters_and_paging(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let ann = app.user(&account, "ann@acme.example", "admin").await;
    let (a, _) = app
        .token(
            &secret,
            json!({"name": "Alpha build", "role": "engineer", "lifetime_seconds": 86400}),
        )
        .await;
    app.clock.advance(TimeDelta::seconds(1));
    let (bb, _) = app
        .token(
            &secret,
            json!({"name": "beta", "description": "the BUILD box", "user_id": ann}),
        )
        .await;
    app.clock.advance(TimeDelta::seconds(1));
    let (c, _) = app
        .token(
            &secret,
            json!({"name": "gamma", "role": "readonly", "expires_on": "2027-06-01"}),
        )
        .await;
    app.clock.advance(TimeDelta::seconds(1));
    let (d, _) = app.token(&secret, json!({"name": "100%_literal"})).await;
    app.delete(&format!("/v1/tokens/{d}"), &secret).await;
    let q = |query: &str| {
        let app = &app;
        let secret = secret.clone();
        let path = format!("/v1/tokens?{query}");
        async move {
            let (s, v) = app.get(&path, &secret).await;
            assert_eq!(s, StatusCode::OK, "{path}: {v}");
            v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        q("").await,
        [d.as_str(), c.as_str(), bb.as_str(), a.as_str()],
        "newest first"
    );
    assert_eq!(q("status=revoked").await, [d.as_str()]);
    assert_eq!(
        q("status=active").await,
        [c.as_str(), bb.as_str(), a.as_str()]
    );
    assert_eq!(q("role=readonly").await, [c.as_str()]);
    // `bb` was issued by the account secret, for ann: the issuer is the credential, the user
    // is whom it is for, and each is its own filter.
    assert_eq!(q(&format!("user_id={ann}")).await, [bb.as_str()]);
    assert_eq!(
        q(&format!("issued_by={ann}")).await,
        Vec::<String>::new(),
        "a user is not an issuer"
    );
    assert_eq!(
        q("issued_by=account").await,
        [d.as_str(), c.as_str(), bb.as_str(), a.as_str()]
    );
    assert_eq!(
        q(&format!("issued_by=account&user_id={ann}")).await,
        [bb.as_str()]
    );
    assert_eq!(
        q("q=build").await,
        [bb.as_str(), a.as_str()],
        "name or description, any case"
    );
    assert_eq!(q("q=100%25_").await, [d.as_str()], "% and _ are literal");
    assert_eq!(q("expiring_within_days=2").await, [a.as_str()]);
    assert_eq!(
        q("expiring_within_days=365").await,
        [c.as_str(), a.as_str()]
    );
    app.clock.advance(TimeDelta::days(1));
    assert_eq!(
        q("status=expired").await,
        [a.as_str()],
        "expired at the moment of the check, no job needed"
    );
    assert!(
        q("expiring_within_days=2").await.is_empty(),
        "already expired is not expiring"
    );

    // Paging walks every token once.
    let mut seen = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let path = match &page {
            Some(p) => format!("/v1/tokens?limit=1&page={p}"),
            None => "/v1/tokens?limit=1".into(),
        };
        let (_, v) = app.get(&path, &secret).await;
        seen.extend(
            v["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string()),
        );
        match v["next_page"].as_str() {
            Some(p) => page = Some(p.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, [d, c, bb, a]);

    for (query, field) in [
        ("status=sleeping", "status"),
        ("role=root", "role"),
        ("expiring_within_days=-1", "expiring_within_days"),
        ("expiring_within_days=soon", "expiring_within_days"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("page=garbage", "page"),
        ("colour=red", "colour"),
    ] {
        let got = app.get(&format!("/v1/tokens?{query}"), &secret).await;
        assert_eq!(got.0.as_u16(), 422, "{query}: {}", got.1);
        assert_eq!(got.1["field"], field, "{query}: {}", got.1);
    }
}

async fn expires_soon_is_set_within_seven_days(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (soon, _) = app
        .token(
            &secret,
            json!({"name": "soon", "lifetime_seconds": 7 * 86400}),
        )
        .await;
    let (later, _) = app
        .token(
            &secret,
            json!({"name": "later", "lifetime_seconds": 7 * 86400 + 1}),
        )
        .await;
    let (never, _) = app.token(&secret, json!({"name": "never"})).await;
    let flag = |id: String| {
        let app = &app;
        let secret = secret.clone();
        async move {
            app.get(&format!("/v1/tokens/{id}"), &secret).await.1["token"]["expires_soon"]
                .as_bool()
                .unwrap()
        }
    };
    assert!(flag(soon.clone()).await);
    assert!(!flag(later.clone()).await);
    assert!(!flag(never.clone()).await);
    app.clock.advance(TimeDelta::seconds(1));
    assert!(flag(later).await, "the window moves with the clock");
    app.clock.advance(TimeDelta::days(7));
    assert!(!flag(soon).await, "an expired token is not 'expiring soon'");
}

async fn update_changes_only_what_is_given(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, plain) = app
        .token(&secret, json!({"name": "svc", "description": "note", "usage_limit": 100, "scopes": ["a"], "lifetime_seconds": 3600}))
        .await;
    let path = format!("/v1/tokens/{id}");
    let (s, v) = app.patch(&path, &secret, json!({"name": "svc2"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["token"]["name"], "svc2");
    assert_eq!(v["token"]["description"], "note");
    assert_eq!(v["token"]["scopes"], json!(["a"]));

    let (_, v) = app
        .patch(
            &path,
            &secret,
            json!({"description": null, "scopes": [], "allowed_ips": ["10.0.0.0/8"]}),
        )
        .await;
    assert!(v["token"]["description"].is_null(), "null clears the note");
    assert_eq!(v["token"]["scopes"], json!([]));
    assert_eq!(v["token"]["allowed_ips"], json!(["10.0.0.0/8"]));

    let (_, v) = app.patch(&path, &secret, json!({"usage_limit": 250})).await;
    assert_eq!(
        (
            v["token"]["usage_limit"].as_i64(),
            v["token"]["remaining"].as_i64()
        ),
        (Some(250), Some(250))
    );
    let (_, v) = app
        .patch(&path, &secret, json!({"usage_limit": null}))
        .await;
    assert!(v["token"]["usage_limit"].is_null() && v["token"]["remaining"].is_null());

    let (_, v) = app
        .patch(&path, &secret, json!({"expires_on": "2027-03-01"}))
        .await;
    assert_eq!(v["token"]["expires_at"], "2027-03-01T00:00:00Z");
    let (_, v) = app.patch(&path, &secret, json!({"expires_on": null})).await;
    assert!(v["token"]["expires_at"].is_null());

    // An expired token brought back by a new expiry works again.
    app.patch(&path, &secret, json!({"lifetime_seconds": 10}))
        .await;
    app.clock.advance(TimeDelta::seconds(10));
    let verify = |t: String| {
        let app = &app;
        async move {
            let (_, v) = app
                .call(
                    reqwest::Method::POST,
                    "/v1/verify",
                    None,
                    Some(json!({"token": t, "client_ip": "10.1.1.1"})),
                )
                .await;
            v["result"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(verify(plain.clone()).await, "EXPIRED");
    let (_, v) = app.get(&path, &secret).await;
    assert_eq!(v["token"]["status"], "expired");
    let (_, v) = app
        .patch(&path, &secret, json!({"lifetime_seconds": 60}))
        .await;
    assert_eq!(v["token"]["status"], "active");
    assert_eq!(verify(plain.clone()).await, "VALID");
}

async fn update_bad_input_changes_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, _) = app
        .token(
            &secret,
            json!({"name": "svc", "usage_limit": 5, "scopes": ["a"]}),
        )
        .await;
    let path = format!("/v1/tokens/{id}");
    let before = app.get(&path, &secret).await.1;
    for (body, field, code) in [
        (json!({"name": ""}), "name", 4220),
        (json!({"usage_limit": 0}), "usage_limit", 4220),
        (json!({"lifetime_seconds": -5}), "lifetime_seconds", 4220),
        (json!({"expires_on": "yesterday"}), "expires_on", 4220),
        (
            json!({"allowed_ips": ["::1", "nope"]}),
            "allowed_ips[1]",
            4220,
        ),
        (json!({"scopes": ["*x"]}), "scopes[0]", 4220),
        (json!({"role": "superuser"}), "role", 4220),
        (json!({"name": "ok", "status": "active"}), "status", 4221),
        (
            json!({"name": "ok", "scopes": ["fine"], "refill_monthly": 0}),
            "refill_monthly",
            4220,
        ),
    ] {
        assert_error(
            &app.patch(&path, &secret, body).await,
            422,
            code,
            Some(field),
        );
    }
    let after = app.get(&path, &secret).await.1;
    assert_eq!(before, after, "no refused update changed the token");
    assert_error(
        &app.patch("/v1/tokens/AAAAAAAA", &secret, json!({"name": "x"}))
            .await,
        404,
        4040,
        None,
    );
}

async fn revoke_keeps_the_token_for_audit(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, plain) = app
        .token(&secret, json!({"name": "svc", "role": "engineer"}))
        .await;
    let (s, v) = app.delete(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["code"], 2001);
    assert_eq!(v["token"]["status"], "revoked");
    assert_eq!(v["token"]["revoked_at"], "2026-11-27T12:00:00Z");
    assert_error(&app.get("/v1/tokens", &plain).await, 401, 4011, None);
    let (_, v) = app.get("/v1/tokens?status=revoked", &secret).await;
    assert_eq!(v["tokens"][0]["id"], id.as_str());
    // Revoking again changes nothing; a revoked token cannot be edited or regenerated.
    app.clock.advance(TimeDelta::hours(1));
    let (_, v) = app.delete(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(v["token"]["revoked_at"], "2026-11-27T12:00:00Z");
    assert_error(
        &app.patch(&format!("/v1/tokens/{id}"), &secret, json!({"name": "x"}))
            .await,
        409,
        4090,
        None,
    );
    // Nor regenerated: the refusal is decided on the row as locked for the write (so also for a
    // regeneration that read the token before a concurrent revocation), and the revoked
    // secret stays.
    let before = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_error(
        &app.post(
            &format!("/v1/tokens/{id}/regenerate"),
            &secret,
            json!({"lifetime_seconds": 3600}),
        )
        .await,
        409,
        4090,
        None,
    );
    let after = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(after, before);
    assert_error(
        &app.delete("/v1/tokens/AAAAAAAA", &secret).await,
        404,
        4040,
        None,
    );
}

/// Verifies `plain` on `app`; returns the result.
async fn verdict(app: &TestApp, plain: &str) -> String {
    let (_, v) = app
        .call(
            reqwest::Method::POST,
            "/v1/verify",
            None,
            Some(json!({ "token": plain })),
        )
        .await;
    v["result"].as_str().unwrap_or_default().to_string()
}

async fn regenerate_with_a_new_expiry_outlives_the_old_one(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, old) = app
        .token(
            &secret,
            json!({"name": "svc", "lifetime_seconds": 10 * 86400, "usage_limit": 5}),
        )
        .await;
    let path = format!("/v1/tokens/{id}/regenerate");
    let (_, before) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    // Bad input names the field and changes nothing: the old secret and expiry stay.
    for (body, field) in [
        (json!({"expires_on": "2027-13-01"}), "expires_on"),
        (json!({"lifetime_seconds": 0}), "lifetime_seconds"),
        (
            json!({"lifetime_seconds": 60, "expires_on": "2027-03-01"}),
            "expires_on",
        ),
    ] {
        assert_error(
            &app.post(&path, &secret, body).await,
            422,
            4220,
            Some(field),
        );
    }
    let (_, unchanged) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_eq!(unchanged, before);
    assert_eq!(verdict(&app, &old).await, "VALID");

    let new_expiry = (app.clock.now() + TimeDelta::days(60)).date_naive();
    let (s, v) = app
        .post(
            &path,
            &secret,
            json!({"expires_on": new_expiry.to_string()}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["token"]["expires_at"],
        format!("{new_expiry}T00:00:00Z"),
        "{v}"
    );
    assert_eq!(v["token"]["usage_limit"], 5);
    let new = v["token"]["token"].as_str().unwrap().to_string();
    assert_eq!(verdict(&app, &old).await, "NOT_FOUND");
    // Past the old expiry the rotated token still works.
    app.clock.advance(TimeDelta::days(20));
    assert_eq!(verdict(&app, &new).await, "VALID");

    // An expired token rotated with a later expiry comes back.
    let (id2, _) = app
        .token(&secret, json!({"name": "late", "lifetime_seconds": 60}))
        .await;
    app.clock.advance(TimeDelta::minutes(5));
    let (s, v) = app
        .post(
            &format!("/v1/tokens/{id2}/regenerate"),
            &secret,
            json!({"lifetime_seconds": 3600}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["token"]["status"], "active", "{v}");
    let back = v["token"]["token"].as_str().unwrap().to_string();
    assert_eq!(verdict(&app, &back).await, "VALID");
}

async fn a_token_rotates_itself_unless_self_regenerate_is_off(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, me) = app
        .token(
            &secret,
            json!({"name": "svc", "role": "readonly", "lifetime_seconds": 86400}),
        )
        .await;
    let (s, v) = app
        .post(
            &format!("/v1/tokens/{id}/regenerate"),
            &me,
            json!({"lifetime_seconds": 30 * 86400}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rotated = v["token"]["token"].as_str().unwrap().to_string();
    let expires: chrono::DateTime<chrono::Utc> =
        v["token"]["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires, app.clock.now() + TimeDelta::days(30));
    assert_eq!(verdict(&app, &me).await, "NOT_FOUND");
    assert_eq!(verdict(&app, &rotated).await, "VALID");
    // It rotates itself only: another token of the account stays out of its sight.
    let (other, _) = app.token(&secret, json!({"name": "other"})).await;
    let (s, _) = app
        .post(
            &format!("/v1/tokens/{other}/regenerate"),
            &rotated,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let off = spawn_app_with(b, |c| c.tokens.self_regenerate = false).await;
    let (_, secret) = off.account("acme").await;
    let (id, me) = off
        .token(&secret, json!({"name": "svc", "lifetime_seconds": 86400}))
        .await;
    let (_, before) = off.get(&format!("/v1/tokens/{id}"), &secret).await;
    assert_error(
        &off.post(&format!("/v1/tokens/{id}/regenerate"), &me, json!({}))
            .await,
        403,
        4030,
        None,
    );
    assert_eq!(
        off.get(&format!("/v1/tokens/{id}"), &secret).await.1,
        before
    );
    assert_eq!(verdict(&off, &me).await, "VALID");
}

async fn regenerate_keeps_id_settings_and_grace(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, old) = app
        .token(
            &secret,
            json!({"name": "svc", "role": "engineer", "usage_limit": 9, "scopes": ["a:*"]}),
        )
        .await;
    let (s, v) = app
        .post(&format!("/v1/tokens/{id}/regenerate"), &secret, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["code"], 2004);
    let new = v["token"]["token"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(v["token"]["id"], id.as_str());
    assert_eq!(
        (
            v["token"]["usage_limit"].as_i64(),
            v["token"]["scopes"].clone()
        ),
        (Some(9), json!(["a:*"]))
    );
    assert_error(&app.get("/v1/tokens", &old).await, 401, 4011, None);
    assert_eq!(app.get("/v1/tokens", &new).await.0, StatusCode::OK);

    // With a grace period the old secret works until it ends, then stops.
    let (s, v) = app
        .post(
            &format!("/v1/tokens/{id}/regenerate"),
            &secret,
            json!({"grace_seconds": 300}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let newest = v["token"]["token"].as_str().unwrap().to_string();
    let verify = |t: String| {
        let app = &app;
        async move {
            let (_, v) = app
                .call(
                    reqwest::Method::POST,
                    "/v1/verify",
                    None,
                    Some(json!({"token": t, "call": "a:x"})),
                )
                .await;
            v["result"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(
        verify(new.clone()).await,
        "VALID",
        "the old secret still verifies during the grace period"
    );
    assert_eq!(verify(newest.clone()).await, "VALID");
    // ...but it cannot manage: a leaked old secret must not take the token over.
    assert_error(&app.get("/v1/tokens", &new).await, 401, 4011, None);
    assert_error(
        &app.post(
            &format!("/v1/tokens/{id}/regenerate"),
            &new,
            json!({"grace_seconds": 604800}),
        )
        .await,
        401,
        4011,
        None,
    );
    app.clock.advance(TimeDelta::seconds(300));
    assert_eq!(
        verify(new.clone()).await,
        "NOT_FOUND",
        "the grace period is over"
    );
    assert_eq!(verify(newest.clone()).await, "VALID");

    assert_error(
        &app.post(
            &format!("/v1/tokens/{id}/regenerate"),
            &secret,
            json!({"grace_seconds": 604801}),
        )
        .await,
        422,
        4220,
        Some("grace_seconds"),
    );
    assert_error(
        &app.post(
            &format!("/v1/tokens/{id}/regenerate"),
            &secret,
            json!({"grace": 1}),
        )
        .await,
        422,
        4221,
        Some("grace"),
    );
    assert_eq!(
        app.get("/v1/tokens", &newest).await.0,
        StatusCode::OK,
        "refused regenerations changed nothing"
    );
}

async fn expiry_is_exact_to_the_millisecond(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (_, plain) = app
        .token(
            &secret,
            json!({"name": "eng", "role": "engineer", "expires_on": "2026-12-01"}),
        )
        .await;
    app.clock.set(
        chrono::DateTime::parse_from_rfc3339("2026-11-30T23:59:59.999Z")
            .unwrap()
            .into(),
    );
    assert_eq!(app.get("/v1/tokens", &plain).await.0, StatusCode::OK);
    app.clock.advance(TimeDelta::milliseconds(1));
    assert_error(&app.get("/v1/tokens", &plain).await, 401, 4011, None);
}

async fn accounts_cannot_see_each_others_tokens(b: Backend) {
    let app = spawn_app(b).await;
    let (_, a) = app.account("acme").await;
    let (_, other) = app.account("globex").await;
    let (id, _) = app.token(&a, json!({"name": "private"})).await;
    assert_error(
        &app.get(&format!("/v1/tokens/{id}"), &other).await,
        404,
        4040,
        None,
    );
    assert_error(
        &app.delete(&format!("/v1/tokens/{id}"), &other).await,
        404,
        4040,
        None,
    );
    assert_error(
        &app.post(&format!("/v1/tokens/{id}/regenerate"), &other, json!({}))
            .await,
        404,
        4040,
        None,
    );
    assert!(app.get("/v1/tokens", &other).await.1["tokens"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        app.get(&format!("/v1/tokens/{id}"), &a).await.1["token"]["status"],
        "active"
    );
}
