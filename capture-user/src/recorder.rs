//! A live recording as a running thing: capture -> pipeline -> store, started, watched and
//! stopped by whoever owns it (the `record` command, or the agent on behalf of an API call).
//!
//! The store runs on a thread of its own (SQLite and librdkafka calls block) fed through a
//! bounded queue; a full queue is the counted drop `store_queue_full`, never a stall.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::live::{CaptureConfig, CounterSnapshot, LiveCapture};
use crate::message::HttpMessage;
use crate::packet::Timestamp;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use crate::store::{Recording, RecordingSummary, Store};

/// Messages waiting for the store thread (batches). When full, new messages are dropped and
/// counted as `store_queue_full` instead of stalling capture.
const STORE_QUEUE_BATCHES: usize = 256;

/// How often the store thread makes queued messages durable.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Result of the store thread (how many messages it wrote is the shared `written` counter).
struct StoreOutcome {
    bytes: u64,
    error: Option<anyhow::Error>,
}

/// The store thread; joining it gives the store back with what it stored.
type StoreThread = std::thread::JoinHandle<(Box<dyn Store>, StoreOutcome)>;

/// Runs the store on its own thread (SQLite calls block), fed batches of messages; `written`
/// counts the messages it has handed to the store so far (what the queue no longer holds).
fn spawn_store_thread(
    mut store: Box<dyn Store>,
    name: String,
    written: Arc<AtomicU64>,
) -> (std_mpsc::SyncSender<Vec<HttpMessage>>, StoreThread) {
    let (tx, rx) = std_mpsc::sync_channel::<Vec<HttpMessage>>(STORE_QUEUE_BATCHES);
    let handle = std::thread::spawn(move || {
        let tags = vec![name];
        let mut outcome = StoreOutcome {
            bytes: 0,
            error: None,
        };
        let mut last_flush = Instant::now();
        loop {
            let batch = match rx.recv_timeout(FLUSH_EVERY) {
                Ok(batch) => Some(batch),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            for m in batch.iter().flatten() {
                if let Err(e) = store.append(m, &tags) {
                    outcome.error = Some(e.into());
                    return (store, outcome);
                }
                outcome.bytes += m.bytes.len() as u64;
                written.fetch_add(1, Ordering::Relaxed);
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                if let Err(e) = store.flush() {
                    outcome.error = Some(e.into());
                    return (store, outcome);
                }
                last_flush = Instant::now();
            }
        }
        if let Err(e) = store.flush() {
            outcome.error = Some(e.into());
        }
        (store, outcome)
    });
    (tx, handle)
}

pub(crate) fn drops_of(pipeline: &PipelineStats, extra: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let anomalies = [
        "truncated_packets",
        "connection_cap_hits",
        "buffer_cap_hits",
        "total_buffer_cap_hits",
        "gaps",
        "incomplete_messages",
        "header_too_large",
        "bad_message_head",
        "bad_framing",
        "body_too_large",
        "upgrades",
    ];
    let mut drops: BTreeMap<String, u64> = pipeline
        .pairs()
        .into_iter()
        .filter(|(k, v)| {
            *v > 0 && (anomalies.contains(&k.as_str()) || k.starts_with("decode_error_"))
        })
        .collect();
    for (k, v) in extra {
        if *v > 0 {
            drops.insert((*k).to_string(), *v);
        }
    }
    drops
}

/// What to record.
#[derive(Clone, Debug)]
pub struct RecorderConfig {
    pub capture: CaptureConfig,
    pub name: String,
    /// Join a same-name recording other nodes make (Kafka), instead of requiring a new name.
    pub join: bool,
}

/// A recording's counters while it runs.
#[derive(Clone, Debug, Default)]
pub struct RecorderStatus {
    pub elapsed: Duration,
    /// Messages handed to the store thread.
    pub messages_queued: u64,
    /// Messages the store thread has written to the store (Kafka: handed to the producer).
    pub messages_written: u64,
    /// Messages dropped because the store queue was full.
    pub store_queue_full: u64,
    /// Kernel counters (summed over CPUs).
    pub kernel: CounterSnapshot,
    /// Reassembly and framing counters.
    pub pipeline: PipelineStats,
}

impl RecorderStatus {
    fn of(
        started: Instant,
        messages_queued: u64,
        messages_written: &AtomicU64,
        store_queue_full: u64,
        kernel: CounterSnapshot,
        pipeline: &Pipeline,
    ) -> Self {
        Self {
            elapsed: started.elapsed(),
            messages_queued,
            messages_written: messages_written.load(Ordering::Relaxed),
            store_queue_full,
            kernel,
            pipeline: pipeline.stats(),
        }
    }

    /// Messages waiting in the bounded queue for the store thread: the backlog that turns
    /// into `store_queue_full` drops when it reaches the cap.
    pub fn store_backlog(&self) -> u64 {
        self.messages_queued.saturating_sub(self.messages_written)
    }
}

/// How a recording ended.
pub struct FinishedRecording {
    /// The catalog entry as the store closed it (messages, bytes, window, drops).
    pub recording: Recording,
    /// The counters at the end.
    pub status: RecorderStatus,
    /// Set when storing failed part way (what was stored before is kept).
    pub store_error: Option<anyhow::Error>,
}

/// A recording in progress.
pub struct Recorder {
    status: Arc<Mutex<RecorderStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<FinishedRecording>>,
}

impl Recorder {
    /// Attaches the capture (so a bad interface or missing privileges leaves no catalog entry
    /// behind), opens the recording in `store`, and starts recording.
    pub async fn start(config: RecorderConfig, mut store: Box<dyn Store>) -> anyhow::Result<Self> {
        crate::store::validate_name(&config.name)?;
        let capture = LiveCapture::start(&config.capture)?;
        let source = format!(
            "live {} ports {:?}",
            config.capture.interfaces.join(","),
            config.capture.ports
        );
        if config.join {
            store.join(&config.name, &source)?;
        } else {
            store.begin(&config.name, &source)?;
        }
        let status = Arc::new(Mutex::new(RecorderStatus::default()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(record(config, capture, store, status.clone(), stop_rx));
        Ok(Self { status, stop, task })
    }

    /// The counters so far (updated every second).
    pub fn status(&self) -> RecorderStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks the recording to stop: it drains the ring, frames the tail, flushes and closes.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// True once the recording stopped (asked to, or because storing failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the end.
    pub async fn finish(self) -> anyhow::Result<FinishedRecording> {
        self.task.await.context("the recording task panicked")?
    }
}

async fn record(
    config: RecorderConfig,
    mut capture: LiveCapture,
    store: Box<dyn Store>,
    status: Arc<Mutex<RecorderStatus>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<FinishedRecording> {
    let written = Arc::new(AtomicU64::new(0));
    let (tx, store_thread) = spawn_store_thread(store, config.name.clone(), written.clone());
    let mut pipeline = Pipeline::new(PipelineConfig {
        ports: config.capture.ports.clone(),
        ..PipelineConfig::default()
    });
    let mut queue_full: u64 = 0;
    let mut sent: u64 = 0;
    let mut messages = Vec::new();
    let forward = |messages: &mut Vec<HttpMessage>, queue_full: &mut u64, sent: &mut u64| -> bool {
        if messages.is_empty() {
            return true;
        }
        let n = messages.len() as u64;
        match tx.try_send(std::mem::take(messages)) {
            Ok(()) => {
                *sent += n;
                true
            }
            Err(std_mpsc::TrySendError::Full(_)) => {
                *queue_full += n;
                true
            }
            Err(std_mpsc::TrySendError::Disconnected(_)) => false,
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let started = Instant::now();
    loop {
        tokio::select! {
            batch = capture.recv() => match batch {
                Some(batch) => {
                    for packet in &batch {
                        pipeline.push_packet(packet, &mut messages);
                    }
                    if !forward(&mut messages, &mut queue_full, &mut sent) {
                        break;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                pipeline.expire(Timestamp::now(), &mut messages);
                let kernel = capture.stats()?.kernel;
                let now =
                    RecorderStatus::of(started, sent, &written, queue_full, kernel, &pipeline);
                *status.lock().unwrap_or_else(|e| e.into_inner()) = now;
            }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let capture_stats = crate::cmd::finish_live(capture, &mut pipeline, &mut messages).await?;
    // The tail goes in with a blocking send: nothing already captured is dropped at the end.
    if !messages.is_empty() {
        let n = messages.len() as u64;
        if tx.send(std::mem::take(&mut messages)).is_ok() {
            sent += n;
        }
    }
    drop(tx);
    let (mut store, outcome) = tokio::task::spawn_blocking(move || store_thread.join())
        .await
        .context("joining the store thread")?
        .map_err(|_| anyhow::anyhow!("the store thread panicked"))?;
    let kernel = capture_stats.kernel;
    let last = RecorderStatus::of(started, sent, &written, queue_full, kernel, &pipeline);
    *status.lock().unwrap_or_else(|e| e.into_inner()) = last.clone();
    let drops = drops_of(
        &pipeline.stats(),
        &[
            (
                "kernel_ring_full",
                kernel.get(capture_common::Counter::DroppedRingFull),
            ),
            (
                "kernel_copy_failed",
                kernel.get(capture_common::Counter::DroppedCopyFailed),
            ),
            (
                "kernel_truncated",
                kernel.get(capture_common::Counter::Truncated),
            ),
            ("store_queue_full", queue_full),
        ],
    );
    // A store that failed part way (a full disk) ends the recording `failed`, counting what
    // it can read back rather than what was handed to it.
    let committed = store.committed(&config.name);
    let summary = RecordingSummary {
        messages: committed.map_or(written.load(Ordering::Relaxed), |c| c.messages),
        bytes: committed.map_or(outcome.bytes, |c| c.bytes),
        drops,
        failure: outcome.error.as_ref().map(|e| format!("{e:#}")),
    };
    let recording = store.end(&config.name, summary)?;
    Ok(FinishedRecording {
        recording,
        status: last,
        store_error: outcome.error,
    })
}
