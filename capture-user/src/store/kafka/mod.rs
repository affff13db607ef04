//! The Kafka backend: recordings as per-partition offset windows on a topic, the catalog in
//! a compacted topic. Correct on any Kafka-protocol broker: it relies only on watermarks,
//! explicit topic creation, keyed partitioning and record headers.
//!
//! Record layout (documented in the README so other tools can read the topic):
//! key = `node/run/conn` (a connection's messages stay ordered in one partition); value =
//! the exact wire bytes (HTTP/2: the stored form) or one fragment of them; timestamp = capture
//! time (ms); headers: `capture.meta` (the full metadata, postcard-encoded, the source of truth
//! when reading) and readable copies `capture.type`, `capture.version` (`HTTP/1.1`, `HTTP/2`),
//! `capture.body_len`, `capture.id`, `capture.conn`, `capture.ts_ns`,
//! `capture.src`, `capture.dst`, `capture.node`, `capture.recordings` (comma-separated),
//! `capture.fragment` (`i/n`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

mod merge;
mod window;

use super::{
    MessageMeta, Recording, RecordingState, RecordingSummary, Store, StoreError, StoredKind,
    StoredMessage, exists_error, fragments, merge_parts, meta_for, node_name, part_key,
    resolve_interrupted, split_part_key, validate_name,
};
use crate::message::HttpMessage;
use crate::packet::Timestamp;

/// Room for a record's headers and framing beyond its fragment's bytes: the producer's
/// largest request, and what one fetch must allow to return a whole record.
const RECORD_OVERHEAD: usize = 64 * 1024;

/// How to reach and use the broker.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    /// Compacted topic holding the catalog (one record per recording name).
    pub catalog_topic: String,
    /// Partitions of the messages topic when this creates it.
    pub partitions: i32,
    /// `lz4` (default), `gzip`, `zstd` or `none`. Never snappy (see TOOLCHAIN notes).
    pub compression: String,
    /// Largest record value; larger messages are fragmented (below the broker's limit).
    pub fragment_bytes: usize,
    /// Producer queue cap (messages); beyond it messages are dropped and counted.
    pub queue_max_messages: usize,
    /// Producer queue cap (payload KiB), the memory bound when messages are large or the
    /// broker slow.
    pub queue_max_kbytes: usize,
    /// When the queue is full, wait for the broker instead of dropping: for imports, which
    /// read a file at their own pace (live capture never waits).
    pub wait_when_full: bool,
    /// How long to wait for the broker (connect, flush, metadata).
    pub timeout: Duration,
}

impl Default for KafkaConfig {
    /// The settings `capture` uses unless told otherwise; `brokers` must still be given.
    fn default() -> Self {
        Self {
            brokers: String::new(),
            topic: "capture-messages".into(),
            catalog_topic: "capture-recordings".into(),
            partitions: 3,
            compression: "lz4".into(),
            fragment_bytes: 900 * 1024,
            queue_max_messages: 100_000,
            queue_max_kbytes: 64 * 1024,
            wait_when_full: false,
            timeout: Duration::from_secs(10),
        }
    }
}

impl KafkaConfig {
    /// Defaults for a topic on the given brokers.
    pub fn new(brokers: &str, topic: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            ..Self::default()
        }
    }
}

/// Delivery reports, counted by the producer's thread.
#[derive(Default)]
struct Deliveries {
    /// Messages whose last fragment was acknowledged.
    messages: AtomicU64,
    bytes: AtomicU64,
    failed: AtomicU64,
}

struct Context(Arc<Deliveries>);

impl ClientContext for Context {}

impl ProducerContext for Context {
    /// Bytes of the whole message when this record is its last fragment, else 0.
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, last_fragment_of: Self::DeliveryOpaque) {
        match result {
            Ok(_) if *last_fragment_of > 0 => {
                self.0.messages.fetch_add(1, Ordering::Relaxed);
                self.0.bytes.fetch_add(*last_fragment_of, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err((e, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                log::warn!("Kafka delivery failed: {e}");
            }
        }
    }
}

/// The Kafka store.
pub struct KafkaStore {
    config: KafkaConfig,
    producer: ThreadedProducer<Context>,
    deliveries: Arc<Deliveries>,
    partitions: Vec<i32>,
    node: String,
    run: u64,
    queue_full: u64,
    appended: u64,
    /// Recordings this store joined (their catalog entry is this node's part).
    joined: HashSet<String>,
}

fn kafka_err(config: &KafkaConfig, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend {
        path: format!("kafka {} topic {}", config.brokers, config.topic),
        message: format!("{what}: {e}"),
    }
}

impl KafkaStore {
    /// Connects, checks the broker answers within the timeout, and creates the topics.
    pub fn open(config: KafkaConfig) -> Result<Self, StoreError> {
        let deliveries = Arc::new(Deliveries::default());
        let producer: ThreadedProducer<Context> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("compression.type", &config.compression)
            .set("linger.ms", "50")
            .set(
                "queue.buffering.max.messages",
                config.queue_max_messages.to_string(),
            )
            .set(
                "queue.buffering.max.kbytes",
                config.queue_max_kbytes.to_string(),
            )
            .set(
                "message.max.bytes",
                (config.fragment_bytes + RECORD_OVERHEAD).to_string(),
            )
            .set("socket.timeout.ms", config.timeout.as_millis().to_string())
            .create_with_context(Context(deliveries.clone()))
            .map_err(|e| kafka_err(&config, "creating the producer", e))?;
        let metadata = producer
            .client()
            .fetch_metadata(None, config.timeout)
            .map_err(|e| {
                kafka_err(
                    &config,
                    "broker unreachable",
                    format!(
                        "{e}; check --kafka {} and that the broker runs",
                        config.brokers
                    ),
                )
            })?;
        if metadata.brokers().is_empty() {
            return Err(kafka_err(
                &config,
                "broker unreachable",
                "no broker in metadata",
            ));
        }
        let mut store = Self {
            config,
            producer,
            deliveries,
            partitions: Vec::new(),
            node: node_name(),
            run: Timestamp::now().0,
            queue_full: 0,
            appended: 0,
            joined: HashSet::new(),
        };
        store.ensure_topics()?;
        Ok(store)
    }

    fn ensure_topics(&mut self) -> Result<(), StoreError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .create()
            .map_err(|e| self.err("creating the admin client", e))?;
        let topics = [
            NewTopic::new(
                &self.config.topic,
                self.config.partitions,
                TopicReplication::Fixed(1),
            ),
            NewTopic::new(&self.config.catalog_topic, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact"),
        ];
        let opts = AdminOptions::new().operation_timeout(Some(self.config.timeout));
        let results = futures_executor::block_on(admin.create_topics(&topics, &opts))
            .map_err(|e| self.err("creating topics", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(self.err("creating topic", format!("{topic}: {code}")));
                }
            }
        }
        // Wait until the topic's partitions are visible.
        let deadline = Instant::now() + self.config.timeout;
        loop {
            let metadata = self
                .producer
                .client()
                .fetch_metadata(Some(&self.config.topic), self.config.timeout)
                .map_err(|e| self.err("reading topic metadata", e))?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == self.config.topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            if !partitions.is_empty() {
                self.partitions = partitions;
                self.partitions.sort_unstable();
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.err("topic has no partitions", &self.config.topic));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        kafka_err(&self.config, what, e)
    }

    /// High watermarks of every partition: where the next message will land.
    fn watermarks(&self) -> Result<BTreeMap<i32, i64>, StoreError> {
        self.partitions
            .iter()
            .map(|&p| {
                self.producer
                    .client()
                    .fetch_watermarks(&self.config.topic, p, self.config.timeout)
                    .map(|(_, high)| (p, high))
                    .map_err(|e| self.err("reading watermarks", e))
            })
            .collect()
    }

    /// The catalog: the last record per name, tombstones removing names.
    fn catalog(&self) -> Result<BTreeMap<String, Recording>, StoreError> {
        let consumer = self.consumer()?;
        let (low, high) = consumer
            .fetch_watermarks(&self.config.catalog_topic, 0, self.config.timeout)
            .map_err(|e| self.err("reading the catalog watermarks", e))?;
        let mut out = BTreeMap::new();
        if high <= low {
            return Ok(out);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.config.catalog_topic, 0, Offset::Offset(low))
            .map_err(|e| self.err("assigning the catalog", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| self.err("assigning the catalog", e))?;
        let deadline = Instant::now() + self.config.timeout * 3;
        loop {
            if Instant::now() > deadline {
                return Err(self.err("reading the catalog", "timed out"));
            }
            let Some(result) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = result.map_err(|e| self.err("reading the catalog", e))?;
            let name = msg
                .key()
                .map(|k| String::from_utf8_lossy(k).to_string())
                .unwrap_or_default();
            match msg.payload() {
                Some(json) => {
                    let rec: Recording = serde_json::from_slice(json)
                        .map_err(|e| self.err("catalog entry", format!("{name}: {e}")))?;
                    out.insert(name, rec);
                }
                None => {
                    out.remove(&name);
                }
            }
            if msg.offset() >= high - 1 {
                return Ok(out);
            }
        }
    }

    fn save(&self, name: &str, rec: Option<&Recording>) -> Result<(), StoreError> {
        let json = rec
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| self.err("catalog", e))?;
        let mut record: BaseRecord<'_, str, Vec<u8>, Box<u64>> =
            BaseRecord::with_opaque_to(&self.config.catalog_topic, Box::new(0)).key(name);
        if let Some(json) = &json {
            record = record.payload(json);
        }
        self.producer
            .send(record)
            .map_err(|(e, _)| self.err("writing the catalog", e))?;
        self.producer
            .flush(self.config.timeout * 3)
            .map_err(|e| self.err("writing the catalog", e))
    }

    /// The entry under catalog `key`, marked interrupted (and saved so) if its owner is gone.
    fn resolved(&self, key: &str, rec: Recording) -> Result<Recording, StoreError> {
        let marks = self.watermarks()?;
        let resolved = resolve_interrupted(rec.clone(), || marks);
        if resolved != rec {
            self.save(key, Some(&resolved))?;
        }
        Ok(resolved)
    }

    /// Recordings by name: plain entries as they are, shared ones merged from their parts.
    fn recordings(&self) -> Result<BTreeMap<String, Recording>, StoreError> {
        let mut out = BTreeMap::new();
        let mut parts: BTreeMap<String, Vec<Recording>> = BTreeMap::new();
        for (key, rec) in self.catalog()? {
            let (name, is_part) = split_part_key(&key);
            let rec = self.resolved(&key, rec)?;
            if is_part {
                parts.entry(name.to_string()).or_default().push(rec);
            } else {
                out.insert(key, rec);
            }
        }
        for (name, parts) in parts {
            if let Some(merged) = merge_parts(&name, &parts) {
                out.insert(name, merged);
            }
        }
        Ok(out)
    }

    fn headers(meta: &MessageMeta, encoded: &[u8]) -> OwnedHeaders {
        let kind = match &meta.kind {
            StoredKind::Request { .. } => "request",
            StoredKind::Response { .. } => "response",
        };
        let text = [
            ("capture.type", kind.to_string()),
            ("capture.version", meta.version.label().to_string()),
            ("capture.body_len", meta.body_len.to_string()),
            ("capture.id", meta.id.to_string()),
            ("capture.conn", meta.conn_id.to_string()),
            ("capture.ts_ns", meta.first_ts.to_string()),
            ("capture.src", meta.src.to_string()),
            ("capture.dst", meta.dst.to_string()),
            ("capture.node", meta.node.clone()),
            ("capture.recordings", meta.recordings.join(",")),
            (
                "capture.fragment",
                format!("{}/{}", meta.fragment, meta.fragments),
            ),
        ];
        let mut headers = OwnedHeaders::new().insert(Header {
            key: "capture.meta",
            value: Some(encoded),
        });
        for (key, value) in &text {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        headers
    }
}

impl Store for KafkaStore {
    fn backend(&self) -> &'static str {
        "kafka"
    }

    fn begin(&mut self, name: &str, source: &str) -> Result<Recording, StoreError> {
        validate_name(name)?;
        if let Some(existing) = self.recordings()?.remove(name) {
            return Err(exists_error(&existing));
        }
        let rec = Recording::started(
            name,
            "kafka",
            Some(self.config.topic.clone()),
            self.watermarks()?,
            source,
        );
        self.save(name, Some(&rec))?;
        Ok(rec)
    }

    fn join(&mut self, name: &str, source: &str) -> Result<Recording, StoreError> {
        validate_name(name)?;
        let key = part_key(name, &self.node);
        let catalog = self.catalog()?;
        if let Some(mine) = catalog.get(&key) {
            let mine = self.resolved(&key, mine.clone())?;
            if mine.state == RecordingState::Recording {
                return Err(StoreError::Exists(format!(
                    "{name} (already recording on node {})",
                    self.node
                )));
            }
        }
        if let Some(existing) = self.recordings()?.remove(name) {
            let shared = catalog.contains_key(&key)
                || catalog.keys().any(|k| split_part_key(k) == (name, true));
            // Join only a shared recording still under way; anything else keeps its name.
            if !shared || existing.state != RecordingState::Recording {
                return Err(exists_error(&existing));
            }
        }
        let rec = Recording::started(
            name,
            "kafka",
            Some(self.config.topic.clone()),
            self.watermarks()?,
            &format!("{}: {source}", self.node),
        );
        self.save(&key, Some(&rec))?;
        self.joined.insert(name.to_string());
        Ok(rec)
    }

    fn append(&mut self, message: &HttpMessage, recordings: &[String]) -> Result<(), StoreError> {
        let meta = meta_for(message, &self.node, self.run, recordings);
        let key = format!("{}/{}/{}", self.node, self.run, message.conn_id);
        let ts_ms = (message.first_ts.0 / 1_000_000) as i64;
        let parts = fragments(&meta, &message.bytes, self.config.fragment_bytes);
        let last = parts.len() - 1;
        self.appended += 1;
        for (i, (meta, bytes)) in parts.into_iter().enumerate() {
            let encoded =
                postcard::to_stdvec(&meta).map_err(|e| self.err("encoding metadata", e))?;
            let opaque = Box::new(if i == last {
                message.bytes.len().max(1) as u64
            } else {
                0
            });
            let mut record = BaseRecord::with_opaque_to(&self.config.topic, opaque)
                .key(key.as_str())
                .payload(&bytes[..])
                .timestamp(ts_ms)
                .headers(Self::headers(&meta, &encoded));
            let waiting_since = std::time::Instant::now();
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if self.config.wait_when_full
                            && waiting_since.elapsed() < self.config.timeout * 3 =>
                    {
                        // An import waits for the broker to take what is queued.
                        record = back;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // Bounded and loud: the queue cap is a counted drop, never a stall.
                        self.queue_full += 1;
                        return Ok(());
                    }
                    Err((e, _)) => return Err(self.err("producing", e)),
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        self.producer.flush(self.config.timeout * 3).map_err(|e| {
            self.err(
                "flushing (the broker did not confirm every message in time)",
                e,
            )
        })
    }

    fn end(&mut self, name: &str, mut summary: RecordingSummary) -> Result<Recording, StoreError> {
        let flushed = self.flush();
        let key = if self.joined.remove(name) {
            part_key(name, &self.node)
        } else {
            name.to_string()
        };
        let mut rec = self
            .catalog()?
            .remove(&key)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))?;
        rec.end = Some(self.watermarks()?);
        rec.stopped_at_ns = Some(Timestamp::now().0);
        (rec.state, rec.reason) = summary.ending.state_and_reason();
        rec.owner = None;
        // What the broker acknowledged is what counts as stored.
        let stored = self.deliveries.messages.load(Ordering::Relaxed);
        summary.messages = stored;
        summary.bytes = self.deliveries.bytes.load(Ordering::Relaxed);
        let failed = self.deliveries.failed.load(Ordering::Relaxed);
        for (reason, n) in [
            ("producer_queue_full", self.queue_full),
            ("kafka_delivery_failed", failed),
            (
                "not_acknowledged",
                self.appended.saturating_sub(stored + self.queue_full),
            ),
        ] {
            if n > 0 {
                summary.drops.insert(reason.to_string(), n);
            }
        }
        rec.messages = summary.messages;
        rec.bytes = summary.bytes;
        rec.drops = summary.drops;
        rec.interfaces = summary.interfaces;
        self.save(&key, Some(&rec))?;
        flushed?;
        Ok(rec)
    }

    fn list(&mut self) -> Result<Vec<Recording>, StoreError> {
        Ok(self.recordings()?.into_values().collect())
    }

    fn get(&mut self, name: &str) -> Result<Recording, StoreError> {
        self.recordings()?
            .remove(name)
            .ok_or_else(|| StoreError::NotFound(name.to_string()))
    }

    fn delete(&mut self, name: &str) -> Result<(), StoreError> {
        // The catalog entries go (tombstones); the messages age out with the topic's retention.
        self.get(name)?;
        for key in self.catalog()?.into_keys() {
            if split_part_key(&key).0 == name {
                self.save(&key, None)?;
            }
        }
        Ok(())
    }

    fn read(
        &mut self,
        name: &str,
        visit: &mut dyn FnMut(StoredMessage) -> bool,
    ) -> Result<(), StoreError> {
        let rec = self.get(name)?;
        let end = match &rec.end {
            Some(end) => end.clone(),
            None => self.watermarks()?,
        };
        self.read_window(&rec, &end, visit)
    }
}
