//! The admin port's accept loop: plain HTTP or TLS (rustls), HTTP/1 and HTTP/2, a deadline on
//! reading request headers from the moment a connection is accepted (silent and slow clients do
//! not hold connections), a bound on open connections that closes the longest-idle one first,
//! and a graceful stop that waits for in-flight requests only up to a bound.

use anyhow::Context;
use axum::{extract::ConnectInfo, Router};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, sync::Notify};
use tower::ServiceExt;

/// How connections are accepted and served.
#[derive(Clone)]
pub struct ServeOptions {
    /// TLS on the admin port, if configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Longest wait for a request's headers, counted from the accept (or from the end of the
    /// previous request), and for a TLS handshake.
    pub header_timeout: Duration,
    /// Longest wait for in-flight requests after the stop signal.
    pub grace: Duration,
    /// Most connections open at once (`connection_cap` lowers it to the open-file limit).
    pub max_connections: usize,
}

/// Idle client connections closed to make room for a new one (`server.max_connections`, or the
/// open-file limit reached). Named here, not in `crate::metrics`, so the accept loop depends on
/// nothing of the daemon's.
const CONNECTIONS_SHED: &str = "tokenwarden_connections_shed_total";
/// New client connections closed at once because every open one was busy.
const CONNECTIONS_REFUSED: &str = "tokenwarden_connections_refused_total";

/// File descriptors kept for everything but client connections: the store's pool, the usage
/// log, the outbox, the listener itself, a margin.
const RESERVED_FDS: u64 = 64;

/// The most connections to keep open: `configured`, or fewer when the process's open-file
/// limit would run out first (with `pool` store connections and `RESERVED_FDS` kept back).
/// Raises the soft limit to the hard one first, as most servers do.
pub fn connection_cap(configured: usize, pool: u32) -> usize {
    let reserved = RESERVED_FDS + u64::from(pool);
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        let soft = unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return configured;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
            lim.rlim_cur
        };
        let room = usize::try_from(soft.saturating_sub(reserved)).unwrap_or(usize::MAX);
        configured.min(room.max(8))
    }
    #[cfg(not(unix))]
    {
        let _ = reserved;
        configured
    }
}

/// One open connection as the accept loop sees it.
struct Conn {
    /// Requests being answered on it now.
    busy: AtomicUsize,
    /// When it last became idle (its accept, or the end of its last request), in milliseconds
    /// since the server started.
    idle_since: AtomicU64,
    /// Closes it.
    shed: Notify,
}

/// The open connections, for shedding the one idle the longest when the cap is reached.
#[derive(Default)]
struct Conns {
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection idle the longest, if any is idle; true if one was.
    fn shed_oldest_idle(&self) -> bool {
        let mut open = self.lock();
        let oldest = open
            .iter()
            .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.idle_since.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| open.remove(&id)) {
            Some(c) => {
                c.shed.notify_one();
                metrics::counter!(CONNECTIONS_SHED).increment(1);
                true
            }
            None => false,
        }
    }
}

/// Marks a connection busy while one of its requests is answered.
struct Busy {
    conn: Arc<Conn>,
    started: Instant,
}

impl Busy {
    fn new(conn: Arc<Conn>, started: Instant) -> Busy {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy { conn, started }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.conn.idle_since.store(now, Ordering::Release);
        self.conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
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
/// for at most `opts.grace`. At most `opts.max_connections` are open at once: past it, the
/// connection idle the longest is closed for the new one (or the new one, when none is idle);
/// when the process runs out of file descriptors, the same frees one.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    opts: ServeOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    // One protocol per connection, chosen up front: HTTP/1.1 on plain connections, and what
    // ALPN agreed on TLS ones. (Sniffing the protocol from the first bytes would wait on a
    // silent client with no deadline; so does hyper-util's `serve_connection_with_upgrades`,
    // even for one protocol, which is why it is not used.) The header deadline runs from the
    // start of the connection.
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
    let started = Instant::now();
    let open = Arc::new(Conns::default());
    let mut next_id = 0u64;
    let mut last_warning: Option<Instant> = None;
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let (tcp, remote) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors: close the connection idle the longest to free one;
                // with none idle, wait a moment rather than spin. Warned once a minute at most.
                let freed = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                    && open.shed_oldest_idle();
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(error = %e, freed, "accept failed");
                    last_warning = Some(Instant::now());
                }
                let pause = if freed { 1 } else { 50 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                continue;
            }
        };
        if open.lock().len() >= opts.max_connections && !open.shed_oldest_idle() {
            // Every open connection is in the middle of a request: this one waits no turn.
            metrics::counter!(CONNECTIONS_REFUSED).increment(1);
            drop(tcp);
            continue;
        }
        let _ = tcp.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(started.elapsed().as_millis() as u64),
            shed: Notify::new(),
        });
        open.lock().insert(id, conn.clone());
        let svc = TowerToHyperService::new(router.clone().map_request(
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(remote));
                req
            },
        ));
        let svc = {
            let conn = conn.clone();
            hyper::service::service_fn(move |req| {
                let busy = Busy::new(conn.clone(), started);
                let answer = hyper::service::Service::call(&svc, req);
                async move {
                    let r = answer.await;
                    drop(busy);
                    r
                }
            })
        };
        let (h1, h2) = (h1.clone(), h2.clone());
        let watcher = graceful.watcher();
        let tls = opts.tls.clone();
        let handshake = opts.header_timeout;
        let open = open.clone();
        tasks.spawn(async move {
            let served = async move {
                match tls {
                    None => {
                        let conn = h1.serve_connection(TokioIo::new(tcp), svc);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
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
                        let conn = builder.serve_connection(TokioIo::new(stream), svc);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
            };
            tokio::select! {
                _ = served => {}
                // Shed for a newer connection: dropping it closes the socket.
                _ = conn.shed.notified() => {}
            }
            open.lock().remove(&id);
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
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
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
