//! When each recorded request is due, relative to the start of the replay, and over which
//! replay connection. Sans-IO: a pure function of the recorded timestamps, the pace, the loops
//! and the copies, so timing is tested without clocks.
//!
//! Connection fidelity is the engine's job (a recorded connection's requests go over one
//! connection, in order); the plan says when a request may be sent at the earliest, and which
//! replay connection it belongs to: one per recorded connection, per loop, per copy.

use std::time::Duration;

/// How fast to replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// The recorded inter-arrival times divided by `speed` (2.0 = twice as fast).
    Original { speed: f64 },
    /// A fixed rate of requests per second, in recorded order (per copy).
    Rate { per_second: f64 },
    /// As fast as the connections allow.
    Max,
}

/// Most concurrent copies: each multiplies the plan held in memory and the connections open.
pub const MAX_COPIES: u32 = 1000;

/// Why a pace, loop count or copy count cannot be used.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "--speed must be a positive number (got {0}); 1 is the recorded speed, 2 twice as fast"
    )]
    BadSpeed(f64),
    #[error("--rate must be a positive number of requests per second (got {0})")]
    BadRate(f64),
    #[error("--loop must be at least 1 (got {0})")]
    BadLoops(u32),
    #[error(
        "--copies must be between 1 and {MAX_COPIES} (got {0}); 1 replays the traffic once, 3 three times at once"
    )]
    BadCopies(u32),
}

/// How the recorded traffic is shaped into sends: the pace, and how many times over in
/// sequence (loops) and at once (copies).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub pace: Pace,
    /// Passes one after the other.
    pub loops: u32,
    /// Passes at the same time, each on its own connections.
    pub copies: u32,
}

/// The replay connection a send goes over: one per recorded connection, loop and copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplayConn {
    /// Which copy (0-based; people see copy + 1, in the copy header and the summary).
    pub copy: u32,
    /// Which loop (0-based).
    pub iteration: u32,
    /// The recorded connection.
    pub recorded: u64,
}

fn duration_from_secs(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.max(0.0))
}

/// Checks a shape before anything is read, so bad options fail fast and the same way
/// whatever the source holds.
pub fn check(shape: Shape) -> Result<(), ScheduleError> {
    match shape.pace {
        Pace::Original { speed } if !(speed.is_finite() && speed > 0.0) => {
            return Err(ScheduleError::BadSpeed(speed));
        }
        Pace::Rate { per_second } if !(per_second.is_finite() && per_second > 0.0) => {
            return Err(ScheduleError::BadRate(per_second));
        }
        _ => {}
    }
    if shape.loops == 0 {
        return Err(ScheduleError::BadLoops(shape.loops));
    }
    if !(1..=MAX_COPIES).contains(&shape.copies) {
        return Err(ScheduleError::BadCopies(shape.copies));
    }
    Ok(())
}

/// When each request is due, fed the requests in recorded order, one pass (loop) after the
/// other. Copies share their due times, so N copies send N times the traffic with the same
/// shape over time (at a fixed rate, the rate is per copy).
///
/// Every agent of a sharded replay plans the whole recording and sends its share, so the
/// shares' due times are the ones of one replay: the first request, the span of a pass and
/// the count behind a fixed rate are the recording's, not the share's.
#[derive(Clone, Debug)]
pub struct Planner {
    shape: Shape,
    iteration: u32,
    /// Capture times of the first and last requests of the first pass.
    first_ts: Option<u64>,
    last_ts: u64,
    /// Span of a pass (ns), known once the first pass is over.
    span_ns: Option<u64>,
    /// Requests planned so far, all passes.
    count: u64,
}

impl Planner {
    pub fn new(shape: Shape) -> Result<Self, ScheduleError> {
        check(shape)?;
        Ok(Self {
            shape,
            iteration: 0,
            first_ts: None,
            last_ts: 0,
            span_ns: None,
            count: 0,
        })
    }

    /// The shape it plans.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The pass that follows the one just planned.
    pub fn next_pass(&mut self) {
        if self.span_ns.is_none() {
            let first = self.first_ts.unwrap_or(self.last_ts);
            self.span_ns = Some(self.last_ts.saturating_sub(first));
        }
        self.iteration += 1;
    }

    /// The pass being planned (0-based).
    pub fn iteration(&self) -> u32 {
        self.iteration
    }

    /// When the next request, captured at `ts_ns`, is due from the start of the replay.
    pub fn due(&mut self, ts_ns: u64) -> Duration {
        let index = self.count;
        self.count += 1;
        if self.span_ns.is_none() {
            self.first_ts.get_or_insert(ts_ns);
            self.last_ts = self.last_ts.max(ts_ns);
        }
        match self.shape.pace {
            Pace::Original { speed } => {
                let first = self.first_ts.unwrap_or(ts_ns);
                // Loops follow each other back to back.
                let offset = ts_ns.saturating_sub(first) as f64
                    + f64::from(self.iteration) * self.span_ns.unwrap_or(0) as f64;
                duration_from_secs(offset / speed / 1e9)
            }
            Pace::Rate { per_second } => duration_from_secs(index as f64 / per_second),
            Pace::Max => Duration::ZERO,
        }
    }

    /// The replay connections a request of recorded connection `recorded` goes over in this
    /// pass: one per copy.
    pub fn conns(&self, recorded: u64) -> impl Iterator<Item = ReplayConn> + use<> {
        let iteration = self.iteration;
        (0..self.shape.copies).map(move |copy| ReplayConn {
            copy,
            iteration,
            recorded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded request as the tests give it.
    #[derive(Clone, Copy)]
    struct Recorded {
        conn: u64,
        ts_ns: u64,
    }

    /// One planned send, as the tests look at it.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Planned {
        index: usize,
        conn: ReplayConn,
        due: Duration,
    }

    /// Plans every pass over `requests` the way the replay feeds the planner.
    fn plan(requests: &[Recorded], shape: Shape) -> Result<Vec<Planned>, ScheduleError> {
        let mut planner = Planner::new(shape)?;
        let mut out = Vec::new();
        for iteration in 0..shape.loops {
            if iteration > 0 {
                planner.next_pass();
            }
            for (index, r) in requests.iter().enumerate() {
                let due = planner.due(r.ts_ns);
                out.extend(
                    planner
                        .conns(r.conn)
                        .map(|conn| Planned { index, conn, due }),
                );
            }
        }
        Ok(out)
    }

    fn reqs(ts_ms: &[(u64, u64)]) -> Vec<Recorded> {
        ts_ms
            .iter()
            .map(|&(conn, ms)| Recorded {
                conn,
                ts_ns: 1_000_000_000_000 + ms * 1_000_000,
            })
            .collect()
    }

    fn shape(pace: Pace, loops: u32, copies: u32) -> Shape {
        Shape {
            pace,
            loops,
            copies,
        }
    }

    fn once(pace: Pace) -> Shape {
        shape(pace, 1, 1)
    }

    fn dues(plan: &[Planned]) -> Vec<u128> {
        plan.iter().map(|p| p.due.as_millis()).collect()
    }

    #[test]
    fn original_pace_keeps_inter_arrival_times_scaled_by_speed() {
        let r = reqs(&[(1, 0), (2, 100), (1, 400)]);
        assert_eq!(
            dues(&plan(&r, once(Pace::Original { speed: 1.0 })).unwrap()),
            vec![0, 100, 400]
        );
        assert_eq!(
            dues(&plan(&r, once(Pace::Original { speed: 2.0 })).unwrap()),
            vec![0, 50, 200]
        );
        assert_eq!(
            dues(&plan(&r, once(Pace::Original { speed: 0.5 })).unwrap()),
            vec![0, 200, 800]
        );
    }

    #[test]
    fn loops_follow_back_to_back_on_their_own_connections() {
        let r = reqs(&[(7, 0), (7, 300)]);
        let p = plan(&r, shape(Pace::Original { speed: 1.0 }, 2, 1)).unwrap();
        assert_eq!(dues(&p), vec![0, 300, 300, 600]);
        let conn = |iteration| ReplayConn {
            copy: 0,
            iteration,
            recorded: 7,
        };
        assert_eq!(p[1].conn, conn(0));
        assert_eq!(p[2].conn, conn(1));
        assert_eq!(p.iter().filter(|x| x.conn.iteration == 1).count(), 2);
    }

    #[test]
    fn fixed_rate_spaces_requests_evenly_whatever_was_recorded() {
        let r = reqs(&[(1, 0), (2, 0), (3, 5000), (4, 5001)]);
        let p = plan(&r, shape(Pace::Rate { per_second: 200.0 }, 2, 1)).unwrap();
        assert_eq!(dues(&p), vec![0, 5, 10, 15, 20, 25, 30, 35]);
    }

    #[test]
    fn max_pace_makes_everything_due_at_once_in_recorded_order() {
        let r = reqs(&[(1, 50), (1, 10), (2, 0)]);
        let p = plan(&r, once(Pace::Max)).unwrap();
        assert!(p.iter().all(|x| x.due == Duration::ZERO));
        assert_eq!(p.iter().map(|x| x.index).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn bad_paces_are_refused_with_the_flag_named() {
        let r = reqs(&[(1, 0)]);
        for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = plan(&r, once(Pace::Original { speed })).unwrap_err();
            assert!(err.to_string().contains("--speed"));
        }
        assert!(
            plan(&r, once(Pace::Rate { per_second: 0.0 }))
                .unwrap_err()
                .to_string()
                .contains("--rate")
        );
        assert!(
            plan(&r, shape(Pace::Max, 0, 1))
                .unwrap_err()
                .to_string()
                .contains("--loop")
        );
        assert_eq!(plan(&[], once(Pace::Max)).unwrap(), vec![]);
    }

    /// (copy, iteration, recorded connection) of each send.
    fn conns(plan: &[Planned]) -> Vec<(u32, u32, u64)> {
        plan.iter()
            .map(|p| (p.conn.copy, p.conn.iteration, p.conn.recorded))
            .collect()
    }

    #[test]
    fn copies_share_the_recorded_times_each_on_connections_of_its_own() {
        let r = reqs(&[(1, 0), (2, 100), (1, 400)]);
        let p = plan(&r, shape(Pace::Original { speed: 1.0 }, 1, 3)).unwrap();
        assert_eq!(dues(&p), vec![0, 0, 0, 100, 100, 100, 400, 400, 400]);
        assert_eq!(
            conns(&p),
            vec![
                (0, 0, 1),
                (1, 0, 1),
                (2, 0, 1),
                (0, 0, 2),
                (1, 0, 2),
                (2, 0, 2),
                (0, 0, 1),
                (1, 0, 1),
                (2, 0, 1),
            ]
        );
        assert_eq!(
            p.iter().map(|x| x.index).collect::<Vec<_>>(),
            vec![0, 0, 0, 1, 1, 1, 2, 2, 2]
        );
        // Each copy, alone, is exactly the plan without copies.
        let single = plan(&r, once(Pace::Original { speed: 1.0 })).unwrap();
        for copy in 0..3 {
            let mine: Vec<(usize, Duration, u64)> = p
                .iter()
                .filter(|x| x.conn.copy == copy)
                .map(|x| (x.index, x.due, x.conn.recorded))
                .collect();
            let expected: Vec<(usize, Duration, u64)> = single
                .iter()
                .map(|x| (x.index, x.due, x.conn.recorded))
                .collect();
            assert_eq!(mine, expected, "copy {copy}");
        }
    }

    #[test]
    fn copies_combine_with_speed_loops_rate_and_max() {
        let r = reqs(&[(1, 0), (2, 100), (1, 400)]);
        let p = plan(&r, shape(Pace::Original { speed: 2.0 }, 1, 2)).unwrap();
        assert_eq!(dues(&p), vec![0, 0, 50, 50, 200, 200]);
        // Two loops of two copies: 12 sends on 2 copies x 2 loops x 2 recorded connections.
        let p = plan(&r, shape(Pace::Original { speed: 1.0 }, 2, 2)).unwrap();
        assert_eq!(p.len(), 12);
        assert_eq!(
            dues(&p),
            vec![0, 0, 100, 100, 400, 400, 400, 400, 500, 500, 800, 800]
        );
        let distinct: std::collections::HashSet<ReplayConn> = p.iter().map(|x| x.conn).collect();
        assert_eq!(distinct.len(), 8);
        for copy in 0..2 {
            for iteration in 0..2 {
                let n = p
                    .iter()
                    .filter(|x| x.conn.copy == copy && x.conn.iteration == iteration)
                    .count();
                assert_eq!(n, 3, "copy {copy} loop {iteration}");
            }
        }
        // A fixed rate is per copy: 2 copies at 10/s send 20/s.
        let p = plan(&r, shape(Pace::Rate { per_second: 10.0 }, 1, 2)).unwrap();
        assert_eq!(dues(&p), vec![0, 0, 100, 100, 200, 200]);
        let p = plan(&r, shape(Pace::Max, 1, 4)).unwrap();
        assert_eq!(p.len(), 12);
        assert!(p.iter().all(|x| x.due == Duration::ZERO));
    }

    #[test]
    fn copy_counts_outside_1_to_1000_are_refused_with_the_flag_named() {
        let r = reqs(&[(1, 0)]);
        for copies in [0, MAX_COPIES + 1] {
            let err = plan(&r, shape(Pace::Max, 1, copies)).unwrap_err();
            assert_eq!(err, ScheduleError::BadCopies(copies));
            assert!(
                err.to_string()
                    .starts_with("--copies must be between 1 and 1000")
            );
        }
        assert_eq!(
            plan(&r, shape(Pace::Max, 1, MAX_COPIES)).unwrap().len(),
            1000
        );
    }
}
