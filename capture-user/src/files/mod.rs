//! Files of traffic that come from elsewhere or go elsewhere: pcap/pcapng captures (read
//! through the same pipeline as live capture) and GoReplay's format (in and out). Formats,
//! not store backends: a file is read once into messages, a recording is a stored window.

pub mod gor;
pub mod pcap;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};

use crate::message::HttpMessage;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};

/// What a file of messages is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// pcap/pcapng (gzip too) or GoReplay, told apart by their first bytes.
    Detect,
    Pcap,
    Gor,
}

/// Messages framed from a pcap file are handed on in batches of about this many, so a large
/// file never sits in memory as one list before it is printed or stored.
const PCAP_BATCH: usize = 256;

/// What framing a pcap file gave besides its messages.
pub struct FramedPcap {
    pub stats: PipelineStats,
    /// The read error that ended the file early (a truncated capture); everything framed
    /// before it was handed on.
    pub cut_short: Option<anyhow::Error>,
}

/// Frames every message of a pcap/pcapng file through the capture pipeline (`ports` as in
/// `capture messages`: empty means every TCP connection), handing them to `sink` in batches.
/// Fails when the file cannot be opened or `sink` fails; a file that ends in garbage still
/// hands on what came before and says so in [`FramedPcap::cut_short`].
pub fn frame_pcap(
    path: &Path,
    ports: &[u16],
    mut sink: impl FnMut(&mut Vec<HttpMessage>) -> anyhow::Result<()>,
) -> anyhow::Result<FramedPcap> {
    let packets = pcap::open(path)?;
    let mut pipeline = Pipeline::new(PipelineConfig {
        ports: ports.to_vec(),
        ..PipelineConfig::default()
    });
    let mut messages = Vec::new();
    let mut cut_short = None;
    for packet in packets {
        match packet {
            Ok(packet) => pipeline.push_packet(packet, &mut messages),
            Err(e) => {
                cut_short = Some(e.into());
                break;
            }
        }
        if messages.len() >= PCAP_BATCH {
            sink(&mut messages)?;
        }
    }
    pipeline.finish(&mut messages);
    sink(&mut messages)?;
    Ok(FramedPcap {
        stats: pipeline.stats(),
        cut_short,
    })
}

/// Reads a pcap (framed by the capture pipeline, `ports` as in [`frame_pcap`]) or a GoReplay
/// file into messages, with what was lost on the way (same names as live drops).
pub fn read_messages(
    path: &Path,
    ports: &[u16],
    format: FileFormat,
) -> anyhow::Result<(Vec<HttpMessage>, BTreeMap<String, u64>)> {
    let is_gor = match format {
        FileFormat::Pcap => false,
        FileFormat::Gor => true,
        FileFormat::Detect => looks_like_gor(path)?,
    };
    if is_gor {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let payloads =
            gor::parse(&data).with_context(|| format!("{} (GoReplay format)", path.display()))?;
        let (messages, skipped) = gor::to_messages(&payloads);
        let drops = BTreeMap::from_iter(
            (skipped > 0).then(|| ("replayed_responses_skipped".to_string(), skipped)),
        );
        return Ok((messages, drops));
    }
    let mut messages = Vec::new();
    let framed = frame_pcap(path, ports, |batch| {
        messages.append(batch);
        Ok(())
    })?;
    if let Some(e) = framed.cut_short {
        return Err(e);
    }
    Ok((messages, crate::store::drops_seen(framed.stats.losses())))
}

/// GoReplay files start with a payload type digit and a space; pcaps with a binary magic.
fn looks_like_gor(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read as _;
    let mut head = [0u8; 2];
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    if n == 0 {
        bail!("{} is empty", path.display());
    }
    Ok(matches!(head[0], b'1' | b'2' | b'3') && head[1] == b' ')
}
