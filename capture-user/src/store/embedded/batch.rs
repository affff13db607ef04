//! The batch: the unit the log writes, checks and skips. A batch is a fixed head, a variable
//! header (node, run and the recordings every message of the batch belongs to), and a payload
//! of message records (`record.rs`), compressed with LZ4 or stored raw when that does not pay.
//!
//! Three CRC32s chain the checks so a reader can trust what it skips: the head's CRC covers
//! the head (lengths, offsets, counts and the two other CRCs), the variable header's CRC lets
//! a reader skip a batch of other recordings by its tags without reading the payload, and the
//! payload's CRC is checked before a byte of it is decoded. Pure code: no I/O here.

use bytes::Bytes;
use lz4_flex::block::CompressTable;

use crate::message::HttpMessage;

use super::record;

/// First bytes of every batch.
pub const MAGIC: [u8; 4] = *b"CPLB";
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Length of the fixed head.
pub const HEAD_LEN: usize = 72;
/// Largest variable header a head may claim (node and recording names are far smaller).
pub const MAX_VAR_LEN: u32 = 1 << 20;
/// A batch larger than this is tried on this many bytes before LZ4 is spent on all of it.
pub const SAMPLE_BYTES: usize = 64 << 10;
/// Largest payload (stored or decoded) a head may claim.
pub const MAX_PAYLOAD_LEN: u32 = 3 << 30;

/// Why bytes are not a good batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The bytes end before the batch does (a torn write, or one still being written).
    #[error("batch cut short: {missing} more bytes needed")]
    Incomplete { missing: u64 },
    /// The head cannot be trusted, so neither can the batch's length.
    #[error("bad batch head: {0}")]
    BadHead(String),
    /// The head is good (the batch's length is known) but its tags or payload are not.
    #[error("bad batch body: {0}")]
    BadBody(String),
}

/// How a payload is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Raw = 0,
    Lz4 = 1,
}

/// The fixed head of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub codec: Codec,
    pub var_len: u32,
    pub payload_len: u32,
    pub uncompressed_len: u32,
    /// Messages in the batch; they take offsets `base_offset..base_offset + count`.
    pub count: u32,
    pub base_offset: u64,
    /// Earliest first-byte and latest last-byte capture time of its messages (ns).
    pub first_ts: u64,
    pub last_ts: u64,
    /// Sum of the messages' wire bytes (a recording's byte count without decoding).
    pub wire_bytes: u64,
    pub var_crc: u32,
    pub payload_crc: u32,
}

fn le_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

impl Head {
    /// Bytes the whole batch takes.
    pub fn batch_len(&self) -> u64 {
        HEAD_LEN as u64 + u64::from(self.var_len) + u64::from(self.payload_len)
    }

    /// Offset after the batch's last message.
    pub fn end_offset(&self) -> u64 {
        self.base_offset + u64::from(self.count)
    }

    /// The head as stored, its CRC computed.
    pub fn to_bytes(&self) -> [u8; HEAD_LEN] {
        let mut b = [0u8; HEAD_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.codec as u8;
        b[8..12].copy_from_slice(&self.var_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.payload_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.uncompressed_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.count.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.first_ts.to_le_bytes());
        b[40..48].copy_from_slice(&self.last_ts.to_le_bytes());
        b[48..56].copy_from_slice(&self.wire_bytes.to_le_bytes());
        b[56..60].copy_from_slice(&self.var_crc.to_le_bytes());
        b[60..64].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..64]);
        b[64..68].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads and checks a head from the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Head, BatchError> {
        if buf.len() < HEAD_LEN {
            return Err(BatchError::Incomplete {
                missing: (HEAD_LEN - buf.len()) as u64,
            });
        }
        let bad = |m: String| Err(BatchError::BadHead(m));
        if buf[0..4] != MAGIC {
            return bad(format!("magic {:02x?} is not {MAGIC:02x?}", &buf[0..4]));
        }
        if buf[4] != VERSION {
            return bad(format!(
                "format version {} (this capture reads version {VERSION}; a newer capture wrote it, or it is corrupt)",
                buf[4]
            ));
        }
        let crc = crc32fast::hash(&buf[0..64]);
        if crc != le_u32(buf, 64) {
            return bad(format!(
                "head CRC {:08x}, computed {crc:08x}",
                le_u32(buf, 64)
            ));
        }
        if buf[6..8] != [0, 0] || buf[68..72] != [0; 4] {
            return bad("reserved head bytes are not zero".into());
        }
        let codec = match buf[5] {
            0 => Codec::Raw,
            1 => Codec::Lz4,
            c => return bad(format!("unknown codec {c}")),
        };
        let head = Head {
            codec,
            var_len: le_u32(buf, 8),
            payload_len: le_u32(buf, 12),
            uncompressed_len: le_u32(buf, 16),
            count: le_u32(buf, 20),
            base_offset: le_u64(buf, 24),
            first_ts: le_u64(buf, 32),
            last_ts: le_u64(buf, 40),
            wire_bytes: le_u64(buf, 48),
            var_crc: le_u32(buf, 56),
            payload_crc: le_u32(buf, 60),
        };
        head.check_limits().map_err(BatchError::BadHead)?;
        Ok(head)
    }

    fn check_limits(&self) -> Result<(), String> {
        if self.var_len > MAX_VAR_LEN
            || self.payload_len > MAX_PAYLOAD_LEN
            || self.uncompressed_len > MAX_PAYLOAD_LEN
        {
            return Err(format!(
                "lengths {}/{}/{} over the format's limits",
                self.var_len, self.payload_len, self.uncompressed_len
            ));
        }
        if self.count == 0
            || self.base_offset == 0
            || self.base_offset.checked_add(1 << 32).is_none()
        {
            return Err(format!(
                "{} messages at offset {}: not a batch this store writes",
                self.count, self.base_offset
            ));
        }
        if self.codec == Codec::Raw && self.payload_len != self.uncompressed_len {
            return Err("raw payload whose stored and decoded lengths differ".into());
        }
        Ok(())
    }
}

/// The variable header: who wrote the batch and which recordings its messages belong to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tags {
    pub node: String,
    pub run: u64,
    pub recordings: Vec<String>,
}

impl Tags {
    /// Appends the encoded tags: u16 node length, node, u64 run, u16 count, then u16
    /// length + name per recording.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let put_str = |out: &mut Vec<u8>, s: &str| {
            let s = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s);
        };
        put_str(out, &self.node);
        out.extend_from_slice(&self.run.to_le_bytes());
        out.extend_from_slice(&(self.recordings.len() as u16).to_le_bytes());
        for r in &self.recordings {
            put_str(out, r);
        }
    }

    /// Decodes tags (already checked against their CRC).
    pub fn parse(buf: &[u8]) -> Result<Tags, String> {
        let mut c = Cursor { buf, at: 0 };
        let node = c.string()?;
        let run = le_u64(c.take(8)?, 0);
        let n = c.u16()?;
        let recordings = (0..n).map(|_| c.string()).collect::<Result<_, _>>()?;
        if c.at != buf.len() {
            return Err(format!("{} bytes after the tags", buf.len() - c.at));
        }
        Ok(Tags {
            node,
            run,
            recordings,
        })
    }

    /// Does the batch belong to recording `name`?
    pub fn contains(&self, name: &str) -> bool {
        self.recordings.iter().any(|r| r == name)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let out = self
            .buf
            .get(self.at..self.at + n)
            .ok_or_else(|| "tags cut short".to_string())?;
        self.at += n;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn string(&mut self) -> Result<String, String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "tag is not UTF-8".to_string())
    }
}

/// A batch's head and tags, checked; its payload not read yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub head: Head,
    pub tags: Tags,
}

impl Frame {
    /// Bytes from the batch's start to its payload.
    pub fn payload_at(&self) -> u64 {
        HEAD_LEN as u64 + u64::from(self.head.var_len)
    }

    /// Reads and checks the head and tags at the start of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Frame, BatchError> {
        let head = Head::parse(buf)?;
        let end = HEAD_LEN + head.var_len as usize;
        let var = buf
            .get(HEAD_LEN..end)
            .ok_or_else(|| BatchError::Incomplete {
                missing: (end - buf.len()) as u64,
            })?;
        let crc = crc32fast::hash(var);
        if crc != head.var_crc {
            return Err(BatchError::BadBody(format!(
                "tags CRC {:08x}, computed {crc:08x}",
                head.var_crc
            )));
        }
        let tags = Tags::parse(var).map_err(BatchError::BadBody)?;
        Ok(Frame { head, tags })
    }

    /// Checks and decodes the payload (the `payload_len` bytes after the tags) into records.
    pub fn decode_payload(&self, payload: Vec<u8>) -> Result<Bytes, BatchError> {
        let head = &self.head;
        if payload.len() != head.payload_len as usize {
            return Err(BatchError::Incomplete {
                missing: u64::from(head.payload_len).saturating_sub(payload.len() as u64),
            });
        }
        let crc = crc32fast::hash(&payload);
        if crc != head.payload_crc {
            return Err(BatchError::BadBody(format!(
                "payload CRC {:08x}, computed {crc:08x}",
                head.payload_crc
            )));
        }
        let raw = match head.codec {
            Codec::Raw => payload,
            Codec::Lz4 => lz4_flex::block::decompress(&payload, head.uncompressed_len as usize)
                .map_err(|e| BatchError::BadBody(format!("LZ4 payload: {e}")))?,
        };
        if raw.len() != head.uncompressed_len as usize {
            return Err(BatchError::BadBody(format!(
                "payload decodes to {} bytes, head says {}",
                raw.len(),
                head.uncompressed_len
            )));
        }
        Ok(Bytes::from(raw))
    }
}

/// Parses one whole batch at the start of `buf`: its frame and decoded records.
#[cfg(test)]
pub fn parse(buf: &[u8]) -> Result<(Frame, Bytes), BatchError> {
    let frame = Frame::parse(buf)?;
    let at = frame.payload_at() as usize;
    let end = at + frame.head.payload_len as usize;
    let payload = buf.get(at..end).ok_or_else(|| BatchError::Incomplete {
        missing: (end - buf.len()) as u64,
    })?;
    let records = frame.decode_payload(payload.to_vec())?;
    Ok((frame, records))
}

/// Collects messages of one tag set and seals them into a batch.
pub struct Builder {
    tags: Tags,
    raw: Vec<u8>,
    packed: Vec<u8>,
    var: Vec<u8>,
    table: Box<CompressTable>,
    count: u32,
    first_ts: u64,
    last_ts: u64,
    wire_bytes: u64,
}

/// A sealed batch: write `head(base)`, `var`, `payload` in that order.
pub struct Sealed<'a> {
    head: Head,
    pub var: &'a [u8],
    pub payload: &'a [u8],
}

impl Sealed<'_> {
    /// The head for a batch whose first message gets `base_offset`.
    pub fn head(&self, base_offset: u64) -> Head {
        Head {
            base_offset,
            ..self.head.clone()
        }
    }

    /// Bytes the batch takes.
    pub fn len(&self) -> u64 {
        self.head.batch_len()
    }
}

impl Builder {
    /// An empty builder for messages captured by `node` in run `run`.
    pub fn new(node: &str, run: u64) -> Self {
        Self {
            tags: Tags {
                node: node.to_string(),
                run,
                recordings: Vec::new(),
            },
            raw: Vec::new(),
            packed: Vec::new(),
            var: Vec::new(),
            table: Box::new(CompressTable::large()),
            count: 0,
            first_ts: u64::MAX,
            last_ts: 0,
            wire_bytes: 0,
        }
    }

    /// The recordings of the messages collected.
    pub fn recordings(&self) -> &[String] {
        &self.tags.recordings
    }

    /// Sets the recordings the next messages belong to (only while empty).
    pub fn set_recordings(&mut self, recordings: &[String]) {
        debug_assert!(self.count == 0);
        self.tags.recordings.clear();
        self.tags.recordings.extend_from_slice(recordings);
    }

    /// Messages collected.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Bytes collected (before compression).
    pub fn raw_len(&self) -> usize {
        self.raw.len()
    }

    /// Sum of the collected messages' wire bytes.
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes
    }

    /// Adds a message (checked with `record::check` by the caller).
    pub fn push(&mut self, message: &HttpMessage) {
        record::encode(message, &mut self.raw);
        self.count += 1;
        self.first_ts = self.first_ts.min(message.first_ts.0);
        self.last_ts = self.last_ts.max(message.last_ts.0);
        self.wire_bytes += message.bytes.len() as u64;
    }

    /// Frames the collected messages, LZ4-compressed when `compress` says so and it pays
    /// (raw when LZ4 saves under 1/16). A batch over `SAMPLE_BYTES` is first tried on its
    /// first `SAMPLE_BYTES`: when those do not shrink, the batch is stored raw without
    /// spending LZ4 on the rest.
    pub fn seal(&mut self, compress: bool) -> Sealed<'_> {
        let raw_len = self.raw.len();
        let pays = |packed: usize, of: usize| packed < of - of / 16;
        let max = lz4_flex::block::get_maximum_output_size(raw_len);
        if self.packed.len() < max {
            self.packed.resize(max, 0);
        }
        let mut compress_into = |input: &[u8]| {
            lz4_flex::block::compress_into_with_table(input, &mut self.packed, &mut self.table)
                .unwrap_or(usize::MAX)
        };
        let sample = &self.raw[..raw_len.min(SAMPLE_BYTES)];
        let worth_trying =
            compress && (raw_len <= SAMPLE_BYTES || pays(compress_into(sample), sample.len()));
        let packed = if worth_trying {
            compress_into(&self.raw)
        } else {
            usize::MAX
        };
        let (codec, payload) = if pays(packed, raw_len) {
            (Codec::Lz4, &self.packed[..packed])
        } else {
            (Codec::Raw, &self.raw[..])
        };
        self.var.clear();
        self.tags.encode(&mut self.var);
        let head = Head {
            codec,
            var_len: self.var.len() as u32,
            payload_len: payload.len() as u32,
            uncompressed_len: self.raw.len() as u32,
            count: self.count,
            base_offset: 1,
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            wire_bytes: self.wire_bytes,
            var_crc: crc32fast::hash(&self.var),
            payload_crc: crc32fast::hash(payload),
        };
        Sealed {
            head,
            var: &self.var,
            payload,
        }
    }

    /// Empties the builder (keeps its buffers and tags).
    pub fn clear(&mut self) {
        self.raw.clear();
        self.count = 0;
        self.first_ts = u64::MAX;
        self.last_ts = 0;
        self.wire_bytes = 0;
    }
}

#[cfg(test)]
#[path = "batch_tests.rs"]
mod tests;
