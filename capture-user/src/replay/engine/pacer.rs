//! The pacer: a thread of its own that takes planned sends in due order, opens each replay
//! connection just ahead of its first request, and hands every send to its connection when it
//! is due. A thread rather than a task: tokio's timer wheel rounds sleeps up to the next
//! millisecond, and a busy runtime wakes timers late; this thread sleeps on the kernel's
//! high-resolution timer with a small timer slack, so a send leaves within tens of µs of its
//! time (the schedule lag `cargo xtask bench replay` measures).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::handoff::{Empty, Receiver};
use super::{
    CONNECT_LEAD, Job, Jobs, MAX_QUEUED, PlannedSend, PreparedRequest, Route, Shared,
    connection_task, http2_connection_task, stopped,
};
use crate::message::HttpVersion;

/// A connection whose first request is HTTP/2, or an HTTP/1 `Upgrade: h2c`, is replayed as
/// an HTTP/2 session.
fn speaks_http2(first: &PreparedRequest) -> bool {
    if first.version == HttpVersion::Http2 {
        return true;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(&first.bytes).is_ok()
        && parsed
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"h2c"))
}

/// Sends received ahead of the one being waited for (their connections open early).
const AHEAD_MAX: usize = 4096;

/// A recorded connection with no send for this long is closed; a later request of it opens a
/// new one. Its task, socket and buffer are freed for connections to come.
const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// How often idle connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Permits of the cap on queued sends taken at a time: a pacer blocked on a full queue is
/// woken once this many sends are over, not for each.
const PERMIT_BATCH: u32 = 256;

/// The longest single sleep, so a stop is noticed within it.
const SLEEP_SLICE: Duration = Duration::from_millis(5);

/// The queue of one replay connection (or of a copy's pool).
struct Lane {
    tx: mpsc::UnboundedSender<Job>,
    /// When a send for it was last read ahead or delivered.
    last_used: std::time::Instant,
    /// Sends read ahead for it and not yet delivered.
    pending: u32,
}

pub(super) struct Pacer {
    shared: Arc<Shared>,
    sends: Receiver<PlannedSend>,
    runtime: Handle,
    stop: watch::Receiver<Option<String>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    ahead: VecDeque<PlannedSend>,
    lanes: HashMap<Route, Lane>,
    /// Recorded connections open at once (`--concurrency`).
    connections: Arc<Semaphore>,
    /// Sends handed to connections and not yet over.
    queued: Arc<Semaphore>,
    /// Permits of `queued` taken ahead, one handed out per send.
    permits: Option<OwnedSemaphorePermit>,
    /// The time when this step began (or its wait last woke): never later than now, read
    /// once per send rather than at every use.
    clock: Instant,
    last_sweep: std::time::Instant,
}

impl Pacer {
    pub(super) fn new(
        shared: Arc<Shared>,
        sends: Receiver<PlannedSend>,
        runtime: Handle,
        stop: watch::Receiver<Option<String>>,
        tasks: Arc<Mutex<JoinSet<()>>>,
    ) -> Self {
        let connections = Arc::new(Semaphore::new(shared.config.concurrency.max(1)));
        Self {
            shared,
            sends,
            runtime,
            stop,
            tasks,
            ahead: VecDeque::new(),
            lanes: HashMap::new(),
            connections,
            queued: Arc::new(Semaphore::new(MAX_QUEUED)),
            permits: None,
            clock: Instant::now(),
            last_sweep: std::time::Instant::now(),
        }
    }

    /// Paces every send until the feed ends or the replay stops; then lets the connections
    /// finish what they were given.
    pub(super) fn run(mut self) {
        precise_timers();
        while self.step() {}
        self.shared.feed_closed.store(true, Ordering::Relaxed);
        // Dropping the lanes ends each connection task once its queue is empty.
        self.lanes.clear();
    }

    fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Waits for the next send and hands it on; false when there is nothing more to do.
    fn step(&mut self) -> bool {
        if self.stopping() {
            return false;
        }
        self.clock = Instant::now();
        if self.ahead.is_empty() {
            match self.sends.recv_timeout(SLEEP_SLICE * 10) {
                Ok(send) => self.admit(send),
                Err(Empty::Waiting) => return true,
                Err(Empty::Closed) => return false,
            }
        }
        self.read_ahead();
        let Some(send) = self.ahead.pop_front() else {
            return true;
        };
        if !self.wait_until(self.shared.start + send.due) {
            return false;
        }
        self.deliver(send);
        if self
            .clock
            .into_std()
            .saturating_duration_since(self.last_sweep)
            >= SWEEP_EVERY
        {
            self.sweep();
        }
        true
    }

    /// Takes the sends due within `CONNECT_LEAD` of now (opening their connections).
    fn read_ahead(&mut self) {
        let horizon = self.clock.saturating_duration_since(self.shared.start) + CONNECT_LEAD;
        while self.ahead.len() < AHEAD_MAX
            && self.ahead.back().is_none_or(|last| last.due <= horizon)
        {
            match self.sends.try_recv() {
                Ok(send) => self.admit(send),
                Err(Empty::Waiting | Empty::Closed) => return,
            }
        }
    }

    /// Counts a send as planned and opens its connection ahead of it if it has none yet and
    /// a slot is free (else it opens when the send is due: opening ahead never closes another).
    fn admit(&mut self, send: PlannedSend) {
        self.shared.tally().planned(send.route.copy());
        if !self.lanes.contains_key(&send.route) {
            self.open_lane(send.route, speaks_http2(&send.request), false);
        }
        if let Some(lane) = self.lanes.get_mut(&send.route) {
            // In use until then: not the idlest, whatever it sent before.
            lane.last_used = self.clock.into_std();
            lane.pending += 1;
        }
        self.ahead.push_back(send);
    }

    /// Sleeps until `at`, reading ahead meanwhile; false if the replay stopped.
    fn wait_until(&mut self, at: Instant) -> bool {
        // Due already by the step's clock (at `--max`, every send): no clock read.
        if self.clock >= at {
            return true;
        }
        loop {
            if self.stopping() {
                return false;
            }
            self.clock = Instant::now();
            if self.clock >= at {
                return true;
            }
            std::thread::sleep((at - self.clock).min(SLEEP_SLICE));
            self.clock = Instant::now();
            self.read_ahead();
        }
    }

    /// Starts the connection task(s) of a route: one for a recorded connection (within
    /// `--concurrency`; when all slots are taken, none, or with `make_room` after closing the
    /// idlest connection), the pool's for a copy. A recorded HTTP/2 connection gets an
    /// HTTP/2 session.
    fn open_lane(&mut self, route: Route, http2: bool, make_room: bool) {
        let (tx, rx) = mpsc::unbounded_channel();
        match route {
            Route::Recorded(_) => {
                let permit = if make_room {
                    self.connection_permit()
                } else {
                    self.connections.clone().try_acquire_owned().ok()
                };
                let Some(permit) = permit else {
                    return;
                };
                let (shared, stop) = (self.shared.clone(), self.stop.clone());
                self.spawn(async move {
                    if http2 {
                        http2_connection_task(shared, Jobs::Own(rx), stop).await;
                    } else {
                        connection_task(shared, Jobs::Own(rx), stop).await;
                    }
                    drop(permit);
                });
            }
            Route::Pool { .. } => {
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                for _ in 0..self.shared.config.pool.max(1) {
                    let jobs = Jobs::Pool(rx.clone());
                    let (shared, stop) = (self.shared.clone(), self.stop.clone());
                    self.spawn(connection_task(shared, jobs, stop));
                }
            }
        }
        self.lanes.insert(
            route,
            Lane {
                tx,
                last_used: std::time::Instant::now(),
                pending: 0,
            },
        );
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.spawn_on(task, &self.runtime);
        // Finished tasks are reaped as we go, so the set holds the live ones only.
        while tasks.try_join_next().is_some() {}
    }

    /// A connection slot: at once if one is free, else after closing the recorded connection
    /// idle longest (one with no send read ahead, if any: a closed connection with sends to
    /// come opens again, taking a slot of its own) and waiting for a slot; None if the replay
    /// stops meanwhile. Closing one always frees a slot: a connection's task ends once the
    /// sends it was given are done.
    fn connection_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Some(permit);
        }
        let idlest = self
            .lanes
            .iter()
            .filter(|(route, _)| matches!(route, Route::Recorded(_)))
            .min_by_key(|(_, lane)| (lane.pending > 0, lane.last_used))
            .map(|(route, _)| *route);
        if let Some(route) = idlest {
            self.lanes.remove(&route);
        }
        self.acquire(self.connections.clone(), 1)
    }

    /// Waits for `n` permits of `semaphore`, or for a stop (None).
    fn acquire(&self, semaphore: Arc<Semaphore>, n: u32) -> Option<OwnedSemaphorePermit> {
        let mut stop = self.stop.clone();
        self.runtime.block_on(async move {
            tokio::select! {
                permit = semaphore.acquire_many_owned(n) => permit.ok(),
                _ = stopped(&mut stop) => None,
            }
        })
    }

    /// A place among the sends queued to connections, from the permits taken ahead
    /// ([`PERMIT_BATCH`] at a time, waiting while `MAX_QUEUED` sends are out); None if the
    /// replay stops meanwhile.
    fn queued_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        if self.permits.is_none() {
            self.permits = Some(
                match self.queued.clone().try_acquire_many_owned(PERMIT_BATCH) {
                    Ok(permits) => permits,
                    Err(_) => self.acquire(self.queued.clone(), PERMIT_BATCH)?,
                },
            );
        }
        let permits = self.permits.as_mut()?;
        if permits.num_permits() > 1 {
            permits.split(1)
        } else {
            self.permits.take()
        }
    }

    /// Hands a due send to its connection (waiting while `MAX_QUEUED` sends are out).
    fn deliver(&mut self, send: PlannedSend) {
        let Some(queued) = self.queued_permit() else {
            return;
        };
        if !self.lanes.contains_key(&send.route) {
            // No slot when read ahead, or closed meanwhile to make room.
            self.open_lane(send.route, speaks_http2(&send.request), true);
        }
        let Some(lane) = self.lanes.get_mut(&send.route) else {
            return; // no slot: the replay is stopping
        };
        lane.last_used = self.clock.into_std();
        lane.pending = lane.pending.saturating_sub(1);
        let job = Job {
            request: send.request,
            due_at: self.shared.start + send.due,
            copy: send.route.copy(),
            _queued: queued,
        };
        if lane.tx.send(job).is_err() {
            // The connection task is gone (the replay is stopping): nothing to send it on.
        }
    }

    /// Closes recorded connections idle for `IDLE_CLOSE`.
    fn sweep(&mut self) {
        self.last_sweep = std::time::Instant::now();
        self.lanes.retain(|route, lane| {
            matches!(route, Route::Pool { .. })
                || lane.pending > 0
                || lane.last_used.elapsed() < IDLE_CLOSE
        });
    }
}

/// Asks the kernel to wake this thread within 1 µs of its sleeps' ends (the default timer
/// slack is 50 µs).
fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong, 0, 0, 0);
    }
}
