//! `--redact-header` end to end (issue 18, acceptance 4): real tokens sent by curl over
//! HTTP/1 and HTTP/2 through real nginx servers, recorded on both backends. No byte of a
//! redacted token may be anywhere in the data directory or the Kafka topic (the files and the
//! records are searched byte for byte), while a header that is not redacted is found there
//! (so the search would see a token). The stored requests carry the marker, the catalog entry
//! names the rules, and replay sends the marker, or the value `--set-header` gives.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use tests::broker::Tansu;
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::{Nginx, curl_h2c};
use tests::replay::replay;
use tests::{capture_bin, run_ok};

const PORT: u16 = 8080;
const H2_PORT: u16 = 8082;

/// Three values no run has seen before: two to redact, one to keep.
struct Secrets {
    token: String,
    cookie: String,
    kept: String,
}

impl Secrets {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = format!("{nanos:x}{}", std::process::id());
        Self {
            token: format!("tok{seed}A"),
            cookie: format!("ck{seed}B"),
            kept: format!("kept{seed}C"),
        }
    }

    /// curl arguments carrying the three values.
    fn headers(&self) -> Vec<String> {
        vec![
            "-H".into(),
            format!("Authorization: Bearer {}", self.token),
            "-H".into(),
            format!("Cookie: sid={}", self.cookie),
            "-H".into(),
            format!("X-Trace: {}", self.kept),
        ]
    }
}

/// Sends the secrets over HTTP/1 (three GETs on one connection) and over HTTP/2 (one GET).
fn send(topo: &Topology, secrets: &Secrets) -> Result<()> {
    let mut http1 = topo.client("curl");
    http1.arg("-sS").args(secrets.headers());
    for i in 0..3 {
        let url = format!("http://{}:{PORT}/index.html?h1={i}", topo.server_ip);
        http1.args(["-o", "/dev/null", &url]);
    }
    run_ok(&mut http1)?;
    let url = format!("http://{}:{H2_PORT}/index.html?h2=1", topo.server_ip);
    let headers = secrets.headers();
    let args: Vec<&str> = headers.iter().map(String::as_str).collect();
    curl_h2c(topo, &url, &args)
}

/// Every byte under `dir`, file after file.
fn all_bytes(dir: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(all_bytes(&path)?);
        } else {
            out.extend(
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            );
        }
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The redacted values are nowhere in `stored`; the kept one is.
fn check_absent(stored: &[u8], secrets: &Secrets, what: &str) -> Result<()> {
    ensure!(
        contains(stored, &secrets.kept),
        "{what}: the header that is not redacted is missing, so the search proves nothing"
    );
    ensure!(
        !contains(stored, &secrets.token),
        "{what}: the Authorization token was stored"
    );
    ensure!(
        !contains(stored, &secrets.cookie),
        "{what}: the cookie was stored"
    );
    Ok(())
}

fn start_servers(topo: &Topology) -> Result<(Nginx, Nginx)> {
    Ok((
        Nginx::start(&topo.server_ns, &[PORT])?,
        Nginx::start_h2c(&topo.server_ns, &[H2_PORT])?,
    ))
}

/// What `record` gets besides port 8080: the HTTP/2 port, the rules, then `store`.
fn extra(store: &[&str]) -> Vec<String> {
    let rules = [
        "--redact-header",
        "Authorization",
        "--redact-header",
        "cookie",
    ];
    ["--port", "8082"]
        .iter()
        .chain(&rules)
        .chain(store)
        .map(|a| a.to_string())
        .collect()
}

#[test]
fn redacted_values_never_reach_the_data_dir_and_replay_sends_the_marker_or_the_set_value()
-> Result<()> {
    let topo = Topology::new("rdct")?;
    topo.disable_offloads()?;
    let (http1, _h2) = start_servers(&topo)?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let secrets = Secrets::new();
    let rec = CaptureRun::record(
        &topo.server_ns,
        &topo.server_if,
        "sec",
        &extra(&["--data-dir", &dir]),
    )?;
    send(&topo, &secrets)?;
    rec.stop_ok()?;

    check_absent(&all_bytes(data.path())?, &secrets, "data dir")?;
    let out = run_ok(Command::new(capture_bin()).args([
        "inspect",
        "sec",
        "--bytes",
        "--data-dir",
        &dir,
    ]))?;
    let text = String::from_utf8(out.stdout)?;
    assert_eq!(
        text.matches("Authorization: [redacted]").count(),
        3,
        "{text}"
    );
    assert_eq!(
        text.matches("authorization: [redacted]").count(),
        1,
        "the HTTP/2 request: {text}"
    );
    assert_eq!(
        text.matches("Cookie: [redacted]").count() + text.matches("cookie: [redacted]").count(),
        4
    );
    let out = run_ok(Command::new(capture_bin()).args([
        "recordings",
        "show",
        "sec",
        "--data-dir",
        &dir,
    ]))?;
    let shown = String::from_utf8(out.stdout)?;
    ensure!(
        shown.contains("headers redacted: authorization, cookie"),
        "{shown}"
    );

    // Replay (the HTTP/1 requests) sends the marker, or what --set-header says.
    let target = format!("http://{}:{PORT}", topo.server_ip);
    let only_http1 = "url=h1=";
    let (ok, _, stderr) = replay(
        &topo,
        data.path(),
        &["sec", "--target", &target, "--filter", only_http1],
    )?;
    ensure!(ok, "{stderr}");
    let (ok, _, stderr) = replay(
        &topo,
        data.path(),
        &[
            "sec",
            "--target",
            &target,
            "--filter",
            only_http1,
            "--set-header",
            "Authorization: Bearer fresh",
        ],
    )?;
    ensure!(ok, "{stderr}");
    let log = http1.access_log()?;
    let sent: Vec<&str> = log.iter().map(|e| e.authorization.as_str()).collect();
    let recorded = format!("Bearer {}", secrets.token);
    assert_eq!(sent[..3], [recorded.as_str(); 3], "the live requests");
    assert_eq!(
        sent[3..],
        [
            "[redacted]",
            "[redacted]",
            "[redacted]",
            "Bearer fresh",
            "Bearer fresh",
            "Bearer fresh"
        ]
    );
    Ok(())
}

#[test]
fn redacted_values_never_reach_the_kafka_topic() -> Result<()> {
    let topo = Topology::new("rdck")?;
    topo.disable_offloads()?;
    let _servers = start_servers(&topo)?;
    let broker = Tansu::start_in(&topo.client_ns)?;
    let bootstrap = broker.bootstrap();
    let secrets = Secrets::new();
    let store = ["--kafka", &bootstrap, "--topic", "secrets"];
    let rec = CaptureRun::record(&topo.client_ns, &topo.client_if, "sec", &extra(&store))?;
    send(&topo, &secrets)?;
    rec.stop_ok()?;
    let dumped = tests::broker::dump_topic(&topo.client_ns, &bootstrap, "secrets")?;
    ensure!(
        dumped.len() > 1000,
        "the topic holds the messages ({} bytes)",
        dumped.len()
    );
    check_absent(&dumped, &secrets, "Kafka topic")
}
