//! The async shell of replay: takes the planned sends as the source is read, hands each to
//! its replay connection when it is due, sends it, reads the answer, and tallies what happened.
//!
//! Requests are written as the bytes they are (recorded, or rewritten by the user's rules) on a
//! plain TCP stream, or inside a TLS session for an https target (`stream`), and answers are
//! framed by the capture framer: an HTTP library would re-serialise heads and re-chunk bodies,
//! and the promise is byte-exact replay.
//!
//! Two kinds of connections carry the sends. A recorded connection replays over a connection
//! of its own (per loop and copy), its requests in order (`lane`); requests without a recorded
//! connection (GoReplay files) share a pool of keep-alive connections per copy (`pool`). The
//! pacer (`pacer`) is a thread of its own that sleeps until each send is due, precisely, and
//! opens connections just ahead of their first request.
//!
//! Timing: a connection whose previous answer is late sends its next request late (a recorded
//! connection is sequential), but no connection ever delays another, so a slow target shows up
//! as latency and schedule lag rather than as a slower schedule (no coordinated omission).
//!
//! Memory: the sends waiting to be sent are capped (`MAX_QUEUED`); when the target falls that
//! far behind, the pacer waits and the lag shows it.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use super::report::{ReplayReport, SourceSummary, Tally};
use super::rewrite::{CopyHeader, CopySlot};
use super::schedule::ReplayConn;
use super::tls::TlsSummary;
use crate::message::HttpVersion;

mod connection;
mod differ;
pub mod handoff;
mod http2;
mod pacer;
mod stream;

use connection::{Job, Jobs, connection_task};
use http2::http2_connection_task;

pub use differ::{DiffOutError, DiffSetup, Differ};
pub use stream::Endpoint;

/// Connections are opened this long before their first request is due, so the handshake
/// does not make the first request late.
pub const CONNECT_LEAD: Duration = Duration::from_millis(50);

/// Read buffer per connection.
const READ_BUFFER: usize = 64 << 10;

/// Most sends handed to connections and not yet answered (bounds memory when the target falls
/// behind; `--max` keeps this many in flight at most).
pub const MAX_QUEUED: usize = 8192;

/// Planned sends read ahead of the pacer.
pub const FEED_CAPACITY: usize = 4096;

/// After a stop (--exit-after, Ctrl-C, a stop call), how long requests already written get
/// for their answers; no new request is written meanwhile. What is still unanswered then is
/// reported as in flight, not as completed, failed or never run.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// How to reach the target and how long to wait for it.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The target's address, and TLS when it is https.
    pub target: Endpoint,
    pub connect_timeout: Duration,
    /// From the first byte written to the end of the final response.
    pub response_timeout: Duration,
    /// Most connections open at once for recorded connections (each replays one).
    pub concurrency: usize,
    /// Keep-alive connections per copy for requests without a recorded connection.
    pub pool: usize,
    /// Stop after this long, whatever is left.
    pub exit_after: Option<Duration>,
    /// `--copy-header`: each request carries its copy's number in this header.
    pub copy_header: Option<CopyHeader>,
    /// When the schedule starts (`--start-at`), instead of just after the call.
    pub start_at: Option<SystemTime>,
    /// `--baseline`: each request also goes there, to learn what differs by itself.
    pub baseline: Option<Endpoint>,
}

/// A request ready to send.
#[derive(Clone, Debug)]
pub struct PreparedRequest {
    /// The bytes to write (recorded, or rewritten). HTTP/2: the stored form, sent as a
    /// stream of the connection's HTTP/2 session.
    pub bytes: Bytes,
    pub version: HttpVersion,
    /// Body bytes (splits HTTP/2's stored form into body and trailers).
    pub body_len: u64,
    /// HTTP/2: the recorded request started after every earlier request of its connection
    /// had been answered, so replay waits for those answers too (a sequential client stays
    /// sequential; multiplexed streams stay concurrent).
    pub after_earlier_answers: bool,
    /// Final status when it was recorded, to spot changed behaviour.
    pub recorded_status: Option<u16>,
    /// Where the copy header goes, when there is one (see [`CopyHeader`]).
    pub copy_slot: Option<CopySlot>,
    /// With `--diff`: what was recorded, to compare the answer with.
    pub recorded: Option<Box<RecordedExchange>>,
}

/// What `--diff` needs of a request beyond its bytes: which request it is, its endpoint, and
/// how it was answered when recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedExchange {
    /// The recorded request's id (as `--diff-out` names it).
    pub request_id: u64,
    /// "GET /items/17?x=1".
    pub request_line: String,
    /// "GET /items/{id}".
    pub endpoint: String,
    /// The recorded final response as on the wire, when it was recorded.
    pub response: Option<Bytes>,
    pub latency: Option<Duration>,
}

/// Where a send goes: the replay connection of a recorded connection, or a copy's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    Recorded(ReplayConn),
    Pool { copy: u32 },
}

impl Route {
    /// The copy (0-based) the send belongs to.
    pub fn copy(self) -> u32 {
        match self {
            Self::Recorded(conn) => conn.copy,
            Self::Pool { copy } => copy,
        }
    }
}

/// One send, as the source is read: due times never go backwards, except for a request that
/// came later than the look-ahead allowed (sent at once, late).
#[derive(Clone, Debug)]
pub struct PlannedSend {
    /// From the start of the replay.
    pub due: Duration,
    pub route: Route,
    pub request: Arc<PreparedRequest>,
}

/// How far the source has been read (messages or bytes), for a progress display.
#[derive(Debug, Default)]
pub struct ReadPosition {
    pub read: AtomicU64,
    /// What "all" is, when known (0: unknown).
    pub total: AtomicU64,
}

/// The reading side's end of the replay: planned sends go in here, blocking while the pacer
/// is far enough ahead.
pub struct FeedSink {
    tx: handoff::Sender<PlannedSend>,
    closed: Arc<AtomicBool>,
    pub position: Arc<ReadPosition>,
}

impl FeedSink {
    /// A sink and the receiving end of its sends (the engine's, or a test's).
    pub fn channel(capacity: usize) -> (Self, handoff::Receiver<PlannedSend>) {
        let (tx, rx) = handoff::handoff(capacity);
        let sink = Self {
            tx,
            closed: Arc::new(AtomicBool::new(false)),
            position: Arc::new(ReadPosition::default()),
        };
        (sink, rx)
    }

    /// Hands on a send; false once the replay stopped (nothing more is wanted).
    pub fn send(&self, send: PlannedSend) -> bool {
        !self.is_closed() && self.tx.send(send).is_ok()
    }

    /// The replay stopped: reading on is pointless.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}

/// What reads the source: runs on a thread of its own, hands sends to the sink, and says what
/// the source held.
pub type Feed = Box<dyn FnOnce(&FeedSink) -> SourceSummary + Send>;

struct Shared {
    config: EngineConfig,
    tally: Mutex<Tally>,
    /// `--diff`: compares each answer with the recorded one.
    differ: Option<Differ>,
    /// The start of the schedule (due times count from here).
    start: Instant,
    /// When the replay was started (for the time to the first request).
    created: Instant,
    /// Set when the pacer ends: the feed stops reading.
    feed_closed: Arc<AtomicBool>,
    /// When the last send was over (the rate counts up to here, not to when it was asked).
    ended: OnceLock<Instant>,
    /// Told once the replay is over.
    over: Notify,
}

impl Shared {
    /// What to write for `request` in copy `copy`: as prepared, or with the copy header.
    fn bytes_for<'a>(&self, request: &'a PreparedRequest, copy: u32) -> Cow<'a, [u8]> {
        match (&self.config.copy_header, request.copy_slot) {
            (Some(header), Some(slot)) => {
                Cow::Owned(header.tag(&request.bytes, slot, copy.saturating_add(1)))
            }
            _ => Cow::Borrowed(&request.bytes[..]),
        }
    }

    /// Time since the schedule's start, where the timeline places events.
    fn since_start(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    /// What the summary says about TLS to the target (none for http).
    fn tls_summary(&self) -> Option<TlsSummary> {
        let tls = self.config.target.tls.as_ref();
        tls.map(|tls| tls.summary().clone())
    }

    /// A request of copy `copy` is being written at `at`, `lag` after it was due (the first
    /// one also marks the time to the first request).
    fn count_sent(&self, copy: u32, lag: Duration, at: Instant) {
        let mut tally = self.tally();
        tally.sent(copy, at.saturating_duration_since(self.start), lag);
        if tally.first_request_after.is_none() {
            tally.first_request_after = Some(at.saturating_duration_since(self.created));
        }
    }

    fn tally(&self) -> MutexGuard<'_, Tally> {
        // A panicking connection task cannot leave the totals half-updated in a way that
        // matters more than losing them, so a poisoned lock is still read.
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A replay in progress.
pub struct Replay {
    shared: Arc<Shared>,
    stop: watch::Sender<Option<String>>,
    task: tokio::task::JoinHandle<()>,
    position: Arc<ReadPosition>,
}

/// Why a replay cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "--start-at is {0:.1} s in the past; give a time at least a second ahead (clocks of the agents must agree)"
    )]
    StartInPast(f64),
    #[error("--start-at is more than 24 hours ahead ({0:.0} s)")]
    StartTooFar(f64),
    #[error("cannot start the replay's threads: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    DiffOut(DiffOutError),
}

/// The schedule's start: `start_at` on this host's clock, or just after now.
fn schedule_start(start_at: Option<SystemTime>) -> Result<Instant, StartError> {
    let now = Instant::now();
    let Some(at) = start_at else {
        return Ok(now + CONNECT_LEAD);
    };
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) if ahead > Duration::from_secs(24 * 3600) => {
            Err(StartError::StartTooFar(ahead.as_secs_f64()))
        }
        Ok(ahead) => Ok(now + ahead),
        Err(e) => Err(StartError::StartInPast(e.duration().as_secs_f64())),
    }
}

impl Replay {
    /// Starts reading with `feed` on a thread of its own and sending on the current tokio
    /// runtime, counting into `tally`.
    pub fn start(
        feed: Feed,
        tally: Tally,
        config: EngineConfig,
        differ: Option<Differ>,
    ) -> Result<Self, StartError> {
        let created = Instant::now();
        let start = schedule_start(config.start_at)?;
        let feed_closed = Arc::new(AtomicBool::new(false));
        let shared_closed = feed_closed.clone();
        let shared = Arc::new(Shared {
            tally: Mutex::new(tally),
            differ,
            config,
            start,
            created,
            feed_closed: shared_closed,
            ended: OnceLock::new(),
            over: Notify::new(),
        });
        let (mut sink, rx) = FeedSink::channel(FEED_CAPACITY);
        sink.closed = feed_closed;
        let position = sink.position.clone();
        let (stop, stop_rx) = watch::channel(None);
        let feed_shared = shared.clone();
        let feed_done = spawn_thread("replay-feed", move || {
            let summary = feed(&sink);
            drop(sink);
            feed_shared.tally().source_done(summary);
        })?;
        if let Some(after) = shared.config.exit_after {
            let stop = stop.clone();
            let at = shared.start + after;
            tokio::spawn(async move {
                tokio::select! {
                    _ = sleep_until(at) => {
                        let _ = stop.send(Some(format!(
                            "--exit-after {} reached", humantime::format_duration(after)
                        )));
                    }
                    _ = stop.closed() => {}
                }
            });
        }
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let pacer = pacer::Pacer::new(
            shared.clone(),
            rx,
            tokio::runtime::Handle::current(),
            stop_rx.clone(),
            tasks.clone(),
        );
        let pacer_done = spawn_thread("replay-pacer", move || pacer.run())?;
        let task = tokio::spawn(run(shared.clone(), pacer_done, feed_done, tasks, stop_rx));
        Ok(Self {
            shared,
            stop,
            task,
            position,
        })
    }

    /// Time since the replay's clock started (negative times, before a `--start-at`, are 0).
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.shared.start)
    }

    /// How far the source has been read.
    pub fn position(&self) -> (u64, Option<u64>) {
        let total = self.position.total.load(Ordering::Relaxed);
        (
            self.position.read.load(Ordering::Relaxed),
            (total > 0).then_some(total),
        )
    }

    /// Reads the running totals.
    pub fn with_tally<T>(&self, f: impl FnOnce(&Tally) -> T) -> T {
        f(&self.shared.tally())
    }

    /// Asks the replay to stop now; `why` is reported.
    pub fn stop(&self, why: &str) {
        self.stop.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why.to_string());
                true
            } else {
                false
            }
        });
    }

    /// True once every send is done or the replay was stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Resolves when the replay is over (at once if it already is).
    pub async fn over(&self) {
        if !self.is_finished() {
            self.shared.over.notified().await;
        }
    }

    /// Waits for the end and returns the summary.
    pub async fn finish(self) -> ReplayReport {
        let _ = (&mut { self.task }).await;
        let ended = self
            .shared
            .ended
            .get()
            .copied()
            .unwrap_or_else(Instant::now);
        let elapsed = ended.saturating_duration_since(self.shared.start);
        let why = self.stop.borrow().clone();
        let mut report = {
            let mut tally = self.shared.tally();
            tally.ran_for(elapsed);
            tally.report(elapsed, why.as_deref())
        };
        report.tls = self.shared.tls_summary();
        if let Some(differ) = &self.shared.differ {
            report.diff = Some(differ.summary());
            report.diff_out_error = differ.finish().and_then(Result::err);
        }
        report
    }

    /// The summary so far (for a replay still running, in-flight sends are not yet counted).
    pub fn report_now(&self) -> ReplayReport {
        let why = self.stop.borrow().clone();
        let elapsed = self.elapsed();
        let mut report = {
            let mut tally = self.shared.tally();
            tally.ran_for(elapsed);
            tally.report(elapsed, why.as_deref())
        };
        report.tls = self.shared.tls_summary();
        report.diff = self.shared.differ.as_ref().map(Differ::summary);
        report
    }
}

/// Runs `work` on a named thread; the receiver resolves when it returns.
fn spawn_thread(
    name: &str,
    work: impl FnOnce() + Send + 'static,
) -> Result<tokio::sync::oneshot::Receiver<()>, StartError> {
    let (done, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            work();
            let _ = done.send(());
        })
        .map_err(StartError::Thread)?;
    Ok(rx)
}

/// Waits for the pacer to hand on its last send, then for the connections to finish theirs
/// (on a stop: for the grace, then they are cut), then for the feed's summary.
async fn run(
    shared: Arc<Shared>,
    pacer_done: tokio::sync::oneshot::Receiver<()>,
    feed_done: tokio::sync::oneshot::Receiver<()>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    mut stop: watch::Receiver<Option<String>>,
) {
    let _ = pacer_done.await;
    let mut tasks = std::mem::take(&mut *tasks.lock().unwrap_or_else(|e| e.into_inner()));
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            _ = stopped(&mut stop) => {
                // Connections stop writing by themselves; in-flight answers get the grace.
                let drained = timeout(STOP_GRACE, async {
                    while tasks.join_next().await.is_some() {}
                });
                if drained.await.is_err() {
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
                break;
            }
        }
    }
    let _ = shared.ended.set(Instant::now());
    let _ = feed_done.await;
    shared.over.notify_one();
}

/// Resolves once a stop is asked for (or the handle is gone: no replay runs unowned).
async fn stopped(stop: &mut watch::Receiver<Option<String>>) {
    let _ = stop.wait_for(Option::is_some).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_in_the_past_or_far_ahead_is_refused() {
        let past = SystemTime::now() - Duration::from_secs(5);
        assert!(matches!(schedule_start(Some(past)), Err(StartError::StartInPast(s)) if s >= 5.0));
        let far = SystemTime::now() + Duration::from_secs(25 * 3600);
        assert!(matches!(
            schedule_start(Some(far)),
            Err(StartError::StartTooFar(_))
        ));
        let soon = SystemTime::now() + Duration::from_secs(3);
        let start = schedule_start(Some(soon)).unwrap();
        let ahead = start.saturating_duration_since(Instant::now());
        assert!(ahead > Duration::from_millis(2500) && ahead <= Duration::from_secs(3));
    }
}
