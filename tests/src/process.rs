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

/// Runs `cmd` to its end and reads its peak RSS from the kernel (wait4's rusage); `ip netns
/// exec` execs the program in place, so the pid is the program's.
pub fn run_measured(cmd: &mut Command) -> Result<Measured> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut err = child.stderr.take().context("stderr")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut stderr = String::new();
    err.read_to_string(&mut stderr)?;
    let stdout = reader.join().unwrap_or_default();
    let mut status = 0;
    // SAFETY: plain syscall on our own child, with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    ensure!(pid > 0, "wait4 failed: {}", std::io::Error::last_os_error());
    Ok(Measured {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout,
        stderr,
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}
