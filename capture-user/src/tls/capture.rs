//! A running TLS capture: the probes, a watcher thread that attaches to libraries that
//! appear (a new container image, a process that loads libssl late), and a reader thread
//! that drains the plaintext ring and frames it on that same thread, as packet capture does.
//! Stopping detaches first, then drains and frames what is in flight, then closes streams.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use capture_common::tls::TlsCounter;

use super::libraries::{self, TlsLibrary};
use super::listeners::ListenerScan;
use super::probes::TlsProbes;
use super::record::TlsAssembler;
use super::streams::{TlsStreamConfig, TlsStreams};
use super::watch::ProcessSchedule;
use super::{TlsError, TlsScope, TlsSide, TlsStats};
use crate::live::messages::Framer;
use crate::live::ring::ClockOffset;
use crate::live::{CaptureConfig, MessageSink, PacketSink};
use crate::packet::Timestamp;
use crate::pipeline::PipelineStats;
use crate::sync::lock;

/// How often the watcher ticks; which processes it looks at on a tick is
/// [`ProcessSchedule`]'s choice.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How often idle streams are closed and counters published.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
const POLL_TIMEOUT_MS: i32 = 100;

/// What the threads publish for [`TlsCapture::stats`].
#[derive(Default)]
struct Shared {
    stats: Mutex<TlsStats>,
}

/// A running TLS capture framing into a [`MessageSink`].
pub struct TlsCapture<M> {
    probes: Arc<Mutex<Option<TlsProbes>>>,
    counters: PerCpuArray<MapData, u64>,
    /// Stops the watcher (first), then the reader (once the probes are detached, so its last
    /// drain sees everything the probes wrote).
    stop_watching: Arc<AtomicBool>,
    stop_reading: Arc<AtomicBool>,
    reader: Option<JoinHandle<Framer<M>>>,
    watcher: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    published: Arc<Mutex<PipelineStats>>,
}

impl<M: MessageSink> TlsCapture<M> {
    /// Loads and attaches the probes for `config` (its ports and `tls` side) and starts
    /// framing into `sink`.
    pub fn start(config: &CaptureConfig, sink: M) -> Result<Self, TlsError> {
        if !config.interfaces.is_empty() {
            return Err(TlsError::WithInterfaces);
        }
        crate::live::loader::validate_ports_and_limits(config)?;
        let side = config.tls.unwrap_or_default();
        let mut servers = match config.tls_scope {
            TlsScope::All => None,
            TlsScope::Servers if side == TlsSide::Server => Some(Servers {
                ports: config.ports.clone(),
                scan: ListenerScan::new(),
                listening: BTreeMap::new(),
            }),
            TlsScope::Servers => return Err(TlsError::ScopeNeedsServerSide),
        };
        let mut probes = TlsProbes::load(config, side.bits())?;
        let mut with_tls = HashSet::new();
        let mut looked_at = Vec::new();
        let mut found: Vec<TlsLibrary> = match servers {
            None => libraries::host_libraries(),
            Some(_) => Vec::new(),
        };
        let all = libraries::pids();
        // Read once: the servers to probe (scoped) and those without libssl to name.
        let listening = match servers.as_mut() {
            Some(servers) => servers.scan.listening(&all, &servers.ports),
            None => ListenerScan::new().listening(&all, &config.ports),
        };
        let mut mapped = Vec::new();
        for &pid in &all {
            looked_at.push((pid, libraries::executable(pid)));
            let libs = libraries::process_libraries(pid);
            if !libs.is_empty() {
                with_tls.insert(pid);
                mapped.push((pid, libs.clone()));
            }
            found.extend(libs);
        }
        match servers.as_mut() {
            None => {
                for library in &found {
                    if !probes.has(&library.id, None) {
                        match probes.attach_library(library, None) {
                            Ok(n) => log::info!("probing {} ({n} probes)", library.path.display()),
                            Err(e) => log::warn!("{e}"),
                        }
                    }
                }
                if probes.libraries().is_empty() {
                    return Err(TlsError::NoLibrary);
                }
            }
            Some(servers) => {
                servers.listening = listening.clone();
                for (pid, libs) in mapped {
                    servers.probe_if_serving(&mut probes, pid, libs);
                }
                if probes.processes().is_empty() {
                    log::warn!(
                        "no process listening on port {} maps libssl yet: servers are probed \
                         as they start listening",
                        config
                            .ports
                            .iter()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
        }
        let unhooked = libraries::unhooked_servers(&all, &listening, &with_tls);
        for u in &unhooked {
            log::warn!(
                "pid {} ({}) serves port {} but maps no libssl: its TLS (statically linked, \
                 or another library) is not captured",
                u.pid,
                u.command,
                u.port
            );
        }
        let shared = Arc::new(Shared::default());
        {
            let mut stats = lock(&shared.stats);
            stats.unhooked = unhooked;
            stats.scoped = servers.is_some();
            publish_libraries(&mut stats, &probes);
        }
        let ring = probes.take_ring()?;
        let counters = probes.take_counters()?;
        let framer = Framer::single(config, sink);
        let published = framer.published();
        let stop_watching = Arc::new(AtomicBool::new(false));
        let stop_reading = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Some(probes)));
        let streams = TlsStreams::new(TlsStreamConfig::default(), config.ports.clone());
        let reader = {
            let (stop, shared) = (stop_reading.clone(), shared.clone());
            std::thread::Builder::new()
                .name("capture-tls".into())
                .spawn(move || read_ring(ring, streams, framer, &stop, &shared))
                .map_err(|e| TlsError::Load(format!("starting the TLS reader thread: {e}")))?
        };
        let watcher = {
            let (stop, shared, probes) = (stop_watching.clone(), shared.clone(), probes.clone());
            std::thread::Builder::new()
                .name("capture-tls-watch".into())
                .spawn(move || {
                    let schedule = ProcessSchedule::new(looked_at);
                    watch_processes(&probes, &stop, &shared, schedule, servers)
                })
                .map_err(|e| TlsError::Load(format!("starting the process watcher: {e}")))?
        };
        Ok(Self {
            probes,
            counters,
            stop_watching,
            stop_reading,
            reader: Some(reader),
            watcher: Some(watcher),
            shared,
            published,
        })
    }

    /// Counters now (streams as of the last second).
    pub fn stats(&self) -> TlsStats {
        let mut stats = lock(&self.shared.stats).clone();
        stats.kernel = kernel_counters(&self.counters);
        stats
    }

    /// The framing counters as of the last second.
    pub fn pipeline_stats(&self) -> PipelineStats {
        lock(&self.published).clone()
    }

    /// False once the reader ended on its own (the sink gave up).
    pub fn is_running(&self) -> bool {
        self.reader.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Detaches every probe, frames what is still in the ring, closes open streams and hands
    /// the last messages on. Blocks until the threads ended.
    pub fn finish(mut self) -> anyhow::Result<(TlsStats, PipelineStats)> {
        self.detach();
        let framer = self
            .reader
            .take()
            .ok_or_else(|| anyhow::anyhow!("TLS reader already stopped"))?
            .join()
            .map_err(|_| anyhow::anyhow!("the TLS reader thread panicked"))?;
        let pipeline = framer.finish();
        Ok((self.stats(), pipeline))
    }
}

impl<M> TlsCapture<M> {
    /// Stops the watcher and detaches every probe, then tells the reader to drain what the
    /// probes wrote and end.
    fn detach(&mut self) {
        self.stop_watching.store(true, Ordering::Release);
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
        *lock(&self.probes) = None;
        self.stop_reading.store(true, Ordering::Release);
    }
}

impl<M> Drop for TlsCapture<M> {
    fn drop(&mut self) {
        self.detach();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

fn publish_libraries(stats: &mut TlsStats, probes: &TlsProbes) {
    stats.libraries = probes
        .libraries()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    stats.internal_sites = probes.internal_sites();
    stats.sock_tracepoints = probes.sock_tracepoints();
    stats.processes = probes.processes().len() as u64;
}

/// `--tls-scope servers`: the processes listening on the ports are probed one by one.
struct Servers {
    ports: Vec<u16>,
    scan: ListenerScan,
    /// The sockets listening on the ports at the last look, by inode.
    listening: BTreeMap<u64, u16>,
}

impl Servers {
    /// Reads the listening sockets again: true when one started listening since the last
    /// look (which process holds it is not known, so every process is to be looked at).
    fn refresh(&mut self, live: &[u32]) -> bool {
        let listening = self.scan.listening(live, &self.ports);
        let fresh = listening.keys().any(|i| !self.listening.contains_key(i));
        self.listening = listening;
        fresh
    }

    /// Probes those of `candidates` that serve a port (with the libssl files they map), and
    /// detaches the probes of processes no longer `live`.
    fn probe(&self, probes: &mut TlsProbes, live: &[u32], candidates: Vec<(u32, Vec<TlsLibrary>)>) {
        for (pid, libs) in candidates {
            self.probe_if_serving(probes, pid, libs);
        }
        let live: HashSet<u32> = live.iter().copied().collect();
        let exited = probes.forget_exited(&live);
        if !exited.is_empty() {
            log::info!("probes of exited servers detached (pids {exited:?})");
        }
    }

    /// Probes `libs` in process `pid` when it listens on a port.
    fn probe_if_serving(&self, probes: &mut TlsProbes, pid: u32, libs: Vec<TlsLibrary>) {
        let Some(port) = libraries::port_served(pid, &self.listening) else {
            return;
        };
        for library in libs {
            if probes.has(&library.id, Some(pid)) {
                continue;
            }
            match probes.attach_library(&library, Some(pid)) {
                Ok(n) => log::info!(
                    "probing pid {pid} ({}), serving port {port}: {} ({n} probes)",
                    libraries::command(pid),
                    library.path.display()
                ),
                Err(e) => log::warn!("pid {pid}: {e}"),
            }
        }
    }
}

fn kernel_counters(array: &PerCpuArray<MapData, u64>) -> [u64; TlsCounter::ALL.len()] {
    let mut out = [0; TlsCounter::ALL.len()];
    for counter in TlsCounter::ALL {
        if let Ok(values) = array.get(&(counter as u32), 0) {
            out[counter as usize] = values.iter().sum();
        }
    }
    out
}

/// The reader thread: drain, join chunks into calls, calls into stream events, frame.
fn read_ring<M: MessageSink>(
    mut ring: RingBuf<MapData>,
    mut streams: TlsStreams,
    mut framer: Framer<M>,
    stop: &AtomicBool,
    shared: &Shared,
) -> Framer<M> {
    let mut assembler = TlsAssembler::new(ClockOffset::now());
    let mut events = Vec::new();
    let mut last_expire = Instant::now();
    let fd = ring.as_raw_fd();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        while let Some(record) = ring.next() {
            if let Some(call) = assembler.push(&record) {
                streams.push(call, &mut events);
            }
            drop(record);
            if events.len() >= 256 && !framer.stream_events(&mut events) {
                return framer;
            }
        }
        if !events.is_empty() && !framer.stream_events(&mut events) {
            return framer;
        }
        if stopping {
            streams.finish(Timestamp::now(), &mut events);
            framer.stream_events(&mut events);
            publish(shared, &streams, &assembler);
            return framer;
        }
        if last_expire.elapsed() >= EXPIRE_EVERY {
            last_expire = Instant::now();
            streams.expire(Timestamp::now(), &mut events);
            framer.stream_events(&mut events);
            publish(shared, &streams, &assembler);
        }
        framer.idle();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the ring's fd stays open for the life of `ring`.
        unsafe { libc::poll(&mut pfd, 1, POLL_TIMEOUT_MS) };
    }
}

fn publish(shared: &Shared, streams: &TlsStreams, assembler: &TlsAssembler) {
    let mut stats = lock(&shared.stats);
    stats.streams = streams.stats();
    stats.discarded_calls = assembler.discarded();
}

/// The watcher thread: attaches to the libssl of processes that appear, exec or load it
/// late, looking at the processes its [`ProcessSchedule`] names each tick; with `servers`,
/// only to those listening on a port, and detaches from those that exit.
fn watch_processes(
    probes: &Mutex<Option<TlsProbes>>,
    stop: &AtomicBool,
    shared: &Shared,
    mut schedule: ProcessSchedule,
    mut servers: Option<Servers>,
) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < WATCH_EVERY {
            continue;
        }
        last = Instant::now();
        let live = libraries::pids();
        let due = schedule.tick(live.iter().copied(), libraries::executable);
        if let Some(servers) = servers.as_mut() {
            // The reads first, then the probes held only to attach and detach (stopping
            // waits for them).
            let fresh = servers.refresh(&live);
            let candidates: Vec<(u32, Vec<TlsLibrary>)> = if fresh { &live } else { &due }
                .iter()
                .map(|&pid| (pid, libraries::process_libraries(pid)))
                .filter(|(_, libs)| !libs.is_empty())
                .collect();
            let mut guard = lock(probes);
            let Some(probes) = guard.as_mut() else {
                return;
            };
            servers.probe(probes, &live, candidates);
            publish_libraries(&mut lock(&shared.stats), probes);
            continue;
        }
        for pid in due {
            let libs = libraries::process_libraries(pid);
            if libs.is_empty() {
                continue;
            }
            let mut guard = lock(probes);
            let Some(probes) = guard.as_mut() else {
                return;
            };
            for library in libs {
                if probes.has(&library.id, None) {
                    continue;
                }
                match probes.attach_library(&library, None) {
                    Ok(n) => log::info!(
                        "probing {} ({n} probes), mapped by pid {pid}",
                        library.path.display()
                    ),
                    Err(e) => log::warn!("{e}"),
                }
                publish_libraries(&mut lock(&shared.stats), probes);
            }
        }
    }
}
