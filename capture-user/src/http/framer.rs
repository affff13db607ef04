//! The per-connection framer: both directions of one connection, each a small state machine
//! (resync, head, body by length, chunks or close, tunnel), with responses paired to the
//! requests they answer and framing stopped at Upgrade/CONNECT tunnels.

use std::collections::VecDeque;

use bytes::BytesMut;

use super::head::{BodyFraming, Lenient, body_framing, find_message_start, lenient_request_head};
use super::{FramedMessage, HttpConfig, HttpStats, IdAllocator};
use crate::message::MessageKind;
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

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

/// Bytes kept while resyncing, so a message start split across segments is still found.
const RESYNC_KEEP: usize = 16;

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
