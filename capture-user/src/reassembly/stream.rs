//! One direction of a connection in sequence space: the next byte to deliver, the segments
//! held ahead of a hole, and the FIN. A segment goes in by steps: trim what was delivered
//! already (retransmission, overlap), deliver what continues the stream, hold what lies
//! ahead of a hole (within the caps), then deliver the held segments the stream reached. A
//! hole given up on becomes a gap.

use bytes::{Buf, Bytes};

use super::{FlowDir, ReassemblyConfig, ReassemblyStats, StreamEvent};
use crate::decode::TcpSegment;
use crate::packet::Timestamp;

/// A segment held until the bytes before it arrive.
struct Held {
    seq: u32,
    ts: Timestamp,
    bytes: Bytes,
}

/// One direction of a connection.
#[derive(Default)]
pub(super) struct HalfStream {
    /// Sequence number of the next byte to deliver; `None` until known.
    next_seq: Option<u32>,
    /// Out-of-order segments, unsorted (few at a time).
    held: Vec<Held>,
    held_bytes: usize,
    /// Sequence number just after the FIN, once a FIN was seen.
    fin_seq: Option<u32>,
    /// All bytes up to the FIN were delivered.
    pub(super) finished: bool,
}

/// Where the events and counts of one direction go: the connection and direction its events
/// name, the counters, and the bytes held over all connections. Lets the steps borrow these
/// while the reassembler's connection table is borrowed for the half-stream.
pub(super) struct Sink<'a> {
    pub(super) conn: u64,
    pub(super) dir: FlowDir,
    pub(super) stats: &'a mut ReassemblyStats,
    pub(super) held_total: &'a mut usize,
    pub(super) out: &'a mut Vec<StreamEvent>,
}

/// Signed distance from `b` to `a` in sequence space (RFC 1982 style).
fn seq_diff(a: u32, b: u32) -> i64 {
    i64::from(a.wrapping_sub(b) as i32)
}

/// Trims what a payload starting at `seq` repeats of the bytes delivered before `next` (a
/// retransmission or an overlap). Returns where the new bytes start and the bytes, or `None`
/// when there are none.
fn trim_delivered(
    seq: u32,
    next: u32,
    mut payload: Bytes,
    stats: &mut ReassemblyStats,
) -> Option<(u32, Bytes)> {
    if payload.is_empty() {
        return None;
    }
    let offset = seq_diff(seq, next);
    if offset >= 0 {
        return Some((seq, payload));
    }
    // Starts before what we have delivered: a retransmission or an overlap.
    let already = (-offset) as usize;
    if already >= payload.len() {
        stats.duplicate_segments += 1;
        return None;
    }
    stats.overlapping_bytes += already as u64;
    payload.advance(already);
    Some((next, payload))
}

impl HalfStream {
    /// Takes in one segment of this direction (not a RST): its new bytes are delivered or
    /// held, held bytes it makes contiguous are delivered, and reaching the FIN is noted.
    pub(super) fn push(
        &mut self,
        ts: Timestamp,
        seg: TcpSegment,
        config: &ReassemblyConfig,
        sink: &mut Sink<'_>,
    ) {
        let (seq, next) = self.segment_start(&seg);
        if let Some((seq, payload)) = trim_delivered(seq, next, seg.payload, sink.stats) {
            if seq == next {
                self.deliver(seq, ts, payload, sink);
            } else {
                self.hold(seq, ts, payload, config, sink);
            }
        }
        self.drain_held(sink);
        self.check_fin();
    }

    /// Where the segment's data starts (a SYN takes the sequence number before it) and the
    /// next byte to deliver (the first segment seen in this direction sets it). A FIN is
    /// noted where it lies.
    fn segment_start(&mut self, seg: &TcpSegment) -> (u32, u32) {
        let seq = if seg.flags.syn() {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        let next = *self.next_seq.get_or_insert(seq);
        if seg.flags.fin() {
            self.fin_seq = Some(seq.wrapping_add(seg.payload.len() as u32).wrapping_add(1));
        }
        (seq, next)
    }

    /// Bytes that continue the stream at `seq`: delivered at once.
    fn deliver(&mut self, seq: u32, ts: Timestamp, bytes: Bytes, sink: &mut Sink<'_>) {
        self.next_seq = Some(seq.wrapping_add(bytes.len() as u32));
        sink.out.push(StreamEvent::Data {
            conn: sink.conn,
            dir: sink.dir,
            ts,
            bytes,
        });
    }

    /// Bytes ahead of a hole: held until the hole fills (unless the same bytes are held
    /// already). Past the cap of this direction or of all connections, the hole is given up.
    fn hold(
        &mut self,
        seq: u32,
        ts: Timestamp,
        bytes: Bytes,
        config: &ReassemblyConfig,
        sink: &mut Sink<'_>,
    ) {
        sink.stats.out_of_order_segments += 1;
        let duplicate = self
            .held
            .iter()
            .any(|h| h.seq == seq && h.bytes.len() >= bytes.len());
        if duplicate {
            sink.stats.duplicate_segments += 1;
        } else {
            self.held_bytes += bytes.len();
            *sink.held_total += bytes.len();
            self.held.push(Held { seq, ts, bytes });
        }
        if self.held_bytes > config.max_buffered_per_direction {
            sink.stats.buffer_cap_hits += 1;
            self.skip_hole(ts, sink);
        } else if *sink.held_total > config.max_buffered_total {
            sink.stats.total_buffer_cap_hits += 1;
            self.skip_hole(ts, sink);
        }
    }

    /// Delivers held segments that became contiguous.
    fn drain_held(&mut self, sink: &mut Sink<'_>) {
        let Some(mut next) = self.next_seq else {
            return;
        };
        // Any held segment that starts at or before `next` continues the stream.
        while let Some(pos) = self.held.iter().position(|h| seq_diff(h.seq, next) <= 0) {
            let held = self.held.swap_remove(pos);
            self.held_bytes -= held.bytes.len();
            *sink.held_total -= held.bytes.len();
            let already = (-seq_diff(held.seq, next)) as usize;
            if already >= held.bytes.len() {
                sink.stats.duplicate_segments += 1;
                continue;
            }
            sink.stats.overlapping_bytes += already as u64;
            let bytes = held.bytes.slice(already..);
            next = next.wrapping_add(bytes.len() as u32);
            sink.out.push(StreamEvent::Data {
                conn: sink.conn,
                dir: sink.dir,
                ts: held.ts,
                bytes,
            });
        }
        self.next_seq = Some(next);
    }

    /// Gives up on the hole before the earliest held segment: reports a gap and jumps there.
    fn skip_hole(&mut self, ts: Timestamp, sink: &mut Sink<'_>) {
        let Some(next) = self.next_seq else {
            return;
        };
        let Some(earliest) = self
            .held
            .iter()
            .map(|h| h.seq)
            .min_by_key(|&s| seq_diff(s, next))
        else {
            return;
        };
        let missing = seq_diff(earliest, next).max(0) as u64;
        sink.stats.gaps += 1;
        sink.stats.gap_bytes += missing;
        sink.out.push(StreamEvent::Gap {
            conn: sink.conn,
            dir: sink.dir,
            ts,
            missing,
        });
        self.next_seq = Some(earliest);
        self.drain_held(sink);
    }

    /// The connection ends: every hole left becomes a gap, and what was held after it is
    /// delivered.
    pub(super) fn skip_all_holes(&mut self, ts: Timestamp, sink: &mut Sink<'_>) {
        while !self.held.is_empty() {
            self.skip_hole(ts, sink);
        }
    }

    /// Marks the direction finished once every byte up to its FIN was delivered.
    fn check_fin(&mut self) {
        if let (Some(fin), Some(next)) = (self.fin_seq, self.next_seq) {
            // The FIN itself takes one sequence number after the last data byte.
            if seq_diff(next.wrapping_add(1), fin) >= 0 && self.held.is_empty() {
                self.finished = true;
            }
        }
    }
}
