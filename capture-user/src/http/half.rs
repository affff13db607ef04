//! One direction of a connection: where its framing stands (resync, head, body, tunnel), the
//! bytes received but not yet framed, and the message in progress. Here are the moves every
//! step shares: taking bytes into the message (within the size cap), emitting it, and giving
//! up on it to resynchronise.

use super::input::{Input, MessageBytes, Piece};

use super::head::{Head, HeadParse, find_message_start};
use super::{FramedMessage, HttpStats};
use crate::message::{HttpVersion, MessageKind};
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

/// Where a chunked body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// Where the framing of one direction stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
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

/// The message being framed.
pub(super) struct Pending {
    pub(super) id: u64,
    pub(super) kind: MessageKind,
    pub(super) minor_version: u8,
    pub(super) request_id: Option<u64>,
    pub(super) first_ts: Timestamp,
    pub(super) last_ts: Timestamp,
    pub(super) bytes: MessageBytes,
    pub(super) body_len: u64,
    /// Bytes beyond `max_message_bytes` were not kept.
    pub(super) cut: bool,
}

/// One direction of a connection.
pub(super) struct Half {
    pub(super) dir: FlowDir,
    pub(super) state: State,
    /// Bytes received but not yet framed.
    pub(super) buf: Input,
    pub(super) msg: Option<Pending>,
}

/// Bytes kept while resyncing, so a message start split across segments is still found.
const RESYNC_KEEP: usize = 16;

impl Half {
    /// A direction whose framing starts in `state` (head, or resync when midstream).
    pub(super) fn new(dir: FlowDir, state: State) -> Self {
        Self {
            dir,
            state,
            buf: Input::default(),
            msg: None,
        }
    }

    /// Starts the message whose head was just read and moves the head's bytes into it.
    pub(super) fn start_message(
        &mut self,
        id: u64,
        head: Head,
        request_id: Option<u64>,
        ts: Timestamp,
        limit: usize,
        stats: &mut HttpStats,
    ) {
        self.msg = Some(Pending {
            id,
            kind: head.kind,
            minor_version: head.minor_version,
            request_id,
            first_ts: ts,
            last_ts: ts,
            bytes: MessageBytes::default(),
            body_len: 0,
            cut: false,
        });
        self.take(head.len, ts, limit, stats);
    }

    /// Emits the message in progress, if any; `complete` when its framing ended (it is still
    /// marked incomplete, and counted, when it was cut at the size cap).
    pub(super) fn emit(
        &mut self,
        ts: Timestamp,
        complete: bool,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        let Some(msg) = self.msg.take() else {
            return;
        };
        let ended = complete;
        let complete = complete && !msg.cut;
        if !complete {
            stats.incomplete_messages += 1;
        }
        out.push(FramedMessage {
            id: msg.id,
            dir: self.dir,
            kind: msg.kind,
            version: HttpVersion::http1(msg.minor_version),
            request_id: msg.request_id,
            first_ts: msg.first_ts,
            last_ts: ts.max(msg.last_ts),
            bytes: self.buf.finish_message(msg.bytes),
            body_len: msg.body_len,
            complete,
            ended,
        });
    }

    /// Moves `n` bytes from the input to the message in progress (a slice of the captured
    /// segment, not a copy, while the message arrives whole).
    pub(super) fn take(&mut self, n: usize, ts: Timestamp, limit: usize, stats: &mut HttpStats) {
        let mut piece = self.buf.take(n);
        if let Some(msg) = self.msg.as_mut() {
            msg.last_ts = ts;
            let room = limit.saturating_sub(msg.bytes.len());
            if piece.len() > room {
                if !msg.cut {
                    stats.body_too_large += 1;
                }
                msg.cut = true;
                piece.truncate(room);
            }
            msg.bytes.push(piece, self.buf.segment());
        }
    }

    /// The stream cannot be framed any further here: the message is incomplete; resync.
    pub(super) fn gap_in_place(
        &mut self,
        ts: Timestamp,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        self.emit(ts, false, stats, out);
        self.state = State::Resync;
        // Skip at least one byte so resync cannot find the same start again.
        if !self.buf.is_empty() {
            self.buf.skip(1);
            stats.resync_skipped_bytes += 1;
        }
    }

    /// Past the start of a tunnel the bytes are not HTTP: counted and dropped.
    pub(super) fn drop_tunnel_bytes(&mut self, stats: &mut HttpStats) {
        stats.tunnel_bytes_ignored += self.buf.len() as u64;
        self.buf.clear();
    }

    /// Skips to the next plausible message start; false when there is none yet (the last few
    /// bytes are kept, since a start may be split across segments).
    pub(super) fn resync_step(&mut self, stats: &mut HttpStats) -> bool {
        match find_message_start(&self.buf, self.dir) {
            Some(p) => {
                stats.resync_skipped_bytes += p as u64;
                self.buf.skip(p);
                self.state = State::Head;
                true
            }
            None => {
                let drop = self.buf.len().saturating_sub(RESYNC_KEEP);
                stats.resync_skipped_bytes += drop as u64;
                self.buf.skip(drop);
                false
            }
        }
    }

    /// Skips empty lines between messages, which RFC 9112 section 2.2 asks to tolerate;
    /// false when nothing else is buffered.
    pub(super) fn skip_blank_lines(&mut self) -> bool {
        let blank = self
            .buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        // Nearly always none: skipping nothing would still cut (and count a reference to)
        // the buffer.
        if blank > 0 {
            self.buf.skip(blank);
        }
        !self.buf.is_empty()
    }

    /// Keeps a head that is complete and within `max_header`. Otherwise deals with it (waits
    /// for more, drops an oversized head, resyncs after a bad one) and says, as `Err`, whether
    /// framing can go on with what is buffered.
    pub(super) fn accept_head(
        &mut self,
        parsed: HeadParse,
        max_header: usize,
        ts: Timestamp,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) -> Result<Head, bool> {
        let head = match parsed {
            HeadParse::Complete(head) => head,
            HeadParse::Partial => {
                if self.buf.len() > max_header {
                    stats.header_too_large += 1;
                    self.buf.clear();
                    self.state = State::Resync;
                    return Err(true);
                }
                return Err(false);
            }
            HeadParse::Invalid(httparse::Error::TooManyHeaders) => {
                stats.header_too_large += 1;
                self.gap_in_place(ts, stats, out);
                return Err(true);
            }
            HeadParse::Invalid(_) => {
                stats.bad_message_head += 1;
                self.gap_in_place(ts, stats, out);
                return Err(true);
            }
        };
        if head.len > max_header {
            stats.header_too_large += 1;
            self.buf.skip(head.len);
            self.state = State::Resync;
            return Err(true);
        }
        Ok(head)
    }

    /// The framing call is over: nothing of the segment it framed may stay shared, so what
    /// is left of it, and the message still open, are copied into memory of their own.
    pub(super) fn settle(&mut self) {
        if let Some(msg) = self.msg.as_mut() {
            msg.bytes.own(self.buf.segment());
        }
        self.buf.hold();
    }

    /// The connection ended: a close-delimited body completes; any other message in progress
    /// is incomplete and keeps what was buffered; bytes left unframed are counted.
    pub(super) fn end(
        &mut self,
        ts: Timestamp,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        match self.state {
            State::UntilClose => self.emit(ts, true, stats, out),
            State::Stopped => {}
            _ => {
                let rest = Piece::Owned(self.buf.take_all());
                if let Some(msg) = self.msg.as_mut() {
                    msg.bytes.push(rest, self.buf.segment());
                }
                if self.msg.is_some() {
                    self.emit(ts, false, stats, out);
                }
            }
        }
        let leftover = self.buf.iter().filter(|b| !b.is_ascii_whitespace()).count();
        stats.resync_skipped_bytes += leftover as u64;
        self.buf.clear();
    }
}
