//! Loads the eBPF programs, writes the port set, attaches to interfaces, and detaches
//! everything again. The [`AttachedCapture`] guard detaches on drop, so every exit path
//! (normal end, signal, error unwinding) leaves the interfaces as they were.
//!
//! TC programs attach through TCX links and XDP through bpf links where the kernel has them:
//! both are owned by file descriptors, so even a SIGKILLed capture leaves nothing behind.

use std::collections::BTreeSet;
use std::process::Command;

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use capture_common::{
    COUNTERS_MAP, DECAP_GLOBAL, HOST_FILTER_GLOBAL, HOSTS_MAP, PORTS_MAP, RING_MAP,
    WAKEUP_BYTES_GLOBAL,
};
use log::{info, warn};

pub(crate) use super::config::port_words;
pub use super::config::{
    AttachMode, CaptureConfig, DEFAULT_RING_BYTES, EbpfLogLevel, LoaderError, check_ring_bytes,
    parse_ring_size, validate, validate_ports_and_limits,
};
use super::hosts::HostNet;
use super::interfaces::{InterfacePatterns, check_link, present_interfaces};
pub use super::kernel_counters::{CounterSnapshot, KernelCounters};

/// The compiled eBPF object, built by build.rs for the BPF target.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capture"));

enum AttachedLink {
    Tc {
        program: &'static str,
        iface: String,
        id: SchedClassifierLinkId,
    },
    Xdp {
        iface: String,
        id: XdpLinkId,
    },
}

impl AttachedLink {
    fn iface(&self) -> &str {
        match self {
            Self::Tc { iface, .. } | Self::Xdp { iface, .. } => iface,
        }
    }
}

/// Loaded programs attached to interfaces. Dropping it detaches everything and removes any
/// qdisc it added.
pub struct AttachedCapture {
    ebpf: Ebpf,
    links: Vec<AttachedLink>,
    /// The `--iface` values, for links that appear later.
    pub interfaces: InterfacePatterns,
    mode: AttachMode,
    tc_netlink: bool,
    /// Interfaces where we created the clsact qdisc (legacy TC path only).
    added_qdiscs: Vec<String>,
    detached: bool,
}

const TC_INGRESS: &str = "capture_tc_ingress";
const TC_EGRESS: &str = "capture_tc_egress";
const XDP: &str = "capture_xdp";

impl AttachedCapture {
    /// Validates the config, loads the programs, fills the port map and attaches.
    /// On any error, whatever was attached so far is detached before returning.
    pub fn start(config: &CaptureConfig) -> Result<Self, LoaderError> {
        let interfaces = validate(config)?;
        // A power of two, as the programs need: ring sizes are.
        let wakeup_bytes: u64 = u64::from(config.ring_bytes) / 8;
        let log_level: u8 = config.ebpf_log as u8;
        let host_filter = u8::from(!config.hosts.is_empty());
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(RING_MAP, config.ring_bytes)
            .override_global(WAKEUP_BYTES_GLOBAL, &wakeup_bytes, true)
            .override_global(HOST_FILTER_GLOBAL, &host_filter, true)
            .override_global(DECAP_GLOBAL, &config.decap.bits(), true)
            .override_global(aya_log::LEVEL, &log_level, true)
            .load(EBPF_OBJECT)?;

        let mut ports: Array<_, u64> = Array::try_from(
            ebpf.map_mut(PORTS_MAP)
                .ok_or(LoaderError::MissingMap(PORTS_MAP))?,
        )
        .map_err(|source| LoaderError::Map {
            name: PORTS_MAP,
            source,
        })?;
        for (word, bits) in port_words(&config.ports) {
            ports
                .set(word, bits, 0)
                .map_err(|source| LoaderError::Map {
                    name: PORTS_MAP,
                    source,
                })?;
        }

        fill_hosts(&mut ebpf, &config.hosts)?;
        let mut capture = AttachedCapture {
            ebpf,
            links: Vec::new(),
            interfaces,
            mode: config.mode,
            tc_netlink: config.tc_netlink,
            added_qdiscs: Vec::new(),
            detached: false,
        };
        // On error, `capture` is dropped here and detaches what was attached.
        for iface in present_interfaces() {
            if capture.interfaces.matches(&iface) {
                capture.attach_interface(&iface)?;
            }
        }
        Ok(capture)
    }

    /// Attaches the hooks to `iface`. An interface matched by a pattern whose link type the
    /// hooks cannot read is skipped (Ok, nothing attached); one named exactly is an error.
    pub fn attach_interface(&mut self, iface: &str) -> Result<bool, LoaderError> {
        if let Err(e) = check_link(iface) {
            return match e {
                LoaderError::UnsupportedLinkType { .. }
                    if !self.interfaces.names_exactly(iface) =>
                {
                    info!("{e}: skipped");
                    Ok(false)
                }
                e => Err(e),
            };
        }
        match self.mode {
            AttachMode::Tc => {
                if self.tc_netlink {
                    self.ensure_clsact(iface)?;
                }
                for (name, hook) in [
                    (TC_INGRESS, TcAttachType::Ingress),
                    (TC_EGRESS, TcAttachType::Egress),
                ] {
                    self.attach_tc(name, iface, hook, self.tc_netlink)?;
                }
            }
            AttachMode::Xdp => self.attach_xdp(iface)?,
        }
        Ok(true)
    }

    /// Interfaces the hooks are attached to now.
    pub fn attached_interfaces(&self) -> BTreeSet<String> {
        self.links.iter().map(|l| l.iface().to_string()).collect()
    }

    /// `iface` went away (or left the namespace): its links are let go of. True when it had
    /// some.
    pub fn release_interface(&mut self, iface: &str) -> bool {
        let (gone, kept): (Vec<_>, Vec<_>) = self.links.drain(..).partition(|l| l.iface() == iface);
        self.links = kept;
        self.added_qdiscs.retain(|q| q != iface);
        let had = !gone.is_empty();
        for link in gone {
            // The kernel already dropped the hooks of a deleted device: only our handles go.
            detach_link(&mut self.ebpf, link, false);
        }
        had
    }

    fn ensure_clsact(&mut self, iface: &str) -> Result<(), LoaderError> {
        match aya::programs::tc::qdisc_add_clsact(iface) {
            Ok(()) => {
                self.added_qdiscs.push(iface.to_string());
                Ok(())
            }
            // Already there (someone else's): use it, leave it in place afterwards.
            Err(aya::programs::tc::TcError::IoError(e))
                if e.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            Err(aya::programs::tc::TcError::NetlinkError(e))
                if e.to_string().contains("exists") =>
            {
                Ok(())
            }
            Err(source) => Err(LoaderError::Qdisc {
                iface: iface.to_string(),
                source,
            }),
        }
    }

    fn attach_tc(
        &mut self,
        name: &'static str,
        iface: &str,
        hook: TcAttachType,
        netlink: bool,
    ) -> Result<(), LoaderError> {
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(LoaderError::MissingProgram(name))?
            .try_into()
            .map_err(|source| LoaderError::Program { name, source })?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| LoaderError::Program { name, source })?;
        }
        let hook_name = match hook {
            TcAttachType::Ingress => "tc ingress",
            _ => "tc egress",
        };
        let attached = if netlink {
            program.attach_with_options(iface, hook, TcAttachOptions::Netlink(NlOptions::default()))
        } else {
            program.attach(iface, hook)
        };
        let id = attached.map_err(|source| LoaderError::Attach {
            hook: hook_name,
            iface: iface.to_string(),
            source,
        })?;
        info!("attached {hook_name} on {iface}");
        self.links.push(AttachedLink::Tc {
            program: name,
            iface: iface.to_string(),
            id,
        });
        Ok(())
    }

    fn attach_xdp(&mut self, iface: &str) -> Result<(), LoaderError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(XDP)
            .ok_or(LoaderError::MissingProgram(XDP))?
            .try_into()
            .map_err(|source| LoaderError::Program { name: XDP, source })?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|source| LoaderError::Program { name: XDP, source })?;
        }
        let id = match program.attach(iface, XdpMode::Driver) {
            Ok(id) => {
                info!("attached XDP in native (driver) mode on {iface}");
                id
            }
            Err(native_err) => {
                warn!(
                    "native XDP not available on {iface} ({native_err}); falling back to generic (skb) mode"
                );
                eprintln!(
                    "note: native XDP is not available on {iface}; using generic XDP mode (slower, same packets)"
                );
                program
                    .attach(iface, XdpMode::Skb)
                    .map_err(|source| LoaderError::Attach {
                        hook: "xdp",
                        iface: iface.to_string(),
                        source,
                    })?
            }
        };
        self.links.push(AttachedLink::Xdp {
            iface: iface.to_string(),
            id,
        });
        Ok(())
    }

    /// Takes the packet ring buffer out of the loaded object for the reader thread.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, LoaderError> {
        let map = self
            .ebpf
            .take_map(RING_MAP)
            .ok_or(LoaderError::MissingMap(RING_MAP))?;
        RingBuf::try_from(map).map_err(|source| LoaderError::Map {
            name: RING_MAP,
            source,
        })
    }

    /// Takes the per-CPU counters map so they can be read after detaching too.
    pub fn take_counters(&mut self) -> Result<KernelCounters, LoaderError> {
        let map = self
            .ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(LoaderError::MissingMap(COUNTERS_MAP))?;
        let array = PerCpuArray::try_from(map).map_err(|source| LoaderError::Map {
            name: COUNTERS_MAP,
            source,
        })?;
        Ok(KernelCounters { array })
    }

    /// Starts forwarding eBPF log lines to the `log` crate when a level was asked for.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => Some(logger),
            Err(e) => {
                warn!("eBPF logs unavailable: {e}");
                None
            }
        }
    }

    /// Detaches every program and removes qdiscs we added. Idempotent; also run on drop.
    pub fn detach(&mut self) {
        if self.detached {
            return;
        }
        self.detached = true;
        for link in std::mem::take(&mut self.links) {
            detach_link(&mut self.ebpf, link, true);
        }
        for iface in self.added_qdiscs.drain(..) {
            // aya has no qdisc delete; iproute2 is on every node that has tc.
            let status = Command::new("tc")
                .args(["qdisc", "del", "dev", &iface, "clsact"])
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                warn!(
                    "could not remove the clsact qdisc we added to {iface}; remove it with `tc qdisc del dev {iface} clsact`"
                );
            }
        }
    }
}

/// Puts the `--host` networks into the programs' trie.
fn fill_hosts(ebpf: &mut Ebpf, hosts: &[HostNet]) -> Result<(), LoaderError> {
    let map_error = |source| LoaderError::Map {
        name: HOSTS_MAP,
        source,
    };
    let mut trie: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(
        ebpf.map_mut(HOSTS_MAP)
            .ok_or(LoaderError::MissingMap(HOSTS_MAP))?,
    )
    .map_err(map_error)?;
    for host in hosts {
        let (bits, addr) = host.trie_key();
        trie.insert(&LpmKey::new(bits, addr), 1, 0)
            .map_err(map_error)?;
    }
    Ok(())
}

/// Detaches one link (warning on failure when `loud`: a link of a deleted device cannot
/// detach, and nothing is wrong then).
fn detach_link(ebpf: &mut Ebpf, link: AttachedLink, loud: bool) {
    let result = match link {
        AttachedLink::Tc {
            program,
            ref iface,
            id,
        } => ebpf
            .program_mut(program)
            .and_then(|p| <&mut SchedClassifier>::try_from(p).ok())
            .map(|p| {
                p.detach(id)
                    .map_err(|e| format!("detaching {program} from {iface}: {e}"))
            }),
        AttachedLink::Xdp { ref iface, id } => ebpf
            .program_mut(XDP)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .map(|p| {
                p.detach(id)
                    .map_err(|e| format!("detaching XDP from {iface}: {e}"))
            }),
    };
    if let Some(Err(e)) = result {
        if loud {
            warn!("{e}");
        } else {
            info!("{e}");
        }
    }
}

impl Drop for AttachedCapture {
    fn drop(&mut self) {
        self.detach();
    }
}
