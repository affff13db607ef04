//! The common frame without etherparse: untagged Ethernet II carrying an unfragmented IPv4
//! packet, or an IPv6 packet without extension headers, with a whole TCP segment. That is
//! almost every frame a capture on a server sees, and reading it with a few fixed-offset
//! loads costs a fraction of the general slicer. Anything else, or anything doubtful (VLAN
//! tags, fragments, IPv6 extension headers, lengths that disagree), is left to the full
//! decoder, and where this path answers it answers exactly as the full decoder does (a
//! property test holds it to that).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use bytes::Bytes;

use super::{TcpFlags, TcpSegment};

const ETHERNET_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86DD;
const IPV6_HEADER_LEN: usize = 40;
const PROTO_TCP: u8 = 6;
const TCP_MIN_HEADER_LEN: usize = 20;
/// The flag bits a [`TcpFlags`] keeps (FIN, SYN, RST, PSH, ACK) are the header's low five.
const TCP_FLAG_BITS: u8 = 0x1F;

fn be16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

fn be32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// The segment (payload left empty) and where its payload lies in `frame`, for the common
/// Ethernet frame; `None` means "ask the full decoder", never "not TCP".
pub(super) fn ethernet_tcp(frame: &[u8]) -> Option<(TcpSegment, Range<usize>)> {
    if frame.len() < ETHERNET_LEN {
        return None;
    }
    let ip = &frame[ETHERNET_LEN..];
    let (src, dst, tcp) = match be16(frame, 12) {
        ETHERTYPE_IPV4 => ipv4(ip)?,
        ETHERTYPE_IPV6 => ipv6(ip)?,
        _ => return None,
    };
    let tcp_start = ETHERNET_LEN + tcp.start;
    let segment = &frame[tcp_start..ETHERNET_LEN + tcp.end];
    if segment.len() < TCP_MIN_HEADER_LEN {
        return None;
    }
    let header_len = usize::from(segment[12] >> 4) * 4;
    if header_len < TCP_MIN_HEADER_LEN || header_len > segment.len() {
        return None;
    }
    let found = TcpSegment {
        src: SocketAddr::new(src, be16(segment, 0)),
        dst: SocketAddr::new(dst, be16(segment, 2)),
        seq: be32(segment, 4),
        ack: be32(segment, 8),
        flags: TcpFlags(segment[13] & TCP_FLAG_BITS),
        window: be16(segment, 14),
        payload: Bytes::new(),
    };
    Some((found, tcp_start + header_len..ETHERNET_LEN + tcp.end))
}

/// Addresses and where the TCP segment lies in `ip`, for an unfragmented IPv4 TCP packet
/// whose total length fits what was captured.
fn ipv4(ip: &[u8]) -> Option<(IpAddr, IpAddr, Range<usize>)> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(ip[0] & 0x0F) * 4;
    let total_len = usize::from(be16(ip, 2));
    // More-fragments flag or a fragment offset: a fragment, which the full decoder names.
    let fragment = be16(ip, 6) & 0x3FFF != 0;
    if header_len < 20 || total_len < header_len || total_len > ip.len() || fragment {
        return None;
    }
    if ip[9] != PROTO_TCP {
        return None;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    Some((src.into(), dst.into(), header_len..total_len))
}

/// Addresses and where the TCP segment lies in `ip`, for an IPv6 packet whose next header
/// is TCP itself (no extension headers) and whose payload length fits what was captured.
fn ipv6(ip: &[u8]) -> Option<(IpAddr, IpAddr, Range<usize>)> {
    if ip.len() < IPV6_HEADER_LEN || ip[0] >> 4 != 6 || ip[6] != PROTO_TCP {
        return None;
    }
    let payload_len = usize::from(be16(ip, 4));
    // Zero is a jumbogram's (or a GSO packet's) length: the full decoder knows those rules.
    if payload_len == 0 || IPV6_HEADER_LEN + payload_len > ip.len() {
        return None;
    }
    let address = |at: usize| -> Option<IpAddr> {
        let octets: [u8; 16] = ip.get(at..at + 16)?.try_into().ok()?;
        Some(Ipv6Addr::from(octets).into())
    };
    Some((
        address(8)?,
        address(24)?,
        IPV6_HEADER_LEN..IPV6_HEADER_LEN + payload_len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::slow_headers;
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    /// A frame built by etherparse: IPv4 or IPv6, TCP with the given flags and payload.
    fn frame(v6: bool, ports: (u16, u16), flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]);
        let ip = if v6 {
            eth.ipv6([0x20; 16], [0x21; 16], 64)
        } else {
            eth.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        let mut tcp = ip.tcp(ports.0, ports.1, seq, 4096);
        if flags & TcpFlags::SYN != 0 {
            tcp = tcp.syn();
        }
        if flags & TcpFlags::FIN != 0 {
            tcp = tcp.fin();
        }
        if flags & TcpFlags::RST != 0 {
            tcp = tcp.rst();
        }
        if flags & TcpFlags::PSH != 0 {
            tcp = tcp.psh();
        }
        if flags & TcpFlags::ACK != 0 {
            tcp = tcp.ack(seq.wrapping_mul(3));
        }
        let mut out = Vec::new();
        tcp.write(&mut out, payload)
            .expect("etherparse builds the frame");
        out
    }

    #[test]
    fn common_frames_take_the_fast_path_and_agree_with_etherparse() {
        for v6 in [false, true] {
            let f = frame(
                v6,
                (40000, 8080),
                TcpFlags::PSH | TcpFlags::ACK,
                7,
                b"GET /",
            );
            let fast = ethernet_tcp(&f).expect("the common frame is read fast");
            assert_eq!(Ok(fast.clone()), slow_headers(&f));
            assert_eq!(&f[fast.1], b"GET /");
        }
    }

    #[test]
    fn ethernet_padding_is_left_out_of_the_payload() {
        let mut f = frame(false, (1, 2), TcpFlags::ACK, 1, b"");
        f.extend_from_slice(&[0; 6]);
        let (_, payload) = ethernet_tcp(&f).expect("padded frame");
        assert!(payload.is_empty());
    }

    #[test]
    fn doubtful_frames_are_left_to_the_full_decoder() {
        let good = frame(false, (1, 2), TcpFlags::ACK, 1, b"abc");
        let mut fragment = good.clone();
        fragment[ETHERNET_LEN + 6] |= 0x20; // more fragments
        let mut vlan = good.clone();
        vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        let mut long = good.clone();
        long[ETHERNET_LEN + 2..ETHERNET_LEN + 4].copy_from_slice(&2000u16.to_be_bytes());
        let mut udp = good.clone();
        udp[ETHERNET_LEN + 9] = 17;
        for f in [fragment, vlan, long, udp, good[..30].to_vec()] {
            assert_eq!(ethernet_tcp(&f), None);
        }
    }

    proptest! {
        /// Wherever the fast path answers, etherparse gives the same segment and payload,
        /// on well-formed frames and on frames with bytes overwritten anywhere.
        #[test]
        fn agrees_with_etherparse_wherever_it_answers(
            v6 in any::<bool>(),
            ports in any::<(u16, u16)>(),
            flags in 0u8..0x20,
            seq in any::<u32>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            pokes in proptest::collection::vec((0usize..120, any::<u8>()), 0..4),
            cut in 0usize..140,
        ) {
            let mut f = frame(v6, ports, flags, seq, &payload);
            for (at, value) in pokes {
                if let Some(b) = f.get_mut(at) {
                    *b = value;
                }
            }
            f.truncate(f.len().min(cut.max(ETHERNET_LEN)));
            if let Some(fast) = ethernet_tcp(&f) {
                prop_assert_eq!(Ok(fast), slow_headers(&f));
            }
        }

        /// Unmodified frames always take the fast path.
        #[test]
        fn well_formed_frames_always_take_the_fast_path(
            v6 in any::<bool>(),
            ports in any::<(u16, u16)>(),
            flags in 0u8..0x20,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let f = frame(v6, ports, flags, 1, &payload);
            prop_assert!(ethernet_tcp(&f).is_some());
        }
    }
}
