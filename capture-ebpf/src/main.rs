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

mod access;
mod parse;
mod record;
mod tls;

use access::{PacketBytes, Skb, Xdp};
use aya_ebpf::{
    Global,
    bindings::{TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use capture_common::{
    CHUNK_HEADER_LEN, CHUNK_LEN, COUNTER_SLOTS, ChunkHeader, Counter, Direction, FLAG_INNER_RAW_IP,
    FLAG_LAST_CHUNK, FLAG_TRUNCATED, MAX_CHUNKS, MAX_HOSTS, MAX_PACKET_LEN, PORT_WORDS, port_bit,
};
use parse::{TCP_FIN, TCP_RST, TCP_SYN, TcpMatch, classify};
use record::{Lost, Source, emit_full, emit_last, wakeup_flags};

/// Ports to capture as a bitmap (see `PORTS_MAP`). A packet matches when its source or
/// destination port is set.
#[map(name = "PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// `--host` networks (see `capture_common::HOSTS_MAP`): addresses as IPv6, IPv4 mapped.
#[map(name = "HOSTS")]
static HOSTS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_HOSTS, 0);

/// 1 when `--host` was given: packets must have an address in `HOSTS`. Set at load.
#[unsafe(no_mangle)]
static HOST_FILTER: Global<u8> = Global::new(0);

/// `--decap`: which encapsulations to look inside (`capture_common::DECAP_*` bits). Set at
/// load.
#[unsafe(no_mangle)]
static DECAP: Global<u8> = Global::new(0);

/// Packet chunks for userspace. Userspace resizes it at load time (`--ring-size`).
#[map(name = "PACKETS")]
static PACKETS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Per-CPU counters, indexed by [`Counter`].
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Wake-up step (bytes, a power of two; see `WAKEUP_BYTES_GLOBAL`): a record wakes the reader
/// when it takes the ring's fill level across a multiple of it. Set by userspace at load.
#[unsafe(no_mangle)]
pub(crate) static WAKEUP_BYTES: Global<u64> = Global::new(0);

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

/// The encapsulations `--decap` looks inside.
#[inline(always)]
fn decap() -> u8 {
    DECAP.load()
}

/// Whether addresses must be checked against the `--host` networks.
#[inline(always)]
fn host_filter_on() -> bool {
    HOST_FILTER.load() != 0
}

/// Whether `addr` (16 bytes, IPv4 mapped) lies in a `--host` network.
#[inline(always)]
fn host_wanted(addr: [u8; 16]) -> bool {
    HOSTS.get(Key::new(128, addr)).is_some()
}

/// Whether `port` is in the port set: one inlined array lookup and a bit test.
#[inline(always)]
pub(crate) fn port_wanted(port: u16) -> bool {
    let (word, bit) = port_bit(port);
    PORTS.get(word).is_some_and(|w| *w & bit != 0)
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
        flags: if truncated { FLAG_TRUNCATED } else { 0 }
            | if tcp.inner_raw_ip {
                FLAG_INNER_RAW_IP
            } else {
                0
            },
        // Inner packets start within the headers, far below 64 KiB.
        inner_offset: tcp.inner as u16,
        flow_hash: tcp.flow_hash,
    };
    let wakeup = wakeup_flags(
        &PACKETS,
        u64::from(captured_len) + CHUNK_HEADER_LEN as u64,
        WAKEUP_BYTES.load(),
    );
    let src = PacketSource(pkt);

    // Full chunks while more than one chunk is left (at most MAX_CHUNKS - 1 of them).
    let mut chunk = 1;
    while chunk < MAX_CHUNKS && captured_len - header.chunk_offset > CHUNK_LEN {
        if let Err(lost) = emit_full(&PACKETS, &header, &src, header.chunk_offset, wakeup) {
            return lost_packet(ctx, lost, wire_len);
        }
        header.chunk_offset += CHUNK_LEN;
        chunk += 1;
    }
    header.chunk_len = captured_len - header.chunk_offset;
    header.flags |= FLAG_LAST_CHUNK;
    let (offset, len) = (header.chunk_offset, header.chunk_len);
    if let Err(lost) = emit_last(&PACKETS, &header, &src, offset, len, wakeup) {
        return lost_packet(ctx, lost, wire_len);
    }
    count(Counter::Captured);
    if truncated {
        count(Counter::Truncated);
    }
}

/// Counts a matched packet that could not be copied whole (`lost` says why).
#[inline(always)]
fn lost_packet<C: aya_ebpf::EbpfContext>(ctx: &C, lost: Lost, wire_len: u32) {
    let counter = match lost {
        Lost::RingFull => Counter::DroppedRingFull,
        Lost::CopyFailed => Counter::DroppedCopyFailed,
    };
    count(counter);
    debug!(
        ctx,
        "dropped packet of {} bytes (counter {})", wire_len, counter as u32
    );
}

/// A packet as a record's data source.
struct PacketSource<'a, P>(&'a P);

impl<P: PacketBytes> Source for PacketSource<'_, P> {
    #[inline(always)]
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        self.0.load(offset, dst, len)
    }
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
    if tcp.inner != 0 {
        count(Counter::EncapsulatedMatched);
    }
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
