//! TCP reassembly: turns segments of many connections, in capture order, into ordered byte
//! streams per connection and direction.
//!
//! Sans-IO: fed `(timestamp, segment)`, it returns [`StreamEvent`]s; time only advances
//! through the timestamps fed in, so idle expiry is deterministic and testable. It never
//! glues bytes across a hole: a hole that cannot be filled becomes a [`StreamEvent::Gap`]
//! and the consumer resynchronises. Every cap (connections, buffered bytes per connection and
//! in total) is enforced and counted.
//!
//! This file tracks connections (open, find, close, expire); `stream` holds one direction's
//! sequence space and the steps each segment goes through there.

mod stream;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use foldhash::fast::RandomState;
use std::net::SocketAddr;

use bytes::Bytes;

use crate::decode::TcpSegment;
use crate::packet::Timestamp;

use crate::counters::{CounterRow, CounterTable, LOSS, TALLY};
use stream::{HalfStream, Sink};

/// Direction of bytes within a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowDir {
    /// From the client (the side that sent the SYN, or that talks to a server port).
    ToServer = 0,
    /// From the server.
    ToClient = 1,
}

impl FlowDir {
    fn index(self) -> usize {
        self as usize
    }
}

/// Limits that keep memory bounded under any traffic.
#[derive(Clone, Debug)]
pub struct ReassemblyConfig {
    /// Connections tracked at once; new ones beyond this are ignored and counted.
    pub max_connections: usize,
    /// Out-of-order bytes held per connection direction before the hole is declared a gap.
    pub max_buffered_per_direction: usize,
    /// Out-of-order bytes held over all connections.
    pub max_buffered_total: usize,
    /// A connection with no segment for this long is closed (its holes become gaps).
    pub idle_timeout_ns: u64,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_buffered_per_direction: 4 << 20,
            max_buffered_total: 256 << 20,
            idle_timeout_ns: 120 * 1_000_000_000,
        }
    }
}

/// Why a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides sent FIN and all bytes up to them arrived.
    Fin,
    /// A RST was seen.
    Reset,
    /// No segment for the idle timeout.
    Idle,
    /// The input ended (end of a pcap, or capture stopped).
    EndOfInput,
}

/// What the reassembler produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// A connection is tracked for the first time. `midstream` when no SYN was seen: the
    /// consumer must find the next message start rather than assume one.
    Opened {
        conn: u64,
        client: SocketAddr,
        server: SocketAddr,
        midstream: bool,
    },
    /// In-order bytes of one direction.
    Data {
        conn: u64,
        dir: FlowDir,
        ts: Timestamp,
        bytes: Bytes,
    },
    /// Bytes of one direction are missing before what follows; `missing` is how many, when
    /// the sequence numbers tell (0 when unknown).
    Gap {
        conn: u64,
        dir: FlowDir,
        ts: Timestamp,
        missing: u64,
    },
    /// The connection ended; no more events for it.
    Closed {
        conn: u64,
        ts: Timestamp,
        reason: CloseReason,
    },
}

/// Counters of reassembly, named as in summaries and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReassemblyStats {
    pub connections: u64,
    pub connections_midstream: u64,
    pub connection_cap_hits: u64,
    pub segments: u64,
    pub segments_ignored_after_close: u64,
    pub duplicate_segments: u64,
    pub overlapping_bytes: u64,
    pub out_of_order_segments: u64,
    pub buffer_cap_hits: u64,
    pub total_buffer_cap_hits: u64,
    pub gaps: u64,
    pub gap_bytes: u64,
    pub idle_timeouts: u64,
    pub resets: u64,
}

impl CounterTable for ReassemblyStats {
    /// Which counters are losses is said once, here.
    const COUNTERS: &'static [CounterRow<Self>] = &[
        ("connections", |s| &mut s.connections, TALLY),
        (
            "connections_midstream",
            |s| &mut s.connections_midstream,
            TALLY,
        ),
        ("connection_cap_hits", |s| &mut s.connection_cap_hits, LOSS),
        ("segments", |s| &mut s.segments, TALLY),
        (
            "segments_ignored_after_close",
            |s| &mut s.segments_ignored_after_close,
            TALLY,
        ),
        ("duplicate_segments", |s| &mut s.duplicate_segments, TALLY),
        ("overlapping_bytes", |s| &mut s.overlapping_bytes, TALLY),
        (
            "out_of_order_segments",
            |s| &mut s.out_of_order_segments,
            TALLY,
        ),
        ("buffer_cap_hits", |s| &mut s.buffer_cap_hits, LOSS),
        (
            "total_buffer_cap_hits",
            |s| &mut s.total_buffer_cap_hits,
            LOSS,
        ),
        ("gaps", |s| &mut s.gaps, LOSS),
        ("gap_bytes", |s| &mut s.gap_bytes, TALLY),
        ("idle_timeouts", |s| &mut s.idle_timeouts, TALLY),
        ("resets", |s| &mut s.resets, TALLY),
    ];
}

/// A tracked connection.
struct Connection {
    id: u64,
    client: SocketAddr,
    halves: [HalfStream; 2],
    last_ts: Timestamp,
}

/// One end of a connection as plain integers (IPv4 as its IPv6-mapped form, told apart by
/// `v6`), so the per-packet lookup hashes and compares a few words instead of two enums.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    ip: u128,
    port: u16,
    v6: bool,
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => Self {
                ip: a.ip().to_ipv6_mapped().to_bits(),
                port: a.port(),
                v6: false,
            },
            SocketAddr::V6(a) => Self {
                ip: a.ip().to_bits(),
                port: a.port(),
                v6: true,
            },
        }
    }
}

/// A connection's key, the same both ways: its two endpoints, the lower first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ConnKey(Endpoint, Endpoint);

impl std::hash::Hash for ConnKey {
    /// Three words, not six fields: hashed once per segment. Equal keys hash equally since
    /// every field goes in.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (a, b) = (&self.0, &self.1);
        state.write_u128(a.ip);
        state.write_u128(b.ip);
        let ends = u64::from(a.port)
            | u64::from(b.port) << 16
            | u64::from(a.v6) << 32
            | u64::from(b.v6) << 33;
        state.write_u64(ends);
    }
}

fn conn_key(a: SocketAddr, b: SocketAddr) -> ConnKey {
    let (a, b) = (Endpoint::from(a), Endpoint::from(b));
    if a <= b { ConnKey(a, b) } else { ConnKey(b, a) }
}

/// The reassembler for every connection.
pub struct Reassembler {
    config: ReassemblyConfig,
    is_server_port: Box<dyn Fn(u16) -> bool + Send>,
    /// Keyed by addresses that arrive from the network: a hasher seeded per process (so no
    /// one can precompute colliding flows), but far cheaper than SipHash per packet.
    conns: HashMap<ConnKey, Connection, RandomState>,
    next_conn_id: u64,
    held_total: usize,
    stats: ReassemblyStats,
    last_expiry_check: u64,
}

impl Reassembler {
    /// A reassembler; `is_server_port` tells, for connections seen without their SYN, which
    /// side is the server (the configured capture ports).
    pub fn new(
        config: ReassemblyConfig,
        is_server_port: impl Fn(u16) -> bool + Send + 'static,
    ) -> Self {
        Self {
            config,
            is_server_port: Box::new(is_server_port),
            conns: HashMap::default(),
            next_conn_id: 1,
            held_total: 0,
            stats: ReassemblyStats::default(),
            last_expiry_check: 0,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// Connections currently tracked.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Out-of-order bytes currently held.
    pub fn held_bytes(&self) -> usize {
        self.held_total
    }

    /// Feeds one segment; events are appended to `out`.
    pub fn push(&mut self, ts: Timestamp, seg: TcpSegment, out: &mut Vec<StreamEvent>) {
        self.stats.segments += 1;
        self.expire_if_due(ts, out);
        let key = conn_key(seg.src, seg.dst);
        // One lookup for a known connection (nearly every segment), a second after opening.
        let conn = match self.conns.get_mut(&key) {
            Some(conn) => conn,
            None => {
                if !self.open(key, ts, &seg, out) {
                    return;
                }
                let Some(conn) = self.conns.get_mut(&key) else {
                    return;
                };
                conn
            }
        };
        conn.last_ts = ts;
        let dir = if seg.src == conn.client {
            FlowDir::ToServer
        } else {
            FlowDir::ToClient
        };
        if seg.flags.rst() {
            self.stats.resets += 1;
            self.close(key, ts, CloseReason::Reset, out);
            return;
        }
        let mut sink = Sink {
            conn: conn.id,
            dir,
            stats: &mut self.stats,
            held_total: &mut self.held_total,
            out,
        };
        conn.halves[dir.index()].push(ts, seg, &self.config, &mut sink);
        if conn.halves.iter().all(|h| h.finished) {
            self.close(key, ts, CloseReason::Fin, out);
        }
    }

    /// Idle expiry, checked at most once a second of capture time, since each check scans
    /// every connection.
    fn expire_if_due(&mut self, ts: Timestamp, out: &mut Vec<StreamEvent>) {
        if ts.0 >= self.last_expiry_check + 1_000_000_000 {
            self.last_expiry_check = ts.0;
            self.expire(ts, out);
        }
    }

    /// Starts tracking the connection of a segment not seen before, deciding which side is
    /// the client; false when it is not tracked (a bare ACK/FIN/RST, or the cap is reached).
    fn open(
        &mut self,
        key: ConnKey,
        ts: Timestamp,
        seg: &TcpSegment,
        out: &mut Vec<StreamEvent>,
    ) -> bool {
        if !seg.flags.syn() && seg.payload.is_empty() {
            // A bare ACK/FIN/RST of a connection we do not track (often the last ACK after
            // both FINs): nothing to rebuild, and no reason to track a new connection.
            self.stats.segments_ignored_after_close += 1;
            return false;
        }
        if self.conns.len() >= self.config.max_connections {
            self.stats.connection_cap_hits += 1;
            return false;
        }
        let (client, server, midstream) = if seg.flags.syn() && !seg.flags.ack() {
            (seg.src, seg.dst, false)
        } else if seg.flags.syn() {
            (seg.dst, seg.src, false)
        } else {
            let src_is_server = (self.is_server_port)(seg.src.port());
            let dst_is_server = (self.is_server_port)(seg.dst.port());
            let sender_is_client = match (src_is_server, dst_is_server) {
                (false, true) => true,
                (true, false) => false,
                _ => seg.dst.port() <= seg.src.port(),
            };
            if sender_is_client {
                (seg.src, seg.dst, true)
            } else {
                (seg.dst, seg.src, true)
            }
        };
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        self.stats.connections += 1;
        if midstream {
            self.stats.connections_midstream += 1;
        }
        self.conns.insert(
            key,
            Connection {
                id,
                client,
                halves: [HalfStream::default(), HalfStream::default()],
                last_ts: ts,
            },
        );
        out.push(StreamEvent::Opened {
            conn: id,
            client,
            server,
            midstream,
        });
        true
    }

    /// Ends a connection: remaining held bytes are delivered after a gap.
    fn close(
        &mut self,
        key: ConnKey,
        ts: Timestamp,
        reason: CloseReason,
        out: &mut Vec<StreamEvent>,
    ) {
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        for dir in [FlowDir::ToServer, FlowDir::ToClient] {
            let mut sink = Sink {
                conn: conn.id,
                dir,
                stats: &mut self.stats,
                held_total: &mut self.held_total,
                out,
            };
            conn.halves[dir.index()].skip_all_holes(ts, &mut sink);
        }
        out.push(StreamEvent::Closed {
            conn: conn.id,
            ts,
            reason,
        });
    }

    /// Closes connections idle for longer than the timeout as of `now`.
    pub fn expire(&mut self, now: Timestamp, out: &mut Vec<StreamEvent>) {
        let timeout = self.config.idle_timeout_ns;
        let idle: Vec<_> = self
            .conns
            .iter()
            .filter(|(_, c)| now.0.saturating_sub(c.last_ts.0) > timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            self.stats.idle_timeouts += 1;
            self.close(key, now, CloseReason::Idle, out);
        }
    }

    /// Ends every connection (end of input), delivering what is held after gaps.
    pub fn finish(&mut self, now: Timestamp, out: &mut Vec<StreamEvent>) {
        let mut keys: Vec<_> = self.conns.iter().map(|(k, c)| (c.id, *k)).collect();
        keys.sort_unstable();
        for (_, key) in keys {
            self.close(key, now, CloseReason::EndOfInput, out);
        }
    }
}
