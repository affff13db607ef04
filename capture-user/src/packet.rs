//! The unit that flows from a packet source (live ring buffer or pcap file) into decode.

use bytes::{Bytes, BytesMut};
pub use capture_common::{Direction, flow_hash_of};

use crate::decode::LinkType;

/// Wall-clock time in nanoseconds since the Unix epoch. Plain integer so the protocol cores
/// stay sans-IO: they are fed time, they never read a clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The wall clock now.
    pub fn now() -> Self {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the Unix epoch.
    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// RFC 3339 UTC with microseconds, for humans reading `capture packets` output.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0 / 1_000_000_000;
        let micros = (self.0 % 1_000_000_000) / 1_000;
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days as i64);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            rem / 3600,
            (rem % 3600) / 60,
            rem % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's civil calendar algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// One captured frame, as the live capture or a pcap file delivers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedPacket {
    /// When the kernel (or the pcap writer) saw it.
    pub ts: Timestamp,
    /// Interface index (0 when unknown, e.g. pcap files).
    pub ifindex: u32,
    /// Direction relative to the capturing interface (pcap files: `Ingress`).
    pub direction: Direction,
    /// How the frame starts.
    pub link: LinkType,
    /// Length of the packet as the kernel had it; larger than `data` when truncated.
    pub wire_len: u32,
    /// Symmetric hash of the packet's TCP connection ([`capture_common::flow_hash`]): the
    /// same for both directions, stable for the connection's life, well spread; made to shard
    /// connections over threads before anything is decoded. Live capture takes it from the
    /// kernel. Files leave it 0: they are framed on one thread, and decoding every frame
    /// twice to compute it would cost what sharding is meant to save
    /// ([`crate::decode::frame_flow_hash`] gives the kernel's value when wanted).
    pub flow_hash: u32,
    /// The frame's captured bytes.
    pub data: Bytes,
}

impl CapturedPacket {
    /// True when the capture holds fewer bytes than the packet had.
    pub fn is_truncated(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.wire_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29T12:34:56.789012Z, a leap day.
        let ns = 1_709_210_096_789_012_000;
        assert_eq!(Timestamp(ns).to_rfc3339(), "2024-02-29T12:34:56.789012Z");
    }
}

/// Where packet bytes are copied to from a source's own buffer (the ring, a file reader):
/// one shared allocation cut into many packets, so most packets cost no allocation and the
/// framing downstream sees the same kind of `Bytes` from every source.
#[derive(Default)]
pub struct PacketArena {
    arena: BytesMut,
}

/// Arena refill size: enough to amortise its allocation over about a hundred packets, and
/// small enough that an arena is done with (its reference count left alone by the thread
/// cutting it) by the time the messages cut from it are dropped, and that it stays below
/// malloc's mmap threshold (a fresh mapping per arena costs a page fault per 4 KiB).
const ARENA_BYTES: usize = 96 << 10;

impl PacketArena {
    /// A copy of `data` in memory of its own.
    pub fn copy(&mut self, data: &[u8]) -> Bytes {
        if self.arena.capacity() < data.len() {
            self.arena = BytesMut::with_capacity(ARENA_BYTES.max(data.len()));
        }
        self.arena.extend_from_slice(data);
        self.arena.split().freeze()
    }
}
