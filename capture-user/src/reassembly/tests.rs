//! Unit tests of reassembly, fed literal segments: ordering, overlap, wrap-around, gaps,
//! caps, midstream starts, resets and idle expiry.

use super::*;
use crate::decode::TcpFlags;

fn c() -> SocketAddr {
    "10.0.0.1:40000".parse().unwrap()
}
fn s() -> SocketAddr {
    "10.0.0.2:80".parse().unwrap()
}

fn seg(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    flags: u8,
    payload: &'static [u8],
) -> TcpSegment {
    TcpSegment {
        src,
        dst,
        seq,
        ack: 0,
        flags: TcpFlags(flags),
        window: 0,
        payload: Bytes::from_static(payload),
    }
}

const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;
const FIN: u8 = TcpFlags::FIN | TcpFlags::ACK;
const PSH: u8 = TcpFlags::PSH | TcpFlags::ACK;

fn reasm() -> Reassembler {
    Reassembler::new(ReassemblyConfig::default(), |p| p == 80)
}

fn feed(r: &mut Reassembler, segs: &[TcpSegment]) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        r.push(Timestamp(i as u64 + 1), s.clone(), &mut out);
    }
    out
}

fn data(events: &[StreamEvent], want: FlowDir) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Data { dir, bytes, .. } if *dir == want => Some(bytes.to_vec()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn handshake(isn_c: u32, isn_s: u32) -> Vec<TcpSegment> {
    vec![
        seg(c(), s(), isn_c, SYN, b""),
        seg(s(), c(), isn_s, SYN | ACK, b""),
    ]
}

#[test]
fn in_order_exchange_with_fins_delivers_both_directions_and_closes() {
    let mut r = reasm();
    let mut segs = handshake(100, 900);
    segs.push(seg(c(), s(), 101, PSH, b"GET / HTTP/1.1\r\n\r\n"));
    segs.push(seg(s(), c(), 901, PSH, b"HTTP/1.1 200 OK\r\n\r\n"));
    segs.push(seg(c(), s(), 119, FIN, b""));
    segs.push(seg(s(), c(), 920, FIN, b""));
    let ev = feed(&mut r, &segs);
    assert!(matches!(ev[0], StreamEvent::Opened { midstream: false, client, .. } if client == c()));
    assert_eq!(data(&ev, FlowDir::ToServer), b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(data(&ev, FlowDir::ToClient), b"HTTP/1.1 200 OK\r\n\r\n");
    assert!(matches!(
        ev.last(),
        Some(StreamEvent::Closed {
            reason: CloseReason::Fin,
            ..
        })
    ));
    assert_eq!(r.connections(), 0);
}

#[test]
fn out_of_order_and_duplicate_segments_are_put_back_in_order_once() {
    let mut r = reasm();
    let mut segs = handshake(1000, 5000);
    segs.push(seg(c(), s(), 1007, PSH, b"world"));
    segs.push(seg(c(), s(), 1007, PSH, b"world"));
    segs.push(seg(c(), s(), 1001, PSH, b"hello "));
    segs.push(seg(c(), s(), 1001, PSH, b"hello "));
    segs.push(seg(c(), s(), 1004, PSH, b"lo wor")); // overlap, all old
    segs.push(seg(c(), s(), 1010, PSH, b"ld!")); // overlap, 1 new byte
    let ev = feed(&mut r, &segs);
    assert_eq!(data(&ev, FlowDir::ToServer), b"hello world!");
    assert!(r.stats().duplicate_segments >= 3);
    assert_eq!(r.stats().gaps, 0);
}

#[test]
fn sequence_numbers_wrap_around() {
    let mut r = reasm();
    let mut segs = handshake(u32::MAX - 3, 7);
    segs.push(seg(c(), s(), u32::MAX - 2, PSH, b"abcdef"));
    segs.push(seg(c(), s(), 3, PSH, b"ghi"));
    let ev = feed(&mut r, &segs);
    assert_eq!(data(&ev, FlowDir::ToServer), b"abcdefghi");
}

#[test]
fn a_hole_that_is_never_filled_becomes_a_gap_at_close_not_glued_bytes() {
    let mut r = reasm();
    let mut segs = handshake(0, 0);
    segs.push(seg(c(), s(), 1, PSH, b"aaa"));
    segs.push(seg(c(), s(), 10, PSH, b"bbb")); // 6 bytes missing
    let mut ev = feed(&mut r, &segs);
    r.finish(Timestamp(100), &mut ev);
    let kinds: Vec<_> = ev
        .iter()
        .filter(|e| matches!(e, StreamEvent::Data { .. } | StreamEvent::Gap { .. }))
        .collect();
    assert!(matches!(kinds[0], StreamEvent::Data { bytes, .. } if &bytes[..] == b"aaa"));
    assert!(matches!(kinds[1], StreamEvent::Gap { missing: 6, .. }));
    assert!(matches!(kinds[2], StreamEvent::Data { bytes, .. } if &bytes[..] == b"bbb"));
    assert!(matches!(
        ev.last(),
        Some(StreamEvent::Closed {
            reason: CloseReason::EndOfInput,
            ..
        })
    ));
}

#[test]
fn the_per_direction_buffer_cap_forces_a_gap_and_is_counted() {
    let mut r = Reassembler::new(
        ReassemblyConfig {
            max_buffered_per_direction: 8,
            ..ReassemblyConfig::default()
        },
        |p| p == 80,
    );
    let mut segs = handshake(0, 0);
    segs.push(seg(c(), s(), 100, PSH, b"12345"));
    segs.push(seg(c(), s(), 105, PSH, b"67890"));
    let ev = feed(&mut r, &segs);
    assert_eq!(r.stats().buffer_cap_hits, 1);
    assert!(
        ev.iter()
            .any(|e| matches!(e, StreamEvent::Gap { missing: 99, .. }))
    );
    assert_eq!(data(&ev, FlowDir::ToServer), b"1234567890");
    assert_eq!(r.held_bytes(), 0);
}

#[test]
fn midstream_connection_takes_the_server_from_the_port_set() {
    let mut r = reasm();
    let ev = feed(&mut r, &[seg(s(), c(), 777, PSH, b"tail of a response")]);
    assert!(matches!(
        ev[0],
        StreamEvent::Opened { midstream: true, client, server, .. } if client == c() && server == s()
    ));
    assert_eq!(data(&ev, FlowDir::ToClient), b"tail of a response");
    assert_eq!(r.stats().connections_midstream, 1);
}

#[test]
fn reset_closes_and_later_segments_are_ignored() {
    let mut r = reasm();
    let mut segs = handshake(0, 0);
    segs.push(seg(c(), s(), 1, TcpFlags::RST, b""));
    segs.push(seg(s(), c(), 1, TcpFlags::RST, b""));
    let ev = feed(&mut r, &segs);
    assert!(ev.iter().any(|e| matches!(
        e,
        StreamEvent::Closed {
            reason: CloseReason::Reset,
            ..
        }
    )));
    assert_eq!(r.connections(), 0);
    assert_eq!(r.stats().segments_ignored_after_close, 1);
}

#[test]
fn idle_connections_expire_by_capture_time() {
    let mut r = Reassembler::new(
        ReassemblyConfig {
            idle_timeout_ns: 5_000_000_000,
            ..ReassemblyConfig::default()
        },
        |p| p == 80,
    );
    let mut out = Vec::new();
    r.push(
        Timestamp(1_000_000_000),
        seg(c(), s(), 0, SYN, b""),
        &mut out,
    );
    let other: SocketAddr = "10.0.0.3:41000".parse().unwrap();
    r.push(
        Timestamp(10_000_000_000),
        seg(other, s(), 0, SYN, b""),
        &mut out,
    );
    assert!(out.iter().any(|e| matches!(
        e,
        StreamEvent::Closed {
            conn: 1,
            reason: CloseReason::Idle,
            ..
        }
    )));
    assert_eq!(r.connections(), 1);
    assert_eq!(r.stats().idle_timeouts, 1);
}

#[test]
fn the_connection_cap_is_enforced_and_counted() {
    let mut r = Reassembler::new(
        ReassemblyConfig {
            max_connections: 1,
            ..ReassemblyConfig::default()
        },
        |p| p == 80,
    );
    let other: SocketAddr = "10.0.0.3:41000".parse().unwrap();
    feed(
        &mut r,
        &[seg(c(), s(), 0, SYN, b""), seg(other, s(), 0, SYN, b"")],
    );
    assert_eq!(r.connections(), 1);
    assert_eq!(r.stats().connection_cap_hits, 1);
}

/// `(name, value)` of every field of a stats struct, in declaration order, from its Debug
/// output: what the counter table must list.
#[test]
fn counter_table_lists_every_field_in_order_and_marks_the_losses() {
    let stats = ReassemblyStats {
        connections: 1,
        connections_midstream: 2,
        connection_cap_hits: 3,
        segments: 4,
        segments_ignored_after_close: 5,
        duplicate_segments: 6,
        overlapping_bytes: 7,
        out_of_order_segments: 8,
        buffer_cap_hits: 9,
        total_buffer_cap_hits: 10,
        gaps: 11,
        gap_bytes: 12,
        idle_timeouts: 13,
        resets: 14,
    };
    let losses = [
        "connection_cap_hits",
        "buffer_cap_hits",
        "total_buffer_cap_hits",
        "gaps",
    ];
    crate::counters::check_table(stats, &losses);
}
