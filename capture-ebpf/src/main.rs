//! Kernel side of capture: TC classifiers (ingress, egress) and an XDP program that copy the
//! TCP packets of configured ports into a ring buffer, whole (up to 64 KiB, chunked), with
//! per-CPU counters so nothing is lost silently.
//!
//! Cost per packet is what the design is about: headers are read by direct packet access
//! (the load helpers only when a header is outside the linear data), a packet of another
//! port is rejected after the port bitmap lookup, and a matched packet is copied once,
//! straight from the packet into records reserved in the ring.
//!
//! The programs never change a packet's fate: TC returns `TC_ACT_UNSPEC` (TCX_NEXT: the
//! next program in the TCX chain, or the next cls_bpf filter, runs as if we were not there;
//! any other verdict would end the chain and hide packets from programs attached after us,
//! such as a CNI's or a second capture's) and XDP returns `XDP_PASS`.
#![no_std]
#![no_main]

use core::{cell::Cell, mem::MaybeUninit};

use aya_ebpf::{
    Global,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC, xdp_action,
    },
    helpers::{
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    },
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use capture_common::{
    CHUNK_HEADER_LEN, CHUNK_LEN, COUNTER_SLOTS, ChunkHeader, Counter, Direction, FLAG_LAST_CHUNK,
    FLAG_TRUNCATED, MAX_CHUNKS, MAX_PACKET_LEN, PORT_WORDS, RECORD_DATA_SIZES, flow_hash, port_bit,
};

/// Ports to capture as a bitmap (see `PORTS_MAP`). A packet matches when its source or
/// destination port is set.
#[map(name = "PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// Packet chunks for userspace. Userspace resizes it at load time (`--ring-size`).
#[map(name = "PACKETS")]
static PACKETS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Per-CPU counters, indexed by [`Counter`].
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Wake-up step (bytes, a power of two; see `WAKEUP_BYTES_GLOBAL`): a record wakes the reader
/// when it takes the ring's fill level across a multiple of it. Set by userspace at load.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

const ETH_HDR_LEN: u32 = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
/// Extension headers walked before giving up on an IPv6 packet (bounded for the verifier).
const MAX_IPV6_EXT_HEADERS: u32 = 6;

/// Byte access to the packet, the same for TC (`__sk_buff`) and XDP (`xdp_md`, multi-buffer
/// aware), so parsing and copying are written once.
trait PacketBytes {
    /// Start and end of the linear packet data the program may read directly.
    fn linear(&self) -> (usize, usize);
    /// Full packet length, including non-linear parts.
    fn len(&self) -> u32;
    /// Index of the interface the packet was seen on (read only for packets copied: it
    /// takes pointer loads through the device).
    fn ifindex(&self) -> u32;
    /// Copies `len` bytes from `offset` into `dst`; false if out of bounds.
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
}

/// Where the parser reads headers from.
trait Headers {
    /// The `N` bytes at `offset`, or `None` when this source cannot give them. `buf` is room
    /// for a copy, used only by sources that copy.
    fn read<'b, const N: usize>(
        &'b self,
        offset: u32,
        buf: &'b mut MaybeUninit<[u8; N]>,
    ) -> Option<&'b [u8; N]>;
}

/// Headers read straight from the linear packet data (`data..data_end`), where they nearly
/// always are: no helper call, no copy, and only the bytes the parser looks at are loaded.
/// A read outside it fails and sets `missed`, so the caller parses again with [`Loaded`].
struct Direct {
    start: usize,
    end: usize,
    missed: Cell<bool>,
}

impl Direct {
    #[inline(always)]
    fn new<P: PacketBytes>(pkt: &P) -> Self {
        let (start, end) = pkt.linear();
        Self {
            start,
            end,
            missed: Cell::new(false),
        }
    }
}

impl Headers for Direct {
    #[inline(always)]
    fn read<'b, const N: usize>(
        &'b self,
        offset: u32,
        _buf: &'b mut MaybeUninit<[u8; N]>,
    ) -> Option<&'b [u8; N]> {
        // The bound lets the verifier accept a variable offset into the packet; headers
        // further in (only behind many IPv6 extension headers) are left to the helper.
        if offset <= MAX_DIRECT_OFFSET {
            let at = self.start + offset as usize;
            if at + N <= self.end {
                // SAFETY: [at, at + N) lies inside the linear packet data, checked against
                // data_end just above (the check the verifier wants before a packet read);
                // nothing writes the packet while the program runs, and [u8; N] has no
                // alignment requirement.
                return Some(unsafe { &*(at as *const [u8; N]) });
            }
        }
        self.missed.set(true);
        None
    }
}

/// Headers copied out with the load helper: any part of the packet, linear or not.
struct Loaded<'a, P>(&'a P);

impl<P: PacketBytes> Headers for Loaded<'_, P> {
    #[inline(always)]
    fn read<'b, const N: usize>(
        &'b self,
        offset: u32,
        buf: &'b mut MaybeUninit<[u8; N]>,
    ) -> Option<&'b [u8; N]> {
        if self.0.load(offset, buf.as_mut_ptr().cast(), N as u32) {
            // SAFETY: the helper succeeded, so it wrote all N bytes.
            Some(unsafe { buf.assume_init_ref() })
        } else {
            None
        }
    }
}

/// Largest header offset read directly from the packet (well under the verifier's 64 KiB
/// limit on packet offsets).
const MAX_DIRECT_OFFSET: u32 = 0x3FFF;

struct Skb<'a>(&'a TcContext);

impl PacketBytes for Skb<'_> {
    #[inline(always)]
    fn linear(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer handed to the program is valid for its whole run.
        unsafe { (*self.0.skb.skb).ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: the context pointer handed to the program is valid for its whole run.
        unsafe { (*self.0.skb.skb).len }
    }
    #[inline(always)]
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks bounds itself; dst points at `len` writable bytes.
        unsafe { bpf_skb_load_bytes(self.0.skb.skb as *const _, offset, dst as *mut _, len) == 0 }
    }
}

struct Xdp<'a>(&'a XdpContext);

impl PacketBytes for Xdp<'_> {
    #[inline(always)]
    fn linear(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer handed to the program is valid for its whole run.
        unsafe { (*self.0.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: valid context pointer; the helper covers fragments of multi-buffer packets.
        unsafe { bpf_xdp_get_buff_len(self.0.ctx) as u32 }
    }
    #[inline(always)]
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks bounds itself; dst points at `len` writable bytes.
        unsafe { bpf_xdp_load_bytes(self.0.ctx, offset, dst as *mut _, len) == 0 }
    }
}

/// Adds one to this CPU's `counter`; returns the new value.
#[inline(always)]
fn count(counter: Counter) -> u64 {
    match COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs (programs do
        // not nest on a CPU: TC and XDP run with bottom halves off).
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

/// Whether `port` is in the port set: one inlined array lookup and a bit test.
#[inline(always)]
fn port_wanted(port: u16) -> bool {
    let (word, bit) = port_bit(port);
    PORTS.get(word).is_some_and(|w| *w & bit != 0)
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// What the parser learned about a TCP packet on a configured port.
struct TcpMatch {
    flags: u8,
    payload_len: u32,
    /// Length of the whole packet.
    wire_len: u32,
    /// The connection's `flow_hash`.
    flow_hash: u32,
}

/// Where the IP header and the TCP header start, and where the IP packet ends.
struct Layers {
    /// Offset of the IP header.
    l3: u32,
    /// IPv6 rather than IPv4.
    v6: bool,
    /// Offset of the TCP header.
    l4: u32,
    /// Offset just past the IP packet, or 0 when the IP header does not say (BIG TCP GSO
    /// packets carry length 0: the packet length is the truth then).
    ip_end: u32,
}

/// Parses Ethernet (optionally one VLAN tag) and IPv4 or IPv6 (with extension headers) down
/// to the TCP header; `None` unless the packet is TCP and carries its TCP header (first
/// fragment).
#[inline(always)]
fn parse_ip<H: Headers>(pkt: &H) -> Option<Layers> {
    let mut eth_buf = MaybeUninit::uninit();
    let eth: &[u8; 2] = pkt.read(12, &mut eth_buf)?;
    let mut ethertype = u16::from_be_bytes(*eth);
    let mut l3 = ETH_HDR_LEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let mut inner_buf = MaybeUninit::uninit();
        let inner: &[u8; 2] = pkt.read(16, &mut inner_buf)?;
        ethertype = u16::from_be_bytes(*inner);
        l3 += 4;
    }
    match ethertype {
        ETH_P_IPV4 => {
            let mut ip_buf = MaybeUninit::uninit();
            let ip: &[u8; 10] = pkt.read(l3, &mut ip_buf)?;
            if ip[0] >> 4 != 4 || ip[9] != IPPROTO_TCP {
                return None;
            }
            // Later fragments carry no TCP header.
            if be16(ip, 6) & 0x1FFF != 0 {
                return None;
            }
            let ihl = ((ip[0] & 0x0F) as u32) * 4;
            if ihl < 20 {
                return None;
            }
            let total = be16(ip, 2) as u32;
            Some(Layers {
                l3,
                v6: false,
                l4: l3 + ihl,
                ip_end: if total == 0 { 0 } else { l3 + total },
            })
        }
        ETH_P_IPV6 => {
            let mut ip_buf = MaybeUninit::uninit();
            let ip: &[u8; 8] = pkt.read(l3, &mut ip_buf)?;
            if ip[0] >> 4 != 6 {
                return None;
            }
            let payload = be16(ip, 4) as u32;
            Some(Layers {
                l3,
                v6: true,
                l4: ipv6_tcp_offset(pkt, ip[6], l3 + 40)?,
                ip_end: if payload == 0 { 0 } else { l3 + 40 + payload },
            })
        }
        _ => None,
    }
}

/// Walks IPv6 extension headers from `off` (next header `next`) to the TCP header's offset;
/// `None` if the packet is not TCP, is a later fragment, or has too many extension headers.
#[inline(always)]
fn ipv6_tcp_offset<H: Headers>(pkt: &H, mut next: u8, mut off: u32) -> Option<u32> {
    let mut i = 0;
    while i < MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => return Some(off),
            // Hop-by-hop, routing, destination options: length in 8-octet units.
            0 | 43 | 60 => {
                let mut ext_buf = MaybeUninit::uninit();
                let ext: &[u8; 2] = pkt.read(off, &mut ext_buf)?;
                next = ext[0];
                off += (ext[1] as u32 + 1) * 8;
            }
            // Fragment header: only the first fragment has the TCP header.
            44 => {
                let mut frag_buf = MaybeUninit::uninit();
                let frag: &[u8; 4] = pkt.read(off, &mut frag_buf)?;
                if be16(frag, 2) & 0xFFF8 != 0 {
                    return None;
                }
                next = frag[0];
                off += 8;
            }
            // Authentication header: length in 4-octet units, minus 2.
            51 => {
                let mut ext_buf = MaybeUninit::uninit();
                let ext: &[u8; 2] = pkt.read(off, &mut ext_buf)?;
                next = ext[0];
                off += (ext[1] as u32 + 2) * 4;
            }
            _ => return None,
        }
        i += 1;
    }
    if next == IPPROTO_TCP { Some(off) } else { None }
}

/// What the parser learned about a TCP packet on a configured port.
struct Found {
    flags: u8,
    /// Offset of the TCP payload.
    payload_start: u32,
    /// As [`Layers::ip_end`].
    ip_end: u32,
    /// The connection's `flow_hash`.
    flow_hash: u32,
}

/// Parses down to the TCP header and checks the ports; `None` unless the packet is TCP (first
/// fragment) with a configured source or destination port. Reads no more than that needs, so
/// a packet of another port costs little.
#[inline(always)]
fn parse<H: Headers>(pkt: &H) -> Option<Found> {
    let layers = parse_ip(pkt)?;
    let mut tcp_buf = MaybeUninit::uninit();
    let tcp: &[u8; 14] = pkt.read(layers.l4, &mut tcp_buf)?;
    let src_port = be16(tcp, 0);
    let dst_port = be16(tcp, 2);
    if !port_wanted(dst_port) && !port_wanted(src_port) {
        return None;
    }
    Some(Found {
        flags: tcp[13],
        payload_start: layers.l4 + ((tcp[12] >> 4) as u32) * 4,
        ip_end: layers.ip_end,
        flow_hash: flow_hash(addr_fold(pkt, &layers)?, src_port, dst_port),
    })
}

/// The source and destination addresses folded for `flow_hash`: `fold_v4(src) ^ fold_v4(dst)`
/// (or `fold_v6`), computed as the XOR of every big-endian 32-bit word of the two addresses,
/// which lie next to each other in both IP headers.
#[inline(always)]
fn addr_fold<H: Headers>(pkt: &H, layers: &Layers) -> Option<u32> {
    if layers.v6 {
        let mut buf = MaybeUninit::uninit();
        Some(xor_words::<32>(pkt.read(layers.l3 + 8, &mut buf)?))
    } else {
        let mut buf = MaybeUninit::uninit();
        Some(xor_words::<8>(pkt.read(layers.l3 + 12, &mut buf)?))
    }
}

/// XOR of the big-endian 32-bit words of `bytes` (N a multiple of 4).
#[inline(always)]
fn xor_words<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut folded = [0u8; 4];
    let mut i = 0;
    while i < N {
        folded[i % 4] ^= bytes[i];
        i += 1;
    }
    u32::from_be_bytes(folded)
}

/// Parses the packet's headers where they are cheapest to read: directly, and only when
/// that misses through the helper. Then measures the payload (the packet length is only
/// read for a match: XDP needs a helper call for it).
#[inline(always)]
fn classify<P: PacketBytes>(pkt: &P) -> Option<TcpMatch> {
    let direct = Direct::new(pkt);
    let mut found = parse(&direct);
    if found.is_none() && direct.missed.get() {
        found = parse(&Loaded(pkt));
    }
    let found = found?;
    let pkt_len = pkt.len();
    // Ethernet padding after a short IP packet is not payload: bound by the IP length.
    let end = if found.ip_end != 0 && found.ip_end < pkt_len {
        found.ip_end
    } else {
        pkt_len
    };
    Some(TcpMatch {
        flags: found.flags,
        payload_len: end.saturating_sub(found.payload_start),
        wire_len: pkt_len,
        flow_hash: found.flow_hash,
    })
}

/// Copies a matched packet into the ring, chunk by chunk, and counts the outcome.
///
/// Each chunk is a record reserved in the ring and filled by the load helper straight from
/// the packet: one copy. Reserved sizes must be constants the verifier sees, so every chunk
/// but the last is a full [`CHUNK_LEN`] and the last takes the smallest of
/// [`RECORD_DATA_SIZES`] that holds it; its header says how much of it is data.
#[inline(always)]
fn copy_packet<P: PacketBytes, C: aya_ebpf::EbpfContext>(
    ctx: &C,
    pkt: &P,
    tcp: &TcpMatch,
    direction: Direction,
    packet_seq: u64,
) {
    let wire_len = tcp.wire_len;
    let truncated = wire_len > MAX_PACKET_LEN;
    let captured_len = if truncated { MAX_PACKET_LEN } else { wire_len };
    let mut header = ChunkHeader {
        // SAFETY: helpers without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        packet_seq,
        cpu: unsafe { bpf_get_smp_processor_id() },
        ifindex: pkt.ifindex(),
        wire_len,
        captured_len,
        chunk_offset: 0,
        chunk_len: CHUNK_LEN,
        direction: direction as u8,
        flags: if truncated { FLAG_TRUNCATED } else { 0 },
        _pad: [0; 2],
        flow_hash: tcp.flow_hash,
    };
    let wakeup = wakeup_flags(captured_len);

    // Full chunks while more than one chunk is left (at most MAX_CHUNKS - 1 of them).
    let mut chunk = 1;
    while chunk < MAX_CHUNKS && captured_len - header.chunk_offset > CHUNK_LEN {
        if let Err(lost) = emit::<P, { CHUNK_LEN as usize }>(pkt, &header, wakeup) {
            return lost_packet(ctx, lost, wire_len);
        }
        header.chunk_offset += CHUNK_LEN;
        chunk += 1;
    }
    header.chunk_len = captured_len - header.chunk_offset;
    header.flags |= FLAG_LAST_CHUNK;
    if let Err(lost) = emit_last(pkt, &header, wakeup) {
        return lost_packet(ctx, lost, wire_len);
    }
    count(Counter::Captured);
    if truncated {
        count(Counter::Truncated);
    }
}

/// Batched wake-ups: the packet's records wake the reader only when they take the ring's
/// fill level across a multiple of `WAKEUP_BYTES`; otherwise the reader finds them on its
/// next timed poll. Waking on every record once the ring is that full (what a threshold
/// alone does while the reader lags) costs an interrupt per record, more than the copy.
#[inline(always)]
fn wakeup_flags(captured_len: u32) -> u64 {
    let before = PACKETS.query(BPF_RB_AVAIL_DATA as u64);
    // Close enough: ring record headers and size-class slack are left out.
    let after = before + u64::from(captured_len) + CHUNK_HEADER_LEN as u64;
    // With a power-of-two step, a multiple lies in (before, after] exactly when the two
    // differ in a bit at or above the step's.
    if before ^ after >= WAKEUP_BYTES.load() {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Counts a matched packet that could not be copied whole (`lost` says why).
#[inline(always)]
fn lost_packet<C: aya_ebpf::EbpfContext>(ctx: &C, lost: Counter, wire_len: u32) {
    count(lost);
    debug!(
        ctx,
        "dropped packet of {} bytes (counter {})", wire_len, lost as u32
    );
}

/// Writes the last chunk of a packet (1..=CHUNK_LEN bytes) into the smallest record size of
/// [`RECORD_DATA_SIZES`] that holds it.
#[inline(always)]
fn emit_last<P: PacketBytes>(pkt: &P, header: &ChunkHeader, wakeup: u64) -> Result<(), Counter> {
    const SIZES: [u32; 9] = RECORD_DATA_SIZES;
    let len = header.chunk_len;
    if len <= SIZES[0] {
        emit::<P, { SIZES[0] as usize }>(pkt, header, wakeup)
    } else if len <= SIZES[1] {
        emit::<P, { SIZES[1] as usize }>(pkt, header, wakeup)
    } else if len <= SIZES[2] {
        emit::<P, { SIZES[2] as usize }>(pkt, header, wakeup)
    } else if len <= SIZES[3] {
        emit::<P, { SIZES[3] as usize }>(pkt, header, wakeup)
    } else if len <= SIZES[4] {
        emit::<P, { SIZES[4] as usize }>(pkt, header, wakeup)
    } else if len <= SIZES[5] {
        emit::<P, { SIZES[5] as usize }>(pkt, header, wakeup)
    } else if len <= SIZES[6] {
        emit::<P, { SIZES[6] as usize }>(pkt, header, wakeup)
    } else if len <= SIZES[7] {
        emit::<P, { SIZES[7] as usize }>(pkt, header, wakeup)
    } else {
        emit::<P, { SIZES[8] as usize }>(pkt, header, wakeup)
    }
}

/// Reserves a ring record of the header and `N` data bytes, writes `header` into it and loads
/// the chunk it describes (`chunk_len` bytes, 1..=N, from `chunk_offset`) from the packet
/// behind it; submits it, or discards it when the load fails. `Err` names the counter of
/// the loss.
#[inline(always)]
fn emit<P: PacketBytes, const N: usize>(
    pkt: &P,
    header: &ChunkHeader,
    wakeup: u64,
) -> Result<(), Counter> {
    let Some(mut record) = PACKETS.reserve_bytes(CHUNK_HEADER_LEN + N, 0) else {
        return Err(Counter::DroppedRingFull);
    };
    let base = record.as_mut_ptr();
    // SAFETY: ring records are 8-byte aligned (ChunkHeader's alignment) and this one is
    // CHUNK_HEADER_LEN + N bytes long.
    unsafe { base.cast::<ChunkHeader>().write(*header) };
    // SAFETY: the data area starts right after the header, inside the record.
    let data = unsafe { base.add(CHUNK_HEADER_LEN) };
    if !pkt.load(
        header.chunk_offset,
        data,
        bounded_len::<N>(header.chunk_len),
    ) {
        record.discard(BPF_RB_NO_WAKEUP as u64);
        return Err(Counter::DroppedCopyFailed);
    }
    record.submit(wakeup);
    Ok(())
}

/// `len` (already 1..=N) written so the verifier can see it lies in 1..=N: the load helper
/// must not write past the record, and a length it cannot bound is rejected.
#[inline(always)]
fn bounded_len<const N: usize>(len: u32) -> u32 {
    // The optimiser knows len <= N from the size choice and would drop the mask and the
    // clamp below; the verifier may not know it (it tracked another register), so hide it.
    let len = core::hint::black_box(len);
    let mask = (N as u32).next_power_of_two() - 1;
    let len = ((len.wrapping_sub(1)) & mask) + 1;
    if len > N as u32 { N as u32 } else { len }
}

#[inline(always)]
fn handle<P: PacketBytes, C: aya_ebpf::EbpfContext>(ctx: &C, pkt: &P, direction: Direction) {
    count(Counter::Seen);
    let Some(tcp) = classify(pkt) else {
        return;
    };
    if tcp.payload_len == 0 && tcp.flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
        count(Counter::SkippedNoPayload);
        return;
    }
    // The CPU's matched count numbers its packets: it ties a packet's chunks together.
    let packet_seq = count(Counter::Matched);
    copy_packet(ctx, pkt, &tcp, direction, packet_seq);
}

/// TC classifier for the ingress hook.
#[classifier]
pub fn capture_tc_ingress(ctx: TcContext) -> i32 {
    handle(&ctx, &Skb(&ctx), Direction::Ingress);
    TC_ACT_UNSPEC
}

/// TC classifier for the egress hook.
#[classifier]
pub fn capture_tc_egress(ctx: TcContext) -> i32 {
    handle(&ctx, &Skb(&ctx), Direction::Egress);
    TC_ACT_UNSPEC
}

/// XDP program for ingress; multi-buffer aware so large frames are copied whole.
#[xdp(frags)]
pub fn capture_xdp(ctx: XdpContext) -> u32 {
    handle(&ctx, &Xdp(&ctx), Direction::Ingress);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
