//! The connection state machine: dispatches frames, assembles header blocks, decodes
//! them with the right HPACK context and drives the per-stream messages.

mod headers;

use bytes::Bytes;

use super::frame::{
    self, DEFAULT_MAX_FRAME_SIZE, Frame, FrameReader, MAX_FRAME_SIZE_CAP, ReadEvent, flag, kind,
};
use super::hpack::HpackDecoder;
use super::stream::{Side, Stream, StreamTable};
use super::{H2Config, H2Start, H2Stats};
use crate::http::FramedMessage;
use crate::http::IdAllocator;
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;
use headers::PendingBlock;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
/// Largest SETTINGS_MAX_FRAME_SIZE value the protocol allows.
const MAX_FRAME_SIZE_LIMIT: u32 = (1 << 24) - 1;

/// One direction of the connection.
struct Direction {
    reader: FrameReader,
    hpack: HpackDecoder,
    pending: Option<PendingBlock>,
    /// Frame boundaries had to be searched for: streams whose start we missed are expected.
    resynced: bool,
}

impl Direction {
    fn new(reader: FrameReader, hpack: HpackDecoder, resynced: bool) -> Self {
        Self {
            reader,
            hpack,
            pending: None,
            resynced,
        }
    }
}

/// Where ids come from and where messages and counters go while handling frames.
struct Sink<'a> {
    ids: &'a mut IdAllocator,
    stats: &'a mut H2Stats,
    out: &'a mut Vec<FramedMessage>,
}

/// Turns the two byte streams of one h2c connection into request and response
/// messages, without any IO.
pub struct H2Framer {
    config: H2Config,
    /// Indexed by `FlowDir as usize`.
    directions: [Direction; 2],
    streams: StreamTable,
    /// Largest frame accepted: max(16384, largest SETTINGS_MAX_FRAME_SIZE seen), capped.
    max_frame_size: u32,
    /// At least the bytes the open messages hold (counted as bodies grow, made exact again
    /// whenever it passes `max_connection_bytes`, so the sum is rarely taken).
    held_estimate: usize,
}

impl H2Framer {
    /// A framer for one connection, starting as `start` says.
    pub fn new(config: H2Config, start: H2Start) -> Self {
        let [client, server] = match start {
            H2Start::Preface | H2Start::Upgraded { .. } => [
                Direction::new(
                    FrameReader::expecting_preface(),
                    HpackDecoder::new_known(),
                    false,
                ),
                Direction::new(FrameReader::aligned(), HpackDecoder::new_known(), false),
            ],
            H2Start::Midstream => [
                Direction::new(FrameReader::searching(), HpackDecoder::new_unknown(), true),
                Direction::new(FrameReader::searching(), HpackDecoder::new_unknown(), true),
            ],
        };
        let mut streams = StreamTable::new(config.max_streams);
        if let H2Start::Upgraded { request_id } = start {
            let upgraded = Stream {
                request: Side::Done,
                response: Side::Idle,
                request_id: Some(request_id),
            };
            streams.insert(1, upgraded);
        }
        Self {
            config,
            directions: [client, server],
            streams,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            held_estimate: 0,
        }
    }

    /// In-order bytes of one direction (any segmentation: a frame may be split anywhere,
    /// many frames may come at once).
    pub fn data(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        bytes: Bytes,
        ids: &mut IdAllocator,
        stats: &mut H2Stats,
        out: &mut Vec<FramedMessage>,
    ) {
        let mut sink = Sink { ids, stats, out };
        self.direction_mut(dir).reader.push(ts, &bytes);
        self.read_frames(dir, ts, false, &mut sink);
    }

    /// Handles every whole frame buffered in `dir`.
    fn read_frames(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        no_more_bytes: bool,
        sink: &mut Sink<'_>,
    ) {
        loop {
            let max_frame_size = self.max_frame_size;
            let reader = &mut self.direction_mut(dir).reader;
            match reader.next_event(max_frame_size, no_more_bytes, sink.stats) {
                ReadEvent::NeedMore => break,
                ReadEvent::Desynced => self.desync(dir, ts, sink.stats, sink.out),
                ReadEvent::Frame(frame) => self.on_frame(dir, &frame, sink),
            }
        }
    }

    /// Bytes of one direction were lost (a hole of unknown size).
    pub fn gap(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        stats: &mut H2Stats,
        out: &mut Vec<FramedMessage>,
    ) {
        self.direction_mut(dir).reader.lose_sync();
        self.desync(dir, ts, stats, out);
    }

    /// The connection ended: every message still open is emitted incomplete.
    pub fn close(
        &mut self,
        ts: Timestamp,
        ids: &mut IdAllocator,
        stats: &mut H2Stats,
        out: &mut Vec<FramedMessage>,
    ) {
        let mut sink = Sink { ids, stats, out };
        for dir in [FlowDir::ToServer, FlowDir::ToClient] {
            // A resync search may have been waiting for bytes that will not come.
            self.read_frames(dir, ts, true, &mut sink);
            self.direction_mut(dir).pending = None;
        }
        self.streams.close(ts, sink.stats, sink.out);
    }

    /// Streams currently tracked (for tests and memory checks).
    pub(crate) fn tracked_streams(&self) -> usize {
        self.streams.len()
    }

    /// How much of `dir`'s HPACK table is known (for tests).
    #[cfg(test)]
    pub(crate) fn hpack_knowledge(&self, dir: FlowDir) -> super::hpack::Knowledge {
        self.direction(dir).hpack.knowledge()
    }

    /// Bytes buffered in `dir`'s frame reader (for tests and memory checks).
    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self, dir: FlowDir) -> usize {
        self.direction(dir).reader.buffered()
    }

    fn direction(&self, dir: FlowDir) -> &Direction {
        &self.directions[dir as usize]
    }

    fn direction_mut(&mut self, dir: FlowDir) -> &mut Direction {
        &mut self.directions[dir as usize]
    }

    /// Frame alignment and HPACK state of `dir` are unknown from here on: cut what was
    /// in progress in that direction.
    fn desync(
        &mut self,
        dir: FlowDir,
        ts: Timestamp,
        stats: &mut H2Stats,
        out: &mut Vec<FramedMessage>,
    ) {
        let direction = self.direction_mut(dir);
        direction.pending = None;
        direction.hpack.forget();
        direction.resynced = true;
        self.streams.abort_direction(dir, ts, stats, out);
    }

    fn on_frame(&mut self, dir: FlowDir, frame: &Frame, sink: &mut Sink<'_>) {
        let header = frame.header;
        let direction = self.direction_mut(dir);
        let interrupts_block = direction.pending.as_ref().is_some_and(|pending| {
            header.kind != kind::CONTINUATION || header.stream_id != pending.stream_id
        });
        if interrupts_block {
            // The unfinished block may have changed the table in unknown ways.
            sink.stats.bad_frames += 1;
            direction.pending = None;
            direction.hpack.lose();
        }
        match header.kind {
            kind::DATA => self.on_data(dir, frame, sink),
            kind::HEADERS => self.on_headers(dir, frame, sink),
            kind::CONTINUATION => self.on_continuation(dir, frame, sink),
            kind::PUSH_PROMISE => self.on_push_promise(dir, frame, sink),
            kind::RST_STREAM => self.on_reset(frame, sink),
            kind::SETTINGS => self.on_settings(dir, frame, sink.stats),
            // PRIORITY, PING, GOAWAY, WINDOW_UPDATE and unknown types carry nothing we keep.
            _ => {}
        }
    }

    fn on_data(&mut self, dir: FlowDir, frame: &Frame, sink: &mut Sink<'_>) {
        let id = frame.header.stream_id;
        let end_stream = frame.has_flag(flag::END_STREAM);
        let payload = frame::strip_padding(frame);
        if id == 0 || payload.is_none() {
            sink.stats.bad_frames += 1;
        }
        if id == 0 {
            return;
        }
        let max_message_bytes = self.config.max_message_bytes;
        let connection_room = self.connection_room();
        match self.streams.get_mut(id).map(|stream| stream.side_mut(dir)) {
            Some(Side::Open(message)) => match payload {
                Some(data) => {
                    let kept =
                        message.append_body(&data, max_message_bytes, connection_room, sink.stats);
                    self.held_estimate += kept;
                }
                None => message.mark_damaged(),
            },
            Some(Side::Skipped) => {}
            Some(Side::Done) => sink.stats.bad_frames += 1,
            Some(Side::Idle) | None => {
                self.on_missed_start(dir, id, end_stream, sink.stats);
                return;
            }
        }
        if end_stream {
            self.end_side(dir, id, frame.ts, sink);
        }
    }

    /// How many more body bytes the connection's open messages may hold.
    fn connection_room(&mut self) -> usize {
        let max = self.config.max_connection_bytes;
        if self.held_estimate >= max {
            self.held_estimate = self.streams.held_bytes();
        }
        max.saturating_sub(self.held_estimate)
    }

    /// DATA or CONTINUATION of a stream side whose HEADERS we did not see.
    fn on_missed_start(&mut self, dir: FlowDir, id: u32, end_stream: bool, stats: &mut H2Stats) {
        if id.is_multiple_of(2) {
            return; // server-initiated: a pushed stream, ignored
        }
        if !self.direction(dir).resynced {
            // Untracked (too many streams) or already reset: nothing to learn.
            return;
        }
        stats.midstream_streams_skipped += 1;
        if let Some(stream) = self.streams.get_or_create(id) {
            *stream.side_mut(dir) = if end_stream {
                Side::Done
            } else {
                Side::Skipped
            };
        }
        self.streams.forget_if_finished(id);
    }

    /// END_STREAM in `dir`: the message (if any) is complete.
    fn end_side(&mut self, dir: FlowDir, id: u32, ts: Timestamp, sink: &mut Sink<'_>) {
        let Some(stream) = self.streams.get_mut(id) else {
            return;
        };
        if let Side::Open(message) = std::mem::replace(stream.side_mut(dir), Side::Done) {
            sink.out.push(message.finish(dir, ts, true, sink.stats));
        }
        self.streams.forget_if_finished(id);
    }

    fn on_reset(&mut self, frame: &Frame, sink: &mut Sink<'_>) {
        let id = frame.header.stream_id;
        if id == 0 || frame.payload.len() != 4 {
            sink.stats.bad_frames += 1;
            return;
        }
        sink.stats.streams_reset += 1;
        self.streams.reset(id, frame.ts, sink.stats, sink.out);
    }

    fn on_settings(&mut self, dir: FlowDir, frame: &Frame, stats: &mut H2Stats) {
        let payload = &frame.payload;
        let ack = frame.has_flag(flag::ACK);
        if frame.header.stream_id != 0
            || !payload.len().is_multiple_of(6)
            || (ack && !payload.is_empty())
        {
            stats.bad_frames += 1;
            return;
        }
        for entry in payload.chunks_exact(6) {
            let Ok([i0, i1, v0, v1, v2, v3]) = <[u8; 6]>::try_from(entry) else {
                continue;
            };
            let value = u32::from_be_bytes([v0, v1, v2, v3]);
            match u16::from_be_bytes([i0, i1]) {
                // The sender's decoder limit applies to the other direction's encoder.
                SETTINGS_HEADER_TABLE_SIZE => {
                    let limit = usize::try_from(value).unwrap_or(usize::MAX);
                    self.direction_mut(opposite(dir))
                        .hpack
                        .set_settings_limit(limit);
                }
                SETTINGS_MAX_FRAME_SIZE
                    if (DEFAULT_MAX_FRAME_SIZE..=MAX_FRAME_SIZE_LIMIT).contains(&value) =>
                {
                    self.max_frame_size = self.max_frame_size.max(value.min(MAX_FRAME_SIZE_CAP));
                }
                _ => {}
            }
        }
    }
}

fn opposite(dir: FlowDir) -> FlowDir {
    match dir {
        FlowDir::ToServer => FlowDir::ToClient,
        FlowDir::ToClient => FlowDir::ToServer,
    }
}
