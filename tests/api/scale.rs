//! Work that grows with the number of tokens, at a size CI affords: the monthly reset rewrites no
//! token, jobs do not wait behind a long reset, issuing a token checks `max_tokens` against a
//! count kept up to date rather than counted, and the tokens kept in memory stay within their
//! configured size and are read ahead after a start.

use crate::helpers::{spawn_app, spawn_app_with, Backend, Db, TestApp};
use crate::{both_backends, postgres_only};
use chrono::{TimeZone, Utc};
use futures::StreamExt;
use serde_json::{json, Value};
use tokenwarden::jobs::{Job, RunOutcome};

both_backends!(
    the_monthly_reset_rewrites_no_token_and_every_token_reads_as_rolled,
    the_live_token_count_follows_every_change_and_issuing_reads_no_token_list,
    the_tokens_kept_in_memory_stay_within_token_cache_mib,
    a_start_reads_the_active_tokens_into_memory_in_the_background,
    a_token_row_verification_cannot_read_is_never_valid,
);

postgres_only!(expiry_runs_while_a_monthly_reset_is_in_progress,);

/// Tokens cloned from one real token.
const CLONES: i64 = 50_000;

impl Db {
    /// Copies token `id` `n` times (ids `<id>-<i>`): counters of November, half of them
    /// exhausted with a monthly refill due.
    async fn clone_token(&self, id: &str, n: i64) {
        self.exec(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n}) \
             INSERT INTO tokens (id, account_id, user_id, issued_by, name, role, scopes, \
             allowed_ips, usage_limit, remaining, refill_monthly, refill_period, expires_at, \
             status, jwt_enabled, secret_hash, calls_month, calls_month_period, calls_total, \
             created_at, updated_at) \
             SELECT t.id || '-' || CAST(n.i AS TEXT), t.account_id, t.user_id, t.issued_by, \
             t.name, t.role, t.scopes, t.allowed_ips, t.usage_limit, \
             CASE WHEN n.i % 2 = 0 THEN 0 ELSE 7 END, t.refill_monthly, '2026-11', \
             t.expires_at, CASE WHEN n.i % 2 = 0 THEN 'exhausted' ELSE 'active' END, \
             t.jwt_enabled, t.secret_hash, 3, '2026-11', 3, t.created_at, t.updated_at \
             FROM n, tokens t WHERE t.id = '{id}'"
        ))
        .await;
    }
}

/// One verification of `token`: the status and the answer.
async fn verify_call(app: &TestApp, token: &str) -> (reqwest::StatusCode, Value) {
    let body = json!({"token": token});
    app.call(reqwest::Method::POST, "/v1/verify", None, Some(body))
        .await
}

/// One verification of `token`, answered 200; its answer.
async fn verify(app: &TestApp, token: &str) -> Value {
    let (s, v) = verify_call(app, token).await;
    assert_eq!(s.as_u16(), 200, "{v}");
    v
}

/// The daemon's `tokenwarden_cached_tokens` gauge (0 before it is first set).
async fn cached_tokens(app: &TestApp) -> u64 {
    let text = app.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix("tokenwarden_cached_tokens "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

async fn big_account(app: &TestApp) -> (String, String) {
    app.account_with(json!({"name": "big", "max_tokens": 10_000_000}))
        .await
}

/// The monthly reset rewrites no token: with 50,000 tokens holding November's counters it
/// rolls the account alone, and every token reads as rolled from December's first instant (its
/// counter zero, its refill applied, the exhausted half active again, in views and in the
/// status filter); the first call or change in December writes the roll.
async fn the_monthly_reset_rewrites_no_token_and_every_token_reads_as_rolled(b: Backend) {
    let app = spawn_app(b).await;
    let db = Db::of(&app).await;
    let (acct, secret) = big_account(&app).await;
    let (id, plain) = app
        .token(
            &secret,
            json!({"name": "t", "usage_limit": 10, "refill_monthly": 10}),
        )
        .await;
    // A call in November, so the account's quota counter has a month to roll too.
    verify(&app, &plain).await;
    app.settled().await;
    db.clone_token(&id, CLONES).await;
    let total = CLONES + 1;
    let in_november = "SELECT COUNT(*) FROM tokens WHERE calls_month_period = '2026-11' \
         AND refill_period = '2026-11'";
    assert_eq!(db.int(in_november).await, total, "fixture");

    app.clock
        .set(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 30).unwrap());
    let r = app
        .runner
        .run_on_demand(Job::MonthlyReset, None)
        .await
        .unwrap();
    assert_eq!(
        r.outcome,
        RunOutcome::Ran(
            "rolled 1 accounts into 2026-12; tokens roll as they are next used or changed".into()
        )
    );
    assert_eq!(db.int(in_november).await, total, "no token row written");
    assert_eq!(
        app.settled()
            .await
            .account_month_archive(&acct)
            .await
            .unwrap(),
        vec![("2026-11".to_string(), 1)]
    );

    // An exhausted clone reads as refilled and active.
    let (_, v) = app.get(&format!("/v1/tokens/{id}-2"), &secret).await;
    let t = &v["token"];
    assert_eq!(
        (&t["remaining"], &t["status"], &t["calls_this_month"]),
        (&json!(10), &json!("active"), &json!(0)),
        "{v}"
    );
    let (_, v) = app.get("/v1/tokens?status=exhausted", &secret).await;
    assert_eq!(v["tokens"], json!([]), "{v}");
    let (_, v) = app.get("/v1/tokens?status=active&limit=1", &secret).await;
    assert_eq!(v["tokens"].as_array().unwrap().len(), 1, "{v}");

    // A change starts from the refilled uses: a new limit of 20 with none used leaves 20.
    let (s, v) = app
        .patch(
            &format!("/v1/tokens/{id}-4"),
            &secret,
            json!({"usage_limit": 20}),
        )
        .await;
    assert_eq!(s.as_u16(), 200, "{v}");
    assert_eq!(v["token"]["remaining"], 20, "{v}");

    // The first call in December rolls the token it uses, archiving its November.
    let v = verify(&app, &plain).await;
    assert_eq!(
        (&v["result"], &v["remaining"], &v["calls_this_month"]),
        (&json!("VALID"), &json!(9), &json!(1)),
        "{v}"
    );
    let store = app.settled().await;
    assert_eq!(
        store.token_month_archive(&id).await.unwrap(),
        vec![("2026-11".to_string(), 1)]
    );
    assert_eq!(
        db.int(in_november).await,
        total - 2,
        "the token called and the clone changed are written"
    );
}

/// `live_tokens` is kept by the store through issue, exhaustion, refill, expiry, revocation
/// and PATCH; issuing checks `max_tokens` against it, and the one count issuing still makes
/// (live tokens past their expiry, not yet marked) reads an index of live tokens only.
async fn the_live_token_count_follows_every_change_and_issuing_reads_no_token_list(b: Backend) {
    let app = spawn_app(b).await;
    let db = Db::of(&app).await;
    let (acct, secret) = app
        .account_with(json!({"name": "acme", "max_tokens": 4}))
        .await;
    let live = || {
        let q = format!("SELECT live_tokens FROM accounts WHERE id = '{acct}'");
        let db = &db;
        async move { db.int(&q).await }
    };
    let (one_id, one) = app
        .token(&secret, json!({"name": "one", "usage_limit": 1}))
        .await;
    let (two_id, _) = app.token(&secret, json!({"name": "two"})).await;
    let (short_id, _) = app
        .token(&secret, json!({"name": "short", "lifetime_seconds": 60}))
        .await;
    assert_eq!(live().await, 3);
    // Exhausted still counts.
    let v = verify(&app, &one).await;
    assert_eq!(v["result"], "VALID", "{v}");
    app.settled().await;
    assert_eq!(live().await, 3);
    // Past its expiry but not yet marked: still counted in the column, not by an issue.
    app.clock.advance(chrono::TimeDelta::seconds(61));
    let (four_id, _) = app.token(&secret, json!({"name": "four"})).await;
    let (five_id, _) = app.token(&secret, json!({"name": "five"})).await;
    assert_eq!(live().await, 5);
    let (s, v) = app
        .post("/v1/tokens", &secret, json!({"name": "six"}))
        .await;
    assert_eq!((s.as_u16(), v["code"].as_u64()), (409, Some(4091)), "{v}");
    // Marked expired: out of the column.
    let r = app.runner.run_on_demand(Job::Expiry, None).await.unwrap();
    assert!(matches!(r.outcome, RunOutcome::Ran(_)), "{r:?}");
    assert_eq!(live().await, 4);
    // Revoked: out; a PATCH that leaves it live changes nothing.
    let (s, _) = app.delete(&format!("/v1/tokens/{two_id}"), &secret).await;
    assert_eq!(s.as_u16(), 200);
    assert_eq!(live().await, 3);
    let (s, _) = app
        .patch(
            &format!("/v1/tokens/{four_id}"),
            &secret,
            json!({"usage_limit": 5}),
        )
        .await;
    assert_eq!(s.as_u16(), 200);
    assert_eq!(live().await, 3);
    // The expired token given a later expiry is live again.
    let (s, v) = app
        .patch(
            &format!("/v1/tokens/{short_id}"),
            &secret,
            json!({"lifetime_seconds": 3600}),
        )
        .await;
    assert_eq!(s.as_u16(), 200, "{v}");
    assert_eq!(v["token"]["status"], "active", "{v}");
    assert_eq!(live().await, 4);
    let (s, v) = app
        .post("/v1/tokens", &secret, json!({"name": "six"}))
        .await;
    assert_eq!((s.as_u16(), v["code"].as_u64()), (409, Some(4091)), "{v}");
    assert_eq!(
        db.int("SELECT COUNT(*) FROM tokens WHERE status IN ('active', 'exhausted') AND kind = 'token'")
            .await,
        live().await,
        "the column agrees with a count"
    );
    let _ = (one_id, five_id);

    // With many live tokens in the account, the count an issue makes is planned on the
    // partial index of live tokens by expiry: it reads the lapsed ones, not the list.
    db.clone_token(&four_id, 20_000).await;
    db.exec("ANALYZE").await;
    let plan = db
        .plan(
            &tokenwarden::store::LAPSED_LIVE_TOKENS
                .replace("$1", &format!("'{acct}'"))
                .replace("$2", "'2026-11-27T12:00:00Z'"),
        )
        .await;
    assert!(plan.contains("tokens_live_by_expiry"), "{plan}");
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("SCAN tokens"),
        "{plan}"
    );
}

/// A reset held up (an account row it must roll is locked by another transaction) does not
/// hold back expiry of another account's token, which runs and finishes meanwhile; the reset
/// finishes once the row is free.
async fn expiry_runs_while_a_monthly_reset_is_in_progress(b: Backend) {
    let app = spawn_app_with(b, |c| {
        c.db_lock_timeout = std::time::Duration::from_secs(60);
    })
    .await;
    let db = Db::of(&app).await;
    let (acct, secret) = big_account(&app).await;
    let (_, held_plain) = app.token(&secret, json!({"name": "held"})).await;
    // In an account with no call in November, which the reset has nothing to roll for.
    let (_, other) = app.account("other").await;
    let (due, _) = app
        .token(&other, json!({"name": "due", "lifetime_seconds": 3600}))
        .await;
    // A call in November: the reset has the account's quota counter to roll.
    verify(&app, &held_plain).await;
    app.settled().await;
    let Db::Postgres(pool) = &db else {
        unreachable!("PostgreSQL only")
    };
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM accounts WHERE id = $1 FOR UPDATE")
        .bind(&acct)
        .execute(&mut *blocker)
        .await
        .unwrap();

    app.clock
        .set(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 30).unwrap());
    let runner = app.runner.clone();
    let reset = tokio::spawn(async move { runner.run_on_demand(Job::MonthlyReset, None).await });
    // The reset has claimed its period and waits on the row.
    for _ in 0..100 {
        let run = app
            .ctx
            .store
            .job_run("monthly_reset", "2026-12")
            .await
            .unwrap();
        if run.is_some_and(|r| r.status == "running") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        app.runner.run_on_demand(Job::Expiry, None),
    )
    .await
    .expect("expiry does not wait for the reset")
    .unwrap();
    assert!(
        matches!(&r.outcome, RunOutcome::Ran(s) if s.starts_with("1 ")),
        "{r:?}"
    );
    let token = app.ctx.store.token(&due).await.unwrap().unwrap();
    assert_eq!(token.status.as_str(), "expired");
    assert!(!reset.is_finished(), "the reset is still held up");

    blocker.commit().await.unwrap();
    let r = reset.await.unwrap().unwrap();
    assert!(
        matches!(&r.outcome, RunOutcome::Ran(s) if s.starts_with("rolled ")),
        "{r:?}"
    );
}

/// With the usage log at its default bound (128 MiB a file), a new store takes a few MiB on
/// disk: the log's files start at one step each and grow only while folds fall behind.
#[tokio::test]
async fn an_empty_sqlite_store_is_small_on_disk() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.usage_log_bytes = 128 << 20).await;
    let (_, secret) = app.account("acme").await;
    let (_, t) = app.token(&secret, json!({"name": "svc"})).await;
    for _ in 0..20 {
        assert_eq!(verify(&app, &t).await["result"], "VALID");
    }
    let db = app.ctx.store.sqlite_file().unwrap();
    let dir = db.parent().unwrap();
    let mut on_disk = 0u64;
    for e in std::fs::read_dir(dir).unwrap() {
        use std::os::unix::fs::MetadataExt;
        let m = e.unwrap().metadata().unwrap();
        if m.is_file() {
            on_disk += m.blocks() * 512;
        }
    }
    assert!(on_disk < 20 << 20, "{on_disk} bytes on disk in {dir:?}");
    for suffix in ["-usage.0", "-usage.1"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 << 20, "{p:?}");
    }
}

/// With `token_cache_mib = 1` the daemon keeps no more tokens in memory than that holds (3495 on
/// SQLite, 3177 on PostgreSQL, whose copies also hold each token's day), however many are
/// used; calls on tokens it dropped read them again and count on from the stored counters.
async fn the_tokens_kept_in_memory_stay_within_token_cache_mib(b: Backend) {
    let app = spawn_app_with(b, |c| {
        c.token_cache_bytes = 1 << 20;
        c.tokens.max_count_per_request = 1000;
    })
    .await;
    let cap = match b {
        Backend::Sqlite => 3495,
        Backend::Postgres => 3177,
    };
    let (_, secret) = big_account(&app).await;
    let mut plain = Vec::new();
    for _ in 0..6 {
        let (s, v) = app
            .post(
                "/v1/tokens",
                &secret,
                json!({"name": "many", "count": 1000}),
            )
            .await;
        assert_eq!(s.as_u16(), 201, "{v}");
        for t in v["tokens"].as_array().unwrap() {
            plain.push(t["token"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(plain.len(), 6000);
    for round in 1..=2 {
        let answers: Vec<Value> = futures::stream::iter(plain.iter())
            .map(|t| verify(&app, t))
            .buffer_unordered(16)
            .collect()
            .await;
        for v in &answers {
            assert_eq!(v["result"], "VALID", "{v}");
            assert_eq!(v["calls_this_month"], round, "{v}");
        }
        app.settled().await;
        let held = cached_tokens(&app).await;
        assert!(held > 0 && held <= cap, "round {round}: {held} tokens held");
    }
}

/// A start reads a few of the most recently used tokens before it serves, and the rest of the
/// active tokens in the background: with no call made, the cache soon holds all of them.
async fn a_start_reads_the_active_tokens_into_memory_in_the_background(b: Backend) {
    let app = spawn_app(b).await;
    let db = Db::of(&app).await;
    let (_, secret) = big_account(&app).await;
    let (id, plain) = app.token(&secret, json!({"name": "first"})).await;
    // Half the clones are exhausted: 15,000 active ones, the first, and the account's key.
    db.clone_token(&id, 30_000).await;
    drop(db);
    let app = app.restart().await;
    let mut held = 0;
    for _ in 0..300 {
        held = cached_tokens(&app).await;
        if held == 15_002 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(held, 15_002, "active tokens held after the start");
    let v = verify(&app, &plain).await;
    assert_eq!(v["result"], "VALID", "{v}");
}

/// Verification reads a token's state strictly: a stored day, month, hash or address it cannot
/// read makes that token's calls fail as a server error (never VALID, nothing counted), and
/// other tokens work.
async fn a_token_row_verification_cannot_read_is_never_valid(b: Backend) {
    let app = spawn_app(b).await;
    let db = Db::of(&app).await;
    let (_, secret) = app.account("acme").await;
    let (good_id, good) = app.token(&secret, json!({"name": "good"})).await;
    let short_hash = match b {
        Backend::Sqlite => "X'0102'",
        Backend::Postgres => "'\\x0102'::bytea",
    };
    let mut broken = Vec::new();
    for set in [
        "stats_day = 'yesterday'".to_string(),
        "calls_month_period = '2026-13'".to_string(),
        format!("secret_hash = {short_hash}"),
        "last_used_ip = 'not an address'".to_string(),
    ] {
        let (id, plain) = app.token(&secret, json!({"name": "broken"})).await;
        db.exec(&format!("UPDATE tokens SET {set} WHERE id = '{id}'"))
            .await;
        broken.push((set, plain));
    }
    for (set, plain) in &broken {
        let (s, v) = verify_call(&app, plain).await;
        assert!(s.is_server_error(), "{set}: {s} {v}");
        assert_ne!(v["result"], "VALID", "{set}: {v}");
    }
    let v = verify(&app, &good).await;
    assert_eq!(v["result"], "VALID", "{v}");
    app.settled().await;
    assert_eq!(
        db.int("SELECT CAST(COALESCE(SUM(calls_total), 0) AS BIGINT) FROM tokens")
            .await,
        1,
        "only the good token's call is counted"
    );
    let _ = good_id;
}
