//! Which processes the TLS watcher reads the maps of on each tick. Reading every process's
//! maps every second would cost a busy node too much, and reading a process once misses the
//! common ways libssl arrives after a process appears: a container entrypoint that execs
//! its app (`sh -c "exec app"`, `unshare ... exec`: same pid, new program) and a program that
//! imports or `dlopen`s its TLS library a moment after it starts. So a process is looked at
//! when it appears, again 1, 2, 4 and 8 ticks later, afresh whenever its executable changes
//! (an exec), and at every full rescan. The executable is read only while a process is young
//! (execs follow forks closely) and at full rescans, so a quiet node's thousands of old
//! processes cost a directory listing per tick. Sans-IO: fed pids and a way to read a
//! process's executable, it answers pids.

use std::collections::HashMap;
use std::path::PathBuf;

/// Ticks after a process appears (or execs) at which its maps are read again.
pub const RECHECK_AFTER: [u32; 4] = [1, 2, 4, 8];

/// Every this many ticks every process is looked at (libssl loaded long after start).
pub const FULL_RESCAN_EVERY: u32 = 10;

/// What the schedule keeps per live process.
#[derive(Debug)]
struct Tracked {
    /// `/proc/PID/exe` when last seen; a change means the pid now runs another program.
    executable: Option<PathBuf>,
    /// The tick it appeared or last exec'd at.
    since: u32,
    /// How many of [`RECHECK_AFTER`] are done.
    rechecks: usize,
}

/// The watcher's schedule of which processes to look at.
#[derive(Debug, Default)]
pub struct ProcessSchedule {
    tick: u32,
    tracked: HashMap<u32, Tracked>,
}

impl ProcessSchedule {
    /// A schedule that knows the processes capture looked at when it started (tick 0), so
    /// they are looked at again on the recheck ticks, not at once.
    pub fn new(looked_at: impl IntoIterator<Item = (u32, Option<PathBuf>)>) -> Self {
        let tracked = looked_at
            .into_iter()
            .map(|(pid, executable)| (pid, Tracked::since(0, executable)))
            .collect();
        Self { tick: 0, tracked }
    }

    /// One tick: `live` is every process now; `executable` reads one's `/proc/PID/exe`
    /// (asked only of new and young processes, and of all at a full rescan). The answer is
    /// the pids whose maps to read. Processes not in `live` are forgotten.
    pub fn tick(
        &mut self,
        live: impl IntoIterator<Item = u32>,
        mut executable: impl FnMut(u32) -> Option<PathBuf>,
    ) -> Vec<u32> {
        self.tick += 1;
        let tick = self.tick;
        let full = tick.is_multiple_of(FULL_RESCAN_EVERY);
        let mut due = Vec::new();
        let mut still = HashMap::with_capacity(self.tracked.len());
        for pid in live {
            let Some(mut t) = self.tracked.remove(&pid) else {
                due.push(pid);
                still.insert(pid, Tracked::since(tick, executable(pid)));
                continue;
            };
            let young = t.rechecks < RECHECK_AFTER.len();
            if young || full {
                let now = executable(pid);
                if now != t.executable {
                    // An exec: looked at now, then on the recheck ticks from here.
                    due.push(pid);
                    still.insert(pid, Tracked::since(tick, now));
                    continue;
                }
            }
            let age = tick - t.since;
            let mut recheck = false;
            while t.rechecks < RECHECK_AFTER.len() && RECHECK_AFTER[t.rechecks] <= age {
                t.rechecks += 1;
                recheck = true;
            }
            if recheck || full {
                due.push(pid);
            }
            still.insert(pid, t);
        }
        self.tracked = still;
        due
    }
}

impl Tracked {
    fn since(tick: u32, executable: Option<PathBuf>) -> Self {
        Self {
            executable,
            since: tick,
            rechecks: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(name: &str) -> Option<PathBuf> {
        Some(PathBuf::from(name))
    }

    /// The ticks (1..=`ticks`) on which `pid` is due, with `program` giving its executable
    /// on each tick (`None` when it is gone, `Some(None)` when unreadable).
    fn due_ticks(
        schedule: &mut ProcessSchedule,
        pid: u32,
        ticks: u32,
        program: impl Fn(u32) -> Option<Option<PathBuf>>,
    ) -> Vec<u32> {
        (1..=ticks)
            .filter(|&t| {
                let Some(now) = program(t) else {
                    return !schedule.tick([], |_| unreachable!()).is_empty();
                };
                schedule.tick([pid], |_| now.clone()).contains(&pid)
            })
            .collect()
    }

    #[test]
    fn a_new_process_is_looked_at_when_it_appears_then_backs_off_to_the_full_rescans() {
        let mut s = ProcessSchedule::default();
        let due = due_ticks(&mut s, 7, 30, |t| (t >= 3).then(|| exe("/usr/bin/app")));
        assert_eq!(due, vec![3, 4, 5, 7, 10, 11, 20, 30]);
    }

    #[test]
    fn processes_seen_at_start_are_rechecked_without_a_first_look() {
        let mut s = ProcessSchedule::new([(7, exe("/usr/bin/app"))]);
        let due = due_ticks(&mut s, 7, 20, |_| Some(exe("/usr/bin/app")));
        assert_eq!(due, vec![1, 2, 4, 8, 10, 20]);
    }

    #[test]
    fn an_exec_restarts_the_schedule_under_the_same_pid() {
        // unshare, then sh, then python: one pid, three programs.
        let mut s = ProcessSchedule::default();
        let program = |t: u32| match t {
            1 => exe("/usr/bin/unshare"),
            2..=3 => exe("/usr/bin/dash"),
            _ => exe("/usr/bin/python3"),
        };
        let due = due_ticks(&mut s, 9, 20, |t| Some(program(t)));
        assert_eq!(due, vec![1, 2, 3, 4, 5, 6, 8, 10, 12, 20]);
    }

    #[test]
    fn an_old_process_that_execs_is_seen_at_the_next_full_rescan() {
        let mut s = ProcessSchedule::default();
        let program = |t: u32| {
            if t < 12 {
                exe("/bin/old")
            } else {
                exe("/bin/new")
            }
        };
        let due = due_ticks(&mut s, 3, 25, |t| Some(program(t)));
        // Old by tick 9; the exec at 12 is found by the rescan at 20, which restarts the
        // schedule (21, 22, 24) before the rescan at 30.
        assert_eq!(due, vec![1, 2, 3, 5, 9, 10, 20, 21, 22, 24]);
    }

    #[test]
    fn a_pid_that_goes_and_comes_back_is_a_new_process() {
        let mut s = ProcessSchedule::default();
        let due = due_ticks(&mut s, 5, 12, |t| (t != 6).then(|| exe("/bin/x")));
        // Seen at 1, rechecked at 2, 3, 5; gone at 6; new at 7, rechecked at 8, 9, 11.
        assert_eq!(due, vec![1, 2, 3, 5, 7, 8, 9, 10, 11]);
    }

    #[test]
    fn an_unreadable_executable_is_tracked_like_any_other() {
        // Kernel threads and processes that exit mid-read have no readable exe.
        let mut s = ProcessSchedule::default();
        let due = due_ticks(&mut s, 2, 10, |_| Some(None));
        assert_eq!(due, vec![1, 2, 3, 5, 9, 10]);
    }

    #[test]
    fn rechecks_that_fell_due_while_the_watcher_was_late_take_one_look() {
        let mut s = ProcessSchedule::new([(1, None)]);
        s.tick = 5; // as if ticks 1..=5 passed while the watcher was busy
        assert_eq!(
            s.tick([1], |_| None),
            vec![1],
            "one look covers the missed rechecks"
        );
        assert_eq!(s.tracked[&1].rechecks, 3);
        assert!(s.tick([1], |_| None).is_empty());
        assert_eq!(s.tick([1], |_| None), vec![1], "tick 8: the last recheck");
    }

    #[test]
    fn old_processes_cost_no_reads_between_full_rescans() {
        let pids = 0..1000u32;
        let mut s = ProcessSchedule::new(pids.clone().map(|p| (p, None)));
        let (mut looks, mut exe_reads) = (0, 0);
        for _ in 1..=19 {
            looks += s
                .tick(pids.clone(), |_| {
                    exe_reads += 1;
                    None
                })
                .len();
        }
        // Maps: 4 rechecks and the rescan at 10, not 19 looks each. Executables: while
        // young (ticks 1..=8) and at the rescan, not on ticks 11..=19.
        assert_eq!(looks, 5000);
        assert_eq!(exe_reads, 9000);
    }
}
