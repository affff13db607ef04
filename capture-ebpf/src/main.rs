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

use access::{PacketBytes, Skb, Xdp};
use aya_ebpf::{
    Global,
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC, xdp_action,
    },
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use capture_common::{
    CHUNK_HEADER_LEN, CHUNK_LEN, COUNTER_SLOTS, ChunkHeader, Counter, Direction, FLAG_INNER_RAW_IP,
    FLAG_LAST_CHUNK, FLAG_TRUNCATED, MAX_CHUNKS, MAX_HOSTS, MAX_PACKET_LEN, PORT_WORDS,
    RECORD_DATA_SIZES, port_bit,
};
use parse::{TCP_FIN, TCP_RST, TCP_SYN, TcpMatch, classify};

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
static WAKEUP_BYTES: Global<u64> = Global::new(0);

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
fn port_wanted(port: u16) -> bool {
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
