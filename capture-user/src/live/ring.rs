//! Turns ring buffer records back into packets.
//!
//! [`ChunkAssembler`] is the sans-IO core: fed raw records, it joins the chunks of each packet
//! (per CPU, in order), converts the kernel's monotonic timestamp to wall-clock time, and
//! discards packets whose chunks do not line up, counting them. The thread that drains the
//! ring into it is [`super::reader`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf as _, Bytes, BytesMut};
use capture_common::{
    CHUNK_HEADER_LEN, CHUNK_LEN, ChunkHeader, Direction, FLAG_INNER_RAW_IP, FLAG_LAST_CHUNK,
    MAX_PACKET_LEN,
};

use crate::decode::LinkType;
use crate::packet::{CapturedPacket, PacketArena, Timestamp};

/// Offset between the kernel's monotonic clock (what `bpf_ktime_get_ns` reads) and the
/// wall clock, sampled once at start so each record converts with one addition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// `realtime_ns - monotonic_ns`, as a signed value.
    pub realtime_minus_monotonic_ns: i128,
}

impl ClockOffset {
    /// Samples both clocks now.
    pub fn now() -> Self {
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        Self {
            realtime_minus_monotonic_ns: realtime - monotonic,
        }
    }

    /// Converts a monotonic timestamp to nanoseconds since the Unix epoch.
    pub fn to_wall(self, monotonic_ns: u64) -> Timestamp {
        let wall = i128::from(monotonic_ns) + self.realtime_minus_monotonic_ns;
        Timestamp(wall.clamp(0, i128::from(u64::MAX)) as u64)
    }
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clock ids exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Counters of the userspace side of the ring, named as in summaries and metrics.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Ring records read.
    pub records: AtomicU64,
    /// Packets rebuilt and handed on.
    pub packets: AtomicU64,
    /// Bytes of packet data handed on.
    pub bytes: AtomicU64,
    /// Packets discarded because some of their chunks were missing (the kernel counted the
    /// lost chunk as `dropped_ring_full`).
    pub discarded_incomplete: AtomicU64,
    /// Records that were too short or inconsistent to be a chunk (should stay 0).
    pub bad_records: AtomicU64,
    /// Batches handed to the consumer.
    pub batches: AtomicU64,
    /// Packets and bytes handed on per interface index (published with each batch).
    pub per_interface: std::sync::Mutex<std::collections::BTreeMap<u32, (u64, u64)>>,
}

/// A point-in-time copy of [`RingStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStatsSnapshot {
    pub records: u64,
    pub packets: u64,
    pub bytes: u64,
    pub discarded_incomplete: u64,
    pub bad_records: u64,
    pub batches: u64,
}

impl RingStats {
    /// Packets and bytes per interface index so far.
    pub fn per_interface(&self) -> Vec<(u32, u64, u64)> {
        crate::sync::lock(&self.per_interface)
            .iter()
            .map(|(&index, &(packets, bytes))| (index, packets, bytes))
            .collect()
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> RingStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RingStatsSnapshot {
            records: get(&self.records),
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            discarded_incomplete: get(&self.discarded_incomplete),
            bad_records: get(&self.bad_records),
            batches: get(&self.batches),
        }
    }
}

impl RingStatsSnapshot {
    /// `name=value` pairs, the same names as the metrics.
    pub fn pairs(&self) -> [(&'static str, u64); 5] {
        [
            ("ring_records", self.records),
            ("ring_packets", self.packets),
            ("ring_bytes", self.bytes),
            ("discarded_incomplete", self.discarded_incomplete),
            ("bad_records", self.bad_records),
        ]
    }
}

/// What the assembler made of one record.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled {
    /// A whole packet.
    Packet(CapturedPacket),
    /// A chunk of a packet still being joined.
    Pending,
    /// The record was not a valid chunk.
    BadRecord,
}

/// A packet whose chunks are still arriving.
struct PartialPacket {
    header: ChunkHeader,
    data: BytesMut,
}

/// Joins ring records into packets. Sans-IO: fed byte slices, returns packets.
pub struct ChunkAssembler {
    clock: ClockOffset,
    /// At most one packet in flight per CPU: a CPU writes a packet's chunks back to back.
    partial: HashMap<u32, PartialPacket, foldhash::fast::RandomState>,
    /// Single-chunk packets are copied here.
    arena: PacketArena,
    discarded_incomplete: u64,
}

impl ChunkAssembler {
    /// A fresh assembler converting timestamps with `clock`.
    pub fn new(clock: ClockOffset) -> Self {
        Self {
            clock,
            partial: HashMap::default(),
            arena: PacketArena::default(),
            discarded_incomplete: 0,
        }
    }

    /// Packets discarded so far because chunks were missing.
    pub fn discarded_incomplete(&self) -> u64 {
        self.discarded_incomplete
    }

    /// Packets still waiting for chunks; at the end of a capture these count as discarded.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Gives up on packets still waiting for chunks (end of capture), counting them.
    pub fn finish(&mut self) -> u64 {
        let n = self.partial.len() as u64;
        self.partial.clear();
        self.discarded_incomplete += n;
        n
    }

    /// Feeds one ring record.
    pub fn push(&mut self, record: &[u8]) -> Assembled {
        let Some(header) = parse_header(record) else {
            return Assembled::BadRecord;
        };
        let data = &record[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + header.chunk_len as usize];
        let last = header.flags & FLAG_LAST_CHUNK != 0;

        if header.chunk_offset == 0 {
            // A new packet starts on this CPU; anything unfinished there lost its tail. (Nearly
            // always nothing is: a packet of one chunk skips the hash lookup.)
            if !self.partial.is_empty() && self.partial.remove(&header.cpu).is_some() {
                self.discarded_incomplete += 1;
            }
            if last {
                return self.single_chunk(header, data);
            }
            let mut buf = BytesMut::with_capacity(header.captured_len as usize);
            buf.extend_from_slice(data);
            self.partial
                .insert(header.cpu, PartialPacket { header, data: buf });
            return Assembled::Pending;
        }

        // A continuation chunk: it must follow the packet in flight on its CPU exactly.
        let Some(mut partial) = self.partial.remove(&header.cpu) else {
            // Its start was lost; the whole packet is gone.
            self.discarded_incomplete += 1;
            return Assembled::Pending;
        };
        let lines_up = partial.header.packet_seq == header.packet_seq
            && partial.data.len() == header.chunk_offset as usize
            && partial.header.captured_len == header.captured_len;
        if !lines_up {
            // Both the unfinished packet and the one this chunk belongs to are incomplete.
            self.discarded_incomplete += 2;
            return Assembled::Pending;
        }
        partial.data.extend_from_slice(data);
        if !last {
            self.partial.insert(header.cpu, partial);
            return Assembled::Pending;
        }
        if partial.data.len() != header.captured_len as usize {
            self.discarded_incomplete += 1;
            return Assembled::Pending;
        }
        Assembled::Packet(self.packet(&partial.header, partial.data.freeze()))
    }

    fn single_chunk(&mut self, header: ChunkHeader, data: &[u8]) -> Assembled {
        if data.len() != header.captured_len as usize {
            self.discarded_incomplete += 1;
            return Assembled::Pending;
        }
        let bytes = self.arena.copy(data);
        Assembled::Packet(self.packet(&header, bytes))
    }

    fn packet(&self, header: &ChunkHeader, mut data: Bytes) -> CapturedPacket {
        // Both hooks hand over frames starting at an Ethernet header (lo included); a
        // decapsulated packet (`--decap`) is framed from where the kernel found it.
        let mut link = LinkType::Ethernet;
        let inner = usize::from(header.inner_offset);
        if inner != 0 && inner < data.len() {
            data.advance(inner);
            if header.flags & FLAG_INNER_RAW_IP != 0 {
                link = LinkType::RawIp;
            }
        }
        CapturedPacket {
            ts: self.clock.to_wall(header.ts_ns),
            ifindex: header.ifindex,
            direction: Direction::from_u8(header.direction).unwrap_or(Direction::Ingress),
            link,
            wire_len: header.wire_len,
            flow_hash: header.flow_hash,
            data,
        }
    }
}

/// Reads and sanity-checks a record's header; `None` for anything the kernel side could not
/// have written. The record may carry slack after the chunk (the kernel reserves records in
/// fixed sizes), but never more data area than a chunk can have.
fn parse_header(record: &[u8]) -> Option<ChunkHeader> {
    let head = record.get(..CHUNK_HEADER_LEN)?;
    // SAFETY: `head` is exactly size_of::<ChunkHeader>() bytes and ChunkHeader is Pod
    // (repr(C), every bit pattern valid); read_unaligned copes with any alignment.
    let header: ChunkHeader = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
    let valid = Direction::from_u8(header.direction).is_some()
        && header.chunk_len > 0
        && record.len() >= CHUNK_HEADER_LEN + header.chunk_len as usize
        && record.len() <= CHUNK_HEADER_LEN + CHUNK_LEN as usize
        && header.captured_len <= MAX_PACKET_LEN
        && header.captured_len <= header.wire_len
        && u64::from(header.chunk_offset) + u64::from(header.chunk_len)
            <= u64::from(header.captured_len);
    valid.then_some(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use capture_common::FLAG_TRUNCATED;

    const CLOCK: ClockOffset = ClockOffset {
        realtime_minus_monotonic_ns: 1_000_000_000_000,
    };

    fn record(cpu: u32, seq: u64, captured: u32, offset: u32, data: &[u8], last: bool) -> Vec<u8> {
        let header = ChunkHeader {
            ts_ns: 5,
            packet_seq: seq,
            cpu,
            ifindex: 7,
            wire_len: captured,
            captured_len: captured,
            chunk_offset: offset,
            chunk_len: data.len() as u32,
            direction: Direction::Egress as u8,
            flags: if last { FLAG_LAST_CHUNK } else { 0 },
            inner_offset: 0,
            flow_hash: 0xA5A5_0F0F,
        };
        // SAFETY: ChunkHeader is repr(C) plain data without padding holes.
        let head: [u8; CHUNK_HEADER_LEN] = unsafe { std::mem::transmute(header) };
        let mut out = head.to_vec();
        out.extend_from_slice(data);
        out
    }

    fn packet(assembled: Assembled) -> CapturedPacket {
        match assembled {
            Assembled::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    #[test]
    fn single_chunk_packet_keeps_metadata_and_wall_time() {
        let mut asm = ChunkAssembler::new(CLOCK);
        let p = packet(asm.push(&record(0, 1, 3, 0, b"abc", true)));
        assert_eq!(&p.data[..], b"abc");
        assert_eq!(p.ifindex, 7);
        assert_eq!(p.direction, Direction::Egress);
        assert_eq!(p.wire_len, 3);
        assert_eq!(p.flow_hash, 0xA5A5_0F0F);
        assert_eq!(p.ts, Timestamp(1_000_000_000_005));
    }

    #[test]
    fn chunks_interleaved_across_cpus_are_joined_per_cpu() {
        let mut asm = ChunkAssembler::new(CLOCK);
        assert_eq!(
            asm.push(&record(0, 1, 6, 0, b"abc", false)),
            Assembled::Pending
        );
        assert_eq!(
            asm.push(&record(1, 9, 4, 0, b"wx", false)),
            Assembled::Pending
        );
        let a = packet(asm.push(&record(0, 1, 6, 3, b"def", true)));
        let b = packet(asm.push(&record(1, 9, 4, 2, b"yz", true)));
        assert_eq!(&a.data[..], b"abcdef");
        assert_eq!(&b.data[..], b"wxyz");
        assert_eq!(asm.discarded_incomplete(), 0);
    }

    #[test]
    fn packet_missing_its_tail_is_discarded_when_the_next_starts() {
        let mut asm = ChunkAssembler::new(CLOCK);
        asm.push(&record(0, 1, 6, 0, b"abc", false));
        let p = packet(asm.push(&record(0, 2, 2, 0, b"zz", true)));
        assert_eq!(&p.data[..], b"zz");
        assert_eq!(asm.discarded_incomplete(), 1);
    }

    #[test]
    fn continuation_without_start_is_discarded() {
        let mut asm = ChunkAssembler::new(CLOCK);
        assert_eq!(
            asm.push(&record(0, 1, 6, 3, b"def", true)),
            Assembled::Pending
        );
        assert_eq!(asm.discarded_incomplete(), 1);
    }

    #[test]
    fn continuation_of_another_packet_discards_both() {
        let mut asm = ChunkAssembler::new(CLOCK);
        asm.push(&record(0, 1, 6, 0, b"abc", false));
        assert_eq!(
            asm.push(&record(0, 2, 6, 3, b"def", true)),
            Assembled::Pending
        );
        assert_eq!(asm.discarded_incomplete(), 2);
        assert_eq!(asm.pending(), 0);
    }

    #[test]
    fn unfinished_packets_count_as_discarded_at_finish() {
        let mut asm = ChunkAssembler::new(CLOCK);
        asm.push(&record(0, 1, 6, 0, b"abc", false));
        assert_eq!(asm.finish(), 1);
        assert_eq!(asm.discarded_incomplete(), 1);
    }

    #[test]
    fn malformed_records_are_rejected_not_panicked_on() {
        let mut asm = ChunkAssembler::new(CLOCK);
        assert_eq!(asm.push(b"short"), Assembled::BadRecord);
        let mut rec = record(0, 1, 3, 0, b"abc", true);
        rec.truncate(CHUNK_HEADER_LEN + 1); // claims 3 bytes, carries 1
        assert_eq!(asm.push(&rec), Assembled::BadRecord);
        let mut rec = record(0, 1, 3, 0, b"abc", true);
        rec[40] = 9; // direction byte
        assert_eq!(asm.push(&rec), Assembled::BadRecord);
        let rec = record(0, 1, 2, 0, b"abc", true); // chunk longer than the packet
        assert_eq!(asm.push(&rec), Assembled::BadRecord);
    }

    #[test]
    fn slack_after_the_chunk_is_ignored_up_to_a_full_chunk() {
        let mut asm = ChunkAssembler::new(CLOCK);
        // A 3-byte packet in a 128-byte record, slack full of stale bytes.
        let mut rec = record(0, 1, 3, 0, b"abc", true);
        rec.resize(CHUNK_HEADER_LEN + 128, 0xEE);
        assert_eq!(&packet(asm.push(&rec)).data[..], b"abc");
        // The same in the largest record size.
        rec.resize(CHUNK_HEADER_LEN + CHUNK_LEN as usize, 0xEE);
        assert_eq!(&packet(asm.push(&rec)).data[..], b"abc");
        // A chunk split over two records of a size class each joins without the slack.
        let mut first = record(1, 2, 5, 0, b"ab", false);
        first.resize(CHUNK_HEADER_LEN + 128, 0xEE);
        let mut last = record(1, 2, 5, 2, b"cde", true);
        last.resize(CHUNK_HEADER_LEN + 256, 0xEE);
        assert_eq!(asm.push(&first), Assembled::Pending);
        assert_eq!(&packet(asm.push(&last)).data[..], b"abcde");
        // No record is larger than a header and a full chunk.
        rec.push(0);
        assert_eq!(asm.push(&rec), Assembled::BadRecord);
        assert_eq!(asm.discarded_incomplete(), 0);
    }

    #[test]
    fn truncated_flag_passes_through_as_wire_len() {
        let mut asm = ChunkAssembler::new(CLOCK);
        let mut rec = record(0, 1, 3, 0, b"abc", true);
        // wire_len (offset 24) larger than captured_len: the kernel cut the packet.
        rec[24..28].copy_from_slice(&70000u32.to_ne_bytes());
        rec[41] |= FLAG_TRUNCATED;
        let p = packet(asm.push(&rec));
        assert!(p.is_truncated());
        assert_eq!(p.wire_len, 70000);
    }

    #[test]
    fn many_small_packets_share_the_arena_without_aliasing() {
        let mut asm = ChunkAssembler::new(CLOCK);
        let packets: Vec<_> = (0..1000u32)
            .map(|i| packet(asm.push(&record(0, u64::from(i), 4, 0, &i.to_be_bytes(), true))))
            .collect();
        for (i, p) in packets.iter().enumerate() {
            assert_eq!(&p.data[..], &(i as u32).to_be_bytes());
        }
    }
}
