//! Helpers shared by the integration tests: where the `capture` binary is, where the shared
//! pcaps are, and running commands with clear failures.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// The `capture` binary under test: `$CAPTURE_BIN` if set, else `target/debug/capture`
/// (`cargo xtask test` builds it before running the tests).
pub fn capture_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CAPTURE_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let bin = target.join("debug").join("capture");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p capture-user` or run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// The shared real-world captures: `$CAPTURE_PCAPS_DIR` if set, else
/// `../shared/pcaps/zeek-http` next to the repository, else `/work/shared/pcaps/zeek-http`
/// (where the shared folder lives on this machine kind, for clones made elsewhere).
pub fn zeek_pcaps_dir() -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CAPTURE_PCAPS_DIR") {
        candidates.push(PathBuf::from(dir));
    }
    if let Some(parent) = workspace_root().parent() {
        candidates.push(parent.join("shared/pcaps/zeek-http"));
    }
    candidates.push(PathBuf::from("/work/shared/pcaps/zeek-http"));
    match candidates.iter().find(|d| d.is_dir()) {
        Some(dir) => dir.clone(),
        None => {
            panic!("the shared pcaps are missing; looked in {candidates:?} (set CAPTURE_PCAPS_DIR)")
        }
    }
}

/// Runs a command to completion and fails with its stderr when it exits non-zero.
pub fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Counts of each distinct item: comparing request lists as multisets ignores the order in
/// which concurrent connections interleave.
pub fn multiset<T: std::hash::Hash + Eq>(
    items: impl IntoIterator<Item = T>,
) -> std::collections::HashMap<T, usize> {
    let mut m = std::collections::HashMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// wrk script: every request gets a URI of its own (thread id and counter), and every third is
/// a POST to nginx's /upload with a body, so comparisons are request for request rather than
/// counts of identical lines.
pub const WRK_UNIQUE_URIS_SCRIPT: &str = r#"
local next_id = 0
setup = function(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
end
local n = 0
request = function()
  n = n + 1
  if n % 3 == 0 then
    return wrk.format("POST", "/upload?t=" .. tid .. "&n=" .. n, nil, string.rep("p", n % 2000))
  end
  return wrk.format("GET", "/index.html?t=" .. tid .. "&n=" .. n)
end
"#;

/// Runs a Python script (a reference parser or validator) with `input` on its stdin; its
/// output, whether or not it succeeded.
pub fn python_with_stdin(script: &str, input: &[u8]) -> Result<Output> {
    use std::io::Write as _;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running python3")?;
    child
        .stdin
        .take()
        .context("python3's stdin")?
        .write_all(input)?;
    Ok(child.wait_with_output()?)
}

pub mod agent;
pub mod broker;
pub mod capture;
pub mod chromium;
pub mod netns;
pub mod nginx;
pub mod pki;
pub mod process;
pub mod replay;
pub mod synth;
pub mod tls;

/// The bytes after the head of the first message in `file` that starts with `request_line`
/// (e.g. a request's body inside a GoReplay export), up to the end of the file.
pub fn bytes_after_head<'a>(file: &'a [u8], request_line: &[u8]) -> Result<&'a [u8]> {
    let start = file
        .windows(request_line.len())
        .position(|w| w == request_line)
        .with_context(|| format!("no {:?} in the file", String::from_utf8_lossy(request_line)))?;
    let head_end = file[start..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the message head does not end")?
        + start
        + 4;
    Ok(&file[head_end..])
}
