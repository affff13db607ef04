//! Which framer a connection's bytes go to. A connection is HTTP/1 until it shows HTTP/2: the
//! client's first bytes are the HTTP/2 preface (prior knowledge, gRPC), or a 101 accepts
//! `Upgrade: h2c`, or (capture began mid-connection) its first bytes are HTTP/2 frames. From
//! then on the HTTP/2 framer has it for good. Sans-IO, like the framers it drives.

use bytes::{Bytes, BytesMut};

use crate::http::{ConnectionFramer, FramedMessage, HttpConfig, HttpStats, IdAllocator};
use crate::http2::{H2Config, H2Framer, H2Start, H2Stats, PREFACE};
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

/// The counters of both framers, which one connection may feed in turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FramingStats {
    pub http: HttpStats,
    pub http2: H2Stats,
}

/// Limits of both framers.
#[derive(Clone, Debug, Default)]
pub struct FramingConfig {
    pub http: HttpConfig,
    pub http2: H2Config,
}

/// What the connection is known to speak so far.
enum Framer {
    /// A new connection whose client has not sent enough to tell the preface apart: what it
    /// sent is held here (less than the preface's 24 bytes).
    Undecided(BytesMut),
    /// A connection seen without its start, before its first bytes.
    MidstreamUndecided,
    Http1(Box<ConnectionFramer>),
    Http2(Box<H2Framer>),
}

/// Frames one connection with the framer its bytes call for.
pub struct ProtocolFramer {
    framer: Framer,
    config: FramingConfig,
}

impl ProtocolFramer {
    /// A framer for a new connection; `midstream` when its start was not seen.
    pub fn new(config: FramingConfig, midstream: bool) -> Self {
        let framer = if midstream {
            Framer::MidstreamUndecided
        } else {
            Framer::Undecided(BytesMut::new())
        };
        Self { framer, config }
    }

    /// In-order bytes of one direction. Inlined: a settled HTTP/1 connection (the common
    /// case, on the capture's hot path) goes straight to its framer.
    #[inline]
    pub fn data(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        bytes: Bytes,
        ids: &mut IdAllocator,
        stats: &mut FramingStats,
        out: &mut Vec<FramedMessage>,
    ) {
        if let Framer::Http1(framer) = &mut self.framer
            && !framer.upgrade_pending()
        {
            framer.data(dir, ts, bytes, ids, &mut stats.http, out);
            if framer.upgrade_pending() {
                self.take_upgrade(ts, ids, stats, out);
            }
            return;
        }
        let settled = self.decide(dir, bytes);
        if let Some(held) = settled.held_client_bytes {
            self.feed(FlowDir::ToServer, ts, held, ids, stats, out);
        }
        if let Some(bytes) = settled.now {
            self.feed(dir, ts, bytes, ids, stats, out);
        }
    }

    /// Bytes of one direction were lost.
    pub fn gap(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        stats: &mut FramingStats,
        out: &mut Vec<FramedMessage>,
    ) {
        match &mut self.framer {
            Framer::Http1(framer) => framer.gap(dir, ts, &mut stats.http, out),
            Framer::Http2(framer) => framer.gap(dir, ts, &mut stats.http2, out),
            // Nothing framed yet: what follows is a midstream start.
            Framer::Undecided(_) | Framer::MidstreamUndecided => {
                self.framer = Framer::MidstreamUndecided;
            }
        }
    }

    /// The connection ended.
    pub fn close(
        &mut self,
        ts: Timestamp,
        ids: &mut IdAllocator,
        stats: &mut FramingStats,
        out: &mut Vec<FramedMessage>,
    ) {
        if let Framer::Undecided(held) = &mut self.framer {
            // A client that sent a few bytes and closed: HTTP/1 makes of them what it can.
            let held = held.split().freeze();
            self.framer = self.http1(false);
            if !held.is_empty() {
                self.feed(FlowDir::ToServer, ts, held, ids, stats, out);
            }
        }
        match &mut self.framer {
            Framer::Http1(framer) => framer.close(ts, ids, &mut stats.http, out),
            Framer::Http2(framer) => framer.close(ts, ids, &mut stats.http2, out),
            Framer::Undecided(_) | Framer::MidstreamUndecided => {}
        }
    }

    /// Hands `bytes` to the framer the connection has (none yet: nothing to do).
    fn feed(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        bytes: Bytes,
        ids: &mut IdAllocator,
        stats: &mut FramingStats,
        out: &mut Vec<FramedMessage>,
    ) {
        match &mut self.framer {
            Framer::Http1(framer) => {
                framer.data(dir, ts, bytes, ids, &mut stats.http, out);
                self.take_upgrade(ts, ids, stats, out);
            }
            Framer::Http2(framer) => framer.data(dir, ts, bytes, ids, &mut stats.http2, out),
            Framer::Undecided(_) | Framer::MidstreamUndecided => {}
        }
    }

    /// An HTTP/1 framer that saw a 101 to `Upgrade: h2c` hands the connection over.
    fn take_upgrade(
        &mut self,
        ts: Timestamp,
        ids: &mut IdAllocator,
        stats: &mut FramingStats,
        out: &mut Vec<FramedMessage>,
    ) {
        if let Framer::Http1(framer) = &mut self.framer
            && let Some(upgrade) = framer.take_h2c_upgrade()
        {
            self.upgrade_to_h2c(upgrade, ts, ids, stats, out);
        }
    }

    fn http1(&self, midstream: bool) -> Framer {
        Framer::Http1(Box::new(ConnectionFramer::new(
            self.config.http.clone(),
            midstream,
        )))
    }

    fn http2(&self, start: H2Start) -> Framer {
        Framer::Http2(Box::new(H2Framer::new(self.config.http2.clone(), start)))
    }

    /// Settles the protocol with `bytes` when it is not settled yet.
    fn decide(&mut self, dir: FlowDir, bytes: Bytes) -> Settled {
        let now = |bytes| Settled {
            held_client_bytes: None,
            now: Some(bytes),
        };
        match &mut self.framer {
            Framer::Http1(_) | Framer::Http2(_) => now(bytes),
            Framer::MidstreamUndecided => {
                self.framer = if starts_with_h2_frame(&bytes) {
                    self.http2(H2Start::Midstream)
                } else {
                    self.http1(true)
                };
                now(bytes)
            }
            Framer::Undecided(held) if dir == FlowDir::ToClient => {
                // The server spoke before the client's preface was whole: an HTTP/2 server
                // may send its SETTINGS at once; an HTTP/1 server never starts with a frame
                // header. What the client sent so far goes first.
                let held = held.split().freeze();
                self.framer = if starts_with_h2_frame(&bytes) {
                    self.http2(H2Start::Preface)
                } else {
                    self.http1(false)
                };
                Settled {
                    held_client_bytes: (!held.is_empty()).then_some(held),
                    now: Some(bytes),
                }
            }
            Framer::Undecided(held) => {
                // Most connections decide on their first segment, which is passed on as is.
                let bytes = if held.is_empty() {
                    bytes
                } else {
                    held.extend_from_slice(&bytes);
                    held.split().freeze()
                };
                let n = bytes.len().min(PREFACE.len());
                if bytes[..n] != PREFACE[..n] {
                    self.framer = self.http1(false);
                } else if bytes.len() < PREFACE.len() {
                    held.extend_from_slice(&bytes);
                    return Settled {
                        held_client_bytes: None,
                        now: None,
                    };
                } else {
                    self.framer = self.http2(H2Start::Preface);
                }
                now(bytes)
            }
        }
    }

    /// `Upgrade: h2c` was accepted: the HTTP/2 framer takes over with what HTTP/1 had
    /// buffered past the 101.
    fn upgrade_to_h2c(
        &mut self,
        upgrade: crate::http::H2cUpgrade,
        ts: Timestamp,
        ids: &mut IdAllocator,
        stats: &mut FramingStats,
        out: &mut Vec<FramedMessage>,
    ) {
        let start = match upgrade.request_id {
            Some(request_id) => H2Start::Upgraded { request_id },
            None => H2Start::Preface,
        };
        self.framer = self.http2(start);
        for (dir, bytes) in [
            (FlowDir::ToServer, upgrade.to_server),
            (FlowDir::ToClient, upgrade.to_client),
        ] {
            if !bytes.is_empty() {
                self.feed(dir, ts, bytes, ids, stats, out);
            }
        }
    }
}

/// What settling the protocol left to frame: client bytes held back while undecided (they go
/// first, client to server) and the bytes just given (None: held until there are enough).
struct Settled {
    held_client_bytes: Option<Bytes>,
    now: Option<Bytes>,
}

/// The bytes begin with what can only be an HTTP/2 frame header: a length below 64 KiB (so
/// the first byte is 0, which no HTTP/1 message starts with), a known frame type, the
/// reserved bit clear, a stream id that fits the type, and, when the frame ends within these
/// bytes, another plausible header (or the end) right after it.
pub fn starts_with_h2_frame(bytes: &[u8]) -> bool {
    let Some(len) = plausible_header(bytes) else {
        return false;
    };
    let next = 9 + len;
    match bytes.get(next..) {
        None | Some([]) => true,
        Some(rest) if rest.len() < 9 => true,
        Some(rest) => plausible_header(rest).is_some(),
    }
}

/// The payload length of the frame header at the start of `bytes`, when it is plausible.
fn plausible_header(bytes: &[u8]) -> Option<usize> {
    let header: &[u8; 9] = bytes.get(..9)?.try_into().ok()?;
    if header[0] != 0 || header[5] & 0x80 != 0 {
        return None;
    }
    let len = usize::from(header[1]) << 8 | usize::from(header[2]);
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
    let ok = match header[3] {
        // DATA, HEADERS, PRIORITY, RST_STREAM, PUSH_PROMISE, CONTINUATION: on a stream.
        0 | 1 | 2 | 3 | 5 | 9 => stream != 0,
        // SETTINGS (a multiple of 6), PING (8 bytes), GOAWAY: on the connection.
        4 => stream == 0 && len % 6 == 0,
        6 => stream == 0 && len == 8,
        7 => stream == 0 && len >= 8,
        // WINDOW_UPDATE: either, 4 bytes.
        8 => len == 4,
        _ => false,
    };
    ok.then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageKind;

    #[test]
    fn frames_are_told_apart_from_http1_and_noise() {
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert!(starts_with_h2_frame(&settings));
        let mut two = settings.to_vec();
        two.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert!(starts_with_h2_frame(&two));
        let mut bad_next = settings.to_vec();
        bad_next.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert!(!starts_with_h2_frame(&bad_next));
        assert!(!starts_with_h2_frame(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!starts_with_h2_frame(b"HTTP/1.1 200 OK\r\n"));
        // DATA on stream 0 is not a frame.
        assert!(!starts_with_h2_frame(&[0, 0, 1, 0, 0, 0, 0, 0, 0, b'x']));
        assert!(!starts_with_h2_frame(&[0, 0, 1]));
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn headers(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        encoder.encode(fields.iter().copied())
    }

    /// Feeds `(dir, bytes)` in order to a framer of a new connection; what it emitted.
    fn run(pieces: Vec<(FlowDir, Vec<u8>)>) -> (Vec<FramedMessage>, FramingStats) {
        let mut framer = ProtocolFramer::new(FramingConfig::default(), false);
        let (mut ids, mut stats, mut out) =
            (IdAllocator::default(), FramingStats::default(), Vec::new());
        for (dir, bytes) in pieces {
            framer.data(
                dir,
                Timestamp(1),
                Bytes::from(bytes),
                &mut ids,
                &mut stats,
                &mut out,
            );
        }
        framer.close(Timestamp(2), &mut ids, &mut stats, &mut out);
        (out, stats)
    }

    #[test]
    fn a_preface_cut_in_two_with_the_servers_settings_between_is_http2() {
        let request = headers(&[
            (b":method", b"GET"),
            (b":path", b"/a"),
            (b":scheme", b"http"),
            (b":authority", b"svc"),
        ]);
        let mut client = PREFACE[18..].to_vec();
        client.extend(frame(4, 0, 0, &[]));
        client.extend(frame(1, 0x5, 1, &request));
        let response = frame(1, 0x5, 1, &headers(&[(b":status", b"200")]));
        let (out, stats) = run(vec![
            (FlowDir::ToServer, PREFACE[..18].to_vec()),
            (FlowDir::ToClient, frame(4, 0, 0, &[])),
            (FlowDir::ToServer, client),
            (FlowDir::ToClient, response),
        ]);
        let kinds: Vec<&MessageKind> = out.iter().map(|m| &m.kind).collect();
        assert_eq!(
            kinds,
            [
                &MessageKind::Request {
                    method: "GET".into(),
                    uri: "/a".into()
                },
                &MessageKind::Response { status: 200 }
            ]
        );
        assert!(
            out.iter()
                .all(|m| m.version == crate::message::HttpVersion::Http2 && m.complete)
        );
        assert_eq!(stats.http, HttpStats::default());
    }

    #[test]
    fn http1_is_untouched_by_the_detection_even_a_byte_at_a_time() {
        let request = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut pieces: Vec<(FlowDir, Vec<u8>)> = request
            .iter()
            .map(|&b| (FlowDir::ToServer, vec![b]))
            .collect();
        pieces.push((
            FlowDir::ToClient,
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        ));
        let (out, stats) = run(pieces);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].kind,
            MessageKind::Request {
                method: "GET".into(),
                uri: "/x".into()
            }
        );
        assert_eq!(out[0].version, crate::message::HttpVersion::Http11);
        assert_eq!((stats.http.requests, stats.http2.requests), (1, 0));
    }
}
