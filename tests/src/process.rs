//! Running a program to its end and learning what it cost: its output, its exit, and its peak
//! resident memory as the kernel counted it.

use std::io::Read;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, ensure};

/// A finished process: its output and its peak resident memory.
pub struct Measured {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    pub peak_rss_mib: f64,
}

/// Runs `cmd` to its end and reads its peak RSS: the kernel's high-water mark of the
/// program's memory (VmHWM), read every 10 ms until it exits. (wait4's ru_maxrss would do, but
/// the kernel carries into it the RSS of the image the child was forked from, here the test
/// process.) `ip netns exec` execs the program in place, so the pid is the program's.
pub fn run_measured(cmd: &mut Command) -> Result<Measured> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(kib) = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| high_water_kib(&s))
        {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    ensure!(peak_kib > 0, "never read the memory of {cmd:?}");
    Ok(Measured {
        ok: status.success(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        peak_rss_mib: peak_kib as f64 / 1024.0,
    })
}

/// The `VmHWM:` line of /proc/PID/status, in KiB.
fn high_water_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
