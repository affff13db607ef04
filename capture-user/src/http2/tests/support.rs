//! Builders for HTTP/2 conversations (frames, HPACK blocks from loona_hpack's encoder),
//! their ground truth, and ways to feed them to a framer.

use bytes::Bytes;
use loona_hpack::Encoder;

use super::super::frame::{flag, kind};
use super::super::{H2Config, H2Framer, H2Start, H2Stats, PREFACE, parse_stored, render_stored};
use crate::http::FramedMessage;
use crate::http::IdAllocator;
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

pub(super) use FlowDir::{ToClient, ToServer};

/// Owned header fields, pseudo-headers included.
pub(super) type Fields = Vec<(String, String)>;

pub(super) fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn borrowed(fields: &Fields) -> Vec<(&[u8], &[u8])> {
    fields
        .iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect()
}

/// Bytes of one frame.
pub(super) fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A SETTINGS frame with the given (id, value) entries.
pub(super) fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = entries
        .iter()
        .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
        .collect();
    frame(kind::SETTINGS, 0, 0, &payload)
}

/// Wraps a payload in PADDED framing (pad length byte + zero padding).
pub(super) fn padded(payload: &[u8], pad: u8) -> Vec<u8> {
    let mut out = vec![pad];
    out.extend_from_slice(payload);
    out.extend(std::iter::repeat_n(0, usize::from(pad)));
    out
}

/// How frames are cut: DATA chunk size, padding, header block split size.
#[derive(Clone, Copy, Debug)]
pub(super) struct FrameStyle {
    pub data_chunk: usize,
    pub pad: Option<u8>,
    pub block_split: usize,
}

impl Default for FrameStyle {
    fn default() -> Self {
        Self {
            data_chunk: 16384,
            pad: None,
            block_split: usize::MAX,
        }
    }
}

/// Both directions' frames of a connection in causal order, with their HPACK encoders.
pub(super) struct Wire {
    pub events: Vec<(FlowDir, Vec<u8>)>,
    encoders: [Encoder<'static>; 2],
    pub style: FrameStyle,
}

impl Wire {
    /// A connection with no frames yet.
    pub(super) fn empty() -> Self {
        Self {
            events: Vec::new(),
            encoders: [Encoder::new(), Encoder::new()],
            style: FrameStyle::default(),
        }
    }

    /// A new connection: preface and both SETTINGS.
    pub(super) fn new() -> Self {
        let mut wire = Self::empty();
        let mut client_start = PREFACE.to_vec();
        client_start.extend(settings(&[]));
        wire.raw(ToServer, client_start);
        wire.raw(ToClient, settings(&[]));
        wire
    }

    pub(super) fn raw(&mut self, dir: FlowDir, bytes: Vec<u8>) {
        self.events.push((dir, bytes));
    }

    pub(super) fn encoder(&mut self, dir: FlowDir) -> &mut Encoder<'static> {
        &mut self.encoders[dir as usize]
    }

    /// The HPACK block for `fields` in `dir`.
    pub(super) fn encode(&mut self, dir: FlowDir, fields: &Fields) -> Vec<u8> {
        self.encoder(dir).encode(borrowed(fields))
    }

    /// HEADERS (+ CONTINUATION per the style) carrying `block`.
    pub(super) fn block(&mut self, dir: FlowDir, stream_id: u32, block: &[u8], end_stream: bool) {
        let split = self.style.block_split.max(1);
        let mut chunks: Vec<&[u8]> = block.chunks(split).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter().enumerate() {
            let mut flags = if i == last { flag::END_HEADERS } else { 0 };
            let frame_bytes = if i == 0 {
                flags |= if end_stream { flag::END_STREAM } else { 0 };
                match self.style.pad {
                    Some(pad) => frame(
                        kind::HEADERS,
                        flags | flag::PADDED,
                        stream_id,
                        &padded(chunk, pad),
                    ),
                    None => frame(kind::HEADERS, flags, stream_id, chunk),
                }
            } else {
                frame(kind::CONTINUATION, flags, stream_id, chunk)
            };
            self.raw(dir, frame_bytes);
        }
    }

    pub(super) fn headers(
        &mut self,
        dir: FlowDir,
        stream_id: u32,
        fields: &Fields,
        end_stream: bool,
    ) {
        let block = self.encode(dir, fields);
        self.block(dir, stream_id, &block, end_stream);
    }

    /// DATA frames carrying `body` (at least one frame when `end_stream`).
    pub(super) fn data(&mut self, dir: FlowDir, stream_id: u32, body: &[u8], end_stream: bool) {
        let mut chunks: Vec<&[u8]> = body.chunks(self.style.data_chunk.max(1)).collect();
        if chunks.is_empty() && end_stream {
            chunks.push(&[]);
        }
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.iter().enumerate() {
            let flags = if i == last && end_stream {
                flag::END_STREAM
            } else {
                0
            };
            let frame_bytes = match self.style.pad {
                Some(pad) => frame(
                    kind::DATA,
                    flags | flag::PADDED,
                    stream_id,
                    &padded(chunk, pad),
                ),
                None => frame(kind::DATA, flags, stream_id, chunk),
            };
            self.raw(dir, frame_bytes);
        }
    }

    /// A whole message: headers, body, trailers.
    pub(super) fn message(&mut self, dir: FlowDir, stream_id: u32, message: &Message) {
        let only_headers = message.body.is_empty() && message.trailers.is_none();
        self.headers(dir, stream_id, &message.fields, only_headers);
        if !message.body.is_empty() {
            self.data(dir, stream_id, &message.body, message.trailers.is_none());
        }
        if let Some(trailers) = &message.trailers {
            self.headers(dir, stream_id, trailers, true);
        }
    }
}

/// The truth about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Message {
    pub fields: Fields,
    pub body: Vec<u8>,
    pub trailers: Option<Fields>,
}

impl Message {
    pub(super) fn new(fields: Fields, body: &[u8], trailers: Option<Fields>) -> Self {
        Self {
            fields,
            body: body.to_vec(),
            trailers,
        }
    }

    /// The stored form the framer must produce.
    pub(super) fn stored(&self) -> Vec<u8> {
        let (pseudo, regular): (Vec<_>, Vec<_>) = borrowed(&self.fields)
            .into_iter()
            .partition(|(n, _)| n.starts_with(b":"));
        let trailers = self.trailers.as_ref().map(borrowed);
        render_stored(&pseudo, &regular, &self.body, trailers.as_deref()).expect("valid message")
    }

    /// Asserts that `emitted` is exactly this message, complete.
    pub(super) fn assert_matches(&self, emitted: &FramedMessage) {
        assert_eq!(
            String::from_utf8_lossy(&emitted.bytes),
            String::from_utf8_lossy(&self.stored())
        );
        assert_eq!(emitted.body_len, self.body.len() as u64);
        assert!(emitted.complete && emitted.ended, "{emitted:?}");
        parse_stored(&emitted.bytes, emitted.body_len).expect("parses");
    }
}

/// What a framer produced from a whole run.
pub(super) struct Run {
    pub framer: H2Framer,
    pub messages: Vec<FramedMessage>,
    pub stats: H2Stats,
    pub ids: IdAllocator,
}

impl Run {
    pub(super) fn new(start: H2Start, config: H2Config) -> Self {
        Self {
            framer: H2Framer::new(config, start),
            messages: Vec::new(),
            stats: H2Stats::default(),
            ids: IdAllocator::default(),
        }
    }

    /// Feeds each event as one `data` call, with its index as the time.
    pub(super) fn feed(&mut self, events: &[(FlowDir, Vec<u8>)]) {
        for (dir, bytes) in events {
            self.feed_one(*dir, bytes);
        }
    }

    pub(super) fn feed_one(&mut self, dir: FlowDir, bytes: &[u8]) {
        let ts = Timestamp(self.now());
        let bytes = Bytes::copy_from_slice(bytes);
        self.framer.data(
            dir,
            ts,
            bytes,
            &mut self.ids,
            &mut self.stats,
            &mut self.messages,
        );
    }

    pub(super) fn gap(&mut self, dir: FlowDir) {
        let ts = Timestamp(self.now());
        self.framer
            .gap(dir, ts, &mut self.stats, &mut self.messages);
    }

    pub(super) fn close(&mut self) {
        let ts = Timestamp(self.now());
        self.framer
            .close(ts, &mut self.ids, &mut self.stats, &mut self.messages);
    }

    fn now(&self) -> u64 {
        self.messages.len() as u64 * 1000 + self.stats.resync_skipped_bytes + 1
    }

    /// Runs a whole conversation and closes.
    pub(super) fn whole(start: H2Start, config: H2Config, events: &[(FlowDir, Vec<u8>)]) -> Self {
        let mut run = Self::new(start, config);
        run.feed(events);
        run.close();
        run
    }

    pub(super) fn by_dir(&self, dir: FlowDir) -> Vec<&FramedMessage> {
        self.messages.iter().filter(|m| m.dir == dir).collect()
    }
}

/// A tiny deterministic generator for segmentation choices.
pub(super) struct SplitRng(u64);

impl SplitRng {
    pub(super) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Cuts frames into pieces and interleaves the directions in a causally valid order:
/// a frame is completed only after every earlier frame of the other direction, but its
/// first pieces may go out earlier (after the previous frame of its own direction).
/// Adjacent pieces of one direction are then merged at random.
pub(super) fn segment(
    events: &[(FlowDir, Vec<u8>)],
    rng: &mut SplitRng,
) -> Vec<(FlowDir, Vec<u8>)> {
    let mut out: Vec<(FlowDir, Vec<u8>)> = Vec::new();
    let mut last_pos: [Option<usize>; 2] = [None, None];
    for (dir, bytes) in events {
        let d = *dir as usize;
        let cuts = rng.below(3);
        let mut pieces = Vec::new();
        let mut rest = bytes.as_slice();
        for _ in 0..cuts {
            // The final piece keeps at least one byte: it is what completes the frame.
            let at = rng.below(rest.len());
            let (piece, after) = rest.split_at(at);
            pieces.push(piece.to_vec());
            rest = after;
        }
        let earliest = last_pos[d].map_or(0, |p| p + 1);
        let mut position = earliest;
        for piece in pieces {
            position += rng.below(out.len() + 1 - position);
            out.insert(position, (*dir, piece));
            if let Some(other) = last_pos[1 - d].as_mut().filter(|p| **p >= position) {
                *other += 1;
            }
            position += 1;
        }
        out.push((*dir, rest.to_vec()));
        last_pos[d] = Some(out.len() - 1);
    }
    let mut merged: Vec<(FlowDir, Vec<u8>)> = Vec::new();
    for (dir, piece) in out {
        match merged.last_mut() {
            Some((last_dir, last)) if *last_dir == dir && rng.below(2) == 0 => last.extend(piece),
            _ => merged.push((dir, piece)),
        }
    }
    merged
}

/// Checks that `pieces` deliver the events' bytes in order per direction and complete
/// the events in their original order.
pub(super) fn assert_causal(events: &[(FlowDir, Vec<u8>)], pieces: &[(FlowDir, Vec<u8>)]) {
    let mut ends = [Vec::new(), Vec::new()];
    let mut totals = [0usize; 2];
    for (dir, bytes) in events {
        totals[*dir as usize] += bytes.len();
        ends[*dir as usize].push(totals[*dir as usize]);
    }
    let mut delivered = [0usize; 2];
    let mut completion = Vec::new();
    for (index, (dir, bytes)) in pieces.iter().enumerate() {
        delivered[*dir as usize] += bytes.len();
        completion.push((index, delivered));
    }
    let mut last = 0;
    let mut seen = [0usize; 2];
    for (dir, _) in events {
        let d = *dir as usize;
        let end = ends[d][seen[d]];
        seen[d] += 1;
        let at = completion.iter().find(|(_, del)| del[d] >= end).unwrap().0;
        assert!(at >= last, "event completes out of order");
        last = at;
    }
}
