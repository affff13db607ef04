//! Header blocks: HEADERS / PUSH_PROMISE and their CONTINUATION frames, decoded with
//! the direction's HPACK context and applied to the stream they belong to.

use bytes::Buf;

use super::super::H2Stats;
use super::super::frame::{self, Frame, flag};
use super::super::hpack::{BlockOutcome, HeaderField};
use super::super::stream::{self, HeadError, Side, Stream};
use super::{H2Framer, Sink};
use crate::packet::Timestamp;
use crate::reassembly::FlowDir;

/// Bytes of a PUSH_PROMISE payload before its header block (promised stream id).
const PROMISED_ID_LEN: usize = 4;
/// Bytes of the HEADERS priority fields (PRIORITY flag).
const PRIORITY_FIELDS_LEN: usize = 5;

/// What a header block is for.
#[derive(Clone, Copy, Debug)]
pub(super) enum BlockPurpose {
    Headers {
        end_stream: bool,
    },
    /// Decoded only to keep HPACK in sync: pushed streams are not emitted.
    PushPromise,
}

/// A header block being collected from HEADERS / PUSH_PROMISE and CONTINUATION frames.
pub(super) struct PendingBlock {
    pub(super) stream_id: u32,
    purpose: BlockPurpose,
    /// Time of the block's first frame.
    ts: Timestamp,
    fragment: Vec<u8>,
    /// Over `max_header_list_bytes`: the fragment is no longer kept.
    too_large: bool,
}

impl PendingBlock {
    fn append(&mut self, bytes: &[u8], limit: usize) {
        if self.too_large {
            return;
        }
        if self.fragment.len().saturating_add(bytes.len()) > limit {
            self.too_large = true;
            self.fragment = Vec::new();
        } else {
            self.fragment.extend_from_slice(bytes);
        }
    }
}

/// A decoded HEADERS block and where it belongs.
pub(super) struct DecodedBlock {
    stream_id: u32,
    end_stream: bool,
    first_ts: Timestamp,
    last_ts: Timestamp,
    outcome: BlockOutcome,
}

impl H2Framer {
    pub(super) fn on_headers(&mut self, dir: FlowDir, frame: &Frame, sink: &mut Sink<'_>) {
        let skip = if frame.has_flag(flag::PRIORITY) {
            PRIORITY_FIELDS_LEN
        } else {
            0
        };
        let Some(mut fragment) = frame::strip_padding(frame).filter(|f| f.len() >= skip) else {
            self.on_bad_block_frame(dir, sink.stats);
            return;
        };
        fragment.advance(skip);
        let purpose = BlockPurpose::Headers {
            end_stream: frame.has_flag(flag::END_STREAM),
        };
        self.start_block(dir, frame, purpose, &fragment, sink);
    }

    pub(super) fn on_push_promise(&mut self, dir: FlowDir, frame: &Frame, sink: &mut Sink<'_>) {
        let Some(mut fragment) = frame::strip_padding(frame).filter(|f| f.len() >= PROMISED_ID_LEN)
        else {
            self.on_bad_block_frame(dir, sink.stats);
            return;
        };
        fragment.advance(PROMISED_ID_LEN);
        self.start_block(dir, frame, BlockPurpose::PushPromise, &fragment, sink);
    }

    /// A HEADERS or PUSH_PROMISE frame we cannot read: its block is lost, and with it
    /// whatever it did to the table.
    fn on_bad_block_frame(&mut self, dir: FlowDir, stats: &mut H2Stats) {
        stats.bad_frames += 1;
        self.direction_mut(dir).hpack.lose();
    }

    fn start_block(
        &mut self,
        dir: FlowDir,
        frame: &Frame,
        purpose: BlockPurpose,
        fragment: &[u8],
        sink: &mut Sink<'_>,
    ) {
        let mut block = PendingBlock {
            stream_id: frame.header.stream_id,
            purpose,
            ts: frame.ts,
            fragment: Vec::new(),
            too_large: false,
        };
        block.append(fragment, self.config.max_header_list_bytes);
        if frame.has_flag(flag::END_HEADERS) {
            self.finish_block(dir, block, frame.ts, sink);
        } else {
            self.direction_mut(dir).pending = Some(block);
        }
    }

    pub(super) fn on_continuation(&mut self, dir: FlowDir, frame: &Frame, sink: &mut Sink<'_>) {
        let Some(mut block) = self.direction_mut(dir).pending.take() else {
            self.on_orphan_continuation(dir, frame, sink.stats);
            return;
        };
        block.append(&frame.payload, self.config.max_header_list_bytes);
        if frame.has_flag(flag::END_HEADERS) {
            self.finish_block(dir, block, frame.ts, sink);
        } else {
            self.direction_mut(dir).pending = Some(block);
        }
    }

    /// A CONTINUATION whose block start we missed: the part we missed came before any
    /// block we will decode, so forgetting the table keeps it exact.
    fn on_orphan_continuation(&mut self, dir: FlowDir, frame: &Frame, stats: &mut H2Stats) {
        let id = frame.header.stream_id;
        let direction = self.direction_mut(dir);
        direction.hpack.forget();
        let resynced = direction.resynced;
        match self.streams.get_mut(id).map(|stream| stream.side_mut(dir)) {
            Some(Side::Skipped) => {}
            Some(Side::Idle) | None if resynced => {
                self.on_missed_start(dir, id, false, stats);
            }
            _ => stats.bad_frames += 1,
        }
    }

    fn finish_block(
        &mut self,
        dir: FlowDir,
        block: PendingBlock,
        last_ts: Timestamp,
        sink: &mut Sink<'_>,
    ) {
        let limit = self.config.max_header_list_bytes;
        let hpack = &mut self.direction_mut(dir).hpack;
        let outcome = if block.too_large {
            // Never decoded, so its table changes are unknown.
            hpack.lose();
            BlockOutcome::TooLarge
        } else {
            hpack.decode_block(&block.fragment, limit)
        };
        match outcome {
            BlockOutcome::Fields(_) => {}
            BlockOutcome::TooLarge => sink.stats.header_list_too_large += 1,
            BlockOutcome::Undecodable | BlockOutcome::Failed => {
                sink.stats.undecodable_header_blocks += 1;
            }
        }
        match block.purpose {
            BlockPurpose::PushPromise => sink.stats.pushed_streams_ignored += 1,
            BlockPurpose::Headers { end_stream } => {
                let decoded = DecodedBlock {
                    stream_id: block.stream_id,
                    end_stream,
                    first_ts: block.ts,
                    last_ts,
                    outcome,
                };
                self.on_header_block(dir, decoded, sink);
            }
        }
    }

    fn on_header_block(&mut self, dir: FlowDir, block: DecodedBlock, sink: &mut Sink<'_>) {
        let id = block.stream_id;
        if id == 0 || (id.is_multiple_of(2) && dir == FlowDir::ToServer) {
            sink.stats.bad_frames += 1;
            return;
        }
        if id.is_multiple_of(2) {
            return; // the response of a pushed stream
        }
        let resynced = self.direction(dir).resynced;
        let Some(stream) = self.streams.get_or_create(id) else {
            sink.stats.too_many_streams += 1;
            return;
        };
        match &block.outcome {
            BlockOutcome::Fields(fields) => {
                apply_fields(stream, dir, fields, &block, resynced, sink)
            }
            BlockOutcome::TooLarge | BlockOutcome::Undecodable | BlockOutcome::Failed => {
                let side = stream.side_mut(dir);
                let message_lost = matches!(side, Side::Idle | Side::Open(_));
                if message_lost && block.outcome != BlockOutcome::TooLarge {
                    sink.stats.undecodable_messages += 1;
                }
                if message_lost {
                    *side = Side::Skipped;
                }
            }
        }
        if block.end_stream {
            self.end_side(dir, id, block.last_ts, sink);
        }
        self.streams.forget_if_finished(id);
    }
}

/// Applies decoded fields to a stream side: a message head, trailers, or nothing.
fn apply_fields(
    stream: &mut Stream,
    dir: FlowDir,
    fields: &[HeaderField],
    block: &DecodedBlock,
    resynced: bool,
    sink: &mut Sink<'_>,
) {
    let next = match std::mem::take(stream.side_mut(dir)) {
        Side::Idle => start_message(stream, dir, fields, block.first_ts, resynced, sink),
        Side::Open(mut message) => match stream::checked_trailers(fields) {
            Ok(trailers) => {
                message.append_trailers(&trailers);
                Side::Open(message)
            }
            Err(_) => {
                sink.stats.malformed_headers += 1;
                Side::Skipped
            }
        },
        Side::Skipped => Side::Skipped,
        Side::Done => {
            sink.stats.bad_frames += 1;
            Side::Done
        }
    };
    *stream.side_mut(dir) = next;
}

/// The side's first (non-interim) header block: the message starts here.
fn start_message(
    stream: &mut Stream,
    dir: FlowDir,
    fields: &[HeaderField],
    first_ts: Timestamp,
    resynced: bool,
    sink: &mut Sink<'_>,
) -> Side {
    match stream::message_head(dir, fields) {
        Ok(head) if head.is_interim() => {
            sink.stats.interim_responses += 1;
            Side::Idle
        }
        Ok(head) => {
            let id = sink.ids.next();
            let request_id = match dir {
                FlowDir::ToServer => {
                    stream.request_id = Some(id);
                    None
                }
                FlowDir::ToClient => stream.request_id,
            };
            Side::Open(Box::new(head.into_builder(id, request_id, first_ts)))
        }
        Err(HeadError::NoPseudo) if resynced => {
            // Trailers of a stream whose start we missed.
            sink.stats.midstream_streams_skipped += 1;
            Side::Skipped
        }
        Err(_) => {
            sink.stats.malformed_headers += 1;
            Side::Skipped
        }
    }
}
