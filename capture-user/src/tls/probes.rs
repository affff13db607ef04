//! Loading the TLS probes and attaching them: uprobes (entry and return) on each libssl's
//! read, write, handshake, `SSL_set_fd` and `SSL_free`, and the tracepoints that tell which
//! socket a call's I/O goes to (`sock:sock_send_length`/`sock_recv_length`, or the socket
//! syscalls on kernels before 6.4). Everything is held by file descriptors (perf events and
//! raw tracepoint links), so dropping [`TlsProbes`], or the process dying even by
//! SIGKILL, detaches every probe.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::{Program, RawTracePoint, TracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use capture_common::tls::{
    KERNEL_OFFSETS_GLOBAL, KernelOffsets, NO_OFFSET, TLS_CALLS_MAP, TLS_COUNTERS_MAP, TLS_RING_MAP,
    TLS_SIDE_GLOBAL, TLS_STREAMS_MAP, TlsCall,
};
use capture_common::{PORTS_MAP, RING_MAP, WAKEUP_BYTES_GLOBAL};

use super::btf::Btf;
use super::libraries::{FileId, TlsLibrary};
use super::sites::{self, InternalSites};
use super::{TlsError, TlsSocketHooks};
use crate::live::CaptureConfig;
use crate::live::loader::{EBPF_OBJECT, port_words};

const ENTRY: &str = "tls_call";
const RETURN: &str = "tls_return";
const SYSCALLS: &str = "tls_fd_seen";
const SOCK_EVENTS_PROGRAM: &str = "tls_sock_seen";
/// The tracepoints every socket send and receive passes after its I/O (Linux 6.4 on).
const SOCK_EVENTS: [&str; 2] = ["sock_send_length", "sock_recv_length"];

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
    /// Per library, in every process (`None`) or in one process (`--tls-scope servers`).
    attached: BTreeMap<(FileId, Option<u32>), Attachment>,
    /// Each library's internal functions, decoded once however many processes map it.
    sites: HashMap<FileId, InternalSites>,
    /// `--tls-exported-probes`: never probe the internal functions.
    exported_only: bool,
    /// `sock` tracepoints attached (0: the syscall tracepoints are).
    sock_tracepoints: u64,
}

impl TlsProbes {
    /// Loads the programs for `config` (ports, sides, ring size) and attaches the tracepoints
    /// that learn connections ([`TlsSocketHooks`]); libraries come with
    /// [`TlsProbes::attach_library`].
    pub fn load(config: &CaptureConfig, side: u8) -> Result<Self, TlsError> {
        let offsets = Btf::from_kernel()?.kernel_offsets()?;
        let wakeup_bytes: u64 = u64::from(config.ring_bytes) / 8;
        let mut ebpf = EbpfLoader::new()
            // The packet ring is not used: one page.
            .map_max_entries(RING_MAP, 4096)
            .map_max_entries(TLS_RING_MAP, config.ring_bytes)
            .map_max_entries(TLS_CALLS_MAP, MAX_CALLS_IN_PROGRESS)
            .map_max_entries(TLS_STREAMS_MAP, MAX_STREAMS_KNOWN)
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
            program_named::<UProbe>(&mut ebpf, name)?
                .load()
                .map_err(|e| TlsError::Load(format!("{name}: {e}")))?;
        }
        let sock_tracepoints = match config.tls_socket_hooks {
            TlsSocketHooks::Syscalls => {
                attach_syscall_tracepoints(&mut ebpf)?;
                0
            }
            TlsSocketHooks::Sock => attach_sock_tracepoints(&mut ebpf, &offsets).map_err(|e| {
                TlsError::Load(format!(
                    "the sock tracepoints: {e}; use --tls-socket-hooks auto or syscalls on \
                     this kernel"
                ))
            })?,
            TlsSocketHooks::Auto => match attach_sock_tracepoints(&mut ebpf, &offsets) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!(
                        "the sock tracepoints cannot be used ({e}); learning TLS connections \
                         from the socket syscall tracepoints instead, which every read and \
                         write on this node pays for"
                    );
                    attach_syscall_tracepoints(&mut ebpf)?;
                    0
                }
            },
        };
        Ok(Self {
            ebpf,
            attached: BTreeMap::new(),
            sites: HashMap::new(),
            exported_only: config.tls_exported_probes,
            sock_tracepoints,
        })
    }

    /// `sock` tracepoints attached to learn connections (0 when the socket syscall
    /// tracepoints do it).
    pub fn sock_tracepoints(&self) -> u64 {
        self.sock_tracepoints
    }

    /// True when `library` is probed already in process `pid` (`None`: in every process).
    pub fn has(&self, id: &FileId, pid: Option<u32>) -> bool {
        self.attached.contains_key(&(*id, pid))
    }

    /// Reads and writes probed at an internal function, over all libraries (a library
    /// probed in several processes counts once).
    pub fn internal_sites(&self) -> u64 {
        let mut per_library = BTreeMap::new();
        for ((id, _), attachment) in &self.attached {
            per_library.insert(*id, attachment.internal_sites);
        }
        per_library.values().sum()
    }

    /// The libraries probed, by path (once each, however many processes they are probed
    /// in).
    pub fn libraries(&self) -> Vec<PathBuf> {
        let mut per_library = BTreeMap::new();
        for ((id, _), attachment) in &self.attached {
            per_library
                .entry(*id)
                .or_insert_with(|| attachment.path.clone());
        }
        per_library.into_values().collect()
    }

    /// The processes probed one by one.
    pub fn processes(&self) -> HashSet<u32> {
        self.attached.keys().filter_map(|(_, pid)| *pid).collect()
    }

    /// Detaches the probes of processes not in `live` (exited): their perf events would
    /// otherwise stay open for as long as capture runs. Returns those processes.
    pub fn forget_exited(&mut self, live: &HashSet<u32>) -> Vec<u32> {
        let exited: Vec<(FileId, Option<u32>)> = self
            .attached
            .keys()
            .filter(|(_, pid)| pid.is_some_and(|pid| !live.contains(&pid)))
            .copied()
            .collect();
        let mut pids = Vec::new();
        for key in exited {
            if let Some(attachment) = self.attached.remove(&key) {
                self.detach(attachment.links);
            }
            pids.extend(key.1);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Attaches every probe to `library`, in every process or (`pid`) in that one only:
    /// reads and writes at the internal functions the exported ones share when
    /// [`sites::internal_sites`] finds them (one trap per call instead of two), at the
    /// exported functions otherwise. A function the library lacks (OpenSSL 1.1.0 has no
    /// `SSL_read_ex`) is skipped; a library without `SSL_read` and `SSL_write` is an error.
    /// Returns how many probes were attached.
    pub fn attach_library(
        &mut self,
        library: &TlsLibrary,
        pid: Option<u32>,
    ) -> Result<usize, TlsError> {
        let found = self.sites_of(library);
        let scope = match pid.and_then(NonZeroU32::new) {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        // Every probe attached to this library so far, detached again if it cannot be
        // probed: the watcher tries it again later and must not find half of it attached.
        let mut links = Vec::new();
        let mut internal = InternalSites::default();
        for (site, slot) in [
            (found.read, &mut internal.read),
            (found.write, &mut internal.write),
        ] {
            let Some(site) = site else { continue };
            let at = At::Offset(site.file_offset);
            match self.attach_entry_and_return(at, site.call, &library.path, scope) {
                Ok(pair) => {
                    links.extend(pair);
                    *slot = Some(site);
                    log::info!(
                        "{}: {:?} probed at its internal function ({:#x}), which SSL_read, \
                         SSL_write and their _ex forms call",
                        library.path.display(),
                        site.call,
                        site.address
                    );
                }
                Err(e) => log::warn!(
                    "{}: internal function at {:#x} not probed ({e}); probing the exported \
                     functions instead",
                    library.path.display(),
                    site.address
                ),
            }
        }
        for (symbol, call, with_return) in TlsCall::EXPORTED {
            let covered = match call {
                TlsCall::Read | TlsCall::ReadEx => internal.read.is_some(),
                TlsCall::Write | TlsCall::WriteEx => internal.write.is_some(),
                _ => false,
            };
            if covered {
                continue;
            }
            let at = At::Symbol(symbol);
            let result = match with_return {
                true => self
                    .attach_entry_and_return(at, call, &library.path, scope)
                    .map(Vec::from),
                false => self
                    .attach_one(ENTRY, at, call, &library.path, scope)
                    .map(|link| vec![(ENTRY, link)]),
            };
            match result {
                Ok(pair) => links.extend(pair),
                Err(e) if matches!(call, TlsCall::Read | TlsCall::Write) => {
                    self.detach(links);
                    return Err(TlsError::Attach {
                        library: library.path.clone(),
                        reason: format!("{symbol}: {e}"),
                    });
                }
                Err(e) => log::debug!("{}: {symbol} not probed: {e}", library.path.display()),
            }
        }
        let attached = links.len();
        let attachment = Attachment {
            path: library.path.clone(),
            links,
            internal_sites: [internal.read.is_some(), internal.write.is_some()]
                .into_iter()
                .filter(|&probed| probed)
                .count() as u64,
        };
        self.attached.insert((library.id, pid), attachment);
        Ok(attached)
    }

    /// `library`'s internal read and write functions (none with `--tls-exported-probes`),
    /// decoded on its first attach.
    fn sites_of(&mut self, library: &TlsLibrary) -> InternalSites {
        if self.exported_only {
            return InternalSites::default();
        }
        *self.sites.entry(library.id).or_insert_with(|| {
            std::fs::read(&library.path)
                .map(|elf| sites::internal_sites(&elf))
                .unwrap_or_default()
        })
    }

    /// The entry and the return probe at `location`, or neither.
    fn attach_entry_and_return(
        &mut self,
        at: At<'_>,
        call: TlsCall,
        path: &Path,
        scope: UProbeScope,
    ) -> Result<[(&'static str, UProbeLinkId); 2], String> {
        let entry = self.attach_one(ENTRY, at, call, path, scope)?;
        match self.attach_one(RETURN, at, call, path, scope) {
            Ok(ret) => Ok([(ENTRY, entry), (RETURN, ret)]),
            Err(e) => {
                self.detach(vec![(ENTRY, entry)]);
                Err(e)
            }
        }
    }

    /// Detaches probes attached by [`TlsProbes::attach_one`].
    fn detach(&mut self, links: Vec<(&'static str, UProbeLinkId)>) {
        for (program, link) in links {
            if let Ok(program) = program_named::<UProbe>(&mut self.ebpf, program) {
                let _ = program.detach(link);
            }
        }
    }

    fn attach_one(
        &mut self,
        program: &str,
        at: At<'_>,
        call: TlsCall,
        path: &Path,
        scope: UProbeScope,
    ) -> Result<UProbeLinkId, String> {
        let location = match at {
            At::Symbol(symbol) => UProbeAttachLocation::Symbol(symbol),
            At::Offset(offset) => UProbeAttachLocation::AbsoluteOffset(offset),
        };
        let point = UProbeAttachPoint {
            location,
            cookie: Some(call as u64),
        };
        program_named::<UProbe>(&mut self.ebpf, program)
            .map_err(|e| e.to_string())?
            .attach(point, path, scope)
            .map_err(|e| e.to_string())
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

/// The probes attached to one library, in every process or in one.
struct Attachment {
    path: PathBuf,
    links: Vec<(&'static str, UProbeLinkId)>,
    /// Reads and writes probed at an internal function (0 to 2).
    internal_sites: u64,
}

/// Where in a library a probe goes.
#[derive(Clone, Copy)]
enum At<'a> {
    Symbol(&'a str),
    /// An offset in the file (an internal function has no symbol).
    Offset(u64),
}

/// Program `name` of the object, as the kind `T` it must be.
fn program_named<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, TlsError>
where
    &'a mut T: TryFrom<&'a mut Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(TlsError::Load(format!("no program {name}")))
}

/// Attaches `tls_sock_seen` to the `sock` tracepoints as raw tracepoints, both or neither.
/// Returns how many, or why not.
fn attach_sock_tracepoints(ebpf: &mut Ebpf, offsets: &KernelOffsets) -> Result<u64, String> {
    if offsets.sk_protocol == NO_OFFSET {
        return Err("the kernel's BTF has no plain sock.sk_protocol field".into());
    }
    let program: &mut RawTracePoint =
        program_named(ebpf, SOCK_EVENTS_PROGRAM).map_err(|e| e.to_string())?;
    program
        .load()
        .map_err(|e| format!("{SOCK_EVENTS_PROGRAM}: {e}"))?;
    let mut links = Vec::new();
    for event in SOCK_EVENTS {
        match program.attach(event) {
            Ok(link) => links.push(link),
            Err(e) => {
                for link in links {
                    let _ = program.detach(link);
                }
                return Err(format!("raw tracepoint {event} (Linux 6.4 on): {e}"));
            }
        }
    }
    Ok(SOCK_EVENTS.len() as u64)
}

/// Attaches `tls_fd_seen` to every socket syscall a TLS library's I/O goes through.
fn attach_syscall_tracepoints(ebpf: &mut Ebpf) -> Result<(), TlsError> {
    ensure_tracefs()?;
    let tracepoint: &mut TracePoint = program_named(ebpf, SYSCALLS)?;
    tracepoint
        .load()
        .map_err(|e| TlsError::Load(format!("{SYSCALLS}: {e}")))?;
    for syscall in SOCKET_SYSCALLS {
        tracepoint
            .attach("syscalls", syscall)
            .map_err(|e| TlsError::Load(format!("tracepoint syscalls:{syscall}: {e}")))?;
    }
    Ok(())
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
