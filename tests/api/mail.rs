//! Email over real SMTP: aiosmtpd on loopback with AUTH receives what the outbox sends; the
//! test parses each message (headers, both parts, recipients). Two daemons on one PostgreSQL
//! over a month boundary send each message once.

use crate::both_backends;
use crate::helpers::{Backend, TestApp};
use crate::jobs_env::{Env, SmtpServer};
use chrono::{DateTime, TimeZone, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
}

/// (message, subject, text part, html part) of a raw message.
fn parts(raw: &str) -> (mailparse::ParsedMail<'_>, String, String, String) {
    let m = mailparse::parse_mail(raw.as_bytes()).expect("a parseable message");
    use mailparse::MailHeaderMap;
    let subject = m.headers.get_first_value("Subject").unwrap_or_default();
    assert_eq!(m.ctype.mimetype, "multipart/alternative", "{raw}");
    let text = m
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == "text/plain")
        .expect("text part")
        .get_body()
        .unwrap();
    let html = m
        .subparts
        .iter()
        .find(|p| p.ctype.mimetype == "text/html")
        .expect("html part")
        .get_body()
        .unwrap();
    (m, subject, text, html)
}

async fn setup(app: &TestApp) -> (String, String) {
    let (id, secret) = app.account("acme").await;
    app.user(&id, "admin@acme.example", "admin").await;
    let (tid, _) = app
        .token(
            &secret,
            json!({"name": "nightly export", "expires_on": "2026-12-10"}),
        )
        .await;
    (secret, tid)
}

both_backends!(
    emails_reach_a_real_smtp_server_with_auth,
    a_relay_that_refuses_the_login_is_retried_then_failed
);

async fn emails_reach_a_real_smtp_server_with_auth(b: Backend) {
    let smtp = SmtpServer::start("tw", "s3cret pw");
    let env = Env::new(b, at(2026, 11, 27, 12)).await;
    let app = env.start("").await;
    let (_, warned) = setup(&app).await;
    app.stop().await;
    let pw = env.dir.path().join("smtp.pw");
    std::fs::write(&pw, "s3cret pw\n").unwrap();
    let config = format!(
        "{}[[policy]]\nname = \"acme-monthly\"\naccount = \"acme\"\ntoken_name = \"acme {{period}}\"\n\
         usage_limit = 1000\ndeliver_email = [\"ops@acme.example\", \"OPS@acme.example\"]\nemail_includes_token = true\n",
        smtp.config("tw", &pw)
    );
    // December 3: the month's token is issued (and emailed with the token, as the policy
    // asks), and the token expiring December 10 is due its 7-day warning.
    env.clock.set(at(2026, 12, 3, 0));
    let app = env.start(&config).await;
    let report = app.runner.sender().pass().await.unwrap();
    let got = smtp.received();
    assert_eq!(got.len(), 2, "{report:?} {got:?}");
    assert!(
        got.iter().all(|r| r.login.as_deref() == Some("tw")),
        "sent after AUTH"
    );
    assert!(got.iter().all(|r| r.mail_from == "tw@example.test"));

    let issued = got
        .iter()
        .find(|r| r.rcpt_tos == ["ops@acme.example"])
        .expect("policy email, once per address");
    let (m, subject, text, html) = parts(&issued.data);
    use mailparse::MailHeaderMap;
    assert_eq!(
        m.headers.get_first_value("From").unwrap(),
        "tokenwarden <tw@example.test>"
    );
    assert_eq!(m.headers.get_first_value("To").unwrap(), "ops@acme.example");
    assert_eq!(subject, "New token \"acme 2026-12\" for 2026-12");
    assert!(
        text.contains("valid until 2027-01-01T00:00:00Z (UTC) for 1000 calls"),
        "{text}"
    );
    let plain = text
        .split_whitespace()
        .find(|w| w.starts_with("tw_"))
        .expect("the token, as the policy asks")
        .to_string();
    assert!(html.contains(&plain));
    let (s, v) = app
        .call(
            reqwest::Method::POST,
            "/v1/verify",
            None,
            Some(json!({"token": plain})),
        )
        .await;
    assert_eq!(
        (s, v["result"].as_str()),
        (StatusCode::OK, Some("VALID")),
        "{v}"
    );

    let warning = got
        .iter()
        .find(|r| r.rcpt_tos == ["admin@acme.example"])
        .expect("warning");
    let (_, subject, text, html) = parts(&warning.data);
    assert_eq!(
        subject,
        "Token \"nightly export\" expires in 7 days (2026-12-10T00:00:00Z)"
    );
    // It leads with the step that keeps the service running: a rotation to a later expiry,
    // before extending the expiry alone.
    let rotate = format!("tokenwarden token regenerate {warned} --expires-on YYYY-MM-DD");
    let first_step = text
        .lines()
        .find(|l| l.starts_with("    "))
        .unwrap_or_default()
        .trim();
    assert_eq!(first_step, rotate, "{text}");
    assert!(
        text.find(&rotate) < text.find("PATCH"),
        "rotation before the extension: {text}"
    );
    assert!(text.contains(&format!("/v1/tokens/{warned}/regenerate")));
    assert!(html.contains("<strong>nightly export</strong>"), "{html}");
    assert!(
        !text.contains("tw_") && !html.contains("tw_"),
        "no secret in a warning"
    );
    let (_, v) = app
        .get("/v1/notifications?status=sent", &app.operator.clone())
        .await;
    assert_eq!(v["notifications"].as_array().unwrap().len(), 2, "{v}");
}

async fn a_relay_that_refuses_the_login_is_retried_then_failed(b: Backend) {
    let smtp = SmtpServer::start("tw", "right");
    let env = Env::new(b, at(2026, 11, 27, 12)).await;
    let app = env.start("").await;
    setup(&app).await;
    app.stop().await;
    let pw = env.dir.path().join("smtp.pw");
    std::fs::write(&pw, "wrong\n").unwrap();
    let config = format!(
        "{}[notifications]\nmax_attempts = 2\nretry_base_seconds = 30\n",
        smtp.config("tw", &pw)
    );
    env.clock.set(at(2026, 12, 3, 0));
    let app = env.start(&config).await;
    app.runner.sender().pass().await.unwrap();
    let op = app.operator.clone();
    let (_, v) = app.get("/v1/notifications", &op).await;
    let n: &Value = &v["notifications"][0];
    assert_eq!(
        (n["status"].as_str(), n["attempts"].as_i64()),
        (Some("pending"), Some(1)),
        "{v}"
    );
    assert!(n["last_error"].as_str().unwrap().contains("535"), "{v}");
    env.clock
        .set(at(2026, 12, 3, 0) + chrono::TimeDelta::seconds(30));
    app.runner.sender().pass().await.unwrap();
    let (_, v) = app.get("/v1/notifications?status=failed", &op).await;
    assert_eq!(v["notifications"][0]["attempts"], 2, "{v}");
    assert!(smtp.received().is_empty());
}

#[tokio::test]
#[cfg_attr(
    not(tw_pg_tests),
    ignore = "PostgreSQL: set TOKENWARDEN_TEST_PG_URL to run"
)]
async fn two_daemons_on_one_postgres_over_a_month_boundary_do_everything_once() {
    if !crate::helpers::postgres_enabled(
        "mail::two_daemons_on_one_postgres_over_a_month_boundary_do_everything_once",
    ) {
        return;
    }
    let env = Env::new(Backend::Postgres, at(2026, 11, 30, 12)).await;
    let app = env.start("").await;
    let (id, secret) = app.account("acme").await;
    app.user(&id, "admin@acme.example", "admin").await;
    let (warned, _) = app
        .token(&secret, json!({"name": "w", "expires_on": "2026-12-08"}))
        .await;
    let (refill, refill_plain) = app
        .token(
            &secret,
            json!({"name": "r", "usage_limit": 3, "refill_monthly": 3}),
        )
        .await;
    // November's three uses spent: December's refill is what brings them back.
    for _ in 0..3 {
        let body = json!({"token": refill_plain});
        let (_, v) = app
            .call(reqwest::Method::POST, "/v1/verify", None, Some(body))
            .await;
        assert_eq!(v["result"], "VALID", "{v}");
    }
    let file = env.dir.path().join("acme.token");
    let policy = format!(
        "[[policy]]\nname = \"p\"\naccount = \"acme\"\ndeliver_file = \"{}\"\ndeliver_email = [\"ops@acme.example\"]\n",
        file.display()
    );
    app.stop().await;
    let a = env.start(&policy).await;
    let b = env.start(&policy).await;
    let emails_before = env.eml_files().len();
    // 00:00 UTC on December 1: both daemons wake, several times, at the same moments.
    env.clock.set(at(2026, 12, 1, 0));
    for _ in 0..3 {
        tokio::join!(a.runner.run_due(), b.runner.run_due());
        let (x, y) = tokio::join!(a.runner.sender().pass(), b.runner.sender().pass());
        x.unwrap();
        y.unwrap();
    }
    let store = &a.ctx.store;
    assert!(store.policy_token("p", "2026-12").await.unwrap().is_some());
    let tokens = a.token_ids(&id).await;
    assert_eq!(
        tokens.len(),
        4,
        "w, r, November's and December's: {tokens:?}"
    );
    let reset = store
        .job_run("monthly_reset", "2026-12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (reset.status.as_str(), reset.attempts),
        ("done", 1),
        "one reset"
    );
    let issue = store
        .job_run("monthly_tokens", "2026-12")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(issue.attempts, 1);
    let msgs = store
        .list_messages(&tokenwarden::store::outbox::MessageFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let warnings: Vec<_> = msgs
        .iter()
        .filter(|m| m.topic == "expiry_warning")
        .collect();
    assert_eq!(warnings.len(), 1, "one email per (token, threshold)");
    assert_eq!(warnings[0].token_id.as_deref(), Some(warned.as_str()));
    let issued: Vec<_> = msgs
        .iter()
        .filter(|m| m.topic == "token_issued" && m.context["period"] == "2026-12")
        .collect();
    assert_eq!(issued.len(), 2, "one file and one email for December");
    assert!(
        msgs.iter().all(|m| m.status == "sent" && m.attempts == 1),
        "each sent once: {msgs:?}"
    );
    assert_eq!(
        env.eml_files().len() - emails_before,
        2,
        "December's token email and the warning"
    );
    // The refill reads as applied in December (its row is written by its next call or change).
    let t = store.token(&refill).await.unwrap().unwrap();
    assert_eq!(t.remaining, Some(0), "spent in November");
    assert_eq!(t.remaining_at(at(2026, 12, 1, 0)), Some(3));
}

#[tokio::test]
async fn starttls_and_implicit_tls_check_the_relay_certificate_then_authenticate() {
    for mode in ["starttls", "implicit"] {
        let certs = tempfile::tempdir().unwrap();
        let (ca, cert, key) = crate::jobs_env::test_certificates(certs.path());
        let smtp = SmtpServer::start_tls("tw", "pw", Some((mode, &cert, &key)));
        let env = Env::new(Backend::Sqlite, at(2026, 11, 27, 12)).await;
        let app = env.start("").await;
        setup(&app).await;
        app.stop().await;
        let pw = env.dir.path().join("smtp.pw");
        std::fs::write(&pw, "pw\n").unwrap();

        // Without the private CA the relay's certificate is not trusted: nothing is sent.
        env.clock.set(at(2026, 12, 3, 0));
        let app = env.start(&smtp.config_tls("tw", &pw, mode, "")).await;
        app.runner.sender().pass().await.unwrap();
        let (_, v) = app.get("/v1/notifications", &app.operator.clone()).await;
        let err = v["notifications"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(err.contains("certificate"), "{mode}: {v}");
        assert!(smtp.received().is_empty());
        app.stop().await;

        // With ca_file it is: delivered over TLS, after AUTH.
        env.clock.set(at(2026, 12, 3, 1));
        let ca_line = format!("ca_file = \"{}\"", ca.display());
        let app = env.start(&smtp.config_tls("tw", &pw, mode, &ca_line)).await;
        app.runner.sender().pass().await.unwrap();
        let got = smtp.received();
        assert_eq!(got.len(), 1, "{mode}");
        assert_eq!(got[0].login.as_deref(), Some("tw"));
        assert_eq!(got[0].rcpt_tos, ["admin@acme.example"]);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_warning_whose_token_is_revoked_before_it_goes_out_is_cancelled() {
    let smtp = SmtpServer::start("tw", "right");
    let env = Env::new(Backend::Sqlite, at(2026, 11, 27, 12)).await;
    let app = env.start("").await;
    let (secret, tid) = setup(&app).await;
    app.stop().await;
    let pw = env.dir.path().join("smtp.pw");
    std::fs::write(&pw, "wrong\n").unwrap();
    env.clock.set(at(2026, 12, 3, 0));
    let app = env.start(&smtp.config("tw", &pw)).await;
    app.runner.sender().pass().await.unwrap();
    let (s, v) = app.delete(&format!("/v1/tokens/{tid}"), &secret).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    env.clock.set(at(2026, 12, 3, 1));
    app.runner.sender().pass().await.unwrap();
    let (_, v) = app.get("/v1/notifications", &app.operator.clone()).await;
    let n = &v["notifications"][0];
    assert_eq!(n["status"], "cancelled", "{v}");
    assert_eq!(n["last_error"], "the token was revoked");
    assert_eq!(n["attempts"], 1, "no further attempt");
}
