//! When one API connection must be closed, without I/O: the server's connection task feeds
//! it what happens (bytes read or written, a request handed to the router, its answer) and
//! sleeps until [`ConnClock::deadline`].
//!
//! - A connection has `header_read` to deliver a whole request head, counted from its
//!   accept (the TLS handshake included) or, on a kept-alive connection, from the first
//!   byte of the next request: trickling a head byte by byte does not extend it.
//! - Between requests, a kept-alive connection may stay silent for `idle`, counted from
//!   the end of the last answer (its last written byte).
//! - While a request is with the router there is no connection deadline: the body read
//!   timeout and the handling deadline apply there, per request.

use std::time::{Duration, Instant};

/// The connection deadlines, from the agent's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnTimeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Which deadline closed a connection (a label of `capture_agent_timeouts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnTimeout {
    HeaderRead,
    Idle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head since this instant.
    Head { since: Instant },
    /// A request is with the router.
    Busy,
    /// Kept alive after an answer, nothing of the next request read yet.
    Idle { since: Instant },
}

/// What one connection is doing, as far as its deadlines care.
#[derive(Clone, Debug)]
pub struct ConnClock {
    phase: Phase,
    last_write: Instant,
}

impl ConnClock {
    /// A connection accepted at `now`: its first head is due within `header_read`.
    pub fn new(now: Instant) -> Self {
        Self {
            phase: Phase::Head { since: now },
            last_write: now,
        }
    }

    /// Bytes arrived at `now`: on an idle connection, the next head has started. True when
    /// that moved the deadline (the header timeout may end before the idle one would).
    pub fn read(&mut self, now: Instant) -> bool {
        if let Phase::Idle { .. } = self.phase {
            self.phase = Phase::Head { since: now };
            return true;
        }
        false
    }

    /// Bytes were written at `now` (an answer going out to a slow reader is not idle).
    pub fn wrote(&mut self, now: Instant) {
        self.last_write = now;
    }

    /// A whole head arrived and the request went to the router.
    pub fn request_started(&mut self) {
        self.phase = Phase::Busy;
    }

    /// The router answered at `now`; the connection waits for the next request.
    pub fn answered(&mut self, now: Instant) {
        self.phase = Phase::Idle { since: now };
    }

    /// When the connection must be closed if nothing changes, and why; `None` while a
    /// request is with the router.
    pub fn deadline(&self, limits: &ConnTimeouts) -> Option<(Instant, ConnTimeout)> {
        match self.phase {
            Phase::Head { since } => Some((since + limits.header_read, ConnTimeout::HeaderRead)),
            Phase::Busy => None,
            Phase::Idle { since } => {
                Some((since.max(self.last_write) + limits.idle, ConnTimeout::Idle))
            }
        }
    }

    /// The deadline if it has passed at `now`: the connection is to be closed.
    pub fn expired(&self, limits: &ConnTimeouts, now: Instant) -> Option<ConnTimeout> {
        self.deadline(limits)
            .filter(|(at, _)| *at <= now)
            .map(|(_, why)| why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnTimeouts = ConnTimeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
    };

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_head_is_due_within_the_header_timeout_of_the_accept_however_it_trickles() {
        let t0 = Instant::now();
        let mut c = ConnClock::new(t0);
        for i in 1..10 {
            c.read(t0 + s(i));
        }
        assert_eq!(
            c.deadline(&LIMITS),
            Some((t0 + s(10), ConnTimeout::HeaderRead))
        );
        assert_eq!(c.expired(&LIMITS, t0 + s(9)), None);
        assert_eq!(
            c.expired(&LIMITS, t0 + s(10)),
            Some(ConnTimeout::HeaderRead)
        );
    }

    #[test]
    fn a_request_with_the_router_has_no_connection_deadline() {
        let t0 = Instant::now();
        let mut c = ConnClock::new(t0);
        c.request_started();
        assert_eq!(c.deadline(&LIMITS), None);
        assert_eq!(c.expired(&LIMITS, t0 + s(3600)), None);
    }

    #[test]
    fn after_an_answer_the_idle_timeout_runs_until_the_next_head_starts() {
        let t0 = Instant::now();
        let mut c = ConnClock::new(t0);
        c.request_started();
        c.answered(t0 + s(1));
        c.wrote(t0 + s(2));
        assert_eq!(c.deadline(&LIMITS), Some((t0 + s(62), ConnTimeout::Idle)));
        assert!(
            c.read(t0 + s(30)),
            "the next head started: the deadline moved"
        );
        assert_eq!(
            c.deadline(&LIMITS),
            Some((t0 + s(40), ConnTimeout::HeaderRead))
        );
        // More bytes of the same head do not move it.
        assert!(!c.read(t0 + s(35)));
        assert_eq!(
            c.deadline(&LIMITS),
            Some((t0 + s(40), ConnTimeout::HeaderRead))
        );
        c.request_started();
        c.answered(t0 + s(36));
        assert_eq!(c.deadline(&LIMITS), Some((t0 + s(96), ConnTimeout::Idle)));
    }
}
