//! The embedded backend (the default, no server needed): an append-only log of segment files
//! in a data directory, with the catalog of recordings in a small SQLite file beside it.
//! Several processes can use one data directory at once (a recorder, a lister, a second
//! recorder): appends take an exclusive lock per batch, reads take none.
//!
//! Layout (docs/STORE_FORMAT.md): `log/NNNN.seg` segments of batches named by their base offset, with
//! sparse `log/NNNN.idx` indexes and `log/append.lock`; `catalog.sqlite`; `ballast`. Messages
//! are collected into a batch of one tag set (the recordings they belong to) and written as one
//! record: at the latest every `batch_age` (the recorder also flushes every 200 ms) or once it
//! holds `batch_bytes` or `batch_messages`; fdatasync follows at most every `sync_every`.
//! Offsets are per message, only grow and are never reused; a recording's window is
//! `[start, end)` in offsets (partition 0), and the batch tags make overlapping windows exact.
//!
//! Failures are honest: a failed write (a full disk) poisons the handle, releases the ballast
//! so the catalog can still commit, and `committed` says exactly what of each recording can be
//! read back, which `end` records when a recording ends `failed`. Reading (`list`, `get`,
//! `read`) never needs free space. A data directory of the v1 format (one SQLite row per
//! message) is refused with `StoreError::OldFormat`.

mod ballast;
mod batch;
mod catalog;
mod log;
mod record;
mod retention;
mod segment;
mod window;

pub use record::MAX_MESSAGE_BYTES;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use self::ballast::Ballast;
use self::batch::Builder;
use self::catalog::Catalog;
use self::log::Appender;
use self::retention::{Plan, SegmentSize, Span};
use self::segment::Torn;
use super::{
    Committed, Ending, Recording, RecordingState, RecordingSummary, Store, StoreError,
    StoredMessage, exists_error, node_name, resolve_interrupted, validate_name,
};
use crate::message::HttpMessage;
use crate::packet::Timestamp;

/// Drop reason under which messages of a torn batch are counted.
pub const TORN_TAIL_DROP: &str = "torn_tail_messages";

/// Creates the data directory if it is missing.
pub fn create_data_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend {
        path: dir.display().to_string(),
        message: format!("cannot create the data directory ({e}); pass --data-dir DIR"),
    })
}

/// How the embedded store writes and how much it keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Store-wide cap on the log's size: past it the oldest finished recordings are deleted
    /// (checked when a segment fills up, so the log may pass it by up to one segment).
    pub retention_bytes: Option<u64>,
    /// A segment is closed and a new one started once it holds this many bytes.
    pub segment_bytes: u64,
    /// A batch is written once it holds this many bytes (before compression)...
    pub batch_bytes: usize,
    /// ...or this many messages...
    pub batch_messages: u32,
    /// ...or is this old (checked on append and on flush).
    pub batch_age: Duration,
    /// Longest time between fdatasyncs of written batches.
    pub sync_every: Duration,
    /// Space kept in reserve so the catalog can commit on a full disk.
    pub ballast_bytes: u64,
    /// LZ4-compress batches. Off by default: on HTTP traffic LZ4 saves about 3x the disk but
    /// adds about a quarter to a recorder's instructions per stored message, and what
    /// recording costs the node comes first (retention bounds the disk).
    pub compress: bool,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            retention_bytes: None,
            segment_bytes: 64 << 20,
            // Larger writes were measured dearer, not cheaper: on the development VM (free page
            // reporting at order 9), `capture record`'s store thread took 0.41-0.48 µs of system
            // time per request with 2 MiB batches and 2.4 with 4 MiB, against 0.22-0.29 with
            // 1 MiB. 128 KiB batches were dearer overall too (1.64-1.73 µs per request against
            // 1.52-1.61, paired); 256 and 512 KiB were within the noise of 1 MiB.
            batch_bytes: 1 << 20,
            batch_messages: 10_000,
            batch_age: Duration::from_millis(200),
            sync_every: Duration::from_secs(1),
            ballast_bytes: 4 << 20,
            compress: false,
        }
    }
}

/// The embedded store in one data directory.
pub struct EmbeddedStore {
    dir: PathBuf,
    log_dir: PathBuf,
    config: EmbeddedConfig,
    catalog: Catalog,
    appender: Appender,
    builder: Builder,
    batch_started: Instant,
    ballast: Ballast,
    committed: HashMap<String, Committed>,
    /// Set by the first failed write: later writes are refused, `end` still works.
    failed: Option<String>,
}

fn offset(value: Option<&i64>) -> u64 {
    value.copied().unwrap_or(1).max(1) as u64
}

/// A recording's window in offsets (end None while running).
fn window_of(rec: &Recording) -> (u64, Option<u64>) {
    let start = offset(rec.start.get(&0));
    let end = rec.end.as_ref().map(|e| offset(e.get(&0)).max(start));
    (start, end)
}

/// A running recording whose recorder is gone becomes interrupted: its window ends at the
/// log's readable end and its counts are what can be read in it (from batch heads). Saving
/// that is best-effort, so reading works on a full disk.
fn resolve(catalog: &Catalog, log_dir: &Path, rec: Recording) -> Result<Recording, StoreError> {
    let dead = rec.state == RecordingState::Recording
        && rec.owner.as_ref().is_some_and(|o| !o.may_be_alive());
    if !dead {
        return Ok(rec);
    }
    let tail = window::tail(log_dir)?;
    let mut rec = resolve_interrupted(rec, || BTreeMap::from([(0, tail as i64)]));
    if rec.state == RecordingState::Interrupted {
        let (start, _) = window_of(&rec);
        let end = tail.max(start);
        rec.end = Some(BTreeMap::from([(0, end as i64)]));
        (rec.messages, rec.bytes) = window::count(log_dir, &rec.name, start, end)?;
        let _ = catalog.save(&rec);
    }
    Ok(rec)
}

/// Saves a catalog entry; on a full disk, releases the ballast and tries once more.
fn save(catalog: &Catalog, ballast: &Ballast, rec: &Recording) -> Result<(), StoreError> {
    match catalog.save(rec) {
        Ok(()) => Ok(()),
        Err((true, e)) if ballast.release() => {
            ::log::warn!(
                "{}: disk full; released the ballast so the catalog can record {}",
                ballast.path().display(),
                rec.name
            );
            catalog.save(rec).map_err(|(_, again)| again).map_err(|_| e)
        }
        Err((_, e)) => Err(e),
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` with the default configuration.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, EmbeddedConfig::default())
    }

    /// Opens (creating if needed) the store in `dir`.
    pub fn open_with(dir: &Path, config: EmbeddedConfig) -> Result<Self, StoreError> {
        create_data_dir(dir)?;
        if dir.join("capture.sqlite").exists() {
            return Err(StoreError::OldFormat {
                path: dir.display().to_string(),
            });
        }
        let log_dir = dir.join("log");
        let node = node_name();
        Ok(Self {
            dir: dir.to_path_buf(),
            catalog: Catalog::open(dir)?,
            appender: Appender::new(&log_dir, config.segment_bytes),
            builder: Builder::new(&node, Timestamp::now().0),
            batch_started: Instant::now(),
            ballast: Ballast::new(dir, config.ballast_bytes),
            committed: HashMap::new(),
            failed: None,
            log_dir,
            config,
        })
    }

    /// Sets the batch size (tests use a small one so messages span many batches).
    pub fn with_batch_bytes(mut self, bytes: usize) -> Self {
        self.config.batch_bytes = bytes.max(1);
        self
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The configuration in effect.
    pub fn config(&self) -> &EmbeddedConfig {
        &self.config
    }

    /// Bytes the log takes on disk (segments and indexes).
    pub fn log_bytes(&self) -> Result<u64, StoreError> {
        Ok(segment_sizes(&self.log_dir)?.iter().map(|s| s.bytes).sum())
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match &self.failed {
            None => Ok(()),
            Some(cause) => Err(StoreError::Backend {
                path: self.dir.display().to_string(),
                message: format!(
                    "an earlier write failed ({cause}); end the recording: what was written before stays readable"
                ),
            }),
        }
    }

    /// Poisons the handle after a failed write; on a full disk releases the ballast.
    fn fail(&mut self, e: StoreError) -> StoreError {
        if e.is_disk_full() && self.ballast.release() {
            ::log::warn!(
                "{}: disk full; released the ballast so the catalog can record how recordings end",
                self.ballast.path().display()
            );
        }
        self.failed = Some(e.to_string());
        self.builder.clear();
        e
    }

    /// Writes the collected batch, if any.
    fn write_batch(&mut self) -> Result<(), StoreError> {
        if self.builder.count() == 0 {
            return Ok(());
        }
        let (count, bytes) = (u64::from(self.builder.count()), self.builder.wire_bytes());
        let appended = self
            .appender
            .append(&self.builder.seal(self.config.compress));
        self.builder.clear();
        let appended = appended.map_err(|e| self.fail(e))?;
        for name in self.builder.recordings() {
            match self.committed.get_mut(name) {
                Some(c) => {
                    c.messages += count;
                    c.bytes += bytes;
                }
                None => {
                    let c = Committed {
                        messages: count,
                        bytes,
                    };
                    self.committed.insert(name.clone(), c);
                }
            }
        }
        self.note_torn(appended.torn);
        if appended.rolled {
            self.ballast.ensure();
            self.enforce_retention()?;
        }
        Ok(())
    }

    /// Counts the messages of torn batches as drops of their recordings.
    fn note_torn(&self, torn: Vec<Torn>) {
        for t in torn {
            ::log::warn!(
                "{} byte {}: cut a torn batch of {} bytes ({} messages of recordings {:?}) left by a writer that stopped mid-write",
                t.path.display(),
                t.position,
                t.bytes,
                t.messages.map_or("unknown".into(), |n| n.to_string()),
                t.recordings
            );
            let Some(n) = t.messages else { continue };
            for name in &t.recordings {
                if let Ok(Some(mut rec)) = self.catalog.load(name) {
                    *rec.drops.entry(TORN_TAIL_DROP.into()).or_default() += u64::from(n);
                    let _ = save(&self.catalog, &self.ballast, &rec);
                }
            }
        }
    }

    /// Under the append lock: deletes what a retention plan says (recordings, then the
    /// segments no remaining window overlaps); `also` is removed from the catalog first.
    fn apply_plan(&mut self, cap: Option<u64>, also: Option<&str>) -> Result<Plan, StoreError> {
        let (catalog, log_dir) = (&self.catalog, &self.log_dir);
        self.appender.with_lock(|app| {
            if let Some(name) = also {
                catalog.remove(&[name.to_string()])?;
            }
            let mut spans = Vec::new();
            for name in catalog.names()? {
                let Some(rec) = catalog.load(&name)? else {
                    continue;
                };
                let rec = resolve(catalog, log_dir, rec)?;
                let (start, end) = window_of(&rec);
                spans.push(Span {
                    name,
                    start,
                    end,
                    running: rec.state == RecordingState::Recording,
                    started_at_ns: rec.started_at_ns,
                });
            }
            let plan = retention::plan(&segment_sizes(log_dir)?, &spans, cap);
            catalog.remove(&plan.recordings)?;
            for name in &plan.recordings {
                ::log::info!(
                    "retention: deleted recording {name} to keep the store under {cap:?} bytes"
                );
            }
            app.remove_segments(&plan.segments)?;
            Ok(plan)
        })
    }

    fn enforce_retention(&mut self) -> Result<(), StoreError> {
        let Some(cap) = self.config.retention_bytes else {
            return Ok(());
        };
        let plan = self.apply_plan(Some(cap), None)?;
        if plan.over_cap {
            return Err(StoreError::RetentionFull {
                used: plan.kept_bytes,
                cap,
            });
        }
        Ok(())
    }

    /// Under the lock: the name is free, take the log's end as the start, save the entry.
    fn begin_locked(&mut self, name: &str, source: &str) -> Result<Recording, StoreError> {
        let (catalog, log_dir, ballast) = (&self.catalog, &self.log_dir, &self.ballast);
        let (rec, torn) = self.appender.with_lock(|app| {
            let torn = app.catch_up()?;
            let rec = match catalog.load(name)? {
                Some(existing) => Err(exists_error(&resolve(catalog, log_dir, existing)?)),
                None => {
                    let start = BTreeMap::from([(0, app.next_offset() as i64)]);
                    let rec = Recording::started(name, "embedded", None, start, source);
                    save(catalog, ballast, &rec).map(|()| rec)
                }
            };
            Ok((rec, torn))
        })?;
        self.note_torn(torn);
        rec
    }
}

/// Sizes of the segments in `log_dir` (with their indexes), by base offset.
fn segment_sizes(log_dir: &Path) -> Result<Vec<SegmentSize>, StoreError> {
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok(segment::list(log_dir)?
        .into_iter()
        .map(|base| SegmentSize {
            base,
            bytes: size(segment::seg_path(log_dir, base)) + size(segment::idx_path(log_dir, base)),
        })
        .collect())
}

impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn begin(&mut self, name: &str, source: &str) -> Result<Recording, StoreError> {
        validate_name(name)?;
        self.flush()?;
        self.ballast.ensure();
        self.enforce_retention()?;
        let rec = self.begin_locked(name, source)?;
        self.committed
            .insert(name.to_string(), Committed::default());
        Ok(rec)
    }

    fn append(&mut self, message: &HttpMessage, recordings: &[String]) -> Result<(), StoreError> {
        self.check_failed()?;
        record::check(message).map_err(|message| StoreError::Backend {
            path: self.dir.display().to_string(),
            message,
        })?;
        if self.builder.count() > 0 && self.builder.recordings() != recordings {
            self.write_batch()?;
        }
        if self.builder.count() == 0 {
            if self.builder.recordings() != recordings {
                self.builder.set_recordings(recordings);
            }
            self.batch_started = Instant::now();
        }
        self.builder.push(message);
        let full = self.builder.raw_len() >= self.config.batch_bytes
            || self.builder.count() >= self.config.batch_messages;
        let old = self.builder.count().is_multiple_of(256)
            && self.batch_started.elapsed() >= self.config.batch_age;
        if full || old {
            self.write_batch()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.check_failed()?;
        self.write_batch()?;
        let synced = self.appender.sync_if_due(self.config.sync_every);
        synced.map_err(|e| self.fail(e))
    }

    fn committed(&self, name: &str) -> Option<Committed> {
        Some(self.committed.get(name).copied().unwrap_or_default())
    }

    fn end(&mut self, name: &str, summary: RecordingSummary) -> Result<Recording, StoreError> {
        // Storing what is left may fail now (a full disk): the entry still ends, as failed.
        let mut write_error = None;
        if self.failed.is_none() {
            let flushed = self.flush().and_then(|()| {
                let synced = self.appender.sync();
                synced.map_err(|e| self.fail(e))
            });
            match flushed {
                Ok(()) | Err(StoreError::RetentionFull { .. }) => {}
                Err(e) => write_error = Some(e),
            }
        }
        let ending = match (&summary.ending, &self.failed) {
            (Ending::Failed(_), _) | (_, None) => summary.ending.clone(),
            (_, Some(error)) => Ending::Failed(error.clone()),
        };
        let mut rec = self
            .catalog
            .load(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        if rec.state != RecordingState::Recording {
            return Err(StoreError::NotActive(name.to_string()));
        }
        let (start, _) = window_of(&rec);
        let (end, counts) = match self.committed.remove(name) {
            Some(c) => (self.appender.next_offset().max(start), c),
            None => {
                let end = window::tail(&self.log_dir)?.max(start);
                let (messages, bytes) = window::count(&self.log_dir, name, start, end)?;
                (end, Committed { messages, bytes })
            }
        };
        rec.end = Some(BTreeMap::from([(0, end as i64)]));
        rec.stopped_at_ns = Some(Timestamp::now().0);
        (rec.state, rec.reason) = ending.state_and_reason();
        rec.owner = None;
        // What was written is what counts as stored (as the Kafka store counts acks).
        rec.messages = counts.messages;
        rec.bytes = counts.bytes;
        let mut drops = summary.drops;
        for (reason, n) in std::mem::take(&mut rec.drops) {
            drops.entry(reason).or_insert(n);
        }
        rec.drops = drops;
        rec.interfaces = summary.interfaces;
        save(&self.catalog, &self.ballast, &rec)?;
        match write_error {
            Some(e) => Err(e),
            None => Ok(rec),
        }
    }

    fn list(&mut self) -> Result<Vec<Recording>, StoreError> {
        let names = self.catalog.names()?;
        names.iter().map(|n| self.get(n)).collect()
    }

    fn get(&mut self, name: &str) -> Result<Recording, StoreError> {
        let rec = self
            .catalog
            .load(name)?
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        resolve(&self.catalog, &self.log_dir, rec)
    }

    fn delete(&mut self, name: &str) -> Result<(), StoreError> {
        let rec = self.get(name)?;
        if rec.state == RecordingState::Recording {
            return Err(StoreError::Backend {
                path: self.dir.display().to_string(),
                message: format!("recording {name} is still running; stop it first"),
            });
        }
        self.apply_plan(None, Some(name)).map(|_| ())
    }

    fn read(
        &mut self,
        name: &str,
        visit: &mut dyn FnMut(StoredMessage) -> bool,
    ) -> Result<(), StoreError> {
        let rec = self.get(name)?;
        let (start, end) = window_of(&rec);
        window::read(&self.log_dir, name, start, end, visit)
    }
}

impl Drop for EmbeddedStore {
    /// Writes a batch still collecting (not synced): a handle dropped without `end` or `flush`
    /// keeps what it was given, as far as the disk allows.
    fn drop(&mut self) {
        if self.failed.is_none() {
            let _ = self.write_batch();
        }
    }
}

#[cfg(test)]
mod tests;
