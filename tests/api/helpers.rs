//! Test harness: the daemon in-process on a random loopback port, a fresh store per test
//! (a SQLite file in a temp dir, or a fresh PostgreSQL database), and a `ManualClock`.

use chrono::{DateTime, TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::{net::SocketAddr, sync::Arc};
use tokenwarden::{
    app::App,
    clock::ManualClock,
    config::{Config, StoreLocation},
    context::Ctx,
};

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server tests run against, if configured.
pub fn pg_url() -> Option<String> {
    std::env::var("TOKENWARDEN_TEST_PG_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// Prints a clear notice and returns false when PostgreSQL tests cannot run.
pub fn postgres_enabled(test: &str) -> bool {
    if pg_url().is_some() {
        return true;
    }
    eprintln!(
        "SKIPPED {test} on PostgreSQL: set TOKENWARDEN_TEST_PG_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run it"
    );
    false
}

/// Turns each listed `async fn name(backend: Backend)` into `name::postgres` only: what only
/// PostgreSQL offers (several daemons on one store).
#[macro_export]
macro_rules! postgres_only {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                #[cfg_attr(not(tw_pg_tests), ignore = "PostgreSQL: set TOKENWARDEN_TEST_PG_URL to run")]
                async fn postgres() {
                    if $crate::helpers::postgres_enabled(concat!(module_path!())) {
                        super::$name($crate::helpers::Backend::Postgres).await
                    }
                }
            }
        )*
    };
}

/// Turns each listed `async fn name(backend: Backend)` into `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
                #[tokio::test]
                #[cfg_attr(not(tw_pg_tests), ignore = "PostgreSQL: set TOKENWARDEN_TEST_PG_URL to run")]
                async fn postgres() {
                    if $crate::helpers::postgres_enabled(concat!(module_path!())) {
                        super::$name($crate::helpers::Backend::Postgres).await
                    }
                }
            }
        )*
    };
}

/// A fresh PostgreSQL database, dropped when this is dropped.
pub struct PgDb {
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        let admin_url = pg_url().expect("TOKENWARDEN_TEST_PG_URL");
        let name = format!("tw_test_{}", uuid::Uuid::new_v4().simple());
        let conn = sqlx_admin(&admin_url).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&conn)
            .await
            .expect("create test database");
        conn.close().await;
        let mut u = url::Url::parse(&admin_url).expect("pg url");
        u.set_path(&format!("/{name}"));
        PgDb {
            url: u.to_string(),
            name,
            admin_url,
        }
    }
}

async fn sqlx_admin(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to TOKENWARDEN_TEST_PG_URL")
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let conn = sqlx_admin(&url).await;
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&conn)
                .await;
                conn.close().await;
            });
        })
        .join();
    }
}

/// A store location for `backend`, in `dir` for SQLite.
pub async fn store_for(backend: Backend, dir: &std::path::Path) -> (StoreLocation, Option<PgDb>) {
    match backend {
        Backend::Sqlite => (StoreLocation::Sqlite(dir.join("tokenwarden.db")), None),
        Backend::Postgres => {
            let db = PgDb::create().await;
            (StoreLocation::Postgres(db.url.clone()), Some(db))
        }
    }
}

/// A running daemon.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub clock: ManualClock,
    pub ctx: Ctx,
    /// Wakes jobs (what the scheduler does) and delivers the outbox.
    pub runner: Arc<tokenwarden::jobs::Runner>,
    /// The operator credential, read back from `<data_dir>/operator.token`.
    pub operator: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _pg: Option<PgDb>,
    _dir: Option<tempfile::TempDir>,
}

/// The instant every test starts at, unless it sets another.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_data_dir(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    // Small usage log files: each SQLite daemon makes two, zero-filled.
    config.usage_log_bytes = 1 << 20;
    let (store, pg) = store_for(backend, dir.path()).await;
    config.store = store;
    tweak(&mut config);
    let mut app = launch(config, ManualClock::new(t0()))
        .await
        .expect("build app");
    app._pg = pg;
    app._dir = Some(dir);
    app
}

/// Builds and serves a daemon on `config` with `clock`; it stops on `TestApp::stop` or drop.
pub async fn launch(config: Config, clock: ManualClock) -> anyhow::Result<TestApp> {
    let data_dir = config.data_dir.clone();
    let app = App::build(config, Arc::new(clock.clone())).await?;
    let addr = app.local_addr();
    let ctx = app.ctx().clone();
    let runner = app.runner().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        app.run_until(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    // The daemon runs the day's housekeeping once it serves; waiting for that job here (its
    // lock) keeps a test's own writes from racing it.
    runner.run_due().await;
    let operator = std::fs::read_to_string(data_dir.join("operator.token"))
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok(TestApp {
        addr,
        client: reqwest::Client::new(),
        clock,
        ctx,
        runner,
        operator,
        stop: Some(stop),
        server: Some(server),
        _pg: None,
        _dir: None,
    })
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = &self.server {
            s.abort();
        }
    }
}

impl TestApp {
    /// The store, once every call counted so far is folded into it (on SQLite, counters wait
    /// in the daemon's memory and usage log until a fold; admin requests fold first).
    pub async fn settled(&self) -> &tokenwarden::store::Store {
        self.ctx.usage.settle().await.unwrap();
        &self.ctx.store
    }

    /// One text column of a query, read straight from the database (`sqlite_q` or `pg_q`,
    /// by backend), not through the daemon.
    pub async fn raw_strings(&self, sqlite_q: &str, pg_q: &'static str) -> Vec<String> {
        match self.pg_url() {
            Some(url) => {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                let v = sqlx::query_scalar::<_, String>(pg_q)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                v
            }
            None => {
                let c = rusqlite::Connection::open(self.ctx.store.sqlite_file().unwrap()).unwrap();
                let mut st = c.prepare(sqlite_q).unwrap();
                st.query_map([], |r| r.get::<_, String>(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
        }
    }

    /// Every audit record's text columns, as stored.
    pub async fn audit_table_text(&self) -> String {
        const Q: &str =
            "SELECT actor_kind || ' ' || COALESCE(actor_id, '') || ' ' || origin || ' ' \
             || COALESCE(account_id, '') || ' ' || action || ' ' || target || ' ' || changes \
             FROM audit_log";
        self.raw_strings(Q, Q).await.join("\n")
    }

    /// The stored hashes of every token, account secret and operator credential, in hex.
    pub async fn stored_hashes_hex(&self) -> Vec<String> {
        self.raw_strings(
            "SELECT lower(hex(secret_hash)) FROM tokens UNION ALL \
             SELECT lower(hex(secret_hash)) FROM accounts UNION ALL \
             SELECT lower(hex(secret_hash)) FROM operator_credentials",
            "SELECT encode(secret_hash, 'hex') FROM tokens UNION ALL \
             SELECT encode(secret_hash, 'hex') FROM accounts UNION ALL \
             SELECT encode(secret_hash, 'hex') FROM operator_credentials",
        )
        .await
    }

    /// The URL of the test's PostgreSQL database, when it runs on one.
    pub fn pg_url(&self) -> Option<String> {
        self._pg.as_ref().map(|p| p.url.clone())
    }

    /// Stops the daemon and starts it again on the same store, configuration and clock.
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// Restarts on the same store with the configuration changed by `tweak`.
    pub async fn restart_with(mut self, tweak: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = (*self.ctx.config).clone();
        tweak(&mut config);
        let (pg, dir) = (self._pg.take(), self._dir.take());
        let clock = self.clock.clone();
        self.stop().await;
        let mut app = launch(config, clock).await.expect("restart");
        app._pg = pg;
        app._dir = dir;
        app
    }

    /// Stops the daemon the way SIGTERM does and waits until it has finished.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.unwrap();
        }
    }

    /// Runs what the scheduler's wake-up runs (every job whose period is due at the clock's
    /// now), then delivers the outbox.
    pub async fn tick(&self) -> Vec<tokenwarden::jobs::RunReport> {
        let r = self.runner.run_due().await;
        self.runner.sender().pass().await.unwrap();
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A JSON request with an optional bearer credential; returns status and parsed body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        cred: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.client.request(method, self.url(path));
        if let Some(c) = cred {
            rb = rb.bearer_auth(c);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Forward auth (`GET /v1/auth`) with `cred` as the bearer.
    pub async fn forward_auth(&self, cred: &str) -> reqwest::Response {
        self.client
            .get(self.url("/v1/auth"))
            .bearer_auth(cred)
            .send()
            .await
            .unwrap()
    }

    /// The Prometheus text `/metrics` answers.
    pub async fn metrics(&self) -> String {
        let r = self.client.get(self.url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }

    pub async fn get(&self, path: &str, cred: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(cred), None).await
    }

    pub async fn post(&self, path: &str, cred: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(cred), Some(body)).await
    }

    pub async fn patch(&self, path: &str, cred: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(cred), Some(body)).await
    }

    pub async fn delete(&self, path: &str, cred: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(cred), None).await
    }

    /// Creates an account; returns (id, secret).
    pub async fn account(&self, name: &str) -> (String, String) {
        self.account_with(json!({ "name": name })).await
    }

    pub async fn account_with(&self, body: Value) -> (String, String) {
        let (s, v) = self
            .post("/v1/accounts", &self.operator.clone(), body)
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        (
            v["account"]["id"].as_str().unwrap().into(),
            v["secret"].as_str().unwrap().into(),
        )
    }

    /// Creates one token with `cred`; returns (id, plain token).
    pub async fn token(&self, cred: &str, body: Value) -> (String, String) {
        let (s, v) = self.post("/v1/tokens", cred, body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let t = &v["tokens"][0];
        (
            t["id"].as_str().unwrap().into(),
            t["token"].as_str().unwrap().into(),
        )
    }

    /// Creates a user; returns its id.
    pub async fn user(&self, account: &str, email: &str, role: &str) -> String {
        let (s, v) = self
            .post(
                &format!("/v1/accounts/{account}/users"),
                &self.operator.clone(),
                json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["user"]["id"].as_str().unwrap().into()
    }

    /// Ids of every token the operator sees in `account`, any status.
    pub async fn token_ids(&self, account: &str) -> Vec<String> {
        let (s, v) = self
            .get(
                &format!("/v1/tokens?account_id={account}&limit=500"),
                &self.operator.clone(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Asserts an error answer: status, numeric code and (when given) the field it names.
#[track_caller]
pub fn assert_error(got: &(StatusCode, Value), status: u16, code: u64, field: Option<&str>) {
    let (s, v) = got;
    assert_eq!(s.as_u16(), status, "status of {v}");
    assert_eq!(v["code"].as_u64(), Some(code), "code of {v}");
    assert!(
        v["error"].is_string() && v["message"].is_string(),
        "error shape of {v}"
    );
    if let Some(f) = field {
        assert_eq!(v["field"].as_str(), Some(f), "field of {v}");
    }
}

/// The real binary, with no TOKENWARDEN_* configuration or RUST_LOG leaking in from the test's
/// environment.
pub fn binary() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwarden"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TOKENWARDEN_") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG");
    // Small usage log files: each SQLite daemon makes two, zero-filled.
    c.env("TOKENWARDEN_DATABASE__USAGE_LOG_MIB", "1");
    c
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (10 s at most) until `url` answers 200.
pub async fn wait_for(url: &str) {
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(url).await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("nothing answered {url}");
}

/// Clients verifying one token in a loop until stopped, counting every VALID answer they
/// received in full: what a crash or a stop must not lose.
pub struct VerifyLoad {
    valid: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl VerifyLoad {
    /// Starts `clients` clients against `{base}/v1/verify`.
    pub fn start(base: &str, token: &str, clients: usize) -> VerifyLoad {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let valid = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::new();
        let tasks = (0..clients)
            .map(|_| {
                let (valid, stop, client, url, token) = (
                    valid.clone(),
                    stop.clone(),
                    client.clone(),
                    format!("{base}/v1/verify"),
                    token.to_string(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(r) = client
                            .post(&url)
                            .json(&json!({"token": token}))
                            .send()
                            .await
                        else {
                            break;
                        };
                        let Ok(v) = r.json::<Value>().await else {
                            break;
                        };
                        if v["result"] == "VALID" {
                            valid.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        VerifyLoad { valid, stop, tasks }
    }

    /// Waits (at most `tries` × 10 ms) until `n` calls were answered VALID.
    pub async fn reach(&self, n: u64, tries: u32) {
        for _ in 0..tries {
            if self.valid.load(std::sync::atomic::Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients and returns the VALID answers they received.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.valid.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A connection of the test's own to the daemon's database, for fixtures and plan checks.
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    pub async fn of(app: &TestApp) -> Db {
        match app.pg_url() {
            Some(url) => Db::Postgres(sqlx::PgPool::connect(&url).await.unwrap()),
            None => {
                let path = app.ctx.store.sqlite_file().expect("a SQLite store");
                let url = format!("sqlite://{}", path.display());
                Db::Sqlite(sqlx::SqlitePool::connect(&url).await.unwrap())
            }
        }
    }

    pub async fn exec(&self, q: &str) {
        let q = sqlx::AssertSqlSafe(q.to_string());
        match self {
            Db::Sqlite(p) => sqlx::query(q).execute(p).await.map(|_| ()),
            Db::Postgres(p) => sqlx::query(q).execute(p).await.map(|_| ()),
        }
        .unwrap()
    }

    pub async fn int(&self, q: &str) -> i64 {
        let q = sqlx::AssertSqlSafe(q.to_string());
        match self {
            Db::Sqlite(p) => sqlx::query_scalar(q).fetch_one(p).await,
            Db::Postgres(p) => sqlx::query_scalar(q).fetch_one(p).await,
        }
        .unwrap()
    }

    /// The query plan of `q` as text.
    pub async fn plan(&self, q: &str) -> String {
        match self {
            Db::Sqlite(p) => {
                let rows: Vec<(i64, i64, i64, String)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {q}")))
                        .fetch_all(p)
                        .await
                        .unwrap();
                rows.into_iter().map(|r| r.3).collect::<Vec<_>>().join("\n")
            }
            Db::Postgres(p) => {
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {q}")))
                        .fetch_all(p)
                        .await
                        .unwrap();
                rows.join("\n")
            }
        }
    }

    /// A connection to the store in `data` (its SQLite file), or to PostgreSQL at `pg_url`,
    /// creating the SQLite file if there is none yet.
    pub async fn at(data: &std::path::Path, pg_url: Option<&str>) -> Db {
        match pg_url {
            Some(url) => Db::Postgres(sqlx::PgPool::connect(url).await.unwrap()),
            None => {
                std::fs::create_dir_all(data).unwrap();
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(data.join("tokenwarden.db"))
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
                Db::Sqlite(sqlx::SqlitePool::connect_with(opts).await.unwrap())
            }
        }
    }

    /// Runs this binary's migrations whose file names sort before `before`, as an older
    /// version would have.
    pub async fn migrate_before(&self, before: &str) {
        let older = tempfile::tempdir().unwrap();
        let dialect = match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dialect);
        for f in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
            if f.file_name().unwrap().to_str().unwrap() < before {
                std::fs::copy(&f, older.path().join(f.file_name().unwrap())).unwrap();
            }
        }
        let m = sqlx::migrate::Migrator::new(older.path()).await.unwrap();
        match self {
            Db::Sqlite(p) => m.run(p).await.unwrap(),
            Db::Postgres(p) => m.run(p).await.unwrap(),
        }
    }

    /// The text values `q` selects.
    pub async fn strings(&self, q: &str) -> Vec<String> {
        let q = sqlx::AssertSqlSafe(q.to_string());
        match self {
            Db::Sqlite(p) => sqlx::query_scalar(q).fetch_all(p).await,
            Db::Postgres(p) => sqlx::query_scalar(q).fetch_all(p).await,
        }
        .unwrap()
    }

    pub async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p) => p.close().await,
        }
    }
}
