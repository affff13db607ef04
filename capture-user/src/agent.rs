//! `capture agent`: the HTTP control API a load-testing platform drives, one agent per node.
//! Recordings and replays are the same library objects the CLI runs ([`Recorder`],
//! [`crate::replay::engine::Replay`]); this module only routes, validates and reports.
//!
//! Errors are JSON `{"error": "..."}` naming the problem: 400 bad input, 401 without the token,
//! 403 a target outside the allowlist, 404 unknown, 409 a name already recording.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::live::{AttachMode, CaptureConfig, DEFAULT_RING_BYTES, LoaderError, parse_ring_size};
use crate::recorder::{Recorder, RecorderConfig, RecorderStatus};
use crate::replay::engine::Replay;
use crate::replay::load::{ReplayOptions, ReplaySource, load_replay, pace_of, rewrites_from};
use crate::replay::report::ReplayReport;
use crate::replay::select::{FilterRule, Filters};
use crate::replay::target::Target;
use crate::store::{Recording, StoreConfig, StoreError};

/// Largest request body the API reads.
const MAX_BODY: usize = 1 << 20;
/// Finished replays and recordings kept for GET and /metrics; older ones are forgotten.
const KEEP_FINISHED: usize = 200;

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

/// An API error: status and message.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
    fn not_found(msg: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, msg.into())
    }
}

impl From<anyhow::Error> for ApiError {
    /// Maps library errors to statuses by what they are.
    fn from(e: anyhow::Error) -> Self {
        let status = if let Some(s) = e.downcast_ref::<StoreError>() {
            match s {
                StoreError::NotFound(_) => StatusCode::NOT_FOUND,
                StoreError::Exists(_) => StatusCode::CONFLICT,
                StoreError::BadName(_) | StoreError::JoinUnsupported(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            }
        } else if let Some(l) = e.downcast_ref::<LoaderError>() {
            if l.is_bad_input() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        } else if e
            .downcast_ref::<crate::replay::select::SelectError>()
            .is_some()
            || e.downcast_ref::<crate::replay::schedule::ScheduleError>()
                .is_some()
        {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Self(status, format!("{e:#}"))
    }
}

type ApiResult = Result<(StatusCode, serde_json::Value), ApiError>;

/// A recording this agent runs or ran.
struct RecordingEntry {
    recorder: Option<Recorder>,
    /// Counters as of the last look (final once stopped).
    status: RecorderStatus,
    /// The catalog entry once stopped.
    finished: Option<Recording>,
    error: Option<String>,
}

/// A replay this agent runs or ran.
struct ReplayEntry {
    recording: String,
    target: String,
    replay: Option<Replay>,
    report: Option<ReplayReport>,
    stopped_by_request: bool,
}

/// Shared state of the agent.
pub struct Agent {
    config: AgentConfig,
    recordings: Mutex<BTreeMap<String, RecordingEntry>>,
    replays: Mutex<BTreeMap<String, ReplayEntry>>,
    next_replay: AtomicU64,
    http_requests: Mutex<BTreeMap<u16, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `POST /v1/recordings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRecording {
    name: String,
    interfaces: Vec<String>,
    ports: Vec<i64>,
    #[serde(default)]
    attach: Option<AttachMode>,
    /// Kafka bootstrap brokers, overriding the agent's store.
    #[serde(default)]
    kafka: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    ring_size: Option<String>,
}

/// `POST /v1/replays`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartReplay {
    recording: String,
    target: String,
    #[serde(default)]
    speed: Option<f64>,
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    max: bool,
    #[serde(default, rename = "loop")]
    loops: Option<u32>,
    #[serde(default)]
    exit_after: Option<String>,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    filters: Vec<String>,
    #[serde(default)]
    rewrite_urls: Vec<String>,
    #[serde(default)]
    set_headers: Vec<String>,
    #[serde(default)]
    drop_headers: Vec<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    kafka: Option<String>,
    #[serde(default)]
    topic: Option<String>,
}

fn duration_field(field: &str, value: &Option<String>) -> Result<Option<Duration>, ApiError> {
    value
        .as_deref()
        .map(|v| {
            humantime::parse_duration(v).map_err(|e| {
                ApiError::bad(format!(
                    "{field}: {v:?} is not a duration like 30s or 5m ({e})"
                ))
            })
        })
        .transpose()
}

fn recording_json(rec: &Recording) -> serde_json::Value {
    serde_json::to_value(rec).unwrap_or_else(|_| json!({"name": rec.name}))
}

fn status_json(st: &RecorderStatus) -> serde_json::Value {
    let kernel: BTreeMap<&str, u64> = st.live.capture.kernel.pairs().collect();
    json!({
        "elapsed_s": st.elapsed.as_secs_f64(),
        "messages_queued": st.messages_queued,
        "messages_written": st.messages_written,
        "store_backlog": st.store_backlog(),
        "store_queue_full": st.store_queue_full,
        "kernel": kernel,
    })
}

impl Agent {
    /// A fresh agent.
    pub fn new(config: AgentConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            recordings: Mutex::new(BTreeMap::new()),
            replays: Mutex::new(BTreeMap::new()),
            next_replay: AtomicU64::new(1),
            http_requests: Mutex::new(BTreeMap::new()),
        })
    }

    fn store_with(&self, kafka: &Option<String>, topic: &Option<String>) -> StoreConfig {
        self.config
            .store
            .with_kafka(kafka.as_deref(), topic.as_deref())
    }

    async fn start_recording(&self, body: &[u8]) -> ApiResult {
        let req: StartRecording = parse_json(body)?;
        if req.interfaces.is_empty() {
            return Err(ApiError::bad(
                "interfaces: give at least one interface (see `ip link`)",
            ));
        }
        if req.ports.is_empty() {
            return Err(ApiError::bad("ports: give at least one TCP port"));
        }
        let mut ports = Vec::new();
        for p in &req.ports {
            match u16::try_from(*p) {
                Ok(p) if p > 0 => ports.push(p),
                _ => {
                    return Err(ApiError::bad(format!(
                        "ports: {p} is not a TCP port (1-65535)"
                    )));
                }
            }
        }
        let ring_bytes = match &req.ring_size {
            None => DEFAULT_RING_BYTES,
            Some(s) => parse_ring_size(s).map_err(|e| ApiError::bad(format!("ring_size: {e}")))?,
        };
        crate::store::validate_name(&req.name).map_err(|e| ApiError::bad(format!("name: {e}")))?;
        {
            let recordings = lock(&self.recordings);
            if recordings
                .get(&req.name)
                .is_some_and(|e| e.recorder.is_some())
            {
                return Err(ApiError(
                    StatusCode::CONFLICT,
                    format!("recording {:?} is already running on this agent", req.name),
                ));
            }
        }
        let store_args = self.store_with(&req.kafka, &req.topic);
        let join = store_args.kafka.is_some();
        let store =
            tokio::task::spawn_blocking(move || store_args.open().map_err(anyhow::Error::from))
                .await
                .context("opening the store")??;
        let config = RecorderConfig {
            capture: CaptureConfig {
                interfaces: req.interfaces.clone(),
                ports,
                mode: req.attach.unwrap_or(CaptureConfig::default().mode),
                ring_bytes,
                ..CaptureConfig::default()
            },
            name: req.name.clone(),
            join,
            threads: crate::recorder::DEFAULT_THREADS,
            limits: Default::default(),
        };
        let recorder = Recorder::start(config, store).await?;
        let mut recordings = lock(&self.recordings);
        recordings.insert(
            req.name.clone(),
            RecordingEntry {
                recorder: Some(recorder),
                status: RecorderStatus::default(),
                finished: None,
                error: None,
            },
        );
        forget_oldest(&mut recordings, |e| e.recorder.is_none());
        Ok((
            StatusCode::CREATED,
            json!({"name": req.name, "state": "recording", "interfaces": req.interfaces, "ports": req.ports, "shared": join}),
        ))
    }

    async fn stop_recording(&self, name: &str) -> ApiResult {
        let recorder = {
            let mut recordings = lock(&self.recordings);
            let entry = recordings.get_mut(name).ok_or_else(|| {
                ApiError::not_found(format!("recording {name:?} is not running on this agent"))
            })?;
            entry.recorder.take().ok_or_else(|| {
                ApiError::not_found(format!(
                    "recording {name:?} is not running on this agent (already stopped)"
                ))
            })?
        };
        recorder.stop();
        let last_seen = recorder.status();
        let result = recorder.finish().await;
        let mut recordings = lock(&self.recordings);
        let entry = recordings
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(name.to_string()))?;
        entry.status = last_seen;
        match result {
            Ok(finished) => {
                entry.status = finished.status.clone();
                entry.finished = Some(finished.recording.clone());
                entry.error = finished.store_error.map(|e| format!("{e:#}"));
                let mut body = recording_json(&finished.recording);
                if let Some(e) = &entry.error {
                    body["error"] = json!(e);
                }
                Ok((StatusCode::OK, body))
            }
            Err(e) => {
                entry.error = Some(format!("{e:#}"));
                Err(e.into())
            }
        }
    }

    async fn list_recordings(&self) -> ApiResult {
        let store = self.config.store.clone();
        let list =
            tokio::task::spawn_blocking(move || store.open()?.list().map_err(anyhow::Error::from))
                .await
                .context("listing recordings")??;
        let running = self.running_statuses();
        let items: Vec<serde_json::Value> = list
            .iter()
            .map(|rec| {
                let mut v = recording_json(rec);
                if let Some(st) = running.get(&rec.name) {
                    v["live"] = status_json(st);
                }
                v
            })
            .collect();
        Ok((StatusCode::OK, json!({ "recordings": items })))
    }

    async fn get_recording(&self, name: &str) -> ApiResult {
        let store = self.config.store.clone();
        let owned = name.to_string();
        let rec = tokio::task::spawn_blocking(move || {
            store.open()?.get(&owned).map_err(anyhow::Error::from)
        })
        .await
        .context("reading the recording")??;
        let mut v = recording_json(&rec);
        if let Some(st) = self.running_statuses().get(name) {
            v["live"] = status_json(st);
        }
        Ok((StatusCode::OK, v))
    }

    /// Live counters of the recordings running here (refreshing the cached ones).
    fn running_statuses(&self) -> HashMap<String, RecorderStatus> {
        let mut recordings = lock(&self.recordings);
        let mut out = HashMap::new();
        for (name, entry) in recordings.iter_mut() {
            if let Some(r) = &entry.recorder {
                entry.status = r.status();
                out.insert(name.clone(), entry.status.clone());
            }
        }
        out
    }

    fn check_target(&self, target: &Target) -> Result<(), ApiError> {
        if self.config.allow_targets.is_empty() {
            return Ok(());
        }
        let wanted = format!("{}:{}", target.host, target.port);
        if self.config.allow_targets.contains(&wanted) {
            return Ok(());
        }
        Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "target: {wanted} is not in this agent's --allow-target list ({})",
                self.config.allow_targets.join(", ")
            ),
        ))
    }

    async fn start_replay(&self, body: &[u8]) -> ApiResult {
        let req: StartReplay = parse_json(body)?;
        let target: Target = req
            .target
            .parse()
            .map_err(|e: anyhow::Error| ApiError::bad(format!("target: {e:#}")))?;
        self.check_target(&target)?;
        if req.rate.is_some() && req.max {
            return Err(ApiError::bad("rate and max: choose one"));
        }
        if req.speed.is_some() && (req.rate.is_some() || req.max) {
            return Err(ApiError::bad("speed: not with rate or max"));
        }
        let mut rules = Vec::new();
        for f in &req.filters {
            rules.push(
                f.parse::<FilterRule>()
                    .map_err(|e| ApiError::bad(format!("filters: {e}")))?,
            );
        }
        let rewrites = rewrites_from(
            &req.rewrite_urls,
            &req.set_headers,
            &req.drop_headers,
            req.host.as_deref(),
        )
        .map_err(|e| ApiError::bad(format!("rewrites: {e:#}")))?;
        let defaults = ReplayOptions::default();
        let options = ReplayOptions {
            pace: pace_of(
                req.speed.unwrap_or(ReplayOptions::DEFAULT_SPEED),
                req.rate,
                req.max,
            ),
            loops: req.loops.unwrap_or(defaults.loops),
            exit_after: duration_field("exit_after", &req.exit_after)?,
            concurrency: req.concurrency.unwrap_or(defaults.concurrency),
            timeout: duration_field("timeout", &req.timeout)?.unwrap_or(defaults.timeout),
            filters: Filters::new(rules),
            rewrites,
            ..defaults
        };
        let address = target
            .resolve()
            .await
            .map_err(|e| ApiError::bad(format!("target: {e:#}")))?;
        let store = self.store_with(&req.kafka, &req.topic);
        let source = ReplaySource::Recording(req.recording.clone());
        let loaded = {
            let options = options.clone();
            tokio::task::spawn_blocking(move || load_replay(&source, &store, &options))
                .await
                .context("loading the recording")??
        };
        let planned = loaded.plan.len();
        let requests = loaded.requests;
        let replay = loaded.start(address, &options);
        let id = format!("r{}", self.next_replay.fetch_add(1, Ordering::Relaxed));
        let mut replays = lock(&self.replays);
        replays.insert(
            id.clone(),
            ReplayEntry {
                recording: req.recording.clone(),
                target: req.target.clone(),
                replay: Some(replay),
                report: None,
                stopped_by_request: false,
            },
        );
        forget_oldest(&mut replays, |e| e.replay.is_none());
        Ok((
            StatusCode::CREATED,
            json!({"id": id, "recording": req.recording, "target": req.target, "requests": requests, "planned": planned, "state": "running"}),
        ))
    }

    /// Moves replays that ended into their final report.
    async fn settle_replays(&self) {
        let done: Vec<(String, Replay)> = {
            let mut replays = lock(&self.replays);
            let ids: Vec<String> = replays
                .iter()
                .filter(|(_, e)| e.replay.as_ref().is_some_and(Replay::is_finished))
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| {
                    let r = replays.get_mut(&id)?.replay.take()?;
                    Some((id, r))
                })
                .collect()
        };
        for (id, replay) in done {
            let report = replay.finish().await;
            if let Some(e) = lock(&self.replays).get_mut(&id) {
                e.report = Some(report);
            }
        }
    }

    fn replay_json(id: &str, e: &ReplayEntry) -> serde_json::Value {
        let (state, report) = match (&e.replay, &e.report) {
            (Some(r), _) => ("running", r.report_now()),
            (None, Some(report)) => (
                if e.stopped_by_request {
                    "stopped"
                } else if report.has_failures() {
                    "failed"
                } else {
                    "finished"
                },
                report.clone(),
            ),
            (None, None) => ("finishing", ReplayReport::empty()),
        };
        json!({
            "id": id,
            "recording": e.recording,
            "target": e.target,
            "state": state,
            "progress": {
                "planned": report.planned,
                "done": report.completed + report.failed,
                "completed": report.completed,
                "failed": report.failed,
            },
            "report": report,
        })
    }

    async fn get_replay(&self, id: &str) -> ApiResult {
        self.settle_replays().await;
        let replays = lock(&self.replays);
        let e = replays
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("replay {id:?} not found")))?;
        Ok((StatusCode::OK, Self::replay_json(id, e)))
    }

    async fn list_replays(&self) -> ApiResult {
        self.settle_replays().await;
        let replays = lock(&self.replays);
        let items: Vec<_> = replays
            .iter()
            .map(|(id, e)| Self::replay_json(id, e))
            .collect();
        Ok((StatusCode::OK, json!({ "replays": items })))
    }

    async fn stop_replay(&self, id: &str) -> ApiResult {
        let replay = {
            let mut replays = lock(&self.replays);
            let e = replays
                .get_mut(id)
                .ok_or_else(|| ApiError::not_found(format!("replay {id:?} not found")))?;
            match e.replay.take() {
                Some(r) => {
                    e.stopped_by_request = true;
                    r
                }
                None => return Ok((StatusCode::OK, Self::replay_json(id, e))),
            }
        };
        replay.stop("stopped by DELETE /v1/replays/{id}");
        let report = replay.finish().await;
        let mut replays = lock(&self.replays);
        let e = replays
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found(id.to_string()))?;
        e.report = Some(report);
        Ok((StatusCode::OK, Self::replay_json(id, e)))
    }

    /// Prometheus text format.
    async fn metrics(&self) -> String {
        self.settle_replays().await;
        let running = self.running_statuses();
        let mut out = String::new();
        {
            let recordings = lock(&self.recordings);
            let statuses: Vec<(String, &RecorderStatus)> = recordings
                .iter()
                .map(|(name, e)| {
                    let st = running.get(name).unwrap_or(&e.status);
                    (format!("recording=\"{}\"", label(name)), st)
                })
                .collect();
            let per_recording = |value: fn(&RecorderStatus) -> u64| {
                statuses
                    .iter()
                    .map(move |(l, st)| (l.clone(), value(st)))
                    .collect::<Vec<_>>()
            };
            write_family(
                &mut out,
                "capture_recordings_active",
                "gauge",
                "Recordings running on this agent.",
                [(String::new(), running.len() as u64)],
            );
            write_family(
                &mut out,
                "capture_recording_messages_total",
                "counter",
                "Messages handed to the store, per recording.",
                per_recording(|st| st.messages_queued),
            );
            write_family(
                &mut out,
                "capture_recording_store_backlog_messages",
                "gauge",
                "Messages queued for the store thread, not yet written (drops start at the queue's cap).",
                per_recording(RecorderStatus::store_backlog),
            );
            write_family(
                &mut out,
                "capture_kernel_packets_total",
                "counter",
                "eBPF program counters, per recording.",
                statuses.iter().flat_map(|(l, st)| {
                    st.live
                        .capture
                        .kernel
                        .pairs()
                        .map(move |(counter, v)| (format!("{l},counter=\"{counter}\""), v))
                }),
            );
            write_family(
                &mut out,
                "capture_recording_drops_total",
                "counter",
                "Messages or packets lost, by reason.",
                statuses.iter().flat_map(|(l, st)| {
                    st.losses()
                        .into_iter()
                        .map(move |(reason, v)| (format!("{l},reason=\"{reason}\""), v))
                }),
            );
        }
        let reports: Vec<(String, ReplayReport, bool)> = lock(&self.replays)
            .iter()
            .map(|(id, e)| match (&e.replay, &e.report) {
                (Some(r), _) => (id.clone(), r.report_now(), true),
                (None, Some(rep)) => (id.clone(), rep.clone(), false),
                (None, None) => (id.clone(), ReplayReport::empty(), false),
            })
            .collect();
        write_family(
            &mut out,
            "capture_replays_active",
            "gauge",
            "Replays running on this agent.",
            [(String::new(), reports.iter().filter(|r| r.2).count() as u64)],
        );
        write_family(
            &mut out,
            "capture_replay_requests_total",
            "counter",
            "Replayed requests by outcome.",
            reports.iter().flat_map(|(id, r, _)| {
                [("completed", r.completed), ("failed", r.failed)]
                    .map(|(outcome, v)| (format!("replay=\"{id}\",outcome=\"{outcome}\""), v))
            }),
        );
        write_family(
            &mut out,
            "capture_replay_responses_total",
            "counter",
            "Replayed responses by status.",
            reports.iter().flat_map(|(id, r, _)| {
                r.statuses
                    .iter()
                    .map(move |(status, n)| (format!("replay=\"{id}\",status=\"{status}\""), *n))
            }),
        );
        write_family(
            &mut out,
            "capture_replay_failures_total",
            "counter",
            "Failed replayed requests by kind.",
            reports.iter().flat_map(|(id, r, _)| {
                r.failures
                    .iter()
                    .map(move |(kind, n)| (format!("replay=\"{id}\",kind=\"{kind}\""), *n))
            }),
        );
        let calls: Vec<(String, u64)> = lock(&self.http_requests)
            .iter()
            .map(|(code, n)| (format!("code=\"{code}\""), *n))
            .collect();
        write_family(
            &mut out,
            "capture_agent_http_requests_total",
            "counter",
            "API calls answered, by status code.",
            calls,
        );
        out
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.config.token else {
            return true;
        };
        let Some(given) = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Constant time in the token's length.
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Answers one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let response = if path == "/healthz" && method == Method::GET {
            text(StatusCode::OK, "ok\n", "text/plain")
        } else if !self.authorized(&req) {
            error_response(&ApiError(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send `Authorization: Bearer <token from --token-file>`".into(),
            ))
        } else if path == "/metrics" && method == Method::GET {
            let body = self.metrics().await;
            text(StatusCode::OK, &body, "text/plain; version=0.0.4")
        } else {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return self.count(error_response(&ApiError(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body over {MAX_BODY} bytes"),
                    )));
                }
            };
            let result = self.route(&method, &path, &body).await;
            match result {
                Ok((status, value)) => json_response(status, &value),
                Err(e) => error_response(&e),
            }
        };
        self.count(response)
    }

    fn count(&self, response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
        *lock(&self.http_requests)
            .entry(response.status().as_u16())
            .or_default() += 1;
        response
    }

    async fn route(&self, method: &Method, path: &str, body: &[u8]) -> ApiResult {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match (method, parts.as_slice()) {
            (&Method::POST, ["v1", "recordings"]) => self.start_recording(body).await,
            (&Method::GET, ["v1", "recordings"]) => self.list_recordings().await,
            (&Method::GET, ["v1", "recordings", name]) => self.get_recording(name).await,
            (&Method::POST, ["v1", "recordings", name, "stop"]) => self.stop_recording(name).await,
            (&Method::POST, ["v1", "replays"]) => self.start_replay(body).await,
            (&Method::GET, ["v1", "replays"]) => self.list_replays().await,
            (&Method::GET, ["v1", "replays", id]) => self.get_replay(id).await,
            (&Method::DELETE, ["v1", "replays", id]) => self.stop_replay(id).await,
            _ => Err(ApiError::not_found(format!(
                "no route {method} {path}; see the operations section of the README"
            ))),
        }
    }

    /// Stops every recording (so their catalog entries close) and replay, for shutdown.
    pub async fn shutdown(&self) {
        let recorders: Vec<(String, Recorder)> = lock(&self.recordings)
            .iter_mut()
            .filter_map(|(n, e)| Some((n.clone(), e.recorder.take()?)))
            .collect();
        for (name, r) in recorders {
            r.stop();
            match r.finish().await {
                Ok(f) => eprintln!(
                    "recording {name} stopped: {} messages",
                    f.recording.messages
                ),
                Err(e) => eprintln!("recording {name}: {e:#}"),
            }
        }
        let replays: Vec<Replay> = lock(&self.replays)
            .values_mut()
            .filter_map(|e| e.replay.take())
            .collect();
        for r in replays {
            r.stop("agent shutting down");
            r.finish().await;
        }
    }
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

/// Escapes a Prometheus label value.
/// Writes one Prometheus metric family: HELP, TYPE, then a sample per (labels, value), where
/// labels are already formatted (`a="x",b="y"`, or empty for none).
fn write_family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

fn text(status: StatusCode, body: &str, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{}".into());
    body.push('\n');
    text(status, &body, "application/json")
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    json_response(e.0, &json!({ "error": e.1 }))
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

/// Serves the API until SIGINT/SIGTERM, then stops what runs and returns.
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
    let agent = Agent::new(config);
    eprintln!(
        "agent listening on http://{} (store: {}); stop with Ctrl-C or SIGTERM",
        listener.local_addr().unwrap_or(agent.config.listen),
        agent.config.store.describe()
    );
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("accepting a connection: {e}");
                    continue;
                }
            },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let agent = agent.clone();
                async move { Ok::<_, std::convert::Infallible>(agent.handle(req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                log::debug!("API connection: {e}");
            }
        });
    }
    eprintln!("agent stopping: ending recordings and replays");
    agent.shutdown().await;
    Ok(())
}
