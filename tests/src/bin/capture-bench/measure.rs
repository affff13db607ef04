//! Measuring helpers the benchmarks share: the kernel's eBPF accounting, a process's CPU
//! time, and wrk's summary.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result};
use tests::run_ok;

/// Restores `kernel.bpf_stats_enabled` when dropped.
pub struct BpfStats(String);

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .context("reading kernel.bpf_stats_enabled")?;
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// run_time_ns and run_cnt per program name, from the capture process's fdinfo.
pub fn program_stats(pid: i32) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut stats = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(ns), Some(cnt)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        let out = run_ok(Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]))?;
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        let name = line
            .split_whitespace()
            .skip_while(|w| *w != "name")
            .nth(1)
            .unwrap_or("?")
            .to_string();
        stats.insert(name, (ns, cnt));
    }
    Ok(stats)
}

/// CPU time (user + system) of a process in seconds.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / clock_ticks())
}

/// Requests per second in wrk's output.
pub fn wrk_requests_per_second(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Clock ticks per second, the unit of /proc/stat and /proc/PID/stat.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// Busy time of all CPUs together since boot, in clock ticks: every field of /proc/stat's
/// `cpu` line except idle and iowait (guest time is already inside user and nice).
pub fn node_busy_ticks() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().context("a /proc/stat field"))
        .collect::<Result<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    if f.len() < 8 {
        anyhow::bail!("short cpu line in /proc/stat: {line:?}");
    }
    Ok(f[0] + f[1] + f[2] + f[5] + f[6] + f[7])
}

/// run_time_ns summed over the distinct BPF programs process `pid` holds (the kernel counts
/// only while `kernel.bpf_stats_enabled` is 1, see [`BpfStats`]).
pub fn ebpf_run_ns(pid: i32) -> Result<u64> {
    let mut per_prog = BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(ns)) = (field("prog_id:"), field("run_time_ns:")) {
            per_prog.insert(id, ns);
        }
    }
    Ok(per_prog.values().sum())
}
