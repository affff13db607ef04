//! The async shell of replay: opens one connection per recorded connection (per loop, per
//! copy), sends its requests in order at their planned times, reads the answers, and tallies
//! what happened.
//!
//! Requests are written as the bytes they are (recorded, or rewritten by the user's rules) on a
//! plain TCP stream, and answers are framed by the capture framer: an HTTP library would
//! re-serialise heads and re-chunk bodies, and the promise is byte-exact replay.
//!
//! Timing: a connection whose previous answer is late sends its next request late (a recorded
//! connection is sequential), but no connection ever delays another, so a slow target shows up
//! as latency and schedule lag rather than as a slower schedule (no coordinated omission).

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use super::report::{FailureKind, ReplayReport, Tally};
use super::response::{ResponseError, ResponseReader};
use super::rewrite::{CopyHeader, CopySlot};
use super::schedule::{Planned, ReplayConn};

/// Connections are opened this long before their first request is due, so the handshake
/// does not make the first request late.
const CONNECT_LEAD: Duration = Duration::from_millis(50);

/// Read buffer per connection.
const READ_BUFFER: usize = 64 << 10;

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
    /// Most connections open at once (each replays one recorded connection).
    pub concurrency: usize,
    /// Stop after this long, whatever is left.
    pub exit_after: Option<Duration>,
    /// `--copy-header`: each request carries its copy's number in this header.
    pub copy_header: Option<CopyHeader>,
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

/// The sends of one replay connection, in order.
struct ConnectionPlan {
    /// The copy (0-based) the connection belongs to.
    copy: u32,
    sends: Vec<(usize, Duration)>,
}

/// Groups the plan by connection, in the order connections are first due.
fn connection_plans(plan: &[Planned]) -> Vec<ConnectionPlan> {
    let mut index_of: HashMap<ReplayConn, usize> = HashMap::new();
    let mut plans: Vec<ConnectionPlan> = Vec::new();
    for p in plan {
        let i = *index_of.entry(p.conn).or_insert_with(|| {
            plans.push(ConnectionPlan {
                copy: p.conn.copy,
                sends: Vec::new(),
            });
            plans.len() - 1
        });
        plans[i].sends.push((p.index, p.due));
    }
    plans
}

struct Shared {
    config: EngineConfig,
    requests: Vec<PreparedRequest>,
    tally: Mutex<Tally>,
    start: Instant,
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
}

impl Replay {
    /// Starts sending `plan` (indices into `requests`) on the current tokio runtime, counting
    /// into `tally` (made for this plan).
    pub fn start(
        requests: Vec<PreparedRequest>,
        plan: Vec<Planned>,
        tally: Tally,
        config: EngineConfig,
    ) -> Self {
        let shared = Arc::new(Shared {
            tally: Mutex::new(tally),
            requests,
            config,
            start: Instant::now() + CONNECT_LEAD,
        });
        let (stop, stop_rx) = watch::channel(None);
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
        let task = tokio::spawn(run(shared.clone(), connection_plans(&plan), stop_rx));
        Self { shared, stop, task }
    }

    /// Time since the replay's clock started.
    pub fn elapsed(&self) -> Duration {
        Instant::now().saturating_duration_since(self.shared.start)
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

async fn run(
    shared: Arc<Shared>,
    plans: Vec<ConnectionPlan>,
    mut stop: watch::Receiver<Option<String>>,
) {
    let permits = Arc::new(Semaphore::new(shared.config.concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for plan in plans {
        let Some(&(_, first_due)) = plan.sends.first() else {
            continue;
        };
        let open_at = (shared.start + first_due)
            .checked_sub(CONNECT_LEAD)
            .unwrap_or(shared.start);
        let permit = tokio::select! {
            permit = async {
                sleep_until(open_at).await;
                permits.clone().acquire_owned().await
            } => permit,
            _ = stopped(&mut stop) => break,
        };
        let Ok(permit) = permit else { break };
        let shared = shared.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            replay_connection(&shared, plan, stop).await;
            drop(permit);
        });
        // Finished tasks are reaped as we go, so the set holds at most `concurrency`.
        while tasks.try_join_next().is_some() {}
    }
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
}

/// Resolves once a stop is asked for (or the handle is gone: no replay runs unowned).
async fn stopped(stop: &mut watch::Receiver<Option<String>>) {
    let _ = stop.wait_for(Option::is_some).await;
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
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(FailureKind::ConnectRefused);
        }
        Ok(Err(_)) => return Err(FailureKind::ConnectError),
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    shared.tally().connections += 1;
    Ok(Connection {
        stream,
        reader: ResponseReader::new(),
    })
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

async fn replay_connection(
    shared: &Shared,
    plan: ConnectionPlan,
    mut stop: watch::Receiver<Option<String>>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    // Opened ahead of the first request (see CONNECT_LEAD); a failure counts at the due time.
    let mut first_attempt = tokio::select! {
        attempt = connect(shared) => Some(attempt),
        _ = stopped(&mut stop) => return,
    };
    let mut open: Option<Connection> = None;
    let copy = plan.copy;
    for (index, due) in plan.sends {
        let due_at = shared.start + due;
        tokio::select! {
            _ = sleep_until(due_at) => {}
            _ = stopped(&mut stop) => return,
        }
        // A stop that came exactly at the due time still wins: nothing new after a stop.
        if stop.borrow().is_some() {
            return;
        }
        let attempt = match first_attempt.take() {
            Some(attempt) => attempt,
            None => match open.take() {
                Some(c) if still_open(&c) => Ok(c),
                _ => connect(shared).await,
            },
        };
        let lag = Instant::now().saturating_duration_since(due_at);
        let mut conn = match attempt {
            Ok(conn) => conn,
            Err(failure) => {
                shared.tally().not_sent(copy, lag, failure);
                continue;
            }
        };
        let request = &shared.requests[index];
        let bytes = shared.bytes_for(request, copy);
        shared.tally().sent(copy, lag);
        let sent_at = Instant::now();
        let answer = timeout(
            shared.config.response_timeout,
            exchange(&mut conn, &bytes, &mut buf),
        )
        .await;
        match answer {
            Ok(Ok(outcome)) => {
                shared.tally().completed(
                    copy,
                    outcome.status,
                    request.recorded_status,
                    outcome.body_len,
                    sent_at.elapsed(),
                );
                if outcome.keep_alive {
                    open = Some(conn);
                }
            }
            Ok(Err(failure)) => shared.tally().failed(copy, failure),
            Err(_) => shared.tally().failed(copy, FailureKind::ResponseTimeout),
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
