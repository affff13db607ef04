//! The per-connection framer: runs the state machine of each direction over what it has
//! buffered, reads heads, pairs each response with the request it answers (which decides
//! whether the response has a body), and stops framing both directions at an Upgrade or
//! CONNECT tunnel.

use std::collections::VecDeque;

use bytes::Bytes;

use super::half::{Half, State};
use super::head::{
    BodyFraming, Lenient, cut_request_line, lenient_request_head, request_head, response_head,
};
use super::input::Piece;
use super::{FramedMessage, HttpConfig, HttpStats, IdAllocator};
use crate::message::{HttpVersion, MessageKind};
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

/// What a request tells the response parser.
#[derive(Clone, Copy, Debug)]
struct RequestInfo {
    id: u64,
    head: bool,
    connect: bool,
}

/// What pairing a head with the requests decided for its message.
struct Pairing {
    /// For responses: the request answered, when known.
    request_id: Option<u64>,
    /// Where the body ends, once the method and status are taken into account.
    body: BodyFraming,
    /// The message starts a tunnel: framing stops after it.
    tunnel: bool,
}

/// An accepted `Upgrade: h2c`: the connection goes on in HTTP/2, and these are the bytes
/// each direction had buffered past the 101's head (the HTTP/2 framer's first input).
#[derive(Debug)]
pub struct H2cUpgrade {
    /// The upgraded request (HTTP/2 stream 1 carries its response).
    pub request_id: Option<u64>,
    pub to_server: Bytes,
    pub to_client: Bytes,
}

/// Frames both directions of one connection.
pub struct ConnectionFramer {
    halves: [Half; 2],
    /// Requests waiting for their final response, oldest first.
    awaiting_response: VecDeque<RequestInfo>,
    config: HttpConfig,
    /// Set when a 101 switched the connection to h2c, until taken.
    h2c_upgrade: Option<H2cUpgrade>,
}

impl ConnectionFramer {
    /// A framer for a new connection; `midstream` when its start was not seen.
    pub fn new(config: HttpConfig, midstream: bool) -> Self {
        let state = if midstream {
            State::Resync
        } else {
            State::Head
        };
        Self {
            halves: [
                Half::new(FlowDir::ToServer, state),
                Half::new(FlowDir::ToClient, state),
            ],
            awaiting_response: VecDeque::new(),
            config,
            h2c_upgrade: None,
        }
    }

    /// In-order bytes of one direction.
    pub fn data(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        bytes: Bytes,
        ids: &mut IdAllocator,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        let i = dir as usize;
        if self.halves[i].state == State::Stopped {
            stats.tunnel_bytes_ignored += bytes.len() as u64;
            return;
        }
        self.halves[i].buf.push(bytes);
        self.run(i, ts, ids, stats, out);
        self.halves[i].settle();
    }

    /// A request written on this connection whose bytes need no framing (replay writes them
    /// as recorded): queues what its response's framing needs, as a framed request head does.
    pub fn request_written(&mut self, method: &str, ids: &mut IdAllocator, stats: &mut HttpStats) {
        let id = ids.next();
        self.pair_request(id, method, BodyFraming::None, stats);
    }

    /// A 101 to `Upgrade: h2c` was seen and not taken yet (see [`Self::take_h2c_upgrade`]).
    #[inline]
    pub fn upgrade_pending(&self) -> bool {
        self.h2c_upgrade.is_some()
    }

    /// The connection switched to HTTP/2 (`Upgrade: h2c` answered 101): what comes next
    /// belongs to the HTTP/2 framer, starting with the bytes returned.
    pub fn take_h2c_upgrade(&mut self) -> Option<H2cUpgrade> {
        self.h2c_upgrade.take()
    }

    /// Bytes of one direction were lost: the message in progress is incomplete.
    pub fn gap(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        let half = &mut self.halves[dir as usize];
        if half.state == State::Stopped {
            return;
        }
        // What is buffered but unparsed belongs to the broken message too.
        let rest = Piece::Owned(half.buf.take_all());
        if let Some(msg) = half.msg.as_mut() {
            msg.bytes.push(rest, half.buf.segment());
        }
        half.emit(ts, false, stats, out);
        half.state = State::Resync;
    }

    /// The connection ended: close-delimited bodies complete, anything else open is incomplete.
    pub fn close(
        &mut self,
        ts: Timestamp,
        ids: &mut IdAllocator,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        self.emit_cut_request_head(ts, ids, stats, out);
        for half in &mut self.halves {
            half.end(ts, stats, out);
        }
    }

    /// A request head cut short by the close (e.g. one line, then the server answered and
    /// closed) is still a request the server saw: it is emitted, incomplete.
    fn emit_cut_request_head(
        &mut self,
        ts: Timestamp,
        ids: &mut IdAllocator,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        let requests = &mut self.halves[FlowDir::ToServer as usize];
        let cut = requests.state == State::Head
            && requests.msg.is_none()
            && requests.buf.iter().any(|b| !b.is_ascii_whitespace())
            && matches!(lenient_request_head(&requests.buf), Lenient::NeedMore);
        if !cut {
            return;
        }
        let (method, uri) = cut_request_line(&requests.buf);
        stats.requests += 1;
        stats.incomplete_messages += 1;
        out.push(FramedMessage {
            id: ids.next(),
            dir: FlowDir::ToServer,
            kind: MessageKind::Request {
                method: method.into(),
                uri: uri.into(),
            },
            version: HttpVersion::Http10,
            request_id: None,
            first_ts: ts,
            last_ts: ts,
            bytes: requests.buf.take_all(),
            body_len: 0,
            complete: false,
            ended: false,
        });
    }

    /// Frames what direction `i` has buffered, one step at a time, until a step needs more
    /// input.
    fn run(
        &mut self,
        i: usize,
        ts: Timestamp,
        ids: &mut IdAllocator,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        let limit = self.config.max_message_bytes;
        let max_line = self.config.max_header_bytes;
        loop {
            let half = &mut self.halves[i];
            let go_on = match half.state {
                State::Stopped => {
                    half.drop_tunnel_bytes(stats);
                    false
                }
                State::Resync => half.resync_step(stats),
                State::Head => half.skip_blank_lines() && self.parse_head(i, ts, ids, stats, out),
                State::Fixed(remaining) => half.fixed_step(remaining, ts, limit, stats, out),
                State::UntilClose => {
                    half.until_close_step(ts, limit, stats);
                    false
                }
                State::Chunked(chunk) => half.chunked_step(chunk, ts, limit, max_line, stats, out),
            };
            if !go_on {
                return;
            }
        }
    }

    /// Reads the head at the start of direction `i`'s input and starts its message: request
    /// or response head, pairing, the body's framing, then the tunnel stop if it starts one.
    /// False when more input is needed.
    fn parse_head(
        &mut self,
        i: usize,
        ts: Timestamp,
        ids: &mut IdAllocator,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) -> bool {
        let max_header = self.config.max_header_bytes;
        let limit = self.config.max_message_bytes;
        let half = &mut self.halves[i];
        let parsed = match half.dir {
            FlowDir::ToServer => request_head(&half.buf, stats),
            FlowDir::ToClient => response_head(&half.buf, stats),
        };
        let head = match half.accept_head(parsed, max_header, ts, stats, out) {
            Ok(head) => head,
            Err(go_on) => return go_on,
        };
        let id = ids.next();
        let pairing = match &head.kind {
            MessageKind::Request { method, .. } => {
                self.pair_request(id, method, head.framing, stats)
            }
            MessageKind::Response { status } => self.pair_response(*status, head.framing, stats),
        };
        let half = &mut self.halves[i];
        let h2c = pairing.tunnel
            && matches!(head.kind, MessageKind::Response { status: 101 })
            && upgrades_to_h2c(&half.buf[..head.len]);
        half.start_message(id, head, pairing.request_id, ts, limit, stats);
        half.begin_body(pairing.body, ts, stats, out);
        if h2c {
            self.hand_over_to_h2c(pairing.request_id, ts, stats, out);
        } else if pairing.tunnel {
            self.stop_tunnel(ts, stats, out);
        }
        true
    }

    /// A request head: counted and queued for the response that will answer it. A CONNECT
    /// has no body whatever its headers say.
    fn pair_request(
        &mut self,
        id: u64,
        method: &str,
        framing: BodyFraming,
        stats: &mut HttpStats,
    ) -> Pairing {
        stats.requests += 1;
        let connect = method.eq_ignore_ascii_case("CONNECT");
        self.awaiting_response.push_back(RequestInfo {
            id,
            head: method.eq_ignore_ascii_case("HEAD"),
            connect,
        });
        Pairing {
            request_id: None,
            body: if connect { BodyFraming::None } else { framing },
            tunnel: false,
        }
    }

    /// A response head answers the oldest request still waiting. An interim response (1xx
    /// but 101) leaves that request waiting for its final one. There is no body after HEAD,
    /// 204 or 304, and none in a tunnel start (101, or 2xx to CONNECT).
    fn pair_response(
        &mut self,
        status: u16,
        framing: BodyFraming,
        stats: &mut HttpStats,
    ) -> Pairing {
        let request = self.awaiting_response.front().copied();
        if request.is_none() {
            stats.unpaired_responses += 1;
        }
        let mut pairing = Pairing {
            request_id: request.map(|r| r.id),
            body: framing,
            tunnel: false,
        };
        if (100..200).contains(&status) && status != 101 {
            stats.interim_responses += 1;
            pairing.body = BodyFraming::None;
            return pairing;
        }
        stats.responses += 1;
        self.awaiting_response.pop_front();
        let head = request.is_some_and(|r| r.head);
        let connect_ok = request.is_some_and(|r| r.connect) && (200..300).contains(&status);
        if status == 101 || connect_ok {
            pairing.tunnel = true;
            pairing.body = BodyFraming::None;
        } else if head || status == 204 || status == 304 {
            pairing.body = BodyFraming::None;
        }
        pairing
    }

    /// A 101 to `Upgrade: h2c`: both directions stop being HTTP/1 and what they buffered is
    /// kept for the HTTP/2 framer.
    fn hand_over_to_h2c(
        &mut self,
        request_id: Option<u64>,
        ts: Timestamp,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        stats.h2c_upgrades += 1;
        let [to_server, to_client] = self.halves.each_mut().map(|half| {
            half.state = State::Stopped;
            half.buf.take_all()
        });
        self.halves[FlowDir::ToServer as usize].emit(ts, true, stats, out);
        self.h2c_upgrade = Some(H2cUpgrade {
            request_id,
            to_server,
            to_client,
        });
    }

    /// Upgrade or CONNECT tunnel: both directions stop being HTTP. What either has buffered
    /// is counted as tunnel bytes (and kept in a message in progress), and a request still
    /// in progress ends here.
    fn stop_tunnel(&mut self, ts: Timestamp, stats: &mut HttpStats, out: &mut Vec<FramedMessage>) {
        stats.upgrades += 1;
        for half in &mut self.halves {
            stats.tunnel_bytes_ignored += half.buf.len() as u64;
            let rest = Piece::Owned(half.buf.take_all());
            if let Some(msg) = half.msg.as_mut() {
                msg.bytes.push(rest, half.buf.segment());
            }
            half.state = State::Stopped;
        }
        self.halves[FlowDir::ToServer as usize].emit(ts, true, stats, out);
    }
}

/// The 101's head names h2c as the protocol switched to.
fn upgrades_to_h2c(head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; super::head::MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    if parsed.parse(head).is_err() {
        return false;
    }
    parsed.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("upgrade")
            && h.value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    })
}
