//! The real binary: `serve` with nothing given, the operator credential file, the store
//! subcommands and `check-config`.

use crate::both_backends;
use crate::helpers::*;
use serde_json::Value;
use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Output, Stdio},
};

/// The binary, run in `cwd`.
fn tw(cwd: &Path) -> Command {
    let mut c = binary();
    c.current_dir(cwd);
    c
}

/// A PostgreSQL database of the test's own and its URL, on that backend.
async fn pg_for(b: Backend) -> (Option<PgDb>, Option<String>) {
    match b {
        Backend::Sqlite => (None, None),
        Backend::Postgres => {
            let db = PgDb::create().await;
            let url = db.url.clone();
            (Some(db), Some(url))
        }
    }
}

/// Runs the binary in `dir` on the store `data` there (or on PostgreSQL at `pg_url`).
fn store_commands(dir: &Path, pg_url: Option<String>) -> impl Fn(&[&str]) -> Output {
    let data = dir.join("data");
    let cwd = dir.to_path_buf();
    move |args: &[&str]| {
        let mut c = tw(&cwd);
        c.arg("--data-dir").arg(&data).args(args);
        if let Some(u) = &pg_url {
            c.env("TOKENWARDEN_DATABASE__URL", u);
        }
        c.output().unwrap()
    }
}

fn json_out(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn stop(mut child: std::process::Child) -> String {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "daemon exited with {status}: {err}");
    err
}

#[tokio::test]
async fn serve_with_nothing_given_runs_on_8470_from_data() {
    let dir = tempfile::tempdir().unwrap();
    let child = tw(dir.path())
        .arg("serve")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("http://127.0.0.1:8470/healthz").await;
    let r = reqwest::get("http://127.0.0.1:8470/readyz").await.unwrap();
    assert_eq!(r.status(), 200);
    let file = dir.path().join("data/operator.token");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(dir.path().join("data/tokenwarden.db").exists());
    let credential = std::fs::read_to_string(&file).unwrap().trim().to_string();
    // The credential works, and it never appears in the log.
    let r = reqwest::Client::new()
        .get("http://127.0.0.1:8470/v1/accounts")
        .bearer_auth(&credential)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = stop(child);
    assert!(log.contains("operator.token"), "the path is logged: {log}");
    assert!(!log.contains(&credential), "the credential is never logged");

    // A second start finds the credential and writes nothing.
    let child = tw(dir.path())
        .arg("serve")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("http://127.0.0.1:8470/healthz").await;
    stop(child);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), credential);
}

both_backends!(
    second_daemon_on_one_store_writes_no_operator_file,
    store_subcommands_work_without_the_daemon,
    jobs_run_monthly_tokens_issues_a_newly_configured_policys_token,
    user_commands_switch_users_off_and_on_and_delete_them,
    accounts_set_up_before_api_keys_get_distinct_keys_on_upgrade,
);

async fn second_daemon_on_one_store_writes_no_operator_file(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (store, _pg) = store_for(b, dir.path()).await;
    let mut ids = Vec::new();
    for node in ["a", "b"] {
        let data = dir.path().join(node);
        let mut c = tokenwarden::config::Config::for_data_dir(&data);
        c.listen = "127.0.0.1:0".parse().unwrap();
        c.store = store.clone();
        c.master_key_file = dir.path().join("shared-master.key");
        let app =
            tokenwarden::app::App::build(c, std::sync::Arc::new(tokenwarden::clock::SystemClock))
                .await
                .unwrap();
        ids.push(data.join("operator.token").exists());
        app.ctx().store.close().await;
    }
    assert_eq!(ids, [true, false], "only the first daemon writes the file");
    // A daemon with another master key refuses the store instead of failing every JWT later.
    let mut c = tokenwarden::config::Config::for_data_dir(&dir.path().join("c"));
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.store = store.clone();
    let err =
        match tokenwarden::app::App::build(c, std::sync::Arc::new(tokenwarden::clock::SystemClock))
            .await
        {
            Ok(_) => panic!("a daemon with a different master key started"),
            Err(e) => format!("{e:#}"),
        };
    assert!(
        err.contains("master key") && err.contains("c/master.key"),
        "{err}"
    );
}

async fn store_subcommands_work_without_the_daemon(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, pg_url) = pg_for(b).await;
    let run = store_commands(dir.path(), pg_url);
    assert!(run(&["migrate"]).status.success());
    let v = json_out(&run(&["account", "create", "acme", "--max-tokens", "5"]));
    assert!(v["secret"].as_str().unwrap().starts_with("tw_sk_"));
    assert_eq!(v["account"]["max_tokens"], 5);
    let v = json_out(&run(&[
        "token",
        "create",
        "--account",
        "acme",
        "--name",
        "ci",
        "--usage-limit",
        "10",
        "--expires-on",
        "2030-01-01",
        "--scope",
        "convert:*",
        "--allowed-ip",
        "10.0.0.0/8",
        "--count",
        "2",
    ]));
    let tokens = v["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0]["expires_at"], "2030-01-01T00:00:00Z");
    assert!(tokens[0]["token"].as_str().unwrap().starts_with("tw_"));
    let id = tokens[0]["id"].as_str().unwrap().to_string();
    let id2 = tokens[1]["id"].as_str().unwrap().to_string();

    let v = json_out(&run(&["token", "list", "--account", "acme"]));
    assert_eq!(v["tokens"].as_array().unwrap().len(), 2);
    assert!(!v.to_string().contains(tokens[0]["token"].as_str().unwrap()));
    let v = json_out(&run(&["token", "show", &id]));
    assert_eq!(v["token"]["allowed_ips"][0], "10.0.0.0/8");
    let v = json_out(&run(&["token", "revoke", &id]));
    assert_eq!(v["token"]["status"], "revoked");
    let v = json_out(&run(&["token", "regenerate", &id2]));
    assert_ne!(v["token"]["token"], tokens[1]["token"]);
    let v = json_out(&run(&[
        "token",
        "regenerate",
        &id2,
        "--expires-on",
        "2031-01-01",
    ]));
    assert_eq!(v["token"]["expires_at"], "2031-01-01T00:00:00Z", "{v}");
    let v = json_out(&run(&[
        "token",
        "list",
        "--account",
        "acme",
        "--status",
        "revoked",
    ]));
    assert_eq!(v["tokens"][0]["id"], id.as_str());
    let o = run(&["stats", "export", "--account", "acme"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("day,token_id,account_id,valid,cost,"));
    assert_eq!(
        run(&["stats", "export", "--from", "2026-13-01"])
            .status
            .code(),
        Some(2)
    );
    let v = json_out(&run(&["account", "list"]));
    assert_eq!(v["accounts"][0]["name"], "acme");
    let v = json_out(&run(&["account", "show", "acme"]));
    assert_eq!(v["account"]["name"], "acme");

    // Bad input: exit 2, the field named, nothing created.
    let o = run(&[
        "token",
        "create",
        "--account",
        "acme",
        "--name",
        "x",
        "--usage-limit",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("usage_limit"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&[
        "token",
        "create",
        "--account",
        "acme",
        "--name",
        "x",
        "--expires-on",
        "2030-02-30",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expires_on"));
    assert_eq!(
        json_out(&run(&["token", "list", "--account", "acme"]))["tokens"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(run(&["token", "show", "AAAAAAAA"]).status.code(), Some(3));
    assert_eq!(run(&["account", "create", "acme"]).status.code(), Some(4));
    assert_eq!(run(&["account", "show", "nobody"]).status.code(), Some(3));

    // operator reset replaces the credential file.
    let before = std::fs::read_to_string(dir.path().join("data/operator.token")).ok();
    assert!(run(&["operator", "reset"]).status.success());
    let after = std::fs::read_to_string(dir.path().join("data/operator.token")).unwrap();
    assert_ne!(Some(after), before);
}

/// `user create|deactivate|activate|delete` change the store as the API does: a token of a
/// deactivated user is refused, its tokens are revoked on deletion, and tokens the CLI issues
/// record `cli` as their issuer.
async fn user_commands_switch_users_off_and_on_and_delete_them(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, pg_url) = pg_for(b).await;
    let run = store_commands(dir.path(), pg_url);
    json_out(&run(&["account", "create", "acme"]));
    let v = json_out(&run(&[
        "user",
        "create",
        "acme",
        "--email",
        "ann@acme.example",
        "--role",
        "engineer",
    ]));
    assert_eq!(v["user"]["status"], "active", "{v}");
    let ann = v["user"]["id"].as_str().unwrap().to_string();
    let v = json_out(&run(&[
        "token",
        "create",
        "--account",
        "acme",
        "--name",
        "ci",
        "--user",
        &ann,
    ]));
    let id = v["tokens"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(v["tokens"][0]["issued_by"], "cli", "{v}");
    assert_eq!(v["tokens"][0]["user_id"], ann.as_str());

    let v = json_out(&run(&["user", "deactivate", &ann]));
    assert_eq!(v["user"]["status"], "inactive", "{v}");
    let v = json_out(&run(&["token", "show", &id]));
    assert_eq!(v["token"]["user_active"], false, "{v}");
    // No token for an inactive user: exit 4 (conflict), nothing created.
    let o = run(&[
        "token",
        "create",
        "--account",
        "acme",
        "--name",
        "more",
        "--user",
        &ann,
    ]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("inactive"),
        "{o:?}"
    );
    let v = json_out(&run(&[
        "token",
        "list",
        "--account",
        "acme",
        "--user",
        &ann,
    ]));
    assert_eq!(v["tokens"].as_array().unwrap().len(), 1, "{v}");
    let v = json_out(&run(&[
        "token",
        "list",
        "--account",
        "acme",
        "--issued-by",
        "cli",
    ]));
    assert_eq!(v["tokens"].as_array().unwrap().len(), 1, "{v}");

    let v = json_out(&run(&["user", "activate", &ann]));
    assert_eq!(v["user"]["status"], "active");
    let v = json_out(&run(&["token", "show", &id]));
    assert_eq!(v["token"]["user_active"], true, "{v}");

    let v = json_out(&run(&["user", "delete", &ann]));
    assert_eq!(v["user"]["status"], "deleted", "{v}");
    assert_eq!(v["tokens_revoked"], 1);
    let v = json_out(&run(&["token", "show", &id]));
    assert_eq!(v["token"]["status"], "revoked", "{v}");
    let v = json_out(&run(&["account", "show", "acme"]));
    assert_eq!(
        v["users"][0]["status"], "deleted",
        "listed for the record: {v}"
    );
    // Final; an unknown user is "not found" (exit 3); errors print once.
    let o = run(&["user", "activate", &ann]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("deleted").count(), 1, "{err}");
    assert_eq!(
        run(&["user", "deactivate", "nosuchuser"]).status.code(),
        Some(3)
    );
    let o = run(&["user", "create", "acme", "--email", "not-an-email"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("email"),
        "{o:?}"
    );

    // Each change made above is one audit record by the CLI, newest first, a JSON line each;
    // the commands refused above left none.
    let o = run(&["audit", "list", "--actor", "cli"]);
    assert!(o.status.success(), "{o:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "user.delete",
            "user.update",
            "user.update",
            "token.create",
            "user.create",
            "account.create"
        ]
    );
    assert!(lines
        .iter()
        .all(|r| r["origin"] == "cli" && r["outcome"] == "ok"));
    let o = run(&[
        "audit",
        "list",
        "--target",
        &format!("user:{ann}"),
        "--limit",
        "1",
    ]);
    let one: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().collect();
    assert_eq!(one.len(), 1);
    assert!(one[0].contains("user.delete"), "{one:?}");
    let o = run(&["audit", "list", "--from", "someday"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("from"), "{o:?}");
}

/// A reset whose new file cannot be written is refused before the store takes the new
/// credential: the old one, in its file, keeps working.
#[test]
fn an_operator_reset_that_cannot_write_its_file_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let reset = || tw(dir.path()).args(["operator", "reset"]).output().unwrap();
    let first = json_out(&reset());
    let file = dir.path().join("data/operator.token");
    assert_eq!(first["operator_token_file"], "./data/operator.token");
    let stored = || -> Vec<u8> {
        rusqlite::Connection::open(dir.path().join("data/tokenwarden.db"))
            .unwrap()
            .query_row(
                "SELECT secret_hash FROM operator_credentials WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let (credential, hash) = (std::fs::read_to_string(&file).unwrap(), stored());
    // No file can be made in the data directory (immutable: root is refused too), while the
    // store, whose log files this connection holds open, still takes writes.
    let keep = rusqlite::Connection::open(dir.path().join("data/tokenwarden.db")).unwrap();
    keep.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    keep.query_row("SELECT count(*) FROM accounts", [], |_| Ok(()))
        .unwrap();
    let data = dir.path().join("data");
    /// Makes the directory writable again however the test ends.
    struct Mutable<'a>(&'a Path);
    impl Drop for Mutable<'_> {
        fn drop(&mut self) {
            let _ = Command::new("chattr").arg("-i").arg(self.0).status();
        }
    }
    let immutable = Command::new("chattr")
        .arg("+i")
        .arg(&data)
        .status()
        .unwrap();
    let guard = Mutable(&data);
    assert!(immutable.success(), "chattr +i");
    let o = reset();
    drop(guard);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("operator.tmp"),
        "{o:?}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), credential);
    assert_eq!(stored(), hash);
    drop(keep);
    json_out(&reset());
    let left: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "staging files left behind: {left:?}");
    assert_ne!(std::fs::read_to_string(&file).unwrap(), credential);
    assert_ne!(stored(), hash);
}

#[test]
fn check_config_reports_every_error_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"everywhere\"\n[tokens]\nmax_count_per_request = 0\n[databse]\nurl = \"x\"\n").unwrap();
    let o = tw(dir.path())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}: databse: unknown key", cfg.display())),
        "{err}"
    );
    // A broken config does not start the daemon either.
    let o = tw(dir.path())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"everywhere\"\n[tokens]\nmax_count_per_request = 0\n",
    )
    .unwrap();
    let o = tw(dir.path())
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("server.listen") && err.contains("tokens.max_count_per_request"),
        "both errors: {err}"
    );
    assert!(err.contains(&cfg.display().to_string()));
    // Environment overrides are named as such.
    let o = tw(dir.path())
        .arg("check-config")
        .env("TOKENWARDEN_SERVER__LISTEN", "nope")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TOKENWARDEN_SERVER__LISTEN"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A template that does not load is a configuration error naming its key, before anything
    // is printed; checking creates nothing (no data directory, no outbox).
    let templates = dir.path().join("templates");
    std::fs::create_dir(&templates).unwrap();
    std::fs::write(templates.join("expired.txt"), "{{ token_name ").unwrap();
    std::fs::write(
        &cfg,
        format!("[email]\ntemplates_dir = \"{}\"\n", templates.display()),
    )
    .unwrap();
    let check = || {
        tw(dir.path())
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let o = check();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("email.templates_dir"), "{err}");
    assert!(o.stdout.is_empty(), "the configuration was printed");
    std::fs::write(&cfg, "").unwrap();
    let o = check();
    assert!(o.status.success(), "{o:?}");
    assert!(
        !dir.path().join("data").exists(),
        "check-config created the data directory"
    );
}

#[test]
fn the_example_config_is_valid_and_printed_back_masked() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let o = tw(dir.path())
        .args(["check-config", "--config"])
        .arg(root.join("config/tokenwarden.example.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[server]") && out.contains("listen = \"127.0.0.1:8470\""),
        "{out}"
    );
    let o = tw(dir.path())
        .arg("check-config")
        .env(
            "TOKENWARDEN_DATABASE__URL",
            "postgres://tw:hunter2@db.example/tw",
        )
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("tw:***@db.example") && !out.contains("hunter2"),
        "{out}"
    );
}

#[tokio::test]
async fn debug_logs_never_show_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tw(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "trace")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the trace log as it is written: a pipe read only at the end fills, and the daemon
    // then blocks on its next log line.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = String::new();
        use std::io::Read;
        stderr.read_to_string(&mut log).unwrap();
        log
    });
    wait_for(&format!("{base}/healthz")).await;
    let op = std::fs::read_to_string(dir.path().join("data/operator.token"))
        .unwrap()
        .trim()
        .to_string();
    let c = reqwest::Client::new();
    let acc: Value = c
        .post(format!("{base}/v1/accounts"))
        .bearer_auth(&op)
        .json(&serde_json::json!({"name": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = acc["secret"].as_str().unwrap().to_string();
    let created: Value = c
        .post(format!("{base}/token/create?Secret={secret}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let plain = created["Tokens"][0]["Id"].as_str().unwrap().to_string();
    c.post(format!("{base}/v1/verify"))
        .json(&serde_json::json!({"token": plain}))
        .send()
        .await
        .unwrap();
    c.get(format!("{base}/v1/tokens?Secret={secret}"))
        .send()
        .await
        .unwrap();
    c.delete(format!("{base}/token/{plain}?Secret={secret}"))
        .send()
        .await
        .unwrap();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    let log = reader.join().unwrap();
    assert!(status.success(), "daemon exited with {status}");
    assert!(
        log.contains("/token/{id}"),
        "requests are logged by route: {}",
        &log[..log.len().min(2000)]
    );
    for (what, value) in [
        ("operator credential", &op),
        ("account secret", &secret),
        ("token", &plain),
    ] {
        assert!(
            !log.contains(value.as_str()),
            "the {what} appears in the trace log"
        );
        // Not even its secret part.
        assert!(
            !log.contains(&value[value.len() - 20..]),
            "part of the {what} appears in the trace log"
        );
    }
}

#[test]
fn jobs_run_on_the_store_directly_and_only_once_per_period() {
    let dir = tempfile::tempdir().unwrap();
    let list = json_out(&tw(dir.path()).args(["jobs", "list"]).output().unwrap());
    let names: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "monthly_reset",
            "monthly_tokens",
            "expiry",
            "expiry_warnings",
            "housekeeping"
        ]
    );
    let run = || {
        tw(dir.path())
            .args(["jobs", "run", "monthly_reset", "--period", "2026-01"])
            .output()
            .unwrap()
    };
    let first = json_out(&run());
    assert_eq!(
        (first["outcome"].as_str(), first["period"].as_str()),
        (Some("ran"), Some("2026-01"))
    );
    assert_eq!(json_out(&run())["outcome"], "already_done");
    // A period another process is running (its claim still leased) is a conflict to retry
    // later (exit 4, as the API's 409), and is left to its owner.
    let db = rusqlite::Connection::open(dir.path().join("data/tokenwarden.db")).unwrap();
    db.execute(
        "INSERT INTO job_runs (job, period, status, owner, lease_until, attempts, started_at) \
         VALUES ('monthly_reset', '2026-02', 'running', 'other-daemon', '2999-01-01T00:00:00Z', 1, \
         '2026-02-01T00:00:00Z')",
        [],
    )
    .unwrap();
    let o = tw(dir.path())
        .args(["jobs", "run", "monthly_reset", "--period", "2026-02"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("other-daemon"));
    let status: String = db
        .query_row(
            "SELECT status FROM job_runs WHERE job = 'monthly_reset' AND period = '2026-02'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "running");
    let o = tw(dir.path())
        .args(["jobs", "run", "payroll"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown job `payroll`"));
    let o = tw(dir.path())
        .args(["jobs", "run", "monthly_tokens", "--period", "2026-1"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    // Said once, naming the flag.
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("is not a month").count(), 1, "{err}");
    assert!(err.contains("--period"), "{err}");
}

/// A policy added to the configuration after the month's run gets its token from `jobs run
/// monthly_tokens`, without a daemon start; the policies that have one get no second.
async fn jobs_run_monthly_tokens_issues_a_newly_configured_policys_token(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let (_pg, pg_url) = pg_for(b).await;
    let cfg = dir.path().join("tw.toml");
    let policy = |name: &str| {
        format!(
            "[[policy]]\nname = \"{name}\"\naccount = \"acme\"\ndeliver_file = \"{}\"\n",
            dir.path().join(format!("{name}.token")).display()
        )
    };
    let run = |args: &[&str]| {
        let mut c = tw(dir.path());
        c.arg("--data-dir").arg(dir.path().join("data"));
        c.arg("--config").arg(&cfg).args(args);
        if let Some(u) = &pg_url {
            c.env("TOKENWARDEN_DATABASE__URL", u);
        }
        c.output().unwrap()
    };
    std::fs::write(&cfg, policy("first")).unwrap();
    json_out(&run(&["account", "create", "acme"]));
    let v = json_out(&run(&["jobs", "run", "monthly_tokens"]));
    assert_eq!(v["outcome"], "ran", "{v}");
    let first = std::fs::read_to_string(dir.path().join("first.token")).unwrap();
    std::fs::write(&cfg, policy("first") + &policy("second")).unwrap();
    let v = json_out(&run(&["jobs", "run", "monthly_tokens"]));
    assert_eq!(v["outcome"], "ran", "{v}");
    let second = std::fs::read_to_string(dir.path().join("second.token")).unwrap();
    assert!(second.trim().starts_with("tw_"), "{second}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("first.token")).unwrap(),
        first,
        "the first policy's token is not issued again"
    );
    let v = json_out(&run(&["jobs", "run", "monthly_tokens"]));
    assert_eq!(v["outcome"], "already_done", "{v}");
    let listed = json_out(&run(&["token", "list", "--account", "acme"]));
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 2, "{listed}");
}

/// A configuration file in `dir` with one policy for the account `ghost`.
fn ghost_policy_config(dir: &Path) -> std::path::PathBuf {
    let cfg = dir.join("tw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[policy]]\nname = \"p\"\naccount = \"ghost\"\ndeliver_file = \"{}\"\n",
            dir.join("p.token").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn check_config_refuses_a_policy_naming_an_unknown_account() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ghost_policy_config(dir.path());
    let check = || {
        tw(dir.path())
            .arg("check-config")
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    // No store yet: the accounts cannot be checked, and checking creates none.
    let o = check();
    assert!(o.status.success(), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no store at"),
        "{o:?}"
    );
    assert!(!dir.path().join("data/tokenwarden.db").exists());
    json_out(&tw(dir.path()).args(["account", "list"]).output().unwrap());
    let o = check();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("policy[0].account") && err.contains("ghost") && err.contains("tw.toml"),
        "{err}"
    );
    json_out(
        &tw(dir.path())
            .args(["account", "create", "ghost"])
            .output()
            .unwrap(),
    );
    let o = check();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Only `serve` and `migrate` upgrade a store; the other commands set up a new one but refuse
/// one an older version set up, and every command refuses one a newer version migrated.
/// `migrate` makes no master key; a store set up with one needs that key's file.
#[test]
fn only_serve_and_migrate_upgrade_a_store_and_a_set_up_store_keeps_its_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| tw(dir.path()).args(args).output().unwrap();
    let key = dir.path().join("data/master.key");
    json_out(&run(&["migrate"]));
    assert!(!key.exists(), "migrate made a master key");
    json_out(&run(&["account", "create", "acme"]));
    let key_text = std::fs::read_to_string(&key).unwrap();
    let db = rusqlite::Connection::open(dir.path().join("data/tokenwarden.db")).unwrap();
    let last: i64 = db
        .query_row("SELECT max(version) FROM _sqlx_migrations", [], |r| {
            r.get(0)
        })
        .unwrap();
    let count = || -> i64 {
        db.query_row("SELECT count(*) FROM _sqlx_migrations", [], |r| r.get(0))
            .unwrap()
    };
    let before = count();

    // As if set up by the version before the last migration.
    db.execute("DELETE FROM _sqlx_migrations WHERE version = ?1", [last])
        .unwrap();
    let o = run(&["account", "list"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("tokenwarden migrate"),
        "{o:?}"
    );
    assert_eq!(count(), before - 1, "a read command upgraded the store");
    // check-config still checks the policies' accounts there, and upgrades nothing either.
    let cfg = ghost_policy_config(dir.path());
    let o = tw(dir.path())
        .arg("check-config")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ghost"),
        "{o:?}"
    );
    assert_eq!(count(), before - 1, "check-config upgraded the store");

    // As if migrated by a newer version.
    db.execute(
        "UPDATE _sqlx_migrations SET version = 99990101000000 \
         WHERE version = (SELECT min(version) FROM _sqlx_migrations)",
        [],
    )
    .unwrap();
    for args in [&["account", "list"][..], &["migrate"][..]] {
        let o = run(args);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("newer"),
            "{args:?}: {o:?}"
        );
    }
    drop(db);

    // A fresh store of its own: the key file gone is refused, and no other key is made.
    let dir2 = tempfile::tempdir().unwrap();
    let run2 = |args: &[&str]| tw(dir2.path()).args(args).output().unwrap();
    json_out(&run2(&["account", "create", "acme"]));
    let key2 = dir2.path().join("data/master.key");
    std::fs::remove_file(&key2).unwrap();
    let o = run2(&["account", "list"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("master key"),
        "{o:?}"
    );
    assert!(
        !key2.exists(),
        "a new master key was made for a store set up with another"
    );
    std::fs::write(&key2, &key_text).unwrap();
    let o = run2(&["account", "list"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not the one"),
        "{o:?}"
    );
}

/// A store an older version set up (the migrations before users could be switched off and
/// issuers were recorded, applied for real, holding an account, a user and tokens) is upgraded
/// by `migrate` and keeps its data; until then commands refuse it.
#[test]
fn migrate_upgrades_a_store_an_older_version_set_up_and_keeps_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let older = tempfile::tempdir().unwrap();
    let mut files: Vec<_> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    files.sort();
    let all = files.len();
    for f in files
        .iter()
        .filter(|f| f.file_name().unwrap().to_str().unwrap() < "0006")
    {
        std::fs::copy(f, older.path().join(f.file_name().unwrap())).unwrap();
    }
    let db = data.join("tokenwarden.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        sqlx::migrate::Migrator::new(older.path())
            .await
            .unwrap()
            .run(&pool)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO accounts (id, name, status, max_tokens, secret_hash, created_at, updated_at) \
             VALUES ('acc_old', 'oldco', 'active', 50, x'00', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
        )
        .execute(&pool)
        .await
        .unwrap();
        // A user and two tokens as the older version wrote them: one issued for the user
        // (whose issuer it did not record), one by the account secret.
        sqlx::query(
            "INSERT INTO users (id, account_id, email, role, notify_expiry, created_at, updated_at) \
             VALUES ('usr_old', 'acc_old', 'ann@old.example', 'engineer', 1, \
             '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
        )
        .execute(&pool)
        .await
        .unwrap();
        for (id, user, by) in [
            ("Old00001", Some("usr_old"), "user:usr_old"),
            ("Old00002", None, "account"),
        ] {
            sqlx::query(
                "INSERT INTO tokens (id, account_id, user_id, issued_by, name, role, status, \
                 secret_hash, created_at, updated_at) VALUES ($1, 'acc_old', $2, $3, 'old', \
                 'user', 'active', x'00', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')",
            )
            .bind(id)
            .bind(user)
            .bind(by)
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    });
    let run = |args: &[&str]| tw(dir.path()).args(args).output().unwrap();
    let o = run(&["account", "list"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("tokenwarden migrate"),
        "{o:?}"
    );
    json_out(&run(&["migrate"]));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let applied: i64 = conn
        .query_row(
            "SELECT count(*) FROM _sqlx_migrations WHERE success",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(applied as usize, all);
    drop(conn);
    let listed = json_out(&run(&["account", "list"])).to_string();
    assert!(listed.contains("oldco"), "{listed}");
    // The issuer the older version did not record is `unknown`, and the store says how many;
    // the user's token carries the user's role and status.
    let v = json_out(&run(&["token", "show", "Old00001"]));
    assert_eq!(v["token"]["issued_by"], "unknown", "{v}");
    assert_eq!(v["token"]["user_id"], "usr_old");
    assert_eq!(v["token"]["effective_role"], "user");
    assert_eq!(v["token"]["user_active"], true);
    let v = json_out(&run(&["token", "show", "Old00002"]));
    assert_eq!(v["token"]["issued_by"], "account", "{v}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (unknown, role): (String, String) = conn
        .query_row(
            "SELECT (SELECT value FROM settings WHERE key = 'issuer_unknown_tokens'), \
             (SELECT user_role FROM tokens WHERE id = 'Old00001')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((unknown.as_str(), role.as_str()), ("1", "engineer"));
    // The old account got its ApiKey: a key row holding its secret's hash, which counts against
    // no max_tokens.
    let a = json_out(&run(&["account", "show", "oldco"]));
    let key = a["account"]["api_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(key.len(), 8, "{a}");
    let (kind, hash, status, live): (String, String, String, i64) = conn
        .query_row(
            "SELECT kind, hex(secret_hash), status, \
             (SELECT live_tokens FROM accounts WHERE id = 'acc_old') FROM tokens WHERE id = ?1",
            [&key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (kind.as_str(), hash.as_str(), status.as_str(), live),
        ("account", "00", "active", 2)
    );
    drop(conn);
    // And it works as a store of this version: a token on the old account.
    let v = json_out(&run(&[
        "token",
        "create",
        "--account",
        "oldco",
        "--name",
        "svc",
    ]));
    assert_eq!(v["tokens"][0]["account_id"], "acc_old", "{v}");
}

/// Accounts an older version set up (before ApiKeys) are given keys when the store is
/// upgraded: tens of thousands of them, each a distinct 8-character base62 key with its key
/// row, none the id of a token, the same keys after another `migrate`. A store that ran the
/// keys migration's first wording (keys drawn in SQL) is upgraded over the changed text.
async fn accounts_set_up_before_api_keys_get_distinct_keys_on_upgrade(b: Backend) {
    const ACCOUNTS: i64 = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let (_pg, pg_url) = pg_for(b).await;
    let db = Db::at(&dir.path().join("data"), pg_url.as_deref()).await;
    db.migrate_before("0009").await;
    let (hash, at) = match b {
        Backend::Sqlite => ("x'00'", "'2026-01-01T00:00:00Z'"),
        Backend::Postgres => ("'\\x00'::bytea", "'2026-01-01T00:00:00Z'::timestamptz"),
    };
    db.exec(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ACCOUNTS}) \
         INSERT INTO accounts (id, name, status, max_tokens, secret_hash, created_at, updated_at) \
         SELECT 'acc' || CAST(i AS TEXT), 'co' || CAST(i AS TEXT), 'active', 50, {hash}, {at}, \
         {at} FROM n"
    ))
    .await;
    db.exec(
        "INSERT INTO tokens (id, account_id, issued_by, name, role, status, secret_hash, \
         created_at, updated_at) SELECT 'Old00001', 'acc1', 'account', 'old', 'user', 'active', \
         secret_hash, created_at, updated_at FROM accounts WHERE id = 'acc1'",
    )
    .await;
    let run = store_commands(dir.path(), pg_url.clone());
    json_out(&run(&["migrate"]));

    let keys = "SELECT a.api_key FROM accounts a JOIN tokens t ON t.id = a.api_key \
                AND t.account_id = a.id AND t.kind = 'account' ORDER BY a.id";
    let first = db.strings(keys).await;
    assert_eq!(
        first.len() as i64,
        ACCOUNTS,
        "every account has a key and its key row"
    );
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), first.len(), "keys are distinct");
    assert!(
        first
            .iter()
            .all(|k| k.len() == 8 && k.bytes().all(|c| c.is_ascii_alphanumeric())),
        "keys are 8 base62 characters"
    );
    assert_eq!(
        db.int("SELECT COUNT(*) FROM tokens WHERE kind = 'account'")
            .await,
        ACCOUNTS
    );
    assert_eq!(
        db.int("SELECT COUNT(*) FROM tokens WHERE id = 'Old00001' AND kind = 'token'")
            .await,
        1,
        "the older token is kept as it was"
    );

    // Another upgrade keeps the keys.
    json_out(&run(&["migrate"]));
    assert_eq!(db.strings(keys).await, first);

    // As if a daemon had stopped between the migrations and the keys: the next start keys the
    // accounts left without one, and only those.
    db.exec("DELETE FROM tokens WHERE kind = 'account' AND account_id IN ('acc1', 'acc2')")
        .await;
    db.exec("UPDATE accounts SET api_key = NULL WHERE id IN ('acc1', 'acc2')")
        .await;
    json_out(&run(&["migrate"]));
    let again = db.strings(keys).await;
    assert_eq!(again.len(), first.len());
    assert_eq!(
        again.iter().zip(&first).filter(|(a, b)| a != b).count(),
        2,
        "the two accounts without keys got new ones, the others kept theirs"
    );

    // As if the first wording of the keys migration had run: its checksum recorded.
    let first_wording = match b {
        Backend::Sqlite => "x'3169ce4b2bd3128c66ae5509f0712a7e71ef0a0b179e00642824262191f34839de8ee86c4795b60e25df446bd9a4801b'",
        Backend::Postgres => "'\\xd65e029c232f8cb25e5aeeca79a96fa9a3cd87b6aeb0bc39e2f9aa004ca29a9618789ac558c0cbd39318f3f24723cb7d'::bytea",
    };
    db.exec(&format!(
        "UPDATE _sqlx_migrations SET checksum = {first_wording} WHERE version = 9"
    ))
    .await;
    let key7 = db
        .strings("SELECT api_key FROM accounts WHERE id = 'acc7'")
        .await;
    db.close().await;
    // sqlx compares the recorded checksums whenever it runs the migrations (as it does when a
    // later one is pending): the store's own migration run.
    let loc = match &pg_url {
        Some(u) => tokenwarden::config::StoreLocation::Postgres(u.clone()),
        None => tokenwarden::config::StoreLocation::Sqlite(
            dir.path().join("data").join("tokenwarden.db"),
        ),
    };
    let t = std::time::Duration::from_secs(10);
    let store = tokenwarden::store::Store::connect(&loc, 2, t, t)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.close().await;
    json_out(&run(&["migrate"]));
    let shown = json_out(&run(&["account", "show", "co7"]));
    assert_eq!(shown["account"]["api_key"], key7[0].as_str(), "{shown}");
}
