//! Where recordings are kept, shared by every command that reads or writes them.

use std::path::PathBuf;

use crate::store::Store;
use crate::store::embedded::{EmbeddedConfig, EmbeddedStore};
use crate::store::kafka::{KafkaConfig, KafkaStore};

/// Which store to use.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// Directory of the embedded store (created if missing). Default: /var/lib/capture as
    /// root, else ~/.local/share/capture.
    #[arg(long, value_name = "DIR", env = "CAPTURE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Cap on the embedded store's size in bytes: past it the oldest finished recordings are
    /// deleted (a recording still running is never deleted; when running ones alone pass the
    /// cap, recording stops as failed). Default: no cap.
    #[arg(
        long,
        value_name = "BYTES",
        env = "CAPTURE_RETENTION_BYTES",
        conflicts_with = "kafka"
    )]
    pub retention_bytes: Option<u64>,

    /// Store in Kafka instead (bootstrap brokers, host:port[,host:port]).
    #[arg(long, value_name = "BROKERS", env = "CAPTURE_KAFKA")]
    pub kafka: Option<String>,

    /// Kafka topic for the messages (created with --partitions if missing).
    #[arg(
        long,
        value_name = "TOPIC",
        default_value = "capture-messages",
        requires = "kafka"
    )]
    pub topic: String,

    /// Partitions when creating the Kafka topic.
    #[arg(long, value_name = "N", default_value_t = 3, requires = "kafka")]
    pub partitions: i32,

    /// Kafka compression codec.
    #[arg(long, default_value = "lz4", value_parser = ["lz4", "gzip", "none"], requires = "kafka")]
    pub compression: String,

    /// Producer queue cap in messages; beyond it messages are dropped and counted.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 100_000,
        requires = "kafka",
        hide = true
    )]
    pub kafka_queue_messages: usize,
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

    /// Opens the store: Kafka when --kafka is given, else the embedded one.
    pub fn open(&self) -> anyhow::Result<Box<dyn Store>> {
        Ok(match &self.kafka {
            Some(brokers) => {
                let mut config = KafkaConfig::new(brokers, &self.topic);
                config.partitions = self.partitions;
                config.compression = self.compression.clone();
                config.queue_max_messages = self.kafka_queue_messages;
                Box::new(KafkaStore::open(config)?)
            }
            None => {
                let config = EmbeddedConfig {
                    retention_bytes: self.retention_bytes,
                    ..EmbeddedConfig::default()
                };
                Box::new(EmbeddedStore::open_with(&self.dir(), config)?)
            }
        })
    }

    /// Where recordings go, for messages.
    pub fn describe(&self) -> String {
        match &self.kafka {
            Some(brokers) => format!("Kafka {brokers} topic {}", self.topic),
            None => self.dir().display().to_string(),
        }
    }
}
