//! Live capture framed into HTTP messages on the ring thread: the capture and the pipeline
//! behind it, as `capture messages`, `capture record` and the agent's recordings all need
//! them. Framing where the packets are drained keeps the hot path off the async runtime and
//! free of a hand-off per packet batch. It owns the end of a capture too (detach, frame what
//! is still in flight, close open connections), so the last messages are never lost at
//! shutdown, whoever stops it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ring::PacketBatch;
use super::{CaptureConfig, CaptureStats, LiveCapture, PacketSink};
use crate::message::HttpMessage;
use crate::packet::Timestamp;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};

/// How often connections idle past the reassembly timeout are closed and their messages
/// emitted, even when no packet arrives; also how fresh the framing counters in
/// [`LiveMessages::stats`] are.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

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
}

impl LiveStats {
    /// What was lost on the way from the wire to messages, by reason (zero values included):
    /// the kernel's losses, then reassembly's and framing's.
    pub fn losses(&self) -> Vec<(String, u64)> {
        self.capture
            .kernel
            .losses()
            .map(|(name, v)| (name.to_string(), v))
            .chain(self.pipeline.losses())
            .collect()
    }

    /// Every counter on one line, kernel and ring first.
    pub fn to_line(&self) -> String {
        format!("{} {}", self.capture.to_line(), self.pipeline.to_line())
    }
}

/// The packet sink behind [`LiveMessages`]: frames each batch and hands the messages on.
pub struct Framer<M> {
    pipeline: Pipeline,
    sink: M,
    messages: Vec<HttpMessage>,
    /// The pipeline's counters as of the last idle check, for [`LiveMessages::stats`].
    published: Arc<Mutex<PipelineStats>>,
    last_check: Instant,
}

impl<M: MessageSink> PacketSink for Framer<M> {
    fn packets(&mut self, batch: &mut PacketBatch) -> bool {
        for packet in batch.iter() {
            self.pipeline.push_packet(packet, &mut self.messages);
        }
        self.messages.is_empty() || self.sink.deliver(&mut self.messages)
    }

    fn idle(&mut self) {
        if self.last_check.elapsed() < EXPIRE_EVERY {
            return;
        }
        self.last_check = Instant::now();
        self.pipeline.expire(Timestamp::now(), &mut self.messages);
        if !self.messages.is_empty() {
            self.sink.deliver(&mut self.messages);
        }
        *lock(&self.published) = self.pipeline.stats();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running capture whose packets are framed into messages as they arrive and handed to a
/// [`MessageSink`].
pub struct LiveMessages<M> {
    capture: LiveCapture<Framer<M>>,
    published: Arc<Mutex<PipelineStats>>,
}

impl<M: MessageSink> LiveMessages<M> {
    /// Attaches the capture (see [`LiveCapture::start`]) with a pipeline for its ports, the
    /// messages going to `sink`.
    pub fn start(config: &CaptureConfig, sink: M) -> anyhow::Result<Self> {
        let published = Arc::new(Mutex::new(PipelineStats::default()));
        let framer = Framer {
            pipeline: Pipeline::new(PipelineConfig {
                ports: config.ports.clone(),
                ..PipelineConfig::default()
            }),
            sink,
            messages: Vec::new(),
            published: published.clone(),
            last_check: Instant::now(),
        };
        let capture = LiveCapture::start(config, framer)?;
        Ok(Self { capture, published })
    }

    /// Counters now (framing counters as of the last second).
    pub fn stats(&self) -> anyhow::Result<LiveStats> {
        Ok(LiveStats {
            capture: self.capture.stats()?,
            pipeline: lock(&self.published).clone(),
        })
    }

    /// False once the ring thread ended on its own (the sink gave up).
    pub fn is_running(&self) -> bool {
        self.capture.is_running()
    }

    /// Ends the capture: detaches, frames every packet still in flight and closes open
    /// connections, handing the last messages to the sink with
    /// [`MessageSink::deliver_last`]. Gives the sink back with the final counters. Blocks
    /// until the ring thread ends (run it off the async runtime's workers).
    pub fn finish(self) -> anyhow::Result<(LiveStats, M)> {
        let (capture, mut framer) = self.capture.stop()?;
        framer.pipeline.finish(&mut framer.messages);
        framer.sink.deliver_last(&mut framer.messages);
        let stats = LiveStats {
            capture,
            pipeline: framer.pipeline.stats(),
        };
        Ok((stats, framer.sink))
    }
}
