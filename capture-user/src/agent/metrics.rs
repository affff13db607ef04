//! `/metrics`: the agent's recordings' and replays' counters in the Prometheus text format
//! (0.0.4), written by the `prometheus-client` crate. The agent takes a [`MetricsSnapshot`]
//! (plain numbers, read at one instant) and [`render`] hands it to the encoder as a
//! [`Collector`] of constant counters and gauges, so the format is tested without a running
//! agent. The per-status API call counter is a middleware around every route.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _, prometheus_text};
use prometheus_client::metrics::MetricType::{self, Counter, Gauge};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::server::ServerSnapshot;
use super::{Agent, lock};
use crate::recorder::RecorderStatus;
use crate::replay::report::ReplayReport;

/// Content type of the exposition format [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Everything /metrics shows, read from the agent at one instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    pub recordings: Vec<RecordingCounters>,
    pub replays: Vec<ReplayCounters>,
    /// API calls answered, by status code.
    pub http_requests: BTreeMap<u16, u64>,
    /// Connections, timeouts and reloads of the API server.
    pub server: ServerSnapshot,
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
    /// Packets captured per interface: (interface, packets).
    pub interfaces: Vec<(String, u64)>,
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
            interfaces: st.live.capture.packets_per_interface(),
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

/// Prometheus metrics
///
/// Recordings' and replays' counters, and API calls by status, in the Prometheus text
/// format 0.0.4.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain"))
)]
pub(super) async fn serve(State(agent): State<Arc<Agent>>) -> Response {
    let text = render(agent.metrics_snapshot().await);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

/// The snapshot in the Prometheus text format (version 0.0.4).
pub fn render(snapshot: MetricsSnapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        log::warn!("encoding /metrics: {e}");
    }
    out
}

/// A sample's labels, in the order they are written.
type Labels = Vec<(&'static str, String)>;

impl Collector for MetricsSnapshot {
    /// Writes every family, each with HELP and TYPE even when it has no samples yet.
    /// Counter names go without `_total`: the encoder appends it.
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.encode_recordings(&mut encoder)?;
        self.encode_replays(&mut encoder)?;
        family(
            &mut encoder,
            ("capture_agent_http_requests", Counter),
            "API calls answered, by status code.",
            self.http_requests
                .iter()
                .map(|(code, n)| (vec![("code", code.to_string())], *n)),
        )?;
        self.encode_server(&mut encoder)
    }
}

impl MetricsSnapshot {
    fn encode_recordings(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let recs = &self.recordings;
        let rec = |r: &RecordingCounters| ("recording", r.name.clone());
        let active = recs.iter().filter(|r| r.active).count() as u64;
        family(
            encoder,
            ("capture_recordings_active", Gauge),
            "Recordings running on this agent.",
            [(vec![], active)],
        )?;
        family(
            encoder,
            ("capture_recording_messages", Counter),
            "Messages handed to the store, per recording.",
            recs.iter().map(|r| (vec![rec(r)], r.messages)),
        )?;
        family(
            encoder,
            ("capture_recording_store_backlog_messages", Gauge),
            "Messages queued for the store thread, not yet written (drops start at the queue's cap).",
            recs.iter().map(|r| (vec![rec(r)], r.store_backlog)),
        )?;
        family(
            encoder,
            ("capture_kernel_packets", Counter),
            "eBPF program counters, per recording.",
            recs.iter().flat_map(|r| {
                r.kernel
                    .iter()
                    .map(move |(c, v)| (vec![rec(r), ("counter", c.to_string())], *v))
            }),
        )?;
        family(
            encoder,
            ("capture_interface_packets", Counter),
            "Packets captured per interface, per recording.",
            recs.iter().flat_map(|r| {
                r.interfaces
                    .iter()
                    .map(move |(i, v)| (vec![rec(r), ("interface", i.clone())], *v))
            }),
        )?;
        family(
            encoder,
            ("capture_recording_drops", Counter),
            "Messages or packets lost, by reason.",
            recs.iter().flat_map(|r| {
                r.drops
                    .iter()
                    .map(move |(why, v)| (vec![rec(r), ("reason", why.clone())], *v))
            }),
        )
    }

    fn encode_replays(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let reps = &self.replays;
        let rep = |r: &ReplayCounters| ("replay", r.id.clone());
        let active = reps.iter().filter(|r| r.active).count() as u64;
        family(
            encoder,
            ("capture_replays_active", Gauge),
            "Replays running on this agent.",
            [(vec![], active)],
        )?;
        family(
            encoder,
            ("capture_replay_requests", Counter),
            "Replayed requests by outcome.",
            reps.iter().flat_map(|r| {
                [("completed", r.completed), ("failed", r.failed)]
                    .map(|(outcome, v)| (vec![rep(r), ("outcome", outcome.to_string())], v))
            }),
        )?;
        family(
            encoder,
            ("capture_replay_responses", Counter),
            "Replayed responses by status.",
            reps.iter().flat_map(|r| {
                r.statuses
                    .iter()
                    .map(move |(status, n)| (vec![rep(r), ("status", status.clone())], *n))
            }),
        )?;
        family(
            encoder,
            ("capture_replay_failures", Counter),
            "Failed replayed requests by kind.",
            reps.iter().flat_map(|r| {
                r.failures
                    .iter()
                    .map(move |(kind, n)| (vec![rep(r), ("kind", kind.clone())], *n))
            }),
        )
    }
}

impl MetricsSnapshot {
    fn encode_server(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let server = &self.server;
        family(
            encoder,
            ("capture_agent_connections_open", Gauge),
            "API connections open now.",
            [(vec![], server.connections_open)],
        )?;
        family(
            encoder,
            ("capture_agent_connections_accepted", Counter),
            "API connections accepted and served.",
            [(vec![], server.connections_accepted)],
        )?;
        family(
            encoder,
            ("capture_agent_connections_refused", Counter),
            "API connections closed at once because --max-connections were open.",
            [(vec![], server.connections_refused)],
        )?;
        family(
            encoder,
            ("capture_agent_timeouts", Counter),
            "API connections closed or calls answered at a deadline, by kind (header_read, idle, tls_handshake: connection closed; body_read: 408; handling: 503).",
            server
                .timeouts
                .iter()
                .map(|(kind, n)| (vec![("kind", kind.to_string())], *n)),
        )?;
        family(
            encoder,
            ("capture_agent_tls_handshake_failures", Counter),
            "TLS handshakes that failed (wrong CA on the client, not TLS, bad protocol version).",
            [(vec![], server.tls_handshake_failures)],
        )?;
        family(
            encoder,
            ("capture_agent_file_reloads", Counter),
            "Token and TLS files read again after they changed, by outcome (failed: the old version stays in use).",
            server.reloads.iter().map(|(file, outcome, n)| {
                (
                    vec![("file", file.to_string()), ("outcome", outcome.to_string())],
                    *n,
                )
            }),
        )
    }
}

/// Writes one family: its descriptor, then a constant counter or gauge per sample.
fn family(
    encoder: &mut DescriptorEncoder,
    (name, kind): (&str, MetricType),
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value).encode(sample)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            recordings: vec![RecordingCounters {
                name: "peak".into(),
                active: true,
                messages: 20,
                store_backlog: 3,
                kernel: vec![("seen", 40), ("captured", 38)],
                drops: vec![
                    ("kernel_ring_full".into(), 2),
                    ("store_queue_full".into(), 0),
                ],
                interfaces: vec![("vethp1".into(), 30), ("vethp2".into(), 8)],
            }],
            replays: vec![ReplayCounters {
                id: "r1".into(),
                active: false,
                completed: 9,
                failed: 1,
                statuses: [("200".to_string(), 9)].into(),
                failures: [("connect_refused".to_string(), 1)].into(),
            }],
            http_requests: [(200, 5), (401, 1)].into(),
            server: ServerSnapshot {
                connections_open: 3,
                connections_accepted: 40,
                connections_refused: 2,
                tls_handshake_failures: 1,
                timeouts: vec![("header_read", 7), ("handling", 0)],
                reloads: vec![("token", "ok", 1)],
            },
        }
    }

    /// The families, names, labels and types the agent has always served (the counters
    /// get `_total` from the encoder, not from us).
    #[test]
    fn a_snapshot_renders_as_the_agent_always_served_it() {
        let expected = r#"# HELP capture_recordings_active Recordings running on this agent.
# TYPE capture_recordings_active gauge
capture_recordings_active 1
# HELP capture_recording_messages_total Messages handed to the store, per recording.
# TYPE capture_recording_messages_total counter
capture_recording_messages_total{recording="peak"} 20
# HELP capture_recording_store_backlog_messages Messages queued for the store thread, not yet written (drops start at the queue's cap).
# TYPE capture_recording_store_backlog_messages gauge
capture_recording_store_backlog_messages{recording="peak"} 3
# HELP capture_kernel_packets_total eBPF program counters, per recording.
# TYPE capture_kernel_packets_total counter
capture_kernel_packets_total{recording="peak",counter="seen"} 40
capture_kernel_packets_total{recording="peak",counter="captured"} 38
# HELP capture_interface_packets_total Packets captured per interface, per recording.
# TYPE capture_interface_packets_total counter
capture_interface_packets_total{recording="peak",interface="vethp1"} 30
capture_interface_packets_total{recording="peak",interface="vethp2"} 8
# HELP capture_recording_drops_total Messages or packets lost, by reason.
# TYPE capture_recording_drops_total counter
capture_recording_drops_total{recording="peak",reason="kernel_ring_full"} 2
capture_recording_drops_total{recording="peak",reason="store_queue_full"} 0
# HELP capture_replays_active Replays running on this agent.
# TYPE capture_replays_active gauge
capture_replays_active 0
# HELP capture_replay_requests_total Replayed requests by outcome.
# TYPE capture_replay_requests_total counter
capture_replay_requests_total{replay="r1",outcome="completed"} 9
capture_replay_requests_total{replay="r1",outcome="failed"} 1
# HELP capture_replay_responses_total Replayed responses by status.
# TYPE capture_replay_responses_total counter
capture_replay_responses_total{replay="r1",status="200"} 9
# HELP capture_replay_failures_total Failed replayed requests by kind.
# TYPE capture_replay_failures_total counter
capture_replay_failures_total{replay="r1",kind="connect_refused"} 1
# HELP capture_agent_http_requests_total API calls answered, by status code.
# TYPE capture_agent_http_requests_total counter
capture_agent_http_requests_total{code="200"} 5
capture_agent_http_requests_total{code="401"} 1
# HELP capture_agent_connections_open API connections open now.
# TYPE capture_agent_connections_open gauge
capture_agent_connections_open 3
# HELP capture_agent_connections_accepted_total API connections accepted and served.
# TYPE capture_agent_connections_accepted_total counter
capture_agent_connections_accepted_total 40
# HELP capture_agent_connections_refused_total API connections closed at once because --max-connections were open.
# TYPE capture_agent_connections_refused_total counter
capture_agent_connections_refused_total 2
# HELP capture_agent_timeouts_total API connections closed or calls answered at a deadline, by kind (header_read, idle, tls_handshake: connection closed; body_read: 408; handling: 503).
# TYPE capture_agent_timeouts_total counter
capture_agent_timeouts_total{kind="header_read"} 7
capture_agent_timeouts_total{kind="handling"} 0
# HELP capture_agent_tls_handshake_failures_total TLS handshakes that failed (wrong CA on the client, not TLS, bad protocol version).
# TYPE capture_agent_tls_handshake_failures_total counter
capture_agent_tls_handshake_failures_total 1
# HELP capture_agent_file_reloads_total Token and TLS files read again after they changed, by outcome (failed: the old version stays in use).
# TYPE capture_agent_file_reloads_total counter
capture_agent_file_reloads_total{file="token",outcome="ok"} 1
"#;
        assert_eq!(render(snapshot()), expected);
    }

    #[test]
    fn an_idle_agent_describes_every_family_and_counts_zero_active() {
        let text = render(MetricsSnapshot::default());
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# TYPE ")).count(),
            17
        );
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "capture_recordings_active 0",
                "capture_replays_active 0",
                "capture_agent_connections_open 0",
                "capture_agent_connections_accepted_total 0",
                "capture_agent_connections_refused_total 0",
                "capture_agent_tls_handshake_failures_total 0",
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = MetricsSnapshot::default();
        s.replays.push(ReplayCounters {
            id: "r1".into(),
            active: true,
            completed: 0,
            failed: 1,
            statuses: BTreeMap::new(),
            failures: [("said \"no\"\\\n".to_string(), 1)].into(),
        });
        let text = render(s);
        assert!(
            text.contains(r#"capture_replay_failures_total{replay="r1",kind="said \"no\"\\\n"} 1"#),
            "{text}"
        );
        assert!(text.contains("capture_replays_active 1"), "{text}");
    }

    #[test]
    fn a_recordings_drops_are_its_status_losses() {
        let status = RecorderStatus {
            messages_queued: 7,
            messages_written: 5,
            store_queue_full: 4,
            ..RecorderStatus::default()
        };
        let c = RecordingCounters::new("peak", true, &status);
        assert_eq!((c.messages, c.store_backlog), (7, 2));
        assert_eq!(c.drops, status.losses());
        assert!(c.drops.contains(&("store_queue_full".to_string(), 4)));
        assert_eq!(
            c.kernel,
            status.live.capture.kernel.pairs().collect::<Vec<_>>()
        );
    }
}
