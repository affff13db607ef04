//! Where recordings are kept, shared by every command that reads or writes them.

use std::path::PathBuf;

use crate::store::embedded::EmbeddedStore;

/// Which store to use.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// Directory of the embedded store (created if missing). Default: /var/lib/capture as
    /// root, else ~/.local/share/capture.
    #[arg(long, value_name = "DIR", env = "CAPTURE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// The data directory in effect.
    pub fn dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return PathBuf::from("/var/lib/capture");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".local/share"))
            .join("capture")
    }

    /// Opens the store.
    pub fn open(&self) -> anyhow::Result<EmbeddedStore> {
        Ok(EmbeddedStore::open(&self.dir())?)
    }
}
