//! Reading a recording's window back: consume each partition from its start offset to its
//! end offset, keep the records tagged with the recording, rejoin fragments, then merge the
//! partitions into capture order.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::KafkaStore;
use crate::store::{FragmentJoiner, MessageMeta, Recording, StoreError, StoredMessage};

/// The `capture.meta` header's value: the record's metadata, postcard-encoded.
fn meta_header<'a>(msg: &'a rdkafka::message::BorrowedMessage<'_>) -> Option<&'a [u8]> {
    msg.headers()?
        .iter()
        .find(|h| h.key == "capture.meta")
        .and_then(|h| h.value)
}

impl KafkaStore {
    /// Every message of `rec` between its start offsets and `end`, per partition, in offset
    /// order (a connection's messages stay in one partition, so each list keeps their order).
    pub(super) fn consume_window(
        &self,
        rec: &Recording,
        end: &BTreeMap<i32, i64>,
    ) -> Result<BTreeMap<i32, Vec<StoredMessage>>, StoreError> {
        let topic = rec.topic.as_deref().unwrap_or(&self.config.topic);
        let consumer = self.consumer()?;
        let mut tpl = TopicPartitionList::new();
        let mut remaining: HashMap<i32, i64> = HashMap::new();
        for (&p, &start) in &rec.start {
            let stop = end.get(&p).copied().unwrap_or(start);
            if stop > start {
                tpl.add_partition_offset(topic, p, Offset::Offset(start))
                    .map_err(|e| self.err("assigning partitions", e))?;
                remaining.insert(p, stop);
            }
        }
        let mut per_partition: BTreeMap<i32, Vec<StoredMessage>> = BTreeMap::new();
        if remaining.is_empty() {
            return Ok(per_partition);
        }
        consumer
            .assign(&tpl)
            .map_err(|e| self.err("assigning partitions", e))?;
        let mut joiners: HashMap<i32, FragmentJoiner> = HashMap::new();
        let mut last_progress = Instant::now();
        while !remaining.is_empty() {
            if last_progress.elapsed() > self.config.timeout * 3 {
                return Err(self.err(
                    "reading the window",
                    format!("no progress; partitions left {remaining:?}"),
                ));
            }
            let Some(result) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let msg = result.map_err(|e| self.err("reading the window", e))?;
            last_progress = Instant::now();
            let p = msg.partition();
            if !take_within_window(&mut remaining, p, msg.offset()) {
                continue;
            }
            let joiner = joiners.entry(p).or_default();
            if let Some(m) = tagged_message(&msg, &rec.name, joiner)? {
                per_partition.entry(p).or_default().push(m);
            }
        }
        Ok(per_partition)
    }

    /// A consumer of its own (a fresh group, nothing committed): reads never move anything.
    pub(super) fn consumer(&self) -> Result<BaseConsumer, StoreError> {
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", &self.config.brokers)
            .set("group.id", format!("capture-reader-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .map_err(|e| self.err("creating a consumer", e))
    }
}

/// Whether a record at `offset` of `partition` is inside the window still being read,
/// marking the partition done once its last offset is reached.
fn take_within_window(remaining: &mut HashMap<i32, i64>, partition: i32, offset: i64) -> bool {
    let Some(&stop) = remaining.get(&partition) else {
        return false;
    };
    if offset + 1 >= stop {
        remaining.remove(&partition);
    }
    offset < stop
}

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

/// Hands every message to `visit` in capture order across partitions (first byte's time;
/// each partition's own order kept), until `visit` returns false.
pub(super) fn merge_by_capture_time(
    per_partition: BTreeMap<i32, Vec<StoredMessage>>,
    visit: &mut dyn FnMut(StoredMessage) -> bool,
) {
    let mut cursors: Vec<std::iter::Peekable<std::vec::IntoIter<StoredMessage>>> = per_partition
        .into_values()
        .map(|v| v.into_iter().peekable())
        .collect();
    loop {
        let next = cursors
            .iter_mut()
            .enumerate()
            .filter_map(|(i, c)| c.peek().map(|m| (m.meta.first_ts, i)))
            .min();
        let Some((_, i)) = next else {
            return;
        };
        let Some(m) = cursors[i].next() else {
            return;
        };
        if !visit(m) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{HttpMessage, MessageKind};
    use crate::packet::Timestamp;

    fn stored(id: u64, ts: u64) -> StoredMessage {
        let addr = "10.0.0.1:80".parse().unwrap();
        let m = HttpMessage {
            id,
            conn_id: 1,
            kind: MessageKind::Response { status: 200 },
            minor_version: 1,
            request_id: None,
            first_ts: Timestamp(ts),
            last_ts: Timestamp(ts),
            src: addr,
            dst: addr,
            bytes: bytes::Bytes::new(),
            body_len: 0,
            complete: true,
        };
        StoredMessage {
            meta: crate::store::meta_for(&m, "n", 1, &[]),
            bytes: m.bytes,
        }
    }

    #[test]
    fn partitions_merge_by_capture_time_keeping_each_partitions_order() {
        let parts = BTreeMap::from([
            (0, vec![stored(1, 10), stored(2, 30), stored(3, 31)]),
            (1, vec![stored(4, 20), stored(5, 30), stored(6, 5)]),
        ]);
        let mut order = Vec::new();
        merge_by_capture_time(parts.clone(), &mut |m| {
            order.push(m.meta.id);
            true
        });
        // Message 6 carries an earlier time than 5 but stays after it: a partition's (a
        // connection's) order is never changed, only the partitions are interleaved.
        assert_eq!(order, vec![1, 4, 2, 5, 6, 3]);
        let mut first_two = Vec::new();
        merge_by_capture_time(parts, &mut |m| {
            first_two.push(m.meta.id);
            first_two.len() < 2
        });
        assert_eq!(first_two, vec![1, 4]);
    }

    #[test]
    fn the_window_ends_at_its_last_offset_per_partition() {
        let mut remaining = HashMap::from([(0, 3), (1, 1)]);
        assert!(take_within_window(&mut remaining, 0, 1));
        assert!(take_within_window(&mut remaining, 1, 0));
        assert!(!remaining.contains_key(&1));
        assert!(!take_within_window(&mut remaining, 1, 1));
        assert!(take_within_window(&mut remaining, 0, 2));
        assert!(remaining.is_empty());
        assert!(!take_within_window(&mut remaining, 0, 3));
    }
}
