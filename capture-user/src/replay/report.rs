//! What a replay did: counts, statuses, errors by kind, latency and scheduling-lag
//! percentiles, and where the target answered differently than when it was recorded.
//! Sans-IO: the engine feeds outcomes; the summary and the progress line read it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::diff::DiffSummary;
use super::sample::SampleStats;
use super::shard::Shard;
use super::source::SourceStats;
use super::timeline::{Timeline, TimelinePoint};
use super::tls::TlsSummary;

/// Why a replayed request failed, named as in summaries and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureKind {
    /// Nothing listens on the target (connection refused).
    ConnectRefused,
    /// No answer to the connection attempt within the connect timeout.
    ConnectTimeout,
    /// Any other connection failure (unreachable network, reset during connect...).
    ConnectError,
    /// The client ran out of local ports (EADDRNOTAVAIL): too many connections opened too
    /// fast, most of them in TIME_WAIT.
    LocalPortsExhausted,
    /// Writing the request failed (the target reset or closed the connection).
    WriteError,
    /// No complete response within the response timeout.
    ResponseTimeout,
    /// The target closed or reset the connection before the response was complete.
    ClosedBeforeResponse,
    /// The target answered with bytes that are not HTTP.
    BadResponse,
    /// The HTTP/2 session failed (a protocol error, GOAWAY, or a stream reset by the target).
    Http2Error,
    /// The recorded request cannot be sent as HTTP/2 (its stored form does not read back).
    UnsendableRequest,
    /// The TLS handshake with an https target failed: most often its certificate is not
    /// signed by the `--ca-file` CA or does not name the server name (the target's host, or
    /// `--host`); also no common protocol version or cipher suite. Remedy: the CA that signed
    /// the target's certificate, `--host` with the name it carries, or `--insecure`.
    TlsHandshake,
    /// An HTTP/2 connection to an https target: the server refused or did not select `h2` by
    /// ALPN (its TLS listener serves HTTP/1 only). Remedy: enable HTTP/2 on that listener.
    TlsNoH2,
}

impl FailureKind {
    /// Name in summaries, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::ConnectError => "connect_error",
            Self::LocalPortsExhausted => "local_ports_exhausted",
            Self::WriteError => "write_error",
            Self::ResponseTimeout => "response_timeout",
            Self::ClosedBeforeResponse => "closed_before_response",
            Self::BadResponse => "bad_response",
            Self::Http2Error => "http2_error",
            Self::UnsendableRequest => "unsendable_request",
            Self::TlsHandshake => "tls_handshake",
            Self::TlsNoH2 => "tls_no_h2",
        }
    }
}

/// A failed request: its kind, and what the OS, the TLS library or the HTTP/2 library said,
/// when that says more than the kind (a reset, an unreachable network, a certificate its CA
/// does not sign, the frame an HTTP/2 session broke on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: Option<Box<str>>,
}

/// Longest detail kept, in bytes: error texts are a line; a longer one is cut.
const DETAIL_MAX: usize = 300;

impl Failure {
    /// A failure of `kind` with the error behind it.
    pub fn new(kind: FailureKind, detail: impl std::fmt::Display) -> Self {
        let mut text = detail.to_string();
        if text.len() > DETAIL_MAX {
            let mut cut = DETAIL_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        Self {
            kind,
            detail: Some(text.into()),
        }
    }
}

impl From<FailureKind> for Failure {
    fn from(kind: FailureKind) -> Self {
        Self { kind, detail: None }
    }
}

/// Largest value the histograms track (1 hour, in µs); larger values are clamped.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

fn histogram() -> Histogram<u64> {
    // Three significant digits: within 0.1%; bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds")
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    h.saturating_record(us.clamp(1, HISTOGRAM_MAX_US));
}

/// The counts of one copy of the traffic (`--copies`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CopyCounts {
    /// The copy's number (1 to N), as its copy header carries it.
    pub copy: u32,
    pub planned: u64,
    pub sent: u64,
    pub completed: u64,
    pub failed: u64,
}

/// Running totals of one replay.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Sends planned so far (requests × loops × copies, as the source is read).
    pub planned: u64,
    /// When the first request was written, from the replay's start call.
    pub first_request_after: Option<Duration>,
    /// Requests written (at least started) to the target.
    pub sent: u64,
    /// Requests that got a complete final response.
    pub completed: u64,
    /// Connections opened (the first for each recorded connection, then reconnects).
    pub connections: u64,
    pub failures: BTreeMap<FailureKind, u64>,
    /// The first detail of each failure kind that had one (see [`Failure`]).
    pub failure_details: BTreeMap<FailureKind, Box<str>>,
    /// Failures of requests never written (counted in `failures`, not in `sent`), whatever
    /// their kind: a session that would not open fails as `http2_error` like one that broke.
    failed_unsent: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// gRPC answers by `grpc-status` (HTTP/2 only; a status missing from the trailers counts
    /// as "missing").
    pub grpc_statuses: BTreeMap<String, u64>,
    /// (recorded status, replayed status) → count, for responses that differ.
    pub mismatches: BTreeMap<(u16, u16), u64>,
    pub response_body_bytes: u64,
    /// Per copy, in copy order (one entry without `--copies`).
    pub copies: Vec<CopyCounts>,
    /// What reading the source amounted to (and what `--sample` kept), once it is over.
    pub source: Option<SourceSummary>,
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    /// Sends, answers and latency over the replay, for the report's charts.
    timeline: Timeline,
}

impl Tally {
    /// Empty totals for `copies` copies (the plan grows as the source is read: see `planned`).
    pub fn new(copies: u32) -> Self {
        let copies = copies.max(1);
        Self {
            planned: 0,
            first_request_after: None,
            sent: 0,
            completed: 0,
            connections: 0,
            failures: BTreeMap::new(),
            failure_details: BTreeMap::new(),
            failed_unsent: 0,
            statuses: BTreeMap::new(),
            grpc_statuses: BTreeMap::new(),
            mismatches: BTreeMap::new(),
            response_body_bytes: 0,
            copies: (1..=copies)
                .map(|copy| CopyCounts {
                    copy,
                    ..CopyCounts::default()
                })
                .collect(),
            source: None,
            latency: histogram(),
            lag: histogram(),
            timeline: Timeline::new(),
        }
    }

    /// The source was read to its end (or the replay stopped): what it held and what the
    /// filters, sample and shard kept.
    pub fn source_done(&mut self, summary: SourceSummary) {
        self.source = Some(summary);
    }

    /// The counts of copy `copy` (0-based, as the plan numbers them).
    fn copy(&mut self, copy: u32) -> &mut CopyCounts {
        let last = self.copies.len().saturating_sub(1);
        let i = (copy as usize).min(last);
        &mut self.copies[i]
    }

    /// One more send of copy `copy` is planned.
    pub fn planned(&mut self, copy: u32) {
        self.planned += 1;
        self.copy(copy).planned += 1;
    }

    /// A request of copy `copy` is being written `lag` after its planned time, `at` into the
    /// replay.
    pub fn sent(&mut self, copy: u32, at: Duration, lag: Duration) {
        self.timeline.sent(at);
        self.sent += 1;
        self.copy(copy).sent += 1;
        record(&mut self.lag, lag);
    }

    /// A request is not even written: its connection could not be opened.
    pub fn not_sent(
        &mut self,
        copy: u32,
        at: Duration,
        lag: Duration,
        failure: impl Into<Failure>,
    ) {
        self.timeline.failed(at);
        record(&mut self.lag, lag);
        self.count_failure(failure.into());
        self.failed_unsent += 1;
        self.copy(copy).failed += 1;
    }

    /// Its final response arrived `latency` after the send started.
    pub fn completed(
        &mut self,
        copy: u32,
        at: Duration,
        status: u16,
        recorded: Option<u16>,
        body_len: u64,
        latency: Duration,
    ) {
        self.timeline.answered(at, latency);
        self.completed += 1;
        self.copy(copy).completed += 1;
        *self.statuses.entry(status).or_default() += 1;
        if let Some(recorded) = recorded
            && recorded != status
        {
            *self.mismatches.entry((recorded, status)).or_default() += 1;
        }
        self.response_body_bytes += body_len;
        record(&mut self.latency, latency);
    }

    /// A sent request failed.
    pub fn failed(&mut self, copy: u32, at: Duration, failure: impl Into<Failure>) {
        self.timeline.failed(at);
        self.count_failure(failure.into());
        self.copy(copy).failed += 1;
    }

    fn count_failure(&mut self, failure: Failure) {
        *self.failures.entry(failure.kind).or_default() += 1;
        if let Some(detail) = failure.detail {
            self.failure_details.entry(failure.kind).or_insert(detail);
        }
    }

    /// Failed requests, whatever the kind.
    pub fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }

    /// Sends that neither completed nor failed yet.
    pub fn in_flight(&self) -> u64 {
        let answered = self.completed + self.failures_total() - self.failed_unsent;
        self.sent.saturating_sub(answered)
    }

    /// One progress line: done of planned, failures, rate so far.
    pub fn progress_line(&self, elapsed: Duration) -> String {
        let done = self.completed + self.failures_total();
        let rate = self.completed as f64 / elapsed.as_secs_f64().max(1e-3);
        format!(
            "{done}/{} done, {} completed, {} failed, {rate:.0} req/s",
            self.planned,
            self.completed,
            self.failures_total()
        )
    }

    /// The replay has run for `elapsed`: the timeline's last interval ends there, not at its
    /// last event.
    pub fn ran_for(&mut self, elapsed: Duration) {
        self.timeline.advance(elapsed);
    }

    /// The summary once the replay is over.
    pub fn report(&self, elapsed: Duration, ended_early: Option<&str>) -> ReplayReport {
        let accounted = self.completed + self.failures_total() + self.in_flight();
        ReplayReport {
            planned: self.planned,
            sent: self.sent,
            completed: self.completed,
            failed: self.failures_total(),
            in_flight: self.in_flight(),
            not_run: self.planned.saturating_sub(accounted),
            failures: self
                .failures
                .iter()
                .map(|(k, n)| (k.name().to_string(), *n))
                .collect(),
            failure_details: self
                .failure_details
                .iter()
                .map(|(k, detail)| (k.name().to_string(), detail.to_string()))
                .collect(),
            statuses: self
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            grpc_statuses: self.grpc_statuses.clone(),
            status_mismatches: self.mismatches.values().sum(),
            mismatches: self
                .mismatches
                .iter()
                .map(|(&(recorded, replayed), &count)| Mismatch {
                    recorded,
                    replayed,
                    count,
                })
                .collect(),
            connections: self.connections,
            response_body_bytes: self.response_body_bytes,
            elapsed_s: elapsed.as_secs_f64(),
            requests_per_second: self.completed as f64 / elapsed.as_secs_f64().max(1e-9),
            latency_ms: Percentiles::of(&self.latency),
            schedule_lag_ms: Percentiles::of(&self.lag),
            ended_early: ended_early.map(str::to_string),
            copies: self.copies.clone(),
            sample: self.source.as_ref().and_then(|s| s.sample),
            first_request_after_ms: self.first_request_after.map(|d| d.as_secs_f64() * 1e3),
            source: self.source.clone(),
            timeline: self.timeline.points(),
            diff: None,
            diff_out_error: None,
            tls: None,
        }
    }
}

/// What reading the source gave, in the summary: how much of it was replayed, and why the rest
/// was not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SourceSummary {
    /// "recording R", "GoReplay file F", ...
    pub name: String,
    /// Counted on the first pass (loops read the same again).
    #[serde(flatten)]
    pub stats: SourceStats,
    /// Complete requests `--filter` left out.
    pub filtered_out: u64,
    /// `--shard I/N`, when given, and the requests of the other parts.
    pub shard: Option<Shard>,
    pub other_shards: u64,
    /// What `--sample` kept, when asked.
    #[serde(skip)]
    pub sample: Option<SampleStats>,
    /// Why reading stopped before the source's end, when it failed (what was read was sent).
    pub read_error: Option<String>,
}

impl SourceSummary {
    /// "source: recording R, 1000 complete requests (2 incomplete skipped, 5 filtered out, ...)"
    pub fn to_text(&self) -> String {
        let s = &self.stats;
        let mut parts = vec![
            format!("{} incomplete skipped", s.incomplete_skipped),
            format!("{} filtered out", self.filtered_out),
        ];
        if let Some(shard) = self.shard {
            parts.push(format!(
                "shard {shard}: {} in other parts",
                self.other_shards
            ));
        }
        if s.out_of_order > 0 {
            parts.push(format!(
                "{} later than the look-ahead (sent late)",
                s.out_of_order
            ));
        }
        if s.responses_unpaired > 0 {
            parts.push(format!(
                "{} responses beyond the look-ahead or without their request",
                s.responses_unpaired
            ));
        }
        format!(
            "source: {}, {} messages, {} complete requests ({})",
            self.name,
            s.messages,
            s.requests,
            parts.join(", ")
        )
    }
}

/// Percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// Responses whose status differs from the recorded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Mismatch {
    pub recorded: u16,
    pub replayed: u16,
    pub count: u64,
}

/// The summary of a replay, printed as text or JSON.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    pub planned: u64,
    pub sent: u64,
    pub completed: u64,
    pub failed: u64,
    /// Sent and not answered yet; in a final report, requests whose answers did not come
    /// within the grace after a stop (engine::STOP_GRACE).
    pub in_flight: u64,
    /// Planned sends that never ran (stopped early by --exit-after, Ctrl-C or a stop call).
    /// The source is read as the replay goes, so these are the sends read ahead; what was
    /// never read is not counted (`source.messages` says how far reading got).
    pub not_run: u64,
    pub failures: BTreeMap<String, u64>,
    /// The first error text of each failure kind that had one, as the OS, the TLS library or
    /// the HTTP/2 library worded it: what to look into when `failures` is not empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_details: BTreeMap<String, String>,
    pub statuses: BTreeMap<String, u64>,
    /// gRPC answers by `grpc-status` (empty when nothing was gRPC).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub grpc_statuses: BTreeMap<String, u64>,
    pub status_mismatches: u64,
    pub mismatches: Vec<Mismatch>,
    pub connections: u64,
    pub response_body_bytes: u64,
    pub elapsed_s: f64,
    pub requests_per_second: f64,
    /// From the first byte written to the last byte of the final response.
    pub latency_ms: Percentiles,
    /// How late each send started against its planned time.
    pub schedule_lag_ms: Percentiles,
    /// Why the replay stopped before its end, if it did.
    pub ended_early: Option<String>,
    /// The counts per copy (`--copies`; one entry without it). The fields above count all
    /// copies together.
    pub copies: Vec<CopyCounts>,
    /// What `--sample` kept: the unit, units and requests kept of those there were.
    pub sample: Option<SampleStats>,
    /// From the start of the replay to the first request written.
    pub first_request_after_ms: Option<f64>,
    /// What the source held and what was left out, once it was read.
    pub source: Option<SourceSummary>,
    /// Sent, answered and failed per second, and latency percentiles, over the replay (at
    /// most 300 points: long replays have wider intervals).
    pub timeline: Vec<TimelinePoint>,
    /// `--diff`: how the answers compare with the recorded ones, per endpoint.
    pub diff: Option<DiffSummary>,
    /// `--diff-out` could not be written completely (the summary above is still whole).
    pub diff_out_error: Option<String>,
    /// For an https target: the server name and how its certificate was checked
    /// (`insecure: true` when it was not).
    pub tls: Option<TlsSummary>,
}

impl ReplayReport {
    /// A report of nothing yet.
    pub fn empty() -> Self {
        Tally::new(1).report(Duration::ZERO, None)
    }

    /// The replay failed: some request got no response.
    pub fn has_failures(&self) -> bool {
        self.failed > 0
    }

    /// Human summary, several lines.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "replayed {} of {} planned requests in {:.2} s: {} completed, {} failed, {} in flight, {} not run ({:.1} req/s, {} connections)",
            self.sent,
            self.planned,
            self.elapsed_s,
            self.completed,
            self.failed,
            self.in_flight,
            self.not_run,
            self.requests_per_second,
            self.connections,
        );
        self.write_context(&mut s);
        let pairs = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(s, "statuses: {}", or_none(pairs(&self.statuses)));
        if !self.grpc_statuses.is_empty() {
            let _ = writeln!(s, "grpc statuses: {}", pairs(&self.grpc_statuses));
        }
        let _ = writeln!(s, "failures: {}", or_none(pairs(&self.failures)));
        for (kind, detail) in &self.failure_details {
            let _ = writeln!(s, "  first {kind}: {detail}");
        }
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "latency ms: p50={:.2} p90={:.2} p99={:.2} max={:.2}",
            l.p50, l.p90, l.p99, l.max
        );
        let g = &self.schedule_lag_ms;
        let _ = writeln!(
            s,
            "schedule lag ms: p50={:.2} p90={:.2} p99={:.2} max={:.2}",
            g.p50, g.p90, g.p99, g.max
        );
        let diffs: Vec<String> = self
            .mismatches
            .iter()
            .map(|m| format!("{}->{}: {}", m.recorded, m.replayed, m.count))
            .collect();
        let _ = writeln!(
            s,
            "status mismatches vs recorded: {}{}",
            self.status_mismatches,
            if diffs.is_empty() {
                String::new()
            } else {
                format!(" ({})", diffs.join(", "))
            }
        );
        if let Some(diff) = &self.diff {
            s.push_str(&diff.to_text());
        }
        if let Some(e) = &self.diff_out_error {
            let _ = writeln!(s, "--diff-out incomplete: {e}");
        }
        s
    }
}

impl ReplayReport {
    /// The lines that say why the counts are what they are: an early end, what the source
    /// held, the sample, a remedy, the copies.
    fn write_context(&self, s: &mut String) {
        if let Some(tls) = &self.tls {
            let _ = writeln!(s, "{}", tls.to_text());
        }
        if let Some(why) = &self.ended_early {
            let _ = writeln!(s, "ended early: {why}");
        }
        if let Some(source) = &self.source {
            let _ = writeln!(s, "{}", source.to_text());
            if let Some(e) = &source.read_error {
                let _ = writeln!(s, "reading the source failed: {e}");
            }
        }
        if let Some(sample) = &self.sample {
            let _ = writeln!(s, "{}", sample.to_text());
        }
        if self
            .failures
            .contains_key(FailureKind::LocalPortsExhausted.name())
        {
            let _ = writeln!(
                s,
                "local_ports_exhausted: this client ran out of local ports (EADDRNOTAVAIL). Replay over fewer, longer connections (--connections N for GoReplay files, a lower --concurrency), widen net.ipv4.ip_local_port_range, or set net.ipv4.tcp_tw_reuse=1"
            );
        }
        if self.failures.contains_key(FailureKind::TlsHandshake.name()) {
            let _ = writeln!(
                s,
                "tls_handshake: the TLS handshake with the target failed. Give --ca-file with the CA that signed its certificate, --host with the name the certificate carries, or --insecure to skip verification"
            );
        }
        if self.copies.len() > 1 {
            let per_copy: Vec<String> = self
                .copies
                .iter()
                .map(|c| format!("{}={}", c.copy, c.completed))
                .collect();
            let _ = writeln!(
                s,
                "copies: {}, completed per copy: {} (--json has each copy's counts)",
                self.copies.len(),
                per_copy.join(" ")
            );
        }
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() { "none".to_string() } else { s }
}

#[cfg(test)]
mod tests;
