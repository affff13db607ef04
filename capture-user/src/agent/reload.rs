//! Files the agent reads again when they change, without a restart: the bearer token and the
//! TLS certificate and key. cert-manager and kubelet replace them in place (a Secret volume
//! swaps a symlink to a new directory), so the agent looks at each file's identity every
//! [`CHECK_EVERY`] and loads the set again when any of them changed. A set that fails to
//! load (a key written after its certificate, a file caught half-written) keeps the version
//! in use and is tried again at its next change, so a rotation never leaves the agent
//! without a token or a certificate.
//!
//! [`ChangeTracker`] is the decision, without I/O; [`Reloading`] holds the value in use and
//! applies the decision to the files.

use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::sync::lock;

/// How often the files are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// One version of a file: device, inode, size and modification time (a Secret volume's swap
/// changes the inode, a rewrite in place the time or the size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of what `path` points to now; `None` while it cannot be read (a swap).
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// Decides when a set of files is worth loading again: when their stamps differ from the
/// last ones seen, whether that load worked or not (a set that failed is not tried again
/// until it changes, so a broken file costs one warning, not one a second).
#[derive(Debug)]
pub struct ChangeTracker {
    seen: Vec<Option<FileStamp>>,
}

impl ChangeTracker {
    /// A tracker for files whose current version is `loaded`.
    pub fn new(loaded: Vec<Option<FileStamp>>) -> Self {
        Self { seen: loaded }
    }

    /// True when `now` differs from the stamps last seen; remembers `now` either way.
    pub fn changed(&mut self, now: Vec<Option<FileStamp>>) -> bool {
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

/// Why a file the agent reads is unusable; each message names the flag, the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum AgentFileError {
    #[error("{flag} {}: {source}; {hint}", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("--token-file {}: the file is empty; put a long random token in it", path.display())]
    EmptyToken { path: PathBuf },
    #[error("--tls-cert {}: no PEM certificate in it ({reason}); give the certificate chain cert-manager wrote, e.g. /etc/capture/tls/tls.crt", path.display())]
    NoCertificate { path: PathBuf, reason: String },
    #[error("--tls-key {}: no usable PEM private key in it ({reason}); give the key cert-manager wrote, e.g. /etc/capture/tls/tls.key", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("--tls-key {} does not belong to --tls-cert {} ({reason}); give the key and the certificate of one pair", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// How a set of files becomes a value.
pub type Loader<T> = fn(&[PathBuf]) -> Result<T, AgentFileError>;

/// A value loaded from files, loaded again when they change.
pub struct Reloading<T> {
    /// What it is, for log lines and /metrics (`token`, `tls`).
    pub what: &'static str,
    files: Vec<PathBuf>,
    load: Loader<T>,
    current: RwLock<Arc<T>>,
    tracker: Mutex<ChangeTracker>,
}

impl<T> fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reloading({} from {:?})", self.what, self.files)
    }
}

impl<T> Reloading<T> {
    /// Loads `files` now: a set that does not load is an error at start.
    pub fn open(
        what: &'static str,
        files: Vec<PathBuf>,
        load: Loader<T>,
    ) -> Result<Self, AgentFileError> {
        let stamps = stamps(&files);
        let value = load(&files)?;
        Ok(Self {
            what,
            files,
            load,
            current: RwLock::new(Arc::new(value)),
            tracker: Mutex::new(ChangeTracker::new(stamps)),
        })
    }

    /// A value that never changes (no files), for tests and embedders.
    pub fn fixed(what: &'static str, value: T) -> Self {
        Self {
            what,
            files: Vec::new(),
            load: |_| unreachable!("a fixed value has no files to load"),
            current: RwLock::new(Arc::new(value)),
            tracker: Mutex::new(ChangeTracker::new(Vec::new())),
        }
    }

    /// The value in use.
    pub fn current(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Loads the files again if they changed: `None` when they did not, else whether the
    /// new version is now in use.
    pub fn check(&self) -> Option<Result<(), AgentFileError>> {
        if self.files.is_empty() || !lock(&self.tracker).changed(stamps(&self.files)) {
            return None;
        }
        Some((self.load)(&self.files).map(|value| {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
        }))
    }
}

/// Something the agent checks every [`CHECK_EVERY`], whatever its value's type.
pub trait Watched: Send + Sync {
    /// What it is (`token`, `tls`).
    fn what(&self) -> &'static str;
    /// [`Reloading::check`].
    fn check_files(&self) -> Option<Result<(), AgentFileError>>;
}

impl<T: Send + Sync> Watched for Reloading<T> {
    fn what(&self) -> &'static str {
        self.what
    }

    fn check_files(&self) -> Option<Result<(), AgentFileError>> {
        self.check()
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<FileStamp>> {
    files.iter().map(|f| FileStamp::of(f)).collect()
}

/// Reads a whole file for `flag`, or the error naming it.
pub fn read_file(
    flag: &'static str,
    path: &Path,
    hint: &'static str,
) -> Result<Vec<u8>, AgentFileError> {
    std::fs::read(path).map_err(|source| AgentFileError::Read {
        flag,
        path: path.to_path_buf(),
        source,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ino: u64, len: u64, mtime_ns: i128) -> Option<FileStamp> {
        Some(FileStamp {
            dev: 1,
            ino,
            len,
            mtime_ns,
        })
    }

    #[test]
    fn a_change_of_inode_size_or_time_is_a_change_and_is_seen_once() {
        let mut t = ChangeTracker::new(vec![stamp(1, 10, 5), stamp(2, 20, 5)]);
        assert!(!t.changed(vec![stamp(1, 10, 5), stamp(2, 20, 5)]));
        // A Secret volume's swap: new inodes.
        assert!(t.changed(vec![stamp(3, 10, 5), stamp(2, 20, 5)]));
        assert!(!t.changed(vec![stamp(3, 10, 5), stamp(2, 20, 5)]));
        // Rewritten in place: the time moves, then the size.
        assert!(t.changed(vec![stamp(3, 10, 6), stamp(2, 20, 5)]));
        assert!(t.changed(vec![stamp(3, 11, 6), stamp(2, 20, 5)]));
    }

    #[test]
    fn a_file_that_vanishes_and_returns_is_two_changes() {
        let mut t = ChangeTracker::new(vec![stamp(1, 10, 5)]);
        assert!(t.changed(vec![None]));
        assert!(!t.changed(vec![None]));
        assert!(t.changed(vec![stamp(1, 10, 5)]));
    }

    fn load_text(files: &[PathBuf]) -> Result<String, AgentFileError> {
        let text = read_file("--test", &files[0], "write it")?;
        if text.is_empty() {
            return Err(AgentFileError::EmptyToken {
                path: files[0].clone(),
            });
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    #[test]
    fn a_file_is_loaded_again_when_it_changes_and_a_bad_version_keeps_the_old_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v");
        std::fs::write(&path, "one").expect("write");
        let r = Reloading::open("test", vec![path.clone()], load_text).expect("loads");
        assert_eq!(*r.current(), "one");
        assert!(r.check().is_none());
        std::fs::write(&path, "").expect("write");
        assert!(matches!(r.check(), Some(Err(_))));
        assert_eq!(*r.current(), "one");
        assert!(r.check().is_none(), "a failed version is not tried again");
        std::fs::write(&path, "three").expect("write");
        assert!(matches!(r.check(), Some(Ok(()))));
        assert_eq!(*r.current(), "three");
    }

    #[test]
    fn a_missing_file_at_start_is_an_error_naming_flag_and_fix() {
        let e =
            Reloading::open("test", vec!["/nonexistent/x".into()], load_text).expect_err("no file");
        let text = e.to_string();
        assert!(
            text.starts_with("--test /nonexistent/x: No such file") && text.ends_with("write it"),
            "{text}"
        );
    }
}
