//! Where recordings are kept: the one description of a store that the command line and the
//! agent both build, with its defaults in one place.

use std::path::PathBuf;

use super::embedded::{EmbeddedConfig, EmbeddedStore, create_data_dir};
use super::kafka::{KafkaConfig, KafkaStore};
use super::{Store, StoreError};

/// Which backend to use, and its settings. `Default` is the embedded store in the default
/// data directory with the default retention.
#[derive(Clone, Debug, Default)]
pub struct StoreConfig {
    /// Directory of the embedded store; `None` means [`default_data_dir`].
    pub data_dir: Option<PathBuf>,
    /// How large the embedded store may grow.
    pub retention: Retention,
    /// Store in Kafka instead of the embedded store.
    pub kafka: Option<KafkaConfig>,
    /// LZ4-compress the embedded store's batches (see `EmbeddedConfig::compress`).
    pub compress: bool,
}

/// How large the embedded store may grow before its oldest finished recordings are deleted
/// (a running recording is never deleted; one that alone reaches the cap ends there). A
/// forgotten recorder must not fill a node's disk, so there is a cap unless told otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// No cap: recording goes on until the disk is full (and then ends `failed`).
    Unlimited,
    /// At most this many bytes of log.
    Bytes(u64),
    /// At most this share of the size of the filesystem holding the data directory.
    PercentOfFilesystem(u8),
}

impl Default for Retention {
    /// Half the data directory's filesystem: room for a long recording, and never a full disk.
    fn default() -> Self {
        Self::PercentOfFilesystem(50)
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unlimited => f.write_str("unlimited"),
            Self::Bytes(n) => write!(f, "{n}"),
            Self::PercentOfFilesystem(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for Retention {
    type Err = String;

    /// `unlimited`, a size (`20GiB`), or a share of the filesystem (`50%`).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("unlimited") {
            return Ok(Self::Unlimited);
        }
        if let Some(percent) = text.strip_suffix('%') {
            return match percent.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Self::PercentOfFilesystem(p)),
                _ => Err(format!(
                    "{text} is not a share of the filesystem; use 1%-100%, a size such as 20GiB, or unlimited"
                )),
            };
        }
        let bytes = crate::units::parse_byte_size(text)
            .map_err(|e| format!("{e}; or give a share such as 50%, or unlimited"))?;
        if bytes == 0 {
            return Err(
                "a store of 0 bytes holds nothing; give a size, a share, or unlimited".into(),
            );
        }
        Ok(Self::Bytes(bytes))
    }
}

impl Retention {
    /// The cap in bytes for a store in `dir` (which must exist), `None` when unlimited.
    pub fn bytes_for(&self, dir: &std::path::Path) -> Result<Option<u64>, StoreError> {
        match *self {
            Self::Unlimited => Ok(None),
            Self::Bytes(n) => Ok(Some(n)),
            Self::PercentOfFilesystem(p) => {
                let size = filesystem_bytes(dir).map_err(|e| StoreError::Backend {
                    path: dir.display().to_string(),
                    message: format!("cannot size its filesystem for the retention cap ({e})"),
                })?;
                Ok(Some(size / 100 * u64::from(p)))
            }
        }
    }
}

/// Size of the filesystem holding `dir`.
fn filesystem_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is plain data; an all-zero value is a valid initial state.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_blocks.saturating_mul(stat.f_frsize))
}

/// The embedded store's directory when none is given: /var/lib/capture as root (a node's
/// recorder), else under the user's data directory (a laptop).
pub fn default_data_dir() -> PathBuf {
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

impl StoreConfig {
    /// The same store for an import: a file is read at the store's pace, so a full Kafka
    /// producer queue is waited on rather than dropped from.
    pub fn for_import(mut self) -> Self {
        if let Some(kafka) = &mut self.kafka {
            kafka.wait_when_full = true;
            // Waiting, a small queue loses nothing and keeps the producer's memory small.
            kafka.queue_max_messages = kafka.queue_max_messages.min(10_000);
            kafka.queue_max_kbytes = kafka.queue_max_kbytes.min(16 * 1024);
        }
        self
    }

    /// The data directory in effect.
    pub fn dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// The same store with Kafka on `brokers` (and `topic`, else the configured or default
    /// one), as an API call that names its own broker asks.
    pub fn with_kafka(&self, brokers: Option<&str>, topic: Option<&str>) -> Self {
        let mut config = self.clone();
        if let Some(brokers) = brokers {
            let kafka = config.kafka.get_or_insert_with(KafkaConfig::default);
            kafka.brokers = brokers.to_string();
        }
        if let (Some(kafka), Some(topic)) = (config.kafka.as_mut(), topic) {
            kafka.topic = topic.to_string();
        }
        config
    }

    /// Opens the store: Kafka when configured, else the embedded one.
    pub fn open(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(match &self.kafka {
            Some(kafka) => Box::new(KafkaStore::open(kafka.clone())?),
            None => {
                let dir = self.dir();
                create_data_dir(&dir)?;
                let retention_bytes = self.retention.bytes_for(&dir)?;
                let defaults = EmbeddedConfig::default();
                // Space comes back a segment at a time: a small cap wants small segments.
                let segment_bytes = retention_bytes.map_or(defaults.segment_bytes, |cap| {
                    (cap / 16).clamp(1 << 20, defaults.segment_bytes)
                });
                let config = EmbeddedConfig {
                    retention_bytes,
                    segment_bytes,
                    compress: self.compress,
                    ..defaults
                };
                Box::new(EmbeddedStore::open_with(&dir, config)?)
            }
        })
    }

    /// Where recordings go, for messages.
    pub fn describe(&self) -> String {
        match &self.kafka {
            Some(kafka) => format!("Kafka {} topic {}", kafka.brokers, kafka.topic),
            None => self.dir().display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_reads_sizes_shares_and_unlimited() {
        assert_eq!("unlimited".parse(), Ok(Retention::Unlimited));
        assert_eq!("50%".parse(), Ok(Retention::PercentOfFilesystem(50)));
        assert_eq!("20MiB".parse(), Ok(Retention::Bytes(20 << 20)));
        for bad in ["0", "0%", "101%", "lots", "-5%"] {
            assert!(bad.parse::<Retention>().is_err(), "{bad}");
        }
        assert_eq!(Retention::default().to_string(), "50%");
        let dir = std::env::temp_dir();
        let half = Retention::default().bytes_for(&dir).unwrap().unwrap();
        assert!(half > 0);
        assert_eq!(Retention::Unlimited.bytes_for(&dir).unwrap(), None);
    }
}
