//! Packet decode: link layer (Ethernet with one 802.1Q tag, Linux cooked, raw IP, BSD null),
//! IPv4 (with options), IPv6 (with extension headers) and TCP (with options), down to a
//! [`TcpSegment`] whose payload is a zero-copy slice of the captured frame.
//!
//! Sans-IO: fed bytes, returns a segment or a [`DecodeError`] naming why not. Callers count
//! errors by [`DecodeError::reason`]; nothing here panics on any input.

mod fast;

use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, Bytes};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// How a frame starts, i.e. the pcap link type of the capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkType {
    /// Ethernet II, optionally VLAN tagged (live capture on Ethernet-like devices and loopback).
    Ethernet,
    /// Linux "cooked" capture v1 (`tcpdump -i any`).
    LinuxSll,
    /// No link header: the frame starts with the IP header.
    RawIp,
    /// BSD loopback: a 4-byte address family in host order, then IP.
    Null,
}

impl LinkType {
    /// Maps a pcap/pcapng link type number; `None` for link types we cannot decode.
    pub fn from_pcap(linktype: u32) -> Option<Self> {
        match linktype {
            0 => Some(Self::Null),
            1 => Some(Self::Ethernet),
            101 | 12 | 14 | 228 | 229 => Some(Self::RawIp),
            113 => Some(Self::LinuxSll),
            _ => None,
        }
    }
}

/// TCP header flags of a segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;

    /// Connection open (first packet of each side's handshake).
    pub fn syn(self) -> bool {
        self.0 & Self::SYN != 0
    }
    /// Orderly close of one direction.
    pub fn fin(self) -> bool {
        self.0 & Self::FIN != 0
    }
    /// Abortive close.
    pub fn rst(self) -> bool {
        self.0 & Self::RST != 0
    }
    /// The acknowledgment field is valid.
    pub fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }
    /// Sender asked to push data to the application.
    pub fn psh(self) -> bool {
        self.0 & Self::PSH != 0
    }
}

impl std::fmt::Display for TcpFlags {
    /// tcpdump style: `S`, `.` for ACK, `F`, `R`, `P`, e.g. `S.` for SYN-ACK.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut any = false;
        for (set, c) in [
            (self.syn(), 'S'),
            (self.fin(), 'F'),
            (self.rst(), 'R'),
            (self.psh(), 'P'),
            (self.ack(), '.'),
        ] {
            if set {
                write!(f, "{c}")?;
                any = true;
            }
        }
        if !any {
            write!(f, "none")?;
        }
        Ok(())
    }
}

/// One decoded TCP segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number of the first payload byte (or of the SYN/FIN).
    pub seq: u32,
    /// Acknowledgment number (valid when `flags.ack()`).
    pub ack: u32,
    /// Header flags.
    pub flags: TcpFlags,
    /// Advertised receive window (unscaled).
    pub window: u16,
    /// TCP payload, a slice of the captured frame (no copy). Ethernet padding is excluded.
    pub payload: Bytes,
}

impl TcpSegment {
    /// The symmetric hash of the segment's connection, the userspace twin of what the kernel
    /// side puts in each ring record (see [`capture_common::flow_hash`]): both directions of
    /// a connection get the same value.
    pub fn flow_hash(&self) -> u32 {
        capture_common::flow_hash_of(self.src, self.dst)
    }
}

/// [`TcpSegment::flow_hash`] of a frame, or 0 when it is not a TCP segment: equal to what
/// live capture gets from the kernel for the same frame (tests and benchmarks build packets
/// with it).
pub fn frame_flow_hash(link: LinkType, frame: &Bytes) -> u32 {
    decode_tcp(link, frame).map_or(0, |segment| segment.flow_hash())
}

/// Why a frame did not yield a TCP segment. Each variant is one counted reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame ended before a header did (also: packets cut by capture truncation).
    #[error("frame too short: {0}")]
    Truncated(String),
    /// A header had impossible values.
    #[error("malformed header: {0}")]
    Malformed(String),
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    #[error("not an IP packet")]
    NotIp,
    /// IP, but not TCP.
    #[error("not a TCP packet")]
    NotTcp,
    /// An IP fragment: TCP headers are only whole after IP reassembly, which we do not do.
    #[error("IP fragment")]
    Fragment,
}

impl DecodeError {
    /// Short stable name used as the counter label in summaries and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Truncated(_) => "truncated",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::NotIp => "not_ip",
            DecodeError::NotTcp => "not_tcp",
            DecodeError::Fragment => "ip_fragment",
        }
    }
}

fn slice_error(err: etherparse::err::packet::SliceError) -> DecodeError {
    use etherparse::err::packet::SliceError;
    match err {
        SliceError::Len(e) => DecodeError::Truncated(e.to_string()),
        other => DecodeError::Malformed(other.to_string()),
    }
}

/// Decodes one frame of the given link type into a TCP segment.
pub fn decode_tcp(link: LinkType, frame: &Bytes) -> Result<TcpSegment, DecodeError> {
    let (mut segment, payload) = decode_headers(link, frame)?;
    segment.payload = frame.slice(payload);
    Ok(segment)
}

/// [`decode_tcp`] consuming the frame: the payload is the frame itself, narrowed, so no
/// reference count is touched (the hot path decodes every packet once and keeps only this).
pub fn decode_tcp_owned(link: LinkType, mut frame: Bytes) -> Result<TcpSegment, DecodeError> {
    let (mut segment, payload) = decode_headers(link, &frame)?;
    frame.truncate(payload.end);
    frame.advance(payload.start);
    segment.payload = frame;
    Ok(segment)
}

/// The segment without its payload, and where the payload lies in `frame`: the common
/// Ethernet frame read directly, anything else by etherparse.
fn decode_headers(
    link: LinkType,
    frame: &[u8],
) -> Result<(TcpSegment, std::ops::Range<usize>), DecodeError> {
    if link == LinkType::Ethernet
        && let Some(found) = fast::ethernet_tcp(frame)
    {
        return Ok(found);
    }
    sliced_headers(link, frame)
}

/// What etherparse makes of an Ethernet frame: what the fast path must agree with.
#[cfg(test)]
fn slow_headers(frame: &[u8]) -> Result<(TcpSegment, std::ops::Range<usize>), DecodeError> {
    sliced_headers(LinkType::Ethernet, frame)
}

/// [`decode_headers`] by etherparse, for every link type and every shape of packet.
fn sliced_headers(
    link: LinkType,
    frame: &[u8],
) -> Result<(TcpSegment, std::ops::Range<usize>), DecodeError> {
    let sliced = match link {
        LinkType::Ethernet => SlicedPacket::from_ethernet(frame),
        LinkType::LinuxSll => SlicedPacket::from_linux_sll(frame),
        LinkType::RawIp => SlicedPacket::from_ip(frame),
        LinkType::Null => {
            let ip = frame
                .get(4..)
                .ok_or_else(|| DecodeError::Truncated("BSD loopback header".into()))?;
            SlicedPacket::from_ip(ip)
        }
    }
    .map_err(slice_error)?;

    let (src_ip, dst_ip, fragmented): (IpAddr, IpAddr, bool) = match &sliced.net {
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            (
                h.source_addr().into(),
                h.destination_addr().into(),
                v4.payload().fragmented,
            )
        }
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            (
                h.source_addr().into(),
                h.destination_addr().into(),
                v6.payload().fragmented,
            )
        }
        Some(NetSlice::Arp(_)) | None => return Err(DecodeError::NotIp),
    };
    let tcp = match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => tcp,
        _ if fragmented => return Err(DecodeError::Fragment),
        _ => return Err(DecodeError::NotTcp),
    };
    if fragmented {
        return Err(DecodeError::Fragment);
    }
    let payload = tcp.payload();
    // The payload is a subslice of `frame` (etherparse slices, never copies).
    let start = payload.as_ptr() as usize - frame.as_ptr() as usize;
    let segment = TcpSegment {
        src: SocketAddr::new(src_ip, tcp.source_port()),
        dst: SocketAddr::new(dst_ip, tcp.destination_port()),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        flags: TcpFlags(flags_byte(tcp)),
        window: tcp.window_size(),
        payload: Bytes::new(),
    };
    Ok((segment, start..start + payload.len()))
}

fn flags_byte(tcp: &etherparse::TcpSlice<'_>) -> u8 {
    let mut flags = 0;
    for (set, bit) in [
        (tcp.fin(), TcpFlags::FIN),
        (tcp.syn(), TcpFlags::SYN),
        (tcp.rst(), TcpFlags::RST),
        (tcp.psh(), TcpFlags::PSH),
        (tcp.ack(), TcpFlags::ACK),
    ] {
        if set {
            flags |= bit;
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn build_v4(payload: &[u8], vlan: bool) -> Bytes {
        let builder = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]);
        let builder = if vlan {
            builder
                .single_vlan(etherparse::VlanId::try_new(42).expect("valid vlan id"))
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        } else {
            builder.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        let builder = builder.tcp(40000, 8080, 1000, 512).psh().ack(77);
        let mut out = Vec::new();
        builder
            .write(&mut out, payload)
            .expect("building test packet");
        Bytes::from(out)
    }

    #[test]
    fn ipv4_tcp_payload_is_a_slice_of_the_frame() {
        let frame = build_v4(b"GET / HTTP/1.1\r\n\r\n", false);
        let seg = decode_tcp(LinkType::Ethernet, &frame).expect("decodes");
        assert_eq!(seg.src, "10.0.0.1:40000".parse().expect("addr"));
        assert_eq!(seg.dst, "10.0.0.2:8080".parse().expect("addr"));
        assert_eq!(seg.seq, 1000);
        assert_eq!(seg.ack, 77);
        assert!(seg.flags.psh() && seg.flags.ack() && !seg.flags.syn());
        assert_eq!(&seg.payload[..], b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(seg.flags.to_string(), "P.");
    }

    /// An Ethernet frame (802.1Q-tagged when `vlan`) with a TCP segment from `src` to `dst`.
    fn tcp_frame(src: SocketAddr, dst: SocketAddr, vlan: bool) -> Bytes {
        let eth = PacketBuilder::ethernet2([1; 6], [2; 6]);
        let ip = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => etherparse::IpHeaders::Ipv4(
                etherparse::Ipv4Header::new(
                    0,
                    64,
                    etherparse::IpNumber::TCP,
                    s.octets(),
                    d.octets(),
                )
                .expect("ipv4 header"),
                Default::default(),
            ),
            (IpAddr::V6(s), IpAddr::V6(d)) => etherparse::IpHeaders::Ipv6(
                etherparse::Ipv6Header {
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                    ..Default::default()
                },
                Default::default(),
            ),
            _ => panic!("mixed address families"),
        };
        let mut out = Vec::new();
        if vlan {
            eth.single_vlan(etherparse::VlanId::try_new(7).expect("valid vlan id"))
                .ip(ip)
                .tcp(src.port(), dst.port(), 1, 100)
                .write(&mut out, b"x")
        } else {
            eth.ip(ip)
                .tcp(src.port(), dst.port(), 1, 100)
                .write(&mut out, b"x")
        }
        .expect("build");
        Bytes::from(out)
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    #[test]
    fn flow_hash_is_the_same_both_ways_and_matches_the_frame() {
        for (a, b) in [
            ("10.0.0.1:40000", "10.0.0.2:8080"),
            ("[2001:db8::10]:51234", "[2001:db8:1::20]:443"),
        ] {
            let (a, b) = (addr(a), addr(b));
            let there = capture_common::flow_hash_of(a, b);
            assert_eq!(there, capture_common::flow_hash_of(b, a), "{a} {b}");
            for vlan in [false, true] {
                let out = tcp_frame(a, b, vlan);
                let back = tcp_frame(b, a, vlan);
                assert_eq!(frame_flow_hash(LinkType::Ethernet, &out), there);
                assert_eq!(frame_flow_hash(LinkType::Ethernet, &back), there);
                let seg = decode_tcp(LinkType::Ethernet, &back).expect("decodes");
                assert_eq!(seg.flow_hash(), there);
            }
        }
        // Another connection between the same hosts hashes elsewhere.
        assert_ne!(
            capture_common::flow_hash_of(addr("10.0.0.1:40000"), addr("10.0.0.2:8080")),
            capture_common::flow_hash_of(addr("10.0.0.1:40001"), addr("10.0.0.2:8080"))
        );
    }

    #[test]
    fn flow_hash_keeps_its_values() {
        // Computed independently (a few lines of Python following capture_common::flow_hash)
        // so a change of the function, which the kernel side shares, is noticed.
        let v4 = capture_common::flow_hash_of(addr("192.168.1.10:51234"), addr("93.184.216.34:80"));
        assert_eq!(v4, 0x953b_875f);
        let v6 = capture_common::flow_hash_of(
            addr("[2001:db8::10]:51234"),
            addr("[2001:db8:1::20]:443"),
        );
        assert_eq!(v6, 0x035c_ec89);
    }

    /// Largest deviation of a shard's count from the mean when `hashes` are spread over
    /// `shards` by `hash % shards`, in standard deviations of a uniform random spread
    /// (about sqrt(mean)): a good hash stays within a few, a poor one is off by dozens.
    fn worst_shard_deviation(hashes: &[u32], shards: u32) -> f64 {
        let mut counts = vec![0u64; shards as usize];
        for h in hashes {
            counts[(h % shards) as usize] += 1;
        }
        let mean = hashes.len() as f64 / f64::from(shards);
        counts
            .iter()
            .map(|&c| (c as f64 - mean).abs() / mean.sqrt())
            .fold(0.0, f64::max)
    }

    #[test]
    fn flow_hash_spreads_connections_evenly_over_shards() {
        let server = addr("10.1.0.1:8080");
        // One client, every ephemeral port (what one busy load balancer looks like).
        let ports: Vec<u32> = (32768..61000u16)
            .map(|p| {
                capture_common::flow_hash_of(SocketAddr::new(addr("10.2.0.7:1").ip(), p), server)
            })
            .collect();
        // Many clients, a few ports each.
        let hosts: Vec<u32> = (0..20_000u32)
            .map(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a03_0000 + i / 4);
                let port = 40000 + (i % 4) as u16;
                capture_common::flow_hash_of(SocketAddr::new(ip.into(), port), server)
            })
            .collect();
        // IPv6 clients differing in the low bits only.
        let v6: Vec<u32> = (0..20_000u128)
            .map(|i| {
                let ip = std::net::Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0001_0000 + i);
                capture_common::flow_hash_of(SocketAddr::new(ip.into(), 50000), server)
            })
            .collect();
        for (name, hashes) in [("ports", &ports), ("hosts", &hosts), ("v6", &v6)] {
            for shards in [2, 3, 4, 7, 8, 16] {
                let worst = worst_shard_deviation(hashes, shards);
                assert!(
                    worst < 4.5,
                    "{name}: {shards} shards, worst {worst:.2} sigma"
                );
            }
            // High bits too, for shard choices that take them.
            let top: Vec<u32> = hashes.iter().map(|h| h >> 28).collect();
            let worst = worst_shard_deviation(&top, 16);
            assert!(worst < 4.5, "{name}: high bits, worst {worst:.2} sigma");
        }
    }

    #[test]
    fn frames_that_are_not_tcp_hash_to_zero() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(53, 53)
            .write(&mut out, b"dns")
            .expect("build");
        assert_eq!(frame_flow_hash(LinkType::Ethernet, &Bytes::from(out)), 0);
        assert_eq!(
            frame_flow_hash(LinkType::Ethernet, &Bytes::from_static(b"short")),
            0
        );
    }

    #[test]
    fn vlan_tagged_frame_decodes() {
        let frame = build_v4(b"hi", true);
        let seg = decode_tcp(LinkType::Ethernet, &frame).expect("decodes");
        assert_eq!(&seg.payload[..], b"hi");
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut raw = build_v4(b"", false).to_vec();
        raw.resize(60, 0); // minimum Ethernet frame: 6 bytes of padding
        let seg = decode_tcp(LinkType::Ethernet, &Bytes::from(raw)).expect("decodes");
        assert!(seg.payload.is_empty());
    }

    #[test]
    fn ipv6_with_extension_header_decodes() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6([1; 16], [2; 16], 64)
            .tcp(1234, 80, 5, 100)
            .syn()
            .write(&mut out, &[])
            .expect("build");
        // Insert a hop-by-hop header (8 bytes, no options but padding) after the IPv6 header.
        let mut with_ext = out[..14 + 40].to_vec();
        with_ext[14 + 6] = 0; // next header: hop-by-hop
        let payload_len = u16::from_be_bytes([with_ext[14 + 4], with_ext[14 + 5]]) + 8;
        with_ext[14 + 4..14 + 6].copy_from_slice(&payload_len.to_be_bytes());
        with_ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // next=TCP, len=0, PadN
        with_ext.extend_from_slice(&out[14 + 40..]);
        let seg = decode_tcp(LinkType::Ethernet, &Bytes::from(with_ext)).expect("decodes");
        assert!(seg.flags.syn());
        assert_eq!(seg.dst.port(), 80);
        assert!(seg.src.is_ipv6());
    }

    #[test]
    fn truncated_frame_is_an_error_not_a_panic() {
        let frame = build_v4(b"hello world", false);
        for cut in 0..frame.len() - 11 {
            let err = decode_tcp(LinkType::Ethernet, &frame.slice(..cut)).expect_err("too short");
            assert!(matches!(
                err,
                DecodeError::Truncated(_) | DecodeError::NotIp | DecodeError::Malformed(_)
            ));
        }
    }

    #[test]
    fn udp_is_not_tcp() {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
            .udp(53, 53)
            .write(&mut out, b"x")
            .expect("build");
        assert_eq!(
            decode_tcp(LinkType::Ethernet, &Bytes::from(out)),
            Err(DecodeError::NotTcp)
        );
    }

    #[test]
    fn raw_ip_and_null_link_types() {
        let frame = build_v4(b"abc", false);
        let ip = frame.slice(14..);
        assert_eq!(
            &decode_tcp(LinkType::RawIp, &ip).expect("raw").payload[..],
            b"abc"
        );
        let mut null = vec![2, 0, 0, 0];
        null.extend_from_slice(&ip);
        assert_eq!(
            &decode_tcp(LinkType::Null, &Bytes::from(null))
                .expect("null")
                .payload[..],
            b"abc"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678_u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            let frame = Bytes::from(bytes);
            for link in [
                LinkType::Ethernet,
                LinkType::LinuxSll,
                LinkType::RawIp,
                LinkType::Null,
            ] {
                match decode_tcp(link, &frame) {
                    Ok(seg) => assert!(seg.payload.len() < frame.len()),
                    Err(err) => assert!(!err.reason().is_empty()),
                }
            }
        }
    }
}
