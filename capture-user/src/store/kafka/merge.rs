//! The k-way merge of a recording's window across partitions, by capture time, in bounded
//! memory, sans-IO: the consumer feeds each partition's records as they come, and a message
//! is handed on only once every partition that may still hold an earlier one has one queued.
//!
//! The order is the one a merge of the whole window would give: each partition's own order
//! kept (a connection's messages are in one partition), partitions interleaved by the first
//! byte's capture time, the lower partition first on a tie. Each partition queues at most
//! [`MAX_QUEUED_MESSAGES`] messages or [`MAX_QUEUED_BYTES`] bytes; a full partition is paused
//! (the consumer stops fetching it) and resumed once its queue is half drained, so memory
//! is bounded by the number of partitions, not by the window.

use std::collections::{BTreeMap, VecDeque};

use crate::store::StoredMessage;

/// Messages a partition queues before it is paused.
pub const MAX_QUEUED_MESSAGES: usize = 2048;
/// Bytes of messages a partition queues before it is paused (a message larger than this is
/// still taken, alone).
pub const MAX_QUEUED_BYTES: usize = 8 << 20;

/// One partition's part of the window.
struct Partition {
    queue: VecDeque<StoredMessage>,
    /// Bytes of the queued messages.
    bytes: usize,
    /// Offset of the next record expected: those below it were taken already.
    next: i64,
    /// End of the window (exclusive).
    stop: i64,
    /// Whether the consumer was told to stop fetching it.
    paused: bool,
}

impl Partition {
    /// Every record of the window was taken (some may still be queued).
    fn finished(&self) -> bool {
        self.next >= self.stop
    }
}

/// Partitions whose fetching must change, as [`WindowMerge::flow`] decides.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Partitions to stop fetching: their queue is full, or their window is all taken.
    pub pause: Vec<i32>,
    /// Paused partitions to fetch again: their queue is half drained.
    pub resume: Vec<i32>,
}

/// The merge of one window (see the module doc).
pub struct WindowMerge {
    partitions: BTreeMap<i32, Partition>,
    max_messages: usize,
    max_bytes: usize,
}

impl WindowMerge {
    /// A merge of the windows `(partition, start, stop)` with the default queue caps;
    /// partitions whose window is empty are left out.
    pub fn new(windows: impl IntoIterator<Item = (i32, i64, i64)>) -> Self {
        Self::with_caps(windows, MAX_QUEUED_MESSAGES, MAX_QUEUED_BYTES)
    }

    /// A merge with its own caps (tests use small ones to exercise pausing).
    pub fn with_caps(
        windows: impl IntoIterator<Item = (i32, i64, i64)>,
        max_messages: usize,
        max_bytes: usize,
    ) -> Self {
        let partitions = windows
            .into_iter()
            .filter(|&(_, start, stop)| stop > start)
            .map(|(p, start, stop)| {
                let part = Partition {
                    queue: VecDeque::new(),
                    bytes: 0,
                    next: start,
                    stop,
                    paused: false,
                };
                (p, part)
            })
            .collect();
        Self {
            partitions,
            max_messages: max_messages.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// The partitions to consume and the offset each starts at.
    pub fn starts(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions.iter().map(|(&id, p)| (id, p.next))
    }

    /// Whether the record at `offset` of `partition` is in the window and new (a record
    /// seen before, or past the end, is not); taking it moves the partition past it.
    pub fn take(&mut self, partition: i32, offset: i64) -> bool {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return false;
        };
        if offset < p.next || offset >= p.stop {
            return false;
        }
        p.next = offset + 1;
        true
    }

    /// Queues a message of `partition` (a record taken, whole once its fragments joined).
    pub fn push(&mut self, partition: i32, message: StoredMessage) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.bytes += message.bytes.len();
            p.queue.push_back(message);
        }
    }

    /// The next message in capture order, when it can be told: every partition that is not
    /// finished has a message queued (an empty one may still bring an earlier message).
    pub fn pop(&mut self) -> Option<StoredMessage> {
        let mut best: Option<(u64, i32)> = None;
        for (&id, p) in &self.partitions {
            match p.queue.front() {
                Some(m) if best.is_none_or(|(ts, _)| m.meta.first_ts < ts) => {
                    best = Some((m.meta.first_ts, id));
                }
                Some(_) => {}
                None if !p.finished() => return None,
                None => {}
            }
        }
        let (_, id) = best?;
        let p = self.partitions.get_mut(&id)?;
        let m = p.queue.pop_front()?;
        p.bytes -= m.bytes.len();
        Some(m)
    }

    /// Every record taken and every message handed on.
    pub fn is_done(&self) -> bool {
        self.partitions
            .values()
            .all(|p| p.finished() && p.queue.is_empty())
    }

    /// Partitions to pause (queue full, or finished: what follows the window is not
    /// wanted) and to resume (queue half drained) since the last call.
    pub fn flow(&mut self) -> Flow {
        let mut flow = Flow::default();
        for (&id, p) in &mut self.partitions {
            let full = p.queue.len() >= self.max_messages || p.bytes >= self.max_bytes;
            let drained = p.queue.len() <= self.max_messages / 2 && p.bytes <= self.max_bytes / 2;
            if !p.paused && (full || p.finished()) {
                p.paused = true;
                flow.pause.push(id);
            } else if p.paused && drained && !p.finished() {
                p.paused = false;
                flow.resume.push(id);
            }
        }
        flow
    }

    /// Partitions not finished, with the next offset expected and the window's end.
    pub fn unfinished(&self) -> BTreeMap<i32, (i64, i64)> {
        self.partitions
            .iter()
            .filter(|(_, p)| !p.finished())
            .map(|(&id, p)| (id, (p.next, p.stop)))
            .collect()
    }
}

#[cfg(test)]
#[path = "merge_tests.rs"]
mod tests;
