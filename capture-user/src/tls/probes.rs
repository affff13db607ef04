//! Loading the TLS probes and attaching them: uprobes (entry and return) on each libssl's
//! read, write, handshake, `SSL_set_fd` and `SSL_free`, and the socket syscall tracepoints
//! that tell a custom-BIO library's descriptor. Everything is held by file descriptors
//! (perf events), so dropping [`TlsProbes`], or the process dying even by SIGKILL, detaches
//! every probe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::{TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use capture_common::tls::{
    KERNEL_OFFSETS_GLOBAL, TLS_CALLS_MAP, TLS_COUNTERS_MAP, TLS_FDS_MAP, TLS_RING_MAP,
    TLS_SIDE_GLOBAL, TlsCall,
};
use capture_common::{PORTS_MAP, RING_MAP, WAKEUP_BYTES_GLOBAL};

use super::TlsError;
use super::btf::Btf;
use super::libraries::{FileId, TlsLibrary};
use crate::live::CaptureConfig;
use crate::live::loader::{EBPF_OBJECT, port_words};

const ENTRY: &str = "tls_call";
const RETURN: &str = "tls_return";
const SYSCALLS: &str = "tls_fd_seen";

/// The socket syscalls a TLS library's I/O goes through; seen inside a TLS call, their
/// descriptor is the SSL object's.
const SOCKET_SYSCALLS: [&str; 8] = [
    "sys_enter_read",
    "sys_enter_write",
    "sys_enter_readv",
    "sys_enter_writev",
    "sys_enter_sendto",
    "sys_enter_recvfrom",
    "sys_enter_sendmsg",
    "sys_enter_recvmsg",
];

/// Threads inside a TLS call at once, node-wide.
const MAX_CALLS_IN_PROGRESS: u32 = 16_384;
/// Streams whose descriptor is remembered, node-wide.
const MAX_STREAMS_KNOWN: u32 = 65_536;

/// Where tracepoints are described; mounted when missing.
const TRACEFS: &str = "/sys/kernel/tracing";

/// The loaded probes and the libraries they are attached to.
pub struct TlsProbes {
    ebpf: Ebpf,
    attached: BTreeMap<FileId, PathBuf>,
}

impl TlsProbes {
    /// Loads the programs for `config` (ports, sides, ring size) and attaches the syscall
    /// tracepoints; libraries come with [`TlsProbes::attach_library`].
    pub fn load(config: &CaptureConfig, side: u8) -> Result<Self, TlsError> {
        let offsets = Btf::from_kernel()?.kernel_offsets()?;
        ensure_tracefs()?;
        let wakeup_bytes: u64 = u64::from(config.ring_bytes) / 8;
        let mut ebpf = EbpfLoader::new()
            // The packet ring is not used: one page.
            .map_max_entries(RING_MAP, 4096)
            .map_max_entries(TLS_RING_MAP, config.ring_bytes)
            .map_max_entries(TLS_CALLS_MAP, MAX_CALLS_IN_PROGRESS)
            .map_max_entries(TLS_FDS_MAP, MAX_STREAMS_KNOWN)
            .override_global(KERNEL_OFFSETS_GLOBAL, &offsets, true)
            .override_global(TLS_SIDE_GLOBAL, &side, true)
            .override_global(WAKEUP_BYTES_GLOBAL, &wakeup_bytes, true)
            .load(EBPF_OBJECT)
            .map_err(|e| TlsError::Load(e.to_string()))?;
        let mut ports: Array<_, u64> = Array::try_from(
            ebpf.map_mut(PORTS_MAP)
                .ok_or(TlsError::Load("no PORTS map".into()))?,
        )
        .map_err(|e| TlsError::Load(e.to_string()))?;
        for (word, bits) in port_words(&config.ports) {
            ports
                .set(word, bits, 0)
                .map_err(|e| TlsError::Load(e.to_string()))?;
        }
        for name in [ENTRY, RETURN] {
            uprobe(&mut ebpf, name)?
                .load()
                .map_err(|e| TlsError::Load(format!("{name}: {e}")))?;
        }
        let tracepoint: &mut TracePoint = ebpf
            .program_mut(SYSCALLS)
            .and_then(|p| p.try_into().ok())
            .ok_or(TlsError::Load(format!("no program {SYSCALLS}")))?;
        tracepoint
            .load()
            .map_err(|e| TlsError::Load(format!("{SYSCALLS}: {e}")))?;
        for syscall in SOCKET_SYSCALLS {
            tracepoint
                .attach("syscalls", syscall)
                .map_err(|e| TlsError::Load(format!("tracepoint syscalls:{syscall}: {e}")))?;
        }
        Ok(Self {
            ebpf,
            attached: BTreeMap::new(),
        })
    }

    /// True when `library` is probed already.
    pub fn has(&self, id: &FileId) -> bool {
        self.attached.contains_key(id)
    }

    /// The libraries probed, by path.
    pub fn libraries(&self) -> Vec<PathBuf> {
        self.attached.values().cloned().collect()
    }

    /// Attaches every probe to `library`. A function the library lacks (OpenSSL 1.1.0 has
    /// no `SSL_read_ex`) is skipped; a library without `SSL_read` and `SSL_write` is an
    /// error. Returns how many probes were attached.
    pub fn attach_library(&mut self, library: &TlsLibrary) -> Result<usize, TlsError> {
        let mut attached = 0;
        for (symbol, call, with_return) in TlsCall::ALL {
            let programs: &[&str] = if with_return {
                &[ENTRY, RETURN]
            } else {
                &[ENTRY]
            };
            for name in programs {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::Symbol(symbol),
                    cookie: Some(call as u64),
                };
                match uprobe(&mut self.ebpf, name)?.attach(
                    point,
                    &library.path,
                    UProbeScope::AllProcesses,
                ) {
                    Ok(_) => attached += 1,
                    Err(e) if matches!(call, TlsCall::Read | TlsCall::Write) => {
                        return Err(TlsError::Attach {
                            library: library.path.clone(),
                            reason: format!("{symbol}: {e}"),
                        });
                    }
                    Err(e) => log::debug!("{}: {symbol} not probed: {e}", library.path.display()),
                }
            }
        }
        self.attached.insert(library.id, library.path.clone());
        Ok(attached)
    }

    /// Takes the plaintext ring out for the reader thread.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, TlsError> {
        let map = self
            .ebpf
            .take_map(TLS_RING_MAP)
            .ok_or(TlsError::Load("no TLS_DATA map".into()))?;
        RingBuf::try_from(map).map_err(|e| TlsError::Load(e.to_string()))
    }

    /// Takes the per-CPU counters, readable after the probes are gone too.
    pub fn take_counters(&mut self) -> Result<PerCpuArray<MapData, u64>, TlsError> {
        let map = self
            .ebpf
            .take_map(TLS_COUNTERS_MAP)
            .ok_or(TlsError::Load("no TLS_COUNTERS map".into()))?;
        PerCpuArray::try_from(map).map_err(|e| TlsError::Load(e.to_string()))
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, TlsError> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(TlsError::Load(format!("no program {name}")))
}

/// Mounts tracefs where the kernel describes tracepoints, when nothing is mounted there
/// (most distributions mount it at boot).
fn ensure_tracefs() -> Result<(), TlsError> {
    if Path::new(TRACEFS).join("events").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS])
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(TlsError::Tracefs),
    }
}
