//! Body framing of one direction, as the head announced it: no body, a Content-Length body,
//! a chunked body (size lines with extensions, data, trailers) or a body that ends at the
//! close. Each step frames what is buffered and says whether it can go on.

use super::half::{Chunk, Half, State};
use super::head::BodyFraming;
use super::{FramedMessage, HttpStats};
use crate::packet::Timestamp;

/// Size of a chunk from its size line, extensions ignored; `None` when it is not a hex
/// number that fits a u64.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let size_text = line
        .split(|&b| b == b';')
        .next()
        .map(|s| String::from_utf8_lossy(s).trim().to_string())
        .unwrap_or_default();
    match u64::from_str_radix(&size_text, 16) {
        Ok(0) => Some(0),
        Ok(n) if !size_text.starts_with('+') => Some(n),
        _ => None,
    }
}

impl Half {
    /// Sets where the body of the message just started ends; a message without a body is
    /// emitted at once, and one whose framing is invalid is emitted incomplete.
    pub(super) fn begin_body(
        &mut self,
        body: BodyFraming,
        ts: Timestamp,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) {
        match body {
            BodyFraming::None => {
                self.emit(ts, true, stats, out);
                self.state = State::Head;
            }
            BodyFraming::Length(len) => self.state = State::Fixed(len),
            BodyFraming::Chunked => self.state = State::Chunked(Chunk::Size),
            BodyFraming::UntilClose => self.state = State::UntilClose,
            BodyFraming::Invalid => {
                stats.bad_framing += 1;
                self.emit(ts, false, stats, out);
                self.state = State::Resync;
            }
        }
    }

    /// Moves `n` body bytes into the message and counts them in its body length.
    fn take_body(&mut self, n: u64, ts: Timestamp, limit: usize, stats: &mut HttpStats) {
        self.take(n as usize, ts, limit, stats);
        if let Some(msg) = self.msg.as_mut() {
            msg.body_len += n;
        }
    }

    /// Content-Length body with `remaining` bytes to go; false when more input is needed.
    pub(super) fn fixed_step(
        &mut self,
        remaining: u64,
        ts: Timestamp,
        limit: usize,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) -> bool {
        if self.buf.is_empty() {
            return false;
        }
        let n = remaining.min(self.buf.len() as u64);
        self.take_body(n, ts, limit, stats);
        if n == remaining {
            self.emit(ts, true, stats, out);
            self.state = State::Head;
        } else {
            self.state = State::Fixed(remaining - n);
        }
        true
    }

    /// Close-delimited body: all that arrives belongs to it; the close completes it.
    pub(super) fn until_close_step(&mut self, ts: Timestamp, limit: usize, stats: &mut HttpStats) {
        let n = self.buf.len();
        self.take_body(n as u64, ts, limit, stats);
    }

    /// One step of chunked decoding; false when more input is needed.
    pub(super) fn chunked_step(
        &mut self,
        chunk: Chunk,
        ts: Timestamp,
        limit: usize,
        max_line: usize,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) -> bool {
        match chunk {
            Chunk::Size | Chunk::Trailers => {
                self.chunk_line_step(chunk, ts, limit, max_line, stats, out)
            }
            Chunk::Data(remaining) => self.chunk_data_step(remaining, ts, limit, stats),
            Chunk::DataEnd => self.chunk_data_end_step(ts, limit, stats, out),
        }
    }

    /// A chunk-size line, or a trailer line (the empty one ends the message). A line longer
    /// than `max_line` without its end is bad framing.
    fn chunk_line_step(
        &mut self,
        chunk: Chunk,
        ts: Timestamp,
        limit: usize,
        max_line: usize,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) -> bool {
        let Some(eol) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > max_line {
                stats.bad_framing += 1;
                self.gap_in_place(ts, stats, out);
                return true;
            }
            return false;
        };
        let line = self.buf[..eol]
            .strip_suffix(b"\r")
            .unwrap_or(&self.buf[..eol])
            .to_vec();
        self.take(eol + 1, ts, limit, stats);
        if chunk == Chunk::Trailers {
            if line.is_empty() {
                self.emit(ts, true, stats, out);
                self.state = State::Head;
            }
            return true;
        }
        match chunk_size(&line) {
            Some(0) => self.state = State::Chunked(Chunk::Trailers),
            Some(n) => self.state = State::Chunked(Chunk::Data(n)),
            None => {
                stats.bad_framing += 1;
                self.gap_in_place(ts, stats, out);
            }
        }
        true
    }

    /// Chunk data with `remaining` bytes to go.
    fn chunk_data_step(
        &mut self,
        remaining: u64,
        ts: Timestamp,
        limit: usize,
        stats: &mut HttpStats,
    ) -> bool {
        if self.buf.is_empty() {
            return false;
        }
        let n = remaining.min(self.buf.len() as u64);
        self.take_body(n, ts, limit, stats);
        self.state = State::Chunked(if n == remaining {
            Chunk::DataEnd
        } else {
            Chunk::Data(remaining - n)
        });
        true
    }

    /// The line end after chunk data (CRLF, or a bare LF as senders do); anything else is bad
    /// framing.
    fn chunk_data_end_step(
        &mut self,
        ts: Timestamp,
        limit: usize,
        stats: &mut HttpStats,
        out: &mut Vec<FramedMessage>,
    ) -> bool {
        if self.buf.starts_with(b"\r\n") {
            self.take(2, ts, limit, stats);
        } else if self.buf.starts_with(b"\n") {
            self.take(1, ts, limit, stats);
        } else if self.buf.len() < 2 && self.buf.first().is_none_or(|&b| b == b'\r') {
            return false;
        } else {
            stats.bad_framing += 1;
            self.gap_in_place(ts, stats, out);
            return true;
        }
        self.state = State::Chunked(Chunk::Size);
        true
    }
}
