//! Live capture framed into HTTP messages: the capture and the pipeline behind it, as
//! `capture messages`, `capture record` and the agent's recordings all need them. It owns the
//! end of a capture too (detach, frame what is still in flight, close open connections), so
//! the last messages are never lost at shutdown whoever stops it.

use std::time::Duration;

use super::{CaptureConfig, CaptureStats, LiveCapture};
use crate::message::HttpMessage;
use crate::packet::Timestamp;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};

/// How often connections idle past the reassembly timeout are closed and their messages
/// emitted, even when no packet arrives.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);

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

/// A running capture whose packets are framed into messages as they arrive.
pub struct LiveMessages {
    capture: LiveCapture,
    pipeline: Pipeline,
    expire: tokio::time::Interval,
}

impl LiveMessages {
    /// Attaches the capture (see [`LiveCapture::start`]) and a pipeline for its ports.
    pub fn start(config: &CaptureConfig) -> anyhow::Result<Self> {
        let capture = LiveCapture::start(config)?;
        let pipeline = Pipeline::new(PipelineConfig {
            ports: config.ports.clone(),
            ..PipelineConfig::default()
        });
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            capture,
            pipeline,
            expire,
        })
    }

    /// Waits for the next batch of packets (or the next idle check) and appends the messages
    /// it completes to `out` (possibly none). False once the capture has ended on its own.
    pub async fn next(&mut self, out: &mut Vec<HttpMessage>) -> bool {
        tokio::select! {
            batch = self.capture.recv() => match batch {
                Some(batch) => {
                    for packet in &batch {
                        self.pipeline.push_packet(packet, out);
                    }
                    true
                }
                None => false,
            },
            _ = self.expire.tick() => {
                self.pipeline.expire(Timestamp::now(), out);
                true
            }
        }
    }

    /// Counters now.
    pub fn stats(&self) -> anyhow::Result<LiveStats> {
        Ok(LiveStats {
            capture: self.capture.stats()?,
            pipeline: self.pipeline.stats(),
        })
    }

    /// Ends the capture: detaches, frames every packet still in flight and closes open
    /// connections, appending the last messages to `out`. The counters returned are final.
    pub async fn finish(self, out: &mut Vec<HttpMessage>) -> anyhow::Result<LiveStats> {
        let Self {
            capture,
            mut pipeline,
            ..
        } = self;
        let mut rest = Vec::new();
        let capture = capture.stop_and_drain(|batch| rest.push(batch)).await?;
        for packet in rest.iter().flatten() {
            pipeline.push_packet(packet, out);
        }
        pipeline.finish(out);
        Ok(LiveStats {
            capture,
            pipeline: pipeline.stats(),
        })
    }
}
