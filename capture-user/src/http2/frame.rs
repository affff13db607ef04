//! Frame layer: frame headers, the per-direction byte buffer and resynchronisation.
//!
//! Bytes arrive in any segmentation; the reader hands out whole frames. When frame
//! boundaries are unknown (capture started mid-connection, bytes lost, garbage), it
//! searches for a plausible chain of frame headers before handing out frames again.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::{H2Stats, PREFACE};
use crate::packet::Timestamp;

/// Length of a frame header (RFC 9113 §4.1).
pub(crate) const FRAME_HEADER_LEN: usize = 9;
/// Initial SETTINGS_MAX_FRAME_SIZE.
pub(crate) const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;
/// Largest frame we ever buffer, whatever the peers advertise.
pub(crate) const MAX_FRAME_SIZE_CAP: u32 = 16 * 1024 * 1024;
/// How many bytes a resync search may hold while waiting to confirm a candidate.
const SEARCH_WINDOW: usize = 64 * 1024;

/// Frame types (RFC 9113 §6).
pub(crate) mod kind {
    pub(crate) const DATA: u8 = 0x0;
    pub(crate) const HEADERS: u8 = 0x1;
    pub(crate) const PRIORITY: u8 = 0x2;
    pub(crate) const RST_STREAM: u8 = 0x3;
    pub(crate) const SETTINGS: u8 = 0x4;
    pub(crate) const PUSH_PROMISE: u8 = 0x5;
    pub(crate) const PING: u8 = 0x6;
    pub(crate) const GOAWAY: u8 = 0x7;
    pub(crate) const WINDOW_UPDATE: u8 = 0x8;
    pub(crate) const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
pub(crate) mod flag {
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const ACK: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
    pub(crate) const PADDED: u8 = 0x8;
    pub(crate) const PRIORITY: u8 = 0x20;
}

/// The 9-byte header in front of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub(crate) length: u32,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    pub(crate) stream_id: u32,
    /// The reserved bit in front of the stream id (must be 0).
    pub(crate) reserved: bool,
}

impl FrameHeader {
    /// Parses the first 9 bytes of `bytes`, if there are that many.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        let header: &[u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *header;
        let raw_stream = u32::from_be_bytes([s0, s1, s2, s3]);
        Some(Self {
            length: u32::from_be_bytes([0, l0, l1, l2]),
            kind,
            flags,
            stream_id: raw_stream & 0x7fff_ffff,
            reserved: raw_stream & 0x8000_0000 != 0,
        })
    }

    /// Whether this could be a real frame header: used to find frame boundaries.
    /// Besides the length limit, the known type, the stream-id rules and the reserved
    /// bit, it refuses flags a type does not define and wrong lengths of fixed-size
    /// frames: senders never produce those, and random bytes often do.
    pub(crate) fn is_plausible(&self, max_frame_size: u32) -> bool {
        use flag::{END_HEADERS, END_STREAM, PADDED, PRIORITY};
        let len = self.length;
        let (stream_rule, defined_flags, length_rule) = match self.kind {
            kind::DATA => (self.stream_id != 0, END_STREAM | PADDED, true),
            kind::HEADERS => (
                self.stream_id != 0,
                END_STREAM | END_HEADERS | PADDED | PRIORITY,
                true,
            ),
            kind::PRIORITY => (self.stream_id != 0, 0, len == 5),
            kind::RST_STREAM => (self.stream_id != 0, 0, len == 4),
            kind::SETTINGS => (self.stream_id == 0, flag::ACK, len.is_multiple_of(6)),
            kind::PUSH_PROMISE => (self.stream_id != 0, END_HEADERS | PADDED, len >= 4),
            kind::PING => (self.stream_id == 0, flag::ACK, len == 8),
            kind::GOAWAY => (self.stream_id == 0, 0, len >= 8),
            kind::WINDOW_UPDATE => (true, 0, len == 4),
            kind::CONTINUATION => (self.stream_id != 0, END_HEADERS, true),
            _ => return false,
        };
        stream_rule
            && length_rule
            && self.flags & !defined_flags == 0
            && !self.reserved
            && len <= max_frame_size
    }
}

/// One whole frame.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) header: FrameHeader,
    pub(crate) payload: Bytes,
    /// Capture time of the frame's first byte.
    pub(crate) ts: Timestamp,
}

impl Frame {
    pub(crate) fn has_flag(&self, flag: u8) -> bool {
        self.header.flags & flag != 0
    }
}

/// Where the reader stands in the byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alignment {
    /// Expecting the client preface; `matched` bytes of it were seen.
    Preface { matched: usize },
    /// At a frame boundary.
    Aligned,
    /// Frame boundaries unknown: searching for them.
    Searching,
}

/// What the reader has to say next.
#[derive(Debug)]
pub(crate) enum ReadEvent {
    Frame(Frame),
    /// Frame boundaries were just lost (bad preface, frame too large): what was in
    /// progress in this direction is cut, and the HPACK context is unknown.
    Desynced,
    NeedMore,
}

/// Turns one direction's bytes into frames.
pub(crate) struct FrameReader {
    buf: BytesMut,
    alignment: Alignment,
    /// Stream offset of `buf[0]`.
    offset: u64,
    /// (stream offset where a received chunk ends, its capture time), oldest first.
    chunk_ends: VecDeque<(u64, Timestamp)>,
}

impl FrameReader {
    /// A reader that first expects the client preface.
    pub(crate) fn expecting_preface() -> Self {
        Self::with_alignment(Alignment::Preface { matched: 0 })
    }

    /// A reader at a frame boundary (the server side of a new connection).
    pub(crate) fn aligned() -> Self {
        Self::with_alignment(Alignment::Aligned)
    }

    /// A reader whose frame boundaries are unknown.
    pub(crate) fn searching() -> Self {
        Self::with_alignment(Alignment::Searching)
    }

    fn with_alignment(alignment: Alignment) -> Self {
        Self {
            buf: BytesMut::new(),
            alignment,
            offset: 0,
            chunk_ends: VecDeque::new(),
        }
    }

    /// Appends received bytes.
    pub(crate) fn push(&mut self, ts: Timestamp, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        self.chunk_ends
            .push_back((self.offset + self.buf.len() as u64, ts));
    }

    /// Bytes were lost: drop what is buffered and search for frame boundaries.
    pub(crate) fn lose_sync(&mut self) {
        self.buf.clear();
        self.chunk_ends.clear();
        self.alignment = Alignment::Searching;
    }

    /// Bytes buffered and not yet handed out (for tests and memory bounds).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next frame, or why there is none. With `no_more_bytes` (the connection
    /// ended) a resync search stops waiting for bytes that will not come.
    pub(crate) fn next_event(
        &mut self,
        max_frame_size: u32,
        no_more_bytes: bool,
        stats: &mut H2Stats,
    ) -> ReadEvent {
        loop {
            match self.alignment {
                Alignment::Preface { matched } => {
                    let expected = PREFACE.get(matched..).unwrap_or_default();
                    let len = expected.len().min(self.buf.len());
                    if self.buf.get(..len) != expected.get(..len) {
                        stats.bad_preface += 1;
                        self.alignment = Alignment::Searching;
                        return ReadEvent::Desynced;
                    }
                    self.consume(len);
                    if len < expected.len() {
                        self.alignment = Alignment::Preface {
                            matched: matched + len,
                        };
                        return ReadEvent::NeedMore;
                    }
                    self.alignment = Alignment::Aligned;
                }
                Alignment::Aligned => return self.take_frame(max_frame_size, stats),
                Alignment::Searching => {
                    if !self.search(max_frame_size, no_more_bytes, stats) {
                        return ReadEvent::NeedMore;
                    }
                    self.alignment = Alignment::Aligned;
                }
            }
        }
    }

    fn take_frame(&mut self, max_frame_size: u32, stats: &mut H2Stats) -> ReadEvent {
        let Some(header) = FrameHeader::parse(&self.buf) else {
            return ReadEvent::NeedMore;
        };
        if header.length > max_frame_size {
            stats.frame_too_large += 1;
            self.alignment = Alignment::Searching;
            return ReadEvent::Desynced;
        }
        let total = FRAME_HEADER_LEN + header.length as usize;
        if self.buf.len() < total {
            return ReadEvent::NeedMore;
        }
        let ts = self.first_byte_ts();
        let mut bytes = self.buf.split_to(total).freeze();
        self.advance_offset(total);
        bytes.advance(FRAME_HEADER_LEN);
        ReadEvent::Frame(Frame {
            header,
            payload: bytes,
            ts,
        })
    }

    /// Looks for the first offset where a plausible frame header starts that is either
    /// followed by another plausible header or ends exactly at the end of the buffer.
    /// Drops (and counts) the bytes before it; `true` if found.
    fn search(&mut self, max_frame_size: u32, no_more_bytes: bool, stats: &mut H2Stats) -> bool {
        let plausible = |bytes: &[u8]| {
            FrameHeader::parse(bytes).filter(|header| header.is_plausible(max_frame_size))
        };
        let mut start = 0;
        let found = loop {
            let Some(candidate) = self.buf.get(start..) else {
                break false;
            };
            if candidate.len() < FRAME_HEADER_LEN {
                break false;
            }
            if let Some(header) = plausible(candidate) {
                let end = FRAME_HEADER_LEN + header.length as usize;
                if end == candidate.len() {
                    break true;
                }
                let can_wait = !no_more_bytes && end + FRAME_HEADER_LEN <= SEARCH_WINDOW;
                match candidate
                    .get(end..)
                    .filter(|next| next.len() >= FRAME_HEADER_LEN)
                {
                    Some(next) if plausible(next).is_some() => break true,
                    // Undecided yet: wait for more bytes if that stays within the window.
                    None if can_wait => break false,
                    _ => {}
                }
            }
            start += 1;
        };
        stats.resync_skipped_bytes += start as u64;
        self.consume(start);
        found
    }

    fn first_byte_ts(&self) -> Timestamp {
        self.chunk_ends
            .front()
            .map(|&(_, ts)| ts)
            .unwrap_or_default()
    }

    fn consume(&mut self, len: usize) {
        self.buf.advance(len);
        self.advance_offset(len);
    }

    fn advance_offset(&mut self, len: usize) {
        self.offset += len as u64;
        while self
            .chunk_ends
            .front()
            .is_some_and(|&(end, _)| end <= self.offset)
        {
            self.chunk_ends.pop_front();
        }
    }
}

/// Strips the padding of a PADDED frame; `None` if the pad length is beyond the frame.
pub(crate) fn strip_padding(frame: &Frame) -> Option<Bytes> {
    let payload = &frame.payload;
    if !frame.has_flag(flag::PADDED) {
        return Some(payload.clone());
    }
    let pad_len = usize::from(*payload.first()?);
    let end = payload.len().checked_sub(pad_len)?;
    if end < 1 {
        return None;
    }
    Some(payload.slice(1..end))
}
