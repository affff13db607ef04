//! Sans-IO: TLS calls turned into the stream events the framers take, so plaintext goes
//! through the same HTTP/1 and HTTP/2 framing as clear text captured from packets. A
//! stream is one SSL object of one process; its bytes are already in order (the library
//! hands them over that way), so nothing is reassembled. Which side is the server is read
//! from the configured ports: the local port when the process serves one, else the remote.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::Bytes;

use super::record::{TlsCallRecord, TlsEvent};
use crate::packet::Timestamp;
use crate::reassembly::{CloseReason, FlowDir, StreamEvent};

/// Connection numbers of TLS streams start here, far from the reassembler's, so the two
/// never meet and a message tells it came from TLS.
const FIRST_CONN: u64 = crate::message::TLS_CONN_BASE;

/// Limits of stream tracking.
#[derive(Clone, Copy, Debug)]
pub struct TlsStreamConfig {
    /// Streams tracked at once; a new one beyond this closes the least recently active.
    pub max_streams: usize,
    /// A stream with no call for this long is closed (its open messages emitted).
    pub idle_timeout_ns: u64,
}

impl Default for TlsStreamConfig {
    fn default() -> Self {
        Self {
            max_streams: 65_536,
            idle_timeout_ns: 120 * 1_000_000_000,
        }
    }
}

/// Counters of stream tracking, named as in summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsStreamStats {
    pub tls_streams: u64,
    pub tls_streams_midstream: u64,
    pub tls_streams_evicted: u64,
    pub tls_streams_idle: u64,
    /// Calls on a connection where neither port is configured (none should come: the kernel
    /// filters; counted, not framed).
    pub tls_other_port_calls: u64,
    /// Plaintext bytes missing after calls cut at the copy limit.
    pub tls_missing_bytes: u64,
}

impl TlsStreamStats {
    /// Every counter as (name, value).
    pub fn pairs(&self) -> [(&'static str, u64); 6] {
        [
            ("tls_streams", self.tls_streams),
            ("tls_streams_midstream", self.tls_streams_midstream),
            ("tls_streams_evicted", self.tls_streams_evicted),
            ("tls_streams_idle", self.tls_streams_idle),
            ("tls_other_port_calls", self.tls_other_port_calls),
            ("tls_missing_bytes", self.tls_missing_bytes),
        ]
    }
}

struct Stream {
    conn: u64,
    local: SocketAddr,
    remote: SocketAddr,
    /// The process serves the port (server side); otherwise it calls it.
    local_is_server: bool,
    last_ts: Timestamp,
}

/// The open streams and the events they produce.
pub struct TlsStreams {
    config: TlsStreamConfig,
    ports: Vec<u16>,
    streams: HashMap<(u32, u64), Stream>,
    next_conn: u64,
    stats: TlsStreamStats,
}

impl TlsStreams {
    /// Streams of connections on `ports`.
    pub fn new(config: TlsStreamConfig, ports: Vec<u16>) -> Self {
        Self {
            config,
            ports,
            streams: HashMap::new(),
            next_conn: FIRST_CONN,
            stats: TlsStreamStats::default(),
        }
    }

    pub fn stats(&self) -> TlsStreamStats {
        self.stats
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Takes one call; appends the events it makes.
    pub fn push(&mut self, call: TlsCallRecord, events: &mut Vec<StreamEvent>) {
        let key = (call.tgid, call.ssl);
        let TlsEvent::Data {
            local,
            remote,
            sent,
            midstream,
            bytes,
            missing,
        } = call.event
        else {
            if let Some(stream) = self.streams.remove(&key) {
                events.push(closed(stream.conn, call.ts, CloseReason::Fin));
            }
            return;
        };
        // The same SSL object on another connection: the old stream ended unseen.
        if let Some(stream) = self.streams.get(&key)
            && (stream.local, stream.remote) != (local, remote)
            && let Some(old) = self.streams.remove(&key)
        {
            events.push(closed(old.conn, call.ts, CloseReason::Fin));
        }
        if !self.streams.contains_key(&key) {
            let local_is_server = if self.ports.contains(&local.port()) {
                true
            } else if self.ports.contains(&remote.port()) {
                false
            } else {
                self.stats.tls_other_port_calls += 1;
                return;
            };
            if self.streams.len() >= self.config.max_streams {
                self.evict_oldest(call.ts, events);
            }
            let conn = self.next_conn;
            self.next_conn += 1;
            self.stats.tls_streams += 1;
            self.stats.tls_streams_midstream += u64::from(midstream);
            let (client, server) = if local_is_server {
                (remote, local)
            } else {
                (local, remote)
            };
            events.push(StreamEvent::Opened {
                conn,
                client,
                server,
                midstream,
            });
            self.streams.insert(
                key,
                Stream {
                    conn,
                    local,
                    remote,
                    local_is_server,
                    last_ts: call.ts,
                },
            );
        }
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        stream.last_ts = stream.last_ts.max(call.ts);
        // A server receives what goes to the server; a client sends it.
        let dir = if sent != stream.local_is_server {
            FlowDir::ToServer
        } else {
            FlowDir::ToClient
        };
        events.push(StreamEvent::Data {
            conn: stream.conn,
            dir,
            ts: call.ts,
            bytes: Bytes::from(bytes),
        });
        if missing > 0 {
            self.stats.tls_missing_bytes += missing;
            events.push(StreamEvent::Gap {
                conn: stream.conn,
                dir,
                ts: call.ts,
                missing,
            });
        }
    }

    fn evict_oldest(&mut self, ts: Timestamp, events: &mut Vec<StreamEvent>) {
        let oldest = self
            .streams
            .iter()
            .min_by_key(|(_, s)| s.last_ts)
            .map(|(key, _)| *key);
        if let Some(stream) = oldest.and_then(|key| self.streams.remove(&key)) {
            self.stats.tls_streams_evicted += 1;
            events.push(closed(stream.conn, ts, CloseReason::Idle));
        }
    }

    /// Closes streams idle as of `now`.
    pub fn expire(&mut self, now: Timestamp, events: &mut Vec<StreamEvent>) {
        let timeout = self.config.idle_timeout_ns;
        let stale: Vec<(u32, u64)> = self
            .streams
            .iter()
            .filter(|(_, s)| now.0.saturating_sub(s.last_ts.0) > timeout)
            .map(|(key, _)| *key)
            .collect();
        for key in stale {
            if let Some(stream) = self.streams.remove(&key) {
                self.stats.tls_streams_idle += 1;
                events.push(closed(stream.conn, now, CloseReason::Idle));
            }
        }
    }

    /// Ends the input: every stream closes.
    pub fn finish(&mut self, now: Timestamp, events: &mut Vec<StreamEvent>) {
        for (_, stream) in self.streams.drain() {
            events.push(closed(
                stream.conn,
                now.max(stream.last_ts),
                CloseReason::EndOfInput,
            ));
        }
    }
}

fn closed(conn: u64, ts: Timestamp, reason: CloseReason) -> StreamEvent {
    StreamEvent::Closed { conn, ts, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(
        ssl: u64,
        local: &str,
        remote: &str,
        sent: bool,
        bytes: &[u8],
        ts: u64,
    ) -> TlsCallRecord {
        TlsCallRecord {
            ts: Timestamp(ts),
            tgid: 7,
            ssl,
            event: TlsEvent::Data {
                local: local.parse().expect("addr"),
                remote: remote.parse().expect("addr"),
                sent,
                midstream: false,
                bytes: bytes.to_vec(),
                missing: 0,
            },
        }
    }

    fn streams() -> TlsStreams {
        TlsStreams::new(TlsStreamConfig::default(), vec![8443])
    }

    #[test]
    fn a_server_side_stream_receives_requests_and_sends_responses() {
        let mut s = streams();
        let mut ev = Vec::new();
        s.push(
            data(1, "10.0.0.1:8443", "10.0.0.2:5000", false, b"GET", 1),
            &mut ev,
        );
        s.push(
            data(1, "10.0.0.1:8443", "10.0.0.2:5000", true, b"200", 2),
            &mut ev,
        );
        let StreamEvent::Opened {
            conn,
            client,
            server,
            midstream,
        } = ev[0]
        else {
            panic!("opened first: {ev:?}");
        };
        assert_eq!(client, "10.0.0.2:5000".parse().expect("addr"));
        assert_eq!(server, "10.0.0.1:8443".parse().expect("addr"));
        assert!(!midstream);
        assert!(
            matches!(&ev[1], StreamEvent::Data { conn: c, dir: FlowDir::ToServer, .. } if *c == conn)
        );
        assert!(matches!(
            &ev[2],
            StreamEvent::Data {
                dir: FlowDir::ToClient,
                ..
            }
        ));
    }

    #[test]
    fn a_client_side_stream_sends_requests() {
        let mut s = streams();
        let mut ev = Vec::new();
        s.push(
            data(1, "10.0.0.2:5000", "10.0.0.1:8443", true, b"GET", 1),
            &mut ev,
        );
        s.push(
            data(1, "10.0.0.2:5000", "10.0.0.1:8443", false, b"200", 2),
            &mut ev,
        );
        assert!(matches!(ev[0], StreamEvent::Opened { server, .. } if server.port() == 8443));
        assert!(matches!(
            &ev[1],
            StreamEvent::Data {
                dir: FlowDir::ToServer,
                ..
            }
        ));
        assert!(matches!(
            &ev[2],
            StreamEvent::Data {
                dir: FlowDir::ToClient,
                ..
            }
        ));
    }

    #[test]
    fn freeing_reusing_and_idling_close_streams_and_other_ports_are_counted() {
        let mut s = streams();
        let mut ev = Vec::new();
        s.push(
            data(1, "10.0.0.1:8443", "10.0.0.2:5000", false, b"a", 1),
            &mut ev,
        );
        // The same SSL object on a new connection closes the first stream.
        s.push(
            data(1, "10.0.0.1:8443", "10.0.0.2:5001", false, b"b", 2),
            &mut ev,
        );
        assert!(matches!(ev[2], StreamEvent::Closed { .. }));
        assert!(matches!(ev[3], StreamEvent::Opened { .. }));
        s.push(
            TlsCallRecord {
                ts: Timestamp(3),
                tgid: 7,
                ssl: 1,
                event: TlsEvent::Freed,
            },
            &mut ev,
        );
        assert!(matches!(ev.last(), Some(StreamEvent::Closed { .. })));
        assert_eq!(s.open_streams(), 0);
        s.push(
            data(2, "10.0.0.1:9999", "10.0.0.2:5000", false, b"x", 4),
            &mut ev,
        );
        assert_eq!(s.stats().tls_other_port_calls, 1);
        s.push(
            data(3, "10.0.0.1:8443", "10.0.0.2:5002", false, b"c", 5),
            &mut ev,
        );
        let before = ev.len();
        s.expire(Timestamp(5 + 121 * 1_000_000_000), &mut ev);
        assert!(matches!(
            ev[before],
            StreamEvent::Closed {
                reason: CloseReason::Idle,
                ..
            }
        ));
        assert_eq!((s.stats().tls_streams, s.stats().tls_streams_idle), (3, 1));
    }

    #[test]
    fn a_cut_call_leaves_a_gap_and_the_stream_cap_closes_the_oldest() {
        let mut s = TlsStreams::new(
            TlsStreamConfig {
                max_streams: 1,
                ..TlsStreamConfig::default()
            },
            vec![8443],
        );
        let mut ev = Vec::new();
        let mut cut = data(1, "10.0.0.1:8443", "10.0.0.2:5000", false, b"a", 1);
        if let TlsEvent::Data { missing, .. } = &mut cut.event {
            *missing = 100;
        }
        s.push(cut, &mut ev);
        assert!(matches!(ev[2], StreamEvent::Gap { missing: 100, .. }));
        s.push(
            data(2, "10.0.0.1:8443", "10.0.0.2:5001", false, b"b", 2),
            &mut ev,
        );
        assert!(matches!(
            ev[3],
            StreamEvent::Closed {
                reason: CloseReason::Idle,
                ..
            }
        ));
        assert_eq!(s.stats().tls_streams_evicted, 1);
        s.finish(Timestamp(9), &mut ev);
        assert!(matches!(
            ev.last(),
            Some(StreamEvent::Closed {
                reason: CloseReason::EndOfInput,
                ..
            })
        ));
    }
}
