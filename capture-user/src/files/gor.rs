//! GoReplay's file format, so users can bring recordings in and take them out.
//!
//! Each payload is a header line `TYPE ID TIMESTAMP_NS LATENCY_NS`, the raw HTTP message, and
//! the separator line `🐵🙈🙉`: TYPE 1 is a request, 2 the original response, 3 a replayed
//! response; a request and its responses share ID (hex). GoReplay keeps no connection or
//! address information, so imported messages get one connection per request.
//!
//! Files are read as streams ([`GorReader`] then [`GorMessages`]): neither holds more than
//! one payload and the requests still waiting for their response, within a cap.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::LazyLock;

use bytes::Bytes;
use compact_str::{CompactString, format_compact};
use memchr::memmem;

use super::pending::{PendingMap, is_interim};
use crate::message::{HttpMessage, HttpVersion, MessageKind};
use crate::packet::Timestamp;
use crate::store::{StoredKind, StoredMessage};

/// The separator GoReplay writes after every payload.
pub const SEPARATOR: &str = "\n🐵🙈🙉\n";

/// Why a GoReplay file could not be read. Each names the payload (counted from 0) and the
/// byte of the file where it starts, so a damaged file can be looked at where it breaks.
#[derive(Debug, thiserror::Error)]
pub enum GorError {
    #[error(
        "payload {index} at byte {offset}: bad header line {line:?}; expected `TYPE ID TIMESTAMP_NS LATENCY_NS`"
    )]
    BadHeader {
        index: usize,
        offset: u64,
        line: String,
    },
    #[error("payload {index} at byte {offset}: no header line")]
    NoHeader { index: usize, offset: u64 },
    #[error(
        "payload {index} at byte {offset}: more than {MAX_PAYLOAD_BYTES} bytes without a separator; is this a GoReplay file?"
    )]
    TooLarge { index: usize, offset: u64 },
    #[error("reading at byte {offset}: {source}")]
    Read { offset: u64, source: std::io::Error },
}

/// Largest payload read (a message as large as the embedded store takes, and its header):
/// a file without separators is refused there rather than read whole into memory.
pub const MAX_PAYLOAD_BYTES: usize = crate::store::embedded::MAX_MESSAGE_BYTES + 4096;

/// One payload of a GoReplay file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GorPayload {
    /// 1 request, 2 response, 3 replayed response.
    pub kind: u8,
    /// Hex; GoReplay's 24 digits fit a `CompactString` without an allocation.
    pub id: CompactString,
    pub ts_ns: u64,
    pub latency_ns: i64,
    pub bytes: Bytes,
}

/// Writes one payload.
pub fn write_payload(out: &mut impl Write, p: &GorPayload) -> std::io::Result<()> {
    writeln!(out, "{} {} {} {}", p.kind, p.id, p.ts_ns, p.latency_ns)?;
    out.write_all(&p.bytes)?;
    out.write_all(SEPARATOR.as_bytes())
}

/// Splits a whole GoReplay file held in memory into payloads (see [`GorReader`]).
pub fn parse(data: &[u8]) -> Result<Vec<GorPayload>, GorError> {
    GorReader::new(data).collect()
}

/// Reads a GoReplay file's payloads one at a time, holding only the payload being read, so a
/// file of any size streams. A payload ends at the first separator after its start; the last
/// one may lack its separator; payloads of nothing but whitespace are skipped.
pub struct GorReader<R> {
    input: R,
    /// The payload being gathered (its allocation reused).
    buf: Vec<u8>,
    /// Bytes of the input consumed so far.
    position: u64,
    /// Payloads returned so far.
    index: usize,
    done: bool,
    separator: memmem::Finder<'static>,
}

impl<R: BufRead> GorReader<R> {
    /// A reader at the start of `input`.
    pub fn new(input: R) -> Self {
        Self {
            input,
            buf: Vec::new(),
            position: 0,
            index: 0,
            done: false,
            separator: memmem::Finder::new(SEPARATOR.as_bytes()),
        }
    }

    /// Bytes of the input consumed so far (through the end of the last payload returned).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next payload, or None at the end of the input. After an error, None.
    pub fn next_payload(&mut self) -> Result<Option<GorPayload>, GorError> {
        while !self.done {
            let offset = self.position;
            let result = self.read_one(offset);
            self.release_large_buffer();
            match result {
                Ok(None) => {}
                Ok(Some(payload)) => {
                    self.index += 1;
                    return Ok(Some(payload));
                }
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    /// Reads the next payload through its separator (or to the end of the input, which ends
    /// the reading) and parses it; None for a payload of nothing but whitespace. A payload
    /// whole in the input's buffer is parsed where it lies; one that runs past it is
    /// gathered in `buf`.
    fn read_one(&mut self, offset: u64) -> Result<Option<GorPayload>, GorError> {
        let sep_len = SEPARATOR.len();
        self.buf.clear();
        loop {
            let available = self.input.fill_buf().map_err(|source| GorError::Read {
                offset: self.position,
                source,
            })?;
            if available.is_empty() {
                self.done = true;
                return parse_payload(&self.buf, self.index, offset);
            }
            if self.buf.is_empty()
                && let Some(at) = self.separator.find(available)
            {
                let parsed = parse_payload(&available[..at], self.index, offset);
                self.input.consume(at + sep_len);
                self.position += (at + sep_len) as u64;
                return parsed;
            }
            // The payload runs past the buffered input: gather it, looking for the separator
            // from where it may have started in the bytes gathered before.
            let before = self.buf.len();
            let from = before.saturating_sub(sep_len - 1);
            self.buf.extend_from_slice(available);
            if let Some(at) = self.separator.find(&self.buf[from..]) {
                let at = from + at;
                let used = at + sep_len - before;
                self.input.consume(used);
                self.position += used as u64;
                self.buf.truncate(at);
                return parse_payload(&self.buf, self.index, offset);
            }
            let used = self.buf.len() - before;
            self.input.consume(used);
            self.position += used as u64;
            if self.buf.len() > MAX_PAYLOAD_BYTES {
                return Err(GorError::TooLarge {
                    index: self.index,
                    offset,
                });
            }
        }
    }

    /// One very large payload should not keep its buffer for the rest of the file.
    fn release_large_buffer(&mut self) {
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
    }
}

impl<R: BufRead> Iterator for GorReader<R> {
    type Item = Result<GorPayload, GorError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_payload().transpose()
    }
}

/// A payload from its bytes (separator removed), or None when they are nothing but
/// whitespace (what GoReplay leaves between payloads at times).
fn parse_payload(
    payload: &[u8],
    index: usize,
    offset: u64,
) -> Result<Option<GorPayload>, GorError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    payload_of(payload, index, offset).map(Some)
}

/// A payload from its bytes (separator removed): the header line, then the message.
fn payload_of(payload: &[u8], index: usize, offset: u64) -> Result<GorPayload, GorError> {
    let nl = memchr::memchr(b'\n', payload).ok_or(GorError::NoHeader { index, offset })?;
    let line = &payload[..nl];
    let header = with_fields(line, header_of);
    let (kind, id, ts_ns, latency_ns) = header.ok_or_else(|| GorError::BadHeader {
        index,
        offset,
        line: String::from_utf8_lossy(line).into_owned(),
    })?;
    Ok(GorPayload {
        kind,
        id,
        ts_ns,
        latency_ns,
        bytes: Bytes::copy_from_slice(&payload[nl + 1..]),
    })
}

/// Calls `read` with the fields of `line` as `str::split_whitespace` splits them. An ASCII
/// line is split as bytes, on the six that are whitespace there (`u8::is_ascii_whitespace`
/// leaves out the vertical tab); any other is decoded lossily first.
fn with_fields<T>(line: &[u8], read: impl FnOnce(&mut dyn Iterator<Item = &[u8]>) -> T) -> T {
    if line.is_ascii() {
        read(
            &mut line
                .split(|b| matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r'))
                .filter(|f| !f.is_empty()),
        )
    } else {
        read(
            &mut String::from_utf8_lossy(line)
                .split_whitespace()
                .map(str::as_bytes),
        )
    }
}

/// The next field as text (fields of [`with_fields`] are UTF-8).
fn next_text<'a>(fields: &mut dyn Iterator<Item = &'a [u8]>) -> Option<&'a str> {
    fields.next().and_then(|f| std::str::from_utf8(f).ok())
}

/// A header line's type (1 to 3), id, timestamp and latency (0 when missing or not a
/// number); None when the first three are not there.
fn header_of(fields: &mut dyn Iterator<Item = &[u8]>) -> Option<(u8, CompactString, u64, i64)> {
    let kind = next_text(fields)?
        .parse::<u8>()
        .ok()
        .filter(|k| (1..=3).contains(k))?;
    let id = CompactString::from(next_text(fields)?);
    let ts_ns = next_text(fields)?.parse().ok()?;
    let latency_ns = next_text(fields).and_then(|l| l.parse().ok()).unwrap_or(0);
    Some((kind, id, ts_ns, latency_ns))
}

/// GoReplay id of a stored message: its request's (run, id), as 24 hex digits.
fn gor_id(run: u64, id: u64) -> CompactString {
    format_compact!("{:08x}{:016x}", run as u32 ^ (run >> 32) as u32, id)
}

/// Turns a stored message into a payload (type 1 or 2).
pub fn to_payload(m: &StoredMessage, request_ts: Option<u64>) -> GorPayload {
    match &m.meta.kind {
        StoredKind::Request { .. } => GorPayload {
            kind: 1,
            id: gor_id(m.meta.run, m.meta.id),
            ts_ns: m.meta.first_ts,
            latency_ns: 0,
            bytes: m.bytes.clone(),
        },
        StoredKind::Response { .. } => GorPayload {
            kind: 2,
            id: gor_id(m.meta.run, m.meta.request_id.unwrap_or(m.meta.id)),
            ts_ns: m.meta.first_ts,
            latency_ns: request_ts
                .map(|r| m.meta.first_ts as i64 - r as i64)
                .unwrap_or(0),
            bytes: m.bytes.clone(),
        },
    }
}

/// First line of an HTTP message: `METHOD URI` of a request or the status of a response.
fn kind_of(bytes: &[u8], request: bool) -> MessageKind {
    let line = &bytes[..memchr::memchr(b'\n', bytes).unwrap_or(bytes.len())];
    with_fields(line, |parts| {
        let mut text = || next_text(parts).unwrap_or_default();
        if request {
            MessageKind::Request {
                method: text().into(),
                uri: text().into(),
            }
        } else {
            text();
            let status = text().parse().unwrap_or(0);
            MessageKind::Response { status }
        }
    })
}

/// Body length from the head/body split (the exact framing is the sender's business).
fn body_len(bytes: &[u8]) -> u64 {
    static CRLF_CRLF: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));
    let end = CRLF_CRLF
        .find(bytes)
        .map(|p| p + 4)
        .or_else(|| memmem::find(bytes, b"\n\n").map(|p| p + 2));
    end.map(|e| (bytes.len() - e) as u64).unwrap_or(0)
}

/// Most requests [`GorMessages`] keeps waiting for their response: past this, the oldest
/// waiting request is forgotten (counted as `gor_pending_requests_evicted`) and a response
/// that comes for it later stands alone. GoReplay writes a response soon after its request,
/// so only a file of unanswered requests reaches it.
pub const MAX_PENDING_REQUESTS: usize = 100_000;

/// Turns payloads into messages as a file streams by: requests and original responses
/// (replayed responses, type 3, are not traffic that was seen and are skipped). GoReplay
/// keeps no connections, so each request is a connection of its own (its id), and its
/// response joins that connection and names the request.
pub struct GorMessages {
    next_id: u64,
    /// Requests waiting for their final response: GoReplay id to message id.
    pending: PendingMap<CompactString, u64>,
    skipped: u64,
    messages: u64,
}

impl Default for GorMessages {
    fn default() -> Self {
        Self::with_max_pending(MAX_PENDING_REQUESTS)
    }
}

impl GorMessages {
    /// A converter that keeps at most `max_pending` requests waiting for their response.
    pub fn with_max_pending(max_pending: usize) -> Self {
        Self {
            next_id: 0,
            pending: PendingMap::new(max_pending),
            skipped: 0,
            messages: 0,
        }
    }

    /// The message a payload is, if it is one.
    pub fn push(&mut self, p: GorPayload) -> Option<HttpMessage> {
        let request = match p.kind {
            1 => true,
            2 => false,
            _ => {
                self.skipped += 1;
                return None;
            }
        };
        self.next_id += 1;
        self.messages += 1;
        let id = self.next_id;
        let kind = kind_of(&p.bytes, request);
        let (conn_id, request_id) = match &kind {
            MessageKind::Request { .. } => {
                self.pending.insert(p.id, id);
                (id, None)
            }
            MessageKind::Response { status } if is_interim(*status) => {
                match self.pending.get(&p.id) {
                    Some(&req) => (req, Some(req)),
                    None => (id, None),
                }
            }
            MessageKind::Response { .. } => match self.pending.remove(&p.id) {
                Some(req) => (req, Some(req)),
                None => (id, None),
            },
        };
        let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        Some(HttpMessage {
            id,
            conn_id,
            kind,
            version: HttpVersion::Http11,
            request_id,
            first_ts: Timestamp(p.ts_ns),
            last_ts: Timestamp(p.ts_ns),
            src: unspecified,
            dst: unspecified,
            body_len: body_len(&p.bytes),
            bytes: p.bytes,
            complete: true,
        })
    }

    /// Messages made so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// What was left out or unpaired, by the names recordings use (only those that occurred).
    pub fn drops(&self) -> BTreeMap<String, u64> {
        crate::store::drops_seen([
            ("replayed_responses_skipped".to_string(), self.skipped),
            (
                "gor_pending_requests_evicted".to_string(),
                self.pending.evicted(),
            ),
        ])
    }
}

#[cfg(test)]
#[path = "gor_tests.rs"]
mod tests;
