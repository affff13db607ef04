//! `capture agent`: the HTTP control API a load-testing platform drives, one agent per node.
//! Recordings and replays are the same library objects the CLI runs
//! ([`crate::recorder::Recorder`], [`crate::replay::engine::Replay`]); this module routes,
//! validates and reports.
//!
//! The routes are one table, [`ROUTES`]: the router is built from it, the token layer reads
//! from it which routes are open, and the OpenAPI document ([`openapi`], served at
//! `/v1/openapi.json`) takes each operation's security from it; tests check that the document
//! describes exactly these routes. Around every route, outermost first:
//! - the call counter (`metrics::count_requests`) counts each answer by status;
//! - the token layer ([`auth::require_token`]) answers 401 unless the call carries the
//!   bearer token (the readiness probe is open);
//! - the body limit (`DefaultBodyLimit`, [`extract::MAX_BODY`]) makes bodies over 1 MiB a 413.
//!
//! Errors are one shape, `{"error": "..."}` naming the problem ([`ApiError`]): 400 bad
//! input, 401 without the token, 403 a target outside the allowlist, 404 unknown (routes
//! too), 409 a name already recording, 413 a body too large.

pub mod auth;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod recordings;
pub mod replays;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::sync::lock;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{Method, header};
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Router, ServiceExt};
use tower_http::normalize_path::NormalizePath;

pub use error::ApiError;
pub use metrics::MetricsSnapshot;

use crate::store::StoreConfig;

/// Finished replays and recordings kept for GET and /metrics; older ones are forgotten.
const KEEP_FINISHED: usize = 200;

/// How long API calls in progress at shutdown may take to answer before the agent stops
/// its recordings and replays regardless (well within Kubernetes' 30 s grace period).
const DRAIN: Duration = Duration::from_secs(5);

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// Bearer token required on every call but /healthz (None: loopback only).
    pub token: Option<String>,
    /// Default store for recordings and replays.
    pub store: StoreConfig,
    /// When not empty, replays may only target these host:port pairs.
    pub allow_targets: Vec<String>,
}

/// Shared state of the agent: what every handler reads through `State`.
pub struct Agent {
    config: AgentConfig,
    recordings: recordings::Recordings,
    replays: replays::Replays,
    http_requests: metrics::HttpRequests,
}

impl Agent {
    /// A fresh agent.
    pub fn new(config: AgentConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            recordings: Default::default(),
            replays: Default::default(),
            http_requests: Default::default(),
        })
    }

    /// The counters /metrics shows, read now (replays that ended are settled first).
    pub async fn metrics_snapshot(&self) -> MetricsSnapshot {
        let replays = self.replays.counters().await;
        MetricsSnapshot {
            recordings: self.recordings.counters(),
            replays,
            http_requests: self.http_requests.snapshot(),
        }
    }

    /// Stops every recording (so their catalog entries close) and replay, for shutdown.
    pub async fn shutdown(&self) {
        self.recordings.shutdown().await;
        self.replays.shutdown().await;
    }
}

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Without the token: the readiness probe, which kubelet calls without credentials.
    Open,
    /// With `Authorization: Bearer TOKEN` when the agent has a token.
    Token,
}

/// One route the API serves. [`ROUTES`] is the only list of them: the router is built from
/// it, the token layer learns the open routes from it, tests compare the OpenAPI document
/// with it.
pub struct Route {
    /// One method per entry; a path with several methods has several entries.
    pub method: Method,
    /// In the router's syntax, which is OpenAPI's: `/v1/replays/{id}`.
    pub path: &'static str,
    pub access: Access,
    /// The handler on `method`, as axum routes it.
    handler: fn(MethodFilter) -> MethodRouter<Arc<Agent>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} ({:?})", self.method, self.path, self.access)
    }
}

/// Every route the agent serves.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/healthz",
        access: Access::Open,
        handler: |m| on(m, healthz),
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        access: Access::Token,
        handler: |m| on(m, metrics::serve),
    },
    Route {
        method: Method::GET,
        path: "/v1/openapi.json",
        access: Access::Token,
        handler: |m| on(m, openapi::serve),
    },
    Route {
        method: Method::POST,
        path: "/v1/recordings",
        access: Access::Token,
        handler: |m| on(m, recordings::start),
    },
    Route {
        method: Method::GET,
        path: "/v1/recordings",
        access: Access::Token,
        handler: |m| on(m, recordings::list),
    },
    Route {
        method: Method::GET,
        path: "/v1/recordings/{name}",
        access: Access::Token,
        handler: |m| on(m, recordings::get),
    },
    Route {
        method: Method::POST,
        path: "/v1/recordings/{name}/stop",
        access: Access::Token,
        handler: |m| on(m, recordings::stop),
    },
    Route {
        method: Method::POST,
        path: "/v1/replays",
        access: Access::Token,
        handler: |m| on(m, replays::start),
    },
    Route {
        method: Method::GET,
        path: "/v1/replays",
        access: Access::Token,
        handler: |m| on(m, replays::list),
    },
    Route {
        method: Method::GET,
        path: "/v1/replays/{id}",
        access: Access::Token,
        handler: |m| on(m, replays::get),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/replays/{id}",
        access: Access::Token,
        handler: |m| on(m, replays::stop),
    },
];

/// The API as a service: [`ROUTES`] with their layers, behind trailing-slash trimming
/// (`/v1/replays/` is `/v1/replays`).
pub fn app(agent: Arc<Agent>) -> NormalizePath<Router> {
    let mut router = Router::new();
    for route in ROUTES {
        let filter = MethodFilter::try_from(route.method.clone())
            .expect("ROUTES holds standard methods only");
        router = router.route(route.path, (route.handler)(filter));
    }
    let open = ROUTES
        .iter()
        .filter(|r| r.access == Access::Open)
        .map(|r| (r.method.clone(), r.path));
    let gate = auth::Gate::new(agent.config.token.as_deref(), open);
    let router = router
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::no_route)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .layer(from_fn_with_state(gate, auth::require_token))
        .layer(from_fn_with_state(agent.clone(), metrics::count_requests))
        .with_state(agent);
    NormalizePath::trim_trailing_slash(router)
}

/// Readiness
///
/// Answers `ok` once the API listens; says nothing about whether capturing works on this
/// node (start a short recording for that). Needs no token.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses((status = 200, description = "The API listens", body = String, content_type = "text/plain"))
)]
async fn healthz() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "text/plain")], "ok\n")
}

/// Forgets the oldest finished entries beyond [`KEEP_FINISHED`].
fn forget_oldest<T>(map: &mut BTreeMap<String, T>, finished: impl Fn(&T) -> bool) {
    let done: Vec<String> = map
        .iter()
        .filter(|(_, v)| finished(v))
        .map(|(k, _)| k.clone())
        .collect();
    for k in done.iter().take(done.len().saturating_sub(KEEP_FINISHED)) {
        map.remove(k);
    }
}

/// Reads a token file (trimmed); empty files are refused.
pub fn read_token(path: &PathBuf) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading --token-file {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        anyhow::bail!(
            "--token-file {} is empty; put a long random token in it",
            path.display()
        );
    }
    Ok(token)
}

/// Serves the API until SIGINT/SIGTERM; then lets calls in progress answer (up to
/// `DRAIN`, 5 s), stops what runs ([`Agent::shutdown`]) and returns.
pub async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    if config.token.is_none() && !config.listen.ip().is_loopback() {
        anyhow::bail!(
            "listening on {} (beyond loopback) needs --token-file: a bearer token every call must carry",
            config.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let signalled = shutdown_signal()?;
    let agent = Agent::new(config);
    eprintln!(
        "agent listening on http://{} (store: {}); stop with Ctrl-C or SIGTERM",
        listener.local_addr().unwrap_or(agent.config.listen),
        agent.config.store.describe()
    );
    let stopping = Arc::new(tokio::sync::Notify::new());
    let on_signal = {
        let stopping = stopping.clone();
        async move {
            signalled.await;
            eprintln!("agent stopping: ending recordings and replays");
            stopping.notify_one();
        }
    };
    let service = ServiceExt::<Request>::into_make_service(app(agent.clone()));
    let server = axum::serve(listener, service).with_graceful_shutdown(on_signal);
    tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served.context("serving the API")?,
        _ = async { stopping.notified().await; tokio::time::sleep(DRAIN).await } => {
            log::warn!("API calls still open {DRAIN:?} after the signal; not waiting for them");
        }
    }
    agent.shutdown().await;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM (the handlers are installed now, so a signal
/// that comes early is not lost).
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
    })
}
