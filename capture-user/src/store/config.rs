//! Where recordings are kept: the one description of a store that the command line and the
//! agent both build, with its defaults in one place.

use std::path::PathBuf;

use super::embedded::EmbeddedStore;
use super::kafka::{KafkaConfig, KafkaStore};
use super::{Store, StoreError};

/// Which backend to use, and its settings. `Default` is the embedded store in the default
/// data directory.
#[derive(Clone, Debug, Default)]
pub struct StoreConfig {
    /// Directory of the embedded store; `None` means [`default_data_dir`].
    pub data_dir: Option<PathBuf>,
    /// Store in Kafka instead of the embedded store.
    pub kafka: Option<KafkaConfig>,
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
            None => Box::new(EmbeddedStore::open(&self.dir())?),
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
