//! The audit log: one record per change, in the change's transaction; refused attempts;
//! who may read it; no secret in it; its retention.

use crate::both_backends;
use crate::helpers::*;
use chrono::TimeDelta;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

both_backends!(
    every_change_through_the_api_leaves_one_record_naming_actor_target_and_fields,
    refused_attempts_are_recorded_without_a_body_and_change_nothing,
    a_change_whose_transaction_fails_leaves_no_record,
    the_operator_reads_every_record_and_an_account_admin_its_own,
    jobs_record_what_they_change_and_old_records_are_dropped,
);

/// Every record, oldest first, as the operator reads them (all pages).
async fn records(app: &TestApp) -> Vec<Value> {
    let mut out = Vec::new();
    let mut page: Option<String> = None;
    loop {
        let path = match &page {
            Some(p) => format!("/v1/audit?limit=500&page={p}"),
            None => "/v1/audit?limit=500".to_string(),
        };
        let (s, v) = app.get(&path, &app.operator.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        out.extend(v["records"].as_array().unwrap().iter().cloned());
        match v["next_page"].as_str() {
            Some(p) => page = Some(p.to_string()),
            None => break,
        }
    }
    out.reverse();
    out
}

/// Runs `f` and returns the records it added (there must be exactly `n`).
async fn added<F: std::future::Future<Output = ()>>(app: &TestApp, n: usize, f: F) -> Vec<Value> {
    let before = records(app).await.len();
    f.await;
    let all = records(app).await;
    assert_eq!(
        all.len(),
        before + n,
        "records added: {:#?}",
        &all[before.min(all.len())..]
    );
    all[before..].to_vec()
}

fn who(r: &Value) -> (String, Option<String>, String) {
    (
        r["actor_kind"].as_str().unwrap().to_string(),
        r["actor_id"].as_str().map(String::from),
        r["origin"].as_str().unwrap().to_string(),
    )
}

async fn every_change_through_the_api_leaves_one_record_naming_actor_target_and_fields(b: Backend) {
    let app = spawn_app(b).await;
    let op = app.operator.clone();
    let mut secrets: Vec<String> = vec![op.clone()];

    let mut acc = (String::new(), String::new());
    let r = added(&app, 1, async {
        acc = app.account("acme").await;
    })
    .await;
    let account = acc.0.clone();
    secrets.push(acc.1.clone());
    assert_eq!(who(&r[0]), ("operator".into(), None, "127.0.0.1".into()));
    assert_eq!(r[0]["action"], "account.create");
    assert_eq!(r[0]["target"], format!("account:{account}"));
    assert_eq!(r[0]["changes"]["name"], json!([null, "acme"]));
    assert_eq!(r[0]["outcome"], "ok");
    let mut secret = String::new();
    let r = added(&app, 1, async {
        let (s, v) = app
            .post(&format!("/v1/accounts/{account}/secret"), &op, json!({}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        secret = v["secret"].as_str().unwrap().to_string();
    })
    .await;
    assert_eq!(r[0]["action"], "account.secret_reset");
    assert_eq!(r[0]["changes"]["secret"], json!([null, "reset"]));
    secrets.push(secret.clone());

    let r = added(&app, 1, async {
        let (s, _) = app
            .patch(
                &format!("/v1/accounts/{account}"),
                &op,
                json!({"max_tokens": 7}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    })
    .await;
    assert_eq!(r[0]["action"], "account.update");
    assert_eq!(r[0]["changes"], json!({"max_tokens": [50, 7]}));

    let mut user = String::new();
    let r = added(&app, 1, async {
        let (s, v) = app
            .post(
                &format!("/v1/accounts/{account}/users"),
                &secret,
                json!({"email": "ann@acme.example"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        user = v["user"]["id"].as_str().unwrap().to_string();
    })
    .await;
    assert_eq!(
        who(&r[0]),
        ("account".into(), Some(account.clone()), "127.0.0.1".into())
    );
    assert_eq!(r[0]["action"], "user.create");
    assert_eq!(r[0]["target"], format!("user:{user}"));
    assert_eq!(r[0]["changes"]["email"], json!([null, "ann@acme.example"]));
    let r = added(&app, 1, async {
        app.patch(
            &format!("/v1/users/{user}"),
            &secret,
            json!({"role": "engineer"}),
        )
        .await;
    })
    .await;
    assert_eq!(
        (r[0]["action"].as_str(), &r[0]["changes"]),
        (Some("user.update"), &json!({"role": ["user", "engineer"]}))
    );

    let mut ids: Vec<String> = Vec::new();
    let r = added(&app, 1, async {
        let (s, v) = app
            .post(
                "/v1/tokens",
                &secret,
                json!({"name": "ci", "count": 2, "user_id": user, "role": "engineer"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        for t in v["tokens"].as_array().unwrap() {
            ids.push(t["id"].as_str().unwrap().to_string());
            secrets.push(t["token"].as_str().unwrap().to_string());
        }
    })
    .await;
    assert_eq!(r[0]["action"], "token.create");
    assert_eq!(r[0]["target"], format!("token:{}", ids[0]));
    assert_eq!(r[0]["changes"]["count"], json!([null, 2]));
    assert_eq!(r[0]["changes"]["ids"], json!([null, ids]));
    assert_eq!(r[0]["changes"]["user_id"], json!([null, user]));
    let (id, plain) = (ids[0].clone(), secrets.last().unwrap().clone());

    // A token acting (the second, on the first): its id is the actor.
    let r = added(&app, 1, async {
        let (s, v) = app
            .patch(
                &format!("/v1/tokens/{id}"),
                &plain,
                json!({"usage_limit": 5}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    })
    .await;
    assert_eq!(
        who(&r[0]),
        ("token".into(), Some(ids[1].clone()), "127.0.0.1".into())
    );
    assert_eq!(r[0]["action"], "token.update");
    assert_eq!(r[0]["changes"]["usage_limit"], json!([null, 5]));
    let r = added(&app, 1, async {
        let (s, v) = app
            .post(&format!("/v1/tokens/{id}/regenerate"), &secret, json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        secrets.push(v["token"]["token"].as_str().unwrap().to_string());
    })
    .await;
    assert_eq!(r[0]["action"], "token.regenerate");
    assert_eq!(r[0]["changes"]["secret"], json!([null, "regenerated"]));
    let r = added(&app, 1, async {
        app.delete(&format!("/v1/tokens/{id}"), &secret).await;
    })
    .await;
    assert_eq!(r[0]["action"], "token.revoke");
    assert_eq!(r[0]["changes"]["status"], json!(["active", "revoked"]));
    let r = added(&app, 1, async {
        app.patch(
            &format!("/v1/users/{user}"),
            &secret,
            json!({"status": "inactive"}),
        )
        .await;
    })
    .await;
    assert_eq!(r[0]["changes"], json!({"status": ["active", "inactive"]}));
    let r = added(&app, 1, async {
        app.delete(&format!("/v1/users/{user}"), &secret).await;
    })
    .await;
    assert_eq!(r[0]["action"], "user.delete");
    assert_eq!(r[0]["changes"]["status"], json!(["inactive", "deleted"]));
    assert_eq!(
        r[0]["changes"]["tokens_revoked"],
        json!([null, [ids[1].clone()]])
    );
    // The seeds' form of creation, and a job run on demand.
    let r = added(&app, 1, async {
        let (s, v) = app
            .call(
                Method::POST,
                &format!("/token/create?Secret={secret}&RequestCount=3"),
                None,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        secrets.push(v["Tokens"][0]["Id"].as_str().unwrap().to_string());
    })
    .await;
    assert_eq!(r[0]["action"], "token.create");
    let r = added(&app, 1, async {
        let (s, v) = app
            .post("/v1/jobs/expiry_warnings/run", &op, json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    })
    .await;
    assert_eq!(
        (r[0]["action"].as_str(), r[0]["target"].as_str()),
        (Some("job.run"), Some("job:expiry_warnings"))
    );
    // Reads record nothing.
    added(&app, 0, async {
        app.get("/v1/tokens", &secret).await;
        app.get(&format!("/v1/accounts/{account}/users"), &secret)
            .await;
    })
    .await;

    // No record, in the API or in the table itself, holds a secret, a token or a hash.
    let text = serde_json::to_string(&records(&app).await).unwrap();
    let raw = app.audit_table_text().await;
    for s in &secrets {
        assert!(
            !text.contains(s.as_str()) && !raw.contains(s.as_str()),
            "a secret is in the audit log"
        );
    }
    for h in app.stored_hashes_hex().await {
        assert!(
            !raw.to_lowercase().contains(&h),
            "a hash is in the audit log"
        );
    }
}

async fn refused_attempts_are_recorded_without_a_body_and_change_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app.account("acme").await;
    let (other, other_secret) = app.account("other").await;
    let ann = app.user(&account, "ann@acme.example", "engineer").await;
    let (eng, eng_plain) = app
        .token(
            &secret,
            json!({"name": "eng", "role": "engineer", "user_id": ann}),
        )
        .await;
    let tokens_before = app.token_ids(&account).await;

    // No credential at all claims to be no one: not recorded.
    added(&app, 0, async {
        let got = app
            .call(
                Method::POST,
                "/v1/accounts",
                None,
                Some(json!({"name": "x"})),
            )
            .await;
        assert_error(&got, 401, 4013, None);
    })
    .await;
    let r = added(&app, 1, async {
        let got = app
            .post(
                "/v1/accounts",
                "tw_op_0000000000000000000000000000",
                json!({"name": "x"}),
            )
            .await;
        assert_error(&got, 401, 4010, None);
    })
    .await;
    assert_eq!(who(&r[0]), ("anonymous".into(), None, "127.0.0.1".into()));
    assert_eq!(
        (
            r[0]["action"].as_str(),
            r[0]["outcome"].as_str(),
            r[0]["code"].as_u64()
        ),
        (Some("account.create"), Some("refused"), Some(4010))
    );
    assert_eq!(r[0]["changes"], json!({}), "no body");
    let r = added(&app, 1, async {
        let got = app.get("/v1/tokens", "tw_notatoken").await;
        assert_error(&got, 401, 4011, None);
    })
    .await;
    assert_eq!(r[0]["code"], 4011);
    // Role too high: the engineer's token, named.
    let r = added(&app, 1, async {
        let got = app
            .post(
                "/v1/tokens",
                &eng_plain,
                json!({"name": "x", "role": "admin"}),
            )
            .await;
        assert_error(&got, 403, 4031, Some("role"));
    })
    .await;
    assert_eq!(
        who(&r[0]),
        ("token".into(), Some(eng.clone()), "127.0.0.1".into())
    );
    assert_eq!(r[0]["account_id"], account.as_str());
    // Not visible: another account's user, from that account's credential.
    let r = added(&app, 1, async {
        let got = app
            .patch(
                &format!("/v1/users/{ann}"),
                &other_secret,
                json!({"status": "inactive"}),
            )
            .await;
        assert_error(&got, 404, 4040, None);
    })
    .await;
    assert_eq!(
        (r[0]["action"].as_str(), r[0]["target"].as_str()),
        (Some("user.update"), Some(format!("user:{ann}").as_str()))
    );
    assert_eq!(r[0]["actor_id"], other.as_str());
    assert_eq!(r[0]["account_id"], other.as_str());
    // A hostile path is not written as given.
    let r = added(&app, 1, async {
        let got = app
            .delete("/v1/tokens/..%2F..%2Fetc%2Fpasswd", &other_secret)
            .await;
        assert_eq!(got.0.as_u16(), 404, "{got:?}");
    })
    .await;
    assert_eq!(r[0]["target"], "token:?");
    // A plain token sent where an id belongs is not written: neither by the API's route nor by
    // the seeds' one, whose refusals are recorded too.
    let r = added(&app, 2, async {
        let got = app
            .delete(&format!("/v1/tokens/{eng_plain}"), &other_secret)
            .await;
        assert_eq!(got.0.as_u16(), 404, "{got:?}");
        let got = app
            .call(
                Method::DELETE,
                &format!("/token/{eng_plain}?Secret=tw_sk_bogus"),
                None,
                None,
            )
            .await;
        assert_eq!(got.0.as_u16(), 401, "{got:?}");
    })
    .await;
    assert_eq!(r[0]["target"], "token:?");
    assert_eq!(
        (
            r[1]["action"].as_str(),
            r[1]["target"].as_str(),
            r[1]["code"].as_u64()
        ),
        (Some("token.revoke"), Some("/token/{id}"), Some(4010))
    );
    let raw = app.audit_table_text().await;
    assert!(!raw.contains(&eng_plain), "a token is in the audit log");
    // Bad input is not a refusal of the caller: no record, nothing changed.
    added(&app, 0, async {
        let got = app.post("/v1/tokens", &secret, json!({"name": ""})).await;
        assert_error(&got, 422, 4220, Some("name"));
    })
    .await;
    assert_eq!(
        app.token_ids(&account).await,
        tokens_before,
        "nothing changed"
    );
    let (_, v) = app
        .get(&format!("/v1/accounts/{account}/users"), &secret)
        .await;
    assert_eq!(v["users"][0]["status"], "active");
}

async fn a_change_whose_transaction_fails_leaves_no_record(b: Backend) {
    let app = spawn_app(b).await;
    let (account, secret) = app
        .account_with(json!({"name": "acme", "max_tokens": 1}))
        .await;
    app.user(&account, "ann@acme.example", "user").await;
    app.token(&secret, json!({"name": "one"})).await;
    added(&app, 0, async {
        // A duplicate name, a duplicate email and a token past max_tokens all fail inside
        // the transaction that would have written their records.
        assert_error(
            &app.post(
                "/v1/accounts",
                &app.operator.clone(),
                json!({"name": "acme"}),
            )
            .await,
            409,
            4090,
            None,
        );
        assert_error(
            &app.post(
                &format!("/v1/accounts/{account}/users"),
                &secret,
                json!({"email": "ann@acme.example"}),
            )
            .await,
            409,
            4090,
            None,
        );
        assert_error(
            &app.post("/v1/tokens", &secret, json!({"name": "two"}))
                .await,
            409,
            4091,
            None,
        );
    })
    .await;
}

async fn the_operator_reads_every_record_and_an_account_admin_its_own(b: Backend) {
    let app = spawn_app(b).await;
    let (acme, secret) = app.account("acme").await;
    let (other, other_secret) = app.account("other").await;
    let (_, admin) = app
        .token(&secret, json!({"name": "a", "role": "admin"}))
        .await;
    let (_, eng) = app
        .token(&secret, json!({"name": "e", "role": "engineer"}))
        .await;
    app.clock.advance(TimeDelta::days(2));
    let (late, _) = app.token(&other_secret, json!({"name": "o"})).await;

    let accounts_of = |v: &Value| -> Vec<String> {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["account_id"].as_str().unwrap_or("-").to_string())
            .collect()
    };
    let (s, v) = app.get("/v1/audit", &admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mine = accounts_of(&v);
    assert!(!mine.is_empty() && mine.iter().all(|a| *a == acme), "{v}");
    let (_, v) = app.get("/v1/audit", &secret).await;
    assert_eq!(accounts_of(&v), mine);
    assert_error(
        &app.get(&format!("/v1/audit?account_id={other}"), &secret)
            .await,
        403,
        4030,
        None,
    );
    assert_error(&app.get("/v1/audit", &eng).await, 403, 4030, None);
    let all = records(&app).await;
    assert!(all.iter().any(|r| r["account_id"] == other.as_str()));

    // Filters and paging.
    let (_, v) = app
        .get(
            &format!("/v1/audit?target=token:{late}"),
            &app.operator.clone(),
        )
        .await;
    assert_eq!(v["records"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = app
        .get(
            "/v1/audit?action=account.create&actor=operator",
            &app.operator.clone(),
        )
        .await;
    assert_eq!(v["records"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = app
        .get(
            &format!("/v1/audit?actor=account:{other}"),
            &app.operator.clone(),
        )
        .await;
    assert_eq!(v["records"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = app
        .get(
            "/v1/audit?from=2026-11-28&outcome=ok&action=token.create",
            &app.operator.clone(),
        )
        .await;
    assert_eq!(
        v["records"].as_array().unwrap().len(),
        1,
        "only the later token: {v}"
    );
    let (_, v) = app
        .get("/v1/audit?to=2026-11-27", &app.operator.clone())
        .await;
    let on_the_27th = all
        .iter()
        .filter(|r| r["at"].as_str().unwrap() < "2026-11-28")
        .count();
    assert_eq!(v["records"].as_array().unwrap().len(), on_the_27th, "{v}");
    let (_, p1) = app.get("/v1/audit?limit=2", &app.operator.clone()).await;
    assert_eq!(p1["records"].as_array().unwrap().len(), 2);
    let next = p1["next_page"].as_str().unwrap();
    let (_, p2) = app
        .get(
            &format!("/v1/audit?limit=2&page={next}"),
            &app.operator.clone(),
        )
        .await;
    assert!(p2["records"][0]["id"].as_i64() < p1["records"][1]["id"].as_i64());
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("from=yesterday", "from"),
        ("to=2026-13-01", "to"),
        ("page=abc", "page"),
        ("action=", "action"),
        ("outcome=maybe", "outcome"),
    ] {
        assert_error(
            &app.get(&format!("/v1/audit?{q}"), &app.operator.clone())
                .await,
            422,
            4220,
            Some(field),
        );
    }
    assert_error(
        &app.get("/v1/audit?who=me", &app.operator.clone()).await,
        422,
        4221,
        Some("who"),
    );
}

async fn jobs_record_what_they_change_and_old_records_are_dropped(b: Backend) {
    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, _) = app
        .token(&secret, json!({"name": "short", "lifetime_seconds": 60}))
        .await;
    app.clock.advance(TimeDelta::minutes(2));
    app.tick().await;
    let all = records(&app).await;
    let expired: Vec<&Value> = all
        .iter()
        .filter(|r| r["action"] == "token.expire")
        .collect();
    assert_eq!(expired.len(), 1, "{expired:#?}");
    assert_eq!(
        who(expired[0]),
        ("job".into(), Some("expiry".into()), "job:expiry".into())
    );
    assert_eq!(expired[0]["target"], format!("token:{id}"));
    // Each month's reset: one record (November's ran at the start).
    app.clock.set(
        chrono::DateTime::parse_from_rfc3339("2026-12-01T00:00:30Z")
            .unwrap()
            .into(),
    );
    app.tick().await;
    app.tick().await;
    let resets: Vec<Value> = records(&app)
        .await
        .into_iter()
        .filter(|r| r["action"] == "accounts.monthly_reset")
        .map(|r| r["changes"]["period"][1].clone())
        .collect();
    assert_eq!(resets, [json!("2026-11"), json!("2026-12")]);
    // Past the retention (400 days by default), housekeeping drops them.
    let before = records(&app).await.len();
    app.clock.advance(TimeDelta::days(401));
    let (s, v) = app
        .post(
            "/v1/jobs/housekeeping/run",
            &app.operator.clone(),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let left = records(&app).await;
    assert!(before > 3);
    // What is left is what happened since: the housekeeping run itself and its record.
    assert!(
        left.iter()
            .all(|r| r["at"].as_str().unwrap() >= "2027-12-01"),
        "{left:#?}"
    );
}
