//! Command-line commands: each parses its own arguments (clap) and is a thin shell over the
//! library stages.

pub mod agent;
pub mod capture_args;
pub mod messages;
pub mod packets;
pub mod record;
pub mod recordings;
pub mod replay;
pub mod store_args;

use crate::live::{CaptureStats, LiveCapture};
use crate::message::HttpMessage;
use crate::pipeline::Pipeline;

/// Ends a live capture feeding a pipeline: detaches, frames every packet still in flight,
/// and closes open connections, so the last messages are not lost at shutdown.
pub async fn finish_live(
    capture: LiveCapture,
    pipeline: &mut Pipeline,
    messages: &mut Vec<HttpMessage>,
) -> anyhow::Result<CaptureStats> {
    let mut rest = Vec::new();
    let stats = capture.stop_and_drain(|batch| rest.push(batch)).await?;
    for packet in rest.iter().flatten() {
        pipeline.push_packet(packet, messages);
    }
    pipeline.finish(messages);
    Ok(stats)
}
