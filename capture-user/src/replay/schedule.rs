//! When each recorded request is due, relative to the start of the replay. Sans-IO: a pure
//! function of the recorded timestamps and the pace, so timing is tested without clocks.
//!
//! Connection fidelity is the engine's job (a recorded connection's requests go over one
//! connection, in order); the plan only says when a request may be sent at the earliest.

use std::time::Duration;

/// How fast to replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// The recorded inter-arrival times divided by `speed` (2.0 = twice as fast).
    Original { speed: f64 },
    /// A fixed rate of requests per second, in recorded order.
    Rate { per_second: f64 },
    /// As fast as the connections allow.
    Max,
}

/// Why a pace cannot be used.
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
}

/// A recorded request as the planner needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// Recorded connection.
    pub conn: u64,
    /// Capture time of its first byte (ns).
    pub ts_ns: u64,
}

/// One planned send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Index into the recorded requests.
    pub index: usize,
    /// Which loop (0-based) this send belongs to.
    pub iteration: u32,
    /// The connection it goes over: recorded connection within one iteration.
    pub conn: (u32, u64),
    /// Earliest send time, from the start of the replay.
    pub due: Duration,
}

fn duration_from_secs(secs: f64) -> Duration {
    Duration::from_secs_f64(secs.max(0.0))
}

/// Checks a pace and loop count before anything is read, so bad options fail fast and the
/// same way whatever the source holds.
pub fn check(pace: Pace, loops: u32) -> Result<(), ScheduleError> {
    match pace {
        Pace::Original { speed } if !(speed.is_finite() && speed > 0.0) => {
            return Err(ScheduleError::BadSpeed(speed));
        }
        Pace::Rate { per_second } if !(per_second.is_finite() && per_second > 0.0) => {
            return Err(ScheduleError::BadRate(per_second));
        }
        _ => {}
    }
    if loops == 0 {
        return Err(ScheduleError::BadLoops(loops));
    }
    Ok(())
}

/// Plans `loops` passes over `requests` (in recorded order) at `pace`, sorted by due time
/// (ties keep recorded order).
pub fn plan(requests: &[Recorded], pace: Pace, loops: u32) -> Result<Vec<Planned>, ScheduleError> {
    check(pace, loops)?;
    let first = requests.iter().map(|r| r.ts_ns).min().unwrap_or(0);
    let last = requests.iter().map(|r| r.ts_ns).max().unwrap_or(0);
    let span_ns = (last - first) as f64;
    let mut out = Vec::with_capacity(requests.len() * loops as usize);
    for iteration in 0..loops {
        for (index, r) in requests.iter().enumerate() {
            let due = match pace {
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
            out.push(Planned {
                index,
                iteration,
                conn: (iteration, r.conn),
                due,
            });
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

    fn dues(plan: &[Planned]) -> Vec<u128> {
        plan.iter().map(|p| p.due.as_millis()).collect()
    }

    #[test]
    fn original_pace_keeps_inter_arrival_times_scaled_by_speed() {
        let r = reqs(&[(1, 0), (2, 100), (1, 400)]);
        assert_eq!(
            dues(&plan(&r, Pace::Original { speed: 1.0 }, 1).unwrap()),
            vec![0, 100, 400]
        );
        assert_eq!(
            dues(&plan(&r, Pace::Original { speed: 2.0 }, 1).unwrap()),
            vec![0, 50, 200]
        );
        assert_eq!(
            dues(&plan(&r, Pace::Original { speed: 0.5 }, 1).unwrap()),
            vec![0, 200, 800]
        );
    }

    #[test]
    fn loops_follow_back_to_back_on_their_own_connections() {
        let r = reqs(&[(7, 0), (7, 300)]);
        let p = plan(&r, Pace::Original { speed: 1.0 }, 2).unwrap();
        assert_eq!(dues(&p), vec![0, 300, 300, 600]);
        assert_eq!(p[1].conn, (0, 7));
        assert_eq!(p[2].conn, (1, 7));
        assert_eq!(p.iter().filter(|x| x.iteration == 1).count(), 2);
    }

    #[test]
    fn fixed_rate_spaces_requests_evenly_whatever_was_recorded() {
        let r = reqs(&[(1, 0), (2, 0), (3, 5000), (4, 5001)]);
        let p = plan(&r, Pace::Rate { per_second: 200.0 }, 2).unwrap();
        assert_eq!(dues(&p), vec![0, 5, 10, 15, 20, 25, 30, 35]);
    }

    #[test]
    fn max_pace_makes_everything_due_at_once_in_recorded_order() {
        let r = reqs(&[(1, 50), (1, 10), (2, 0)]);
        let p = plan(&r, Pace::Max, 1).unwrap();
        assert!(p.iter().all(|x| x.due == Duration::ZERO));
        assert_eq!(p.iter().map(|x| x.index).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn bad_paces_are_refused_with_the_flag_named() {
        let r = reqs(&[(1, 0)]);
        for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = plan(&r, Pace::Original { speed }, 1).unwrap_err();
            assert!(err.to_string().contains("--speed"));
        }
        assert!(
            plan(&r, Pace::Rate { per_second: 0.0 }, 1)
                .unwrap_err()
                .to_string()
                .contains("--rate")
        );
        assert!(
            plan(&r, Pace::Max, 0)
                .unwrap_err()
                .to_string()
                .contains("--loop")
        );
        assert_eq!(plan(&[], Pace::Max, 1).unwrap(), vec![]);
    }
}
