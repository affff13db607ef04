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
//! - the body limit (`DefaultBodyLimit`, [`extract::MAX_BODY`]) makes bodies over 1 MiB a 413,
//!   and a body that does not arrive whole within `--body-read-timeout` is a 408;
//! - routes that touch the store ([`Route::deadline`]) answer 503 after `--handling-deadline`
//!   while their work goes on in the background.
//!
//! [`server`] accepts the connections (TLS by [`tls`], deadlines by [`conn_clock`], a cap on
//! open connections) and stops gracefully; [`reload`] reads the token and the certificate
//! again when their files change.
//!
//! Errors are one shape, `{"error": "..."}` naming the problem ([`ApiError`]): 400 bad
//! input, 401 without the token, 403 a target outside the allowlist, 404 unknown (routes
//! too), 408 a body too slow, 409 a name already recording, 413 a body too large, 503 past
//! the handling deadline.

pub mod auth;
pub mod conn_clock;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod openapi;
pub mod recordings;
pub mod reload;
pub mod replay_call;
pub mod replays;
pub mod server;
pub mod tls;
mod watched_io;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::sync::lock;

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use axum::{Extension, Router};
use tower_http::normalize_path::NormalizePath;

pub use auth::{ReloadingToken, fixed_token, open_token_file};
pub use error::ApiError;
pub use metrics::MetricsSnapshot;
pub use server::ServerLimits;

use crate::store::StoreConfig;

/// Finished replays and recordings kept for GET and /metrics; older ones are forgotten.
const KEEP_FINISHED: usize = 200;

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// Bearer token required on every call but /healthz (None: loopback only).
    pub token: Option<Arc<ReloadingToken>>,
    /// Certificate and key for TLS (None: plain HTTP, loopback only unless
    /// `insecure_plain_http`).
    pub tls: Option<Arc<tls::ReloadingCert>>,
    /// Plain HTTP beyond loopback, asked for explicitly.
    pub insecure_plain_http: bool,
    /// Timeouts and caps of the server.
    pub limits: ServerLimits,
    /// Default store for recordings and replays.
    pub store: StoreConfig,
    /// When not empty, replays may only target these host:port pairs.
    pub allow_targets: Vec<String>,
    /// Where replays send their requests (None: on the API's own runtime).
    pub replay_runtime: Option<tokio::runtime::Handle>,
}

/// Shared state of the agent: what every handler reads through `State`.
pub struct Agent {
    config: AgentConfig,
    recordings: recordings::Recordings,
    replays: replays::Replays,
    http_requests: metrics::HttpRequests,
    server: Arc<server::ServerCounters>,
}

impl Agent {
    /// A fresh agent.
    pub fn new(config: AgentConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            recordings: Default::default(),
            replays: Default::default(),
            http_requests: Default::default(),
            server: Default::default(),
        })
    }

    /// The counters /metrics shows, read now (replays that ended are settled first).
    pub async fn metrics_snapshot(&self) -> MetricsSnapshot {
        let replays = self.replays.counters().await;
        MetricsSnapshot {
            recordings: self.recordings.counters(),
            replays,
            http_requests: self.http_requests.snapshot(),
            server: self.server.snapshot(),
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
    /// The call touches the store (or the kernel): it answers 503 past the handling deadline.
    pub deadline: bool,
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
        deadline: false,
        handler: |m| on(m, healthz),
    },
    Route {
        method: Method::GET,
        path: "/metrics",
        access: Access::Token,
        deadline: false,
        handler: |m| on(m, metrics::serve),
    },
    Route {
        method: Method::GET,
        path: "/v1/openapi.json",
        access: Access::Token,
        deadline: false,
        handler: |m| on(m, openapi::serve),
    },
    Route {
        method: Method::POST,
        path: "/v1/recordings",
        access: Access::Token,
        deadline: true,
        handler: |m| on(m, recordings::start),
    },
    Route {
        method: Method::GET,
        path: "/v1/recordings",
        access: Access::Token,
        deadline: true,
        handler: |m| on(m, recordings::list),
    },
    Route {
        method: Method::GET,
        path: "/v1/recordings/{name}",
        access: Access::Token,
        deadline: true,
        handler: |m| on(m, recordings::get),
    },
    Route {
        method: Method::POST,
        path: "/v1/recordings/{name}/stop",
        access: Access::Token,
        deadline: true,
        handler: |m| on(m, recordings::stop),
    },
    Route {
        method: Method::POST,
        path: "/v1/replays",
        access: Access::Token,
        deadline: true,
        handler: |m| on(m, replays::start),
    },
    Route {
        method: Method::GET,
        path: "/v1/replays",
        access: Access::Token,
        deadline: false,
        handler: |m| on(m, replays::list),
    },
    Route {
        method: Method::GET,
        path: "/v1/replays/{id}",
        access: Access::Token,
        deadline: false,
        handler: |m| on(m, replays::get),
    },
    Route {
        method: Method::GET,
        path: "/v1/replays/{id}/report",
        access: Access::Token,
        deadline: false,
        handler: |m| on(m, replays::report),
    },
    Route {
        method: Method::DELETE,
        path: "/v1/replays/{id}",
        access: Access::Token,
        deadline: false,
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
        let mut handler = (route.handler)(filter);
        if route.deadline {
            handler = handler.layer(from_fn_with_state(agent.clone(), handling_deadline));
        }
        router = router.route(route.path, handler);
    }
    let open = ROUTES
        .iter()
        .filter(|r| r.access == Access::Open)
        .map(|r| (r.method.clone(), r.path));
    let gate = auth::Gate::new(agent.config.token.clone(), open);
    let body_deadline = extract::BodyDeadline {
        limit: agent.config.limits.body_read_timeout,
        counters: agent.server.clone(),
    };
    let router = router
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::no_route)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY))
        .layer(Extension(body_deadline))
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

/// The handling deadline of calls that touch the store: the call runs in a task of its own,
/// so a call that is answered 503 still finishes (a recording still starts or stops).
async fn handling_deadline(State(agent): State<Arc<Agent>>, req: Request, next: Next) -> Response {
    let limit = agent.config.limits.handling_deadline;
    let what = format!("{} {}", req.method(), req.uri().path());
    match tokio::time::timeout(limit, tokio::spawn(next.run(req))).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => ApiError::Internal(format!("{what}: {e}")).into_response(),
        Err(_) => {
            agent.server.timed_out(server::TimeoutKind::Handling);
            ApiError::Unavailable(format!(
                "{what} took longer than {} (--handling-deadline); it goes on in the background, \
                 look again later",
                humantime::format_duration(limit)
            ))
            .into_response()
        }
    }
}

/// Refuses what would expose the API: beyond loopback, the token is required, and TLS
/// unless plain HTTP is asked for by name.
fn check_exposure(config: &AgentConfig) -> anyhow::Result<()> {
    let beyond_loopback = !config.listen.ip().is_loopback();
    if beyond_loopback && config.token.is_none() {
        anyhow::bail!(
            "listening on {} (beyond loopback) needs --token-file: a bearer token every call must carry",
            config.listen
        );
    }
    if beyond_loopback && config.tls.is_none() && !config.insecure_plain_http {
        anyhow::bail!(
            "listening on {} (beyond loopback) needs --tls-cert and --tls-key, or \
             --insecure-plain-http to send the token in clear text",
            config.listen
        );
    }
    Ok(())
}

/// The line that says the agent is up, and what plain HTTP exposes.
fn listening_line(agent: &Agent, addr: SocketAddr) -> String {
    let config = &agent.config;
    let store = config.store.describe();
    if config.tls.is_some() {
        return format!(
            "agent listening on https://{addr} (store: {store}); stop with Ctrl-C or SIGTERM"
        );
    }
    let exposure = if addr.ip().is_loopback() {
        String::new()
    } else {
        " WITHOUT TLS (--insecure-plain-http): the bearer token, recordings' names and \
         every answer cross the network in clear text, and anyone on the path who reads the \
         token can record and replay traffic on this node;"
            .to_string()
    };
    format!(
        "agent listening on http://{addr}{exposure} (store: {store}); stop with Ctrl-C or SIGTERM"
    )
}

/// Every second, reads the token and the certificate again if their files changed.
fn watch_files(agent: &Arc<Agent>) {
    let token = agent
        .config
        .token
        .clone()
        .map(|t| t as Arc<dyn reload::Watched>);
    let tls = agent
        .config
        .tls
        .clone()
        .map(|t| t as Arc<dyn reload::Watched>);
    let watched: Vec<Arc<dyn reload::Watched>> = token.into_iter().chain(tls).collect();
    if watched.is_empty() {
        return;
    }
    let counters = agent.server.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(reload::CHECK_EVERY).await;
            for w in &watched {
                let Some(result) = w.check_files() else {
                    continue;
                };
                let what = w.what();
                counters.reloaded(what, result.is_ok());
                match result {
                    Ok(()) => eprintln!("agent: {what} files changed; now in use"),
                    Err(e) => log::warn!("{e:#}; still using the {what} loaded before"),
                }
            }
        }
    });
}

/// Serves the API until SIGINT/SIGTERM; then stops accepting, lets calls in progress answer
/// (up to `--drain-timeout`), stops what runs ([`Agent::shutdown`]) and returns.
pub async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    check_exposure(&config)?;
    let tls = config
        .tls
        .clone()
        .map(tls::acceptor)
        .transpose()
        .context("setting up TLS")?;
    let listener = server::bind(config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let signalled = shutdown_signal()?;
    let agent = Agent::new(config);
    let addr = listener.local_addr().unwrap_or(agent.config.listen);
    eprintln!("{}", listening_line(&agent, addr));
    watch_files(&agent);
    let on_signal = async move {
        signalled.await;
        eprintln!("agent stopping: no new connections; ending calls, recordings and replays");
    };
    let started = std::time::Instant::now();
    server::run(
        listener,
        app(agent.clone()),
        tls,
        agent.config.limits,
        agent.server.clone(),
        on_signal,
    )
    .await;
    agent.shutdown().await;
    eprintln!("agent stopped in {:.2?}", started.elapsed());
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
