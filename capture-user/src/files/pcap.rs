//! pcap and pcapng files (optionally gzip-compressed) as a packet source, so offline files
//! go through the same pipeline as live capture.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};

use crate::decode::LinkType;
use crate::packet::{CapturedPacket, Direction, PacketArena, Timestamp};

/// Why a capture file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a pcap or pcapng file (it starts with {magic:02x?})")]
    NotPcap { path: PathBuf, magic: Vec<u8> },
    #[error("{path}: {source} (the file may be truncated or corrupt)")]
    Format {
        path: PathBuf,
        source: pcap_file::PcapError,
    },
    #[error(
        "{path}: link type {linktype} is not supported; use Ethernet, Linux cooked (SLL), raw IP or BSD loopback captures"
    )]
    LinkType { path: PathBuf, linktype: u32 },
}

enum Inner {
    Pcap(PcapReader<BufReader<Box<dyn Read + Send>>>, LinkType),
    PcapNg(PcapNgReader<BufReader<Box<dyn Read + Send>>>),
}

/// Iterator over the packets of a capture file, in file order.
pub struct PcapPackets {
    path: PathBuf,
    inner: Inner,
    /// Packet bytes are copied here, as live capture copies them from the ring.
    arena: PacketArena,
    /// Packets skipped because their interface has a link type we cannot decode.
    pub unsupported_link_packets: u64,
    /// Bytes read from the file so far (compressed bytes for a gzip'd file).
    read: Arc<AtomicU64>,
}

impl PcapPackets {
    /// Bytes of the file read so far, for a progress display: the file's own bytes (so
    /// compressed ones for a gzip'd capture), up to a read buffer ahead of the packets
    /// handed on.
    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }
}

/// A reader that counts the bytes it hands on (the reading chain is boxed and `Send`, hence
/// the atomic, though only one thread reads).
struct Counted<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Opens a pcap or pcapng file, gzip-compressed or not (detected from the content).
pub fn open(path: &Path) -> Result<PcapPackets, PcapError> {
    let open_err = |source| PcapError::Open {
        path: path.to_path_buf(),
        source,
    };
    let read = Arc::new(AtomicU64::new(0));
    let file = Counted {
        inner: File::open(path).map_err(open_err)?,
        read: read.clone(),
    };
    let mut probe = BufReader::new(file);
    let gz = probe.fill_buf().map_err(open_err)?.starts_with(&GZIP_MAGIC);
    let reader: Box<dyn Read + Send> = if gz {
        Box::new(flate2::read::GzDecoder::new(probe))
    } else {
        Box::new(probe)
    };
    let mut reader = BufReader::with_capacity(1 << 20, reader);
    let magic = reader
        .fill_buf()
        .map_err(open_err)?
        .get(..4)
        .unwrap_or_default()
        .to_vec();
    let format_err = |source| PcapError::Format {
        path: path.to_path_buf(),
        source,
    };
    let inner = if magic == PCAPNG_MAGIC {
        Inner::PcapNg(PcapNgReader::new(reader).map_err(format_err)?)
    } else if matches!(
        magic.as_slice(),
        [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d]
    ) {
        let reader = PcapReader::new(reader).map_err(format_err)?;
        let linktype: u32 = reader.header().datalink.into();
        let link = LinkType::from_pcap(linktype).ok_or_else(|| PcapError::LinkType {
            path: path.to_path_buf(),
            linktype,
        })?;
        Inner::Pcap(reader, link)
    } else {
        return Err(PcapError::NotPcap {
            path: path.to_path_buf(),
            magic,
        });
    };
    Ok(PcapPackets {
        path: path.to_path_buf(),
        inner,
        arena: PacketArena::default(),
        unsupported_link_packets: 0,
        read,
    })
}

fn timestamp(d: std::time::Duration) -> Timestamp {
    Timestamp(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Iterator for PcapPackets {
    type Item = Result<CapturedPacket, PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        let path = &self.path;
        let format_err = |source| PcapError::Format {
            path: path.clone(),
            source,
        };
        match &mut self.inner {
            Inner::Pcap(reader, link) => {
                let packet = match reader.next_packet()? {
                    Ok(p) => p,
                    Err(e) => return Some(Err(format_err(e))),
                };
                let data = self.arena.copy(&packet.data);
                Some(Ok(CapturedPacket {
                    ts: timestamp(packet.timestamp),
                    ifindex: 0,
                    direction: Direction::Ingress,
                    link: *link,
                    wire_len: packet.orig_len,
                    flow_hash: 0,
                    data,
                }))
            }
            Inner::PcapNg(reader) => loop {
                let block = match reader.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(format_err(e))),
                };
                let Block::EnhancedPacket(epb) = block else {
                    continue;
                };
                let (interface_id, ts, original_len) =
                    (epb.interface_id, epb.timestamp, epb.original_len);
                let data = self.arena.copy(&epb.data);
                let linktype = reader
                    .interfaces()
                    .get(interface_id as usize)
                    .map(|i| u32::from(i.linktype));
                let Some(link) = linktype.and_then(LinkType::from_pcap) else {
                    self.unsupported_link_packets += 1;
                    continue;
                };
                return Some(Ok(CapturedPacket {
                    ts: timestamp(ts),
                    ifindex: interface_id,
                    direction: Direction::Ingress,
                    link,
                    wire_len: original_len,
                    flow_hash: 0,
                    data,
                }));
            },
        }
    }
}
