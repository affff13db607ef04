//! The store flags every command that reads or writes recordings takes; they build a
//! [`StoreConfig`], whose defaults they show.

use std::path::PathBuf;

use crate::store::StoreConfig;
use crate::store::config::Retention;
use crate::store::kafka::KafkaConfig;

/// Which store to use.
#[derive(Clone, Debug, clap::Args)]
pub struct StoreArgs {
    /// Directory of the embedded store (created if missing). Default: /var/lib/capture as
    /// root, else ~/.local/share/capture.
    #[arg(long, value_name = "DIR", env = "CAPTURE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// How large the embedded store may grow: a size (20GiB), a share of the data
    /// directory's filesystem (50%), or unlimited. Past it the oldest finished recordings are
    /// deleted; a running recording is never deleted, and one that alone reaches the cap ends
    /// there (complete, saying so).
    #[arg(long, value_name = "SIZE|PCT%", env = "CAPTURE_MAX_STORE_SIZE", default_value_t = Retention::default(), conflicts_with = "kafka")]
    pub max_store_size: Retention,

    /// Store in Kafka instead (bootstrap brokers, host:port[,host:port]).
    #[arg(long, value_name = "BROKERS", env = "CAPTURE_KAFKA")]
    pub kafka: Option<String>,

    /// Kafka topic for the messages (created with --partitions if missing).
    #[arg(long, value_name = "TOPIC", default_value_t = KafkaConfig::default().topic, requires = "kafka")]
    pub topic: String,

    /// Partitions when creating the Kafka topic.
    #[arg(long, value_name = "N", default_value_t = KafkaConfig::default().partitions, requires = "kafka")]
    pub partitions: i32,

    /// Compression: Kafka's codec (lz4, gzip or none; default lz4), or the embedded store's
    /// batches (lz4 or none; default none: LZ4 saves about 3x the disk on HTTP traffic but
    /// adds about a quarter to the recorder's instructions per stored message).
    #[arg(long, value_name = "CODEC", value_parser = ["lz4", "gzip", "none"])]
    pub compression: Option<String>,

    /// Producer queue cap in messages; beyond it messages are dropped and counted.
    #[arg(
        long,
        value_name = "N",
        default_value_t = KafkaConfig::default().queue_max_messages,
        requires = "kafka",
        hide = true
    )]
    pub kafka_queue_messages: usize,
}

impl StoreArgs {
    /// The store these flags describe.
    pub fn to_config(&self) -> anyhow::Result<StoreConfig> {
        if self.kafka.is_none() && self.compression.as_deref() == Some("gzip") {
            anyhow::bail!(
                "--compression gzip is for Kafka; the embedded store takes --compression lz4 or none"
            );
        }
        Ok(StoreConfig {
            data_dir: self.data_dir.clone(),
            retention: self.max_store_size,
            kafka: self.kafka.as_ref().map(|brokers| KafkaConfig {
                brokers: brokers.clone(),
                topic: self.topic.clone(),
                partitions: self.partitions,
                compression: self
                    .compression
                    .clone()
                    .unwrap_or_else(|| KafkaConfig::default().compression),
                queue_max_messages: self.kafka_queue_messages,
                ..KafkaConfig::default()
            }),
            compress: self.compression.as_deref() == Some("lz4"),
        })
    }
}
