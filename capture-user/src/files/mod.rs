//! Files of traffic that come from elsewhere or go elsewhere: pcap/pcapng captures (read
//! through the same pipeline as live capture) and GoReplay's format (in and out). Formats,
//! not store backends: a file is read once into messages, a recording is a stored window.
//!
//! Files are read as streams: [`MessageFile::visit`] hands each message on as it is framed
//! or parsed, so memory does not grow with the file (pcap: the pipeline's bounded state;
//! GoReplay: one payload and the requests waiting for their response, within a cap).

pub mod gor;
pub mod pcap;
pub mod pending;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

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
    frame_packets(pcap::open(path)?, ports, |batch, _| {
        sink(batch).map(|()| true)
    })
}

/// [`frame_pcap`] over packets already opened; `sink` also gets the bytes of the file read
/// so far, and stops the framing by returning false (what it was handed is its own, the
/// rest is not framed).
fn frame_packets(
    mut packets: pcap::PcapPackets,
    ports: &[u16],
    mut sink: impl FnMut(&mut Vec<HttpMessage>, u64) -> anyhow::Result<bool>,
) -> anyhow::Result<FramedPcap> {
    let mut pipeline = Pipeline::new(PipelineConfig {
        ports: ports.to_vec(),
        ..PipelineConfig::default()
    });
    let mut messages = Vec::new();
    let mut cut_short = None;
    while let Some(packet) = packets.next() {
        match packet {
            Ok(packet) => pipeline.push_packet(packet, &mut messages),
            Err(e) => {
                cut_short = Some(e.into());
                break;
            }
        }
        if messages.len() >= PCAP_BATCH && !sink(&mut messages, packets.bytes_read())? {
            return Ok(FramedPcap {
                stats: pipeline.stats(),
                cut_short: None,
            });
        }
    }
    pipeline.finish(&mut messages);
    sink(&mut messages, packets.bytes_read())?;
    Ok(FramedPcap {
        stats: pipeline.stats(),
        cut_short,
    })
}

/// What reading a file of messages gave besides the messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Messages handed on.
    pub messages: u64,
    /// What was lost or left out on the way, by the names recordings use (only those that
    /// occurred): the pipeline's losses for a pcap, `replayed_responses_skipped` and
    /// `gor_pending_requests_evicted` for GoReplay.
    pub drops: BTreeMap<String, u64>,
}

/// A pcap or GoReplay file opened and recognised, not yet read: opening fails early (a
/// missing file, an unknown format) before anything is started with its messages.
pub struct MessageFile {
    path: PathBuf,
    size: u64,
    source: Source,
}

enum Source {
    Gor(gor::GorReader<BufReader<File>>),
    Pcap {
        packets: pcap::PcapPackets,
        ports: Vec<u16>,
    },
}

impl MessageFile {
    /// Opens a pcap (framed by the capture pipeline, `ports` as in [`frame_pcap`]) or a
    /// GoReplay file.
    pub fn open(path: &Path, ports: &[u16], format: FileFormat) -> anyhow::Result<Self> {
        let is_gor = match format {
            FileFormat::Pcap => false,
            FileFormat::Gor => true,
            FileFormat::Detect => looks_like_gor(path)?,
        };
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let source = if is_gor {
            Source::Gor(gor::GorReader::new(BufReader::with_capacity(1 << 20, file)))
        } else {
            Source::Pcap {
                packets: pcap::open(path)?,
                ports: ports.to_vec(),
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            size,
            source,
        })
    }

    /// The file's size in bytes: where the positions handed to `visit` end.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Hands each message to `visit` in file order with the bytes of the file read so far
    /// (compressed bytes for a gzip'd pcap), until the file ends or `visit` returns false.
    /// A file that is cut short or garbled part way is an error, after the messages before
    /// it were handed on.
    pub fn visit(
        self,
        visit: &mut dyn FnMut(HttpMessage, u64) -> bool,
    ) -> anyhow::Result<FileStats> {
        match self.source {
            Source::Gor(reader) => visit_gor(reader, visit)
                .with_context(|| format!("{} (GoReplay format)", self.path.display())),
            Source::Pcap { packets, ports } => visit_pcap(packets, &ports, visit),
        }
    }
}

fn visit_gor(
    mut reader: gor::GorReader<BufReader<File>>,
    visit: &mut dyn FnMut(HttpMessage, u64) -> bool,
) -> Result<FileStats, gor::GorError> {
    let mut messages = gor::GorMessages::default();
    while let Some(payload) = reader.next_payload()? {
        if let Some(m) = messages.push(payload)
            && !visit(m, reader.position())
        {
            break;
        }
    }
    Ok(FileStats {
        messages: messages.messages(),
        drops: messages.drops(),
    })
}

fn visit_pcap(
    packets: pcap::PcapPackets,
    ports: &[u16],
    visit: &mut dyn FnMut(HttpMessage, u64) -> bool,
) -> anyhow::Result<FileStats> {
    let mut handed = 0u64;
    let framed = frame_packets(packets, ports, |batch, position| {
        for m in batch.drain(..) {
            handed += 1;
            if !visit(m, position) {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    if let Some(e) = framed.cut_short {
        return Err(e);
    }
    Ok(FileStats {
        messages: handed,
        drops: crate::store::drops_seen(framed.stats.losses()),
    })
}

/// Opens a file of messages and visits them ([`MessageFile::open`], [`MessageFile::visit`]).
pub fn visit_messages(
    path: &Path,
    ports: &[u16],
    format: FileFormat,
    visit: &mut dyn FnMut(HttpMessage, u64) -> bool,
) -> anyhow::Result<FileStats> {
    MessageFile::open(path, ports, format)?.visit(visit)
}

/// GoReplay files start with a payload type digit and a space; pcaps with a binary magic.
fn looks_like_gor(path: &Path) -> anyhow::Result<bool> {
    use std::io::Read as _;
    let mut head = [0u8; 2];
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    if n == 0 {
        bail!("{} is empty", path.display());
    }
    Ok(matches!(head[0], b'1' | b'2' | b'3') && head[1] == b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("writing a test file");
        path
    }

    #[test]
    fn a_goreplay_file_streams_with_positions_and_stops_when_told() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = Vec::new();
        for (kind, id) in [(1, "a"), (2, "a"), (3, "a"), (1, "b")] {
            let p = gor::GorPayload {
                kind,
                id: id.into(),
                ts_ns: 1,
                latency_ns: 0,
                bytes: bytes::Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            };
            gor::write_payload(&mut file, &p).expect("writing to memory");
        }
        let path = write(dir.path(), "f.gor", &file);
        let opened = MessageFile::open(&path, &[], FileFormat::Detect).expect("open");
        assert_eq!(opened.size(), file.len() as u64);
        let mut seen = Vec::new();
        let stats = opened
            .visit(&mut |m, at| {
                seen.push((m.id, at));
                true
            })
            .expect("visit");
        let each = file.len() as u64 / 4;
        assert_eq!(seen, vec![(1, each), (2, 2 * each), (3, 4 * each)]);
        assert_eq!(stats.messages, 3);
        assert_eq!(stats.drops["replayed_responses_skipped"], 1);

        let mut first = 0;
        let stats = visit_messages(&path, &[], FileFormat::Gor, &mut |_, _| {
            first += 1;
            false
        })
        .expect("visit");
        assert_eq!((first, stats.messages), (1, 1));
    }

    #[test]
    fn a_garbled_goreplay_file_fails_naming_the_file_and_the_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(
            dir.path(),
            "bad.gor",
            "1 a 1 0\nGET /\n🐵🙈🙉\n7 x\nGET /".as_bytes(),
        );
        let mut handed = 0;
        let e = visit_messages(&path, &[], FileFormat::Detect, &mut |_, _| {
            handed += 1;
            true
        })
        .expect_err("garbage");
        let text = format!("{e:#}");
        assert!(text.contains("bad.gor (GoReplay format)"), "{text}");
        let second = "1 a 1 0\nGET /".len() + gor::SEPARATOR.len();
        assert!(
            text.contains(&format!("payload 1 at byte {second}")),
            "{text}"
        );
        assert_eq!(handed, 1);
    }

    #[test]
    fn unknown_files_fail_before_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "junk", b"this is not a capture");
        let e = MessageFile::open(&path, &[], FileFormat::Detect).err();
        assert!(e.is_some_and(|e| e.to_string().contains("not a pcap")));
        let empty = write(dir.path(), "empty", b"");
        assert!(MessageFile::open(&empty, &[], FileFormat::Detect).is_err());
    }
}
