//! Usage counting that survives a SIGKILL, and two daemons sharing one store.

use crate::helpers::*;
use crate::{both_backends, postgres_only};
use serde_json::{json, Value};
use std::{process::Stdio, sync::Arc};
use tokenwarden::{app::App, clock::ManualClock, config::Config};

/// Two daemons in this process on one store (SQLite file or PostgreSQL database), sharing the
/// master key, as an operator would run them.
struct TwoDaemons {
    bases: Vec<String>,
    operator: String,
    servers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _pg: Option<PgDb>,
    _dir: tempfile::TempDir,
}

impl TwoDaemons {
    async fn start(b: Backend) -> TwoDaemons {
        let dir = tempfile::tempdir().unwrap();
        let (store, pg) = store_for(b, dir.path()).await;
        let clock = ManualClock::new(t0());
        let mut bases = Vec::new();
        let mut servers = Vec::new();
        for node in ["a", "b"] {
            let mut c = Config::for_data_dir(&dir.path().join(node));
            c.listen = "127.0.0.1:0".parse().unwrap();
            c.store = store.clone();
            c.master_key_file = dir.path().join("shared-master.key");
            let app = App::build(c, Arc::new(clock.clone())).await.unwrap();
            bases.push(format!("http://{}", app.local_addr()));
            servers.push(tokio::spawn(app.run_until(std::future::pending())));
        }
        let operator = std::fs::read_to_string(dir.path().join("a/operator.token"))
            .unwrap()
            .trim()
            .to_string();
        TwoDaemons {
            bases,
            operator,
            servers,
            _pg: pg,
            _dir: dir,
        }
    }
}

impl Drop for TwoDaemons {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
    }
}

/// `method` `url` with a JSON `body` (and `cred` as the bearer), answered with JSON.
fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    cred: Option<String>,
    body: Value,
) -> impl std::future::Future<Output = Value> {
    let mut rb = client.request(method, url).json(&body);
    if let Some(c) = cred {
        rb = rb.bearer_auth(c);
    }
    async move { rb.send().await.unwrap().json::<Value>().await.unwrap() }
}

both_backends!(
    no_valid_answer_is_lost_to_sigkill,
    no_valid_answer_is_lost_to_sigkill_without_flushing,
);

// Only PostgreSQL may be shared: a SQLite daemon keeps counters in memory between folds.
postgres_only!(
    two_daemons_on_one_store_never_overspend,
    revocation_and_regeneration_on_another_daemon_apply_at_once,
    an_account_shared_by_two_daemons_keeps_its_quota_and_its_changes_apply_at_once,
    a_user_changed_on_one_daemon_is_decided_on_as_it_now_is_by_the_other,
    two_daemons_admit_at_most_their_number_times_a_rate_limit_in_one_window,
);

/// A second daemon on one SQLite file stops at start, naming the reason, and the first keeps
/// serving; once the first has stopped, the second starts.
#[tokio::test]
async fn a_second_daemon_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = start(&data, free_port(), None, "power-loss");
    wait_for(&format!("{}/readyz", first.base)).await;
    let out = binary()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a second daemon started");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another tokenwarden daemon is serving the SQLite store")
            && err.contains("tokenwarden.db-usage.lock"),
        "{err}"
    );
    let ready = reqwest::get(format!("{}/readyz", first.base))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "the first daemon keeps serving");
    let mut first = first;
    // SIGTERM: a clean stop releases the lock.
    std::process::Command::new("kill")
        .arg(first.child.id().to_string())
        .status()
        .unwrap();
    first.child.wait().unwrap();
    let mut second = start(&data, free_port(), None, "power-loss");
    wait_for(&format!("{}/readyz", second.base)).await;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

struct Daemon {
    child: std::process::Child,
    base: String,
}

fn start(data: &std::path::Path, port: u16, pg: Option<&str>, durability: &str) -> Daemon {
    start_with(data, port, pg, durability, &[])
}

fn start_with(
    data: &std::path::Path,
    port: u16,
    pg: Option<&str>,
    durability: &str,
    envs: &[(&str, &str)],
) -> Daemon {
    let mut c = binary();
    c.envs(envs.iter().copied());
    c.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(data)
    .env("RUST_LOG", "warn")
    .env("TOKENWARDEN_DATABASE__DURABILITY", durability)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(u) = pg {
        c.env("TOKENWARDEN_DATABASE__URL", u);
    }
    Daemon {
        child: c.spawn().unwrap(),
        base: format!("http://127.0.0.1:{port}"),
    }
}

async fn no_valid_answer_is_lost_to_sigkill(b: Backend) {
    sigkill_under_load(b, "power-loss").await
}

/// `durability = "process-crash"` answers once the batch is committed, before it is flushed:
/// a killed daemon still loses nothing.
async fn no_valid_answer_is_lost_to_sigkill_without_flushing(b: Backend) {
    sigkill_under_load(b, "process-crash").await
}

async fn sigkill_under_load(b: Backend, durability: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pg = match b {
        Backend::Sqlite => None,
        Backend::Postgres => Some(PgDb::create().await),
    };
    let pg_url = pg.as_ref().map(|p| p.url.clone());
    let port = free_port();
    let mut d = start(&data, port, pg_url.as_deref(), durability);
    wait_for(&format!("{}/readyz", d.base)).await;
    let client = reqwest::Client::new();
    let op = std::fs::read_to_string(data.join("operator.token"))
        .unwrap()
        .trim()
        .to_string();
    let acc: Value = client
        .post(format!("{}/v1/accounts", d.base))
        .bearer_auth(&op)
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = acc["secret"].as_str().unwrap().to_string();
    let tok: Value = client
        .post(format!("{}/v1/tokens", d.base))
        .bearer_auth(&secret)
        .json(&json!({"name": "load", "usage_limit": 1_000_000}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tok["tokens"][0]["token"].as_str().unwrap().to_string();
    let id = tok["tokens"][0]["id"].as_str().unwrap().to_string();

    // 32 clients verify in a loop; each VALID answer fully received is counted.
    const CLIENTS: u64 = 32;
    let load = VerifyLoad::start(&d.base, &token, CLIENTS as usize);
    // Kill it mid-load, once a fair number of calls went through.
    load.reach(300, 200).await;
    d.child.kill().unwrap(); // SIGKILL
    d.child.wait().unwrap();
    let answered = load.stop().await;
    assert!(answered >= 300, "the load ran: {answered}");

    let d2 = start(&data, port, pg_url.as_deref(), durability);
    wait_for(&format!("{}/readyz", d2.base)).await;
    let v: Value = client
        .get(format!("{}/v1/tokens/{id}", d2.base))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored = v["token"]["calls_total"].as_u64().unwrap();
    let remaining = v["token"]["remaining"].as_u64().unwrap();
    assert_eq!(stored + remaining, 1_000_000, "uses and remaining agree");
    // Every VALID a client received was durable before it was sent. The store may hold a few
    // more: calls committed whose answers were still in flight when the process died (at most
    // one per client).
    assert!(
        stored >= answered,
        "lost VALID answers: stored {stored} < answered {answered}"
    );
    assert!(
        stored <= answered + CLIENTS,
        "stored {stored} vs answered {answered}"
    );
    let mut d2 = d2;
    d2.child.kill().unwrap();
    d2.child.wait().unwrap();
}

async fn two_daemons_on_one_store_never_overspend(b: Backend) {
    let d = TwoDaemons::start(b).await;
    let (bases, op) = (d.bases.clone(), d.operator.clone());
    let client = reqwest::Client::new();
    let acc: Value = client
        .post(format!("{}/v1/accounts", bases[0]))
        .bearer_auth(&op)
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = acc["secret"].as_str().unwrap();
    let tok: Value = client
        .post(format!("{}/v1/tokens", bases[1]))
        .bearer_auth(secret)
        .json(&json!({"name": "shared", "usage_limit": 50}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tok["tokens"][0]["token"].as_str().unwrap().to_string();
    let calls = (0..500).map(|i| {
        let url = format!("{}/v1/verify", bases[i % 2]);
        let (client, token) = (client.clone(), token.clone());
        async move {
            let v: Value = client
                .post(url)
                .json(&json!({"token": token}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["result"].as_str().unwrap().to_string()
        }
    });
    let results = futures::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|r| *r == "VALID").count(), 50);
    assert_eq!(
        results.iter().filter(|r| *r == "USAGE_EXCEEDED").count(),
        450
    );
}

async fn revocation_and_regeneration_on_another_daemon_apply_at_once(b: Backend) {
    let d = TwoDaemons::start(b).await;
    let (bases, op) = (d.bases.clone(), d.operator.clone());
    let client = reqwest::Client::new();
    let post = |url: String, cred: Option<String>, body: Value| {
        send(&client, reqwest::Method::POST, url, cred, body)
    };
    let acc = post(
        format!("{}/v1/accounts", bases[0]),
        Some(op),
        json!({"name": "acme"}),
    )
    .await;
    let secret = acc["secret"].as_str().unwrap().to_string();
    let verify =
        |base: &String, t: &String| post(format!("{base}/v1/verify"), None, json!({"token": t}));
    let tok = post(
        format!("{}/v1/tokens", bases[1]),
        Some(secret.clone()),
        json!({"name": "t", "usage_limit": 100}),
    )
    .await;
    let (id, t) = (
        tok["tokens"][0]["id"].as_str().unwrap().to_string(),
        tok["tokens"][0]["token"].as_str().unwrap().to_string(),
    );
    // Daemon a has the token in its verification cache...
    assert_eq!(verify(&bases[0], &t).await["result"], "VALID");
    // ...daemon b regenerates it: the old secret stops on a at once.
    let regen = post(
        format!("{}/v1/tokens/{id}/regenerate", bases[1]),
        Some(secret.clone()),
        json!({}),
    )
    .await;
    let new = regen["token"]["token"].as_str().unwrap().to_string();
    assert_eq!(verify(&bases[0], &t).await["result"], "NOT_FOUND");
    assert_eq!(verify(&bases[0], &new).await["result"], "VALID");
    // ...daemon b revokes it: a refuses at once.
    client
        .delete(format!("{}/v1/tokens/{id}", bases[1]))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(verify(&bases[0], &new).await["result"], "REVOKED");
}

/// Each daemon decides on its own copies of the rows and writes only if they are unchanged: an
/// account's monthly quota, spent from both daemons at once by two tokens, is never exceeded,
/// and an account changed on one daemon (quota raised, then deactivated) is decided on as it
/// now is by the other at once, refusals included.
async fn an_account_shared_by_two_daemons_keeps_its_quota_and_its_changes_apply_at_once(
    b: Backend,
) {
    let d = TwoDaemons::start(b).await;
    let (bases, op) = (d.bases.clone(), d.operator.clone());
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, url: String, cred: Option<String>, body: Value| {
        send(&client, method, url, cred, body)
    };
    let post = |url: String, cred: Option<String>, body: Value| {
        send(reqwest::Method::POST, url, cred, body)
    };
    let acc = post(
        format!("{}/v1/accounts", bases[0]),
        Some(op.clone()),
        json!({"name": "acme", "monthly_quota": 40}),
    )
    .await;
    let (account, secret) = (
        acc["account"]["id"].as_str().unwrap().to_string(),
        acc["secret"].as_str().unwrap().to_string(),
    );
    let mut tokens = Vec::new();
    for name in ["one", "two"] {
        let tok = post(
            format!("{}/v1/tokens", bases[1]),
            Some(secret.clone()),
            json!({"name": name}),
        )
        .await;
        tokens.push(tok["tokens"][0]["token"].as_str().unwrap().to_string());
    }
    let verify = |i: usize| {
        post(
            format!("{}/v1/verify", bases[i % 2]),
            None,
            json!({"token": tokens[(i / 2) % 2]}),
        )
    };
    let result = |i: usize| {
        let v = verify(i);
        async move { v.await["result"].as_str().unwrap().to_string() }
    };
    let account_url = format!("{}/v1/accounts/{account}", bases[1]);
    let patch = |body: Value| {
        send(
            reqwest::Method::PATCH,
            account_url.clone(),
            Some(op.clone()),
            body,
        )
    };
    // A daemon that met a changed row decides under locks for a second: each change below is
    // met on daemon a's copies after that.
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(1100));
    // Daemon a copies the account (and both tokens)...
    assert_eq!(result(0).await, "VALID");
    assert_eq!(result(2).await, "VALID");
    // ...daemon b lowers the quota to what is used: a refuses at once.
    patch(json!({"monthly_quota": 2})).await;
    assert_eq!(result(0).await, "ACCOUNT_QUOTA_EXCEEDED");
    settle().await;
    // (Refused again, now on a fresh copy of the account that a keeps.)
    assert_eq!(result(0).await, "ACCOUNT_QUOTA_EXCEEDED");
    // b lifts it: a, whose copy would refuse, admits at once.
    patch(json!({"monthly_quota": null})).await;
    assert_eq!(result(0).await, "VALID");
    settle().await;
    // b deactivates the account: a refuses at once.
    patch(json!({"status": "inactive"})).await;
    assert_eq!(result(0).await, "ACCOUNT_INACTIVE");
    settle().await;

    // 40 more uses of the quota, spent from both daemons at once by both tokens.
    patch(json!({"status": "active", "monthly_quota": 43})).await;
    let results = futures::future::join_all((0..400).map(verify)).await;
    let count = |word: &str| results.iter().filter(|v| v["result"] == word).count();
    assert_eq!(count("VALID"), 40);
    assert_eq!(count("ACCOUNT_QUOTA_EXCEEDED"), 360);
    let stored = send(
        reqwest::Method::GET,
        format!("{}/v1/accounts/{account}", bases[0]),
        Some(op.clone()),
        Value::Null,
    )
    .await;
    assert_eq!(stored["account"]["quota_used_this_month"], 43, "{stored}");
}

/// The CLI changes the store beside a running SQLite daemon, whose counters wait in memory and
/// in the usage log between folds: the CLI reads them once folded (every few seconds), the
/// daemon applies the CLI's revocation within a moment, and a clean stop folds everything.
#[tokio::test]
async fn the_cli_and_a_running_sqlite_daemon_see_each_others_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut d = start_with(
        &data,
        free_port(),
        None,
        "power-loss",
        &[("TOKENWARDEN_DATABASE__FOLD_INTERVAL_SECONDS", "1")],
    );
    wait_for(&format!("{}/readyz", d.base)).await;
    let cli = |args: &[&str]| -> Value {
        let o = binary()
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let client = reqwest::Client::new();
    let op = std::fs::read_to_string(data.join("operator.token")).unwrap();
    let acc: Value = client
        .post(format!("{}/v1/accounts", d.base))
        .bearer_auth(op.trim())
        .json(&json!({"name": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = acc["secret"].as_str().unwrap().to_string();
    let (id, token) = {
        let v = cli(&[
            "token",
            "create",
            "--account",
            "acme",
            "--name",
            "t",
            "--usage-limit",
            "10",
        ]);
        let t = &v["tokens"][0];
        (
            t["id"].as_str().unwrap().to_string(),
            t["token"].as_str().unwrap().to_string(),
        )
    };
    let verify = || async {
        let v: Value = client
            .post(format!("{}/v1/verify", d.base))
            .json(&json!({"token": token}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["result"].as_str().unwrap().to_string()
    };
    for _ in 0..3 {
        assert_eq!(verify().await, "VALID");
    }
    // The periodic fold (every second here) brings the counts to the store the CLI reads.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = cli(&["token", "show", &id]);
        if v["token"]["calls_total"] == 3 {
            assert_eq!(v["token"]["remaining"], 7);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not folded: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // The CLI revokes it: the daemon refuses it within a moment (it looks every 100 ms; the
    // limit allows for a busy machine; every call it answered VALID meanwhile is counted).
    assert_eq!(cli(&["token", "revoke", &id])["token"]["status"], "revoked");
    let revoked_at = std::time::Instant::now();
    let mut valid_after = 0;
    loop {
        match verify().await.as_str() {
            "REVOKED" => break,
            "VALID" => valid_after += 1,
            other => panic!("{other}"),
        }
        assert!(
            revoked_at.elapsed() < std::time::Duration::from_secs(10),
            "still not refused after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Through the daemon's own API, the counts include every call answered.
    let v: Value = client
        .get(format!("{}/v1/tokens/{id}", d.base))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["token"]["status"], "revoked");
    assert_eq!(v["token"]["calls_total"], 3 + valid_after, "{v}");
    // Calls on another token just before a clean stop: the stop folds them, and the CLI reads
    // them with the daemon gone.
    let v = cli(&["token", "create", "--account", "acme", "--name", "u"]);
    let other = v["tokens"][0]["token"].as_str().unwrap().to_string();
    let other_id = v["tokens"][0]["id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let v: Value = client
            .post(format!("{}/v1/verify", d.base))
            .json(&json!({"token": other}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["result"], "VALID");
    }
    std::process::Command::new("kill")
        .arg(d.child.id().to_string())
        .status()
        .unwrap();
    assert!(d.child.wait().unwrap().success());
    let v = cli(&["token", "show", &id]);
    assert_eq!(v["token"]["calls_total"], 3 + valid_after, "{v}");
    assert_eq!(
        cli(&["token", "show", &other_id])["token"]["calls_total"],
        2
    );
}

/// A user deactivated, reactivated, demoted or deleted through daemon a is decided on as it now
/// is by daemon b at the very next call, though b holds the user's token in its copies.
async fn a_user_changed_on_one_daemon_is_decided_on_as_it_now_is_by_the_other(b: Backend) {
    let d = TwoDaemons::start(b).await;
    let (bases, op) = (d.bases.clone(), d.operator.clone());
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, url: String, cred: Option<String>, body: Value| {
        send(&client, method, url, cred, body)
    };
    let acc = send(
        reqwest::Method::POST,
        format!("{}/v1/accounts", bases[0]),
        Some(op.clone()),
        json!({"name": "acme"}),
    )
    .await;
    let (account, secret) = (
        acc["account"]["id"].as_str().unwrap().to_string(),
        acc["secret"].as_str().unwrap().to_string(),
    );
    let user = send(
        reqwest::Method::POST,
        format!("{}/v1/accounts/{account}/users", bases[0]),
        Some(secret.clone()),
        json!({"email": "ann@acme.example", "role": "admin"}),
    )
    .await;
    let ann = user["user"]["id"].as_str().unwrap().to_string();
    let tok = send(
        reqwest::Method::POST,
        format!("{}/v1/tokens", bases[0]),
        Some(secret.clone()),
        json!({"name": "ann", "role": "admin", "user_id": ann}),
    )
    .await;
    let t = tok["tokens"][0]["token"].as_str().unwrap().to_string();
    let on_b = || {
        send(
            reqwest::Method::POST,
            format!("{}/v1/verify", bases[1]),
            None,
            json!({"token": t}),
        )
    };
    let change = |body: Value| {
        send(
            reqwest::Method::PATCH,
            format!("{}/v1/users/{ann}", bases[0]),
            Some(secret.clone()),
            body,
        )
    };
    // b holds the token in its copies.
    assert_eq!(on_b().await["result"], "VALID");
    assert_eq!(on_b().await["role"], "admin");
    change(json!({"status": "inactive"})).await;
    let v = on_b().await;
    assert_eq!(
        (v["result"].as_str(), v["code"].as_u64()),
        (Some("USER_INACTIVE"), Some(4017)),
        "{v}"
    );
    // A refusal is decided on the current rows too: reactivation restores it at once.
    change(json!({"status": "active"})).await;
    assert_eq!(on_b().await["result"], "VALID");
    change(json!({"role": "user"})).await;
    assert_eq!(on_b().await["role"], "user");
    let deleted = send(
        reqwest::Method::DELETE,
        format!("{}/v1/users/{ann}", bases[0]),
        Some(secret.clone()),
        json!({}),
    )
    .await;
    assert_eq!(deleted["tokens_revoked"], 1, "{deleted}");
    assert_eq!(on_b().await["result"], "REVOKED");
}

/// Rate windows are each daemon's memory: two daemons sharing a store admit at most twice a
/// token's limit in one window together, and each at most the limit.
async fn two_daemons_admit_at_most_their_number_times_a_rate_limit_in_one_window(b: Backend) {
    let d = TwoDaemons::start(b).await;
    let (bases, op) = (d.bases.clone(), d.operator.clone());
    let client = reqwest::Client::new();
    let acc = send(
        &client,
        reqwest::Method::POST,
        format!("{}/v1/accounts", bases[0]),
        Some(op),
        json!({"name": "acme"}),
    )
    .await;
    let secret = acc["secret"].as_str().unwrap().to_string();
    let tok = send(
        &client,
        reqwest::Method::POST,
        format!("{}/v1/tokens", bases[1]),
        Some(secret),
        json!({"name": "shared", "rate_limit": {"limit": 10, "window_seconds": 60}}),
    )
    .await;
    let token = tok["tokens"][0]["token"].as_str().unwrap().to_string();
    let calls = (0..50).map(|i| {
        let url = format!("{}/v1/verify", bases[i % 2]);
        let body = json!({"token": token});
        let client = client.clone();
        async move {
            let v = send(&client, reqwest::Method::POST, url, None, body).await;
            (i % 2, v["result"].as_str().unwrap().to_string())
        }
    });
    let results = futures::future::join_all(calls).await;
    for node in 0..2 {
        let valid = results
            .iter()
            .filter(|(n, r)| *n == node && r == "VALID")
            .count();
        assert_eq!(valid, 10, "daemon {node}: {results:?}");
    }
    let limited = results.iter().filter(|(_, r)| r == "RATE_LIMITED").count();
    assert_eq!(limited, 30, "{results:?}");
}
