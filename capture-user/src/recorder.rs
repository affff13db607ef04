//! A live recording as a running thing: capture -> pipeline -> store, started, watched and
//! stopped by whoever owns it (the `record` command, or the agent on behalf of an API call).
//!
//! The store runs on a thread of its own (SQLite and librdkafka calls block) fed through a
//! bounded queue; a full queue is the counted drop `store_queue_full`, never a stall.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::live::{CaptureConfig, LiveMessages, LiveStats};
use crate::message::HttpMessage;
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
    /// Kernel, ring and framing counters.
    pub live: LiveStats,
}

impl RecorderStatus {
    /// Messages waiting in the bounded queue for the store thread: the backlog that turns
    /// into `store_queue_full` drops when it reaches the cap.
    pub fn store_backlog(&self) -> u64 {
        self.messages_queued.saturating_sub(self.messages_written)
    }

    /// Everything this recording lost, by reason (zero values included): the kernel's,
    /// reassembly's and framing's, and the store queue's. The catalog entry keeps the
    /// reasons that occurred; `/metrics` shows them all.
    pub fn losses(&self) -> Vec<(String, u64)> {
        let mut losses = self.live.losses();
        losses.push(("store_queue_full".to_string(), self.store_queue_full));
        losses
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
        let live = LiveMessages::start(&config.capture)?;
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
        let task = tokio::spawn(record(config, live, store, status.clone(), stop_rx));
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

/// The bounded queue to the store thread, with what went through it and what it dropped.
struct StoreQueue {
    tx: std_mpsc::SyncSender<Vec<HttpMessage>>,
    written: Arc<AtomicU64>,
    queued: u64,
    full: u64,
}

impl StoreQueue {
    /// Hands `messages` on without waiting; a full queue drops them and counts the drop.
    /// False once the store thread is gone (it failed).
    fn offer(&mut self, messages: &mut Vec<HttpMessage>) -> bool {
        if messages.is_empty() {
            return true;
        }
        let n = messages.len() as u64;
        match self.tx.try_send(std::mem::take(messages)) {
            Ok(()) => self.queued += n,
            Err(std_mpsc::TrySendError::Full(_)) => self.full += n,
            Err(std_mpsc::TrySendError::Disconnected(_)) => return false,
        }
        true
    }

    /// Hands the last messages on, waiting for room: nothing captured is dropped at the end.
    fn close(mut self, messages: &mut Vec<HttpMessage>) -> Self {
        let n = messages.len() as u64;
        if n > 0 && self.tx.send(std::mem::take(messages)).is_ok() {
            self.queued += n;
        }
        self
    }

    fn status(&self, started: Instant, live: LiveStats) -> RecorderStatus {
        RecorderStatus {
            elapsed: started.elapsed(),
            messages_queued: self.queued,
            messages_written: self.written.load(Ordering::Relaxed),
            store_queue_full: self.full,
            live,
        }
    }
}

async fn record(
    config: RecorderConfig,
    mut live: LiveMessages,
    store: Box<dyn Store>,
    status: Arc<Mutex<RecorderStatus>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<FinishedRecording> {
    let written = Arc::new(AtomicU64::new(0));
    let (tx, store_thread) = spawn_store_thread(store, config.name.clone(), written.clone());
    let mut queue = StoreQueue {
        tx,
        written,
        queued: 0,
        full: 0,
    };
    let publish = |now: RecorderStatus| *status.lock().unwrap_or_else(|e| e.into_inner()) = now;
    let mut messages = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let started = Instant::now();
    loop {
        tokio::select! {
            more = live.next(&mut messages) => {
                if !more || !queue.offer(&mut messages) {
                    break;
                }
            }
            _ = tick.tick() => publish(queue.status(started, live.stats()?)),
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let live_stats = live.finish(&mut messages).await?;
    let queue = queue.close(&mut messages);
    let last = queue.status(started, live_stats);
    let StoreQueue { tx, written, .. } = queue;
    drop(tx);
    let (mut store, outcome) = tokio::task::spawn_blocking(move || store_thread.join())
        .await
        .context("joining the store thread")?
        .map_err(|_| anyhow::anyhow!("the store thread panicked"))?;
    let last = RecorderStatus {
        messages_written: written.load(Ordering::Relaxed),
        ..last
    };
    publish(last.clone());
    let summary = RecordingSummary {
        messages: last.messages_written,
        bytes: outcome.bytes,
        drops: crate::store::drops_seen(last.losses()),
    };
    let recording = store.end(&config.name, summary)?;
    Ok(FinishedRecording {
        recording,
        status: last,
        store_error: outcome.error,
    })
}
