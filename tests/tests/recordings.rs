//! Recordings on the embedded store, end to end through the CLI: live recording against
//! nginx in a netns (its access log is the ground truth), a 5 MB body byte-exact, a recorder
//! killed with SIGKILL, and GoReplay export/import.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::{capture_bin, multiset, run_ok, zeek_pcaps_dir};

const PORT: u16 = 8080;

use tests::capture::run_with_data_dir as capture;

/// (method, URI) of each request line `capture inspect` prints.
fn inspected_requests(name: &str, data_dir: &Path) -> Result<Vec<(String, String)>> {
    let text = capture(&["inspect", name], data_dir)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.splitn(7, ' ').collect();
        let rest = fields.get(6).context("short inspect line")?;
        if let Some(req) = rest.strip_prefix("request ") {
            let (method, tail) = req.split_once(' ').context("no URI")?;
            let uri = tail.rsplit_once(" body=").map(|(u, _)| u).unwrap_or(tail);
            out.push((method.to_string(), uri.to_string()));
        }
    }
    Ok(out)
}

fn show_json(name: &str, data_dir: &Path) -> Result<serde_json_lite::Value> {
    let text = capture(&["recordings", "show", name, "--json"], data_dir)?;
    serde_json_lite::parse(&text)
}

/// A tiny JSON reader for the few fields the tests check (keeps the tests crate light).
mod serde_json_lite {
    use anyhow::{Result, bail};

    #[derive(Debug)]
    pub struct Value(String);

    pub fn parse(text: &str) -> Result<Value> {
        if !text.trim_start().starts_with('{') {
            bail!("not a JSON object: {text}");
        }
        Ok(Value(text.to_string()))
    }

    impl Value {
        /// The raw text after `"key":`, up to the next comma or newline.
        pub fn field(&self, key: &str) -> Option<String> {
            let at = self.0.find(&format!("\"{key}\":"))? + key.len() + 3;
            let rest = self.0[at..].trim_start();
            let end = rest.find([',', '\n']).unwrap_or(rest.len());
            Some(rest[..end].trim().trim_matches('"').to_string())
        }
    }
}

fn curl(topo: &Topology, path: &str, extra: &[&str]) -> Result<()> {
    run_ok(
        topo.client("curl")
            .args(["-sS", "-o", "/dev/null"])
            .args(extra)
            .arg(format!("http://{}:{PORT}{path}", topo.server_ip)),
    )?;
    Ok(())
}

fn record(topo: &Topology, name: &str, data_dir: &Path) -> Result<CaptureRun> {
    let store = ["--data-dir".to_string(), data_dir.display().to_string()];
    CaptureRun::record(&topo.client_ns, &topo.client_if, name, &store)
}

#[test]
fn a_live_recording_holds_exactly_what_nginx_served_and_a_5_mb_body_byte_for_byte() -> Result<()> {
    let topo = Topology::new("rec")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let data = tempfile::tempdir()?;
    let run = record(&topo, "live1", data.path())?;
    for i in 0..20 {
        curl(&topo, &format!("/index.html?i={i}"), &[])?;
    }
    let body: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let body_file = data.path().join("body.bin");
    std::fs::write(&body_file, &body)?;
    curl(
        &topo,
        "/upload",
        &["--data-binary", &format!("@{}", body_file.display())],
    )?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = run.stop(libc::SIGINT)?;
    ensure!(
        out.status.success(),
        "record failed: {}",
        out.stderr.join("\n")
    );
    assert!(
        out.stderr
            .iter()
            .any(|l| l.starts_with("recording live1: complete")),
        "{:?}",
        out.stderr
    );
    assert!(
        out.stderr.iter().any(|l| l == "drops: none"),
        "{:?}",
        out.stderr
    );

    let log = nginx.access_log()?;
    assert_eq!(log.len(), 21);
    let requests = inspected_requests("live1", data.path())?;
    assert_eq!(
        multiset(requests),
        multiset(log.iter().map(|e| (e.method.clone(), e.uri.clone())))
    );
    let show = show_json("live1", data.path())?;
    assert_eq!(show.field("state").as_deref(), Some("complete"));
    // 21 requests, 21 responses, and the 100 Continue curl asked for before the 5 MB body.
    assert_eq!(show.field("messages").as_deref(), Some("43"));

    // The 5 MB request body comes back byte for byte (through a GoReplay export).
    let gor = data.path().join("live1.gor");
    capture(
        &["export", "live1", "--gor", &gor.to_string_lossy()],
        data.path(),
    )?;
    let file = std::fs::read(&gor)?;
    let after = tests::bytes_after_head(&file, b"POST /upload HTTP/1.1")?;
    assert_eq!(&after[..body.len()], &body[..]);
    assert_eq!(
        &after[body.len()..body.len() + 1],
        b"\n",
        "body longer than sent"
    );
    Ok(())
}

#[test]
fn a_recorder_killed_with_sigkill_leaves_an_interrupted_recording_and_loses_nothing_stored()
-> Result<()> {
    let topo = Topology::new("kill")?;
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let data = tempfile::tempdir()?;

    // A complete recording first: it must come through the crash untouched.
    let run = record(&topo, "before", data.path())?;
    for i in 0..5 {
        curl(&topo, &format!("/index.html?before={i}"), &[])?;
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    run.stop(libc::SIGINT)?;
    let before = inspected_requests("before", data.path())?;
    assert_eq!(before.len(), 5);

    let run = record(&topo, "crashed", data.path())?;
    for i in 0..10 {
        curl(&topo, &format!("/index.html?crashed={i}"), &[])?;
    }
    // Longer than the store's flush interval, so the requests are durable.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = run.stop(libc::SIGKILL)?;
    assert!(!out.status.success());

    let list = capture(&["recordings", "list"], data.path())?;
    let crashed = list
        .lines()
        .find(|l| l.starts_with("crashed\t"))
        .context("crashed not listed")?;
    assert!(crashed.contains("\tinterrupted\t"), "{list}");
    let show = show_json("crashed", data.path())?;
    assert_eq!(show.field("state").as_deref(), Some("interrupted"));
    let requests = inspected_requests("crashed", data.path())?;
    assert_eq!(requests.len(), 10, "{requests:?}");
    assert!(requests.iter().all(|(_, uri)| uri.contains("crashed=")));
    assert_eq!(inspected_requests("before", data.path())?, before);
    // TCX links die with the process: nothing left on the interface.
    let leftovers = Topology::attachments(&topo.client_ns, &topo.client_if)?.leftovers();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    Ok(())
}

/// (type, timestamp, bytes) of each GoReplay payload, ids aside.
fn gor_payloads(file: &Path) -> Result<Vec<(String, String, Vec<u8>)>> {
    let data = std::fs::read(file)?;
    let sep = "\n🐵🙈🙉\n".as_bytes();
    let mut out = Vec::new();
    let mut rest = &data[..];
    while let Some(p) = rest.windows(sep.len()).position(|w| w == sep) {
        let payload = &rest[..p];
        rest = &rest[p + sep.len()..];
        let nl = payload.iter().position(|&b| b == b'\n').context("header")?;
        let header = String::from_utf8_lossy(&payload[..nl]).to_string();
        let f: Vec<&str> = header.split(' ').collect();
        out.push((
            f[0].to_string(),
            f[2].to_string(),
            payload[nl + 1..].to_vec(),
        ));
    }
    Ok(out)
}

#[test]
fn goreplay_export_then_import_gives_the_same_messages() -> Result<()> {
    let data = tempfile::tempdir()?;
    let pcap = zeek_pcaps_dir().join("pipelined-requests.pcap");
    capture(
        &["import", &pcap.to_string_lossy(), "--name", "orig"],
        data.path(),
    )?;
    let first = data.path().join("first.gor");
    capture(
        &["export", "orig", "--gor", &first.to_string_lossy()],
        data.path(),
    )?;
    capture(
        &["import", &first.to_string_lossy(), "--name", "again"],
        data.path(),
    )?;
    let second = data.path().join("second.gor");
    capture(
        &["export", "again", "--gor", &second.to_string_lossy()],
        data.path(),
    )?;
    let a = gor_payloads(&first)?;
    assert_eq!(a.len(), 10);
    assert_eq!(a, gor_payloads(&second)?);
    assert_eq!(
        inspected_requests("orig", data.path())?,
        inspected_requests("again", data.path())?
    );
    Ok(())
}

/// The codec byte (offset 5 of a batch head) of every batch in the data dir's segments
/// (docs/STORE_FORMAT.md: a 68-byte head, then the tags, then the payload).
fn batch_codecs(data_dir: &Path) -> Result<Vec<u8>> {
    let mut codecs = Vec::new();
    for entry in std::fs::read_dir(data_dir.join("log"))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "seg") {
            continue;
        }
        let bytes = std::fs::read(&path)?;
        let mut at = 0;
        while at + 68 <= bytes.len() {
            ensure!(
                &bytes[at..at + 4] == b"CPLB",
                "no batch head at {at} in {path:?}"
            );
            codecs.push(bytes[at + 5]);
            let le = |o: usize| u32::from_le_bytes(bytes[at + o..at + o + 4].try_into().unwrap());
            at += 68 + le(8) as usize + le(12) as usize;
        }
    }
    Ok(codecs)
}

#[test]
fn compression_is_chosen_per_store_and_both_codecs_read_back_the_same() -> Result<()> {
    let pcap = zeek_pcaps_dir().join("pipelined-requests.pcap");
    let pcap = pcap.to_string_lossy();
    let raw = tempfile::tempdir()?;
    capture(&["import", &pcap, "--name", "r"], raw.path())?;
    let lz4 = tempfile::tempdir()?;
    capture(
        &["import", &pcap, "--name", "r", "--compression", "lz4"],
        lz4.path(),
    )?;
    let raw_codecs = batch_codecs(raw.path())?;
    ensure!(
        !raw_codecs.is_empty() && raw_codecs.iter().all(|c| *c == 0),
        "the default store should write raw batches, codecs {raw_codecs:?}"
    );
    ensure!(
        batch_codecs(lz4.path())?.contains(&1),
        "--compression lz4 wrote no LZ4 batch"
    );
    assert_eq!(
        capture(&["inspect", "r", "--bytes"], raw.path())?,
        capture(&["inspect", "r", "--bytes"], lz4.path())?
    );
    let gzip = Command::new(capture_bin())
        .args(["import", &pcap, "--name", "g", "--compression", "gzip"])
        .arg("--data-dir")
        .arg(raw.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&gzip.stderr);
    ensure!(
        !gzip.status.success() && stderr.contains("--compression lz4 or none"),
        "gzip on the embedded store should fail with one line: {stderr}"
    );
    Ok(())
}
