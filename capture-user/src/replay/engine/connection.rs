//! One replay connection's task: it opens its connection just ahead of its first job, sends
//! its jobs one at a time (to the baseline too, with `--baseline`), reads each answer with the
//! capture framer, tallies and compares it, and reconnects when the target closed it. Over
//! TCP or TLS alike ([`Stream`]): the request bytes are the same either way.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::{Instant, timeout, timeout_at};

use super::stream::{Endpoint, Stream, open_stream};
use super::{PreparedRequest, READ_BUFFER, Shared, stopped};
use crate::replay::report::{Failure, FailureKind};
use crate::replay::response::{ResponseError, ResponseOutcome, ResponseReader};

/// A send handed to a connection at its due time.
pub(super) struct Job {
    pub(super) request: Arc<PreparedRequest>,
    pub(super) due_at: Instant,
    pub(super) copy: u32,
    /// Returned when the send is over: the cap on sends waiting (`MAX_QUEUED`).
    pub(super) _queued: OwnedSemaphorePermit,
}

/// Where a connection task takes its jobs from: its own queue, or its copy's pool.
pub(super) enum Jobs {
    Own(mpsc::UnboundedReceiver<Job>),
    Pool(Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Job>>>),
}

impl Jobs {
    pub(super) async fn next(&mut self) -> Option<Job> {
        match self {
            Self::Own(rx) => rx.recv().await,
            Self::Pool(rx) => rx.lock().await.recv().await,
        }
    }
}

/// An open replay connection and the reader of its answers. The reader (the framer's
/// state, most of the size) is boxed: a connection moves by value from request to request,
/// and copying the reader each time showed as a tenth of the sending thread's own work.
struct Connection {
    stream: Stream,
    reader: Box<ResponseReader>,
}

/// Opens an HTTP/1 connection to `endpoint` within the connect timeout.
async fn connect_to(endpoint: &Endpoint, within: Duration) -> Result<Connection, Failure> {
    Ok(Connection {
        stream: open_stream(endpoint, within, false).await?,
        reader: Box::new(ResponseReader::new()),
    })
}

/// A connection to the target, counted.
async fn connect(shared: &Shared) -> Result<Connection, Failure> {
    let conn = connect_to(&shared.config.target, shared.config.connect_timeout).await?;
    shared.tally().connections += 1;
    Ok(conn)
}

/// An idle connection the target has not closed (see [`Stream::still_open`]).
fn reusable(conn: Option<Connection>) -> Option<Connection> {
    let mut conn = conn?;
    conn.stream.still_open().then_some(conn)
}

/// The connection a replay connection keeps to the baseline (`--baseline`): each request is
/// sent there too, at the same time, and only its answer is used (to learn noise).
struct BaselineSide {
    endpoint: Endpoint,
    open: Option<Connection>,
    buf: Vec<u8>,
}

impl BaselineSide {
    /// Sends `request` to the baseline; its answer, or None when it gave none.
    async fn exchange(&mut self, shared: &Shared, request: &[u8]) -> Option<ResponseOutcome> {
        let within = shared.config.connect_timeout;
        let mut conn = match reusable(self.open.take()) {
            Some(c) => c,
            None => connect_to(&self.endpoint, within).await.ok()?,
        };
        let answer = timeout(
            shared.config.response_timeout,
            exchange(&mut conn, request, &mut self.buf),
        )
        .await;
        let outcome = answer.ok()?.ok()?;
        if outcome.keep_alive {
            self.open = Some(conn);
        }
        Some(outcome)
    }
}

/// One replay connection's task: opened ahead of its first job, it sends its jobs one at a
/// time, reconnecting when the target closed it, until its jobs end or the replay stops.
pub(super) async fn connection_task(
    shared: Arc<Shared>,
    mut jobs: Jobs,
    mut stop: watch::Receiver<Option<String>>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut baseline = shared.config.baseline.clone().map(|endpoint| BaselineSide {
        endpoint,
        open: None,
        buf: vec![0u8; READ_BUFFER],
    });
    // Opened ahead of the first request (see CONNECT_LEAD); a failure counts at the due time.
    let mut first_attempt = tokio::select! {
        attempt = connect(&shared) => Some(attempt),
        _ = stopped(&mut stop) => return,
    };
    let mut open: Option<Connection> = None;
    loop {
        // Jobs first: a job that is ready is taken without registering for the stop (checked
        // just below), which at `--max` is every time.
        let job = tokio::select! {
            biased;
            job = jobs.next() => match job { Some(job) => job, None => return },
            _ = stopped(&mut stop) => return,
        };
        // A stop that came exactly at the due time still wins: nothing new after a stop.
        if stop.borrow().is_some() {
            return;
        }
        let attempt = match first_attempt.take() {
            Some(attempt) => attempt,
            None => match reusable(open.take()) {
                Some(c) => Ok(c),
                None => connect(&shared).await,
            },
        };
        open = send_job(&shared, job, attempt, &mut buf, baseline.as_mut()).await;
    }
}

/// Sends one job over `attempt` (and to the baseline, at the same time, when there is one),
/// tallies and compares the outcome; the connection, when it can be used again.
async fn send_job(
    shared: &Shared,
    job: Job,
    attempt: Result<Connection, Failure>,
    buf: &mut [u8],
    baseline: Option<&mut BaselineSide>,
) -> Option<Connection> {
    // Two clock reads per exchange: when it is written and when it is over.
    let sent_at = Instant::now();
    let lag = sent_at.saturating_duration_since(job.due_at);
    let request = &job.request;
    let mut conn = match attempt {
        Ok(conn) => conn,
        Err(failure) => {
            shared
                .tally()
                .not_sent(job.copy, shared.since_start(), lag, failure);
            if let Some(differ) = &shared.differ {
                differ.exchange_done(request, None, None, None);
            }
            return None;
        }
    };
    let bytes = shared.bytes_for(request, job.copy);
    shared.count_sent(job.copy, lag, sent_at);
    let candidate = async {
        let answer = timeout_at(
            sent_at + shared.config.response_timeout,
            exchange(&mut conn, &bytes, buf),
        )
        .await;
        (answer, Instant::now())
    };
    let ((answer, done), baseline_answer) = match baseline {
        Some(side) => {
            let (c, b) = tokio::join!(candidate, side.exchange(shared, &bytes));
            (c, Some(b))
        }
        None => (candidate.await, None),
    };
    let latency = done.saturating_duration_since(sent_at);
    let outcome = match answer {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(FailureKind::ResponseTimeout.into()),
    };
    if let Some(differ) = &shared.differ {
        let answered = outcome.as_ref().ok();
        let baseline = baseline_answer.as_ref().map(Option::as_ref);
        differ.exchange_done(request, answered, baseline, answered.map(|_| latency));
    }
    let at = done.saturating_duration_since(shared.start);
    match outcome {
        Ok(outcome) => {
            shared.tally().completed(
                job.copy,
                at,
                outcome.status,
                request.recorded_status,
                outcome.body_len,
                latency,
            );
            outcome.keep_alive.then_some(conn)
        }
        Err(failure) => {
            shared.tally().failed(job.copy, at, failure);
            None
        }
    }
}

/// Bytes of an answer that is not HTTP shown in the summary: enough to tell TLS, SSH or an
/// HTTP/2 preface from a broken HTTP/1 answer.
const BAD_ANSWER_SHOWN: usize = 24;

/// Writes one request and reads its final response.
async fn exchange(
    conn: &mut Connection,
    request: &[u8],
    buf: &mut [u8],
) -> Result<ResponseOutcome, Failure> {
    conn.reader.request_sent(request);
    // The flush matters for TLS: `write_all` ends once rustls has taken the last plaintext,
    // and when the socket was full at that moment the last records wait in rustls's buffer
    // until a flush. A slowly reading server then never got the end of a large body, and
    // the exchange waited for an answer that could not come (a response timeout).
    let write_error = |e| Failure::new(FailureKind::WriteError, e);
    conn.stream.write_all(request).await.map_err(write_error)?;
    conn.stream.flush().await.map_err(write_error)?;
    loop {
        let n = match conn.stream.read(buf).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: a close all the same (an answer
            // delimited by the close is complete).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(Failure::new(FailureKind::ClosedBeforeResponse, e)),
        };
        let result = if n == 0 {
            Some(conn.reader.closed())
        } else {
            conn.reader.received(&buf[..n])
        };
        match result {
            None => continue,
            Some(Ok(outcome)) => return Ok(outcome),
            Some(Err(ResponseError::BadResponse)) => {
                let start = buf[..n.min(BAD_ANSWER_SHOWN)].escape_ascii();
                let detail = format!("the answer's bytes began \"{start}\"");
                return Err(Failure::new(FailureKind::BadResponse, detail));
            }
            Some(Err(ResponseError::Truncated)) => {
                return Err(FailureKind::ClosedBeforeResponse.into());
            }
        }
    }
}
