//! Running `capture replay` in a test topology and reading what reached nginx: the helpers the
//! replay test files share.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use capture_user::files::gor::{GorPayload, write_payload};
use serde_json::Value;

use crate::netns::Topology;
use crate::nginx::{AccessLogEntry, Nginx};
use crate::{capture_bin, run_ok};

/// Runs `capture ARGS --data-dir DIR` on the host (imports, inspections).
pub fn capture_in(data_dir: &Path, args: &[&str]) -> Result<Output> {
    run_ok(
        Command::new(capture_bin())
            .args(args)
            .arg("--data-dir")
            .arg(data_dir),
    )
}

/// `capture replay ARGS --json --quiet --data-dir DIR` run in the client namespace.
fn replay_output(topo: &Topology, data_dir: &Path, args: &[&str]) -> Result<Output> {
    topo.client(&capture_bin().to_string_lossy())
        .arg("replay")
        .args(args)
        .args(["--json", "--quiet", "--data-dir"])
        .arg(data_dir)
        .output()
        .context("running capture replay")
}

/// Runs `capture replay ARGS --json --quiet` in the client namespace; returns its exit
/// status success, the JSON summary and stderr.
pub fn replay(topo: &Topology, data_dir: &Path, args: &[&str]) -> Result<(bool, Value, String)> {
    let out = replay_output(topo, data_dir, args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let summary: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "replay printed no JSON summary; stdout:\n{}\nstderr:\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok((out.status.success(), summary, stderr))
}

/// `http://SERVER:PORT`: the server host of `topo`.
pub fn target(topo: &Topology, port: u16) -> String {
    format!("http://{}:{port}", topo.server_ip)
}

/// A count in a JSON summary; panics naming the field when it is missing.
pub fn json_count(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// Asserts that the first error text the summary gives for failures of `kind` contains
/// `words`.
pub fn assert_detail(summary: &Value, kind: &str, words: &str) {
    let detail = summary["failure_details"][kind]
        .as_str()
        .unwrap_or_default();
    assert!(detail.contains(words), "{kind}: {words:?} not in {summary}");
}

/// Access log entries from index `from` on, waiting briefly for nginx to write them all.
pub fn log_from(nginx: &Nginx, from: usize, expect: usize) -> Result<Vec<AccessLogEntry>> {
    for _ in 0..50 {
        let log = nginx.access_log()?;
        if log.len() >= from + expect {
            return Ok(log[from..].to_vec());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(nginx.access_log()?.get(from..).unwrap_or_default().to_vec())
}

/// Writes a GoReplay file: each request (with a recorded 200 response) at its time offset in
/// milliseconds.
pub fn write_gor(path: &Path, requests: &[(u64, String)]) -> Result<()> {
    write_gor_from(path, requests.iter().cloned())
}

/// A GoReplay file of `n` GETs of unique URIs (`/index.html?g=N`), 1 ms apart.
pub fn write_round_robin_gor(path: &Path, n: u64) -> Result<()> {
    write_gor_from(
        path,
        (0..n).map(|i| (i, get(&format!("/index.html?g={i}"), ""))),
    )
}

/// [`write_gor`] for requests as they come, written as they come.
pub fn write_gor_from(path: &Path, requests: impl Iterator<Item = (u64, String)>) -> Result<()> {
    use std::io::Write as _;
    let base = 1_700_000_000_000_000_000u64;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (i, (offset_ms, request)) in requests.enumerate() {
        let id = format!("{i:024x}");
        let ts = base + offset_ms * 1_000_000;
        write_payload(
            &mut out,
            &GorPayload {
                kind: 1,
                id: id.as_str().into(),
                ts_ns: ts,
                latency_ns: 0,
                bytes: Bytes::from(request),
            },
        )?;
        write_payload(
            &mut out,
            &GorPayload {
                kind: 2,
                id: id.into(),
                ts_ns: ts + 1_000_000,
                latency_ns: 1_000_000,
                bytes: Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            },
        )?;
    }
    out.flush()?;
    Ok(())
}

/// A GET of `uri` with a Host and a User-Agent, and `extra_headers` (each line ending in CR LF).
pub fn get(uri: &str, extra_headers: &str) -> String {
    format!("GET {uri} HTTP/1.1\r\nHost: origin.example\r\nUser-Agent: test\r\n{extra_headers}\r\n")
}

/// Runs `capture replay ARGS --json --quiet` in the client namespace expecting it to be
/// refused before anything is sent: asserts a non-zero exit and no summary; returns stderr.
pub fn replay_refused(topo: &Topology, data_dir: &Path, args: &[&str]) -> Result<String> {
    let out = replay_output(topo, data_dir, args)?;
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    anyhow::ensure!(
        !out.status.success() && out.stdout.is_empty(),
        "replay {args:?} was not refused; stdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(stderr)
}
