//! A live recording as a running thing: capture -> framing -> store, started, watched and
//! stopped by whoever owns it (the `record` command, or the agent on behalf of an API call).
//!
//! Three threads carry the data and none of them is the async runtime's: the ring thread
//! drains the kernel ring and frames messages, the store thread writes them, and a bounded
//! queue joins the two. A full queue is the counted drop `store_queue_full`, never a stall
//! of capture. The async task only starts, watches and stops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;

use crate::live::{CaptureConfig, LiveMessages, LiveStats, MessageSink};
use crate::message::HttpMessage;
use crate::store::{Ending, Recording, RecordingSummary, Store, StoreError};
use crate::sync::lock;

/// Message batches waiting for the store thread. When full, new messages are dropped and
/// counted as `store_queue_full` instead of stalling capture.
const STORE_QUEUE_BATCHES: usize = 256;

/// How often the store thread makes queued messages durable.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// What to record.
#[derive(Clone, Debug)]
pub struct RecorderConfig {
    pub capture: CaptureConfig,
    pub name: String,
    /// Join a same-name recording other nodes make (Kafka), instead of requiring a new name.
    pub join: bool,
    /// Framing threads: 1 frames on the ring thread; more spread connections over threads.
    pub threads: usize,
    /// Where the recording stops by itself.
    pub limits: Limits,
}

/// Where a recording stops by itself, ending `complete` with the limit as its reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Messages stored at most.
    pub max_messages: Option<u64>,
    /// Bytes of messages (as seen on the wire) stored at most.
    pub max_bytes: Option<u64>,
}

impl Limits {
    /// Why storing `message` would pass a limit, given what is stored so far.
    fn passed_by(
        &self,
        stored_messages: u64,
        stored_bytes: u64,
        message: &HttpMessage,
    ) -> Option<String> {
        if let Some(max) = self.max_messages
            && stored_messages >= max
        {
            return Some(format!("reached its limit of {max} messages"));
        }
        if let Some(max) = self.max_bytes
            && stored_bytes + message.bytes.len() as u64 > max
        {
            return Some(format!("reached its limit of {max} bytes"));
        }
        None
    }
}

/// Framing threads unless told otherwise: framing on the ring thread costs the least.
pub const DEFAULT_THREADS: usize = 1;

/// Framing threads a recording may ask for: beyond a few, the single store thread and the
/// ring thread are the limit anyway.
pub const MAX_THREADS: usize = 16;

/// Checks a number of framing threads, with a message that says the range.
pub fn check_threads(threads: usize) -> Result<usize, String> {
    if (1..=MAX_THREADS).contains(&threads) {
        Ok(threads)
    } else {
        Err(format!(
            "framing threads are 1-{MAX_THREADS}, got {threads}"
        ))
    }
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

/// Counters of the queue to the store thread, shared by both of its ends and the status,
/// and the message vectors the store thread is done with.
#[derive(Default)]
struct QueueCounters {
    /// Stored batches coming back for the framers to empty and fill again. A framer's
    /// vector grows to thousands of messages between hand-overs, and growing a fresh one
    /// each time (copying it at every doubling) was a few per cent of the ring thread. The
    /// messages are dropped there too: their bytes share reference counts with the packets
    /// the ring thread is cutting, and releasing them from the store thread bounced those
    /// cache lines between cores.
    spare: Mutex<Vec<Vec<HttpMessage>>>,
    /// Messages put in the queue.
    queued: AtomicU64,
    /// Messages dropped because the queue was full.
    full: AtomicU64,
    /// Messages the store thread has handed to the store.
    written: AtomicU64,
}

/// The framing threads' end of the queue to the store thread.
#[derive(Clone)]
struct StoreQueue {
    tx: std_mpsc::SyncSender<Vec<HttpMessage>>,
    counters: Arc<QueueCounters>,
}

impl MessageSink for StoreQueue {
    /// Hands the messages on without waiting; a full queue drops them and counts the drop.
    /// False once the store thread is gone (it failed).
    fn deliver(&mut self, messages: &mut Vec<HttpMessage>) -> bool {
        let n = messages.len() as u64;
        let mut spare = lock(&self.counters.spare).pop().unwrap_or_default();
        spare.clear();
        match self.tx.try_send(std::mem::replace(messages, spare)) {
            Ok(()) => self.counters.queued.fetch_add(n, Ordering::Relaxed),
            Err(std_mpsc::TrySendError::Full(_)) => {
                self.counters.full.fetch_add(n, Ordering::Relaxed)
            }
            Err(std_mpsc::TrySendError::Disconnected(_)) => return false,
        };
        true
    }

    /// The tail waits for room: nothing captured is dropped at the end.
    fn deliver_last(&mut self, messages: &mut Vec<HttpMessage>) {
        let n = messages.len() as u64;
        if n > 0 && self.tx.send(std::mem::take(messages)).is_ok() {
            self.counters.queued.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Stored batches kept for the framers to reuse; more are dropped where they are.
const SPARE_BATCHES: usize = 4;

/// What the store thread did (how many messages it wrote is in the shared counters).
struct StoreOutcome {
    bytes: u64,
    ending: Ending,
    /// The store error behind a `failed` ending.
    error: Option<anyhow::Error>,
}

/// The store thread; joining it gives the store back with what it stored.
type StoreThread = std::thread::JoinHandle<(Box<dyn Store>, StoreOutcome)>;

/// Runs the store on its own thread (store calls block on disk or on the broker), writing
/// the batches the queue brings and making them durable every [`FLUSH_EVERY`]. It ends when
/// the queue closes, at a limit, or at the first error; `ended` announces the last two at
/// once so capture stops.
fn spawn_store_thread(
    mut store: Box<dyn Store>,
    config: &RecorderConfig,
    rx: std_mpsc::Receiver<Vec<HttpMessage>>,
    counters: Arc<QueueCounters>,
    ended: watch::Sender<bool>,
) -> std::io::Result<StoreThread> {
    let tags = vec![config.name.clone()];
    let limits = config.limits;
    std::thread::Builder::new()
        .name("capture-store".into())
        .spawn(move || {
            let mut outcome = StoreOutcome {
                bytes: 0,
                ending: Ending::Stopped,
                error: None,
            };
            let result =
                store_until_closed(&mut *store, &tags, limits, &rx, &counters, &mut outcome);
            outcome.ending = match result {
                Ok(None) => Ending::Stopped,
                Ok(Some(limit)) => Ending::Limit(limit),
                // The store's own cap, with only running recordings left to delete: a limit.
                Err(StoreError::RetentionFull { used, cap }) => Ending::Limit(format!(
                    "the store reached its size cap (--max-store-size): {used} of {cap} bytes"
                )),
                Err(e) => {
                    let why = e.to_string();
                    outcome.error = Some(e.into());
                    Ending::Failed(why)
                }
            };
            if outcome.ending != Ending::Stopped {
                let _ = ended.send(true);
            }
            (store, outcome)
        })
}

/// Stores what the queue brings until it closes (`None`) or a limit is reached (why).
fn store_until_closed(
    store: &mut dyn Store,
    tags: &[String],
    limits: Limits,
    rx: &std_mpsc::Receiver<Vec<HttpMessage>>,
    counters: &QueueCounters,
    outcome: &mut StoreOutcome,
) -> Result<Option<String>, StoreError> {
    let mut last_flush = Instant::now();
    let mut written = 0u64;
    loop {
        let batch = match rx.recv_timeout(FLUSH_EVERY) {
            Ok(batch) => Some(batch),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(batch) = batch {
            let before = written;
            let stored = store_batch(store, tags, limits, &batch, &mut written, outcome);
            // Published once per batch: an atomic add per message, on a line the framing
            // threads write too, was an eighth of this thread's time.
            counters
                .written
                .fetch_add(written - before, Ordering::Relaxed);
            if let Some(limit) = stored? {
                store.flush()?;
                return Ok(Some(limit));
            }
            let mut spare = lock(&counters.spare);
            if spare.len() < SPARE_BATCHES {
                spare.push(batch);
            }
        }
        if last_flush.elapsed() >= FLUSH_EVERY {
            store.flush()?;
            last_flush = Instant::now();
        }
    }
    store.flush()?;
    Ok(None)
}

/// Appends a batch's messages to `store` until a limit would be passed (`Some(why)`) or the
/// store fails, counting what it appended in `written` and `outcome`.
fn store_batch(
    store: &mut dyn Store,
    tags: &[String],
    limits: Limits,
    batch: &[HttpMessage],
    written: &mut u64,
    outcome: &mut StoreOutcome,
) -> Result<Option<String>, StoreError> {
    for m in batch {
        if let Some(limit) = limits.passed_by(*written, outcome.bytes, m) {
            return Ok(Some(limit));
        }
        store.append(m, tags)?;
        *written += 1;
        outcome.bytes += m.bytes.len() as u64;
    }
    Ok(None)
}

/// A recording in progress.
pub struct Recorder {
    /// The interfaces attached to at start (patterns resolved; more may follow).
    pub interfaces: Vec<String>,
    status: Arc<Mutex<RecorderStatus>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<FinishedRecording>>,
}

impl Recorder {
    /// Attaches the capture (so a bad interface or missing privileges leaves no catalog entry
    /// behind), opens the recording in `store`, and starts recording.
    pub async fn start(config: RecorderConfig, mut store: Box<dyn Store>) -> anyhow::Result<Self> {
        crate::store::validate_name(&config.name)?;
        let (tx, rx) = std_mpsc::sync_channel(STORE_QUEUE_BATCHES);
        let counters = Arc::new(QueueCounters::default());
        let queue = StoreQueue {
            tx,
            counters: counters.clone(),
        };
        check_threads(config.threads).map_err(anyhow::Error::msg)?;
        let live = LiveMessages::start(&config.capture, config.threads, queue)?;
        let mut source = match config.capture.tls {
            Some(side) => format!(
                "live tls ({}) ports {:?}",
                side.phrase(),
                config.capture.ports
            ),
            None => format!(
                "live {} ports {:?}",
                config.capture.interfaces.join(","),
                config.capture.ports
            ),
        };
        source.push_str(&redaction_note(&config.capture.redaction));
        if config.join {
            store.join(&config.name, &source)?;
        } else {
            store.begin(&config.name, &source)?;
        }
        let (ended_tx, ended) = watch::channel(false);
        let store_thread = spawn_store_thread(store, &config, rx, counters.clone(), ended_tx)
            .context("starting the store thread")?;
        let status = Arc::new(Mutex::new(RecorderStatus::default()));
        let (stop, stop_rx) = watch::channel(false);
        let interfaces = live.attached_interfaces().into_iter().collect();
        let running = Running {
            name: config.name,
            live,
            counters,
            store_thread,
            status: status.clone(),
            started: Instant::now(),
        };
        let task = tokio::spawn(running.record(stop_rx, ended));
        Ok(Self {
            interfaces,
            status,
            stop,
            task,
        })
    }

    /// The counters so far (updated every second).
    pub fn status(&self) -> RecorderStatus {
        lock(&self.status).clone()
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

/// The parts of a running recording the watching task holds.
struct Running {
    name: String,
    live: LiveMessages<StoreQueue>,
    counters: Arc<QueueCounters>,
    store_thread: StoreThread,
    status: Arc<Mutex<RecorderStatus>>,
    started: Instant,
}

impl Running {
    fn status_of(&self, live: LiveStats) -> RecorderStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RecorderStatus {
            elapsed: self.started.elapsed(),
            messages_queued: get(&self.counters.queued),
            messages_written: get(&self.counters.written),
            store_queue_full: get(&self.counters.full),
            live,
        }
    }

    fn publish(&self, now: RecorderStatus) {
        *lock(&self.status) = now;
    }

    /// Publishes the counters every second until asked to stop, until the store thread
    /// ended (a limit, a failure), or until the capture ends on its own; then ends the
    /// recording.
    async fn record(
        self,
        mut stop: watch::Receiver<bool>,
        mut ended: watch::Receiver<bool>,
    ) -> anyhow::Result<FinishedRecording> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.publish(self.status_of(self.live.stats()?));
                    if !self.live.is_running() {
                        break;
                    }
                }
                _ = stop.wait_for(|s| *s) => break,
                _ = ended.wait_for(|e| *e) => break,
            }
        }
        self.end().await
    }

    /// Detaches and frames the tail (off the async workers: it blocks), lets the store
    /// thread write everything queued, and closes the catalog entry with the final counts.
    async fn end(self) -> anyhow::Result<FinishedRecording> {
        let Self {
            name,
            live,
            counters,
            store_thread,
            status,
            started,
        } = self;
        // Ending the capture drops every end of the queue: the store thread writes what is
        // left and ends.
        let live_stats = tokio::task::spawn_blocking(move || live.finish())
            .await
            .context("joining the capture")??;
        let (mut store, outcome) = tokio::task::spawn_blocking(move || store_thread.join())
            .await
            .context("joining the store thread")?
            .map_err(|_| anyhow::anyhow!("the store thread panicked"))?;
        let last = RecorderStatus {
            elapsed: started.elapsed(),
            messages_queued: counters.queued.load(Ordering::Relaxed),
            messages_written: counters.written.load(Ordering::Relaxed),
            store_queue_full: counters.full.load(Ordering::Relaxed),
            live: live_stats,
        };
        *lock(&status) = last.clone();
        // What the store can read back is what counts (a store that failed part way, on a
        // full disk, wrote less than it was handed); a failure ends the recording `failed`.
        let committed = store.committed(&name);
        let summary = RecordingSummary {
            messages: committed.map_or(last.messages_written, |c| c.messages),
            bytes: committed.map_or(outcome.bytes, |c| c.bytes),
            drops: crate::store::drops_seen(last.losses()),
            interfaces: last.live.capture.packets_per_interface(),
            ending: outcome.ending,
        };
        let recording = store.end(&name, summary)?;
        Ok(FinishedRecording {
            recording,
            status: last,
            store_error: outcome.error,
        })
    }
}

/// What a recording's description says of its redaction rules ("" without any), so the
/// catalog entry tells which values were never stored.
pub fn redaction_note(redaction: &crate::redact::Redaction) -> String {
    if redaction.is_empty() {
        return String::new();
    }
    format!("; headers redacted: {}", redaction.names().join(", "))
}
