//! What a live capture is asked for, checked before anything touches the kernel: interfaces,
//! ports, hosts, the ring's size and the privileges, each bad value failing with a message that
//! names it and the fix.

use crate::redact::Redaction;
use std::collections::{BTreeMap, BTreeSet};

use capture_common::{MAX_HOSTS, MAX_PORTS, port_bit};

use super::hosts::{Decap, HostNet};
use super::interfaces::{InterfacePatterns, check_link};

/// Which kernel hook captures packets.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TC classifier on ingress and egress: sees requests and responses.
    Tc,
    /// XDP on ingress only: cheapest per packet, but blind to what the host sends.
    Xdp,
}

/// eBPF log level forwarded to `aya-log` (off by default: logging costs per packet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EbpfLogLevel {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Ring size when none is given: absorbs bursts of a busy node for tens of milliseconds.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// Checks a ring size: the kernel wants a power of two of at least a page, and more than
/// 1 GiB of locked memory per capture is never what a node wants.
pub fn check_ring_bytes(bytes: u64) -> Result<u32, LoaderError> {
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > 1 << 30 {
        return Err(LoaderError::BadRingSize(bytes));
    }
    Ok(bytes as u32)
}

/// Parses a ring size as people write it (`16MiB`), checked by [`check_ring_bytes`].
pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let bytes = crate::units::parse_byte_size(text)?;
    check_ring_bytes(bytes).map_err(|e| e.to_string())
}

/// What to capture and where.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Interfaces to attach to: names, globs (`veth*`) or `any` (see
    /// [`InterfacePatterns`]); at least one.
    pub interfaces: Vec<String>,
    /// TCP ports; a packet matches when its source or destination port is one of them.
    pub ports: Vec<u16>,
    /// `--host` networks: when given, a packet must also have its source or destination
    /// address in one of them.
    pub hosts: Vec<HostNet>,
    /// `--decap`: encapsulations whose inner packets are matched and copied.
    pub decap: Decap,
    /// Hook to use.
    pub mode: AttachMode,
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// eBPF log level.
    pub ebpf_log: EbpfLogLevel,
    /// Use legacy netlink TC filters (with a clsact qdisc) instead of TCX links. The default
    /// picks TCX on kernels that have it (6.6+); this exists to exercise the legacy path.
    pub tc_netlink: bool,
    /// `--redact-header`: values replaced before messages leave the framing thread.
    pub redaction: Redaction,
    /// `--tls`: capture the plaintext of TLS libraries instead of packets (which sides).
    pub tls: Option<crate::tls::TlsSide>,
    /// `--tls-exported-probes`: probe `SSL_read`/`SSL_write` themselves even where the
    /// internal functions they share were found (see [`crate::tls::sites`]).
    pub tls_exported_probes: bool,
    /// `--tls-socket-hooks`: how the probes learn each SSL object's connection.
    pub tls_socket_hooks: crate::tls::TlsSocketHooks,
    /// `--tls-scope`: which processes the library probes trap in.
    pub tls_scope: crate::tls::TlsScope,
}

impl Default for CaptureConfig {
    /// Nothing to capture yet (interfaces and ports must be given), TC hooks, the default
    /// ring, no eBPF logs.
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            ports: Vec::new(),
            hosts: Vec::new(),
            decap: Decap::default(),
            mode: AttachMode::Tc,
            ring_bytes: DEFAULT_RING_BYTES,
            ebpf_log: EbpfLogLevel::Off,
            tc_netlink: false,
            redaction: Redaction::default(),
            tls: None,
            tls_exported_probes: false,
            tls_socket_hooks: crate::tls::TlsSocketHooks::Auto,
            tls_scope: crate::tls::TlsScope::All,
        }
    }
}

impl LoaderError {
    /// The caller asked for something impossible (as opposed to the machine failing).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::InterfaceNotFound(_)
                | Self::BadInterfacePattern { .. }
                | Self::UnsupportedLinkType { .. }
                | Self::NoInterface
                | Self::NoPort
                | Self::PortZero
                | Self::TooManyPorts { .. }
                | Self::TooManyHosts { .. }
                | Self::BadRingSize(_)
        )
    }
}

/// Why a capture could not start. Each message names the thing and the fix.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("interface {0} not found; list interfaces with `ip link`")]
    InterfaceNotFound(String),
    #[error(
        "interface pattern {pattern:?} is not a valid glob ({reason}); use a name, `any`, or a shell-style pattern such as 'veth*'"
    )]
    BadInterfacePattern { pattern: String, reason: String },
    #[error(
        "interface {name} has link type {link_type}, not Ethernet or loopback; capture needs an Ethernet-like device"
    )]
    UnsupportedLinkType { name: String, link_type: String },
    #[error("no interface given; pass --iface IF (list with `ip link`)")]
    NoInterface,
    #[error("no port given; pass --port P (1-65535)")]
    NoPort,
    #[error("port 0 is not a valid TCP port; use 1-65535")]
    PortZero,
    #[error("{count} ports given but at most {max} fit the port map")]
    TooManyPorts { count: usize, max: u32 },
    #[error("{count} --host networks given but at most {max} fit the host map; use wider CIDRs")]
    TooManyHosts { count: usize, max: u32 },
    #[error("ring size {0} bytes is not a power of two between 4KiB and 1GiB; try 16MiB")]
    BadRingSize(u64),
    #[error(
        "capturing needs root or CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON; run with sudo or via `cargo xtask run`"
    )]
    MissingPrivileges,
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {0} missing from the object (build mismatch; rebuild)")]
    MissingProgram(&'static str),
    #[error("eBPF map {0} missing from the object (build mismatch; rebuild)")]
    MissingMap(&'static str),
    #[error("preparing eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("attaching {hook} to interface {iface}: {source}")]
    Attach {
        hook: &'static str,
        iface: String,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("adding a clsact qdisc to {iface}: {source}")]
    Qdisc {
        iface: String,
        source: aya::programs::tc::TcError,
    },
}

/// The non-zero words of the port bitmap the programs test ports against, by word index.
pub(crate) fn port_words(ports: &[u16]) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for &port in ports {
        let (word, bit) = port_bit(port);
        *words.entry(word).or_insert(0) |= bit;
    }
    words
}

/// Checks everything that can be checked before touching the kernel, so bad input fails
/// fast with nothing attached.
pub fn validate(config: &CaptureConfig) -> Result<InterfacePatterns, LoaderError> {
    let interfaces = InterfacePatterns::parse(&config.interfaces)?;
    validate_ports_and_limits(config)?;
    for iface in interfaces.exact_names() {
        check_link(iface)?;
    }
    if !has_capture_privileges() {
        return Err(LoaderError::MissingPrivileges);
    }
    Ok(interfaces)
}

/// The checks every capture needs, from interfaces or from TLS libraries alike: ports,
/// hosts, ring size and privileges.
pub fn validate_ports_and_limits(config: &CaptureConfig) -> Result<(), LoaderError> {
    if config.ports.is_empty() {
        return Err(LoaderError::NoPort);
    }
    if config.ports.contains(&0) {
        return Err(LoaderError::PortZero);
    }
    let unique: BTreeSet<u16> = config.ports.iter().copied().collect();
    if unique.len() > MAX_PORTS as usize {
        return Err(LoaderError::TooManyPorts {
            count: unique.len(),
            max: MAX_PORTS,
        });
    }
    if config.hosts.len() > MAX_HOSTS as usize {
        return Err(LoaderError::TooManyHosts {
            count: config.hosts.len(),
            max: MAX_HOSTS,
        });
    }
    check_ring_bytes(u64::from(config.ring_bytes))?;
    if !has_capture_privileges() {
        return Err(LoaderError::MissingPrivileges);
    }
    Ok(())
}

/// True when the effective capabilities allow loading BPF and attaching to interfaces.
/// CAP_PERFMON (or CAP_SYS_ADMIN) counts too: without it the verifier refuses the packet
/// parser's pointer arithmetic with a dump no operator can act on.
fn has_capture_privileges() -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    (has(CAP_SYS_ADMIN) || has(CAP_BPF) && has(CAP_PERFMON)) && has(CAP_NET_ADMIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_words_set_one_bit_per_port_and_merge_shared_words() {
        let words = port_words(&[80, 8080, 8081, 1, 65535, 80]);
        let expected: BTreeMap<u32, u64> = [
            (0, 1 << 1),
            (1, 1 << 16),                 // 80 = 64 + 16
            (126, (1 << 16) | (1 << 17)), // 8080 = 126 * 64 + 16
            (1023, 1 << 63),
        ]
        .into_iter()
        .collect();
        assert_eq!(words, expected);
        for port in [0u16, 79, 81, 8079, 8082, 65534] {
            let (word, bit) = port_bit(port);
            assert_eq!(words.get(&word).copied().unwrap_or(0) & bit, 0, "{port}");
        }
    }
}
