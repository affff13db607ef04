//! Per-stream message assembly: which side of each stream is open, skipped or done,
//! the message being built, and the checks that decide whether decoded headers may be
//! emitted at all.

use std::collections::BTreeMap;

use bytes::Bytes;
use compact_str::CompactString;

use super::H2Stats;
use super::hpack::HeaderField;
use super::stored::{self, Field, StartLine};
use crate::http::FramedMessage;
use crate::message::HttpVersion;
use crate::message::MessageKind;
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

/// A message whose head was decoded, collecting its body and trailers.
#[derive(Debug)]
pub(crate) struct MessageBuilder {
    id: u64,
    kind: MessageKind,
    request_id: Option<u64>,
    first_ts: Timestamp,
    bytes: Vec<u8>,
    body_len: u64,
    /// Body bytes were dropped for the size limit.
    cut: bool,
    /// A frame of this message had to be ignored (bad padding, data after trailers).
    damaged: bool,
    /// Trailers were appended: nothing may follow them.
    has_trailers: bool,
}

impl MessageBuilder {
    /// Appends body bytes up to `max_message_bytes` in total and up to `connection_room`
    /// more bytes; counts the first cut. The bytes kept.
    pub(crate) fn append_body(
        &mut self,
        data: &[u8],
        max_message_bytes: usize,
        connection_room: usize,
        stats: &mut H2Stats,
    ) -> usize {
        if self.has_trailers {
            self.damaged = true;
            return 0;
        }
        self.body_len += data.len() as u64;
        let message_room = max_message_bytes.saturating_sub(self.bytes.len());
        let room = message_room.min(connection_room);
        let kept = data.get(..room).unwrap_or(data);
        self.bytes.extend_from_slice(kept);
        if kept.len() < data.len() && !self.cut {
            self.cut = true;
            if message_room <= connection_room {
                stats.body_too_large += 1;
            } else {
                stats.connection_bytes_cap_hits += 1;
            }
        }
        kept.len()
    }

    /// Bytes held so far.
    pub(crate) fn held(&self) -> usize {
        self.bytes.len()
    }

    /// Appends trailers, unless the body was cut (the reader could not find them).
    pub(crate) fn append_trailers(&mut self, trailers: &[Field<'_>]) {
        if self.has_trailers {
            self.damaged = true;
        } else if !self.cut {
            stored::render_trailers(&mut self.bytes, trailers);
        }
        self.has_trailers = true;
    }

    /// Part of the message was lost.
    pub(crate) fn mark_damaged(&mut self) {
        self.damaged = true;
    }

    /// The finished message; counts it.
    pub(crate) fn finish(
        self,
        dir: FlowDir,
        last_ts: Timestamp,
        ended: bool,
        stats: &mut H2Stats,
    ) -> FramedMessage {
        let complete = ended && !self.cut && !self.damaged;
        match self.kind {
            MessageKind::Request { .. } => stats.requests += 1,
            MessageKind::Response { .. } => stats.responses += 1,
        }
        if !complete {
            stats.incomplete_messages += 1;
        }
        FramedMessage {
            id: self.id,
            dir,
            kind: self.kind,
            version: HttpVersion::Http2,
            request_id: self.request_id,
            first_ts: self.first_ts,
            last_ts,
            bytes: Bytes::from(self.bytes),
            body_len: self.body_len,
            complete,
            ended,
        }
    }
}

/// The state of one direction of a stream.
#[derive(Debug, Default)]
pub(crate) enum Side {
    /// No message started (or only interim responses).
    #[default]
    Idle,
    /// A message is being built.
    Open(Box<MessageBuilder>),
    /// The message is not emitted (undecodable, malformed, first seen mid-way):
    /// frames are ignored until END_STREAM.
    Skipped,
    /// END_STREAM seen.
    Done,
}

/// One stream: its request side, its response side.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    pub(crate) request: Side,
    pub(crate) response: Side,
    /// Id of the request message, given to the response.
    pub(crate) request_id: Option<u64>,
}

impl Stream {
    /// The side that sends in direction `dir`.
    pub(crate) fn side_mut(&mut self, dir: FlowDir) -> &mut Side {
        match dir {
            FlowDir::ToServer => &mut self.request,
            FlowDir::ToClient => &mut self.response,
        }
    }

    /// Nothing more to learn: the response is over and the request is not being built.
    fn is_finished(&self) -> bool {
        matches!(self.response, Side::Done) && !matches!(self.request, Side::Open(_))
    }
}

/// Open streams of a connection, bounded by `max_streams`.
#[derive(Debug)]
pub(crate) struct StreamTable {
    streams: BTreeMap<u32, Stream>,
    max_streams: usize,
}

impl StreamTable {
    pub(crate) fn new(max_streams: usize) -> Self {
        Self {
            streams: BTreeMap::new(),
            max_streams,
        }
    }

    /// Number of tracked streams.
    pub(crate) fn len(&self) -> usize {
        self.streams.len()
    }

    /// Bytes the open messages hold together.
    pub(crate) fn held_bytes(&self) -> usize {
        let held = |side: &Side| match side {
            Side::Open(message) => message.held(),
            _ => 0,
        };
        self.streams
            .values()
            .map(|s| held(&s.request) + held(&s.response))
            .sum()
    }

    pub(crate) fn get_mut(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.get_mut(&id)
    }

    /// The stream, created if there is room; `None` when the table is full.
    pub(crate) fn get_or_create(&mut self, id: u32) -> Option<&mut Stream> {
        if !self.streams.contains_key(&id) && self.streams.len() >= self.max_streams {
            return None;
        }
        Some(self.streams.entry(id).or_default())
    }

    /// Inserts a stream as is (the upgraded stream 1).
    pub(crate) fn insert(&mut self, id: u32, stream: Stream) {
        self.streams.insert(id, stream);
    }

    /// Forgets the stream if it is finished, so memory stays bounded.
    pub(crate) fn forget_if_finished(&mut self, id: u32) {
        if self.streams.get(&id).is_some_and(Stream::is_finished) {
            self.streams.remove(&id);
        }
    }

    /// Removes a stream, emitting its open messages as incomplete.
    pub(crate) fn reset(
        &mut self,
        id: u32,
        ts: Timestamp,
        stats: &mut H2Stats,
        out: &mut Vec<FramedMessage>,
    ) {
        if let Some(stream) = self.streams.remove(&id) {
            for (dir, side) in [
                (FlowDir::ToServer, stream.request),
                (FlowDir::ToClient, stream.response),
            ] {
                if let Side::Open(message) = side {
                    out.push(message.finish(dir, ts, false, stats));
                }
            }
        }
    }

    /// Emits every message open in `dir` as incomplete; later frames of those streams in
    /// `dir` are skipped.
    pub(crate) fn abort_direction(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        stats: &mut H2Stats,
        out: &mut Vec<FramedMessage>,
    ) {
        for stream in self.streams.values_mut() {
            let side = stream.side_mut(dir);
            if matches!(side, Side::Open(_))
                && let Side::Open(message) = std::mem::replace(side, Side::Skipped)
            {
                out.push(message.finish(dir, ts, false, stats));
            }
        }
        self.streams.retain(|_, stream| !stream.is_finished());
    }

    /// Emits everything still open as incomplete and forgets every stream.
    pub(crate) fn close(
        &mut self,
        ts: Timestamp,
        stats: &mut H2Stats,
        out: &mut Vec<FramedMessage>,
    ) {
        for id in self.streams.keys().copied().collect::<Vec<_>>() {
            self.reset(id, ts, stats, out);
        }
    }
}

/// Why decoded fields are not emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Violates the field rules, or lacks what the message needs.
    Malformed,
    /// No pseudo-header at all: trailers of a stream whose start we did not see.
    NoPseudo,
}

/// A decoded, checked message head.
pub(crate) struct MessageHead {
    pub(crate) kind: MessageKind,
    pub(crate) rendered: Vec<u8>,
}

impl MessageHead {
    /// An interim (1xx) response, which is not emitted.
    pub(crate) fn is_interim(&self) -> bool {
        matches!(self.kind, MessageKind::Response { status: 100..=199 })
    }

    /// Starts building the message.
    pub(crate) fn into_builder(
        self,
        id: u64,
        request_id: Option<u64>,
        first_ts: Timestamp,
    ) -> MessageBuilder {
        MessageBuilder {
            id,
            kind: self.kind,
            request_id,
            first_ts,
            bytes: self.rendered,
            body_len: 0,
            cut: false,
            damaged: false,
            has_trailers: false,
        }
    }
}

/// Checks a request (`dir` ToServer) or response head and renders its stored form.
pub(crate) fn message_head(dir: FlowDir, fields: &[HeaderField]) -> Result<MessageHead, HeadError> {
    let (pseudo, regular) = split_checked(fields)?;
    if pseudo.is_empty() {
        return Err(HeadError::NoPseudo);
    }
    let (start, other_pseudo) = stored::start_line(&pseudo).ok_or(HeadError::Malformed)?;
    let kind = match (dir, start) {
        (FlowDir::ToServer, StartLine::Request { method, uri }) => MessageKind::Request {
            method: CompactString::from_utf8_lossy(method),
            uri: CompactString::from_utf8_lossy(uri),
        },
        (FlowDir::ToClient, StartLine::Response { status }) => MessageKind::Response {
            status: status
                .iter()
                .fold(0u16, |acc, digit| acc * 10 + u16::from(digit - b'0')),
        },
        _ => return Err(HeadError::Malformed),
    };
    let mut rendered = Vec::new();
    stored::render_head(&mut rendered, start, &other_pseudo, &regular);
    Ok(MessageHead { kind, rendered })
}

/// Checks trailer fields: valid fields and no pseudo-header.
pub(crate) fn checked_trailers(fields: &[HeaderField]) -> Result<Vec<Field<'_>>, HeadError> {
    let (pseudo, regular) = split_checked(fields)?;
    if pseudo.is_empty() {
        Ok(regular)
    } else {
        Err(HeadError::Malformed)
    }
}

/// Splits fields into pseudo-headers and regular ones, refusing invalid fields and
/// pseudo-headers after a regular field (RFC 9113 §8.3).
fn split_checked(fields: &[HeaderField]) -> Result<(Vec<Field<'_>>, Vec<Field<'_>>), HeadError> {
    let mut pseudo = Vec::new();
    let mut regular = Vec::new();
    for (name, value) in fields {
        if !is_valid_field(name, value) {
            return Err(HeadError::Malformed);
        }
        if name.starts_with(b":") {
            if !regular.is_empty() {
                return Err(HeadError::Malformed);
            }
            pseudo.push((name.as_slice(), value.as_slice()));
        } else {
            regular.push((name.as_slice(), value.as_slice()));
        }
    }
    Ok((pseudo, regular))
}

/// No CR, LF or NUL anywhere; a non-empty name without uppercase letters, and without
/// a space or colon after its first byte. These keep the stored form parseable.
fn is_valid_field(name: &[u8], value: &[u8]) -> bool {
    let forbidden = |b: &u8| matches!(b, b'\r' | b'\n' | 0);
    let name_rest_ok = name
        .get(1..)
        .is_some_and(|rest| !rest.iter().any(|b| matches!(b, b' ' | b':')));
    name_rest_ok
        && name.first().is_some_and(|&b| b != b' ')
        && !name.iter().any(|b| forbidden(b) || b.is_ascii_uppercase())
        && !value.iter().any(forbidden)
}
