//! nginx `auth_request` in front of a test upstream, configured with the snippet the README
//! shows (`contrib/nginx/tokenwarden.conf`). Needs nginx with the auth_request module; `.ci/run`
//! installs it and sets TOKENWARDEN_TEST_NGINX=required.

use crate::both_backends;
use crate::helpers::*;
use axum::{http::HeaderMap, routing::get, Router};
use base64::Engine;
use serde_json::json;
use std::{path::Path, process::Command, time::Duration};

both_backends!(nginx_auth_request_guards_an_upstream);

fn nginx() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

async fn nginx_auth_request_guards_an_upstream(b: Backend) {
    let Some(bin) = nginx() else {
        assert!(
            std::env::var("TOKENWARDEN_TEST_NGINX").as_deref() != Ok("required"),
            "nginx is required for this run but not installed"
        );
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx-light)");
        return;
    };
    let snippet_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/nginx/tokenwarden.conf");
    let snippet = std::fs::read_to_string(&snippet_path).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(snippet.trim()),
        "README shows contrib/nginx/tokenwarden.conf as it is"
    );

    let app = spawn_app(b).await;
    let (_, secret) = app.account("acme").await;
    let (id, t) = app.token(&secret, json!({"name": "api", "role": "engineer", "usage_limit": 3, "allowed_ips": ["127.0.0.1"]})).await;

    // The upstream echoes the identity nginx hands it.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let router = Router::new().fallback(get(|h: HeaderMap| async move {
        let get = |k: &str| {
            h.get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_string()
        };
        format!(
            "upstream ok token={} account={} role={}",
            get("x-tokenwarden-token-id"),
            get("x-tokenwarden-account-id"),
            get("x-tokenwarden-role")
        )
    }));
    tokio::spawn(async move { axum::serve(upstream, router).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path();
    std::fs::write(
        prefix.join("tokenwarden.conf"),
        snippet.replace("127.0.0.1:8470", &app.addr.to_string()),
    )
    .unwrap();
    let port = free_port();
    let conf = format!(
        "worker_processes 1;\nerror_log {p}/error.log warn;\npid {p}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fcgi;\n\
         uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  upstream app {{ server {upstream_addr}; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    include {p}/tokenwarden.conf;\n  }}\n}}\n",
        p = prefix.display()
    );
    std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
    let mut child = Command::new(bin)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if client.get(format!("{base}/")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        up,
        "nginx did not start: {}",
        std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
    );

    let r = client
        .get(format!("{base}/convert"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-tokenwarden-remaining"], "2");
    assert!(
        r.headers().get("x-ratelimit-limit").is_none(),
        "no rate limit, no header"
    );
    let body = r.text().await.unwrap();
    assert!(
        body.starts_with(&format!("upstream ok token={id} ")) && body.ends_with("role=engineer"),
        "{body}"
    );
    // Token in the query string, as the seeds allow.
    let r = client
        .get(format!("{base}/convert?Token={t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // No token, a wrong token: 401 and the upstream is never reached.
    let r = client.get(format!("{base}/convert")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(!r.text().await.unwrap().contains("upstream ok"));
    let r = client
        .get(format!("{base}/convert"))
        .bearer_auth("tw_nothing")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A client address outside the token's allowed IPs: nginx passes the real one, 403.
    let (_, far) = app
        .token(
            &secret,
            json!({"name": "far", "allowed_ips": ["203.0.113.9"]}),
        )
        .await;
    let r = client
        .get(format!("{base}/convert"))
        .bearer_auth(&far)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The last use, then 429 with the snippet's mapping.
    assert_eq!(
        client
            .get(format!("{base}/x"))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = client
        .get(format!("{base}/x"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let stored = app.settled().await.token(&id).await.unwrap().unwrap();
    assert_eq!((stored.remaining, stored.calls_total), (Some(0), 3));
    // The account secret with its ApiKey, in the seeds' Basic form and the standard one.
    let (_, acct) = app.get(&format!("/v1/tokens/{id}"), &secret).await;
    let acct = acct["token"]["account_id"].as_str().unwrap().to_string();
    let (_, a) = app.get(&format!("/v1/accounts/{acct}"), &secret).await;
    let key = a["account"]["api_key"].as_str().unwrap().to_string();
    let standard = base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"));
    for authorization in [format!("Basic {key} {secret}"), format!("Basic {standard}")] {
        let r = client
            .get(format!("{base}/convert"))
            .header("Authorization", &authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{authorization}");
        let body = r.text().await.unwrap();
        assert!(
            body.starts_with(&format!(
                "upstream ok token={key} account={acct} role=admin"
            )),
            "{body}"
        );
    }
    // A rate limit: its standing on the way through, then 429 with Retry-After.
    let (_, limited) = app
        .token(
            &secret,
            json!({"name": "limited", "rate_limit": {"limit": 2, "window_seconds": 60}}),
        )
        .await;
    let window_end = (t0() + chrono::TimeDelta::seconds(60))
        .timestamp()
        .to_string();
    let limited_call = || {
        client
            .get(format!("{base}/convert"))
            .bearer_auth(&limited)
            .send()
    };
    for left in ["1", "0"] {
        let r = limited_call().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit"], "2");
        assert_eq!(r.headers()["x-ratelimit-remaining"], left);
        assert_eq!(r.headers()["x-ratelimit-reset"], window_end.as_str());
    }
    let r = limited_call().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "60");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert!(!r.text().await.unwrap().contains("upstream ok"));

    let _ = Command::new("kill")
        .arg("-QUIT")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}
