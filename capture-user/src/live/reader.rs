//! The ring reader: the thin I/O shell around [`ChunkAssembler`]. A dedicated OS thread
//! polls the ring's file descriptor, drains it in batches and hands each batch to a
//! [`PacketSink`] on that same thread: framing for `messages`, `record` and the agent, a
//! bounded channel to the async side for `packets`. Keeping the drain and what follows it
//! off the runtime's worker threads means no async task can stall it, and a slow sink turns
//! into counted kernel drops (the ring fills) instead of unbounded memory.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc;

use super::ring::{Assembled, ChunkAssembler, ClockOffset, RingStats};
use crate::packet::CapturedPacket;

/// Packets handed to the consumer at once.
pub type PacketBatch = Vec<CapturedPacket>;

/// Most packets in one batch; a batch is also handed on whenever the ring runs empty.
pub const MAX_BATCH_PACKETS: usize = 512;

/// What the reader thread hands packets to. It runs on that thread, so whatever it does per
/// packet (framing, storing, printing) stays off the async runtime; while it works, the ring
/// fills, and what does not fit is counted by the kernel.
pub trait PacketSink: Send + 'static {
    /// Takes a batch of packets (leaving `batch` empty or not; it is cleared after). False
    /// stops the reader: nobody wants packets any more.
    fn packets(&mut self, batch: &mut PacketBatch) -> bool;

    /// Called after every drain of the ring, at least every [`POLL_TIMEOUT_MS`]: a place for
    /// timers (closing idle connections) when no packet comes.
    fn idle(&mut self) {}
}

/// Handle on the reader thread; joining it gives the sink back.
pub struct RingReader<S> {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<S>>,
    stats: Arc<RingStats>,
}

impl<S> RingReader<S> {
    /// Live userspace ring counters.
    pub fn stats(&self) -> &Arc<RingStats> {
        &self.stats
    }

    /// False once the thread ended (its sink gave up, or it was stopped).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Asks the thread to drain what is left in the ring and end, and waits for it. Call
    /// after detaching the programs so nothing new arrives. `None` when the thread panicked.
    pub fn stop(&mut self) -> Option<S> {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take()?;
        match thread.join() {
            Ok(sink) => Some(sink),
            Err(_) => {
                log::error!("ring reader thread panicked");
                None
            }
        }
    }
}

impl<S> Drop for RingReader<S> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long one poll waits when no wake-up comes: the kernel side only wakes the reader when
/// the ring is filling up, so this bounds the latency of a quiet ring.
pub const POLL_TIMEOUT_MS: i32 = 100;

/// Starts the reader thread, handing packets to `sink` on it.
pub fn spawn_reader<S: PacketSink>(
    mut ring: RingBuf<MapData>,
    clock: ClockOffset,
    mut sink: S,
) -> std::io::Result<RingReader<S>> {
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(RingStats::default());
    let thread = {
        let stop = stop.clone();
        let stats = stats.clone();
        std::thread::Builder::new()
            .name("capture-ring".into())
            .spawn(move || {
                reader_loop(&mut ring, clock, &mut sink, &stop, &stats);
                sink
            })?
    };
    Ok(RingReader {
        stop,
        thread: Some(thread),
        stats,
    })
}

/// Drains the ring until stopped (then drains it once more) or until the sink gives up.
fn reader_loop(
    ring: &mut RingBuf<MapData>,
    clock: ClockOffset,
    sink: &mut impl PacketSink,
    stop: &AtomicBool,
    stats: &RingStats,
) {
    let mut assembler = ChunkAssembler::new(clock);
    let mut batch: PacketBatch = Vec::with_capacity(MAX_BATCH_PACKETS);
    let fd = ring.as_raw_fd();
    loop {
        // Read the flag before draining: once set, one more full drain empties the ring.
        let stopping = stop.load(Ordering::Acquire);
        let sink_open = drain(ring, &mut assembler, &mut batch, sink, stats);
        stats
            .discarded_incomplete
            .store(assembler.discarded_incomplete(), Ordering::Relaxed);
        if !sink_open {
            // Nobody reads any more: stop draining. The kernel counts what it cannot write.
            return;
        }
        sink.idle();
        if stopping {
            assembler.finish();
            stats
                .discarded_incomplete
                .store(assembler.discarded_incomplete(), Ordering::Relaxed);
            return;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the ring's fd stays open for the life of `ring`.
        unsafe { libc::poll(&mut pfd, 1, POLL_TIMEOUT_MS) };
    }
}

/// Reads every record in the ring now, handing packets on in batches; false once the sink
/// gave up. Counts locally and publishes with each batch: an atomic add per record and
/// per packet would cost more than the rest of the ring's bookkeeping.
fn drain(
    ring: &mut RingBuf<MapData>,
    assembler: &mut ChunkAssembler,
    batch: &mut PacketBatch,
    sink: &mut impl PacketSink,
    stats: &RingStats,
) -> bool {
    let mut tally = Tally::default();
    while let Some(record) = ring.next() {
        tally.records += 1;
        match assembler.push(&record) {
            Assembled::Packet(packet) => {
                tally.packets += 1;
                tally.bytes += packet.data.len() as u64;
                tally.interface(packet.ifindex, packet.data.len() as u64);
                batch.push(packet);
            }
            Assembled::Pending => {}
            Assembled::BadRecord => tally.bad_records += 1,
        }
        drop(record);
        if batch.len() >= MAX_BATCH_PACKETS && !hand_on(batch, sink, stats, &mut tally) {
            return false;
        }
    }
    let open = batch.is_empty() || hand_on(batch, sink, stats, &mut tally);
    tally.publish(stats);
    open
}

/// What a drain counted since it last published to [`RingStats`].
#[derive(Default)]
struct Tally {
    records: u64,
    packets: u64,
    bytes: u64,
    bad_records: u64,
    /// (ifindex, packets, bytes): a node attaches to a handful of interfaces, and packets
    /// come in runs from one, so the last one used is checked first.
    interfaces: Vec<(u32, u64, u64)>,
    last: usize,
}

impl Tally {
    fn interface(&mut self, ifindex: u32, bytes: u64) {
        let at = match self.interfaces.get(self.last) {
            Some(&(i, ..)) if i == ifindex => self.last,
            _ => match self.interfaces.iter().position(|&(i, ..)| i == ifindex) {
                Some(at) => at,
                None => {
                    self.interfaces.push((ifindex, 0, 0));
                    self.interfaces.len() - 1
                }
            },
        };
        self.last = at;
        if let Some(entry) = self.interfaces.get_mut(at) {
            entry.1 += 1;
            entry.2 += bytes;
        }
    }

    fn publish(&mut self, stats: &RingStats) {
        stats.records.fetch_add(self.records, Ordering::Relaxed);
        stats.packets.fetch_add(self.packets, Ordering::Relaxed);
        stats.bytes.fetch_add(self.bytes, Ordering::Relaxed);
        stats
            .bad_records
            .fetch_add(self.bad_records, Ordering::Relaxed);
        if !self.interfaces.is_empty() {
            let mut per = crate::sync::lock(&stats.per_interface);
            for &(index, packets, bytes) in &self.interfaces {
                let entry = per.entry(index).or_default();
                entry.0 += packets;
                entry.1 += bytes;
            }
        }
        // Keep the allocation: the same interfaces come back in the next drain.
        let mut interfaces = std::mem::take(&mut self.interfaces);
        interfaces.clear();
        *self = Self {
            interfaces,
            ..Self::default()
        };
    }
}

fn hand_on(
    batch: &mut PacketBatch,
    sink: &mut impl PacketSink,
    stats: &RingStats,
    tally: &mut Tally,
) -> bool {
    tally.publish(stats);
    stats.batches.fetch_add(1, Ordering::Relaxed);
    let open = sink.packets(batch);
    batch.clear();
    open
}

/// A sink that hands batches to an async consumer through a bounded channel, waiting while
/// it is full (then the ring fills and the kernel counts drops).
pub struct ChannelSink(pub mpsc::Sender<PacketBatch>);

impl PacketSink for ChannelSink {
    fn packets(&mut self, batch: &mut PacketBatch) -> bool {
        let full = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH_PACKETS));
        self.0.blocking_send(full).is_ok()
    }
}
