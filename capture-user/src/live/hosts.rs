//! What the kernel keeps beyond ports. `--host IP|CIDR`: record one service's pods by their
//! addresses. A packet on a captured port is kept when its source or destination is in one of
//! the given networks; the kernel decides, with a longest-prefix-match trie keyed by the
//! address as IPv6 (IPv4 mapped into `::ffff:0:0/96`), so one trie serves both families.
//! `--decap`: look inside overlay encapsulations (VXLAN, Geneve, IP-in-IP), where traffic
//! between nodes travels, and match and frame the inner packets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use capture_common::{DECAP_GENEVE, DECAP_IPIP, DECAP_VXLAN};

/// One `--host` value: an address and how many leading bits of it count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl HostNet {
    /// The trie's key for this network: (prefix length in bits of the IPv6 form, address).
    pub fn trie_key(&self) -> (u32, [u8; 16]) {
        match self.addr {
            IpAddr::V4(v4) => (
                96 + u32::from(self.prefix_len),
                v4.to_ipv6_mapped().octets(),
            ),
            IpAddr::V6(v6) => (u32::from(self.prefix_len), v6.octets()),
        }
    }
}

impl FromStr for HostNet {
    type Err = String;

    /// `10.1.2.3`, `10.1.0.0/16`, `fd00::5`, `fd00::/64`.
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "--host {text:?}: {why}; expected an address or a CIDR such as 10.0.0.0/8 or fd00::/64"
            )
        };
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| bad(&format!("the prefix length must be 0 to {max}")))?,
            None => max,
        };
        Ok(Self {
            addr: masked(addr, prefix_len),
            prefix_len,
        })
    }
}

impl std::fmt::Display for HostNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// The encapsulations `--decap` looks inside.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decap(u8);

impl Decap {
    /// The kernel side's `DECAP_*` bits.
    pub fn bits(self) -> u8 {
        self.0
    }
}

impl FromStr for Decap {
    type Err = String;

    /// `vxlan,geneve,ipip` (any of them), `all` or `none`.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut bits = 0;
        for name in text.split(',').map(str::trim) {
            bits |= match name {
                "vxlan" => DECAP_VXLAN,
                "geneve" => DECAP_GENEVE,
                "ipip" => DECAP_IPIP,
                "all" => DECAP_VXLAN | DECAP_GENEVE | DECAP_IPIP,
                "none" => 0,
                other => {
                    return Err(format!(
                        "--decap {other:?}: expected vxlan, geneve, ipip (comma-separated), all or none"
                    ));
                }
            };
        }
        Ok(Self(bits))
    }
}

/// `addr` with the bits beyond `prefix_len` cleared (what the network is).
fn masked(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_networks_of_both_families_parse_into_trie_keys() {
        let one: HostNet = "10.1.2.3".parse().unwrap();
        assert_eq!(one.prefix_len, 32);
        let (bits, key) = one.trie_key();
        assert_eq!(bits, 128);
        assert_eq!(&key[10..], &[0xff, 0xff, 10, 1, 2, 3]);
        let net: HostNet = "10.1.2.3/16".parse().unwrap();
        assert_eq!(net.to_string(), "10.1.0.0/16");
        assert_eq!(net.trie_key().0, 112);
        let v6: HostNet = "fd00::5/128".parse().unwrap();
        assert_eq!(
            v6.trie_key(),
            (128, "fd00::5".parse::<Ipv6Addr>().unwrap().octets())
        );
        let all: HostNet = "::/0".parse().unwrap();
        assert_eq!(all.trie_key().0, 0);
    }

    #[test]
    fn decap_takes_a_list_of_encapsulations() {
        assert_eq!(
            "vxlan,ipip".parse::<Decap>().unwrap().bits(),
            DECAP_VXLAN | DECAP_IPIP
        );
        assert_eq!("all".parse::<Decap>().unwrap().bits(), 7);
        assert_eq!("none".parse::<Decap>().unwrap(), Decap::default());
        assert!("gre".parse::<Decap>().unwrap_err().contains("gre"));
    }

    #[test]
    fn bad_values_say_what_is_expected() {
        for bad in ["10.1.2", "10.0.0.0/33", "fd00::/129", "host", "10.0.0.0/x"] {
            let err = bad.parse::<HostNet>().unwrap_err();
            assert!(err.contains(bad) && err.contains("CIDR"), "{err}");
        }
    }
}
