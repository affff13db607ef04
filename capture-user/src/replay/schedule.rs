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

/// A recorded request as the planner needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Recorded connection.
    pub conn: u64,
    /// Capture time of its first byte (ns).
    pub ts_ns: u64,
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

/// One planned send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Index into the recorded requests.
    pub index: usize,
    /// The connection it goes over.
    pub conn: ReplayConn,
    /// Earliest send time, from the start of the replay.
    pub due: Duration,
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

/// Plans `loops` passes over `requests` (in recorded order) at `pace`, each pass `copies`
/// times at once, sorted by due time. Copies share their due times, so N copies send N times
/// the traffic with the same shape over time (at a fixed rate, the rate is per copy). Ties
/// keep recorded order, copies of one request next to each other.
pub fn plan(requests: &[Recorded], shape: Shape) -> Result<Vec<Planned>, ScheduleError> {
    check(shape)?;
    let first = requests.iter().map(|r| r.ts_ns).min().unwrap_or(0);
    let last = requests.iter().map(|r| r.ts_ns).max().unwrap_or(0);
    let span_ns = (last - first) as f64;
    let sends = requests.len() * shape.loops as usize * shape.copies as usize;
    let mut out = Vec::with_capacity(sends);
    for iteration in 0..shape.loops {
        for (index, r) in requests.iter().enumerate() {
            let due = match shape.pace {
                Pace::Original { speed } => {
                    // Loops follow each other back to back.
                    let offset = (r.ts_ns - first) as f64 + f64::from(iteration) * span_ns;
                    duration_from_secs(offset / speed / 1e9)
                }
                Pace::Rate { per_second } => {
                    let n = iteration as usize * requests.len() + index;
                    duration_from_secs(n as f64 / per_second)
                }
                Pace::Max => Duration::ZERO,
            };
            out.extend((0..shape.copies).map(|copy| Planned {
                index,
                conn: ReplayConn {
                    copy,
                    iteration,
                    recorded: r.conn,
                },
                due,
            }));
        }
    }
    // Stable: equal due times keep recorded order, so a connection's requests stay in order.
    out.sort_by_key(|p| p.due);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
