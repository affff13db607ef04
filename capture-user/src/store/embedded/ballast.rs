//! A few MiB of disk reserved in the data directory so that, when the disk fills up, the
//! catalog can still record how a recording ended: the store releases the ballast when a
//! write fails for lack of space (SQLite then has room to commit), and makes it again later
//! when a writer starts and space allows. Best-effort throughout: it never fails a caller.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The ballast file of a data directory.
pub struct Ballast {
    path: PathBuf,
    bytes: u64,
}

impl Ballast {
    pub fn new(dir: &Path, bytes: u64) -> Self {
        Self {
            path: dir.join("ballast"),
            bytes,
        }
    }

    /// Makes sure the ballast holds its bytes (allocated, not sparse); gives up quietly.
    pub fn ensure(&self) {
        if self.bytes == 0 || std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.bytes) {
            return;
        }
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
        else {
            return;
        };
        // SAFETY: posix_fallocate on a file descriptor owned by `file`, with valid lengths.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, self.bytes as libc::off_t) };
        if rc != 0 {
            drop(file);
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Frees the ballast's space; true if there was one.
    pub fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballast_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let b = Ballast::new(dir.path(), 64 << 10);
        b.ensure();
        assert_eq!(std::fs::metadata(b.path()).unwrap().len(), 64 << 10);
        assert!(b.release());
        assert!(!b.release());
        b.ensure();
        assert!(b.path().exists());
    }
}
