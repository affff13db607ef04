//! Live capture framed into HTTP messages on the ring thread: the capture and the pipeline
//! behind it, as `capture messages`, `capture record` and the agent's recordings all need
//! them. Framing where the packets are drained keeps the hot path off the async runtime and
//! free of a hand-off per packet batch. It owns the end of a capture too (detach, frame what
//! is still in flight, close open connections), so the last messages are never lost at
//! shutdown, whoever stops it.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use crate::sync::lock;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::reader::PacketBatch;
use super::{CaptureConfig, CaptureStats, LiveCapture, PacketSink};
use crate::message::HttpMessage;
use crate::packet::Timestamp;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use crate::reassembly::StreamEvent;
use crate::tls::{TlsCapture, TlsStats};

/// How often connections idle past the reassembly timeout are closed and their messages
/// emitted, even when no packet arrives; also how fresh the framing counters in
/// [`LiveMessages::stats`] are.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

/// Messages a framer collects before handing them on in the middle of a drain; otherwise it
/// hands them on once per drain of the ring. Each hand-over wakes the store thread, and a
/// wake-up costs ~50 µs of CPU on a VM: once per 512-packet batch, that was about a hundred
/// wake-ups a second at 20k requests/s.
const DELIVER_AT: usize = 4096;

/// Where framed messages go. It runs on the ring thread, so it must not wait on anything
/// slow: what it cannot take at once it drops and counts (the store queue does), or it
/// waits and lets the kernel count the packets that no longer fit the ring (printing does).
pub trait MessageSink: Send + 'static {
    /// Takes the messages framed from one batch of packets or one idle check (leaving
    /// `messages` empty). False stops the capture: the consumer is gone.
    fn deliver(&mut self, messages: &mut Vec<HttpMessage>) -> bool;

    /// Takes the messages framed while the capture ends: waiting is fine now, and nothing
    /// already captured should be dropped for lack of room.
    fn deliver_last(&mut self, messages: &mut Vec<HttpMessage>) {
        self.deliver(messages);
    }
}

/// Counters of a live capture and of the framing behind it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveStats {
    pub capture: CaptureStats,
    pub pipeline: PipelineStats,
    /// With `--tls`: the probes' and streams' counters.
    pub tls: Option<TlsStats>,
}

impl LiveStats {
    /// What was lost on the way from the wire to messages, by reason (zero values included):
    /// the kernel's losses, then reassembly's and framing's.
    pub fn losses(&self) -> Vec<(String, u64)> {
        if let Some(tls) = &self.tls {
            return tls
                .losses()
                .into_iter()
                .chain(self.pipeline.losses())
                .collect();
        }
        self.capture
            .kernel
            .losses()
            .map(|(name, v)| (name.to_string(), v))
            .chain(self.pipeline.losses())
            .collect()
    }

    /// Every counter on one line, kernel and ring first (TLS probes first with `--tls`).
    pub fn to_line(&self) -> String {
        if let Some(tls) = &self.tls {
            let probes: Vec<String> = tls
                .pairs()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            return format!("{} {}", probes.join(" "), self.pipeline.to_line());
        }
        format!("{} {}", self.capture.to_line(), self.pipeline.to_line())
    }
}

/// One framing pipeline and where its messages go: run on the ring thread itself, or on one
/// of the shard threads.
pub struct Framer<M> {
    pipeline: Pipeline,
    sink: M,
    messages: Vec<HttpMessage>,
    /// The pipeline's counters as of the last idle check, for [`LiveMessages::stats`].
    published: Arc<Mutex<PipelineStats>>,
    last_check: Instant,
    /// This framer's place among the shards: ids and connection numbers it hands out are
    /// renumbered `n * count + index`, unique across shards and still increasing.
    shard: Shard,
}

/// Which of how many framers: `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shard {
    index: u64,
    count: u64,
}

impl Shard {
    fn renumber(&self, messages: &mut [HttpMessage]) {
        if self.count <= 1 {
            return;
        }
        let global = |n: u64| n * self.count + self.index;
        for m in messages {
            m.id = global(m.id);
            m.request_id = m.request_id.map(global);
            m.conn_id = global(m.conn_id);
        }
    }
}

impl<M: MessageSink> Framer<M> {
    fn new(config: &CaptureConfig, sink: M, shard: Shard) -> Self {
        Self {
            pipeline: Pipeline::new(PipelineConfig {
                ports: config.ports.clone(),
                redaction: config.redaction.clone(),
                ..PipelineConfig::default()
            }),
            sink,
            messages: Vec::new(),
            published: Arc::new(Mutex::new(PipelineStats::default())),
            last_check: Instant::now(),
            shard,
        }
    }

    /// One framer for a capture that is not sharded (TLS capture).
    pub(crate) fn single(config: &CaptureConfig, sink: M) -> Self {
        Self::new(config, sink, Shard { index: 0, count: 1 })
    }

    /// Where its counters are published every second.
    pub(crate) fn published(&self) -> Arc<Mutex<PipelineStats>> {
        self.published.clone()
    }

    /// Frames stream events from a source that needs no reassembly (TLS plaintext, in order
    /// per stream); false once the sink gave up.
    pub(crate) fn stream_events(&mut self, events: &mut Vec<StreamEvent>) -> bool {
        self.pipeline.push_stream_events(events, &mut self.messages);
        self.messages.len() < DELIVER_AT || self.deliver()
    }

    fn deliver(&mut self) -> bool {
        if self.messages.is_empty() {
            return true;
        }
        self.shard.renumber(&mut self.messages);
        self.sink.deliver(&mut self.messages)
    }

    /// Closes what is open and hands the last messages on; the final counters.
    pub(crate) fn finish(mut self) -> PipelineStats {
        self.pipeline.finish(&mut self.messages);
        self.shard.renumber(&mut self.messages);
        self.sink.deliver_last(&mut self.messages);
        self.pipeline.stats()
    }
}

impl<M: MessageSink> PacketSink for Framer<M> {
    fn packets(&mut self, batch: &mut PacketBatch) -> bool {
        for packet in batch.drain(..) {
            self.pipeline.push_packet(packet, &mut self.messages);
        }
        self.messages.len() < DELIVER_AT || self.deliver()
    }

    /// After every drain: hands on what the drain framed, and closes idle connections every
    /// [`EXPIRE_EVERY`].
    fn idle(&mut self) {
        if self.last_check.elapsed() >= EXPIRE_EVERY {
            self.last_check = Instant::now();
            self.pipeline.expire(Timestamp::now(), &mut self.messages);
            *lock(&self.published) = self.pipeline.stats();
        }
        self.deliver();
    }
}

/// Packet batches queued for each shard thread; beyond it the ring thread waits, the ring
/// fills and the kernel counts drops.
const SHARD_QUEUE_BATCHES: usize = 64;

/// The packet sink of a sharded capture, on the ring thread: sends each packet to the shard
/// thread of its connection (both directions of a connection hash alike), so each
/// connection's order is kept and the shards frame in parallel.
pub struct Shards<M> {
    queues: Vec<std_mpsc::SyncSender<PacketBatch>>,
    pending: Vec<PacketBatch>,
    threads: Vec<std::thread::JoinHandle<Framer<M>>>,
}

impl<M: MessageSink> PacketSink for Shards<M> {
    fn packets(&mut self, batch: &mut PacketBatch) -> bool {
        let count = self.queues.len();
        for packet in batch.drain(..) {
            // The kernel's hash of the connection, alike both ways (see `ChunkHeader`).
            let shard = packet.flow_hash as usize % count;
            self.pending[shard].push(packet);
        }
        for (queue, pending) in self.queues.iter().zip(self.pending.iter_mut()) {
            if !pending.is_empty() && queue.send(std::mem::take(pending)).is_err() {
                return false; // a shard's sink gave up
            }
        }
        true
    }
}

/// Runs one shard: frames what the ring thread sends, checks for idle connections when
/// nothing comes, and ends when the ring thread drops its queue.
fn run_shard<M: MessageSink>(
    mut framer: Framer<M>,
    queue: std_mpsc::Receiver<PacketBatch>,
) -> Framer<M> {
    loop {
        match queue.recv_timeout(EXPIRE_EVERY) {
            Ok(mut batch) => {
                if !framer.packets(&mut batch) {
                    return framer;
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return framer,
        }
        framer.idle();
    }
}

/// How packets are framed: on the ring thread, or spread over shard threads.
pub enum Framing<M> {
    Inline(Box<Framer<M>>),
    Sharded(Shards<M>),
}

impl<M: MessageSink> PacketSink for Framing<M> {
    fn packets(&mut self, batch: &mut PacketBatch) -> bool {
        match self {
            Self::Inline(framer) => framer.packets(batch),
            Self::Sharded(shards) => shards.packets(batch),
        }
    }

    fn idle(&mut self) {
        if let Self::Inline(framer) = self {
            framer.idle();
        }
    }
}

impl<M: MessageSink + Clone> Framing<M> {
    /// `threads` framers for `config`'s ports, each handing its messages to a clone of
    /// `sink`; one framer runs on the ring thread itself.
    fn start(
        config: &CaptureConfig,
        threads: usize,
        sink: M,
    ) -> anyhow::Result<(Self, Vec<Arc<Mutex<PipelineStats>>>)> {
        let count = threads.max(1);
        let shard = |index: usize| Shard {
            index: index as u64,
            count: count as u64,
        };
        if count == 1 {
            let framer = Framer::new(config, sink, shard(0));
            let published = vec![framer.published.clone()];
            return Ok((Self::Inline(Box::new(framer)), published));
        }
        let mut shards = Shards {
            queues: Vec::new(),
            pending: vec![Vec::new(); count],
            threads: Vec::new(),
        };
        let mut published = Vec::new();
        for index in 0..count {
            let framer = Framer::new(config, sink.clone(), shard(index));
            published.push(framer.published.clone());
            let (tx, rx) = std_mpsc::sync_channel(SHARD_QUEUE_BATCHES);
            let thread = std::thread::Builder::new()
                .name(format!("capture-frame-{index}"))
                .spawn(move || run_shard(framer, rx))
                .context("starting a framing thread")?;
            shards.queues.push(tx);
            shards.threads.push(thread);
        }
        Ok((Self::Sharded(shards), published))
    }

    /// Ends framing after the ring thread stopped: each framer closes what is open and hands
    /// its last messages on. The counters of all framers, added up.
    fn finish(self) -> anyhow::Result<PipelineStats> {
        let framers = match self {
            Self::Inline(framer) => vec![*framer],
            Self::Sharded(shards) => {
                drop(shards.queues); // the shard threads drain their queues and end
                shards
                    .threads
                    .into_iter()
                    .map(|t| {
                        t.join()
                            .map_err(|_| anyhow::anyhow!("a framing thread panicked"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
        };
        let mut total = PipelineStats::default();
        for framer in framers {
            total.add(&framer.finish());
        }
        Ok(total)
    }
}

/// A running capture whose packets (or, with `--tls`, TLS plaintext) are framed into
/// messages as they arrive and handed to a [`MessageSink`].
pub struct LiveMessages<M> {
    source: Source<M>,
}

enum Source<M> {
    Packets {
        capture: LiveCapture<Framing<M>>,
        published: Vec<Arc<Mutex<PipelineStats>>>,
    },
    Tls(TlsCapture<M>),
}

impl<M: MessageSink + Clone> LiveMessages<M> {
    /// Attaches the capture (see [`LiveCapture::start`]) with `threads` framing pipelines
    /// for its ports (1: framing on the ring thread; more: connections spread over that many
    /// threads by a hash of their addresses), the messages going to `sink` (cloned per
    /// thread). With `config.tls`, probes TLS libraries instead (one framing thread).
    pub fn start(config: &CaptureConfig, threads: usize, sink: M) -> anyhow::Result<Self> {
        if config.tls.is_some() {
            let capture = TlsCapture::start(config, sink)?;
            return Ok(Self {
                source: Source::Tls(capture),
            });
        }
        let (framing, published) = Framing::start(config, threads, sink)?;
        let capture = LiveCapture::start(config, framing)?;
        Ok(Self {
            source: Source::Packets { capture, published },
        })
    }

    /// Counters now (framing counters as of the last second).
    pub fn stats(&self) -> anyhow::Result<LiveStats> {
        match &self.source {
            Source::Packets { capture, published } => {
                let mut pipeline = PipelineStats::default();
                for published in published {
                    pipeline.add(&lock(published));
                }
                Ok(LiveStats {
                    capture: capture.stats()?,
                    pipeline,
                    tls: None,
                })
            }
            Source::Tls(capture) => Ok(LiveStats {
                capture: CaptureStats::default(),
                pipeline: capture.pipeline_stats(),
                tls: Some(capture.stats()),
            }),
        }
    }

    /// False once the ring thread ended on its own (a sink gave up).
    pub fn is_running(&self) -> bool {
        match &self.source {
            Source::Packets { capture, .. } => capture.is_running(),
            Source::Tls(capture) => capture.is_running(),
        }
    }

    /// The interfaces the hooks are attached to now (none for TLS capture).
    pub fn attached_interfaces(&self) -> std::collections::BTreeSet<String> {
        match &self.source {
            Source::Packets { capture, .. } => capture.attached_interfaces(),
            Source::Tls(_) => Default::default(),
        }
    }

    /// Ends the capture: detaches, frames every packet still in flight and closes open
    /// connections, handing the last messages to the sinks with
    /// [`MessageSink::deliver_last`], then drops the sinks. Blocks until every thread ended
    /// (run it off the async runtime's workers).
    pub fn finish(self) -> anyhow::Result<LiveStats> {
        match self.source {
            Source::Packets { capture, .. } => {
                let (capture, framing) = capture.stop()?;
                let pipeline = framing.finish()?;
                Ok(LiveStats {
                    capture,
                    pipeline,
                    tls: None,
                })
            }
            Source::Tls(capture) => {
                let (tls, pipeline) = capture.finish()?;
                Ok(LiveStats {
                    capture: CaptureStats::default(),
                    pipeline,
                    tls: Some(tls),
                })
            }
        }
    }
}
