//! The admin port's accept loop: plain HTTP or TLS (rustls), HTTP/1 and HTTP/2, a deadline on
//! reading request headers (slow clients do not hold connections), and a graceful stop that
//! waits for in-flight requests only up to a bound.

use anyhow::Context;
use axum::{extract::ConnectInfo, Router};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How connections are accepted and served.
#[derive(Clone)]
pub struct ServeOptions {
    /// TLS on the admin port, if configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Longest wait for a request's headers (and for a TLS handshake).
    pub header_timeout: Duration,
    /// Longest wait for in-flight requests after the stop signal.
    pub grace: Duration,
}

/// Builds the TLS acceptor from PEM certificate chain and key files.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate in it",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("{}: not a PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until `stop` turns true, then lets in-flight requests finish
/// for at most `opts.grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    // One protocol per connection, chosen up front: HTTP/1.1 on plain connections, and what
    // ALPN agreed on TLS ones. (Sniffing the protocol from the first bytes would wait on a
    // silent client with no deadline.)
    let h1 = {
        let mut b = Builder::new(TokioExecutor::new()).http1_only();
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_timeout);
        Arc::new(b)
    };
    let h2 = {
        let mut b = Builder::new(TokioExecutor::new()).http2_only();
        b.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(opts.header_timeout)
            .keep_alive_timeout(opts.header_timeout);
        Arc::new(b)
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let (tcp, remote) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let svc =
            router
                .clone()
                .map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(remote));
                    req
                });
        let svc = TowerToHyperService::new(svc);
        let (h1, h2) = (h1.clone(), h2.clone());
        let watcher = graceful.watcher();
        let tls = opts.tls.clone();
        let handshake = opts.header_timeout;
        conns.spawn(async move {
            match tls {
                None => {
                    let conn = h1.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        h2
                    } else {
                        h1
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(opts.grace) => {
            tracing::warn!(grace_s = opts.grace.as_secs(), "requests still in flight after the grace period; closing them");
        }
    }
    // Whatever is left is cut off now: each connection holds the router (and with it the
    // usage meter, whose writer ends only when the last handle is gone).
    conns.abort_all();
    while conns.join_next().await.is_some() {}
}

/// The address a `SocketAddr` client sees us at, for the start-up self-check.
pub fn probe_addr(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], bound.port()))
        }
        ip if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, bound.port()))
        }
        _ => bound,
    }
}
