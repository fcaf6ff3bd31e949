//! The scheduler's jobs on an injected clock, on both stores: the month boundary (issuance,
//! reset, refill), UTC-midnight expiry, the 7-day and 1-day warnings, downtime across them, a
//! run that crashed half way, and two daemons on one PostgreSQL.

use crate::both_backends;
use crate::helpers::{assert_error, Backend, TestApp};
use crate::jobs_env::{signature_ok, Env, WebhookReceiver};
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

async fn verify(app: &TestApp, token: &str) -> Value {
    let (s, v) = app
        .call(
            reqwest::Method::POST,
            "/v1/verify",
            None,
            Some(json!({"token": token, "call": "convert:pdf"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// The account `acme` with an admin (expiry emails on), an admin who opted out and an
/// engineer; returns (account id, secret, engineer id).
async fn acme(app: &TestApp, quota: Option<i64>) -> (String, String, String) {
    let (id, secret) = app
        .account_with(json!({"name": "acme", "monthly_quota": quota}))
        .await;
    app.user(&id, "admin@acme.example", "admin").await;
    let quiet = app.user(&id, "quiet@acme.example", "admin").await;
    let (s, v) = app
        .patch(
            &format!("/v1/users/{quiet}"),
            &app.operator.clone(),
            json!({"notify_expiry": false}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let eng = app.user(&id, "eng@acme.example", "engineer").await;
    (id, secret, eng)
}

/// Tokens of policy `name` for each period, from the store.
async fn policy_tokens(app: &TestApp, name: &str, periods: &[&str]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for p in periods {
        out.push(
            app.ctx
                .store
                .policy_token(name, p)
                .await
                .unwrap()
                .map(|t| t.id),
        );
    }
    out
}

fn secret_file(env: &Env, name: &str, value: &str) -> std::path::PathBuf {
    let p = env.dir.path().join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p
}

both_backends!(
    month_boundary_issues_resets_and_refills,
    expiry_at_utc_midnight_with_notice,
    seven_and_one_day_warnings_go_to_issuer_and_admins_once,
    inactive_users_get_no_expiry_mail_and_their_tokens_none_while_inactive,
    a_token_that_never_had_seven_days_gets_only_the_one_day_warning,
    downtime_across_the_seven_day_window_sends_only_the_one_day_warning,
    a_daemon_down_across_the_month_boundary_catches_up_once_at_start,
    a_run_that_crashed_half_way_is_completed_by_the_next_start,
    webhook_deliveries_are_signed_and_retried_with_backoff,
    housekeeping_drops_spent_jwt_records_and_old_statistics,
    bad_policies_stop_the_start_with_file_key_and_reason,
    jobs_api_lists_and_runs_on_demand_idempotently,
    a_policy_tokens_ip_rules_may_be_written_as_plain_addresses,
    a_message_tried_elsewhere_since_it_was_read_is_not_taken_again,
    a_new_tokens_delivery_retried_after_its_revocation_is_cancelled,
);

/// Starts a daemon with account `acme` and policy `p` (`convert:*`, plus the `extra` lines),
/// delivering to `acme.token` in the test's folder; returns it (after one delivery pass) and
/// the id of the token it issued at start.
async fn start_with_policy(env: &Env, extra: &str) -> (TestApp, String) {
    let app = env.start("").await;
    acme(&app, None).await;
    app.stop().await;
    let policy = format!(
        "[[policy]]\nname = \"p\"\naccount = \"acme\"\nscopes = [\"convert:*\"]\n{extra}\
         deliver_file = \"{}\"\n",
        env.dir.path().join("acme.token").display()
    );
    let app = env.start(&policy).await;
    app.runner.sender().pass().await.unwrap();
    let id = policy_tokens(&app, "p", &["2026-11"]).await[0]
        .clone()
        .expect("issued at start");
    (app, id)
}

/// A policy's `allowed_ips` may name single addresses, as the API's may: the issued token
/// admits them (and nothing else).
async fn a_policy_tokens_ip_rules_may_be_written_as_plain_addresses(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let file = env.dir.path().join("acme.token");
    let (app, id) =
        start_with_policy(&env, "allowed_ips = [\"203.0.113.7\", \" 2001:db8::1\"]\n").await;
    let t = app.settled().await.token(&id).await.unwrap().unwrap();
    let ips: Vec<String> = t.allowed_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["203.0.113.7/32", "2001:db8::1/128"]);
    let plain = std::fs::read_to_string(&file).unwrap().trim().to_string();
    for (ip, want) in [
        ("203.0.113.7", "VALID"),
        ("2001:db8::1", "VALID"),
        ("203.0.113.8", "IP_NOT_ALLOWED"),
    ] {
        let (s, v) = app
            .call(
                reqwest::Method::POST,
                "/v1/verify",
                None,
                Some(json!({"token": plain, "call": "convert:pdf", "client_ip": ip})),
            )
            .await;
        assert_eq!(
            (s, v["result"].as_str()),
            (StatusCode::OK, Some(want)),
            "{ip}: {v}"
        );
    }
}

async fn month_boundary_issues_resets_and_refills(b: Backend) {
    let env = Env::new(b, at(2026, 11, 30, 23, 0)).await;
    let app = env.start("").await;
    let (acct, secret, _) = acme(&app, Some(100)).await;
    let (refill_id, refill) = app
        .token(
            &secret,
            json!({"name": "refilled", "usage_limit": 5, "refill_monthly": 5}),
        )
        .await;
    for _ in 0..3 {
        assert_eq!(verify(&app, &refill).await["result"], "VALID");
    }
    app.stop().await;

    let hook = WebhookReceiver::start(0).await;
    let hook_secret = secret_file(&env, "hook.secret", "whsec-acme");
    let file = env.dir.path().join("acme.token");
    let policy = format!(
        "[[policy]]\nname = \"acme-monthly\"\naccount = \"acme\"\ntoken_name = \"acme {{period}}\"\n\
         usage_limit = 1000\nrole = \"user\"\nscopes = [\"convert:*\"]\nrevoke_previous = true\n\
         deliver_webhook = \"{}\"\nwebhook_secret_file = \"{}\"\ndeliver_file = \"{}\"\n",
        hook.url,
        hook_secret.display(),
        file.display()
    );
    // First start with the policy: this month's token is issued at once.
    let app = env.start(&policy).await;
    app.runner.sender().pass().await.unwrap();
    let [nov, dec] = &policy_tokens(&app, "acme-monthly", &["2026-11", "2026-12"]).await[..] else {
        unreachable!()
    };
    assert!(nov.is_some() && dec.is_none());
    let nov_plain = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(verify(&app, &nov_plain).await["result"], "VALID");

    // 00:00:00 UTC on the 1st.
    env.clock.set(at(2026, 12, 1, 0, 0));
    app.tick().await;
    let dec = app
        .ctx
        .store
        .policy_token("acme-monthly", "2026-12")
        .await
        .unwrap()
        .expect("December's token");
    assert_eq!(dec.name, "acme 2026-12");
    assert_eq!(dec.expires_at, Some(at(2027, 1, 1, 0, 0)));
    assert_eq!(dec.usage_limit, Some(1000));
    let scopes: Vec<String> = dec.scopes.iter().map(ToString::to_string).collect();
    assert_eq!(scopes, vec!["convert:*".to_string()]);
    let dec_plain = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_ne!(dec_plain, nov_plain);
    let v = verify(&app, &dec_plain).await;
    assert_eq!(
        (v["result"].as_str(), v["token_id"].as_str()),
        (Some("VALID"), Some(dec.id.as_str()))
    );
    assert_eq!(
        verify(&app, &nov_plain).await["result"],
        "REVOKED",
        "revoke_previous"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // The refill token reads as rolled: counter restarted, remaining back to 5; its first call
    // in December archives November's count.
    let (_, v) = app.get(&format!("/v1/tokens/{refill_id}"), &secret).await;
    assert_eq!(v["token"]["remaining"], 5, "{v}");
    assert_eq!(v["token"]["calls_this_month"], 0, "{v}");
    assert_eq!(verify(&app, &refill).await["remaining"], 4);
    assert_eq!(
        app.settled()
            .await
            .token_month_archive(&refill_id)
            .await
            .unwrap(),
        vec![("2026-11".to_string(), 3)]
    );
    assert_eq!(
        app.settled()
            .await
            .account_month_archive(&acct)
            .await
            .unwrap(),
        vec![("2026-11".to_string(), 4)],
        "3 refill calls and 1 policy-token call in November"
    );

    // Waking again (and again) changes nothing: one token per policy per month, one reset.
    app.tick().await;
    env.clock.advance(TimeDelta::minutes(5));
    app.tick().await;
    let ids = app.token_ids(&acct).await;
    assert_eq!(ids.len(), 3, "refill + November + December: {ids:?}");
    let run = app
        .ctx
        .store
        .job_run("monthly_reset", "2026-12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((run.status.as_str(), run.attempts), ("done", 1));

    // Both deliveries were signed with the policy's secret and carried the new token.
    let got = hook.received();
    assert_eq!(got.len(), 2);
    for (h, plain) in got.iter().zip([&nov_plain, &dec_plain]) {
        let sig = h.headers["x-tokenwarden-signature"].to_str().unwrap();
        assert!(signature_ok("whsec-acme", &h.body, sig), "signature {sig}");
        assert!(!signature_ok("other", &h.body, sig));
        let body: Value = serde_json::from_slice(&h.body).unwrap();
        assert_eq!(body["event"], "token_issued");
        assert_eq!(body["data"]["secret"].as_str(), Some(plain.as_str()));
        assert_eq!(body["data"]["policy"], "acme-monthly");
    }
    // The sealed copies of the token are gone from the outbox once delivered.
    let msgs = app
        .ctx
        .store
        .list_messages(&tokenwarden::store::outbox::MessageFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!msgs.is_empty());
    assert!(
        msgs.iter()
            .all(|m| m.sealed_secret.is_none() && m.status == "sent"),
        "{msgs:?}"
    );
}

async fn expiry_at_utc_midnight_with_notice(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let hook = WebhookReceiver::start(0).await;
    let hook_secret = secret_file(&env, "notify.secret", "n0tify");
    let app = env
        .start(&format!(
            "[notifications]\nexpired_notice = true\nwebhook_url = \"{}\"\nwebhook_secret_file = \"{}\"\n",
            hook.url,
            hook_secret.display()
        ))
        .await;
    let (_, secret, _) = acme(&app, None).await;
    let (id, plain) = app
        .token(&secret, json!({"name": "ends", "expires_on": "2026-11-28"}))
        .await;
    env.clock
        .set(at(2026, 11, 27, 23, 59) + TimeDelta::seconds(59));
    app.tick().await;
    let t = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(t.status.as_str(), "active");
    assert_eq!(verify(&app, &plain).await["result"], "VALID");

    env.clock.set(at(2026, 11, 28, 0, 0));
    app.tick().await;
    let t = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(t.status.as_str(), "expired", "marked at UTC midnight");
    assert_eq!(verify(&app, &plain).await["result"], "EXPIRED");
    let (_, v) = app
        .get("/v1/notifications?status=sent", &app.operator.clone())
        .await;
    let notes: Vec<(String, String)> = v["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["topic"].as_str().unwrap().into(),
                n["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut notes = notes;
    notes.sort();
    assert_eq!(
        notes,
        vec![
            ("expired".to_string(), "admin@acme.example".to_string()),
            ("expired".to_string(), hook.url.clone())
        ]
    );
    let got = hook.received();
    assert_eq!(got.len(), 1);
    let sig = got[0].headers["x-tokenwarden-signature"].to_str().unwrap();
    assert!(signature_ok("n0tify", &got[0].body, sig));
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(
        (body["event"].as_str(), body["data"]["token"]["id"].as_str()),
        (Some("expired"), Some(id.as_str()))
    );
    assert!(body["data"]["secret"].is_null(), "never the token");
    let emls = env.eml_files();
    assert_eq!(emls.len(), 1);
    assert!(emls[0].contains("has expired") && emls[0].contains(&id));
    assert!(!emls[0].contains(&plain), "never the token");
    // Once: later wake-ups send nothing more.
    env.clock.advance(TimeDelta::minutes(3));
    app.tick().await;
    assert_eq!(env.eml_files().len(), 1);
}

/// (topic, threshold, recipient) of every queued message about `token`.
async fn warnings_of(app: &TestApp, token: &str) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = app
        .ctx
        .store
        .list_messages(&tokenwarden::store::outbox::MessageFilter {
            token_id: Some(token.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .filter(|m| m.topic == "expiry_warning")
        .map(|m| {
            (
                m.context["threshold_days"].as_i64().unwrap(),
                m.target.clone(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn seven_and_one_day_warnings_go_to_issuer_and_admins_once(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let app = env.start("").await;
    let (_, secret, eng) = acme(&app, None).await;
    let (id, _) = app
        .token(
            &secret,
            json!({"name": "ci", "user_id": eng, "expires_on": "2026-12-20"}),
        )
        .await;
    env.clock.set(at(2026, 12, 12, 23, 59));
    app.tick().await;
    assert!(
        warnings_of(&app, &id).await.is_empty(),
        "8 days before: nothing yet"
    );
    env.clock.set(at(2026, 12, 13, 0, 0));
    app.tick().await;
    app.tick().await;
    let seven = vec![
        (7, "admin@acme.example".to_string()),
        (7, "eng@acme.example".to_string()),
    ];
    assert_eq!(
        warnings_of(&app, &id).await,
        seven,
        "issuer and opted-in admin, once each"
    );
    env.clock.set(at(2026, 12, 19, 0, 0));
    app.tick().await;
    env.clock.set(at(2026, 12, 19, 6, 0));
    app.tick().await;
    let mut all = seven.clone();
    all.extend([
        (1, "admin@acme.example".to_string()),
        (1, "eng@acme.example".to_string()),
    ]);
    all.sort();
    assert_eq!(warnings_of(&app, &id).await, all);
    let emls = env.eml_files();
    assert_eq!(emls.len(), 4);
    assert!(emls.iter().all(|e| !e.contains("quiet@acme.example")));
    assert!(emls.iter().any(|e| e.contains("expires in 7 days")));
    assert!(emls.iter().any(|e| e.contains("expires in 1 day ")));
    // A revoked token gets none.
    let (gone, _) = app
        .token(&secret, json!({"name": "gone", "expires_on": "2026-12-25"}))
        .await;
    app.delete(&format!("/v1/tokens/{gone}"), &secret).await;
    env.clock.set(at(2026, 12, 24, 12, 0));
    app.tick().await;
    assert!(warnings_of(&app, &gone).await.is_empty());
}

/// An inactive user hears nothing, and nothing is sent about its tokens while it is inactive:
/// no warning (its tokens are not warned at all, so the one due after reactivation still goes)
/// and no expired notice.
async fn inactive_users_get_no_expiry_mail_and_their_tokens_none_while_inactive(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let app = env.start("[notifications]\nexpired_notice = true\n").await;
    let (account, secret, eng) = acme(&app, None).await;
    let ops = app.user(&account, "ops@acme.example", "admin").await;
    let (of_eng, _) = app
        .token(
            &secret,
            json!({"name": "eng-ci", "user_id": eng, "expires_on": "2026-12-20"}),
        )
        .await;
    let (shared, _) = app
        .token(
            &secret,
            json!({"name": "shared", "expires_on": "2026-12-20"}),
        )
        .await;
    let status = |id: String, s: &'static str| {
        let app = &app;
        async move {
            let (code, v) = app
                .patch(
                    &format!("/v1/users/{id}"),
                    &app.operator.clone(),
                    json!({"status": s}),
                )
                .await;
            assert_eq!(code, StatusCode::OK, "{v}");
        }
    };
    status(eng.clone(), "inactive").await;
    status(ops, "inactive").await;
    env.clock.set(at(2026, 12, 13, 0, 0));
    app.tick().await;
    assert!(
        warnings_of(&app, &of_eng).await.is_empty(),
        "no warning about an inactive user's token"
    );
    assert_eq!(
        warnings_of(&app, &shared).await,
        vec![(7, "admin@acme.example".to_string())],
        "the inactive admin gets none"
    );
    // Active again: the warning then due goes to the user and the active admin.
    status(eng.clone(), "active").await;
    env.clock.set(at(2026, 12, 19, 0, 0));
    app.tick().await;
    assert_eq!(
        warnings_of(&app, &of_eng).await,
        vec![
            (1, "admin@acme.example".to_string()),
            (1, "eng@acme.example".to_string())
        ]
    );
    // Inactive again at its expiry: it expires, and no notice is sent about it.
    status(eng, "inactive").await;
    env.clock.set(at(2026, 12, 20, 0, 0));
    app.tick().await;
    let t = app.settled().await.token(&of_eng).await.unwrap().unwrap();
    assert_eq!(t.status.as_str(), "expired");
    let notices: Vec<(String, Option<String>)> = app
        .ctx
        .store
        .list_messages(&tokenwarden::store::outbox::MessageFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .filter(|m| m.topic == "expired")
        .map(|m| (m.target.clone(), m.token_id.clone()))
        .collect();
    assert_eq!(
        notices,
        vec![("admin@acme.example".to_string(), Some(shared))],
        "only the shared token's notice"
    );
}

async fn a_token_that_never_had_seven_days_gets_only_the_one_day_warning(b: Backend) {
    let env = Env::new(b, at(2026, 12, 10, 0, 0)).await;
    let app = env.start("").await;
    let (_, secret, _) = acme(&app, None).await;
    let (id, _) = app
        .token(
            &secret,
            json!({"name": "short", "expires_on": "2026-12-13"}),
        )
        .await;
    for h in (0..72).step_by(6) {
        env.clock.set(at(2026, 12, 10, 0, 0) + TimeDelta::hours(h));
        app.tick().await;
    }
    assert_eq!(
        warnings_of(&app, &id).await,
        vec![(1, "admin@acme.example".to_string())]
    );
}

async fn downtime_across_the_seven_day_window_sends_only_the_one_day_warning(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let app = env.start("").await;
    let (_, secret, _) = acme(&app, None).await;
    let (id, _) = app
        .token(
            &secret,
            json!({"name": "lapsed", "expires_on": "2026-12-20"}),
        )
        .await;
    env.clock.set(at(2026, 12, 12, 0, 0));
    app.tick().await;
    app.stop().await;
    // Down from 8 days before expiry until half a day before.
    env.clock.set(at(2026, 12, 19, 12, 0));
    let app = env.start("").await;
    app.runner.sender().pass().await.unwrap();
    assert_eq!(
        warnings_of(&app, &id).await,
        vec![(1, "admin@acme.example".to_string())]
    );
    assert_eq!(env.eml_files().len(), 1);
}

async fn a_daemon_down_across_the_month_boundary_catches_up_once_at_start(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let app = env.start("").await;
    let (acct, secret, _) = acme(&app, None).await;
    let (refill_id, refill) = app
        .token(
            &secret,
            json!({"name": "refilled", "usage_limit": 2, "refill_monthly": 2}),
        )
        .await;
    verify(&app, &refill).await;
    verify(&app, &refill).await;
    assert_eq!(verify(&app, &refill).await["result"], "USAGE_EXCEEDED");
    app.stop().await;
    let file = env.dir.path().join("acme.token");
    let policy = format!(
        "[[policy]]\nname = \"p\"\naccount = \"{acct}\"\nusage_limit = 10\ndeliver_file = \"{}\"\n",
        file.display()
    );
    let app = env.start(&policy).await;
    assert!(policy_tokens(&app, "p", &["2026-11"]).await[0].is_some());
    app.stop().await;

    // Down from November 27 to December 3.
    env.clock.set(at(2026, 12, 3, 10, 0));
    let app = env.start(&policy).await;
    let dec = app
        .ctx
        .store
        .policy_token("p", "2026-12")
        .await
        .unwrap()
        .expect("issued at start");
    assert_eq!(dec.name, "p 2026-12", "default token name");
    let (_, v) = app.get(&format!("/v1/tokens/{refill_id}"), &secret).await;
    assert_eq!(
        (
            v["token"]["remaining"].as_i64(),
            v["token"]["status"].as_str()
        ),
        (Some(2), Some("active")),
        "{v}"
    );
    let (_, v) = app.get("/v1/jobs", &app.operator.clone()).await;
    let last = |name: &str| {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["name"] == name)
            .unwrap()["last_run"]
            .clone()
    };
    assert_eq!(last("monthly_reset")["period"], "2026-12");
    assert_eq!(last("monthly_reset")["status"], "done");
    assert_eq!(last("monthly_tokens")["period"], "2026-12");
    app.stop().await;
    // Another start the same month issues nothing new.
    let app = env.start(&policy).await;
    assert_eq!(app.token_ids(&acct).await.len(), 3);
    let run = app
        .ctx
        .store
        .job_run("monthly_tokens", "2026-12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.attempts, 1);
}

async fn a_run_that_crashed_half_way_is_completed_by_the_next_start(b: Backend) {
    let env = Env::new(b, at(2026, 12, 1, 0, 0)).await;
    let app = env.start("").await;
    acme(&app, None).await;
    app.stop().await;
    let one = format!(
        "[jobs]\nlease_seconds = 5\n[[policy]]\nname = \"a\"\naccount = \"acme\"\ndeliver_file = \"{}\"\n",
        env.dir.path().join("a.token").display()
    );
    let two = format!(
        "{one}[[policy]]\nname = \"b\"\naccount = \"acme\"\ndeliver_file = \"{}\"\n",
        env.dir.path().join("b.token").display()
    );
    // A run that issued policy a's token and then died: its record says running, its lease
    // has run out.
    let app = env.start(&one).await;
    app.runner.sender().pass().await.unwrap();
    let a_token = std::fs::read_to_string(env.dir.path().join("a.token")).unwrap();
    let before = app
        .ctx
        .store
        .job_run("monthly_tokens", "2026-12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.status, "done");
    crash_run(&env, "monthly_tokens", "2026-12").await;
    app.stop().await;

    let app = env.start(&two).await;
    app.runner.sender().pass().await.unwrap();
    let ids = policy_tokens(&app, "a", &["2026-12"]).await;
    let ids_b = policy_tokens(&app, "b", &["2026-12"]).await;
    assert!(
        ids[0].is_some() && ids_b[0].is_some(),
        "both policies have their token"
    );
    assert_eq!(
        std::fs::read_to_string(env.dir.path().join("a.token")).unwrap(),
        a_token,
        "policy a was not issued (or delivered) twice"
    );
    let run = app
        .ctx
        .store
        .job_run("monthly_tokens", "2026-12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (run.status.as_str(), run.attempts),
        ("done", before.attempts + 1)
    );
    assert!(run.result.unwrap().contains("1 issued, 1 already issued"));
}

/// Turns a finished run back into one whose daemon died mid-way: status running, lease over.
async fn crash_run(env: &Env, job: &str, period: &str) {
    let past = Utc::now() - TimeDelta::seconds(30);
    let n = env
        .execute(
            "UPDATE job_runs SET status = 'running', finished_at = NULL, result = NULL, \
             lease_until = $1 WHERE job = $2 AND period = $3",
            past,
            &[job, period],
        )
        .await;
    assert_eq!(n, 1);
}

async fn webhook_deliveries_are_signed_and_retried_with_backoff(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let app = env.start("").await;
    acme(&app, None).await;
    app.stop().await;
    let hook = WebhookReceiver::start(2).await;
    let secret = secret_file(&env, "hook.secret", "k3y");
    let policy = format!(
        "[notifications]\nretry_base_seconds = 60\nmax_attempts = 5\n\
         [[policy]]\nname = \"h\"\naccount = \"acme\"\ndeliver_webhook = \"{}\"\nwebhook_secret_file = \"{}\"\n",
        hook.url,
        secret.display()
    );
    let app = env.start(&policy).await;
    app.runner.sender().pass().await.unwrap();
    let (_, v) = app.get("/v1/notifications", &app.operator.clone()).await;
    let n = &v["notifications"][0];
    assert_eq!(
        (n["status"].as_str(), n["attempts"].as_i64()),
        (Some("pending"), Some(1)),
        "{v}"
    );
    assert!(n["last_error"].as_str().unwrap().contains("500"), "{v}");
    assert_eq!(
        n["next_attempt_at"], "2026-11-27T12:01:00Z",
        "first retry after 60 s"
    );
    // Not before its time.
    app.runner.sender().pass().await.unwrap();
    assert_eq!(hook.received().len(), 1);
    env.clock.advance(TimeDelta::seconds(60));
    app.runner.sender().pass().await.unwrap();
    let (_, v) = app.get("/v1/notifications", &app.operator.clone()).await;
    assert_eq!(
        v["notifications"][0]["next_attempt_at"], "2026-11-27T12:03:00Z",
        "then 120 s"
    );
    env.clock.advance(TimeDelta::seconds(120));
    app.runner.sender().pass().await.unwrap();
    let got = hook.received();
    assert_eq!(got.len(), 3);
    for h in &got {
        let sig = h.headers["x-tokenwarden-signature"].to_str().unwrap();
        assert!(signature_ok("k3y", &h.body, sig));
    }
    let body: Value = serde_json::from_slice(&got[2].body).unwrap();
    let plain = body["data"]["secret"].as_str().unwrap();
    assert_eq!(verify(&app, plain).await["result"], "VALID");
    let (_, v) = app
        .get("/v1/notifications?status=sent", &app.operator.clone())
        .await;
    assert_eq!(v["notifications"][0]["attempts"], 3);
    let id = v["notifications"][0]["id"].as_str().unwrap();
    let attempts = app.ctx.store.message_attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(attempts[0].2.is_some() && attempts[2].2.is_none());
    let text = app.metrics().await;
    for line in [
        "tokenwarden_deliveries_total{kind=\"webhook\",outcome=\"retrying\"} 2",
        "tokenwarden_deliveries_total{kind=\"webhook\",outcome=\"sent\"} 1",
        "tokenwarden_outbox_messages{status=\"sent\"} 1",
        "tokenwarden_outbox_messages{status=\"pending\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing from\n{text}"
        );
    }
    assert!(text.contains("tokenwarden_job_runs_total{job=\"monthly_tokens\",outcome=\"done\"}"));
}

async fn bad_policies_stop_the_start_with_file_key_and_reason(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let app = env.start("").await;
    acme(&app, None).await;
    app.stop().await;
    let errs = env
        .config(
            "[email.smtp]\nhost = \"smtp.example.com\"\ntls = \"none\"\n\
             [notifications]\nexpiry_warning_days = [7, 0]\n[[policy]]\nname = \"x\"\naccount = \"acme\"\n\
             role = \"boss\"\nusage_limit = 0\nallowed_ips = [\"10.0.0.0/33\"]\n\
             [[policy]]\nname = \"x\"\naccount = \"acme\"\ndeliver_email = [\"not-an-address\"]\n",
        )
        .unwrap_err()
        .0;
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    for k in [
        "email.smtp.tls",
        "notifications.expiry_warning_days[1]",
        "policy[0].usage_limit",
        "policy[0].role",
        "policy[0].allowed_ips[0]",
        "policy[0].deliver_webhook",
        "policy[1].name",
        "policy[1].deliver_email[0]",
    ] {
        assert!(keys.contains(&k), "{k} missing from {errs:?}");
    }
    let file = env
        .dir
        .path()
        .join("tokenwarden.toml")
        .display()
        .to_string();
    assert!(errs.iter().all(|e| e.source == file), "{errs:?}");

    // An unknown account: the daemon does not start, and says where and why.
    let e = env
        .try_start(&format!(
            "[[policy]]\nname = \"y\"\naccount = \"nobody\"\ndeliver_file = \"{}\"\n",
            env.dir.path().join("y.token").display()
        ))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains(&file) && e.contains("policy[0].account") && e.contains("nobody"),
        "{e}"
    );
    // A broken template: stopped with its file and line.
    let tdir = env.dir.path().join("tmpl");
    std::fs::create_dir(&tdir).unwrap();
    for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/templates")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), tdir.join(f.file_name())).unwrap();
    }
    std::fs::write(
        tdir.join("expiry_warning.html"),
        "<p>\n{{ token.name }\n</p>\n",
    )
    .unwrap();
    let e = env
        .try_start(&format!(
            "[email]\ntemplates_dir = \"{}\"\n",
            tdir.display()
        ))
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("expiry_warning.html line 2"), "{e}");
}

async fn jobs_api_lists_and_runs_on_demand_idempotently(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let app = env.start("").await;
    let (_, secret, _) = acme(&app, None).await;
    let op = app.operator.clone();
    let (s, v) = app.get("/v1/jobs", &op).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 5);
    let monthly = jobs.iter().find(|j| j["name"] == "monthly_tokens").unwrap();
    assert_eq!(monthly["schedule"], "0 0 0 1 * *");
    assert_eq!(monthly["next_run"], "2026-12-01T00:00:00Z");
    assert_eq!(monthly["last_run"]["period"], "2026-11");
    assert_eq!(monthly["last_run"]["status"], "done");
    let expiry = jobs.iter().find(|j| j["name"] == "expiry").unwrap();
    assert_eq!(expiry["next_run"], "2026-11-27T12:01:00Z");

    let (s, v) = app.post("/v1/jobs/monthly_reset/run", &op, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["outcome"], "already_done");
    let (s, v) = app
        .post("/v1/jobs/monthly_reset/run?period=2026-10", &op, json!({}))
        .await;
    assert_eq!(
        (s, v["outcome"].as_str()),
        (StatusCode::OK, Some("ran")),
        "{v}"
    );
    let (_, v) = app
        .post("/v1/jobs/monthly_reset/run?period=2026-10", &op, json!({}))
        .await;
    assert_eq!(v["outcome"], "already_done");
    assert_error(
        &app.post("/v1/jobs/monthly_reset/run?period=2026-13", &op, json!({}))
            .await,
        422,
        4220,
        Some("period"),
    );
    assert_error(
        &app.post("/v1/jobs/monthly_reset/run?period=2027-01", &op, json!({}))
            .await,
        422,
        4220,
        Some("period"),
    );
    assert_error(
        &app.post("/v1/jobs/expiry/run?period=2026-11", &op, json!({}))
            .await,
        422,
        4220,
        Some("period"),
    );
    assert_error(
        &app.post("/v1/jobs/payroll/run", &op, json!({})).await,
        404,
        4040,
        None,
    );
    assert_error(
        &app.post("/v1/jobs/monthly_reset/run?when=now", &op, json!({}))
            .await,
        422,
        4221,
        Some("when"),
    );
    assert_error(
        &app.post("/v1/jobs/monthly_reset/run", &secret, json!({}))
            .await,
        403,
        4030,
        None,
    );
    assert_error(&app.get("/v1/jobs", &secret).await, 403, 4030, None);
    // Nothing was run by the refused calls.
    assert!(app
        .ctx
        .store
        .job_run("monthly_reset", "2026-13")
        .await
        .unwrap()
        .is_none());
    // An account's admins see their own notifications only.
    let (s, v) = app.get("/v1/notifications", &secret).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_error(
        &app.get("/v1/notifications?status=lost", &op).await,
        422,
        4220,
        Some("status"),
    );
}

async fn housekeeping_drops_spent_jwt_records_and_old_statistics(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    let app = env.start("[jobs]\nstats_retention_days = 30\n").await;
    let (_, secret, _) = acme(&app, None).await;
    let (_, plain) = app
        .token(&secret, json!({"name": "kept", "jwt": true}))
        .await;
    verify(&app, &plain).await;
    let (s, v) = app
        .call(
            reqwest::Method::POST,
            "/v1/jwt",
            None,
            Some(json!({"token": plain, "request_count": 2, "lifetime_seconds": 60})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let jwt = v["jwt"].as_str().unwrap().to_string();
    assert_eq!(verify(&app, &jwt).await["result"], "VALID");
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    assert_eq!(
        app.settled()
            .await
            .stats(day, day, None)
            .await
            .unwrap()
            .len(),
        1
    );
    // The next day: the JWT's use record is spent (it expired), statistics are kept.
    env.clock.set(at(2026, 11, 28, 0, 0));
    app.tick().await;
    // Read from the run record: the scheduler's own wake-up may have been the one that ran it.
    let run = app
        .ctx
        .store
        .job_run("housekeeping", "2026-11-28")
        .await
        .unwrap()
        .expect("the day's housekeeping ran");
    let result = run.result.unwrap_or_default();
    assert!(
        result.starts_with("dropped 1 JWT use records, 0 statistics rows"),
        "{result}"
    );
    assert_eq!(
        app.settled()
            .await
            .stats(day, day, None)
            .await
            .unwrap()
            .len(),
        1
    );
    // 31 days on, the day is past its retention.
    env.clock.set(at(2026, 12, 28, 0, 0));
    app.tick().await;
    assert!(app
        .ctx
        .store
        .stats(day, day, None)
        .await
        .unwrap()
        .is_empty());
}

/// Two daemons' senders read the same due message; one tries it, fails and schedules the retry.
/// The other's reading is stale: it does not take the message again at once (skipping the
/// backoff, and recording one attempt too few), only when the retry is due.
async fn a_message_tried_elsewhere_since_it_was_read_is_not_taken_again(b: Backend) {
    use tokenwarden::clock::Clock;
    use tokenwarden::store::{MessageKind, NewMessage};
    let app = crate::helpers::spawn_app(b).await;
    let store = &app.ctx.store;
    // Queued for tomorrow, so the daemon's own sender (on the test clock) leaves it alone.
    let now = app.clock.now() + TimeDelta::days(1);
    let message = NewMessage {
        id: "msg1".into(),
        kind: MessageKind::Webhook,
        topic: "expired".into(),
        target: "http://127.0.0.1:9/hook".into(),
        signer: None,
        account_id: None,
        token_id: None,
        context: json!({}),
        sealed_secret: None,
    };
    store.enqueue(&[message], now).await.unwrap();
    let wall = Utc::now();
    let lease = wall + TimeDelta::seconds(60);
    let read_by_a = store.due_messages(now, wall, 10).await.unwrap();
    let read_by_b = store.due_messages(now, wall, 10).await.unwrap();
    assert_eq!(read_by_a.len(), 1);
    // B takes it, fails, and schedules the retry an hour on.
    assert!(store
        .lease_message(&read_by_b[0], wall, lease)
        .await
        .unwrap());
    let retry = now + TimeDelta::hours(1);
    assert!(store
        .record_attempt("msg1", lease, now, Some("refused"), Some(retry))
        .await
        .unwrap());
    // A's reading is stale.
    assert!(!store
        .lease_message(&read_by_a[0], wall, lease)
        .await
        .unwrap());
    assert!(store.due_messages(now, wall, 10).await.unwrap().is_empty());
    let fresh = store.due_messages(retry, wall, 10).await.unwrap();
    assert_eq!(fresh[0].attempts, 1);
    assert!(store.lease_message(&fresh[0], wall, lease).await.unwrap());
}

/// A policy token's file delivery keeps failing; the token is revoked meanwhile (as
/// `revoke_previous` does when the next month's token is issued). The late retry is cancelled:
/// it must not write a dead token where its successor was (or will be) delivered.
async fn a_new_tokens_delivery_retried_after_its_revocation_is_cancelled(b: Backend) {
    let env = Env::new(b, at(2026, 11, 27, 12, 0)).await;
    // A folder stands where the file goes for now: every write fails.
    let file = env.dir.path().join("acme.token");
    std::fs::create_dir(&file).unwrap();
    let (app, id) = start_with_policy(&env, "").await;
    let messages = |app: &TestApp| {
        let store = app.ctx.store.clone();
        let id = id.clone();
        async move {
            store
                .list_messages(&tokenwarden::store::outbox::MessageFilter {
                    token_id: Some(id),
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap()
        }
    };
    let queued = messages(&app).await;
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].status.as_str(), queued[0].attempts),
        ("pending", 1)
    );
    let (s, v) = app
        .delete(&format!("/v1/tokens/{id}"), &app.operator.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The file can be written now, and the retry is due.
    std::fs::remove_dir(&file).unwrap();
    app.clock.advance(TimeDelta::hours(1));
    app.runner.sender().pass().await.unwrap();
    assert!(!file.exists(), "the revoked token was written");
    let done = messages(&app).await;
    assert_eq!(done[0].status, "cancelled", "{:?}", done[0]);
}
