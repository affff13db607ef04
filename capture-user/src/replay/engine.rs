//! The async shell of replay: takes the planned sends as the source is read, hands each to
//! its replay connection when it is due, sends it, reads the answer, and tallies what happened.
//!
//! Requests are written as the bytes they are (recorded, or rewritten by the user's rules) on a
//! plain TCP stream, and answers are framed by the capture framer: an HTTP library would
//! re-serialise heads and re-chunk bodies, and the promise is byte-exact replay.
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
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use super::report::{FailureKind, ReplayReport, SourceSummary, Tally};
use super::response::{ResponseError, ResponseReader};
use super::rewrite::{CopyHeader, CopySlot};
use super::schedule::ReplayConn;

mod pacer;

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
    pub target: SocketAddr,
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
}

/// A request ready to send.
#[derive(Clone, Debug)]
pub struct PreparedRequest {
    /// The bytes to write (recorded, or rewritten).
    pub bytes: Bytes,
    /// Final status when it was recorded, to spot changed behaviour.
    pub recorded_status: Option<u16>,
    /// Where the copy header goes, when there is one (see [`CopyHeader`]).
    pub copy_slot: Option<CopySlot>,
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
    tx: std::sync::mpsc::SyncSender<PlannedSend>,
    closed: Arc<AtomicBool>,
    pub position: Arc<ReadPosition>,
}

impl FeedSink {
    /// A sink and the receiving end of its sends (the engine's, or a test's).
    pub fn channel(capacity: usize) -> (Self, std::sync::mpsc::Receiver<PlannedSend>) {
        let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
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
    /// The start of the schedule (due times count from here).
    start: Instant,
    /// When the replay was started (for the time to the first request).
    created: Instant,
    /// Set when the pacer ends: the feed stops reading.
    feed_closed: Arc<AtomicBool>,
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
    pub fn start(feed: Feed, tally: Tally, config: EngineConfig) -> Result<Self, StartError> {
        let created = Instant::now();
        let start = schedule_start(config.start_at)?;
        let feed_closed = Arc::new(AtomicBool::new(false));
        let shared_closed = feed_closed.clone();
        let shared = Arc::new(Shared {
            tally: Mutex::new(tally),
            config,
            start,
            created,
            feed_closed: shared_closed,
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
        let task = tokio::spawn(run(pacer_done, feed_done, tasks, stop_rx));
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

    /// Waits for the end and returns the summary.
    pub async fn finish(self) -> ReplayReport {
        let _ = (&mut { self.task }).await;
        let elapsed = Instant::now().saturating_duration_since(self.shared.start);
        let why = self.stop.borrow().clone();
        self.shared.tally().report(elapsed, why.as_deref())
    }

    /// The summary so far (for a replay still running, in-flight sends are not yet counted).
    pub fn report_now(&self) -> ReplayReport {
        let why = self.stop.borrow().clone();
        self.shared.tally().report(self.elapsed(), why.as_deref())
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
    let _ = feed_done.await;
}

/// Resolves once a stop is asked for (or the handle is gone: no replay runs unowned).
async fn stopped(stop: &mut watch::Receiver<Option<String>>) {
    let _ = stop.wait_for(Option::is_some).await;
}

/// A send handed to a connection at its due time.
struct Job {
    request: Arc<PreparedRequest>,
    due_at: Instant,
    copy: u32,
    /// Returned when the send is over: the cap on sends waiting (`MAX_QUEUED`).
    _queued: OwnedSemaphorePermit,
}

/// Where a connection task takes its jobs from: its own queue, or its copy's pool.
enum Jobs {
    Own(mpsc::UnboundedReceiver<Job>),
    Pool(Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>),
}

impl Jobs {
    async fn next(&mut self) -> Option<Job> {
        match self {
            Self::Own(rx) => rx.recv().await,
            Self::Pool(rx) => rx.lock().await.recv().await,
        }
    }
}

/// An open replay connection and the reader of its answers.
struct Connection {
    stream: TcpStream,
    reader: ResponseReader,
}

async fn connect(shared: &Shared) -> Result<Connection, FailureKind> {
    let config = &shared.config;
    let stream = match timeout(config.connect_timeout, TcpStream::connect(config.target)).await {
        Err(_) => return Err(FailureKind::ConnectTimeout),
        Ok(Err(e)) => return Err(connect_failure(&e)),
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    shared.tally().connections += 1;
    Ok(Connection {
        stream,
        reader: ResponseReader::new(),
    })
}

/// The failure kind of a connect error.
fn connect_failure(e: &std::io::Error) -> FailureKind {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => FailureKind::ConnectRefused,
        std::io::ErrorKind::AddrNotAvailable => FailureKind::LocalPortsExhausted,
        _ if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => FailureKind::LocalPortsExhausted,
        _ => FailureKind::ConnectError,
    }
}

/// The target may have closed an idle keep-alive connection since the last answer; a new
/// request on it would fail for a reason that is not the target's fault.
fn still_open(conn: &Connection) -> bool {
    let mut probe = [0u8; 1];
    match conn.stream.try_read(&mut probe) {
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        // EOF, or bytes nobody asked for: either way the connection is not reusable.
        Ok(_) => false,
    }
}

/// One replay connection's task: opened ahead of its first job, it sends its jobs one at a
/// time, reconnecting when the target closed it, until its jobs end or the replay stops.
async fn connection_task(
    shared: Arc<Shared>,
    mut jobs: Jobs,
    mut stop: watch::Receiver<Option<String>>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    // Opened ahead of the first request (see CONNECT_LEAD); a failure counts at the due time.
    let mut first_attempt = tokio::select! {
        attempt = connect(&shared) => Some(attempt),
        _ = stopped(&mut stop) => return,
    };
    let mut open: Option<Connection> = None;
    loop {
        let job = tokio::select! {
            job = jobs.next() => match job { Some(job) => job, None => return },
            _ = stopped(&mut stop) => return,
        };
        // A stop that came exactly at the due time still wins: nothing new after a stop.
        if stop.borrow().is_some() {
            return;
        }
        let attempt = match first_attempt.take() {
            Some(attempt) => attempt,
            None => match open.take() {
                Some(c) if still_open(&c) => Ok(c),
                _ => connect(&shared).await,
            },
        };
        open = send_job(&shared, job, attempt, &mut buf).await;
    }
}

/// Sends one job over `attempt` and tallies the outcome; the connection, when it can be used
/// again.
async fn send_job(
    shared: &Shared,
    job: Job,
    attempt: Result<Connection, FailureKind>,
    buf: &mut [u8],
) -> Option<Connection> {
    let lag = Instant::now().saturating_duration_since(job.due_at);
    let mut conn = match attempt {
        Ok(conn) => conn,
        Err(failure) => {
            shared.tally().not_sent(job.copy, lag, failure);
            return None;
        }
    };
    let request = &job.request;
    let bytes = shared.bytes_for(request, job.copy);
    {
        let mut tally = shared.tally();
        tally.sent(job.copy, lag);
        if tally.first_request_after.is_none() {
            tally.first_request_after = Some(shared.created.elapsed());
        }
    }
    let sent_at = Instant::now();
    let answer = timeout(
        shared.config.response_timeout,
        exchange(&mut conn, &bytes, buf),
    )
    .await;
    match answer {
        Ok(Ok(outcome)) => {
            shared.tally().completed(
                job.copy,
                outcome.status,
                request.recorded_status,
                outcome.body_len,
                sent_at.elapsed(),
            );
            outcome.keep_alive.then_some(conn)
        }
        Ok(Err(failure)) => {
            shared.tally().failed(job.copy, failure);
            None
        }
        Err(_) => {
            shared
                .tally()
                .failed(job.copy, FailureKind::ResponseTimeout);
            None
        }
    }
}

/// Writes one request and reads its final response.
async fn exchange(
    conn: &mut Connection,
    request: &[u8],
    buf: &mut [u8],
) -> Result<super::response::ResponseOutcome, FailureKind> {
    conn.reader.request_sent(request);
    conn.stream
        .write_all(request)
        .await
        .map_err(|_| FailureKind::WriteError)?;
    loop {
        let n = match conn.stream.read(buf).await {
            Ok(n) => n,
            Err(_) => return Err(FailureKind::ClosedBeforeResponse),
        };
        let result = if n == 0 {
            Some(conn.reader.closed())
        } else {
            conn.reader.received(&buf[..n])
        };
        match result {
            None => continue,
            Some(Ok(outcome)) => return Ok(outcome),
            Some(Err(ResponseError::BadResponse)) => return Err(FailureKind::BadResponse),
            Some(Err(ResponseError::Truncated)) => return Err(FailureKind::ClosedBeforeResponse),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_local_ports_is_named_as_such() {
        let e = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert_eq!(connect_failure(&e), FailureKind::LocalPortsExhausted);
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(connect_failure(&e), FailureKind::ConnectRefused);
        let e = std::io::Error::from_raw_os_error(libc::ENETUNREACH);
        assert_eq!(connect_failure(&e), FailureKind::ConnectError);
    }

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
