//! `capture import` and `capture export` of a GoReplay file of 2,000,000 messages (1,000,000
//! requests with unique URIs, some POST bodies, and their responses) keep memory bounded by
//! configuration, not by the file: each process peaks below 150 MiB RSS, the recording holds
//! every message, and the exported file holds exactly the requests that went in (multiset of
//! method, URI and body digest).
//!
//! Peak RSS is the program's VmHWM, read while it runs (`tests::process::run_measured`). The
//! file is generated as a stream, and the test still checks its own peak is far below the
//! bound.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use capture_user::files::gor::{GorPayload, write_payload};
use tests::{capture_bin, multiset};

/// Requests in the file; each has one response, so the file holds twice as many messages.
const REQUESTS: u64 = 1_000_000;
/// The bound both processes must stay under.
const PEAK_RSS_LIMIT_KIB: u64 = 150 * 1024;
/// A response is written this many requests after its request, so pairing is exercised
/// across payloads rather than always with the one before.
const RESPONSE_LAG: u64 = 5;
/// GoReplay's payload separator.
const SEPARATOR: &[u8] = "\n🐵🙈🙉\n".as_bytes();

/// Request `i`: every third a POST with a body of its own (1 to 300 bytes), the rest GETs.
fn request(i: u64) -> (&'static str, String, Vec<u8>) {
    let uri = format!("/bounded/{i}?q={}", i.wrapping_mul(2_654_435_761) % 100_000);
    if i.is_multiple_of(3) {
        let len = (i % 300 + 1) as usize;
        let body: Vec<u8> = (0..len)
            .map(|k| b'a' + ((i as usize + k) % 26) as u8)
            .collect();
        ("POST", uri, body)
    } else {
        ("GET", uri, Vec::new())
    }
}

fn request_bytes(i: u64) -> Vec<u8> {
    let (method, uri, body) = request(i);
    let mut out = format!("{method} {uri} HTTP/1.1\r\nHost: bounded.test\r\n").into_bytes();
    if !body.is_empty() {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Writes the file as a stream (the test's own memory stays small; see the module doc).
fn write_file(path: &Path) -> Result<u64> {
    let base = 1_700_000_000_000_000_000u64;
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path)?);
    let response = |out: &mut BufWriter<File>, i: u64| {
        write_payload(
            out,
            &GorPayload {
                kind: 2,
                id: format!("{i:024x}").into(),
                ts_ns: base + i * 10_000 + RESPONSE_LAG * 10_000,
                latency_ns: (RESPONSE_LAG * 10_000) as i64,
                bytes: Bytes::from_static(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            },
        )
    };
    for i in 0..REQUESTS {
        write_payload(
            &mut out,
            &GorPayload {
                kind: 1,
                id: format!("{i:024x}").into(),
                ts_ns: base + i * 10_000,
                latency_ns: 0,
                bytes: Bytes::from(request_bytes(i)),
            },
        )?;
        if i >= RESPONSE_LAG {
            response(&mut out, i - RESPONSE_LAG)?;
        }
    }
    for i in REQUESTS.saturating_sub(RESPONSE_LAG)..REQUESTS {
        response(&mut out, i)?;
    }
    out.flush()?;
    Ok(out.get_ref().metadata()?.len())
}

/// Peak resident memory of this process so far (KiB), from /proc.
fn own_peak_rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// Runs `capture ARGS --data-dir DIR` to completion; its stderr and its peak RSS (KiB).
fn run_measured(data_dir: &Path, args: &[&str]) -> Result<(String, u64)> {
    let m = tests::process::run_measured(
        Command::new(capture_bin())
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null()),
    )?;
    if !m.ok {
        bail!("capture {args:?} failed:\n{}", m.stderr);
    }
    Ok((m.stderr, (m.peak_rss_mib * 1024.0) as u64))
}

/// Calls `each(header, message)` for every payload of a GoReplay file, read as a stream.
fn for_each_payload(path: &Path, mut each: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path)?);
    let last = *SEPARATOR.last().context("empty separator")?;
    let mut payload = Vec::new();
    loop {
        let n = reader.read_until(last, &mut payload)?;
        if n == 0 || payload.ends_with(SEPARATOR) {
            let body = payload.strip_suffix(SEPARATOR).unwrap_or(&payload);
            if !body.is_empty() {
                let nl = body.iter().position(|&b| b == b'\n').context("no header")?;
                each(&body[..nl], &body[nl + 1..])?;
            }
            payload.clear();
        }
        if n == 0 {
            return Ok(());
        }
    }
}

type RequestKey = (String, String, u64);

/// (method, URI, body digest) of a request's bytes.
fn request_key(message: &[u8]) -> Result<RequestKey> {
    let line_end = message
        .iter()
        .position(|&b| b == b'\r')
        .context("no line")?;
    let line = std::str::from_utf8(&message[..line_end])?;
    let mut parts = line.split(' ');
    let (method, uri) = (parts.next(), parts.next());
    let head_end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("head does not end")?;
    Ok((
        method.context("no method")?.to_string(),
        uri.context("no URI")?.to_string(),
        digest(&message[head_end + 4..]),
    ))
}

/// The exported file's requests as a multiset, and how many responses it holds.
fn exported(path: &Path) -> Result<(HashMap<RequestKey, usize>, u64)> {
    let mut requests = Vec::with_capacity(REQUESTS as usize);
    let mut responses = 0u64;
    for_each_payload(path, |header, message| {
        match header.first() {
            Some(b'1') => requests.push(request_key(message)?),
            Some(b'2') => responses += 1,
            _ => bail!(
                "unexpected payload header {:?}",
                String::from_utf8_lossy(header)
            ),
        }
        Ok(())
    })?;
    Ok((multiset(requests), responses))
}

fn messages_in_recording(data_dir: &Path, name: &str) -> Result<u64> {
    let out = tests::run_ok(
        Command::new(capture_bin())
            .args(["recordings", "show", name, "--json", "--data-dir"])
            .arg(data_dir),
    )?;
    let rec: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    rec["messages"].as_u64().context("no message count")
}

#[test]
fn import_and_export_of_two_million_messages_stay_under_150_mib() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("big.gor");
    let started = Instant::now();
    let size = write_file(&file)?;
    let generated = started.elapsed();

    let own = own_peak_rss_kib()?;
    ensure!(
        own < PEAK_RSS_LIMIT_KIB / 4,
        "this test already peaked at {own} KiB, which would show in its children's ru_maxrss"
    );
    let data = dir.path().join("store");
    std::fs::create_dir(&data)?;
    let file_arg = file.to_string_lossy().to_string();
    let started = Instant::now();
    let (import_log, import_rss) = run_measured(&data, &["import", &file_arg, "--name", "big"])?;
    let imported = started.elapsed();
    let stored = messages_in_recording(&data, "big")?;

    let out = dir.path().join("out.gor");
    let out_arg = out.to_string_lossy().to_string();
    let started = Instant::now();
    let (export_log, export_rss) = run_measured(&data, &["export", "big", "--gor", &out_arg])?;
    let exported_in = started.elapsed();
    eprintln!(
        "file {size} bytes generated in {generated:?}; import {imported:?} peak {import_rss} KiB; \
         export {exported_in:?} peak {export_rss} KiB; this test peaked at {own} KiB before\n\
         import: {import_log}export: {export_log}"
    );

    assert_eq!(stored, 2 * REQUESTS, "{import_log}");
    let (requests, responses) = exported(&out)?;
    assert_eq!(responses, REQUESTS);
    let expected = multiset((0..REQUESTS).map(|i| {
        let (method, uri, body) = request(i);
        (method.to_string(), uri, digest(&body))
    }));
    assert!(
        requests == expected,
        "the exported requests differ from the imported ones"
    );
    assert!(
        import_rss <= PEAK_RSS_LIMIT_KIB,
        "import peaked at {import_rss} KiB"
    );
    assert!(
        export_rss <= PEAK_RSS_LIMIT_KIB,
        "export peaked at {export_rss} KiB"
    );
    Ok(())
}

/// Import streams, so a file found cut short part way has already given messages: the
/// recording ends failed with them kept; a file unreadable from its start leaves nothing.
#[test]
fn an_import_cut_short_keeps_what_was_stored_and_says_so() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let full = std::fs::read(tests::zeek_pcaps_dir().join("get.pcap"))?;
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &full[..full.len() - 100])?;
    let import = |file: &Path, name: &str| {
        Command::new(capture_bin())
            .args([
                "import",
                &file.to_string_lossy(),
                "--name",
                name,
                "--data-dir",
            ])
            .arg(dir.path())
            .output()
    };
    let out = import(&cut, "cut")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("truncated") && stderr.contains("kept"),
        "{stderr}"
    );
    let show = tests::run_ok(
        Command::new(capture_bin())
            .args(["recordings", "show", "cut", "--json", "--data-dir"])
            .arg(dir.path()),
    )?;
    let rec: serde_json::Value = serde_json::from_slice(&show.stdout)?;
    assert_eq!(rec["state"], "failed", "{rec}");
    assert!(rec["messages"].as_u64() >= Some(1), "{rec}");
    assert!(
        rec["reason"]
            .as_str()
            .is_some_and(|r| r.contains("truncated")),
        "{rec}"
    );

    let garbled = dir.path().join("garbled.gor");
    std::fs::write(&garbled, "1 x\nGET / HTTP/1.1\r\n\r\n")?;
    let out = import(&garbled, "garbled")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("payload 0 at byte 0: bad header"),
        "{stderr}"
    );
    let list = tests::run_ok(
        Command::new(capture_bin())
            .args(["recordings", "list", "--data-dir"])
            .arg(dir.path()),
    )?;
    assert!(!String::from_utf8_lossy(&list.stdout).contains("garbled"));
    Ok(())
}
