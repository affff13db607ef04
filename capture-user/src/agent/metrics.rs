//! `/metrics`: the agent's recordings' and replays' counters in the Prometheus text format.
//! The agent takes a [`MetricsSnapshot`] (plain numbers, read at one instant) and
//! [`render`] turns it into text, so the format is tested without a running agent. The
//! per-status API call counter is a middleware around every route.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Agent, lock};
use crate::recorder::RecorderStatus;
use crate::replay::report::ReplayReport;

/// Content type of the exposition format [`render`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Everything /metrics shows, read from the agent at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub recordings: Vec<RecordingCounters>,
    pub replays: Vec<ReplayCounters>,
    /// API calls answered, by status code.
    pub http_requests: BTreeMap<u16, u64>,
}

/// One recording's counters.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordingCounters {
    pub name: String,
    /// Still recording on this agent.
    pub active: bool,
    /// Messages handed to the store.
    pub messages: u64,
    /// Messages queued for the store thread, not yet written.
    pub store_backlog: u64,
    /// eBPF program counters by name.
    pub kernel: Vec<(&'static str, u64)>,
    /// Everything lost, by reason ([`RecorderStatus::losses`]).
    pub drops: Vec<(String, u64)>,
}

impl RecordingCounters {
    /// The counters of recording `name` from its status.
    pub fn new(name: &str, active: bool, st: &RecorderStatus) -> Self {
        Self {
            name: name.to_string(),
            active,
            messages: st.messages_queued,
            store_backlog: st.store_backlog(),
            kernel: st.live.capture.kernel.pairs().collect(),
            drops: st.losses(),
        }
    }
}

/// One replay's counters.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayCounters {
    pub id: String,
    /// Still sending.
    pub active: bool,
    pub completed: u64,
    pub failed: u64,
    /// Responses by status code.
    pub statuses: BTreeMap<String, u64>,
    /// Failed requests by kind.
    pub failures: BTreeMap<String, u64>,
}

impl ReplayCounters {
    /// The counters of replay `id` from its report.
    pub fn new(id: &str, active: bool, report: &ReplayReport) -> Self {
        Self {
            id: id.to_string(),
            active,
            completed: report.completed,
            failed: report.failed,
            statuses: report.statuses.clone(),
            failures: report.failures.clone(),
        }
    }
}

/// API calls answered, by status code, for `capture_agent_http_requests_total`.
#[derive(Debug, Default)]
pub(super) struct HttpRequests(Mutex<BTreeMap<u16, u64>>);

impl HttpRequests {
    fn count(&self, status: u16) {
        *lock(&self.0).entry(status).or_default() += 1;
    }

    pub(super) fn snapshot(&self) -> BTreeMap<u16, u64> {
        lock(&self.0).clone()
    }
}

/// The middleware that counts every answer by status, errors and unknown routes included.
pub(super) async fn count_requests(
    State(agent): State<Arc<Agent>>,
    req: Request,
    next: Next,
) -> Response {
    let response = next.run(req).await;
    agent.http_requests.count(response.status().as_u16());
    response
}

/// `GET /metrics`.
pub(super) async fn serve(State(agent): State<Arc<Agent>>) -> Response {
    let text = render(&agent.metrics_snapshot().await);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// The snapshot in the Prometheus text format.
pub fn render(s: &MetricsSnapshot) -> String {
    let mut out = String::new();
    write_recordings(&mut out, s);
    write_replays(&mut out, s);
    out
}

fn write_recordings(out: &mut String, s: &MetricsSnapshot) {
    let rec = |r: &RecordingCounters| format!("recording=\"{}\"", label(&r.name));
    let per_recording =
        |value: fn(&RecordingCounters) -> u64| s.recordings.iter().map(move |r| (rec(r), value(r)));
    let active = s.recordings.iter().filter(|r| r.active).count() as u64;
    write_family(
        out,
        "capture_recordings_active",
        "gauge",
        "Recordings running on this agent.",
        [(String::new(), active)],
    );
    write_family(
        out,
        "capture_recording_messages_total",
        "counter",
        "Messages handed to the store, per recording.",
        per_recording(|r| r.messages),
    );
    write_family(
        out,
        "capture_recording_store_backlog_messages",
        "gauge",
        "Messages queued for the store thread, not yet written (drops start at the queue's cap).",
        per_recording(|r| r.store_backlog),
    );
    write_family(
        out,
        "capture_kernel_packets_total",
        "counter",
        "eBPF program counters, per recording.",
        s.recordings.iter().flat_map(|r| {
            r.kernel
                .iter()
                .map(move |(c, v)| (format!("{},counter=\"{c}\"", rec(r)), *v))
        }),
    );
    write_family(
        out,
        "capture_recording_drops_total",
        "counter",
        "Messages or packets lost, by reason.",
        s.recordings.iter().flat_map(|r| {
            r.drops
                .iter()
                .map(move |(why, v)| (format!("{},reason=\"{}\"", rec(r), label(why)), *v))
        }),
    );
}

fn write_replays(out: &mut String, s: &MetricsSnapshot) {
    let active = s.replays.iter().filter(|r| r.active).count() as u64;
    write_family(
        out,
        "capture_replays_active",
        "gauge",
        "Replays running on this agent.",
        [(String::new(), active)],
    );
    write_family(
        out,
        "capture_replay_requests_total",
        "counter",
        "Replayed requests by outcome.",
        s.replays.iter().flat_map(|r| {
            [("completed", r.completed), ("failed", r.failed)]
                .map(|(o, v)| (format!("replay=\"{}\",outcome=\"{o}\"", label(&r.id)), v))
        }),
    );
    write_family(
        out,
        "capture_replay_responses_total",
        "counter",
        "Replayed responses by status.",
        s.replays.iter().flat_map(|r| {
            r.statuses
                .iter()
                .map(move |(st, n)| (format!("replay=\"{}\",status=\"{st}\"", label(&r.id)), *n))
        }),
    );
    write_family(
        out,
        "capture_replay_failures_total",
        "counter",
        "Failed replayed requests by kind.",
        s.replays.iter().flat_map(|r| {
            r.failures
                .iter()
                .map(move |(k, n)| (format!("replay=\"{}\",kind=\"{k}\"", label(&r.id)), *n))
        }),
    );
    write_family(
        out,
        "capture_agent_http_requests_total",
        "counter",
        "API calls answered, by status code.",
        s.http_requests
            .iter()
            .map(|(code, n)| (format!("code=\"{code}\""), *n)),
    );
}

/// Writes one metric family: HELP, TYPE, then a sample per (labels, value), where labels are
/// already formatted (`a="x",b="y"`, or empty for none).
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

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
