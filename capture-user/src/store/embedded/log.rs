//! The writing end of the log: appends sealed batches to the last segment under an exclusive
//! `flock` on `append.lock`, so several processes (two recorders, an import) can share one
//! data directory. Before each append the appender catches up with what other processes wrote
//! since its last append (their batches' heads give the next offset), and on its first use it
//! checks the tail deeply (the last batch's payload CRC too): a torn batch left by a writer
//! that died mid-write is cut off and returned, so the store reports it once (`log::warn!`)
//! and counts its messages as dropped. Readers never take the lock (`window.rs`).
//!
//! Durability: a batch is one write at the end of the segment; `sync` makes it durable
//! (fdatasync) and the store calls it at most every second; a segment is synced before the
//! next one is created, so only the last segment can end torn after a power loss.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, IoSlice, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::batch::Sealed;
use super::segment::{
    self, Next, SegmentReader, Torn, corrupt, idx_path, index_due, index_entry, io_err, seg_path,
};
use crate::store::StoreError;

/// The segment being appended to.
struct Active {
    base: u64,
    path: PathBuf,
    file: File,
    /// Bytes of whole batches (where the next batch goes).
    len: u64,
}

/// Where a batch went, and what catching up found on the way.
#[derive(Debug)]
pub struct Appended {
    /// Torn tails cut before writing (left by writers that died).
    pub torn: Vec<Torn>,
    /// A new segment was started for this batch.
    pub rolled: bool,
}

/// The writing end of the log in one directory.
pub struct Appender {
    dir: PathBuf,
    segment_bytes: u64,
    lock: Option<File>,
    active: Option<Active>,
    next_offset: u64,
    /// Position of the last batch of the active segment, when known.
    last_batch: Option<u64>,
    tail_checked: bool,
    dirty: bool,
    last_sync: Instant,
}

fn write_error(path: &Path, cause: std::io::Error) -> StoreError {
    StoreError::Write {
        path: path.display().to_string(),
        cause,
    }
}

fn write_all_vectored(file: &mut File, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Appender {
    /// An appender for the log in `dir` (nothing is opened until it is used).
    pub fn new(dir: &Path, segment_bytes: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            lock: None,
            active: None,
            next_offset: 1,
            last_batch: None,
            tail_checked: false,
            dirty: false,
            last_sync: Instant::now(),
        }
    }

    /// The offset the next batch gets, as of the last catch-up or append.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Runs `f` holding the append lock (blocking until other appenders let go of it).
    pub fn with_lock<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = self.dir.join("append.lock");
        if self.lock.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|e| write_error(&self.dir, e))?;
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| write_error(&path, e))?;
            self.lock = Some(file);
        }
        let fd = self.lock.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        loop {
            // SAFETY: flock on a file descriptor this appender owns (kept open while locked).
            if unsafe { libc::flock(fd, libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(io_err(&path, "taking the append lock", e));
            }
        }
        let out = f(self);
        // SAFETY: as above; closing the file would release the lock as well.
        unsafe { libc::flock(fd, libc::LOCK_UN) };
        out
    }

    /// Under the lock: brings the view of the log's end up to date, cutting a torn tail.
    pub fn catch_up(&mut self) -> Result<Vec<Torn>, StoreError> {
        let bases = segment::list(&self.dir)?;
        let Some(&last) = bases.last() else {
            self.active = None;
            self.next_offset = 1;
            self.tail_checked = true;
            return Ok(Vec::new());
        };
        let mut torn = Vec::new();
        match &self.active {
            Some(a) if a.base == last => {
                let len = a
                    .file
                    .metadata()
                    .map_err(|e| io_err(&a.path, "reading segment size", e))?
                    .len();
                if len < a.len {
                    return Err(corrupt(
                        &a.path,
                        len,
                        format!("segment shrank from {} bytes while in use", a.len),
                    ));
                }
                if len > a.len {
                    self.scan_active(&mut torn)?;
                }
            }
            _ => self.open_active(last, &mut torn)?,
        }
        if !self.tail_checked {
            self.check_last_payload(&mut torn)?;
            self.tail_checked = true;
        }
        Ok(torn)
    }

    fn open_active(&mut self, base: u64, torn: &mut Vec<Torn>) -> Result<(), StoreError> {
        let path = seg_path(&self.dir, base);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, "opening the last segment", e))?;
        let reader = self.reader_over(&file, &path, base)?;
        let (position, offset) = reader.seek(&self.dir, u64::MAX);
        self.active = Some(Active {
            base,
            path,
            file,
            len: position,
        });
        self.next_offset = offset;
        self.last_batch = None;
        self.scan_active(torn)
    }

    fn reader_over(
        &self,
        file: &File,
        path: &Path,
        base: u64,
    ) -> Result<SegmentReader, StoreError> {
        let clone = file
            .try_clone()
            .map_err(|e| io_err(path, "opening segment", e))?;
        let len = file
            .metadata()
            .map_err(|e| io_err(path, "reading segment size", e))?
            .len();
        Ok(SegmentReader::from_file(
            clone,
            path.to_path_buf(),
            base,
            len,
            true,
        ))
    }

    /// Reads the heads from the active segment's known end to its real end.
    fn scan_active(&mut self, torn: &mut Vec<Torn>) -> Result<(), StoreError> {
        let Some(a) = &self.active else {
            return Ok(());
        };
        let reader = self.reader_over(&a.file, &a.path, a.base)?;
        let mut position = a.len;
        let mut next = self.next_offset;
        let mut last_batch = self.last_batch;
        loop {
            match reader.next_at(position)? {
                Next::Batch(frame) => {
                    if frame.head.base_offset != next {
                        return Err(corrupt(
                            &a.path,
                            position,
                            format!(
                                "batch starts at offset {}, expected {next}",
                                frame.head.base_offset
                            ),
                        ));
                    }
                    last_batch = Some(position);
                    position += frame.head.batch_len();
                    next = frame.head.end_offset();
                }
                Next::End => break,
                Next::Torn(t) => {
                    self.cut(t.position)?;
                    torn.push(t);
                    break;
                }
            }
        }
        if let Some(a) = &mut self.active {
            a.len = position;
        }
        self.next_offset = next;
        self.last_batch = last_batch;
        Ok(())
    }

    /// First use: the last batch's payload must check too (power loss can leave garbage of
    /// the right length).
    fn check_last_payload(&mut self, torn: &mut Vec<Torn>) -> Result<(), StoreError> {
        let (Some(a), Some(position)) = (&self.active, self.last_batch) else {
            return Ok(());
        };
        let reader = self.reader_over(&a.file, &a.path, a.base)?;
        let Next::Batch(frame) = reader.next_at(position)? else {
            return Ok(());
        };
        if reader.records(position, &frame)?.is_none() {
            let mut t = reader.torn(position, &[]);
            t.messages = Some(frame.head.count);
            t.recordings = frame.tags.recordings.clone();
            self.cut(position)?;
            if let Some(a) = &mut self.active {
                a.len = position;
            }
            self.next_offset = frame.head.base_offset;
            self.last_batch = None;
            torn.push(t);
        }
        Ok(())
    }

    /// Cuts the active segment (and its index) back to `position`.
    /// (The store reports it, with what the batch held.)
    fn cut(&self, position: u64) -> Result<(), StoreError> {
        let Some(a) = &self.active else {
            return Ok(());
        };
        a.file
            .set_len(position)
            .map_err(|e| write_error(&a.path, e))?;
        let keep = segment::read_index(&self.dir, a.base, position).len() as u64;
        let idx = idx_path(&self.dir, a.base);
        if let Ok(f) = OpenOptions::new().write(true).open(&idx) {
            let _ = f.set_len(keep * 16);
        }
        Ok(())
    }

    /// Appends one sealed batch (taking the lock, catching up, rolling the segment when full).
    pub fn append(&mut self, sealed: &Sealed<'_>) -> Result<Appended, StoreError> {
        self.with_lock(|app| {
            let torn = app.catch_up()?;
            let rolled = app.roll_if_needed(sealed.len())?;
            let base_offset = app.next_offset;
            let head = sealed.head(base_offset);
            app.write(&[&head.to_bytes(), sealed.var, sealed.payload], head.count)?;
            Ok(Appended { torn, rolled })
        })
    }

    fn roll_if_needed(&mut self, len: u64) -> Result<bool, StoreError> {
        let rolled = match &self.active {
            None => false,
            Some(a) if a.len > 0 && a.len + len > self.segment_bytes => {
                a.file.sync_data().map_err(|e| write_error(&a.path, e))?;
                true
            }
            Some(_) => return Ok(false),
        };
        let base = self.next_offset;
        let path = seg_path(&self.dir, base);
        std::fs::create_dir_all(&self.dir).map_err(|e| write_error(&self.dir, e))?;
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(corrupt(
                    &path,
                    0,
                    "a segment with the next batch's base offset already exists",
                ));
            }
            Err(e) => return Err(write_error(&path, e)),
        };
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.active = Some(Active {
            base,
            path,
            file,
            len: 0,
        });
        self.last_batch = None;
        Ok(rolled)
    }

    /// Writes one batch at the end of the active segment; on failure cuts back what part of
    /// it reached the file, so the log ends at its last whole batch.
    fn write(&mut self, parts: &[&[u8]], count: u32) -> Result<(), StoreError> {
        let Some(a) = &mut self.active else {
            return Err(StoreError::Backend {
                path: self.dir.display().to_string(),
                message: "no segment to append to".into(),
            });
        };
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let written = a
            .file
            .seek(SeekFrom::Start(a.len))
            .and_then(|_| write_all_vectored(&mut a.file, parts));
        if let Err(cause) = written {
            let _ = a.file.set_len(a.len);
            return Err(write_error(&a.path, cause));
        }
        let position = a.len;
        a.len += len;
        if index_due(position, len) {
            // A hint only: a lost entry costs readers a longer scan, never a wrong answer.
            let idx = idx_path(&self.dir, a.base);
            if let Ok(f) = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&idx)
                && let Ok(m) = f.metadata()
            {
                let _ = f.write_all_at(&index_entry(self.next_offset, position), m.len() / 16 * 16);
            }
        }
        self.next_offset += u64::from(count);
        self.last_batch = Some(position);
        self.dirty = true;
        Ok(())
    }

    /// Makes every appended batch durable (fdatasync).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if let (true, Some(a)) = (self.dirty, &self.active) {
            a.file.sync_data().map_err(|e| write_error(&a.path, e))?;
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Syncs when the last sync is `every` old.
    pub fn sync_if_due(&mut self, every: Duration) -> Result<(), StoreError> {
        if self.dirty && self.last_sync.elapsed() >= every {
            self.sync()?;
        }
        Ok(())
    }

    /// Under the lock: removes segments (never the last one) and their indexes.
    pub fn remove_segments(&self, bases: &[u64]) -> Result<u64, StoreError> {
        let all = segment::list(&self.dir)?;
        let last = all.last().copied();
        let mut freed = 0;
        for &base in bases {
            if Some(base) == last {
                continue;
            }
            for path in [seg_path(&self.dir, base), idx_path(&self.dir, base)] {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                match std::fs::remove_file(&path) {
                    Ok(()) => freed += size,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&path, "removing segment", e)),
                }
            }
        }
        Ok(freed)
    }
}
