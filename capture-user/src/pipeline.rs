//! Decode -> reassembly -> framing, shared by live capture and pcap files, so both give the
//! same messages for the same packets.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use crate::counters::CounterTable;
use crate::decode::{TcpSegment, decode_tcp_owned};
use crate::http::{FramedMessage, IdAllocator};
use crate::message::HttpMessage;
use crate::packet::{CapturedPacket, Timestamp};
use crate::protocol::{FramingConfig, FramingStats, ProtocolFramer};
use crate::reassembly::{FlowDir, Reassembler, ReassemblyConfig, ReassemblyStats, StreamEvent};
use crate::redact::Redaction;

/// What the pipeline needs to know.
#[derive(Clone, Debug, Default)]
pub struct PipelineConfig {
    /// Server ports. Segments on other ports are skipped (counted) when this is not empty;
    /// it also tells which side is the server on connections seen without their SYN.
    pub ports: Vec<u16>,
    pub reassembly: ReassemblyConfig,
    /// Limits of HTTP/1 and HTTP/2 framing.
    pub framing: FramingConfig,
    /// `--redact-header`: applied to every message as it is framed.
    pub redaction: Redaction,
}

/// Every counter of the pipeline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    pub packets: u64,
    pub truncated_packets: u64,
    pub other_ports: u64,
    /// Packets that could not be decoded to TCP, by reason.
    pub decode_errors: BTreeMap<&'static str, u64>,
    pub reassembly: ReassemblyStats,
    /// HTTP/1 and HTTP/2 framing.
    pub framing: FramingStats,
    pub messages: u64,
}

impl PipelineStats {
    /// All counters as `name=value`, in a stable order.
    pub fn pairs(&self) -> Vec<(String, u64)> {
        let mut pairs = vec![
            ("packets".to_string(), self.packets),
            ("truncated_packets".to_string(), self.truncated_packets),
            ("other_ports".to_string(), self.other_ports),
        ];
        for (reason, n) in &self.decode_errors {
            pairs.push((format!("decode_error_{reason}"), *n));
        }
        pairs.extend(
            self.reassembly
                .pairs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        pairs.extend(
            self.framing
                .http
                .pairs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        pairs.extend(
            self.framing
                .http2
                .pairs()
                .into_iter()
                .map(|(k, v)| (format!("h2_{k}"), v)),
        );
        pairs.push(("messages".to_string(), self.messages));
        pairs
    }

    /// What was lost or could not be framed, by reason (zero values included; decode errors
    /// only once seen): what recordings and `/metrics` report as drops.
    pub fn losses(&self) -> Vec<(String, u64)> {
        let stages = self
            .reassembly
            .losses()
            .into_iter()
            .chain(self.framing.http.losses())
            .map(|(name, v)| (name.to_string(), v))
            .chain(
                self.framing
                    .http2
                    .losses()
                    .into_iter()
                    .map(|(name, v)| (format!("h2_{name}"), v)),
            );
        let decode = self
            .decode_errors
            .iter()
            .map(|(reason, n)| (format!("decode_error_{reason}"), *n));
        std::iter::once(("truncated_packets".to_string(), self.truncated_packets))
            .chain(decode)
            .chain(stages)
            .collect()
    }

    /// Adds another pipeline's counters to these: several framing threads, one view.
    pub fn add(&mut self, other: &Self) {
        self.packets += other.packets;
        self.truncated_packets += other.truncated_packets;
        self.other_ports += other.other_ports;
        for (reason, n) in &other.decode_errors {
            *self.decode_errors.entry(reason).or_insert(0) += n;
        }
        self.reassembly.add(&other.reassembly);
        self.framing.http.add(&other.framing.http);
        self.framing.http2.add(&other.framing.http2);
        self.messages += other.messages;
    }

    /// The counters on one line.
    pub fn to_line(&self) -> String {
        self.pairs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

struct Conn {
    client: SocketAddr,
    server: SocketAddr,
    framer: ProtocolFramer,
}

/// The sans-IO pipeline from packets to messages.
pub struct Pipeline {
    config: PipelineConfig,
    reassembler: Reassembler,
    conns: HashMap<u64, Conn, foldhash::fast::RandomState>,
    ids: IdAllocator,
    events: Vec<StreamEvent>,
    framed: Vec<FramedMessage>,
    stats: PipelineStats,
    last_ts: Timestamp,
}

impl Pipeline {
    /// A pipeline with the given limits.
    pub fn new(config: PipelineConfig) -> Self {
        let ports = config.ports.clone();
        let reassembler = Reassembler::new(config.reassembly.clone(), move |p| ports.contains(&p));
        Self {
            config,
            reassembler,
            conns: HashMap::default(),
            ids: IdAllocator::default(),
            events: Vec::new(),
            framed: Vec::new(),
            stats: PipelineStats::default(),
            last_ts: Timestamp(0),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PipelineStats {
        let mut stats = self.stats.clone();
        stats.reassembly = self.reassembler.stats();
        stats
    }

    /// Feeds one packet; finished messages are appended to `out`.
    pub fn push_packet(&mut self, packet: CapturedPacket, out: &mut Vec<HttpMessage>) {
        self.stats.packets += 1;
        if packet.is_truncated() {
            // Its payload is cut; the missing bytes show up as a gap in reassembly.
            self.stats.truncated_packets += 1;
        }
        let segment = match decode_tcp_owned(packet.link, packet.data) {
            Ok(segment) => segment,
            Err(e) => {
                *self.stats.decode_errors.entry(e.reason()).or_insert(0) += 1;
                return;
            }
        };
        self.push_segment(packet.ts, segment, out);
    }

    /// Feeds one decoded TCP segment (what `push_packet` does after decoding; fuzzers and
    /// sources that already have segments start here).
    pub fn push_segment(&mut self, ts: Timestamp, segment: TcpSegment, out: &mut Vec<HttpMessage>) {
        let ports = &self.config.ports;
        if !ports.is_empty()
            && !ports.contains(&segment.src.port())
            && !ports.contains(&segment.dst.port())
        {
            self.stats.other_ports += 1;
            return;
        }
        self.last_ts = self.last_ts.max(ts);
        self.reassembler.push(ts, segment, &mut self.events);
        self.drain(out);
    }

    /// Feeds stream events from a source that needs no reassembly (TLS plaintext: in order
    /// per stream); finished messages are appended to `out`.
    pub fn push_stream_events(
        &mut self,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<HttpMessage>,
    ) {
        if let Some(ts) = events.iter().filter_map(event_ts).max() {
            self.last_ts = self.last_ts.max(ts);
        }
        self.events.append(events);
        self.drain(out);
    }

    /// Out-of-order bytes reassembly holds right now (bounded by the reassembly caps).
    pub fn held_bytes(&self) -> usize {
        self.reassembler.held_bytes()
    }

    /// Ends the input: open connections close, their open messages are emitted.
    pub fn finish(&mut self, out: &mut Vec<HttpMessage>) {
        self.reassembler.finish(self.last_ts, &mut self.events);
        self.drain(out);
    }

    /// Closes connections idle as of `now` (live capture calls this on a timer, so quiet
    /// connections are flushed even when no packet arrives).
    pub fn expire(&mut self, now: Timestamp, out: &mut Vec<HttpMessage>) {
        self.reassembler.expire(now, &mut self.events);
        self.drain(out);
    }

    /// Frames the events reassembly produced; the new messages are redacted before anything
    /// else sees them.
    fn drain(&mut self, out: &mut Vec<HttpMessage>) {
        let first_new = out.len();
        self.frame_events(out);
        let redaction = &self.config.redaction;
        if redaction.is_empty() {
            return;
        }
        for m in &mut out[first_new..] {
            if let Some(bytes) = redaction.apply(&m.bytes, m.version, m.body_len) {
                m.bytes = bytes;
            }
        }
    }

    fn frame_events(&mut self, out: &mut Vec<HttpMessage>) {
        let framing = &mut self.stats.framing;
        for event in self.events.drain(..) {
            match event {
                StreamEvent::Opened {
                    conn,
                    client,
                    server,
                    midstream,
                } => {
                    self.conns.insert(
                        conn,
                        Conn {
                            client,
                            server,
                            framer: ProtocolFramer::new(self.config.framing.clone(), midstream),
                        },
                    );
                }
                StreamEvent::Data {
                    conn,
                    dir,
                    ts,
                    bytes,
                } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.framer
                            .data(dir, ts, bytes, &mut self.ids, framing, &mut self.framed);
                        Self::publish(conn, c, &mut self.framed, &mut self.stats.messages, out);
                    }
                }
                StreamEvent::Gap { conn, dir, ts, .. } => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.framer.gap(dir, ts, framing, &mut self.framed);
                        Self::publish(conn, c, &mut self.framed, &mut self.stats.messages, out);
                    }
                }
                StreamEvent::Closed { conn, ts, .. } => {
                    if let Some(mut c) = self.conns.remove(&conn) {
                        c.framer.close(ts, &mut self.ids, framing, &mut self.framed);
                        Self::publish(conn, &c, &mut self.framed, &mut self.stats.messages, out);
                    }
                }
            }
        }
    }

    fn publish(
        conn_id: u64,
        conn: &Conn,
        framed: &mut Vec<FramedMessage>,
        count: &mut u64,
        out: &mut Vec<HttpMessage>,
    ) {
        for m in framed.drain(..) {
            let (src, dst) = match m.dir {
                FlowDir::ToServer => (conn.client, conn.server),
                FlowDir::ToClient => (conn.server, conn.client),
            };
            *count += 1;
            out.push(HttpMessage {
                id: m.id,
                conn_id,
                kind: m.kind,
                version: m.version,
                request_id: m.request_id,
                first_ts: m.first_ts,
                last_ts: m.last_ts,
                src,
                dst,
                bytes: m.bytes,
                body_len: m.body_len,
                complete: m.complete,
            });
        }
    }
}

fn event_ts(event: &StreamEvent) -> Option<Timestamp> {
    match event {
        StreamEvent::Data { ts, .. }
        | StreamEvent::Gap { ts, .. }
        | StreamEvent::Closed { ts, .. } => Some(*ts),
        StreamEvent::Opened { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_gather_every_stage_and_name_decode_errors_by_reason() {
        let mut stats = PipelineStats {
            truncated_packets: 2,
            ..PipelineStats::default()
        };
        stats.decode_errors.insert("not_tcp", 3);
        stats.reassembly.gaps = 4;
        stats.framing.http.incomplete_messages = 5;
        stats.framing.http.requests = 99; // a count, not a loss
        let losses: BTreeMap<String, u64> = stats.losses().into_iter().collect();
        assert_eq!(losses["truncated_packets"], 2);
        assert_eq!(losses["decode_error_not_tcp"], 3);
        assert_eq!(losses["gaps"], 4);
        assert_eq!(losses["incomplete_messages"], 5);
        assert!(!losses.contains_key("requests"));
        // Every stage's loss counters are listed even when zero.
        assert_eq!(losses["buffer_cap_hits"], 0);
        assert_eq!(losses["header_too_large"], 0);
    }

    #[test]
    fn adding_counters_of_several_pipelines_sums_every_counter() {
        let mut one = PipelineStats {
            packets: 10,
            messages: 4,
            ..PipelineStats::default()
        };
        one.decode_errors.insert("not_tcp", 1);
        one.reassembly.gaps = 2;
        one.framing.http.requests = 3;
        let mut total = one.clone();
        total.add(&one);
        assert_eq!((total.packets, total.messages), (20, 8));
        assert_eq!(total.decode_errors["not_tcp"], 2);
        assert_eq!((total.reassembly.gaps, total.framing.http.requests), (4, 6));
        // Through the tables: every pair doubled.
        let doubled: Vec<(String, u64)> =
            one.pairs().into_iter().map(|(k, v)| (k, 2 * v)).collect();
        assert_eq!(total.pairs(), doubled);
    }
}
