//! Arguments shared by every command that captures live traffic.

use crate::live::{AttachMode, CaptureConfig, EbpfLogLevel};

/// Where and what to capture.
#[derive(Clone, Debug, clap::Args)]
pub struct CaptureArgs {
    /// Interface to capture on (repeat for several). List them with `ip link`.
    #[arg(long = "iface", short = 'i', value_name = "IF", required = true)]
    pub interfaces: Vec<String>,

    /// TCP port to capture (repeat for several, up to 1024). A packet matches when its source
    /// or destination port is one of them.
    #[arg(long = "port", short = 'p', value_name = "P", required = true, value_parser = parse_port)]
    pub ports: Vec<u16>,

    /// Kernel hook: `tc` sees both directions (requests and responses); `xdp` sees only
    /// what the interface receives, at lower cost. XDP tries native mode, then generic.
    #[arg(long = "attach", value_enum, default_value_t = AttachMode::Tc)]
    pub attach: AttachMode,

    /// Size of the kernel ring buffer shared by all CPUs (power of two, e.g. 16MiB). A
    /// larger ring absorbs longer bursts before packets are dropped (drops are counted).
    #[arg(long = "ring-size", value_name = "BYTES", default_value = "16MiB", value_parser = parse_ring_size)]
    pub ring_bytes: u32,

    /// Forward eBPF log lines at this level to stderr (for debugging; costs per packet).
    #[arg(long = "ebpf-log", value_enum, default_value_t = EbpfLogLevel::Off)]
    pub ebpf_log: EbpfLogLevel,

    /// Attach TC programs as legacy netlink filters on a clsact qdisc instead of TCX links.
    #[arg(long = "tc-netlink", hide = true)]
    pub tc_netlink: bool,
}

impl CaptureArgs {
    /// The loader's view of these arguments.
    pub fn to_config(&self) -> CaptureConfig {
        CaptureConfig {
            interfaces: self.interfaces.clone(),
            ports: self.ports.clone(),
            mode: self.attach,
            ring_bytes: self.ring_bytes,
            ebpf_log: self.ebpf_log,
            tc_netlink: self.tc_netlink,
        }
    }
}

/// Parses a TCP port with a message that says the valid range.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        Ok(_) => Err(format!("TCP ports are 1-65535, got {text}")),
        Err(_) => Err(format!("not a port number: {text:?}; use 1-65535")),
    }
}

/// Parses a byte size such as `4096`, `512KiB`, `16MiB`, `1GiB` (K/M/G are binary too).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("not a size: {text:?}; write e.g. 16MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit {other:?}; use KiB, MiB or GiB")),
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text} is too large"))
}

/// Ring size when none is given.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// Parses a ring size: a power of two between 4 KiB and 1 GiB.
pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let bytes = parse_byte_size(text)?;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > 1 << 30 {
        return Err(format!(
            "ring size must be a power of two between 4KiB and 1GiB, got {text}; try 16MiB"
        ));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_outside_the_tcp_range_are_refused_with_the_range() {
        assert_eq!(parse_port("8080"), Ok(8080));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("0").unwrap_err().contains("1-65535"));
        assert!(parse_port("70000").unwrap_err().contains("1-65535"));
        assert!(parse_port("http").unwrap_err().contains("1-65535"));
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_byte_size("2k"), Ok(2048));
        assert!(parse_byte_size("12 parsecs").is_err());
        assert!(parse_byte_size("99999999999999999999").is_err());
        assert!(parse_ring_size("3MiB").is_err());
        assert_eq!(parse_ring_size("1MiB"), Ok(1 << 20));
    }
}
