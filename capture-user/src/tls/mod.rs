//! `--tls`: HTTP captured as plaintext at the TLS library, with no key and without touching
//! the application. Uprobes on OpenSSL's read and write calls (in `capture-ebpf`) copy what
//! the application hands over into a ring; this module finds the libraries ([`libraries`]),
//! attaches the probes and follows processes that start, exec or load libssl later
//! ([`probes`], [`capture`], [`watch`]),
//! joins the ring's chunks into calls ([`record`]) and turns calls into the stream events
//! the HTTP/1 and HTTP/2 framers take ([`streams`]). [`btf`] reads the kernel structure
//! offsets the probes need to find each stream's TCP connection.
//!
//! What it cannot see: TLS linked statically into a program (Go's crypto/tls, BoringSSL in
//! Envoy), and libraries other than OpenSSL's libssl. Capture lists the processes serving a
//! configured port that map no libssl.

pub mod btf;
pub mod capture;
pub mod libraries;
pub mod listeners;
pub mod probes;
pub mod record;
pub mod sites;
pub mod streams;
pub mod watch;

use std::path::PathBuf;

use capture_common::tls::{TLS_SIDE_CLIENT, TLS_SIDE_SERVER, TlsCounter};

pub use capture::TlsCapture;
pub use libraries::Unhooked;
pub use streams::TlsStreamStats;

/// How the probes learn which TCP connection an SSL object uses: from the socket sends and
/// receives made inside its calls, seen by the `sock:sock_send_length`/`sock_recv_length`
/// tracepoints (Linux 6.4 on; only socket I/O pays for them), or by the socket syscall
/// tracepoints (which every read and write of every process pays for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsSocketHooks {
    /// The `sock` tracepoints where the kernel has them, the syscall tracepoints otherwise.
    #[default]
    Auto,
    /// The `sock` tracepoints only; an error on kernels without them.
    Sock,
    /// The syscall tracepoints only.
    Syscalls,
}

/// Which processes the library probes trap in: every process that maps a probed libssl, or
/// only the processes listening on a configured port. A uprobe traps into the kernel at
/// every probed call of every process it is installed in, whatever the port; scoped to the
/// servers, the node's other TLS users (clients, sidecars, other services) never trap.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TlsScope {
    /// Every process mapping a libssl, from its first call, including processes that start
    /// later.
    #[default]
    All,
    /// Only processes listening on a configured port (needs the server side), each from the
    /// watcher's first look at it as a server: within about a second of it appearing or
    /// listening.
    Servers,
}

/// Which end of a connection on a configured port to record: the process serving the port,
/// the process calling it, or both (a connection between two processes of the node then
/// shows twice, once from each end).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TlsSide {
    /// Processes whose local port is a configured port (servers).
    Server,
    /// Processes whose remote port is a configured port (clients).
    Client,
    /// Both.
    #[default]
    Both,
}

impl TlsSide {
    /// The kernel side's `TLS_SIDE_*` bits.
    pub fn bits(self) -> u8 {
        match self {
            Self::Server => TLS_SIDE_SERVER,
            Self::Client => TLS_SIDE_CLIENT,
            Self::Both => TLS_SIDE_SERVER | TLS_SIDE_CLIENT,
        }
    }

    /// "server side", "client side", "both sides": how messages and recordings name it.
    pub fn phrase(self) -> &'static str {
        match self {
            Self::Server => "server side",
            Self::Client => "client side",
            Self::Both => "both sides",
        }
    }
}

/// Why TLS capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed; mount it with \
         `mount -t tracefs tracefs /sys/kernel/tracing`"
    )]
    Tracefs,
    #[error("loading the TLS probes failed: {0}")]
    Load(String),
    #[error("attaching to {library}: {reason}")]
    Attach { library: PathBuf, reason: String },
    #[error(
        "no libssl found (searched the usual library directories and every process's maps); \
         --tls captures OpenSSL's libssl only"
    )]
    NoLibrary,
    #[error(
        "--tls captures from TLS libraries, not interfaces: drop --iface (run a second capture \
         for clear-text traffic)"
    )]
    WithInterfaces,
    #[error(
        "--tls-scope servers probes the processes serving --port, so it records their side \
         only: add --tls-side server (the processes calling a port are not known in advance)"
    )]
    ScopeNeedsServerSide,
    #[error(transparent)]
    Config(#[from] crate::live::LoaderError),
}

/// Counters of a TLS capture.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsStats {
    /// The probes' per-CPU counters summed, indexed like [`TlsCounter::ALL`].
    pub kernel: [u64; TlsCounter::ALL.len()],
    pub streams: TlsStreamStats,
    /// Calls whose chunks did not line up, discarded.
    pub discarded_calls: u64,
    /// Libraries probed.
    pub libraries: Vec<String>,
    /// Reads and writes (two per library at most) probed at the internal function the
    /// exported ones share, which costs one trap per call instead of two
    /// ([`sites`]); the others are probed at `SSL_read`/`SSL_write`.
    pub internal_sites: u64,
    /// `sock` tracepoints attached to learn connections (2), or 0 when the socket syscall
    /// tracepoints do it ([`TlsSocketHooks`]).
    pub sock_tracepoints: u64,
    /// Processes probed one by one (`--tls-scope servers`) now; 0 when every process
    /// mapping a probed library is.
    pub processes: u64,
    /// `--tls-scope servers`: probes are attached per serving process.
    pub scoped: bool,
    /// Processes on a configured port with no libssl mapped.
    pub unhooked: Vec<Unhooked>,
}

impl TlsStats {
    /// Every counter as (name, value).
    pub fn pairs(&self) -> Vec<(String, u64)> {
        TlsCounter::ALL
            .iter()
            .map(|c| (c.name().to_string(), self.kernel[*c as usize]))
            .chain(self.streams.pairs().map(|(k, v)| (k.to_string(), v)))
            .chain([
                ("tls_discarded_calls".to_string(), self.discarded_calls),
                ("tls_libraries".to_string(), self.libraries.len() as u64),
                ("tls_internal_sites".to_string(), self.internal_sites),
                ("tls_sock_tracepoints".to_string(), self.sock_tracepoints),
                ("tls_probed_processes".to_string(), self.processes),
            ])
            .collect()
    }

    /// What was lost, by reason (zero values included).
    pub fn losses(&self) -> Vec<(String, u64)> {
        TlsCounter::ALL
            .iter()
            .filter(|c| c.is_loss())
            .map(|c| (c.name().to_string(), self.kernel[*c as usize]))
            .chain([("tls_discarded_calls".to_string(), self.discarded_calls)])
            .collect()
    }

    /// What is probed, for the start line: "libssl.so.3, ..." or, scoped to the servers,
    /// "N serving processes (libssl.so.3)" or "no serving process yet".
    pub fn probed_line(&self) -> String {
        let libraries = self.libraries.join(", ");
        match (self.scoped, self.processes) {
            (false, _) => libraries,
            (true, 0) => "no serving process yet (probed as they start listening)".into(),
            (true, 1) => format!("1 serving process ({libraries})"),
            (true, n) => format!("{n} serving processes ({libraries})"),
        }
    }

    /// "pid 12 (envoy) on port 443, ...": what the probes cannot see, for a warning.
    pub fn unhooked_line(&self) -> Option<String> {
        (!self.unhooked.is_empty()).then(|| {
            self.unhooked
                .iter()
                .map(|u| format!("pid {} ({}) on port {}", u.pid, u.command, u.port))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_line_names_libraries_or_the_serving_processes_probed() {
        let mut stats = TlsStats {
            libraries: vec!["/usr/lib/x86_64-linux-gnu/libssl.so.3".into()],
            ..TlsStats::default()
        };
        assert_eq!(stats.probed_line(), "/usr/lib/x86_64-linux-gnu/libssl.so.3");
        stats.scoped = true;
        stats.processes = 2;
        assert_eq!(
            stats.probed_line(),
            "2 serving processes (/usr/lib/x86_64-linux-gnu/libssl.so.3)"
        );
        stats.processes = 0;
        stats.libraries.clear();
        assert!(stats.probed_line().starts_with("no serving process yet"));
    }
}
