//! Recordings: named windows of stored messages, behind one interface with interchangeable
//! backends, so recording and replay are decoupled (record once, read any number of times).
//!
//! The contract every backend keeps (tested by one shared suite):
//! - a recording's window is bounded by positions taken at its start and end, and each
//!   message carries the names of the recordings active when it was stored, so reading a
//!   recording returns exactly its messages even when recordings overlap;
//! - reading returns messages in capture order, and a connection's messages in order;
//! - messages larger than the backend's limit are stored as ordered fragments and rejoined;
//! - a recorder that dies leaves its recording `interrupted`, readable up to what was stored;
//! - a recording whose storing failed (a full disk) ends `failed`, with a reason, counting
//!   exactly what can be read back.

pub mod config;
pub mod embedded;
pub mod kafka;
mod owner;
mod shared;

pub use owner::{Owner, node_name};
pub use shared::{merge_parts, part_key, split_part_key};

pub use config::StoreConfig;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::message::{HttpMessage, HttpVersion, MessageKind};
use crate::packet::Timestamp;

/// Why a store operation failed. Messages name the thing and the fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("recording {0:?} not found; list recordings with `capture recordings list`")]
    NotFound(String),
    #[error(
        "recording {0:?} already exists; delete it with `capture recordings delete {0}` or pick another name"
    )]
    Exists(String),
    #[error("recording name {0:?} is not valid; use 1-200 letters, digits, '.', '_' or '-'")]
    BadName(String),
    #[error("recording {0:?} is not being recorded by this process")]
    NotActive(String),
    #[error(
        "joining recording {0:?} across nodes needs the Kafka backend (--kafka); the embedded store belongs to one node"
    )]
    JoinUnsupported(String),
    #[error("store at {path}: {message}")]
    Backend { path: String, message: String },
    #[error("stored record at position {position} is corrupt: {message}")]
    Corrupt { position: String, message: String },
    #[error(
        "data directory {path} holds the v1 store format (capture.sqlite, one SQLite row per message), which this capture does not read; export its recordings with an older capture (`capture export NAME --gor FILE`) or use another --data-dir"
    )]
    OldFormat { path: String },
    #[error("cannot write {path}: {cause}; {}", write_hint(cause))]
    Write { path: String, cause: std::io::Error },
    #[error(
        "the store holds {used} bytes, over its retention cap of {cap} bytes, and only running recordings are left to delete; stop a recording or raise the cap"
    )]
    RetentionFull { used: u64, cap: u64 },
}

fn write_hint(cause: &std::io::Error) -> &'static str {
    if cause.raw_os_error() == Some(libc::ENOSPC) || cause.raw_os_error() == Some(libc::EDQUOT) {
        "the filesystem is full: free space or cap the store (retention); what was written before stays readable"
    } else {
        "what was written before stays readable"
    }
}

impl StoreError {
    /// Did a write fail for lack of space?
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Self::Write { cause, .. }
            if matches!(cause.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

/// State of a recording in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    /// A recorder is (or was, until it is found dead) storing into it.
    Recording,
    /// Stopped cleanly; the window is final.
    Complete,
    /// Its recorder died; the window ends at what was stored.
    Interrupted,
    /// Storing failed part way (see the recording's `reason`); the window ends at what was
    /// stored, and its counts are what can be read back.
    Failed,
}

impl std::fmt::Display for RecordingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Recording => "recording",
            Self::Complete => "complete",
            Self::Interrupted => "interrupted",
            Self::Failed => "failed",
        })
    }
}

/// A recording as the catalog keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recording {
    pub name: String,
    /// `embedded` or `kafka`.
    pub backend: String,
    /// Kafka topic (None for the embedded store).
    pub topic: Option<String>,
    /// Where the window starts, per partition (the embedded store has partition 0).
    // In JSON the partition numbers are object keys, hence strings.
    #[schema(value_type = BTreeMap<String, i64>)]
    pub start: BTreeMap<i32, i64>,
    /// Where it ends (exclusive), once stopped or found interrupted.
    #[schema(value_type = Option<BTreeMap<String, i64>>)]
    pub end: Option<BTreeMap<i32, i64>>,
    pub started_at_ns: u64,
    pub stopped_at_ns: Option<u64>,
    pub state: RecordingState,
    pub owner: Option<Owner>,
    /// What was recorded (interfaces and ports, or the imported file).
    pub source: String,
    /// Messages and bytes stored (known once stopped).
    pub messages: u64,
    pub bytes: u64,
    /// Drops and anomalies by reason, from capture and framing.
    pub drops: BTreeMap<String, u64>,
    /// Live recordings: packets captured per interface (summed by name over the nodes of a
    /// shared recording).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub interfaces: BTreeMap<String, u64>,
    /// Why it ended when it was not asked to: the limit it reached (`complete`) or what
    /// failed (`failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Recording {
    /// A recording that starts now, owned by this process.
    pub fn started(
        name: &str,
        backend: &str,
        topic: Option<String>,
        start: BTreeMap<i32, i64>,
        source: &str,
    ) -> Self {
        Self {
            name: name.to_string(),
            backend: backend.to_string(),
            topic,
            start,
            end: None,
            started_at_ns: Timestamp::now().0,
            stopped_at_ns: None,
            state: RecordingState::Recording,
            owner: Some(Owner::this_process()),
            source: source.to_string(),
            messages: 0,
            bytes: 0,
            drops: BTreeMap::new(),
            interfaces: BTreeMap::new(),
            reason: None,
        }
    }
}

/// Message metadata stored next to the exact wire bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// Node that captured it.
    pub node: String,
    /// Capture run (start time of the recorder, ns): with `node` makes ids globally unique.
    pub run: u64,
    pub id: u64,
    pub conn_id: u64,
    pub kind: StoredKind,
    pub request_id: Option<u64>,
    pub version: HttpVersion,
    pub first_ts: u64,
    pub last_ts: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub body_len: u64,
    pub complete: bool,
    /// Recordings active when the message was stored.
    pub recordings: Vec<String>,
    /// Fragment index and count (0 of 1 for a message stored whole).
    pub fragment: u32,
    pub fragments: u32,
    /// Length of the whole message's bytes.
    pub total_len: u64,
}

/// Request or response, serialisable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredKind {
    Request { method: String, uri: String },
    Response { status: u16 },
}

/// A message read back from a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub meta: MessageMeta,
    /// The exact wire bytes, fragments rejoined.
    pub bytes: Bytes,
}

impl StoredMessage {
    /// The message as the rest of the program knows it.
    pub fn to_http(&self) -> HttpMessage {
        HttpMessage {
            id: self.meta.id,
            conn_id: self.meta.conn_id,
            kind: match &self.meta.kind {
                StoredKind::Request { method, uri } => MessageKind::Request {
                    method: method.as_str().into(),
                    uri: uri.as_str().into(),
                },
                StoredKind::Response { status } => MessageKind::Response { status: *status },
            },
            version: self.meta.version,
            request_id: self.meta.request_id,
            first_ts: Timestamp(self.meta.first_ts),
            last_ts: Timestamp(self.meta.last_ts),
            src: self.meta.src,
            dst: self.meta.dst,
            bytes: self.bytes.clone(),
            body_len: self.meta.body_len,
            complete: self.meta.complete,
        }
    }

    /// Is it a request?
    pub fn is_request(&self) -> bool {
        matches!(self.meta.kind, StoredKind::Request { .. })
    }
}

/// Builds the metadata of a message to store.
pub fn meta_for(message: &HttpMessage, node: &str, run: u64, recordings: &[String]) -> MessageMeta {
    MessageMeta {
        node: node.to_string(),
        run,
        id: message.id,
        conn_id: message.conn_id,
        kind: match &message.kind {
            MessageKind::Request { method, uri } => StoredKind::Request {
                method: method.to_string(),
                uri: uri.to_string(),
            },
            MessageKind::Response { status } => StoredKind::Response { status: *status },
        },
        request_id: message.request_id,
        version: message.version,
        first_ts: message.first_ts.0,
        last_ts: message.last_ts.0,
        src: message.src,
        dst: message.dst,
        body_len: message.body_len,
        complete: message.complete,
        recordings: recordings.to_vec(),
        fragment: 0,
        fragments: 1,
        total_len: message.bytes.len() as u64,
    }
}

/// Splits a message's bytes into fragments of at most `limit` bytes (at least one fragment,
/// even for an empty message).
pub fn fragments(meta: &MessageMeta, bytes: &Bytes, limit: usize) -> Vec<(MessageMeta, Bytes)> {
    let limit = limit.max(1);
    let count = bytes.len().div_ceil(limit).max(1);
    (0..count)
        .map(|i| {
            let mut m = meta.clone();
            m.fragment = i as u32;
            m.fragments = count as u32;
            let start = i * limit;
            let end = (start + limit).min(bytes.len());
            (m, bytes.slice(start..end))
        })
        .collect()
}

/// Rejoins fragments read in order. Fragments of one message are stored consecutively per
/// partition by the writer; anything else is reported as corrupt rather than guessed.
#[derive(Default)]
pub struct FragmentJoiner {
    pending: Option<(MessageMeta, bytes::BytesMut)>,
}

impl FragmentJoiner {
    /// Feeds one stored fragment; returns the whole message once its last fragment arrives.
    pub fn push(
        &mut self,
        meta: MessageMeta,
        bytes: &[u8],
        position: &str,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let corrupt = |message: String| StoreError::Corrupt {
            position: position.to_string(),
            message,
        };
        if meta.fragments <= 1 {
            if self.pending.take().is_some() {
                return Err(corrupt(
                    "a fragmented message is missing its last fragment".into(),
                ));
            }
            return Ok(Some(StoredMessage {
                meta,
                bytes: Bytes::copy_from_slice(bytes),
            }));
        }
        match self.pending.take() {
            None if meta.fragment == 0 => {
                let mut buf = bytes::BytesMut::with_capacity(meta.total_len.min(1 << 30) as usize);
                buf.extend_from_slice(bytes);
                self.pending = Some((meta, buf));
            }
            Some((first, mut buf))
                if first.run == meta.run
                    && first.id == meta.id
                    && first.node == meta.node
                    && meta.fragment == first.fragment + 1 =>
            {
                buf.extend_from_slice(bytes);
                let mut first = first;
                first.fragment = meta.fragment;
                if meta.fragment + 1 == meta.fragments {
                    if buf.len() as u64 != first.total_len {
                        return Err(corrupt(format!(
                            "rejoined {} bytes, expected {}",
                            buf.len(),
                            first.total_len
                        )));
                    }
                    first.fragment = 0;
                    first.fragments = 1;
                    return Ok(Some(StoredMessage {
                        meta: first,
                        bytes: buf.freeze(),
                    }));
                }
                self.pending = Some((first, buf));
            }
            _ => {
                return Err(corrupt(format!(
                    "fragment {} of {} out of order",
                    meta.fragment, meta.fragments
                )));
            }
        }
        Ok(None)
    }
}

/// Checks a recording name (it becomes a catalog key and a Kafka header value).
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// Losses as a recording's catalog entry keeps them: only the reasons that occurred.
pub fn drops_seen(losses: impl IntoIterator<Item = (String, u64)>) -> BTreeMap<String, u64> {
    losses.into_iter().filter(|(_, v)| *v > 0).collect()
}

/// What a recorder reports when it stops.
#[derive(Clone, Debug, Default)]
pub struct RecordingSummary {
    pub messages: u64,
    pub bytes: u64,
    pub drops: BTreeMap<String, u64>,
    /// Packets captured per interface (live recordings).
    pub interfaces: BTreeMap<String, u64>,
    /// Why the recording ended.
    pub ending: Ending,
}

/// Why a recording ended, as its catalog entry says it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Ending {
    /// Asked to stop (Ctrl-C, SIGTERM, --duration, the API): `complete`, no reason.
    #[default]
    Stopped,
    /// Stopped itself at a limit it was given: `complete`, the limit as the reason.
    Limit(String),
    /// Storing failed (a full disk, say): `failed`, the cause as the reason; what was written
    /// before is kept and counted.
    Failed(String),
}

impl Ending {
    /// The state and reason a catalog entry records for this ending.
    pub fn state_and_reason(&self) -> (RecordingState, Option<String>) {
        match self {
            Self::Stopped => (RecordingState::Complete, None),
            Self::Limit(why) => (RecordingState::Complete, Some(why.clone())),
            Self::Failed(why) => (RecordingState::Failed, Some(why.clone())),
        }
    }
}

/// Messages and bytes of a recording that this store handle has written so far and that
/// can be read back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    pub messages: u64,
    pub bytes: u64,
}

/// A storage backend for recordings.
pub trait Store: Send {
    /// `embedded` or `kafka`.
    fn backend(&self) -> &'static str;
    /// Starts a recording: validates the name, takes the start positions, writes the catalog.
    fn begin(&mut self, name: &str, source: &str) -> Result<Recording, StoreError>;
    /// Queues a message for the given active recordings (stored by the next flush at the latest).
    fn append(&mut self, message: &HttpMessage, recordings: &[String]) -> Result<(), StoreError>;
    /// Makes every queued message durable.
    fn flush(&mut self) -> Result<(), StoreError>;
    /// Starts this node's part of a recording several nodes make under one name (or the first
    /// part): the recording's window spans every part. Fails when the name belongs to a
    /// recording that is not shared or no longer running, or this node already records it.
    fn join(&mut self, name: &str, source: &str) -> Result<Recording, StoreError> {
        let _ = source;
        Err(StoreError::JoinUnsupported(name.to_string()))
    }
    /// What this handle has stored of recording `name` so far, when the backend knows it
    /// exactly (the embedded store does); a recorder whose storing failed ends the recording
    /// with these counts.
    fn committed(&self, name: &str) -> Option<Committed> {
        let _ = name;
        None
    }
    /// Stops a recording: flushes, takes the end positions, records how it ended
    /// (`summary.ending`; ending a failed recording must work on a full disk).
    fn end(&mut self, name: &str, summary: RecordingSummary) -> Result<Recording, StoreError>;
    /// Every recording, with dead recorders' recordings shown as interrupted.
    fn list(&mut self) -> Result<Vec<Recording>, StoreError>;
    /// One recording.
    fn get(&mut self, name: &str) -> Result<Recording, StoreError>;
    /// Removes a recording (and the messages no other recording references, where the
    /// backend can).
    fn delete(&mut self, name: &str) -> Result<(), StoreError>;
    /// Calls `visit` with each message of the recording in capture order until it returns
    /// false.
    fn read(
        &mut self,
        name: &str,
        visit: &mut dyn FnMut(StoredMessage) -> bool,
    ) -> Result<(), StoreError>;
}

/// The error for starting a name that is already in the catalog.
pub fn exists_error(existing: &Recording) -> StoreError {
    match existing.state {
        RecordingState::Recording => {
            StoreError::Exists(format!("{} (still recording)", existing.name))
        }
        _ => StoreError::Exists(existing.name.clone()),
    }
}

/// Resolves a catalog entry whose recorder is gone into an interrupted recording.
pub fn resolve_interrupted(
    mut rec: Recording,
    end_now: impl FnOnce() -> BTreeMap<i32, i64>,
) -> Recording {
    if rec.state == RecordingState::Recording
        && rec.owner.as_ref().is_some_and(|o| !o.may_be_alive())
    {
        rec.state = RecordingState::Interrupted;
        rec.end = Some(end_now());
    }
    rec
}
