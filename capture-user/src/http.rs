//! HTTP/1.0 and 1.1 message framing over the two reassembled byte streams of a connection.
//!
//! Sans-IO: fed in-order bytes, gaps and the close of each direction, it emits messages
//! carrying the exact bytes seen on the wire. Request and status lines and headers are parsed
//! with `httparse`; this module decides where each message ends (Content-Length, chunked,
//! close-delimited, no body for HEAD/1xx/204/304), pairs responses with requests, stops at
//! Upgrade/CONNECT tunnels, and resynchronises at the next message start after a gap. Every
//! anomaly is counted; nothing is guessed silently.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::message::MessageKind;
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

/// Limits of the framer.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Largest request/status line plus headers; beyond it the message is dropped and counted.
    pub max_header_bytes: usize,
    /// Largest message kept whole; beyond it the bytes are cut, the framing goes on, and the
    /// message is marked incomplete and counted.
    pub max_message_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 << 10,
            max_message_bytes: 64 << 20,
        }
    }
}

/// Counters of framing, named as in summaries and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HttpStats {
    pub requests: u64,
    pub responses: u64,
    pub interim_responses: u64,
    pub incomplete_messages: u64,
    pub header_too_large: u64,
    pub bad_message_head: u64,
    pub bad_framing: u64,
    pub ambiguous_length: u64,
    pub body_too_large: u64,
    pub resync_skipped_bytes: u64,
    pub lenient_heads: u64,
    pub upgrades: u64,
    pub tunnel_bytes_ignored: u64,
    pub unpaired_responses: u64,
}

impl HttpStats {
    /// `name=value` pairs.
    pub fn pairs(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("requests", self.requests),
            ("responses", self.responses),
            ("interim_responses", self.interim_responses),
            ("incomplete_messages", self.incomplete_messages),
            ("header_too_large", self.header_too_large),
            ("bad_message_head", self.bad_message_head),
            ("bad_framing", self.bad_framing),
            ("ambiguous_length", self.ambiguous_length),
            ("body_too_large", self.body_too_large),
            ("resync_skipped_bytes", self.resync_skipped_bytes),
            ("lenient_heads", self.lenient_heads),
            ("upgrades", self.upgrades),
            ("tunnel_bytes_ignored", self.tunnel_bytes_ignored),
            ("unpaired_responses", self.unpaired_responses),
        ]
    }
}

/// A message as the framer delimits it; the pipeline adds connection and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramedMessage {
    pub id: u64,
    pub dir: FlowDir,
    pub kind: MessageKind,
    /// HTTP minor version (0 or 1).
    pub minor_version: u8,
    /// For responses: the id of the request it answers, when known.
    pub request_id: Option<u64>,
    pub first_ts: Timestamp,
    pub last_ts: Timestamp,
    /// Exactly the bytes seen on the wire (cut at `max_message_bytes`).
    pub bytes: Bytes,
    /// Body bytes as framed (chunked: the decoded length).
    pub body_len: u64,
    pub complete: bool,
    /// The message's framing reached its end (it may still be incomplete because bytes beyond
    /// `max_message_bytes` were not kept).
    pub ended: bool,
}

/// Hands out message ids in the order messages start.
#[derive(Debug, Default)]
pub struct IdAllocator {
    next: u64,
}

impl IdAllocator {
    fn next(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Looking for the start of a message (after a gap or a midstream start).
    Resync,
    /// Expecting a request or status line.
    Head,
    Fixed(u64),
    Chunked(Chunk),
    UntilClose,
    /// Tunnel (Upgrade, CONNECT): bytes are no longer HTTP.
    Stopped,
}

struct Pending {
    id: u64,
    kind: MessageKind,
    minor_version: u8,
    request_id: Option<u64>,
    first_ts: Timestamp,
    last_ts: Timestamp,
    bytes: BytesMut,
    body_len: u64,
    cut: bool,
}

/// What a request tells the response parser.
#[derive(Clone, Copy, Debug)]
struct RequestInfo {
    id: u64,
    head: bool,
    connect: bool,
}

struct Half {
    dir: FlowDir,
    state: State,
    buf: BytesMut,
    msg: Option<Pending>,
}

/// Frames both directions of one connection.
pub struct ConnectionFramer {
    halves: [Half; 2],
    /// Requests waiting for their final response, oldest first.
    awaiting_response: VecDeque<RequestInfo>,
    config: HttpConfig,
}

const METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Position of the first plausible message start at a line start in `buf`.
fn find_message_start(buf: &[u8], dir: FlowDir) -> Option<usize> {
    let starts_at = |p: usize| -> bool {
        let rest = &buf[p..];
        match dir {
            FlowDir::ToServer => METHODS.iter().any(|m| rest.starts_with(m)),
            FlowDir::ToClient => rest.starts_with(b"HTTP/1."),
        }
    };
    (0..buf.len()).find(|&p| (p == 0 || buf[p - 1] == b'\n') && starts_at(p))
}

/// What [`lenient_request_head`] found.
enum Lenient {
    /// A head of `len` bytes with this method and URI (URI empty when missing).
    Head {
        len: usize,
        method: String,
        uri: String,
    },
    /// Looks like a request; its head has not ended yet.
    NeedMore,
    /// Not a request.
    NotRequest,
}

/// Reads request heads that httparse refuses but servers answer (a missing URI or version,
/// odd spacing), so such requests are still recorded byte-exact instead of lost. The first
/// line must start with a method-like token (upper-case letters, `_`, `-`).
fn lenient_request_head(buf: &[u8]) -> Lenient {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    let Some(method) = parts.next() else {
        return Lenient::NotRequest;
    };
    let method_like = method.len() <= 32
        && method
            .iter()
            .all(|b| b.is_ascii_uppercase() || *b == b'_' || *b == b'-');
    if !method_like || (line_end == buf.len() && buf.len() > 64 << 10) {
        return Lenient::NotRequest;
    }
    let uri = parts.next().unwrap_or_default();
    let end = [&b"\r\n\r\n"[..], b"\n\n"]
        .iter()
        .filter_map(|t| {
            buf.windows(t.len())
                .position(|w| w == *t)
                .map(|p| p + t.len())
        })
        .min();
    match end {
        Some(len) => Lenient::Head {
            len,
            method: String::from_utf8_lossy(method).into_owned(),
            uri: String::from_utf8_lossy(uri).into_owned(),
        },
        None => Lenient::NeedMore,
    }
}

/// Bytes kept while resyncing, so a message start split across segments is still found.
const RESYNC_KEEP: usize = 16;

/// Values of every header called `name` (case-insensitive), without allocating.
fn header<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// How a message's body is delimited, from its headers.
enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
    Invalid,
}

/// Content-Length / Transfer-Encoding rules of RFC 9112 section 6.
fn body_framing(
    headers: &[httparse::Header<'_>],
    stats: &mut HttpStats,
    is_request: bool,
) -> BodyFraming {
    let te: Vec<&[u8]> = header(headers, "transfer-encoding").collect();
    let cl: Vec<&[u8]> = header(headers, "content-length").collect();
    if !te.is_empty() {
        if !cl.is_empty() {
            // Both: a classic request-smuggling shape. TE wins, and we say so.
            stats.ambiguous_length += 1;
        }
        let last = te
            .last()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.rsplit(',').next())
            .map(|v| v.trim().to_ascii_lowercase());
        return match last.as_deref() {
            Some("chunked") => BodyFraming::Chunked,
            _ if is_request => BodyFraming::Invalid,
            _ => BodyFraming::UntilClose,
        };
    }
    if cl.is_empty() {
        return if is_request {
            BodyFraming::None
        } else {
            BodyFraming::UntilClose
        };
    }
    let mut value: Option<u64> = None;
    for raw in cl {
        for part in raw.split(|&b| b == b',') {
            let text = std::str::from_utf8(part).unwrap_or("").trim();
            let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                text.parse::<u64>().ok()
            } else {
                None
            };
            match (parsed, value) {
                (None, _) => return BodyFraming::Invalid,
                (Some(v), Some(prev)) if v != prev => {
                    stats.ambiguous_length += 1;
                    return BodyFraming::Invalid;
                }
                (Some(v), _) => value = Some(v),
            }
        }
    }
    match value {
        Some(0) => BodyFraming::None,
        Some(n) => BodyFraming::Length(n),
        None => BodyFraming::Invalid,
    }
}

impl ConnectionFramer {
    /// A framer for a new connection; `midstream` when its start was not seen.
    pub fn new(config: HttpConfig, midstream: bool) -> Self {
        let state = if midstream {
            State::Resync
        } else {
            State::Head
        };
        let half = |dir| Half {
            dir,
            state,
            buf: BytesMut::new(),
            msg: None,
        };
        Self {
            halves: [half(FlowDir::ToServer), half(FlowDir::ToClient)],
            awaiting_response: VecDeque::new(),
            config,
        }
    }

    /// In-order bytes of one direction.
    pub fn data(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        bytes: &[u8],
        ids: &mut IdAllocator,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        let i = dir as usize;
        if self.halves[i].state == State::Stopped {
            stats.tunnel_bytes_ignored += bytes.len() as u64;
            return;
        }
        self.halves[i].buf.extend_from_slice(bytes);
        self.run(i, ts, ids, stats, out);
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
        if let Some(msg) = half.msg.as_mut() {
            msg.bytes.extend_from_slice(&half.buf);
        }
        half.buf.clear();
        Self::emit(half, ts, false, stats, out);
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
        // A request head cut short by the close (e.g. one line, then the server answered
        // and closed) is still a request the server saw.
        let requests = &mut self.halves[FlowDir::ToServer as usize];
        if requests.state == State::Head
            && requests.msg.is_none()
            && requests.buf.iter().any(|b| !b.is_ascii_whitespace())
            && matches!(lenient_request_head(&requests.buf), Lenient::NeedMore)
        {
            let line_end = requests
                .buf
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(requests.buf.len());
            let line = String::from_utf8_lossy(&requests.buf[..line_end])
                .trim()
                .to_string();
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let uri = parts.next().unwrap_or_default().to_string();
            stats.requests += 1;
            stats.incomplete_messages += 1;
            out.push(FramedMessage {
                id: ids.next(),
                dir: FlowDir::ToServer,
                kind: MessageKind::Request { method, uri },
                minor_version: 0,
                request_id: None,
                first_ts: ts,
                last_ts: ts,
                bytes: requests.buf.split().freeze(),
                body_len: 0,
                complete: false,
                ended: false,
            });
        }
        for half in &mut self.halves {
            match half.state {
                State::UntilClose => Self::emit(half, ts, true, stats, out),
                State::Stopped => {}
                _ => {
                    if let Some(msg) = half.msg.as_mut() {
                        msg.bytes.extend_from_slice(&half.buf);
                        half.buf.clear();
                    }
                    if half.msg.is_some() {
                        Self::emit(half, ts, false, stats, out);
                    }
                }
            }
            let leftover = half.buf.iter().filter(|b| !b.is_ascii_whitespace()).count();
            stats.resync_skipped_bytes += leftover as u64;
            half.buf.clear();
        }
    }

    fn emit(
        half: &mut Half,
        ts: Timestamp,
        complete: bool,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        let Some(msg) = half.msg.take() else {
            return;
        };
        let ended = complete;
        let complete = complete && !msg.cut;
        if !complete {
            stats.incomplete_messages += 1;
        }
        out.push(FramedMessage {
            id: msg.id,
            dir: half.dir,
            kind: msg.kind,
            minor_version: msg.minor_version,
            request_id: msg.request_id,
            first_ts: msg.first_ts,
            last_ts: ts.max(msg.last_ts),
            bytes: msg.bytes.freeze(),
            body_len: msg.body_len,
            complete,
            ended,
        });
    }

    /// Moves `n` bytes from the input buffer to the message in progress.
    fn take(half: &mut Half, n: usize, ts: Timestamp, limit: usize, stats: &mut HttpStats) {
        let chunk = half.buf.split_to(n);
        if let Some(msg) = half.msg.as_mut() {
            msg.last_ts = ts;
            let room = limit.saturating_sub(msg.bytes.len());
            if chunk.len() > room {
                if !msg.cut {
                    stats.body_too_large += 1;
                }
                msg.cut = true;
                msg.bytes.extend_from_slice(&chunk[..room]);
            } else {
                msg.bytes.extend_from_slice(&chunk);
            }
        }
    }

    fn run(
        &mut self,
        i: usize,
        ts: Timestamp,
        ids: &mut IdAllocator,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        let limit = self.config.max_message_bytes;
        loop {
            let state = self.halves[i].state;
            let half = &mut self.halves[i];
            match state {
                State::Stopped => {
                    stats.tunnel_bytes_ignored += half.buf.len() as u64;
                    half.buf.clear();
                    return;
                }
                State::Resync => match find_message_start(&half.buf, half.dir) {
                    Some(p) => {
                        stats.resync_skipped_bytes += p as u64;
                        let _ = half.buf.split_to(p);
                        half.state = State::Head;
                    }
                    None => {
                        let drop = half.buf.len().saturating_sub(RESYNC_KEEP);
                        stats.resync_skipped_bytes += drop as u64;
                        let _ = half.buf.split_to(drop);
                        return;
                    }
                },
                State::Head => {
                    // Tolerate empty lines between messages (RFC 9112 section 2.2).
                    let blank = half
                        .buf
                        .iter()
                        .take_while(|b| **b == b'\r' || **b == b'\n')
                        .count();
                    let _ = half.buf.split_to(blank);
                    if half.buf.is_empty() {
                        return;
                    }
                    if !self.parse_head(i, ts, ids, stats, out) {
                        return;
                    }
                }
                State::Fixed(remaining) => {
                    if half.buf.is_empty() {
                        return;
                    }
                    let n = remaining.min(half.buf.len() as u64);
                    Self::take(half, n as usize, ts, limit, stats);
                    if let Some(msg) = half.msg.as_mut() {
                        msg.body_len += n;
                    }
                    if n == remaining {
                        Self::emit(half, ts, true, stats, out);
                        half.state = State::Head;
                    } else {
                        half.state = State::Fixed(remaining - n);
                    }
                }
                State::UntilClose => {
                    let n = half.buf.len();
                    Self::take(half, n, ts, limit, stats);
                    if let Some(msg) = half.msg.as_mut() {
                        msg.body_len += n as u64;
                    }
                    return;
                }
                State::Chunked(chunk) => {
                    if !Self::chunked_step(
                        half,
                        chunk,
                        ts,
                        limit,
                        self.config.max_header_bytes,
                        stats,
                        out,
                    ) {
                        return;
                    }
                }
            }
        }
    }

    /// One step of chunked decoding; false when more input is needed.
    fn chunked_step(
        half: &mut Half,
        chunk: Chunk,
        ts: Timestamp,
        limit: usize,
        max_line: usize,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) -> bool {
        match chunk {
            Chunk::Size | Chunk::Trailers => {
                let Some(eol) = half.buf.iter().position(|&b| b == b'\n') else {
                    if half.buf.len() > max_line {
                        stats.bad_framing += 1;
                        Self::gap_in_place(half, ts, stats, out);
                        return true;
                    }
                    return false;
                };
                let line = half.buf[..eol]
                    .strip_suffix(b"\r")
                    .unwrap_or(&half.buf[..eol])
                    .to_vec();
                Self::take(half, eol + 1, ts, limit, stats);
                if chunk == Chunk::Trailers {
                    if line.is_empty() {
                        Self::emit(half, ts, true, stats, out);
                        half.state = State::Head;
                    }
                    return true;
                }
                let size_text = line
                    .split(|&b| b == b';')
                    .next()
                    .map(|s| String::from_utf8_lossy(s).trim().to_string())
                    .unwrap_or_default();
                match u64::from_str_radix(&size_text, 16) {
                    Ok(0) => half.state = State::Chunked(Chunk::Trailers),
                    Ok(n) if !size_text.starts_with('+') => {
                        half.state = State::Chunked(Chunk::Data(n))
                    }
                    _ => {
                        stats.bad_framing += 1;
                        Self::gap_in_place(half, ts, stats, out);
                    }
                }
                true
            }
            Chunk::Data(remaining) => {
                if half.buf.is_empty() {
                    return false;
                }
                let n = remaining.min(half.buf.len() as u64);
                Self::take(half, n as usize, ts, limit, stats);
                if let Some(msg) = half.msg.as_mut() {
                    msg.body_len += n;
                }
                half.state = State::Chunked(if n == remaining {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(remaining - n)
                });
                true
            }
            Chunk::DataEnd => {
                if half.buf.starts_with(b"\r\n") {
                    Self::take(half, 2, ts, limit, stats);
                } else if half.buf.starts_with(b"\n") {
                    Self::take(half, 1, ts, limit, stats);
                } else if half.buf.len() < 2 && half.buf.first().is_none_or(|&b| b == b'\r') {
                    return false;
                } else {
                    stats.bad_framing += 1;
                    Self::gap_in_place(half, ts, stats, out);
                    return true;
                }
                half.state = State::Chunked(Chunk::Size);
                true
            }
        }
    }

    /// The stream cannot be framed any further here: the message is incomplete; resync.
    fn gap_in_place(
        half: &mut Half,
        ts: Timestamp,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        Self::emit(half, ts, false, stats, out);
        half.state = State::Resync;
        // Skip at least one byte so resync cannot find the same start again.
        if !half.buf.is_empty() {
            let _ = half.buf.split_to(1);
            stats.resync_skipped_bytes += 1;
        }
    }

    /// Parses a request or status line and headers; false when more input is needed.
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
        let dir = self.halves[i].dir;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        // Parsed fields are copied out so the input buffer can be consumed afterwards.
        let parsed = {
            let buf = &self.halves[i].buf[..];
            match dir {
                FlowDir::ToServer => {
                    let mut req = httparse::Request::new(&mut headers);
                    match req.parse(buf) {
                        Ok(httparse::Status::Complete(n)) => {
                            let method = req.method.unwrap_or("").to_string();
                            let uri = req.path.unwrap_or("").to_string();
                            let framing = body_framing(req.headers, stats, true);
                            Ok((
                                n,
                                MessageKind::Request { method, uri },
                                req.version.unwrap_or(1),
                                framing,
                            ))
                        }
                        Ok(httparse::Status::Partial) => Err(None),
                        Err(e) => match lenient_request_head(buf) {
                            Lenient::Head { len, method, uri } => {
                                stats.lenient_heads += 1;
                                Ok((
                                    len,
                                    MessageKind::Request { method, uri },
                                    1,
                                    BodyFraming::None,
                                ))
                            }
                            Lenient::NeedMore => Err(None),
                            Lenient::NotRequest => Err(Some(e)),
                        },
                    }
                }
                FlowDir::ToClient => {
                    let mut resp = httparse::Response::new(&mut headers);
                    match resp.parse(buf) {
                        Ok(httparse::Status::Complete(n)) => {
                            let status = resp.code.unwrap_or(0);
                            let framing = body_framing(resp.headers, stats, false);
                            Ok((
                                n,
                                MessageKind::Response { status },
                                resp.version.unwrap_or(1),
                                framing,
                            ))
                        }
                        Ok(httparse::Status::Partial) => Err(None),
                        Err(e) => Err(Some(e)),
                    }
                }
            }
        };
        let half = &mut self.halves[i];
        let (n, kind, minor_version, framing) = match parsed {
            Ok(p) => p,
            Err(None) => {
                if half.buf.len() > max_header {
                    stats.header_too_large += 1;
                    half.buf.clear();
                    half.state = State::Resync;
                    return true;
                }
                return false;
            }
            Err(Some(httparse::Error::TooManyHeaders)) => {
                stats.header_too_large += 1;
                Self::gap_in_place(half, ts, stats, out);
                return true;
            }
            Err(Some(_)) => {
                stats.bad_message_head += 1;
                Self::gap_in_place(half, ts, stats, out);
                return true;
            }
        };
        if n > max_header {
            stats.header_too_large += 1;
            let _ = half.buf.split_to(n);
            half.state = State::Resync;
            return true;
        }
        let id = ids.next();
        let mut request_id = None;
        let mut body = framing;
        let mut stop_after = false;
        match &kind {
            MessageKind::Request { method, .. } => {
                stats.requests += 1;
                let connect = method.eq_ignore_ascii_case("CONNECT");
                self.awaiting_response.push_back(RequestInfo {
                    id,
                    head: method.eq_ignore_ascii_case("HEAD"),
                    connect,
                });
                if connect {
                    body = BodyFraming::None;
                }
            }
            MessageKind::Response { status } => {
                let status = *status;
                let request = self.awaiting_response.front().copied();
                request_id = request.map(|r| r.id);
                if request.is_none() {
                    stats.unpaired_responses += 1;
                }
                if (100..200).contains(&status) && status != 101 {
                    stats.interim_responses += 1;
                    body = BodyFraming::None;
                } else {
                    stats.responses += 1;
                    self.awaiting_response.pop_front();
                    let head = request.is_some_and(|r| r.head);
                    let connect_ok =
                        request.is_some_and(|r| r.connect) && (200..300).contains(&status);
                    if status == 101 || connect_ok {
                        stop_after = true;
                        body = BodyFraming::None;
                    } else if head || status == 204 || status == 304 {
                        body = BodyFraming::None;
                    }
                }
            }
        }
        let half = &mut self.halves[i];
        half.msg = Some(Pending {
            id,
            kind,
            minor_version,
            request_id,
            first_ts: ts,
            last_ts: ts,
            bytes: BytesMut::new(),
            body_len: 0,
            cut: false,
        });
        Self::take(half, n, ts, limit, stats);
        match body {
            BodyFraming::None => {
                Self::emit(half, ts, true, stats, out);
                half.state = State::Head;
            }
            BodyFraming::Length(len) => half.state = State::Fixed(len),
            BodyFraming::Chunked => half.state = State::Chunked(Chunk::Size),
            BodyFraming::UntilClose => half.state = State::UntilClose,
            BodyFraming::Invalid => {
                stats.bad_framing += 1;
                Self::emit(half, ts, false, stats, out);
                half.state = State::Resync;
            }
        }
        if stop_after {
            // Upgrade or CONNECT tunnel: both directions stop being HTTP.
            stats.upgrades += 1;
            for half in &mut self.halves {
                if let Some(msg) = half.msg.as_mut() {
                    msg.bytes.extend_from_slice(&half.buf);
                }
                stats.tunnel_bytes_ignored += half.buf.len() as u64;
                half.buf.clear();
                half.state = State::Stopped;
            }
            // A request still in progress on the other side ends here.
            let other = &mut self.halves[FlowDir::ToServer as usize];
            Self::emit(other, ts, true, stats, out);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Harness {
        framer: ConnectionFramer,
        ids: IdAllocator,
        stats: HttpStats,
        out: Vec<FramedMessage>,
        ts: u64,
    }

    impl Harness {
        fn new() -> Self {
            Self::with(HttpConfig::default(), false)
        }
        fn with(config: HttpConfig, midstream: bool) -> Self {
            Self {
                framer: ConnectionFramer::new(config, midstream),
                ids: IdAllocator::default(),
                stats: HttpStats::default(),
                out: Vec::new(),
                ts: 0,
            }
        }
        fn send(&mut self, dir: FlowDir, bytes: &[u8]) -> &mut Self {
            self.ts += 1;
            self.framer.data(
                dir,
                Timestamp(self.ts),
                bytes,
                &mut self.ids,
                &mut self.stats,
                &mut self.out,
            );
            self
        }
        fn req(&mut self, bytes: &[u8]) -> &mut Self {
            self.send(FlowDir::ToServer, bytes)
        }
        fn resp(&mut self, bytes: &[u8]) -> &mut Self {
            self.send(FlowDir::ToClient, bytes)
        }
        fn close(&mut self) -> &mut Self {
            self.framer.close(
                Timestamp(999),
                &mut self.ids,
                &mut self.stats,
                &mut self.out,
            );
            self
        }
        fn bytes(&self) -> Vec<&[u8]> {
            self.out.iter().map(|m| &m.bytes[..]).collect()
        }
    }

    #[test]
    fn keep_alive_get_and_content_length_response_are_paired() {
        let mut h = Harness::new();
        h.req(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        assert_eq!(h.out.len(), 2);
        assert_eq!(
            h.out[0].kind,
            MessageKind::Request {
                method: "GET".into(),
                uri: "/a".into()
            }
        );
        assert_eq!(h.out[1].kind, MessageKind::Response { status: 200 });
        assert_eq!(h.out[1].request_id, Some(h.out[0].id));
        assert_eq!(h.out[1].body_len, 5);
        assert!(h.out.iter().all(|m| m.complete));
    }

    #[test]
    fn message_split_at_every_byte_gives_the_same_bytes() {
        let wire: &[u8] =
            b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /q HTTP/1.1\r\n\r\n";
        let mut h = Harness::new();
        for b in wire {
            h.req(&[*b]);
        }
        assert_eq!(
            h.bytes(),
            vec![
                &b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
                b"GET /q HTTP/1.1\r\n\r\n"
            ]
        );
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers_is_one_message() {
        let body: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n";
        let mut h = Harness::new();
        h.req(b"GET / HTTP/1.1\r\n\r\n").resp(body);
        assert_eq!(h.out[1].bytes, body);
        assert_eq!(h.out[1].body_len, 9);
        assert!(h.out[1].complete);
    }

    #[test]
    fn head_204_304_and_1xx_have_no_body() {
        let mut h = Harness::new();
        h.req(b"HEAD / HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\n")
            .resp(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            .resp(b"HTTP/1.1 204 No Content\r\n\r\n")
            .resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n");
        let statuses: Vec<_> = h
            .out
            .iter()
            .filter(|m| m.dir == FlowDir::ToClient)
            .map(|m| (m.body_len, m.complete))
            .collect();
        assert_eq!(statuses, vec![(0, true), (0, true), (0, true)]);
    }

    #[test]
    fn expect_100_continue_pairs_both_responses_with_the_request() {
        let mut h = Harness::new();
        h.req(b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            .resp(b"HTTP/1.1 100 Continue\r\n\r\n")
            .req(b"data")
            .resp(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
        let req = h.out.iter().find(|m| m.dir == FlowDir::ToServer).unwrap();
        let responses: Vec<_> = h
            .out
            .iter()
            .filter(|m| m.dir == FlowDir::ToClient)
            .collect();
        assert_eq!(responses.len(), 2);
        assert!(responses.iter().all(|r| r.request_id == Some(req.id)));
        assert_eq!(req.body_len, 4);
        assert_eq!(h.stats.interim_responses, 1);
    }

    #[test]
    fn pipelined_requests_pair_in_order() {
        let mut h = Harness::new();
        h.req(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n");
        h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\n2HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3");
        let reqs: Vec<_> = h
            .out
            .iter()
            .filter(|m| m.dir == FlowDir::ToServer)
            .map(|m| m.id)
            .collect();
        let pairs: Vec<_> = h
            .out
            .iter()
            .filter(|m| m.dir == FlowDir::ToClient)
            .map(|m| m.request_id.unwrap())
            .collect();
        assert_eq!(reqs, pairs);
    }

    #[test]
    fn close_delimited_response_completes_at_close() {
        let mut h = Harness::new();
        h.req(b"GET / HTTP/1.0\r\n\r\n")
            .resp(b"HTTP/1.0 200 OK\r\n\r\nall of it")
            .close();
        let resp = h.out.iter().find(|m| m.dir == FlowDir::ToClient).unwrap();
        assert!(resp.complete);
        assert_eq!(resp.body_len, 9);
        assert_eq!(resp.minor_version, 0);
    }

    #[test]
    fn upgrade_stops_framing_and_is_counted() {
        let mut h = Harness::new();
        h.req(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello")
            .req(b"\x81\x85binary frame GET / HTTP/1.1\r\n\r\n");
        assert_eq!(h.out.len(), 2);
        assert_eq!(h.stats.upgrades, 1);
        assert!(h.stats.tunnel_bytes_ignored > 0);
    }

    #[test]
    fn gap_marks_the_message_incomplete_and_framing_resyncs() {
        let mut h = Harness::new();
        h.req(b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\npartial");
        h.framer
            .gap(FlowDir::ToServer, Timestamp(5), &mut h.stats, &mut h.out);
        h.req(b"body rest that got lost\r\nGET /next HTTP/1.1\r\n\r\n");
        assert_eq!(h.out.len(), 2);
        assert!(!h.out[0].complete);
        assert_eq!(
            h.out[1].kind,
            MessageKind::Request {
                method: "GET".into(),
                uri: "/next".into()
            }
        );
        assert!(h.out[1].complete);
        assert!(h.stats.resync_skipped_bytes > 0);
    }

    #[test]
    fn midstream_start_skips_to_the_first_message_start() {
        let mut h = Harness::with(HttpConfig::default(), true);
        h.resp(b"ail of an earlier body\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(h.out.len(), 1);
        assert_eq!(
            h.out[0].bytes,
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]
        );
        assert_eq!(h.stats.unpaired_responses, 1);
    }

    #[test]
    fn oversized_headers_are_dropped_and_counted() {
        let mut h = Harness::with(
            HttpConfig {
                max_header_bytes: 64,
                ..HttpConfig::default()
            },
            false,
        );
        h.req(b"GET / HTTP/1.1\r\nX-Big: ");
        h.req(&[b'a'; 100]);
        h.req(b"\r\n\r\nGET /ok HTTP/1.1\r\n\r\n");
        assert_eq!(h.stats.header_too_large, 1);
        assert_eq!(h.out.len(), 1);
        assert_eq!(
            h.out[0].kind,
            MessageKind::Request {
                method: "GET".into(),
                uri: "/ok".into()
            }
        );
    }

    #[test]
    fn conflicting_content_lengths_and_te_plus_cl_are_flagged() {
        let mut h = Harness::new();
        h.req(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd");
        assert_eq!(h.stats.ambiguous_length, 1);
        assert_eq!(h.stats.bad_framing, 1);
        assert!(!h.out[0].complete);
        let mut h = Harness::new();
        h.req(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(h.stats.ambiguous_length, 1);
        assert!(h.out[0].complete, "TE wins over CL");
    }

    #[test]
    fn malformed_request_lines_servers_answer_are_still_recorded() {
        let mut h = Harness::new();
        h.req(b"OPTIONS HTTP/1.1\r\nHost: x\r\n\r\n")
            .resp(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .req(b"GET /HTTP/1.1\r\n")
            .close();
        let requests: Vec<_> = h
            .out
            .iter()
            .filter(|m| m.dir == FlowDir::ToServer)
            .map(|m| (m.kind.clone(), m.complete))
            .collect();
        assert_eq!(
            requests,
            vec![
                (
                    MessageKind::Request {
                        method: "OPTIONS".into(),
                        uri: "HTTP/1.1".into()
                    },
                    true
                ),
                (
                    MessageKind::Request {
                        method: "GET".into(),
                        uri: "/HTTP/1.1".into()
                    },
                    false
                ),
            ]
        );
        assert_eq!(h.stats.lenient_heads, 1);
    }

    #[test]
    fn overflowing_content_length_is_bad_framing_not_a_panic() {
        let mut h = Harness::new();
        h.resp(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nx");
        assert_eq!(h.stats.bad_framing, 1);
        let mut h = Harness::new();
        h.resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\n");
        assert_eq!(h.stats.bad_framing, 1);
    }

    #[test]
    fn messages_over_the_size_cap_are_cut_and_marked_incomplete() {
        let mut h = Harness::with(
            HttpConfig {
                max_message_bytes: 50,
                ..HttpConfig::default()
            },
            false,
        );
        h.req(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\n");
        h.req(&[b'z'; 100]);
        h.req(b"GET /after HTTP/1.1\r\n\r\n");
        assert_eq!(h.out.len(), 2);
        assert_eq!(h.out[0].bytes.len(), 50);
        assert!(!h.out[0].complete);
        assert_eq!(h.out[0].body_len, 100);
        assert_eq!(h.stats.body_too_large, 1);
        assert!(h.out[1].complete);
    }
}
