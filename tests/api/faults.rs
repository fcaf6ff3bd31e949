//! Faults and hostile input: a PostgreSQL behind a TCP proxy that refuses, blackholes or stalls
//! the connections already open; a PostgreSQL that takes no connections; a held SQLite lock in
//! front of a small usage log; silent sockets under a low open-file limit; repeated and split
//! headers; path traversal spellings; NUL bytes; file modes; a SIGHUP at once. Each asserts the
//! documented answer, in bounded time, and that every call answered VALID was counted and no
//! other.

use crate::helpers::{
    binary, free_port, launch, spawn_app, spawn_app_with, t0, wait_for, Backend, PgDb, TestApp,
};
use crate::service::Proc;
use crate::{both_backends, postgres_only};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokenwarden::{
    clock::ManualClock,
    config::{Config, StoreLocation},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

both_backends!(nul_bytes_are_refused_as_bad_input_and_change_nothing);
postgres_only!(
    a_stalled_postgres_connection_is_given_up_and_no_call_answered_503_is_counted,
    a_postgres_that_takes_no_connections_answers_5030_on_every_route,
    a_blackholed_postgres_answers_503_in_bounded_time_and_recovers,
);

// ----- a misbehaving TCP proxy in front of PostgreSQL -----

/// What the proxy does to traffic.
#[derive(Default)]
struct ProxyState {
    /// New connections are closed at once.
    refuse: AtomicBool,
    /// Every byte, on every connection, is dropped.
    blackhole: AtomicBool,
    /// Connections numbered below this have their traffic held (not forwarded) until it is
    /// lowered again; newer ones pass.
    stall_below: AtomicU64,
    next_id: AtomicU64,
    resumed: tokio::sync::Notify,
}

/// A TCP proxy to PostgreSQL on loopback.
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if s.refuse.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let id = s.next_id.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pump(cr, sw, id, s.clone()) => {}
                        _ = pump(sr, cw, id, s.clone()) => {}
                    }
                });
            }
        });
        Proxy { port, state, task }
    }

    /// `url` with its host and port replaced by the proxy's.
    fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }

    /// Holds the traffic of every connection open now; new ones pass.
    fn stall_open_connections(&self) {
        let next = self.state.next_id.load(Ordering::SeqCst);
        self.state.stall_below.store(next, Ordering::SeqCst);
    }

    /// Lets the held traffic go on, as a network that recovers does.
    fn resume(&self) {
        self.state.stall_below.store(0, Ordering::SeqCst);
        self.state.resumed.notify_waiters();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: u64,
    s: Arc<ProxyState>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let resumed = s.resumed.notified();
            if id >= s.stall_below.load(Ordering::SeqCst) {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), resumed).await;
        }
        if s.blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A daemon whose PostgreSQL store is reached through `proxy`, with a short store deadline.
async fn app_behind(proxy: &Proxy, db: &PgDb, dir: &std::path::Path) -> TestApp {
    let mut config = Config::for_data_dir(dir);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.store = StoreLocation::Postgres(proxy.url(&db.url));
    config.db_statement_timeout = Duration::from_secs(2);
    config.db_lock_timeout = Duration::from_secs(2);
    launch(config, ManualClock::new(t0())).await.unwrap()
}

/// One verification: status, body and how long it took.
async fn timed_verify(app: &TestApp, token: &str) -> (StatusCode, Value, Duration) {
    let start = Instant::now();
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/verify",
            None,
            Some(json!({"token": token})),
        )
        .await;
    (s, v, start.elapsed())
}

/// The token's uses as the store holds them, read straight from PostgreSQL (not through the
/// daemon, whose connections may be the stalled ones).
async fn stored_calls(db: &PgDb, id: &str) -> i64 {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT calls_total FROM tokens WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

async fn a_stalled_postgres_connection_is_given_up_and_no_call_answered_503_is_counted(_: Backend) {
    tokenwarden::telemetry::init("info", tokenwarden::config::LogFormat::Human);
    let dir = tempfile::tempdir().unwrap();
    let db = PgDb::create().await;
    let proxy = Proxy::start().await;
    let app = app_behind(&proxy, &db, dir.path()).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(&secret, json!({"name": "svc", "usage_limit": 1000}))
        .await;
    let mut valid = 0;
    for _ in 0..3 {
        let (s, v, _) = timed_verify(&app, &t).await;
        assert_eq!((s, v["result"].as_str()), (StatusCode::OK, Some("VALID")));
        valid += 1;
    }

    // Every connection open now goes silent; new ones work.
    proxy.stall_open_connections();
    let calls = futures::future::join_all((0..20).map(|_| timed_verify(&app, &t)));
    let ready_meanwhile = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        app.client
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
    };
    let (answers, ready) = tokio::join!(calls, ready_meanwhile);
    assert_eq!(
        ready,
        StatusCode::SERVICE_UNAVAILABLE,
        "/readyz while the writer is stuck"
    );
    let mut refused = 0;
    for (s, v, took) in &answers {
        // Bounded by the store deadline (2 s), far from the request timeout (30 s).
        assert!(
            *took < Duration::from_secs(10),
            "answered after {took:?}: {s} {v}"
        );
        match (s.as_u16(), v["result"].as_str()) {
            (200, Some("VALID")) => valid += 1,
            (503, _) => {
                assert_eq!(v["code"], 5030, "{v}");
                refused += 1;
            }
            _ => panic!("unexpected answer {s}: {v}"),
        }
    }
    assert!(refused > 0, "the stalled batch was answered 503");

    // A new connection serves the next calls at once.
    for _ in 0..5 {
        let (s, v, took) = timed_verify(&app, &t).await;
        assert_eq!(
            (s, v["result"].as_str()),
            (StatusCode::OK, Some("VALID")),
            "{v}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        valid += 1;
    }
    // Ready again once the writer's new connection gets through (and the admin pool has let go
    // of its own stalled connections, each after its acquire timeout).
    let mut ready = false;
    for _ in 0..60 {
        let r = app.client.get(app.url("/readyz")).send().await.unwrap();
        if r.status() == StatusCode::OK {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(ready, "ready again");

    // The network comes back: what was held reaches the server, where its session was ended.
    proxy.resume();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored_calls(&db, &id).await,
        valid,
        "every call answered VALID is counted, and none answered 503"
    );

    // A stop while a batch is stuck is bounded too.
    proxy.stall_open_connections();
    let stuck = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/v1/verify");
        let t = t.clone();
        async move { client.post(url).json(&json!({"token": t})).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), app.stop())
        .await
        .expect("the stop finished");
    // The grace period (30 s) waits for the stuck call, which the 2 s store deadline ends.
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    let _ = stuck.await;
    proxy.resume();
}

async fn a_blackholed_postgres_answers_503_in_bounded_time_and_recovers(_: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let db = PgDb::create().await;
    let proxy = Proxy::start().await;
    let app = app_behind(&proxy, &db, dir.path()).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(&secret, json!({"name": "svc", "usage_limit": 1000}))
        .await;
    let (s, _, _) = timed_verify(&app, &t).await;
    assert_eq!(s, StatusCode::OK);

    // Everything is swallowed, and new connections too.
    proxy.state.blackhole.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let (s, v, took) = timed_verify(&app, &t).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["code"], 5030, "{v}");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
    // Then refused outright: still 503 at once.
    proxy.state.blackhole.store(false, Ordering::SeqCst);
    proxy.state.refuse.store(true, Ordering::SeqCst);
    proxy.stall_open_connections();
    let (s, v, took) = timed_verify(&app, &t).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // Back: served again without a restart, and the count is exact.
    proxy.state.refuse.store(false, Ordering::SeqCst);
    let mut back = false;
    for _ in 0..20 {
        let (s, _, _) = timed_verify(&app, &t).await;
        if s == StatusCode::OK {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(back, "verification came back");
    assert_eq!(stored_calls(&db, &id).await, 2);
    proxy.resume();
}

async fn a_postgres_that_takes_no_connections_answers_5030_on_every_route(b: Backend) {
    let app = spawn_app(b).await;
    let op = app.operator.clone();
    let (acct, secret) = app.account("acme").await;
    let (id, t) = app.token(&secret, json!({"name": "svc"})).await;
    let db = app.pg_url().unwrap();
    let name = url::Url::parse(&db)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&crate::helpers::pg_url().unwrap())
        .await
        .unwrap();
    let set = |allow: bool| {
        sqlx::AssertSqlSafe(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}"))
    };
    sqlx::query(set(false)).execute(&admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/accounts".into(), None),
        (Method::GET, format!("/v1/accounts/{acct}"), None),
        (Method::GET, format!("/v1/tokens?account_id={acct}"), None),
        (Method::GET, format!("/v1/tokens/{id}"), None),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"account_id": acct, "name": "x"})),
        ),
        (Method::GET, "/v1/jobs".into(), None),
        (Method::GET, "/v1/notifications".into(), None),
    ];
    for (m, path, body) in routes {
        let (s, v) = app.call(m.clone(), &path, Some(&op), body).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{m} {path}: {v}");
        assert_eq!(v["code"], 5030, "{m} {path}: {v}");
    }
    let (s, v) = app
        .call(Method::POST, "/v1/verify", None, Some(json!({"token": t})))
        .await;
    assert_eq!((s.as_u16(), v["code"].as_u64()), (503, Some(5030)), "{v}");
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);

    sqlx::query(set(true)).execute(&admin).await.unwrap();
    let mut back = false;
    for _ in 0..50 {
        let (s, _) = app.get(&format!("/v1/tokens/{id}"), &op).await;
        if s == StatusCode::OK {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "served again once connections are allowed");
    admin.close().await;
}

// ----- SQLite: a held lock in front of a small usage log -----

#[tokio::test]
async fn a_full_usage_log_answers_503_at_once_and_never_counts_what_it_did_not_answer_valid() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        // About 90 records a file.
        c.usage_log_bytes = 8 << 10;
        c.db_lock_timeout = Duration::from_millis(200);
        c.request_timeout = Duration::from_secs(3);
    })
    .await;
    let (_, secret) = app.account("acme").await;
    let limit = 100_000;
    let (id, t) = app
        .token(&secret, json!({"name": "svc", "usage_limit": limit}))
        .await;
    let lock = rusqlite::Connection::open(app.ctx.store.sqlite_file().unwrap()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (valid, refused, slowest) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        std::sync::Mutex::new(Duration::ZERO),
    );
    // Longer than the request timeout: a call that waited for the log's space would get 408.
    let until = Instant::now() + Duration::from_secs(5);
    let client = |_| async {
        while Instant::now() < until {
            let (s, v, took) = timed_verify(&app, &t).await;
            {
                let mut m = slowest.lock().unwrap();
                *m = (*m).max(took);
            }
            match (s.as_u16(), v["result"].as_str()) {
                (200, Some("VALID")) => valid.fetch_add(1, Ordering::SeqCst),
                (503, _) => {
                    assert_eq!(v["code"], 5030, "{v}");
                    refused.fetch_add(1, Ordering::SeqCst)
                }
                _ => panic!("unexpected answer {s}: {v}"),
            };
        }
    };
    futures::future::join_all((0..16).map(client)).await;
    lock.execute_batch("ROLLBACK").unwrap();
    let (valid, refused) = (valid.into_inner(), refused.into_inner());
    assert!(
        valid > 50 && refused > 0,
        "{valid} VALID, {refused} refused"
    );
    let slowest = slowest.into_inner().unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "a call waited {slowest:?} for the log's space"
    );
    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(stored.calls_total, valid as i64, "counted = answered VALID");
    assert_eq!(stored.remaining, Some(limit - valid as i64));
}

// ----- connections that never send a byte -----

#[tokio::test(flavor = "multi_thread")]
async fn silent_sockets_under_a_low_fd_limit_do_not_starve_the_port() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let d = Proc::start_with(
        &data,
        port,
        &[("TOKENWARDEN_SERVER__HEADER_TIMEOUT_SECONDS", "3")],
        None,
        |c| {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child yet.
            unsafe {
                c.pre_exec(|| {
                    let lim = libc::rlimit {
                        rlim_cur: 256,
                        rlim_max: 256,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        },
    );
    wait_for(&format!("{}/healthz", d.base)).await;
    let addr = format!("127.0.0.1:{port}");
    // More silent sockets than the daemon has file descriptors.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
    }
    // Each call on a new connection: a kept-alive one would itself be closed at the header
    // deadline, the moment the last check below runs, and a call sent on it as it closes is
    // lost (HTTP/1.1's own race, not the port's starvation this test is about). A new
    // connection must also get through the backlog of silent ones, which is the point.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for _ in 0..5 {
        let r = client
            .get(format!("{}/healthz", d.base))
            .send()
            .await
            .expect("/healthz answers while 300 silent sockets are open");
        assert_eq!(r.status(), 200);
    }
    // Every silent socket is closed by the header deadline (3 s) at the latest.
    let start = Instant::now();
    let mut closed = 0;
    for s in &mut silent {
        let left = Duration::from_secs(8).saturating_sub(start.elapsed());
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(left, s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "silent sockets closed by the daemon");
    drop(silent);
    let warnings = d.log().matches("accept failed").count();
    assert!(warnings <= 2, "{warnings} accept warnings:\n{}", d.log());
    let r = client
        .get(format!("{}/healthz", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ----- headers repeated or split -----

#[tokio::test]
async fn a_second_forwarded_for_line_cannot_pick_the_client_address() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(
            &secret,
            json!({"name": "office", "role": "engineer", "allowed_ips": ["10.0.0.0/8"]}),
        )
        .await;
    // The daemon's peer (127.0.0.1) is a trusted proxy: the nearest hop it did not add is the
    // client, across every line, in order.
    let cases: &[(&[&str], u16)] = &[
        (&["10.1.2.3, 203.0.113.9"], 403),
        (&["10.1.2.3", "203.0.113.9"], 403),
        (&["10.1.2.3", "203.0.113.9, 127.0.0.1"], 403),
        (&["203.0.113.9", "10.1.2.3"], 200),
        (&["203.0.113.9, 10.1.2.3"], 200),
        (&["10.1.2.3", "unknown"], 403),
    ];
    for (lines, status) in cases {
        let mut rb = app.client.get(app.url("/v1/auth")).bearer_auth(&t);
        for l in *lines {
            rb = rb.header("X-Forwarded-For", *l);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status().as_u16(), *status, "forward auth, {lines:?}");
        // Management calls made with the token see the same client.
        let mut rb = app
            .client
            .get(app.url(&format!("/v1/tokens/{id}")))
            .bearer_auth(&t);
        for l in *lines {
            rb = rb.header("X-Forwarded-For", *l);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(
            r.status().is_success(),
            *status == 200,
            "management, {lines:?}: {}",
            r.status()
        );
    }
    // Two X-Real-IP lines: the client is unknown, which no allow-list admits.
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&t)
        .header("X-Real-IP", "10.1.2.3")
        .header("X-Real-IP", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&t)
        .header("X-Real-IP", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ----- path traversal spellings -----

/// Sends `GET {path}` as written, byte for byte (an HTTP library would resolve dot segments).
async fn raw_get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut conn = TcpStream::connect(app.addr).await.unwrap();
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer}"))
}

#[tokio::test]
async fn every_traversal_spelling_is_refused_by_a_scoped_token() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app
        .token(
            &secret,
            json!({"name": "svc", "usage_limit": 1000, "scopes": ["/convert/*"]}),
        )
        .await;
    let auth = format!("Bearer {t}");
    let refused = [
        "/convert//..//admin",
        "/convert/x//../../admin",
        "/convert///..//..//admin",
        "/convert/../admin",
        "/convert/./../admin",
        "/convert/%2e%2e/admin",
        "/convert/%2E%2E/admin",
        "/convert/.%2e/admin",
        "/convert/..%2fadmin",
        "/convert/..%2Fadmin",
        "/convert/%2e%2e%2fadmin",
        "/convert/%2F..%2F..%2Fadmin",
        "/convert//%2e%2e//admin",
        "/convert/..%5cadmin",
        "/convert/..\\admin",
        "/convert/..;/admin",
        "/convert/;/../admin",
        "/convert/x/..%2f..%2fadmin",
        "/convert/%2e%2e;x/admin",
        "/convert/..",
        "/convert/%2e%2e",
        "/convert//..",
    ];
    let allowed = [
        "/convert/pdf",
        "/convert/./pdf",
        "/convert//pdf",
        "/convert/x/../pdf",
        "/convert/a%20b",
        "/convert/group%2Fproject",
        "/convert/",
    ];
    // Each path both ways a proxy forwards it: in X-Original-URI (nginx), and after
    // `/v1/auth` (Envoy's ext_authz).
    let mut valid = 0;
    for (paths, status) in [(&refused[..], 403), (&allowed[..], 200)] {
        for path in paths {
            let via_header = [("Authorization", auth.as_str()), ("X-Original-URI", path)];
            let s = raw_get(&app, "/v1/auth", &via_header).await;
            assert_eq!(s, status, "X-Original-URI {path}");
            let via_path = format!("/v1/auth{path}");
            let s = raw_get(&app, &via_path, &[("Authorization", &auth)]).await;
            assert_eq!(s, status, "Envoy path {path}");
            if status == 200 {
                valid += 2;
            }
        }
    }
    // Two X-Original-URI lines: one is the client's; neither is believed.
    let s = raw_get(
        &app,
        "/v1/auth",
        &[
            ("Authorization", &auth),
            ("X-Original-URI", "/convert/pdf"),
            ("X-Original-URI", "/admin"),
        ],
    )
    .await;
    assert_eq!(s, 422, "two X-Original-URI lines");
    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!(
        stored.calls_total, valid,
        "only the allowed paths were counted"
    );
}

// ----- NUL bytes -----

async fn nul_bytes_are_refused_as_bad_input_and_change_nothing(b: Backend) {
    let app = spawn_app(b).await;
    let op = app.operator.clone();
    let (acct, secret) = app.account("acme").await;
    let (id, t) = app.token(&secret, json!({"name": "svc"})).await;
    let user = app.user(&acct, "ops@acme.example", "admin").await;
    let before = app.get(&format!("/v1/tokens?account_id={acct}"), &op).await;
    let probes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/tokens/%00".into(), None),
        (Method::GET, format!("/v1/tokens/{id}%00"), None),
        (
            Method::PATCH,
            "/v1/tokens/%00".into(),
            Some(json!({"name": "x"})),
        ),
        (Method::DELETE, "/v1/tokens/%00".into(), None),
        (Method::POST, "/v1/tokens/%00/regenerate".into(), None),
        (Method::GET, "/v1/tokens?account_id=%00".into(), None),
        (Method::GET, "/v1/tokens?q=%00".into(), None),
        (Method::GET, "/v1/tokens?issued_by=a%00".into(), None),
        (Method::GET, "/v1/accounts/%00".into(), None),
        (
            Method::PATCH,
            "/v1/accounts/%00".into(),
            Some(json!({"max_tokens": 5})),
        ),
        (Method::POST, "/v1/accounts/%00/secret".into(), None),
        (Method::GET, "/v1/accounts/%00/users".into(), None),
        (
            Method::POST,
            "/v1/accounts/%00/users".into(),
            Some(json!({"email": "a@b.example", "role": "user"})),
        ),
        (
            Method::PATCH,
            "/v1/users/%00".into(),
            Some(json!({"role": "user"})),
        ),
        (Method::GET, "/v1/notifications?token_id=%00".into(), None),
        (Method::GET, "/v1/notifications?account_id=%00".into(), None),
        (
            Method::GET,
            "/v1/stats.csv?from=2026-11-01&to=2026-11-30&account_id=%00".into(),
            None,
        ),
        (
            Method::POST,
            "/v1/jobs/monthly_reset/run?period=%00".into(),
            None,
        ),
        (Method::POST, "/v1/jobs/%00/run".into(), None),
        (Method::DELETE, "/token/%00".into(), None),
        (Method::POST, "/token/create?AccountId=%00".into(), None),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"account_id": "\u{0}", "name": "x"})),
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"account_id": acct, "name": "a\u{0}b"})),
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"account_id": acct, "name": "x", "user_id": "\u{0}"})),
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"account_id": acct, "name": "x", "scopes": ["ok", "a\u{0}"]})),
        ),
        (
            Method::POST,
            "/v1/accounts".into(),
            Some(json!({"name": "\u{0}"})),
        ),
        (
            Method::POST,
            format!("/v1/accounts/{acct}/users"),
            Some(json!({"email": "a\u{0}@b.example", "role": "user"})),
        ),
        (
            Method::PATCH,
            format!("/v1/tokens/{id}"),
            Some(json!({"description": "x\u{0}"})),
        ),
        (
            Method::PATCH,
            format!("/v1/users/{user}"),
            Some(json!({"email": "\u{0}"})),
        ),
        (
            Method::POST,
            "/v1/verify".into(),
            Some(json!({"token": "\u{0}"})),
        ),
        (
            Method::POST,
            "/v1/verify".into(),
            Some(json!({"token": t, "call": "/a\u{0}"})),
        ),
        (
            Method::POST,
            "/v1/jwt".into(),
            Some(json!({"token": "\u{0}"})),
        ),
    ];
    for (m, path, body) in probes {
        let (s, v) = app.call(m.clone(), &path, Some(&op), body.clone()).await;
        assert!(
            matches!(s.as_u16(), 400 | 404 | 422),
            "{m} {path} {body:?}: {s} {v}"
        );
        // The seeds' routes answer in their own shape (`Code`).
        assert!(v["code"].is_u64() || v["Code"].is_u64(), "{m} {path}: {v}");
        if let Some(body) = &body {
            if s == StatusCode::UNPROCESSABLE_ENTITY && body.to_string().contains("\\u0000") {
                assert!(v["field"].is_string(), "the field is named: {v}");
            }
        }
    }
    // Nothing changed.
    let after = app.get(&format!("/v1/tokens?account_id={acct}"), &op).await;
    assert_eq!(before, after);
    let (_, accounts) = app.get("/v1/accounts", &op).await;
    assert_eq!(
        accounts["accounts"].as_array().map(Vec::len),
        Some(1),
        "{accounts}"
    );
    // Bad dates and periods, while here.
    for bad in [" 2027-01-01", "+002027-01-01", "2027-01-01 "] {
        let (s, v) = app
            .post(
                "/v1/tokens",
                &secret,
                json!({"name": "x", "expires_on": bad}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
        assert_eq!(v["field"], "expires_on", "{v}");
    }
    for bad in ["0000-01", "+202-01", "1969-12"] {
        let (s, v) = app
            .post(
                &format!("/v1/jobs/monthly_reset/run?period={bad}"),
                &op,
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {v}");
        assert_eq!(v["field"], "period", "{v}");
    }
}

// ----- files -----

#[tokio::test(flavor = "multi_thread")]
async fn every_file_the_daemon_makes_is_private_whatever_the_umask() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let loose_umask = |c: &mut std::process::Command| {
        use std::os::unix::process::CommandExt;
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
    };
    let mut account = binary();
    account
        .args(["account", "create", "acme", "--data-dir"])
        .arg(&data);
    loose_umask(&mut account);
    let out = account.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A policy whose token is emailed: the outbox's .eml file holds it.
    let cfg = dir.path().join("tokenwarden.toml");
    std::fs::write(
        &cfg,
        "[[policy]]\nname = \"p\"\naccount = \"acme\"\ndeliver_email = [\"ops@acme.example\"]\n\
         email_includes_token = true\n",
    )
    .unwrap();
    let port = free_port();
    let mut d = Proc::start_with(&data, port, &[], Some(&cfg), loose_umask);
    wait_for(&format!("{}/readyz", d.base)).await;
    let outbox = data.join("outbox");
    let mut emailed = false;
    for _ in 0..100 {
        if std::fs::read_dir(&outbox).is_ok_and(|mut r| r.next().is_some()) {
            emailed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(emailed, "{}", d.log());
    let mut seen = Vec::new();
    let mut stack = vec![data.clone()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
                continue;
            }
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            seen.push(e.file_name().to_string_lossy().into_owned());
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", e.path().display());
        }
    }
    for f in [
        "tokenwarden.db",
        "tokenwarden.db-wal",
        "tokenwarden.db-usage.0",
        "tokenwarden.db-usage.1",
        "operator.token",
    ] {
        assert!(seen.iter().any(|s| s == f), "{f} not in {seen:?}");
    }
    assert!(seen.iter().any(|s| s.ends_with(".eml")), "{seen:?}");
    d.signal("TERM");
    assert_eq!(
        tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30))),
        Some(0)
    );
}

// ----- signals -----

#[tokio::test(flavor = "multi_thread")]
async fn a_sighup_as_soon_as_the_port_answers_does_not_kill_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut d = Proc::start(&data, port, &[], None);
    let url = format!("{}/healthz", d.base);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(&url).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never answered: {}", d.log());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    d.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "killed by SIGHUP: {}",
        d.log()
    );
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    d.signal("TERM");
    assert_eq!(
        tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30))),
        Some(0)
    );
}
