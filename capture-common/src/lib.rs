//! Types shared by the kernel side (`capture-ebpf`) and userspace (`capture-user`).
//!
//! Everything here is `#[repr(C)]` and plain old data so both sides agree on the byte layout of
//! ring buffer records and maps. With the `user` feature the types implement `aya::Pod` so
//! userspace can read them out of maps.
#![no_std]

/// Largest packet copied whole. Larger packets (BIG TCP) are cut here and flagged truncated.
/// veth and loopback hand over GSO/GRO packets up to 64 KiB, so this covers them.
pub const MAX_PACKET_LEN: u32 = 65536;

/// Bytes of packet data carried by one ring buffer record. A power of two so the eBPF side can
/// bound lengths with a mask; a packet longer than this is split into several chunks.
pub const CHUNK_LEN: u32 = 16384;

/// Data capacities of the ring records the kernel side reserves, smallest first: a packet's
/// last (or only) chunk goes into the smallest that holds it, every other chunk fills a
/// [`CHUNK_LEN`] one. Ring records must have a size the verifier knows, so this is the price
/// of copying packets straight into the ring: the bytes past the chunk are slack (under half
/// the data area, a quarter on average). 1536 holds a full-size Ethernet frame (1514 bytes,
/// 1518 tagged) with little to spare.
pub const RECORD_DATA_SIZES: [u32; 9] = [128, 256, 512, 1024, 1536, 2048, 4096, 8192, CHUNK_LEN];

// Ascending, ending at a full chunk (the kernel side picks the first that holds a chunk).
const _: () = {
    let mut i = 1;
    while i < RECORD_DATA_SIZES.len() {
        assert!(RECORD_DATA_SIZES[i - 1] < RECORD_DATA_SIZES[i]);
        i += 1;
    }
    assert!(RECORD_DATA_SIZES[RECORD_DATA_SIZES.len() - 1] == CHUNK_LEN);
};

/// Upper bound on chunks per packet (`MAX_PACKET_LEN / CHUNK_LEN`).
pub const MAX_CHUNKS: u32 = MAX_PACKET_LEN / CHUNK_LEN;

/// Most ports one capture takes. Far above the 64 ports a node usually needs (the port map
/// itself holds every port).
pub const MAX_PORTS: u32 = 1024;

/// Name of the BPF array holding the ports to capture as a bitmap of [`PORT_WORDS`] words:
/// port `p` (host order) is wanted when bit `p % 64` of word `p / 64` is set. An array lookup
/// is inlined by the verifier, so checking a port costs a few instructions, no hashing.
pub const PORTS_MAP: &str = "PORTS";

/// Words of the [`PORTS_MAP`] bitmap: 64 ports each, every port covered.
pub const PORT_WORDS: u32 = 65536 / 64;

/// Where port `port` lives in the [`PORTS_MAP`] bitmap: (word index, bit mask).
#[inline(always)]
pub const fn port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1 << (port & 63))
}
/// Name of the BPF longest-prefix-match trie of `--host` networks. Keys are a prefix length
/// and a 16-byte address (IPv4 mapped into `::ffff:0:0/96`, its prefix length plus 96); a
/// packet on a configured port is kept when its source or destination address is in it.
pub const HOSTS_MAP: &str = "HOSTS";

/// Most `--host` networks one capture takes.
pub const MAX_HOSTS: u32 = 1024;

/// Name of the global set by userspace at load time: 1 when `--host` was given (look
/// addresses up in [`HOSTS_MAP`]), 0 to keep every address.
pub const HOST_FILTER_GLOBAL: &str = "HOST_FILTER";

/// Name of the BPF ring buffer map the programs write packet chunks into.
pub const RING_MAP: &str = "PACKETS";
/// Name of the per-CPU array of [`Counter`] values.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the global set by userspace at load time: the wake-up step, in bytes, a power of
/// two. A record wakes the reader only when it takes the ring's fill level across a multiple
/// of the step (the reader is woken once the ring holds that much, and once more per step
/// while it lags); other records are written without a wake-up and the reader finds them on
/// its next timed poll. This batches wake-ups under load.
pub const WAKEUP_BYTES_GLOBAL: &str = "WAKEUP_BYTES";

/// Direction of a packet relative to the interface it was captured on.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received by the interface (TC ingress or XDP).
    Ingress = 0,
    /// Sent by the interface (TC egress).
    Egress = 1,
}

impl Direction {
    /// Decodes the wire value; unknown values are `None` so a corrupt record is detectable.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Ingress),
            1 => Some(Self::Egress),
            _ => None,
        }
    }
}

/// [`ChunkHeader::flags`]: this is the last chunk of its packet.
pub const FLAG_LAST_CHUNK: u8 = 1;
/// [`ChunkHeader::flags`]: the packet was longer than [`MAX_PACKET_LEN`] and was cut.
pub const FLAG_TRUNCATED: u8 = 2;
/// [`ChunkHeader::flags`]: the decapsulated packet at [`ChunkHeader::inner_offset`] starts
/// with an IP header (IP-in-IP), not an Ethernet header (VXLAN, Geneve).
pub const FLAG_INNER_RAW_IP: u8 = 4;

/// `--decap` bits (the [`DECAP_GLOBAL`]): VXLAN (UDP port 4789), Geneve (UDP port 6081,
/// Ethernet payload) and IPv4-in-IPv4 (IP protocol 4).
pub const DECAP_VXLAN: u8 = 1;
pub const DECAP_GENEVE: u8 = 2;
pub const DECAP_IPIP: u8 = 4;

/// Name of the global set by userspace at load time: which encapsulations the programs look
/// inside (`DECAP_*` bits; 0: none, encapsulated packets are only counted).
pub const DECAP_GLOBAL: &str = "DECAP";

/// Header of every ring buffer record; `chunk_len` bytes of packet data follow it. The record
/// may be longer than that (one of [`RECORD_DATA_SIZES`] after the header): the bytes past
/// `chunk_len` are slack the kernel never wrote, to be ignored.
///
/// A packet is one or more consecutive chunks from the same CPU sharing `cpu` and `packet_seq`;
/// the reader joins them and discards a packet whose chunks do not line up (one was lost
/// because the ring was full, which the kernel side counts as a drop).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the packet was seen.
    pub ts_ns: u64,
    /// Per-CPU packet sequence number (the CPU's `matched` count), to tie chunks to their
    /// packet.
    pub packet_seq: u64,
    /// CPU that produced the record.
    pub cpu: u32,
    /// Interface index the packet was seen on.
    pub ifindex: u32,
    /// Length of the packet as the kernel had it (may exceed the wire MTU for GSO packets).
    pub wire_len: u32,
    /// Bytes of the packet copied in total (min(wire_len, MAX_PACKET_LEN)).
    pub captured_len: u32,
    /// Offset of this chunk's data within the packet.
    pub chunk_offset: u32,
    /// Bytes of packet data following this header.
    pub chunk_len: u32,
    /// [`Direction`] as u8.
    pub direction: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Where the decapsulated packet starts within this one (`--decap`), 0 when the packet
    /// was not encapsulated. The connection, ports and flow hash are the inner packet's.
    pub inner_offset: u16,
    /// [`flow_hash`] of the packet's TCP connection: the same in both directions.
    pub flow_hash: u32,
}

/// Size of [`ChunkHeader`] on both sides.
pub const CHUNK_HEADER_LEN: usize = core::mem::size_of::<ChunkHeader>();

// 48 bytes, every field at its natural alignment, no implicit padding.
const _: () = assert!(CHUNK_HEADER_LEN == 48);
const _: () = assert!(core::mem::offset_of!(ChunkHeader, direction) == 40);
const _: () = assert!(core::mem::offset_of!(ChunkHeader, flow_hash) == 44);

/// Symmetric hash of a TCP connection: both directions of a connection get the same value,
/// so it can shard connections over threads without looking at the packets again.
///
/// `addr_fold` is [`fold_v4`] or [`fold_v6`] of the source address XOR the same fold of the
/// destination address; the ports are the TCP ports in host order. XOR makes both
/// symmetric; the multiply and the finaliser (MurmurHash3's `fmix32`) spread the result over
/// all 32 bits. The kernel side computes it from packet bytes, userspace from decoded
/// addresses ([`flow_hash_of`]); both must give the same value.
#[inline(always)]
pub const fn flow_hash(addr_fold: u32, src_port: u16, dst_port: u16) -> u32 {
    let ports = (src_port ^ dst_port) as u32;
    let mut h = addr_fold ^ ports.wrapping_mul(0x9E37_79B1);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^= h >> 16;
    h
}

/// An IPv4 address (network byte order, as on the wire) folded for [`flow_hash`].
#[inline(always)]
pub const fn fold_v4(addr: [u8; 4]) -> u32 {
    u32::from_be_bytes(addr)
}

/// An IPv6 address (network byte order) folded for [`flow_hash`]: its four 32-bit words
/// XORed. An IPv4-mapped IPv6 address does not fold like the IPv4 address; a connection is
/// one or the other on the wire.
#[inline(always)]
pub const fn fold_v6(addr: [u8; 16]) -> u32 {
    let mut fold = 0;
    let mut i = 0;
    while i < 16 {
        fold ^= u32::from_be_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
        i += 4;
    }
    fold
}

/// [`flow_hash`] of a segment from `src` to `dst`, from decoded addresses (the userspace
/// twin of what the kernel side writes into [`ChunkHeader::flow_hash`]).
pub fn flow_hash_of(src: core::net::SocketAddr, dst: core::net::SocketAddr) -> u32 {
    let fold = |addr: core::net::IpAddr| match addr {
        core::net::IpAddr::V4(v4) => fold_v4(v4.octets()),
        core::net::IpAddr::V6(v6) => fold_v6(v6.octets()),
    };
    flow_hash(fold(src.ip()) ^ fold(dst.ip()), src.port(), dst.port())
}

/// Index of each per-CPU counter in the [`COUNTERS_MAP`] array.
///
/// Invariant checked by the tests: `Matched == Captured + DroppedRingFull + DroppedCopyFailed`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the program ran on.
    Seen = 0,
    /// TCP packets on a configured port that were selected for copying (carry payload, or
    /// SYN/FIN/RST).
    Matched = 1,
    /// Matched packets written whole to the ring.
    Captured = 2,
    /// Matched packets lost because the ring buffer was full.
    DroppedRingFull = 3,
    /// Captured packets cut at [`MAX_PACKET_LEN`].
    Truncated = 4,
    /// TCP packets on a configured port skipped because they carry no payload and no
    /// SYN/FIN/RST (pure ACKs): nothing in them is needed to rebuild the stream.
    SkippedNoPayload = 5,
    /// Matched packets lost because the kernel refused to copy their bytes (should stay 0;
    /// counted so it is never silent).
    DroppedCopyFailed = 6,
    /// TCP packets on a configured port skipped because neither address is in a `--host`
    /// network.
    SkippedHost = 7,
    /// Packets carrying VXLAN, Geneve or IP-in-IP, whether `--decap` looks inside or not
    /// (what explains an overlay's traffic not being matched without it).
    Encapsulated = 8,
    /// Matched packets found inside an encapsulation (`--decap`).
    EncapsulatedMatched = 9,
}

/// Number of [`Counter`] slots.
pub const COUNTER_SLOTS: u32 = 10;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::Seen,
        Counter::Matched,
        Counter::Captured,
        Counter::DroppedRingFull,
        Counter::Truncated,
        Counter::SkippedNoPayload,
        Counter::DroppedCopyFailed,
        Counter::SkippedHost,
        Counter::Encapsulated,
        Counter::EncapsulatedMatched,
    ];

    /// Name used in logs, summaries and metrics alike.
    pub fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Matched => "matched",
            Counter::Captured => "captured",
            Counter::DroppedRingFull => "dropped_ring_full",
            Counter::Truncated => "truncated",
            Counter::SkippedNoPayload => "skipped_no_payload",
            Counter::DroppedCopyFailed => "dropped_copy_failed",
            Counter::SkippedHost => "skipped_host",
            Counter::Encapsulated => "encapsulated",
            Counter::EncapsulatedMatched => "encapsulated_matched",
        }
    }

    /// For counters that count lost packets, the name recordings report that loss by;
    /// `None` for the others. The one list of what the kernel side loses.
    pub fn loss_name(self) -> Option<&'static str> {
        match self {
            Counter::DroppedRingFull => Some("kernel_ring_full"),
            Counter::DroppedCopyFailed => Some("kernel_copy_failed"),
            Counter::Truncated => Some("kernel_truncated"),
            Counter::Seen
            | Counter::Matched
            | Counter::Captured
            | Counter::SkippedNoPayload
            | Counter::SkippedHost
            | Counter::Encapsulated
            | Counter::EncapsulatedMatched => None,
        }
    }
}

pub mod tls;

#[cfg(feature = "user")]
// SAFETY: ChunkHeader is repr(C), Copy, has no padding holes and every bit pattern is valid.
unsafe impl aya::Pod for ChunkHeader {}

#[cfg(feature = "user")]
// SAFETY: TlsChunkHeader is repr(C), Copy, has no padding holes and every bit pattern is valid.
unsafe impl aya::Pod for tls::TlsChunkHeader {}

#[cfg(feature = "user")]
// SAFETY: KernelOffsets is repr(C), Copy, all u32 fields, every bit pattern is valid.
unsafe impl aya::Pod for tls::KernelOffsets {}
