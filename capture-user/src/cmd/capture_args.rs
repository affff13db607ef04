//! Flags shared by every command that captures live traffic; they build a
//! [`CaptureConfig`], whose defaults they show.

use crate::live::hosts::{Decap, HostNet};
use crate::live::{AttachMode, CaptureConfig, EbpfLogLevel, parse_ring_size};
use crate::redact::Redaction;
use crate::tls::{TlsScope, TlsSide, TlsSocketHooks};
use crate::units::parse_port;

/// Where and what to capture. Interfaces and ports are checked by the loader, so `messages`
/// can take these flags and still read a file instead.
#[derive(Clone, Debug, clap::Args)]
pub struct CaptureArgs {
    /// Interface to capture on (repeat for several; list them with `ip link`): a name, a
    /// shell-style pattern ('veth*', 'cali*', 'lxc*'), or `any` (every interface but lo,
    /// unless lo is named too). Patterns also take interfaces that appear later (pods that
    /// start), within a second; interfaces that go away are let go of and counted.
    #[arg(long = "iface", short = 'i', value_name = "IF|PATTERN|any")]
    pub interfaces: Vec<String>,

    /// TCP port to capture (repeat for several, up to 1024). A packet matches when its source
    /// or destination port is one of them.
    #[arg(long = "port", short = 'p', value_name = "P", value_parser = parse_port)]
    pub ports: Vec<u16>,

    /// Keep only packets whose source or destination is in this network: an address
    /// (10.1.2.3, fd00::5) or a CIDR (10.1.0.0/16, fd00::/64); repeat for several. Decided in
    /// the kernel (a longest-prefix-match trie), so one service's pods can be recorded by
    /// their IPs on a busy node. Default: every address.
    #[arg(long = "host", value_name = "IP|CIDR")]
    pub hosts: Vec<HostNet>,

    /// Look inside overlay encapsulations and capture the inner traffic: vxlan (UDP 4789),
    /// geneve (UDP 6081), ipip (IPv4 in IPv4), comma-separated, or all. Ports and --host apply
    /// to the inner packet; the recording holds the inner connections. Without it,
    /// encapsulated packets are only counted (`encapsulated`), which explains an overlay's
    /// traffic not being matched.
    #[arg(long = "decap", value_name = "LIST", default_value = "none")]
    pub decap: Decap,

    /// Kernel hook: `tc` sees both directions (requests and responses); `xdp` sees only
    /// what the interface receives, at lower cost. XDP tries native mode, then generic.
    #[arg(long = "attach", value_enum, default_value_t = CaptureConfig::default().mode)]
    pub attach: AttachMode,

    /// Size of the kernel ring buffer shared by all CPUs (power of two, e.g. 16MiB). A
    /// larger ring absorbs longer bursts before packets are dropped (drops are counted).
    #[arg(long = "ring-size", value_name = "BYTES", default_value = format!("{}MiB", CaptureConfig::default().ring_bytes >> 20), value_parser = parse_ring_size)]
    pub ring_bytes: u32,

    /// Forward eBPF log lines at this level to stderr (for debugging; costs per packet).
    #[arg(long = "ebpf-log", value_enum, default_value_t = CaptureConfig::default().ebpf_log)]
    pub ebpf_log: EbpfLogLevel,

    /// Replace the values of this header with "[redacted]" before anything is stored or
    /// printed (repeat for several; names are case-insensitive), e.g. --redact-header
    /// Authorization --redact-header Cookie --redact-header Set-Cookie. HTTP/2 trailers
    /// too; bodies are not touched. Replay then sends the marker unless --set-header gives
    /// the header a value.
    #[arg(long = "redact-header", value_name = "NAME", value_parser = parse_header_name)]
    pub redact_headers: Vec<String>,

    /// Capture HTTPS as plaintext at the TLS library instead of packets: uprobes on
    /// OpenSSL's SSL_read/SSL_write (libssl.so.3 and 1.1) in every process of the node,
    /// including containers and processes that start later. No keys are needed and the
    /// applications are not touched, but the recording holds decrypted traffic: use
    /// --redact-header for credentials. --port selects connections by their TCP ports, and
    /// --iface is not used. TLS linked statically (Go, Envoy's BoringSSL) is not seen; the
    /// processes serving --port without libssl are listed at start.
    #[arg(long = "tls", conflicts_with_all = ["interfaces", "attach", "hosts", "decap"])]
    pub tls: bool,

    /// With --tls: which end to record, the process serving --port (server), the one calling
    /// it (client), or both (a connection between two processes of this node then shows
    /// twice).
    #[arg(long = "tls-side", value_enum, default_value_t = TlsSide::Both, requires = "tls")]
    pub tls_side: TlsSide,

    /// With --tls: probe OpenSSL's exported SSL_read/SSL_write (and their _ex forms) even
    /// where the internal functions they all call were found. By default reads and writes
    /// are probed at those internal functions when the library's code shows them, because
    /// the kernel steps their first instruction without a trap (a probe on SSL_read costs
    /// two traps per call on Debian's build); this is the way back should a build's
    /// internal function not behave as expected.
    #[arg(long = "tls-exported-probes", requires = "tls")]
    pub tls_exported_probes: bool,

    /// With --tls: how the probes learn which TCP connection each TLS stream is on. `auto`
    /// uses the sock_send_length and sock_recv_length raw tracepoints (Linux 6.4 on), which
    /// run only on socket I/O, and falls back to the socket syscall tracepoints on older
    /// kernels. `syscalls` forces those: they run on every read and write of every process
    /// on the node (about 0.3 us each on a small VM), so use it only where the sock
    /// tracepoints misbehave.
    #[arg(
        long = "tls-socket-hooks",
        value_enum,
        default_value_t = TlsSocketHooks::Auto,
        requires = "tls"
    )]
    pub tls_socket_hooks: TlsSocketHooks,

    /// With --tls --tls-side server: which processes the probes trap in. `all` (the default)
    /// probes every process that maps libssl, so a server that starts later is recorded
    /// from its first call, but every TLS call on the node (clients, sidecars, other
    /// services) traps into the kernel. `servers` probes only the processes listening on
    /// --port, so the node's other TLS users pay nothing; a server that starts (or starts
    /// listening) later is probed within about a second, and its calls before that are
    /// not recorded.
    #[arg(
        long = "tls-scope",
        value_enum,
        default_value_t = TlsScope::All,
        requires = "tls"
    )]
    pub tls_scope: TlsScope,

    /// Attach TC programs as legacy netlink filters on a clsact qdisc instead of TCX links.
    #[arg(long = "tc-netlink", hide = true)]
    pub tc_netlink: bool,
}

impl CaptureArgs {
    /// The loader's view of these arguments.
    pub fn to_config(&self) -> anyhow::Result<CaptureConfig> {
        Ok(CaptureConfig {
            interfaces: self.interfaces.clone(),
            ports: self.ports.clone(),
            hosts: self.hosts.clone(),
            decap: self.decap,
            mode: self.attach,
            ring_bytes: self.ring_bytes,
            ebpf_log: self.ebpf_log,
            tc_netlink: self.tc_netlink,
            redaction: Redaction::new(&self.redact_headers)?,
            tls: self.tls.then_some(self.tls_side),
            tls_exported_probes: self.tls_exported_probes,
            tls_socket_hooks: self.tls_socket_hooks,
            tls_scope: self.tls_scope,
        })
    }
}

/// "vethp1, vethp2 (vethp*)": the interfaces attached to at start, and the patterns when they
/// are not just those names.
pub fn interfaces_line(given: &[String], attached: &[String]) -> String {
    if given == attached {
        return attached.join(", ");
    }
    let now = if attached.is_empty() {
        "no interface yet".to_string()
    } else {
        attached.join(", ")
    };
    format!("{now} (following {})", given.join(", "))
}

/// A `--redact-header` name: an HTTP token.
pub(crate) fn parse_header_name(text: &str) -> Result<String, String> {
    Redaction::new(&[text])
        .map(|_| text.trim().to_string())
        .map_err(|e| e.to_string())
}
