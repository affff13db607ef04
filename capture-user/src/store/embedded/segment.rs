//! Segment files and their sparse index sidecars, read without locks.
//!
//! A segment `NNNNNNNNNNNNNNNNNNNN.seg` (its base offset, 20 digits) holds whole batches back
//! to back; the name is the sparse index of the log (the segment holding offset O is the last
//! one whose base is at most O). The sidecar `NNNN.idx` holds 16-byte entries (offset u64,
//! position u64, little-endian) for batches that cross a multiple of `INDEX_INTERVAL` bytes, so
//! finding a window's start reads at most about `INDEX_INTERVAL` bytes of heads. Index entries
//! are hints: each is checked against the batch head it points at, and a bad one only costs a
//! scan from the segment's start.
//!
//! Only the last segment may end in a torn batch (a writer died mid-write, or power was lost
//! after the size grew but before the data reached the disk, which leaves zeros); anywhere
//! else a bad batch is `StoreError::Corrupt` naming the file and position.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::batch::{BatchError, Frame, HEAD_LEN, Head};
use crate::store::StoreError;

/// Index entries are written for batches crossing a multiple of this many bytes.
pub const INDEX_INTERVAL: u64 = 64 << 10;
const INDEX_ENTRY: u64 = 16;
/// Bytes read at once for a batch's head and tags (most tags are far shorter).
const FRAME_READ: usize = HEAD_LEN + 440;
/// A damaged tail longer than this is not taken for a torn write.
const MAX_ZERO_TAIL: u64 = 64 << 20;

/// Segment file name of base offset `base`.
pub fn seg_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.seg"))
}

/// Index sidecar of segment `base`.
pub fn idx_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.idx"))
}

pub(crate) fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Backend {
        path: path.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

pub(crate) fn corrupt(path: &Path, position: u64, message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        position: format!("{} byte {position}", path.display()),
        message: message.into(),
    }
}

/// Base offsets of the segments in `dir`, ascending (a missing directory has none).
pub fn list(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, "listing segments", e)),
    };
    let mut bases = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, "listing segments", e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Should a batch at `position` of `len` bytes get an index entry?
pub fn index_due(position: u64, len: u64) -> bool {
    (position + len) / INDEX_INTERVAL > position / INDEX_INTERVAL
}

/// The entry for a batch (offset, position), as stored.
pub fn index_entry(offset: u64, position: u64) -> [u8; INDEX_ENTRY as usize] {
    let mut e = [0u8; INDEX_ENTRY as usize];
    e[..8].copy_from_slice(&offset.to_le_bytes());
    e[8..].copy_from_slice(&position.to_le_bytes());
    e
}

/// Index entries of segment `base`, in order, stopping at the first that is out of order or
/// past `seg_len` (entries left by a write that was later cut back).
pub fn read_index(dir: &Path, base: u64, seg_len: u64) -> Vec<(u64, u64)> {
    let Ok(bytes) = std::fs::read(idx_path(dir, base)) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, u64)> = Vec::new();
    for chunk in bytes.chunks_exact(INDEX_ENTRY as usize) {
        let mut o = [0u8; 8];
        let mut p = [0u8; 8];
        o.copy_from_slice(&chunk[..8]);
        p.copy_from_slice(&chunk[8..]);
        let (offset, position) = (u64::from_le_bytes(o), u64::from_le_bytes(p));
        let ordered = out
            .last()
            .is_none_or(|&(lo, lp)| offset > lo && position > lp);
        if !ordered || position >= seg_len || offset < base {
            break;
        }
        out.push((offset, position));
    }
    out
}

/// What a torn tail held, as far as its head could still be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Torn {
    pub path: PathBuf,
    pub position: u64,
    /// Bytes from `position` to the end of the file.
    pub bytes: u64,
    /// Messages lost (when the head was intact) and their recordings (when the tags were).
    pub messages: Option<u32>,
    pub recordings: Vec<String>,
}

/// What is at a position of a segment.
#[derive(Debug)]
pub enum Next {
    /// A batch whose head and tags are good and whose length fits the file.
    Batch(Frame),
    /// The end of the segment.
    End,
    /// The rest of the (last) segment is an unfinished or damaged batch.
    Torn(Torn),
}

/// One segment opened for reading.
pub struct SegmentReader {
    pub base: u64,
    pub path: PathBuf,
    file: File,
    /// Length when opened (what this reader considers written).
    pub len: u64,
    /// Is it the last segment (the only one whose end may be torn)?
    pub last: bool,
}

impl SegmentReader {
    /// Opens segment `base` of `dir`.
    pub fn open(dir: &Path, base: u64, last: bool) -> Result<Self, StoreError> {
        let path = seg_path(dir, base);
        let file = File::open(&path).map_err(|e| {
            let what = if e.kind() == ErrorKind::NotFound {
                "segment vanished (deleted by retention or `recordings delete` while in use)"
            } else {
                "opening segment"
            };
            io_err(&path, what, e)
        })?;
        let len = file
            .metadata()
            .map_err(|e| io_err(&path, "reading segment size", e))?
            .len();
        Ok(Self::from_file(file, path, base, len, last))
    }

    /// A reader over an already open file (the appender's own).
    pub fn from_file(file: File, path: PathBuf, base: u64, len: u64, last: bool) -> Self {
        Self {
            base,
            path,
            file,
            len,
            last,
        }
    }

    fn read_at(&self, position: u64, n: usize) -> Result<Vec<u8>, StoreError> {
        let mut buf = vec![0u8; n];
        self.file
            .read_exact_at(&mut buf, position)
            .map_err(|e| io_err(&self.path, "reading segment", e))?;
        Ok(buf)
    }

    /// What is at `position`: a batch (head and tags checked), the end, or a torn tail.
    pub fn next_at(&self, position: u64) -> Result<Next, StoreError> {
        if position >= self.len {
            return Ok(Next::End);
        }
        let rest = self.len - position;
        let mut buf = self.read_at(position, rest.min(FRAME_READ as u64) as usize)?;
        let parsed = match Frame::parse(&buf) {
            Err(BatchError::Incomplete { missing }) if (buf.len() as u64) < rest => {
                let want = (buf.len() as u64 + missing).min(rest);
                buf = self.read_at(position, want as usize)?;
                Frame::parse(&buf)
            }
            other => other,
        };
        match parsed {
            Ok(frame) if frame.head.batch_len() <= rest => Ok(Next::Batch(frame)),
            Ok(frame) => {
                let missing = frame.head.batch_len() - rest;
                self.tail_or_corrupt(
                    position,
                    &buf,
                    format!("batch cut short by {missing} bytes"),
                )
            }
            Err(BatchError::Incomplete { missing }) => self.tail_or_corrupt(
                position,
                &buf,
                format!("batch cut short by {missing} bytes"),
            ),
            Err(BatchError::BadBody(m)) => {
                let ends_file = Head::parse(&buf).is_ok_and(|h| h.batch_len() == rest);
                if ends_file {
                    self.tail_or_corrupt(position, &buf, m)
                } else {
                    Err(corrupt(&self.path, position, m))
                }
            }
            Err(BatchError::BadHead(m)) => {
                if self.last && self.zeros_to_end(position)? {
                    Ok(Next::Torn(self.torn(position, &[])))
                } else {
                    Err(corrupt(&self.path, position, m))
                }
            }
        }
    }

    fn tail_or_corrupt(&self, position: u64, buf: &[u8], why: String) -> Result<Next, StoreError> {
        if self.last {
            Ok(Next::Torn(self.torn(position, buf)))
        } else {
            Err(corrupt(
                &self.path,
                position,
                format!("{why}, and it is not the last segment"),
            ))
        }
    }

    /// A torn tail at `position`, with what its first bytes `buf` still tell.
    pub fn torn(&self, position: u64, buf: &[u8]) -> Torn {
        let head = Head::parse(buf).ok();
        let recordings = match Frame::parse(buf) {
            Ok(frame) => frame.tags.recordings,
            Err(_) => Vec::new(),
        };
        Torn {
            path: self.path.clone(),
            position,
            bytes: self.len - position,
            messages: head.map(|h| h.count),
            recordings,
        }
    }

    fn zeros_to_end(&self, position: u64) -> Result<bool, StoreError> {
        let rest = self.len - position;
        if rest > MAX_ZERO_TAIL {
            return Ok(false);
        }
        let mut at = position;
        while at < self.len {
            let n = (self.len - at).min(1 << 20) as usize;
            if self.read_at(at, n)?.iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }

    /// The batch's checked, decoded records; `None` when the payload is bad and the batch is
    /// this last segment's final one (a torn tail, treated as not written).
    pub fn records(&self, position: u64, frame: &Frame) -> Result<Option<Bytes>, StoreError> {
        let payload = self.read_at(
            position + frame.payload_at(),
            frame.head.payload_len as usize,
        )?;
        match frame.decode_payload(payload) {
            Ok(records) => Ok(Some(records)),
            Err(e) if self.last && position + frame.head.batch_len() == self.len => {
                let _ = e;
                Ok(None)
            }
            Err(e) => Err(corrupt(&self.path, position, e.to_string())),
        }
    }

    /// Where to start scanning for `offset`: the last good index entry at or before it, else
    /// the segment's start. Returns (position, offset of the batch there).
    pub fn seek(&self, dir: &Path, offset: u64) -> (u64, u64) {
        let entries = read_index(dir, self.base, self.len);
        let upto = entries.partition_point(|&(o, _)| o <= offset);
        for &(o, p) in entries[..upto].iter().rev() {
            if let Ok(Next::Batch(frame)) = self.next_at(p)
                && frame.head.base_offset == o
            {
                return (p, o);
            }
        }
        (0, self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_as_offsets_and_strangers_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for base in [1u64, 1_000_000, 20_000] {
            std::fs::write(seg_path(dir.path(), base), b"").unwrap();
        }
        std::fs::write(dir.path().join("append.lock"), b"").unwrap();
        std::fs::write(idx_path(dir.path(), 1), b"").unwrap();
        std::fs::write(dir.path().join("12.seg"), b"").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![1, 20_000, 1_000_000]);
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
        assert_eq!(
            seg_path(Path::new("d"), 7),
            Path::new("d/00000000000000000007.seg")
        );
    }

    #[test]
    fn index_entries_come_every_interval_and_bad_ones_are_cut_off() {
        assert!(!index_due(0, 100));
        assert!(index_due(INDEX_INTERVAL - 10, 20));
        assert!(index_due(0, 2 * INDEX_INTERVAL));
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for (o, p) in [(10, 100), (20, 200), (15, 300), (30, 400)] {
            bytes.extend_from_slice(&index_entry(o, p));
        }
        bytes.extend_from_slice(&[1, 2, 3]);
        std::fs::write(idx_path(dir.path(), 1), &bytes).unwrap();
        assert_eq!(read_index(dir.path(), 1, 1000), vec![(10, 100), (20, 200)]);
        assert_eq!(read_index(dir.path(), 1, 150), vec![(10, 100)]);
    }
}
