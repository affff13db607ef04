//! Reading a recording's window back: consume each partition from its start offset to its
//! end offset, keep the records tagged with the recording, rejoin fragments, and merge the
//! partitions into capture order as they come, pausing a partition that is too far ahead.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::merge::{Flow, WindowMerge};
use super::{KafkaStore, RECORD_OVERHEAD};
use crate::store::{FragmentJoiner, MessageMeta, Recording, StoreError, StoredMessage};

/// The `capture.meta` header's value: the record's metadata, postcard-encoded.
fn meta_header<'a>(msg: &'a rdkafka::message::BorrowedMessage<'_>) -> Option<&'a [u8]> {
    msg.headers()?
        .iter()
        .find(|h| h.key == "capture.meta")
        .and_then(|h| h.value)
}

impl KafkaStore {
    /// Hands every message of `rec` between its start offsets and `end` to `visit` in
    /// capture order, merged across partitions as they are consumed (see [`WindowMerge`]),
    /// until `visit` returns false. Memory is bounded by the merge's per-partition queues
    /// and the consumer's prefetch, whatever the window's length.
    pub(super) fn read_window(
        &self,
        rec: &Recording,
        end: &BTreeMap<i32, i64>,
        visit: &mut dyn FnMut(StoredMessage) -> bool,
    ) -> Result<(), StoreError> {
        let topic = rec.topic.as_deref().unwrap_or(&self.config.topic);
        let windows = rec
            .start
            .iter()
            .map(|(&p, &start)| (p, start, end.get(&p).copied().unwrap_or(start)));
        let mut merge = WindowMerge::new(windows);
        if merge.is_done() {
            return Ok(());
        }
        let consumer = self.consumer()?;
        let mut tpl = TopicPartitionList::new();
        for (p, start) in merge.starts() {
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(|e| self.err("assigning partitions", e))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| self.err("assigning partitions", e))?;
        let mut joiners: HashMap<i32, FragmentJoiner> = HashMap::new();
        let mut last_progress = Instant::now();
        loop {
            let mut handed = false;
            while let Some(m) = merge.pop() {
                if !visit(m) {
                    return Ok(());
                }
                handed = true;
            }
            if merge.is_done() {
                return Ok(());
            }
            // Time spent in `visit` (a paced replay) is not the broker's lack of progress.
            if handed {
                last_progress = Instant::now();
            }
            self.apply_flow(&consumer, topic, merge.flow())?;
            if last_progress.elapsed() > self.config.timeout * 3 {
                return Err(self.err(
                    "reading the window",
                    format!(
                        "no progress; partitions left (next offset, end) {:?}",
                        merge.unfinished()
                    ),
                ));
            }
            let Some(result) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = result.map_err(|e| self.err("reading the window", e))?;
            last_progress = Instant::now();
            let p = msg.partition();
            if !merge.take(p, msg.offset()) {
                continue;
            }
            let joiner = joiners.entry(p).or_default();
            if let Some(m) = tagged_message(&msg, &rec.name, joiner)? {
                merge.push(p, m);
            }
        }
    }

    /// Pauses and resumes fetching partitions as the merge asks. The client drops a paused
    /// partition's records fetched but not yet delivered, and on resume fetches again from
    /// the one after the last delivered, so nothing is skipped (and the merge takes a record
    /// delivered twice once).
    fn apply_flow(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        flow: Flow,
    ) -> Result<(), StoreError> {
        let list = |partitions: &[i32]| {
            let mut tpl = TopicPartitionList::new();
            for &p in partitions {
                tpl.add_partition(topic, p);
            }
            tpl
        };
        if !flow.pause.is_empty() {
            consumer
                .pause(&list(&flow.pause))
                .map_err(|e| self.err("pausing partitions", e))?;
        }
        if !flow.resume.is_empty() {
            consumer
                .resume(&list(&flow.resume))
                .map_err(|e| self.err("resuming partitions", e))?;
        }
        Ok(())
    }

    /// A consumer of its own (a fresh group, nothing committed): reads never move anything.
    /// Its prefetch is capped at [`CONSUMER_QUEUE_KIB`] (librdkafka's default queues up to
    /// 64 MiB ahead), and each fetch at [`Self::fetch_bytes`].
    pub(super) fn consumer(&self) -> Result<BaseConsumer, StoreError> {
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", format!("capture-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("queued.max.messages.kbytes", CONSUMER_QUEUE_KIB.to_string())
            .set("max.partition.fetch.bytes", self.fetch_bytes().to_string())
            .set("fetch.max.bytes", self.fetch_bytes().to_string())
            .create()
            .map_err(|e| self.err("creating a consumer", e))
    }

    /// Most bytes one fetch asks for, per partition and in all: 1 MiB, or one whole record
    /// if fragments are configured larger (Kafka returns an oversized first batch whole,
    /// tansu returns nothing). Small fetches get the first message of every partition
    /// sooner, which the merge needs before it hands anything on: on tansu, a 200k-message
    /// window's first message came after 9 s with librdkafka's sizes (fetch.max.bytes
    /// following the 16 MiB prefetch) and after 3-4 s with 1 MiB, and the whole window read
    /// in 75 s instead of 120 s.
    fn fetch_bytes(&self) -> usize {
        (self.config.fragment_bytes + RECORD_OVERHEAD).max(1 << 20)
    }
}

/// The consumer's prefetch cap (KiB): with the merge's queues, what a read holds at most.
const CONSUMER_QUEUE_KIB: usize = 16 * 1024;

/// The message a record completes, if the record is ours, tagged with `recording`, and its
/// message's last fragment.
fn tagged_message(
    msg: &rdkafka::message::BorrowedMessage<'_>,
    recording: &str,
    joiner: &mut FragmentJoiner,
) -> Result<Option<StoredMessage>, StoreError> {
    let position = format!("partition {} offset {}", msg.partition(), msg.offset());
    let Some(encoded) = meta_header(msg) else {
        return Ok(None); // not written by capture
    };
    let meta: MessageMeta = postcard::from_bytes(encoded).map_err(|e| StoreError::Corrupt {
        position: position.clone(),
        message: e.to_string(),
    })?;
    if !meta.recordings.iter().any(|r| r == recording) {
        return Ok(None);
    }
    joiner.push(meta, msg.payload().unwrap_or_default(), &position)
}
