//! The agent's accept loop: each connection is served by hyper's HTTP/1 (behind rustls when
//! the agent has a certificate) in a task of its own, under the deadlines of
//! [`super::conn_clock`] and a cap on how many are open at once.
//!
//! - Beyond `max_connections` open connections, a new one is accepted and closed at once,
//!   before anything is read or written, and counted (`refused`); the ones already open go
//!   on, and new ones are served again as soon as some close. Refusing rather than queueing
//!   keeps every open connection's deadlines true and tells a client at once.
//! - A connection that misses its head or idle deadline is closed and counted by kind; a TLS
//!   handshake has the header deadline too.
//! - On stop, the listener closes first (nothing new is accepted), every connection is
//!   asked to end after its request in progress (idle ones end at once), and the loop
//!   returns once all have ended or `drain` has passed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tower_http::normalize_path::NormalizePath;

use super::conn_clock::{ConnTimeout, ConnTimeouts};
use super::watched_io::{SharedClock, WatchedIo};

/// The API server's timeouts and caps (`capture agent --help` has the flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// A request head must arrive whole within this (from accept, or from its first byte).
    pub header_read_timeout: Duration,
    /// A kept-alive connection may be silent between requests this long.
    pub idle_timeout: Duration,
    /// A request body must arrive whole within this once the handler reads it (408).
    pub body_read_timeout: Duration,
    /// Calls that touch the store answer 503 after this; the work goes on in the background.
    pub handling_deadline: Duration,
    /// Open connections beyond which new ones are refused.
    pub max_connections: usize,
    /// On SIGTERM, how long calls in progress may take before the agent stops regardless.
    pub drain_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(10),
            handling_deadline: Duration::from_secs(30),
            max_connections: 8192,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl ServerLimits {
    fn conn_timeouts(&self) -> ConnTimeouts {
        ConnTimeouts {
            header_read: self.header_read_timeout,
            idle: self.idle_timeout,
        }
    }
}

/// Why the server gave up on a connection or a call (a label of
/// `capture_agent_timeouts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    HeaderRead,
    Idle,
    TlsHandshake,
    BodyRead,
    Handling,
}

impl TimeoutKind {
    pub const ALL: [TimeoutKind; 5] = [
        Self::HeaderRead,
        Self::Idle,
        Self::TlsHandshake,
        Self::BodyRead,
        Self::Handling,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::HeaderRead => "header_read",
            Self::Idle => "idle",
            Self::TlsHandshake => "tls_handshake",
            Self::BodyRead => "body_read",
            Self::Handling => "handling",
        }
    }
}

impl From<ConnTimeout> for TimeoutKind {
    fn from(t: ConnTimeout) -> Self {
        match t {
            ConnTimeout::HeaderRead => Self::HeaderRead,
            ConnTimeout::Idle => Self::Idle,
        }
    }
}

/// What the server counts, for /metrics.
#[derive(Debug, Default)]
pub struct ServerCounters {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    tls_failures: AtomicU64,
    timeouts: [AtomicU64; 5],
    /// (token ok, token failed, tls ok, tls failed)
    reloads: [AtomicU64; 4],
}

/// The server's counters read at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerSnapshot {
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub tls_handshake_failures: u64,
    pub timeouts: Vec<(&'static str, u64)>,
    /// (file, outcome, count)
    pub reloads: Vec<(&'static str, &'static str, u64)>,
}

impl ServerCounters {
    /// One more timeout of `kind`.
    pub fn timed_out(&self, kind: TimeoutKind) {
        let i = TimeoutKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.timeouts[i].fetch_add(1, Relaxed);
    }

    /// One more reload of `what` (`token` or `tls`), worked or not.
    pub fn reloaded(&self, what: &str, ok: bool) {
        let i = usize::from(what == "tls") * 2 + usize::from(!ok);
        self.reloads[i].fetch_add(1, Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> ServerSnapshot {
        ServerSnapshot {
            connections_open: self.open.load(Relaxed),
            connections_accepted: self.accepted.load(Relaxed),
            connections_refused: self.refused.load(Relaxed),
            tls_handshake_failures: self.tls_failures.load(Relaxed),
            timeouts: TimeoutKind::ALL
                .iter()
                .zip(&self.timeouts)
                .map(|(k, n)| (k.name(), n.load(Relaxed)))
                .collect(),
            reloads: [
                ("token", "ok"),
                ("token", "failed"),
                ("tls", "ok"),
                ("tls", "failed"),
            ]
            .iter()
            .zip(&self.reloads)
            .map(|((w, o), n)| (*w, *o, n.load(Relaxed)))
            .collect(),
        }
    }
}

/// Connections the kernel holds for `accept` (capped by `net.core.somaxconn`). Tokio's
/// default of 128 drops the SYNs of a burst of clients (a probe among them), which retry a
/// second later; thousands wait here instead and are accepted in order.
const BACKLOG: u32 = 4096;

/// A listener on `addr` with a backlog of [`BACKLOG`].
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What every connection task shares.
#[derive(Clone)]
struct Shared {
    app: NormalizePath<Router>,
    tls: Option<TlsAcceptor>,
    limits: ServerLimits,
    counters: Arc<ServerCounters>,
    stopping: watch::Receiver<bool>,
}

/// Serves `app` on `listener` until `stop` resolves, then drains (see the module doc).
pub async fn run(
    listener: TcpListener,
    app: NormalizePath<Router>,
    tls: Option<TlsAcceptor>,
    limits: ServerLimits,
    counters: Arc<ServerCounters>,
    stop: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stopping) = watch::channel(false);
    let shared = Shared {
        app,
        tls,
        limits,
        counters: counters.clone(),
        stopping,
    };
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin; connections close.
                    log::warn!("accepting an API connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            counters.refused.fetch_add(1, Relaxed);
            drop(tcp);
            continue;
        };
        counters.accepted.fetch_add(1, Relaxed);
        counters.open.fetch_add(1, Relaxed);
        let shared = shared.clone();
        tokio::spawn(async move {
            serve_connection(tcp, &shared).await;
            shared.counters.open.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        log::warn!(
            "{} API connections still open {:?} after the signal; not waiting for them",
            counters.open.load(Relaxed),
            limits.drain_timeout
        );
    }
}

/// One connection: the TLS handshake if any, then HTTP/1 until it ends or a deadline passes.
async fn serve_connection(tcp: TcpStream, shared: &Shared) {
    let _ = tcp.set_nodelay(true);
    let clock = Arc::new(SharedClock::new(Instant::now()));
    let Some(acceptor) = &shared.tls else {
        return serve_http(WatchedIo::new(tcp, clock.clone()), clock, shared).await;
    };
    let mut stopping = shared.stopping.clone();
    let handshake = tokio::time::timeout(
        shared.limits.header_read_timeout,
        acceptor.accept(WatchedIo::new(tcp, clock.clone())),
    );
    tokio::select! {
        done = handshake => match done {
            Ok(Ok(tls)) => serve_http(tls, clock, shared).await,
            Ok(Err(e)) => {
                shared.counters.tls_failures.fetch_add(1, Relaxed);
                log::debug!("TLS handshake failed: {e}");
            }
            Err(_) => shared.counters.timed_out(TimeoutKind::TlsHandshake),
        },
        _ = stopped(&mut stopping) => {}
    }
}

/// HTTP/1 on `io` until the client or the server ends it, under the connection deadlines.
async fn serve_http<IO>(io: IO, clock: Arc<SharedClock>, shared: &Shared)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let (clock, app) = (clock.clone(), shared.app.clone());
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (clock, app) = (clock.clone(), app.clone());
            clock.request_started();
            async move {
                let answer = app.oneshot(req.map(Body::new)).await;
                clock.answered(Instant::now());
                answer
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let limits = shared.limits.conn_timeouts();
    let mut stopping = shared.stopping.clone();
    let mut asked_to_end = false;
    loop {
        let deadline = clock.deadline(&limits).map(|(at, _)| at);
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    log::debug!("API connection: {e}");
                }
                return;
            }
            _ = sleep => {
                if let Some(why) = clock.expired(&limits, Instant::now()) {
                    shared.counters.timed_out(why.into());
                    return;
                }
            }
            // The deadline moved earlier: read it again.
            _ = clock.moved() => {}
            _ = stopped(&mut stopping), if !asked_to_end => {
                asked_to_end = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Resolves once the server stops (or is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}
