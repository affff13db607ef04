//! Sans-IO HTTP/2 over clear text (h2c) framer for captured traffic.
//!
//! Feed each direction's in-order bytes with [`H2Framer::data`], report holes with
//! [`H2Framer::gap`] and the end with [`H2Framer::close`]; every request and response
//! comes out as one `FramedMessage` in the stored form of [`parse_stored`].
//!
//! What is not known is never guessed: when the capture starts mid-connection or bytes
//! are lost, frame boundaries are searched for again, and an HPACK header block that
//! refers to dynamic-table entries from before that point is counted as undecodable
//! instead of being emitted with made-up fields. Hostile bytes never panic.

mod frame;
mod framer;
mod fuzz;
mod hpack;
mod stored;
mod stream;
#[cfg(test)]
mod tests;

pub use framer::H2Framer;
pub use fuzz::fuzz_one;
pub use stored::{Field, StoredH2, parse_stored, render_stored};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How the connection's bytes begin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H2Start {
    /// A new connection: the client's bytes begin with PREFACE, the server's with frames.
    Preface,
    /// Capture began mid-connection: frame boundaries and both HPACK tables are unknown.
    Midstream,
    /// An HTTP/1.1 `Upgrade: h2c` was accepted (101): the client's next bytes are PREFACE
    /// then frames, the server's are frames; stream 1 is the upgraded request, already
    /// emitted by the HTTP/1 framer with id `request_id`; its response comes on stream 1.
    Upgraded {
        /// Id of the HTTP/1 request message that asked for the upgrade.
        request_id: u64,
    },
}

/// Limits that bound what one connection may make us buffer.
#[derive(Clone, Debug)]
pub struct H2Config {
    /// Largest header block (HEADERS + CONTINUATION) and decoded header list kept.
    pub max_header_list_bytes: usize,
    /// Largest stored message; body bytes beyond it are counted but not kept.
    pub max_message_bytes: usize,
    /// Most streams tracked at once per connection.
    pub max_streams: usize,
    /// Most bytes the open messages of one connection hold together (many streams in
    /// flight at once must not multiply `max_message_bytes`); body bytes beyond it are
    /// counted but not kept.
    pub max_connection_bytes: usize,
}

impl Default for H2Config {
    /// 64 KiB header lists, 64 MiB messages, 1024 open streams, 128 MiB held per
    /// connection (what an HTTP/1 connection may hold: a request and a response).
    fn default() -> Self {
        Self {
            max_header_list_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
            max_streams: 1024,
            max_connection_bytes: 128 * 1024 * 1024,
        }
    }
}

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident: $loss:literal,)*) => {
        /// What the framer saw and what it had to give up, summed over connections.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct H2Stats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl crate::counters::CounterTable for H2Stats {
            /// Losses are counters of traffic that was not (fully) emitted.
            const COUNTERS: &'static [crate::counters::CounterRow<Self>] =
                &[$((stringify!($name), |s| &mut s.$name, $loss),)*];
        }
    };
}

counters! {
    /// Request messages emitted.
    requests: false,
    /// Response messages emitted (interim ones excluded).
    responses: false,
    /// 1xx responses skipped.
    interim_responses: false,
    /// Messages emitted incomplete (reset, gap, close, cut, damaged).
    incomplete_messages: true,
    /// RST_STREAM frames seen.
    streams_reset: false,
    /// Header blocks that could not be decoded (unknown dynamic entries, bad HPACK).
    undecodable_header_blocks: true,
    /// Messages not emitted because a header block of theirs was undecodable.
    undecodable_messages: true,
    /// Messages not emitted because their fields break HTTP/2 rules.
    malformed_headers: true,
    /// Header blocks or decoded header lists over `max_header_list_bytes`.
    header_list_too_large: true,
    /// Messages whose body was cut at `max_message_bytes`.
    body_too_large: true,
    /// Messages whose body was cut because the connection's open messages held
    /// `max_connection_bytes`.
    connection_bytes_cap_hits: true,
    /// Streams not tracked because `max_streams` were open.
    too_many_streams: true,
    /// Frames ignored because they break the framing rules.
    bad_frames: true,
    /// Client bytes that did not begin with the preface.
    bad_preface: true,
    /// Frames over the maximum frame size (direction resynced).
    frame_too_large: true,
    /// Bytes dropped while searching for frame boundaries.
    resync_skipped_bytes: false,
    /// Streams first seen mid-way (their HEADERS were not captured) and ignored.
    midstream_streams_skipped: true,
    /// Pushed streams (PUSH_PROMISE) ignored.
    pushed_streams_ignored: false,
}
