//! `/v1/recordings`: start, list, show and stop live recordings on this node. A recording is
//! the library's [`Recorder`], the same the `record` command runs; this module validates the
//! call, keeps the recorders it started, and reports their counters.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiPath, ApiResult, Reply};
use super::metrics::RecordingCounters;
use super::{Agent, forget_oldest, lock};
use crate::live::hosts::{Decap, HostNet};
use crate::live::{AttachMode, CaptureConfig, DEFAULT_RING_BYTES, parse_ring_size};
use crate::recorder::{
    DEFAULT_THREADS, Limits, Recorder, RecorderConfig, RecorderStatus, check_threads,
};
use crate::redact::Redaction;
use crate::store::{Recording, RecordingState, StoreConfig};
use crate::tls::{TlsScope, TlsSide};

/// `POST /v1/recordings`: what to record, and where to store it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRecording {
    /// Recording name: 1-200 letters, digits, '.', '_' or '-'.
    pub name: String,
    /// Interfaces to capture on (see `ip link`): names, shell-style patterns (`veth*`,
    /// `cali*`, `lxc*`) or `any`. Patterns also take interfaces that appear while recording
    /// (pods that start); interfaces that go away are let go of and counted. Leave empty
    /// with `tls`.
    #[serde(default)]
    pub interfaces: Vec<String>,
    /// Record HTTPS as plaintext at the TLS library (OpenSSL's libssl, uprobes) instead of
    /// packets: `server` (processes serving the ports), `client` (processes calling them) or
    /// `both`. Off by default: reading plaintext is the operator's decision.
    #[serde(default)]
    pub tls: Option<TlsSide>,
    /// With `"tls": "server"`: `servers` probes only the processes listening on the ports,
    /// so the node's other TLS users never trap into the kernel (a server that starts later
    /// is probed within about a second); `all`, the default, probes every process mapping
    /// libssl from its first call.
    #[serde(default)]
    pub tls_scope: Option<TlsScope>,
    /// TCP ports whose traffic is recorded (1-65535).
    pub ports: Vec<i64>,
    /// Only packets whose source or destination is in one of these networks: addresses or
    /// CIDRs, IPv4 or IPv6 (`10.1.2.3`, `10.1.0.0/16`, `fd00::/64`). Default: every address.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Encapsulations to look inside: `vxlan`, `geneve`, `ipip` (comma-separated) or `all`.
    #[serde(default)]
    pub decap: Option<String>,
    /// Headers whose values are replaced with `[redacted]` before anything is stored, e.g.
    /// `["Authorization", "Cookie", "Set-Cookie"]` (HTTP/2 trailers too; bodies untouched).
    #[serde(default)]
    pub redact_headers: Vec<String>,
    /// Kernel hook: `tc` (requests and responses, the default) or `xdp` (ingress only).
    #[serde(default)]
    pub attach: Option<AttachMode>,
    /// Kafka bootstrap brokers, overriding the agent's store (the recording is then shared).
    #[serde(default)]
    pub kafka: Option<String>,
    /// Kafka topic, overriding the agent's.
    #[serde(default)]
    pub topic: Option<String>,
    /// Kernel ring buffer size, e.g. `64MiB` (default 16 MiB).
    #[serde(default)]
    pub ring_size: Option<String>,
    /// Framing threads (default 1; more spread connections over threads on a busy node).
    #[serde(default)]
    pub threads: Option<usize>,
    /// End the recording (complete) once it holds this many messages.
    #[serde(default)]
    pub max_messages: Option<u64>,
    /// End the recording (complete) before its messages pass this size, e.g. `500MiB`.
    #[serde(default)]
    pub max_size: Option<String>,
}

impl StartRecording {
    /// Where the recording stops by itself, or a 400 naming the field.
    fn limits(&self) -> Result<Limits, ApiError> {
        let max_bytes = self
            .max_size
            .as_deref()
            .map(crate::units::parse_byte_size)
            .transpose()
            .map_err(|e| ApiError::BadRequest(format!("max_size: {e}")))?;
        Ok(Limits {
            max_messages: self.max_messages,
            max_bytes,
        })
    }

    /// The capture this call asks for, or a 400 naming the field.
    fn capture(&self) -> Result<CaptureConfig, ApiError> {
        if self.tls.is_some() && !self.interfaces.is_empty() {
            return Err(ApiError::BadRequest(
                "interfaces: leave empty with tls (TLS capture probes libraries, not interfaces)"
                    .into(),
            ));
        }
        if self.tls_scope == Some(TlsScope::Servers) && self.tls != Some(TlsSide::Server) {
            return Err(ApiError::BadRequest(
                "tls_scope: \"servers\" probes the processes serving the ports, so it needs \
                 \"tls\": \"server\""
                    .into(),
            ));
        }
        if self.tls.is_none() && self.interfaces.is_empty() {
            return Err(ApiError::BadRequest(
                "interfaces: give at least one interface (see `ip link`)".into(),
            ));
        }
        if self.ports.is_empty() {
            return Err(ApiError::BadRequest(
                "ports: give at least one TCP port".into(),
            ));
        }
        let ports = self
            .ports
            .iter()
            .map(|&p| {
                crate::units::port(p).map_err(|e| ApiError::BadRequest(format!("ports: {e}")))
            })
            .collect::<Result<Vec<u16>, _>>()?;
        let ring_bytes = match &self.ring_size {
            None => DEFAULT_RING_BYTES,
            Some(s) => {
                parse_ring_size(s).map_err(|e| ApiError::BadRequest(format!("ring_size: {e}")))?
            }
        };
        let hosts = self
            .hosts
            .iter()
            .map(|h| h.parse::<HostNet>().map_err(ApiError::BadRequest))
            .collect::<Result<Vec<_>, _>>()?;
        let decap = match &self.decap {
            Some(d) => d.parse::<Decap>().map_err(ApiError::BadRequest)?,
            None => Decap::default(),
        };
        let redaction = Redaction::new(&self.redact_headers)
            .map_err(|e| ApiError::BadRequest(format!("redact_headers: {e}")))?;
        Ok(CaptureConfig {
            interfaces: self.interfaces.clone(),
            ports,
            hosts,
            decap,
            redaction,
            mode: self.attach.unwrap_or(CaptureConfig::default().mode),
            ring_bytes,
            tls: self.tls,
            tls_scope: self.tls_scope.unwrap_or_default(),
            ..CaptureConfig::default()
        })
    }
}

/// The answer to a started recording.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingStarted {
    /// The recording's name, for the other calls.
    pub name: String,
    /// Always `recording`.
    pub state: RecordingState,
    /// As asked.
    pub interfaces: Vec<String>,
    /// As asked.
    pub ports: Vec<i64>,
    /// True when stored in Kafka, where agents that start the same name share the recording.
    pub shared: bool,
}

/// A recording's catalog entry, with what this agent knows beyond it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingView {
    /// The catalog entry, its fields inline.
    #[serde(flatten)]
    pub recording: Recording,
    /// Counters so far, while this agent records it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveCounters>,
    /// Set when storing failed part way (what was stored before is kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/recordings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingList {
    /// Every recording in the agent's store.
    pub recordings: Vec<RecordingView>,
}

/// Counters of a recording while it runs (updated every second).
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveCounters {
    /// Seconds since the recording started here.
    pub elapsed_s: f64,
    /// Messages handed to the store thread.
    pub messages_queued: u64,
    /// Messages the store has written (Kafka: handed to the producer).
    pub messages_written: u64,
    /// Queued, not yet written; drops (`store_queue_full`) start at the queue's cap.
    pub store_backlog: u64,
    /// Messages dropped because the store queue was full.
    pub store_queue_full: u64,
    /// eBPF program counters by name (seen, matched, captured, drops...).
    pub kernel: BTreeMap<String, u64>,
}

impl From<&RecorderStatus> for LiveCounters {
    fn from(st: &RecorderStatus) -> Self {
        Self {
            elapsed_s: st.elapsed.as_secs_f64(),
            messages_queued: st.messages_queued,
            messages_written: st.messages_written,
            store_backlog: st.store_backlog(),
            store_queue_full: st.store_queue_full,
            kernel: st
                .live
                .capture
                .kernel
                .pairs()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}

/// A recording this agent runs or ran.
struct RecordingEntry {
    recorder: Option<Recorder>,
    /// Counters as of the last look (final once stopped).
    status: RecorderStatus,
    error: Option<String>,
}

/// The recordings this agent started, running and recently finished.
#[derive(Default)]
pub(super) struct Recordings {
    entries: Mutex<BTreeMap<String, RecordingEntry>>,
}

impl Recordings {
    /// Attaches the capture and starts recording into `store` (or the call's own Kafka).
    async fn start(
        &self,
        store: &StoreConfig,
        req: StartRecording,
    ) -> Result<RecordingStarted, ApiError> {
        let capture = req.capture()?;
        let limits = req.limits()?;
        let threads = check_threads(req.threads.unwrap_or(DEFAULT_THREADS))
            .map_err(|e| ApiError::BadRequest(format!("threads: {e}")))?;
        crate::store::validate_name(&req.name)
            .map_err(|e| ApiError::BadRequest(format!("name: {e}")))?;
        if lock(&self.entries)
            .get(&req.name)
            .is_some_and(|e| e.recorder.is_some())
        {
            return Err(ApiError::Conflict(format!(
                "recording {:?} is already running on this agent",
                req.name
            )));
        }
        let store = store.with_kafka(req.kafka.as_deref(), req.topic.as_deref());
        let join = store.kafka.is_some();
        let store = tokio::task::spawn_blocking(move || store.open().map_err(anyhow::Error::from))
            .await
            .context("opening the store")??;
        let config = RecorderConfig {
            capture,
            name: req.name.clone(),
            join,
            threads,
            limits,
        };
        let recorder = Recorder::start(config, store).await?;
        let mut entries = lock(&self.entries);
        entries.insert(
            req.name.clone(),
            RecordingEntry {
                recorder: Some(recorder),
                status: RecorderStatus::default(),
                error: None,
            },
        );
        forget_oldest(&mut entries, |e| e.recorder.is_none());
        Ok(RecordingStarted {
            name: req.name,
            state: RecordingState::Recording,
            interfaces: req.interfaces,
            ports: req.ports,
            shared: join,
        })
    }

    /// Stops a recording this agent runs; it drains, flushes and closes its catalog entry.
    async fn stop(&self, name: &str) -> Result<RecordingView, ApiError> {
        let recorder = {
            let mut entries = lock(&self.entries);
            let entry = entries.get_mut(name).ok_or_else(|| {
                ApiError::NotFound(format!("recording {name:?} is not running on this agent"))
            })?;
            entry.recorder.take().ok_or_else(|| {
                ApiError::NotFound(format!(
                    "recording {name:?} is not running on this agent (already stopped)"
                ))
            })?
        };
        recorder.stop();
        let last_seen = recorder.status();
        let result = recorder.finish().await;
        let mut entries = lock(&self.entries);
        let entry = entries
            .get_mut(name)
            .ok_or_else(|| ApiError::NotFound(name.to_string()))?;
        entry.status = last_seen;
        match result {
            Ok(finished) => {
                entry.status = finished.status;
                entry.error = finished.store_error.map(|e| format!("{e:#}"));
                Ok(RecordingView {
                    recording: finished.recording,
                    live: None,
                    error: entry.error.clone(),
                })
            }
            Err(e) => {
                entry.error = Some(format!("{e:#}"));
                Err(e.into())
            }
        }
    }

    /// Every recording in `store`, the running ones with their live counters.
    async fn list(&self, store: &StoreConfig) -> Result<RecordingList, ApiError> {
        let store = store.clone();
        let list =
            tokio::task::spawn_blocking(move || store.open()?.list().map_err(anyhow::Error::from))
                .await
                .context("listing recordings")??;
        let live = self.live();
        let recordings = list
            .into_iter()
            .map(|recording| RecordingView {
                live: live.get(&recording.name).map(LiveCounters::from),
                recording,
                error: None,
            })
            .collect();
        Ok(RecordingList { recordings })
    }

    /// One recording from `store`, with live counters if it runs here.
    async fn get(&self, store: &StoreConfig, name: String) -> Result<RecordingView, ApiError> {
        let store = store.clone();
        let owned = name.clone();
        let recording = tokio::task::spawn_blocking(move || {
            store.open()?.get(&owned).map_err(anyhow::Error::from)
        })
        .await
        .context("reading the recording")??;
        Ok(RecordingView {
            live: self.live().get(&name).map(LiveCounters::from),
            recording,
            error: None,
        })
    }

    /// Live counters of the recordings running here (refreshing the cached ones).
    fn live(&self) -> HashMap<String, RecorderStatus> {
        let mut entries = lock(&self.entries);
        let mut out = HashMap::new();
        for (name, entry) in entries.iter_mut() {
            if let Some(r) = &entry.recorder {
                entry.status = r.status();
                out.insert(name.clone(), entry.status.clone());
            }
        }
        out
    }

    /// Every recording's counters for /metrics: fresh for running ones, final for the rest.
    pub(super) fn counters(&self) -> Vec<RecordingCounters> {
        let mut entries = lock(&self.entries);
        entries
            .iter_mut()
            .map(|(name, entry)| {
                if let Some(r) = &entry.recorder {
                    entry.status = r.status();
                }
                RecordingCounters::new(name, entry.recorder.is_some(), &entry.status)
            })
            .collect()
    }

    /// Stops every running recording, so their catalog entries close.
    pub(super) async fn shutdown(&self) {
        let recorders: Vec<(String, Recorder)> = lock(&self.entries)
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
    }
}

/// Start a recording on this node
///
/// Attaches the capture to the interfaces and opens the recording's catalog entry; answers
/// once both are done. With Kafka (the agent's or the call's), agents that start the same
/// name record one shared recording.
#[utoipa::path(
    post,
    path = "/v1/recordings",
    operation_id = "start_recording",
    tag = "recordings",
    request_body = StartRecording,
    responses(
        (status = 201, description = "Recording", body = RecordingStarted),
        (status = 400, description = "Bad field (name, interfaces, ports, ring_size...) or unknown interface", body = ErrorBody),
        (status = 409, description = "A recording of that name already runs on this agent", body = ErrorBody),
        (status = 500, description = "Capturing cannot work on this node (privileges, kernel)", body = ErrorBody),
    )
)]
pub(super) async fn start(
    State(agent): State<Arc<Agent>>,
    ApiJson(req): ApiJson<StartRecording>,
) -> ApiResult<RecordingStarted> {
    let started = agent.recordings.start(&agent.config.store, req).await?;
    Ok(Reply(StatusCode::CREATED, started))
}

/// List recordings
///
/// Every recording in the agent's store; the ones this agent records carry `live` counters.
#[utoipa::path(
    get,
    path = "/v1/recordings",
    operation_id = "list_recordings",
    tag = "recordings",
    responses((status = 200, description = "Recordings", body = RecordingList))
)]
pub(super) async fn list(State(agent): State<Arc<Agent>>) -> ApiResult<RecordingList> {
    Ok(Reply::ok(agent.recordings.list(&agent.config.store).await?))
}

/// Show a recording
///
/// Its catalog entry, with `live` counters while this agent records it.
#[utoipa::path(
    get,
    path = "/v1/recordings/{name}",
    operation_id = "get_recording",
    tag = "recordings",
    params(("name" = String, Path, description = "Recording name")),
    responses(
        (status = 200, description = "Recording", body = RecordingView),
        (status = 404, description = "No such recording", body = ErrorBody),
    )
)]
pub(super) async fn get(
    State(agent): State<Arc<Agent>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<RecordingView> {
    Ok(Reply::ok(
        agent.recordings.get(&agent.config.store, name).await?,
    ))
}

/// Stop a recording
///
/// Drains the capture, flushes the store and closes the catalog entry; answers with the
/// final entry (messages, bytes, window, drops).
#[utoipa::path(
    post,
    path = "/v1/recordings/{name}/stop",
    operation_id = "stop_recording",
    tag = "recordings",
    params(("name" = String, Path, description = "Recording name")),
    responses(
        (status = 200, description = "The final catalog entry", body = RecordingView),
        (status = 404, description = "Not running on this agent", body = ErrorBody),
    )
)]
pub(super) async fn stop(
    State(agent): State<Arc<Agent>>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<RecordingView> {
    Ok(Reply::ok(agent.recordings.stop(&name).await?))
}
