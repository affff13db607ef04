//! HTTP/1.0 and 1.1 message framing over the two reassembled byte streams of a connection.
//!
//! Sans-IO: fed in-order bytes, gaps and the close of each direction, it emits messages
//! carrying the exact bytes seen on the wire. Request and status lines and headers are parsed
//! with `httparse`; this module decides where each message ends (Content-Length, chunked,
//! close-delimited, no body for HEAD/1xx/204/304), pairs responses with requests, stops at
//! Upgrade/CONNECT tunnels, and resynchronises at the next message start after a gap. Every
//! anomaly is counted; nothing is guessed silently.
//!
//! Files, in the order bytes meet them: `framer` (the per-connection framer: runs each
//! direction, pairs responses with requests, stops at tunnels), `head` (where a message
//! starts, its request or status line and headers, what they say about the body; `scan`
//! reads the plain shape of a head quickly and leaves the rest to httparse), `half`
//! (one direction's state, buffer and message in progress) and `body` (Content-Length,
//! chunked and close-delimited bodies).

mod body;
mod framer;
mod half;
mod head;
mod input;
mod scan;
#[cfg(test)]
mod tests;

use bytes::Bytes;

use crate::counters::{CounterRow, CounterTable, LOSS, TALLY};
use crate::message::{HttpVersion, MessageKind};
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

pub use framer::{ConnectionFramer, H2cUpgrade};

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
    pub h2c_upgrades: u64,
    pub tunnel_bytes_ignored: u64,
    pub unpaired_responses: u64,
}

impl CounterTable for HttpStats {
    /// Which counters are losses is said once, here.
    const COUNTERS: &'static [CounterRow<Self>] = &[
        ("requests", |s| &mut s.requests, TALLY),
        ("responses", |s| &mut s.responses, TALLY),
        ("interim_responses", |s| &mut s.interim_responses, TALLY),
        ("incomplete_messages", |s| &mut s.incomplete_messages, LOSS),
        ("header_too_large", |s| &mut s.header_too_large, LOSS),
        ("bad_message_head", |s| &mut s.bad_message_head, LOSS),
        ("bad_framing", |s| &mut s.bad_framing, LOSS),
        ("ambiguous_length", |s| &mut s.ambiguous_length, TALLY),
        ("body_too_large", |s| &mut s.body_too_large, LOSS),
        (
            "resync_skipped_bytes",
            |s| &mut s.resync_skipped_bytes,
            TALLY,
        ),
        ("lenient_heads", |s| &mut s.lenient_heads, TALLY),
        ("upgrades", |s| &mut s.upgrades, LOSS),
        ("h2c_upgrades", |s| &mut s.h2c_upgrades, TALLY),
        (
            "tunnel_bytes_ignored",
            |s| &mut s.tunnel_bytes_ignored,
            TALLY,
        ),
        ("unpaired_responses", |s| &mut s.unpaired_responses, TALLY),
    ];
}

/// A message as the framer delimits it; the pipeline adds connection and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramedMessage {
    pub id: u64,
    pub dir: FlowDir,
    pub kind: MessageKind,
    pub version: HttpVersion,
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
    pub(crate) fn next(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}
