//! Live capture: the eBPF programs attached to interfaces and the ring drained into packet
//! batches. [`LiveCapture`] ties the loader and the ring reader together and owns the
//! shutdown order (detach, drain, close) so no caller can get it wrong; [`LivePackets`]
//! hands the packets to async code, [`LiveMessages`] frames them on the ring thread.

mod config;
pub mod hosts;
pub mod interfaces;
mod kernel_counters;
pub mod links;
pub mod loader;
pub mod messages;
pub mod reader;
pub mod ring;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

pub use loader::{
    AttachMode, CaptureConfig, CounterSnapshot, DEFAULT_RING_BYTES, EbpfLogLevel, LoaderError,
    parse_ring_size,
};
pub use messages::{LiveMessages, LiveStats, MessageSink};
pub use reader::{PacketBatch, PacketSink};
pub use ring::RingStatsSnapshot;

use links::{LinkEvent, LinkWatcher};
use loader::{AttachedCapture, KernelCounters};
use reader::{ChannelSink, RingReader};
use ring::ClockOffset;

/// Batches queued between the ring thread and an async consumer ([`LivePackets`]). With up
/// to [`reader::MAX_BATCH_PACKETS`] packets each this bounds userspace memory; beyond it the
/// ring fills and the kernel counts drops.
pub const CHANNEL_BATCHES: usize = 64;

/// A running capture whose packets go to a [`PacketSink`] on the ring thread. Stop it with
/// [`LiveCapture::stop`], which detaches, drains and gives the sink back.
pub struct LiveCapture<S> {
    attached: Arc<Mutex<AttachedCapture>>,
    /// With `--iface` patterns: attaches to links that appear, lets go of vanished ones.
    watcher: Option<LinkWatcher>,
    interfaces: Arc<InterfaceCounts>,
    counters: KernelCounters,
    reader: RingReader<S>,
    logger: Option<tokio::task::JoinHandle<()>>,
    interface_names: HashMap<u32, String>,
}

/// Kernel and userspace counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Summed per-CPU counters of the eBPF programs.
    pub kernel: CounterSnapshot,
    /// Counters of the ring reader.
    pub ring: RingStatsSnapshot,
    /// Interfaces attached and let go of.
    pub interfaces: InterfaceSnapshot,
    /// Packets and bytes captured per interface, by name (`ifN` once the name is gone).
    pub per_interface: Vec<InterfaceTraffic>,
}

/// What one interface contributed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceTraffic {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Names the interface indexes of `per_index` as they are now.
fn name_traffic(per_index: Vec<(u32, u64, u64)>) -> Vec<InterfaceTraffic> {
    per_index
        .into_iter()
        .map(|(index, packets, bytes)| InterfaceTraffic {
            name: interface_name(index).unwrap_or_else(|| format!("if{index}")),
            packets,
            bytes,
        })
        .collect()
}

/// The name of interface `index`, if it still exists.
fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes, NUL-terminated, into buf.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// What following the interfaces did, counted as it happens.
#[derive(Debug, Default)]
struct InterfaceCounts {
    attached: AtomicU64,
    vanished: AtomicU64,
    attach_failed: AtomicU64,
}

/// Interface counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceSnapshot {
    /// Interfaces attached to, over the capture (those present at start included).
    pub attached: u64,
    /// Attached interfaces that went away (deleted, or moved to another namespace) and whose
    /// links were let go of.
    pub vanished: u64,
    /// Matching interfaces that appeared but could not be attached to (logged).
    pub attach_failed: u64,
}

impl InterfaceCounts {
    fn snapshot(&self) -> InterfaceSnapshot {
        InterfaceSnapshot {
            attached: self.attached.load(Ordering::Relaxed),
            vanished: self.vanished.load(Ordering::Relaxed),
            attach_failed: self.attach_failed.load(Ordering::Relaxed),
        }
    }
}

impl CaptureStats {
    /// Packets captured per interface, by name.
    pub fn packets_per_interface<T: FromIterator<(String, u64)>>(&self) -> T {
        self.per_interface
            .iter()
            .map(|t| (t.name.clone(), t.packets))
            .collect()
    }

    /// The kernel's counters as `name=value` on one line.
    pub fn kernel_line(&self) -> String {
        self.kernel
            .pairs()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every counter as `name=value`, kernel first, on one line.
    pub fn to_line(&self) -> String {
        let i = &self.interfaces;
        self.kernel
            .pairs()
            .chain(self.ring.pairs())
            .chain([
                ("interfaces_attached", i.attached),
                ("interfaces_vanished", i.vanished),
                ("interfaces_attach_failed", i.attach_failed),
            ])
            .map(|(name, value)| format!("{name}={value}"))
            .chain(self.per_interface.iter().map(|t| {
                format!(
                    "{}:packets={} {}:bytes={}",
                    t.name, t.packets, t.name, t.bytes
                )
            }))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl<S: PacketSink> LiveCapture<S> {
    /// Loads, attaches and starts draining into `sink`. Must be called inside a tokio
    /// runtime (the eBPF log forwarder, when asked for, is a task).
    pub fn start(config: &CaptureConfig, sink: S) -> anyhow::Result<Self> {
        let mut attached = AttachedCapture::start(config)?;
        let interfaces = Arc::new(InterfaceCounts::default());
        interfaces.attached.store(
            attached.attached_interfaces().len() as u64,
            Ordering::Relaxed,
        );
        let counters = attached.take_counters()?;
        let ring = attached.take_ring()?;
        let logger = if config.ebpf_log != EbpfLogLevel::Off {
            attached.take_logger().and_then(spawn_logger)
        } else {
            None
        };
        let reader = reader::spawn_reader(ring, ClockOffset::now(), sink)
            .context("starting the ring reader thread")?;
        let interface_names = attached
            .attached_interfaces()
            .iter()
            .filter_map(|name| Some((interface_index(name)?, name.clone())))
            .collect();
        let follows = attached.interfaces.follows_new_links();
        let attached = Arc::new(Mutex::new(attached));
        let watcher = if follows {
            Some(follow_links(attached.clone(), interfaces.clone())?)
        } else {
            None
        };
        Ok(Self {
            attached,
            watcher,
            interfaces,
            counters,
            reader,
            logger,
            interface_names,
        })
    }

    /// The interfaces the hooks are attached to now.
    pub fn attached_interfaces(&self) -> BTreeSet<String> {
        crate::sync::lock(&self.attached).attached_interfaces()
    }

    /// Names of the captured-on interfaces by ifindex, for display.
    pub fn interface_names(&self) -> &HashMap<u32, String> {
        &self.interface_names
    }

    /// Counters now.
    pub fn stats(&self) -> anyhow::Result<CaptureStats> {
        Ok(CaptureStats {
            kernel: self.counters.snapshot()?,
            ring: self.reader.stats().snapshot(),
            interfaces: self.interfaces.snapshot(),
            per_interface: name_traffic(self.reader.stats().per_interface()),
        })
    }

    /// False once the ring thread ended on its own (its sink gave up).
    pub fn is_running(&self) -> bool {
        self.reader.is_running()
    }

    /// Stops capturing: detaches every program (nothing new enters the ring), lets the
    /// reader drain the ring into the sink, and gives the sink back with the final counters:
    /// every captured packet was either handed to the sink or counted as discarded. Blocks
    /// until the ring thread ends (run it off the async runtime's workers).
    pub fn stop(self) -> anyhow::Result<(CaptureStats, S)> {
        let Self {
            attached,
            watcher,
            interfaces,
            counters,
            mut reader,
            logger,
            ..
        } = self;
        // No attaching after this: the watcher ends before the hooks come off.
        drop(watcher);
        crate::sync::lock(&attached).detach();
        if let Some(logger) = logger {
            logger.abort();
        }
        let sink = reader
            .stop()
            .context("the ring reader thread panicked; packets still in the ring are lost")?;
        let stats = CaptureStats {
            kernel: counters.snapshot()?,
            ring: reader.stats().snapshot(),
            interfaces: interfaces.snapshot(),
            per_interface: name_traffic(reader.stats().per_interface()),
        };
        Ok((stats, sink))
    }
}

/// Live capture handing packet batches to async code (`capture packets`).
pub struct LivePackets {
    capture: LiveCapture<ChannelSink>,
    rx: mpsc::Receiver<PacketBatch>,
}

impl LivePackets {
    /// Loads, attaches and starts draining. Must be called inside a tokio runtime.
    pub fn start(config: &CaptureConfig) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let capture = LiveCapture::start(config, ChannelSink(tx))?;
        Ok(Self { capture, rx })
    }

    /// Next batch of packets; `None` once the reader ended.
    pub async fn recv(&mut self) -> Option<PacketBatch> {
        self.rx.recv().await
    }

    /// The capture behind it (counters, interface names).
    pub fn capture(&self) -> &LiveCapture<ChannelSink> {
        &self.capture
    }

    /// Stops capturing and hands every packet still in flight to `sink`; the counters
    /// returned are final.
    pub async fn stop_and_drain(
        self,
        mut sink: impl FnMut(PacketBatch),
    ) -> anyhow::Result<CaptureStats> {
        let Self { capture, mut rx } = self;
        // The reader may be blocked on a full channel, so stop it off this task while this
        // task keeps receiving; dropping the returned sender closes the channel.
        let stopping = tokio::task::spawn_blocking(move || capture.stop().map(|(stats, _)| stats));
        while let Some(batch) = rx.recv().await {
            sink(batch);
        }
        stopping.await.context("joining the ring reader")?
    }
}

/// Watches links: a matching one that appears is attached to (then, so a link created while
/// the watcher subscribed is not missed, every present one is checked once more); an attached
/// one that goes away is let go of and counted.
fn follow_links(
    attached: Arc<Mutex<AttachedCapture>>,
    counts: Arc<InterfaceCounts>,
) -> anyhow::Result<LinkWatcher> {
    let on_event = {
        let attached = attached.clone();
        let counts = counts.clone();
        move |event: LinkEvent| match event {
            LinkEvent::Added { name, .. } => attach_new(&attached, &counts, &name),
            LinkEvent::Removed { name, .. } => {
                if crate::sync::lock(&attached).release_interface(&name) {
                    counts.vanished.fetch_add(1, Ordering::Relaxed);
                    log::info!("interface {name} went away; its hooks are released");
                }
            }
        }
    };
    let watcher = LinkWatcher::spawn(on_event).context("watching links (rtnetlink)")?;
    for name in interfaces::present_interfaces() {
        attach_new(&attached, &counts, &name);
    }
    Ok(watcher)
}

/// Attaches to `name` if it matches and is not attached yet.
fn attach_new(attached: &Mutex<AttachedCapture>, counts: &InterfaceCounts, name: &str) {
    let mut capture = crate::sync::lock(attached);
    if !capture.interfaces.matches(name) || capture.attached_interfaces().contains(name) {
        return;
    }
    match capture.attach_interface(name) {
        Ok(true) => {
            counts.attached.fetch_add(1, Ordering::Relaxed);
            log::info!("attached to {name}, which appeared");
        }
        Ok(false) => {}
        Err(e) => {
            // Gone again before the hooks went on, most often: counted, and capture goes on.
            counts.attach_failed.fetch_add(1, Ordering::Relaxed);
            log::warn!("{e}");
            capture.release_interface(name);
        }
    }
}

/// ifindex of an interface, from sysfs.
fn interface_index(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex")).ok()?;
    text.trim().parse().ok()
}

/// Forwards eBPF log records to the `log` crate whenever the kernel side writes some.
fn spawn_logger(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> Option<tokio::task::JoinHandle<()>> {
    // SAFETY: the logger owns its ring buffer fd and neither closes nor replaces it while the
    // AsyncFd holds it.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            log::warn!("eBPF logs unavailable: {e}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
