//! Parsing a packet's headers down to TCP: Ethernet (one VLAN tag), IPv4 (options) or IPv6
//! (extension headers, bounded), the ports checked against the port set, the payload
//! measured and the connection's flow hash computed. Reads no more than that needs, so a
//! packet of another port costs little.

use core::mem::MaybeUninit;

use capture_common::flow_hash;

use crate::access::{Direct, Headers, Loaded, PacketBytes};
use crate::{count, decap, host_filter_on, host_wanted, port_wanted};
use capture_common::{Counter, DECAP_GENEVE, DECAP_IPIP, DECAP_VXLAN};

pub(crate) const ETH_HDR_LEN: u32 = 14;
pub(crate) const ETH_P_IPV4: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86DD;
pub(crate) const ETH_P_8021Q: u16 = 0x8100;
pub(crate) const ETH_P_8021AD: u16 = 0x88A8;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
pub(crate) const IPPROTO_IPIP: u8 = 4;
/// VXLAN's and Geneve's IANA UDP ports, where `--decap` looks.
pub(crate) const VXLAN_PORT: u16 = 4789;
pub(crate) const GENEVE_PORT: u16 = 6081;
/// Geneve's protocol type for an Ethernet payload (transparent Ethernet bridging).
pub(crate) const ETH_P_TEB: u16 = 0x6558;
pub(crate) const TCP_FIN: u8 = 0x01;
pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
/// Extension headers walked before giving up on an IPv6 packet (bounded for the verifier).
pub(crate) const MAX_IPV6_EXT_HEADERS: u32 = 6;

#[inline(always)]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// What the parser learned about a TCP packet on a configured port.
pub(crate) struct TcpMatch {
    pub(crate) flags: u8,
    pub(crate) payload_len: u32,
    /// Length of the whole packet.
    pub(crate) wire_len: u32,
    /// The connection's `flow_hash`.
    pub(crate) flow_hash: u32,
    /// As [`Layers::inner`] and [`Layers::inner_raw_ip`].
    pub(crate) inner: u32,
    pub(crate) inner_raw_ip: bool,
}

/// Where the IP header and the TCP header start, and where the IP packet ends: the inner
/// packet's when it was found inside an encapsulation.
pub(crate) struct Layers {
    /// Offset of the IP header.
    pub(crate) l3: u32,
    /// IPv6 rather than IPv4.
    pub(crate) v6: bool,
    /// Offset of the TCP header.
    pub(crate) l4: u32,
    /// Offset just past the IP packet, or 0 when the IP header does not say (BIG TCP GSO
    /// packets carry length 0: the packet length is the truth then).
    pub(crate) ip_end: u32,
    /// Where the decapsulated packet starts (its Ethernet header, or its IP header for
    /// IP-in-IP), 0 when the packet was not encapsulated.
    pub(crate) inner: u32,
    /// The decapsulated packet starts with its IP header.
    pub(crate) inner_raw_ip: bool,
}

/// One IP header: where it and its payload start, what the payload is, where it ends.
struct Ip {
    l3: u32,
    v6: bool,
    proto: u8,
    l4: u32,
    ip_end: u32,
}

impl Ip {
    #[inline(always)]
    fn layers(&self, inner: u32, inner_raw_ip: bool) -> Layers {
        Layers {
            l3: self.l3,
            v6: self.v6,
            l4: self.l4,
            ip_end: self.ip_end,
            inner,
            inner_raw_ip,
        }
    }
}

/// Parses Ethernet (optionally one VLAN tag) and IPv4 or IPv6 (with extension headers) down
/// to the TCP header, looking inside VXLAN, Geneve and IP-in-IP when `--decap` asks (one
/// level); `None` unless the (inner) packet is TCP and carries its TCP header (first
/// fragment).
#[inline(always)]
pub(crate) fn parse_ip<H: Headers>(pkt: &H) -> Option<Layers> {
    let (ethertype, l3) = ethernet(pkt, 0)?;
    let outer = ip(pkt, ethertype, l3)?;
    if outer.proto == IPPROTO_TCP {
        return Some(outer.layers(0, false));
    }
    let (at, raw_ip) = encapsulated(pkt, &outer)?;
    let inner = if raw_ip {
        ip(pkt, ETH_P_IPV4, at)?
    } else {
        let (ethertype, l3) = ethernet(pkt, at)?;
        ip(pkt, ethertype, l3)?
    };
    if inner.proto != IPPROTO_TCP {
        return None;
    }
    Some(inner.layers(at, raw_ip))
}

/// The Ethernet header at `at` (optionally one VLAN tag): the ethertype and where the IP
/// header starts.
#[inline(always)]
fn ethernet<H: Headers>(pkt: &H, at: u32) -> Option<(u16, u32)> {
    let mut eth_buf = MaybeUninit::uninit();
    let eth: &[u8; 2] = pkt.read(at + 12, &mut eth_buf)?;
    let ethertype = u16::from_be_bytes(*eth);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let mut inner_buf = MaybeUninit::uninit();
        let inner: &[u8; 2] = pkt.read(at + 16, &mut inner_buf)?;
        return Some((u16::from_be_bytes(*inner), at + ETH_HDR_LEN + 4));
    }
    Some((ethertype, at + ETH_HDR_LEN))
}

/// The IPv4 or IPv6 header at `l3`; `None` for other protocols and later fragments.
#[inline(always)]
fn ip<H: Headers>(pkt: &H, ethertype: u16, l3: u32) -> Option<Ip> {
    match ethertype {
        ETH_P_IPV4 => {
            let mut ip_buf = MaybeUninit::uninit();
            let ip: &[u8; 10] = pkt.read(l3, &mut ip_buf)?;
            // Later fragments carry no transport header.
            if ip[0] >> 4 != 4 || be16(ip, 6) & 0x1FFF != 0 {
                return None;
            }
            let ihl = ((ip[0] & 0x0F) as u32) * 4;
            if ihl < 20 {
                return None;
            }
            let total = be16(ip, 2) as u32;
            Some(Ip {
                l3,
                v6: false,
                proto: ip[9],
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
            let (proto, l4) = ipv6_payload(pkt, ip[6], l3 + 40)?;
            Some(Ip {
                l3,
                v6: true,
                proto,
                l4,
                ip_end: if payload == 0 { 0 } else { l3 + 40 + payload },
            })
        }
        _ => None,
    }
}

/// Whether `outer` carries an encapsulated packet (counted whether or not `--decap` asks to
/// look inside), and if `--decap` asks: where the inner packet starts and whether it starts
/// with its IP header.
#[inline(always)]
fn encapsulated<H: Headers>(pkt: &H, outer: &Ip) -> Option<(u32, bool)> {
    let (kind, at, raw_ip) = match outer.proto {
        IPPROTO_IPIP if !outer.v6 => (DECAP_IPIP, outer.l4, true),
        IPPROTO_UDP => {
            let mut udp_buf = MaybeUninit::uninit();
            let udp: &[u8; 4] = pkt.read(outer.l4, &mut udp_buf)?;
            match be16(udp, 2) {
                VXLAN_PORT => (DECAP_VXLAN, outer.l4 + 8 + 8, false),
                GENEVE_PORT => {
                    let mut geneve_buf = MaybeUninit::uninit();
                    let geneve: &[u8; 4] = pkt.read(outer.l4 + 8, &mut geneve_buf)?;
                    // Only an Ethernet payload (transparent Ethernet bridging) is framed.
                    if be16(geneve, 2) != ETH_P_TEB {
                        return None;
                    }
                    let options = ((geneve[0] & 0x3F) as u32) * 4;
                    (DECAP_GENEVE, outer.l4 + 8 + 8 + options, false)
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    count(Counter::Encapsulated);
    if decap() & kind == 0 {
        return None;
    }
    Some((at, raw_ip))
}

/// Walks IPv6 extension headers from `off` (next header `next`) to the payload: its protocol
/// and offset; `None` for a later fragment or too many extension headers.
#[inline(always)]
pub(crate) fn ipv6_payload<H: Headers>(pkt: &H, mut next: u8, mut off: u32) -> Option<(u8, u32)> {
    let mut i = 0;
    while i < MAX_IPV6_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units.
            0 | 43 | 60 => {
                let mut ext_buf = MaybeUninit::uninit();
                let ext: &[u8; 2] = pkt.read(off, &mut ext_buf)?;
                next = ext[0];
                off += (ext[1] as u32 + 1) * 8;
            }
            // Fragment header: only the first fragment has the transport header.
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
            _ => return Some((next, off)),
        }
        i += 1;
    }
    None
}

/// What the parser learned about a TCP packet on a configured port.
pub(crate) struct Found {
    pub(crate) flags: u8,
    /// Offset of the TCP payload.
    pub(crate) payload_start: u32,
    /// As [`Layers::inner`] and [`Layers::inner_raw_ip`].
    pub(crate) inner: u32,
    pub(crate) inner_raw_ip: bool,
    /// As [`Layers::ip_end`].
    pub(crate) ip_end: u32,
    /// The connection's `flow_hash`.
    pub(crate) flow_hash: u32,
}

/// Parses down to the TCP header and checks the ports; `None` unless the packet is TCP (first
/// fragment) with a configured source or destination port. Reads no more than that needs, so
/// a packet of another port costs little.
#[inline(always)]
pub(crate) fn parse<H: Headers>(pkt: &H) -> Option<Found> {
    let layers = parse_ip(pkt)?;
    let mut tcp_buf = MaybeUninit::uninit();
    let tcp: &[u8; 14] = pkt.read(layers.l4, &mut tcp_buf)?;
    let src_port = be16(tcp, 0);
    let dst_port = be16(tcp, 2);
    if !port_wanted(dst_port) && !port_wanted(src_port) {
        return None;
    }
    if host_filter_on() && !hosts_match(pkt, &layers)? {
        count(Counter::SkippedHost);
        return None;
    }
    Some(Found {
        flags: tcp[13],
        payload_start: layers.l4 + ((tcp[12] >> 4) as u32) * 4,
        ip_end: layers.ip_end,
        inner: layers.inner,
        inner_raw_ip: layers.inner_raw_ip,
        flow_hash: flow_hash(addr_fold(pkt, &layers)?, src_port, dst_port),
    })
}

/// Whether the source or the destination address is in a `--host` network; `None` when the
/// addresses cannot be read.
#[inline(always)]
pub(crate) fn hosts_match<H: Headers>(pkt: &H, layers: &Layers) -> Option<bool> {
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    if layers.v6 {
        let mut buf = MaybeUninit::uninit();
        let addrs: &[u8; 32] = pkt.read(layers.l3 + 8, &mut buf)?;
        let mut i = 0;
        while i < 16 {
            src[i] = addrs[i];
            dst[i] = addrs[16 + i];
            i += 1;
        }
    } else {
        let mut buf = MaybeUninit::uninit();
        let addrs: &[u8; 8] = pkt.read(layers.l3 + 12, &mut buf)?;
        src[10] = 0xff;
        src[11] = 0xff;
        dst[10] = 0xff;
        dst[11] = 0xff;
        let mut i = 0;
        while i < 4 {
            src[12 + i] = addrs[i];
            dst[12 + i] = addrs[4 + i];
            i += 1;
        }
    }
    Some(host_wanted(src) || host_wanted(dst))
}

/// The source and destination addresses folded for `flow_hash`: `fold_v4(src) ^ fold_v4(dst)`
/// (or `fold_v6`), computed as the XOR of every big-endian 32-bit word of the two addresses,
/// which lie next to each other in both IP headers.
#[inline(always)]
pub(crate) fn addr_fold<H: Headers>(pkt: &H, layers: &Layers) -> Option<u32> {
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
pub(crate) fn xor_words<const N: usize>(bytes: &[u8; N]) -> u32 {
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
pub(crate) fn classify<P: PacketBytes>(pkt: &P) -> Option<TcpMatch> {
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
        inner: found.inner,
        inner_raw_ip: found.inner_raw_ip,
    })
}
