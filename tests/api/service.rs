//! Running it as a service, with the real binary: SIGTERM under load, SIGHUP reloads, the
//! sd_notify protocol, TLS on the admin port, slow clients, and the request log.

use crate::both_backends;
use crate::helpers::{binary, free_port, wait_for, Backend, PgDb, VerifyLoad};
use serde_json::{json, Value};
use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

/// The daemon as a child process, its stderr in a file.
pub struct Proc {
    pub child: Child,
    pub base: String,
    log: PathBuf,
}

impl Proc {
    pub fn start(data: &Path, port: u16, extra: &[(&str, &str)], config: Option<&Path>) -> Proc {
        Self::start_with(data, port, extra, config, |_| {})
    }

    /// `start`, with `tweak` applied to the command last (limits, umask).
    pub fn start_with(
        data: &Path,
        port: u16,
        extra: &[(&str, &str)],
        config: Option<&Path>,
        tweak: impl FnOnce(&mut std::process::Command),
    ) -> Proc {
        let log = data.with_extension("log");
        let mut c = binary();
        c.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
        if let Some(f) = config {
            c.arg("--config").arg(f);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        tweak(&mut c);
        Proc {
            child: c.spawn().unwrap(),
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits (at most `limit`) for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(start.elapsed() < limit, "still running after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `wait_exit` without blocking the runtime (the load's clients keep running).
    async fn exited(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(start.elapsed() < limit, "still running after {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn json_post(url: &str, cred: &str, body: Value) -> Value {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(cred)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

both_backends!(sigterm_under_load_loses_no_counted_call_and_exits_0);

async fn sigterm_under_load_loses_no_counted_call_and_exits_0(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pg = match b {
        Backend::Sqlite => None,
        Backend::Postgres => Some(PgDb::create().await),
    };
    let env: Vec<(&str, &str)> = pg
        .as_ref()
        .map(|p| vec![("TOKENWARDEN_DATABASE__URL", p.url.as_str())])
        .unwrap_or_default();
    let port = free_port();
    let mut d = Proc::start(&data, port, &env, None);
    wait_for(&format!("{}/readyz", d.base)).await;
    let op = std::fs::read_to_string(data.join("operator.token"))
        .unwrap()
        .trim()
        .to_string();
    let acc = json_post(
        &format!("{}/v1/accounts", d.base),
        &op,
        json!({"name": "acme"}),
    )
    .await;
    let secret = acc["secret"].as_str().unwrap().to_string();
    let tok = json_post(
        &format!("{}/v1/tokens", d.base),
        &secret,
        json!({"name": "load", "usage_limit": 1_000_000}),
    )
    .await;
    let token = tok["tokens"][0]["token"].as_str().unwrap().to_string();
    let id = tok["tokens"][0]["id"].as_str().unwrap().to_string();

    let load = VerifyLoad::start(&d.base, &token, 32);
    load.reach(300, 300).await;
    d.signal("TERM");
    let code = d.exited(Duration::from_secs(40)).await;
    let answered = load.stop().await;
    assert_eq!(code, Some(0), "exit code; log:\n{}", d.log());
    assert!(answered >= 300, "the load ran: {answered}");
    assert!(d.log().contains("tokenwarden stopped"), "{}", d.log());

    let log = d.log();
    // Every call answered VALID was counted, and nothing else was.
    let client = reqwest::Client::new();
    let d2 = Proc::start(&data, port, &env, None);
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
    assert_eq!(v["token"]["calls_total"].as_u64(), Some(answered), "{v}");
    // The request log names route, status, latency and token id, never the token.
    let line = log
        .lines()
        .find(|l| l.contains("/v1/verify") && l.contains("status=200"))
        .unwrap_or_else(|| panic!("no request line in\n{log}"));
    assert!(
        line.contains(&format!("token_id={id}")) && line.contains("latency_us="),
        "{line}"
    );
    assert!(!log.contains(&token), "the token is in the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn sd_notify_ready_comes_only_once_the_port_answers() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let port = free_port();
    let sock_env = sock_path.display().to_string();
    let mut d = Proc::start(
        &dir.path().join("data"),
        port,
        &[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", "200000")],
        None,
    );
    let mut buf = [0u8; 512];
    let recv = |buf: &mut [u8]| -> String {
        let n = sock.recv(buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let first = recv(&mut buf);
    assert!(first.lines().any(|l| l == "READY=1"), "{first}");
    // At the moment READY=1 arrives the port already answers.
    let r = reqwest::get(format!("{}/healthz", d.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    // The watchdog is pinged (every 100 ms for WATCHDOG_USEC = 200 ms).
    let mut pings = 0;
    while pings < 3 {
        if recv(&mut buf).lines().any(|l| l == "WATCHDOG=1") {
            pings += 1;
        }
    }
    d.signal("TERM");
    let mut stopping = false;
    for _ in 0..50 {
        if recv(&mut buf).lines().any(|l| l == "STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    let code = tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30)));
    assert_eq!(code, Some(0), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_changed_policy_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let account = binary()
        .args(["account", "create", "acme", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        account.status.success(),
        "{}",
        String::from_utf8_lossy(&account.stderr)
    );
    let cfg = dir.path().join("tokenwarden.toml");
    let policy = |name: &str| {
        format!(
            "[[policy]]\nname = \"{name}\"\naccount = \"acme\"\ndeliver_file = \"{}\"\n",
            dir.path().join(format!("{name}.token")).display()
        )
    };
    std::fs::write(&cfg, policy("first")).unwrap();
    let port = free_port();
    let mut d = Proc::start(&data, port, &[], Some(&cfg));
    wait_for(&format!("{}/readyz", d.base)).await;
    let delivered = |name: &str| dir.path().join(format!("{name}.token")).exists();
    let wait_delivered = |name: &'static str| async move {
        for _ in 0..100 {
            if delivered(name) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    };
    assert!(wait_delivered("first").await, "{}", d.log());

    // A changed configuration: a second policy. Its token is issued without a restart.
    std::fs::write(&cfg, format!("{}{}", policy("first"), policy("second"))).unwrap();
    d.signal("HUP");
    assert!(wait_delivered("second").await, "{}", d.log());
    assert!(
        d.log().contains("configuration reloaded: 2 policies"),
        "{}",
        d.log()
    );

    // A broken one (a bad role): refused with its key; the old one stays; nothing is issued.
    std::fs::write(
        &cfg,
        format!("{}{}role = \"boss\"\n", policy("first"), policy("third")),
    )
    .unwrap();
    d.signal("HUP");
    let mut refused = false;
    for _ in 0..100 {
        if d.log().contains("refused") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "{}", d.log());
    assert!(d.log().contains("policy[1].role"), "{}", d.log());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delivered("third"));
    let r = reqwest::get(format!("{}/readyz", d.base)).await.unwrap();
    assert_eq!(r.status(), 200, "still serving");
    d.signal("TERM");
    assert_eq!(
        tokio::task::block_in_place(|| d.wait_exit(Duration::from_secs(30))),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_port_serves_tls_and_drops_slow_clients() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = crate::jobs_env::test_certificates(dir.path());
    let cfg = dir.path().join("tokenwarden.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nheader_timeout_seconds = 1\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let d = Proc::start(&dir.path().join("data"), port, &[], Some(&cfg));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/healthz");
    let mut ok = false;
    for _ in 0..200 {
        if client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "https /healthz; log:\n{}", d.log());
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_err(),
        "plain HTTP is not served on a TLS port"
    );

    // A client that never finishes its request headers is cut off.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let plain_cfg = dir.path().join("plain.toml");
    std::fs::write(
        &plain_cfg,
        "[server]\nheader_timeout_seconds = 1\nrequest_timeout_seconds = 1\n",
    )
    .unwrap();
    let port2 = free_port();
    let d2 = Proc::start(&dir.path().join("data2"), port2, &[], Some(&plain_cfg));
    wait_for(&format!("{}/readyz", d2.base)).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port2))
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection stayed open");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // A client that sends its body too slowly gets 408 with its code.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port2))
        .await
        .unwrap();
    s.write_all(
        b"POST /v1/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"tok",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":4080"), "{answer}");
}
