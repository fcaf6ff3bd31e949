//! Harness of the job tests: a daemon over a data folder and store that outlive it (so it can
//! be stopped and started again across month ends), configured from TOML as an operator writes
//! it, a real SMTP server with AUTH on loopback, and a webhook receiver.

use crate::helpers::{free_port, launch, store_for, Backend, PgDb, TestApp};
use axum::{body::Bytes, http::HeaderMap, routing::post, Router};
use chrono::{DateTime, Utc};
use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
};
use tokenwarden::{
    clock::ManualClock,
    config::{self, StoreLocation},
};

/// A data folder, a store and a clock that outlive the daemons started on them.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    db_url: String,
    pub backend: Backend,
    _pg: Option<PgDb>,
}

impl Env {
    pub async fn new(backend: Backend, start: DateTime<Utc>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (store, pg) = store_for(backend, dir.path()).await;
        let db_url = match store {
            StoreLocation::Sqlite(p) => format!("sqlite://{}", p.display()),
            StoreLocation::Postgres(u) => u,
        };
        Env {
            dir,
            clock: ManualClock::new(start),
            db_url,
            backend,
            _pg: pg,
        }
    }

    /// Writes the configuration file: the test's TOML after this env's data folder, store and a
    /// random port.
    pub fn config_file(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("tokenwarden.toml");
        let body = format!(
            "data_dir = \"{}\"\n{extra}\n[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\nusage_log_mib = 1\n",
            self.dir.path().display(),
            self.db_url
        );
        std::fs::write(&path, body).unwrap();
        path
    }

    pub fn config(&self, extra: &str) -> Result<config::Config, config::ConfigErrors> {
        config::load(
            Some(&self.config_file(extra)),
            &config::Overrides::default(),
        )
    }

    /// Starts a daemon (running the catch-up of missed periods) on this env at the clock's now.
    pub async fn try_start(&self, extra: &str) -> anyhow::Result<TestApp> {
        let c = self.config(extra)?;
        launch(c, self.clock.clone()).await
    }

    pub async fn start(&self, extra: &str) -> TestApp {
        self.try_start(extra).await.expect("start daemon")
    }

    /// Runs one statement on the store directly (to stage what a crash leaves behind); binds
    /// `t` as `$1` and `args` after it. Returns the rows affected.
    pub async fn execute(&self, q: &str, t: DateTime<Utc>, args: &[&str]) -> u64 {
        let q = sqlx::AssertSqlSafe(q.to_string());
        match self.backend {
            Backend::Sqlite => {
                let path = self.db_url.trim_start_matches("sqlite://");
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}"))
                    .await
                    .unwrap();
                let mut query = sqlx::query(q).bind(t);
                for a in args {
                    query = query.bind(*a);
                }
                let n = query.execute(&pool).await.unwrap().rows_affected();
                pool.close().await;
                n
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.db_url).await.unwrap();
                let mut query = sqlx::query(q).bind(t);
                for a in args {
                    query = query.bind(*a);
                }
                let n = query.execute(&pool).await.unwrap().rows_affected();
                pool.close().await;
                n
            }
        }
    }

    /// The `.eml` files the file transport wrote.
    pub fn eml_files(&self) -> Vec<String> {
        let dir = self.dir.path().join("outbox");
        let mut out: Vec<String> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// A received email.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub login: Option<String>,
    pub data: String,
}

/// aiosmtpd on a loopback port, requiring AUTH.
pub struct SmtpServer {
    pub port: u16,
    child: Child,
    out: tempfile::TempDir,
}

impl SmtpServer {
    pub fn start(user: &str, password: &str) -> SmtpServer {
        Self::start_tls(user, password, None)
    }

    /// With `tls = Some((mode, cert, key))`: `starttls` or `implicit`, with that certificate.
    pub fn start_tls(
        user: &str,
        password: &str,
        tls: Option<(&str, &std::path::Path, &std::path::Path)>,
    ) -> SmtpServer {
        let out = tempfile::tempdir().unwrap();
        let port = free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args([script, &port.to_string(), user, password])
            .arg(out.path());
        if let Some((mode, cert, key)) = tls {
            cmd.arg(mode).arg(cert).arg(key);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run /usr/bin/python3 tests/smtp_server.py (apt-get install python3-aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the SMTP server did not start (is python3-aiosmtpd installed?)"
        );
        SmtpServer { port, child, out }
    }

    /// Messages received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.out.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                let v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
                Received {
                    mail_from: v["mail_from"].as_str().unwrap().into(),
                    rcpt_tos: serde_json::from_value(v["rcpt_tos"].clone()).unwrap(),
                    login: v["login"].as_str().map(String::from),
                    data: v["data"].as_str().unwrap().into(),
                }
            })
            .collect()
    }

    /// `[email.smtp]` for this server (plain SMTP on loopback, with AUTH).
    pub fn config(&self, user: &str, password_file: &std::path::Path) -> String {
        self.config_tls(user, password_file, "none", "")
    }

    /// `[email.smtp]` with `tls` and an extra lines (such as `ca_file`).
    pub fn config_tls(
        &self,
        user: &str,
        password_file: &std::path::Path,
        tls: &str,
        extra: &str,
    ) -> String {
        format!(
            "[email]\nfrom = \"tokenwarden <tw@example.test>\"\n[email.smtp]\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"{tls}\"\nusername = \"{user}\"\npassword_file = \"{}\"\ntimeout_seconds = 5\n{extra}\n",
            self.port,
            password_file.display()
        )
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a certificate for 127.0.0.1 signed by it (rustls refuses a self-signed CA
/// certificate as a server certificate), made with the openssl command-line tool. Returns
/// (CA certificate, server certificate, server key).
pub fn test_certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let o = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tokenwarden test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&csr);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// One webhook request as received.
#[derive(Debug, Clone)]
pub struct Hook {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A webhook receiver on loopback that answers 500 to its first `fail_first` requests.
pub struct WebhookReceiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Hook>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    pub async fn start(fail_first: usize) -> WebhookReceiver {
        let got: Arc<Mutex<Vec<Hook>>> = Arc::default();
        let seen = got.clone();
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    let mut g = seen.lock().unwrap();
                    g.push(Hook { headers, body });
                    if g.len() <= fail_first {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        WebhookReceiver { url, got, task }
    }

    pub fn received(&self) -> Vec<Hook> {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether `sig` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`, checked with the
/// `hmac` crate independently of the daemon's code.
pub fn signature_ok(secret: &str, body: &[u8], sig: &str) -> bool {
    use hmac::{Hmac, Mac};
    let Some(hex_sig) = sig.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(bytes) = hex::decode(hex_sig) else {
        return false;
    };
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}
