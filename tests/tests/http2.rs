//! HTTP/2 in clear text end to end (issue 15), against real peers in network namespaces:
//! nginx serving h2c to curl and h2load (checked against nginx's access log and tshark's
//! decoding of a pcap of the same traffic), gRPC between grpcio peers recorded on both
//! backends and replayed to a second grpcio server, a capture started in the middle of an
//! HTTP/2 connection whose HPACK table it never saw, and an `Upgrade: h2c` connection.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tests::broker::Tansu;
use tests::capture::{CaptureRun, Tcpdump};
use tests::netns::Topology;
use tests::nginx::{Nginx, curl_h2c};
use tests::{capture_bin, multiset, run_ok, workspace_root};

const PORT: u16 = 8080;
const REPLAY_PORT: u16 = 8081;

fn peer(script: &str) -> PathBuf {
    workspace_root().join("tests/peers/h2").join(script)
}

/// A peer process, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` and waits for `line` on its stdout (servers print "listening").
fn start_until(
    mut cmd: Command,
    line: &str,
) -> Result<(Peer, BufReader<std::process::ChildStdout>)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a peer")?;
    let stdout = child.stdout.take().context("peer stdout")?;
    let peer = Peer(child);
    let mut reader = BufReader::new(stdout);
    let mut got = String::new();
    reader.read_line(&mut got)?;
    ensure!(got.trim() == line, "peer printed {got:?}, not {line:?}");
    Ok((peer, reader))
}

/// One line of `capture inspect`.
#[derive(Debug)]
struct Line {
    id: u64,
    request: Option<(String, String)>,
    status: Option<u16>,
    answers: Option<u64>,
    http2: bool,
    grpc_status: Option<String>,
    body: u64,
}

fn parse_line(line: &str) -> Result<Line> {
    let f: Vec<&str> = line.split(' ').collect();
    let value = |key: &str| f.iter().find_map(|t| t.strip_prefix(key));
    let id = value("id=").context("id")?.parse()?;
    let body = value("body=").context("body")?.parse()?;
    let at = f.iter().position(|t| *t == "request" || *t == "response");
    let (request, status) = match at.map(|i| (f[i], i)) {
        Some(("request", i)) => {
            let method = f.get(i + 1).context("method")?.to_string();
            let uri = f.get(i + 2).context("uri")?.to_string();
            (Some((method, uri)), None)
        }
        Some((_, i)) => (None, Some(f.get(i + 1).context("status")?.parse()?)),
        None => bail!("unexpected line {line:?}"),
    };
    Ok(Line {
        id,
        request,
        status,
        answers: value("to=").and_then(|v| v.parse().ok()),
        http2: f.contains(&"http2"),
        grpc_status: value("grpc-status=").map(str::to_string),
        body,
    })
}

/// `capture inspect NAME STORE...` (with `--bytes` when `bytes`), run in `ns`: the message
/// lines, and the whole text.
fn inspect(ns: &str, name: &str, store: &[String], bytes: bool) -> Result<(Vec<Line>, String)> {
    let mut cmd = Topology::exec(ns, &capture_bin().to_string_lossy());
    cmd.args(["inspect", name]).args(store);
    if bytes {
        cmd.arg("--bytes");
    }
    let text = String::from_utf8(run_ok(&mut cmd)?.stdout)?;
    let lines = text
        .lines()
        .filter(|l| l.contains(" conn="))
        .map(parse_line)
        .collect::<Result<_>>()?;
    Ok((lines, text))
}

fn data_dir_args(dir: &Path) -> Vec<String> {
    vec!["--data-dir".into(), dir.display().to_string()]
}

#[test]
fn h2c_from_curl_and_h2load_is_captured_as_nginx_logged_it_and_as_tshark_decodes_it() -> Result<()>
{
    let topo = Topology::new("h2c")?;
    topo.disable_offloads()?;
    let nginx = Nginx::start_h2c(&topo.server_ns, &[PORT])?;
    std::fs::write(nginx.docroot().join("big.bin"), vec![b'x'; 200 << 10])?;
    let work = tempfile::tempdir()?;
    let body = |n: usize| -> Result<PathBuf> {
        let path = work.path().join(format!("body{n}"));
        std::fs::write(&path, (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>())?;
        Ok(path)
    };
    let (small, large, load_body) = (body(3)?, body(100 << 10)?, body(70_000)?);
    let data = tempfile::tempdir()?;
    let store = data_dir_args(data.path());
    let tcpdump = Tcpdump::start(&topo.server_ns, &topo.server_if)?;
    // The POST burst (14 MB in a moment) needs a ring that holds it: a full ring is a gap,
    // and a gap in HTTP/2 loses the streams it cuts (counted, and this test wants every one).
    let mut args = store.clone();
    args.extend(["--ring-size".to_string(), "128MiB".to_string()]);
    let rec = CaptureRun::record(&topo.server_ns, &topo.server_if, "h2", &args)?;
    let url = |path: &str| format!("http://{}:{PORT}{path}", topo.server_ip);

    // curl: GETs and POSTs (one with a body over 64 KiB), one connection each.
    for path in ["/index.html?c=1", "/big.bin", "/index.html?c=2"] {
        curl_h2c(&topo, &url(path), &[])?;
    }
    for (file, path) in [(&small, "/upload?p=small"), (&large, "/upload?p=large")] {
        let body = format!("@{}", file.display());
        curl_h2c(&topo, &url(path), &["--data-binary", &body])?;
    }
    // h2load: multiplexed streams on several connections, GETs and POSTs.
    let h2load = |args: &[&str]| -> Result<()> {
        let out = run_ok(topo.client("h2load").args(args))?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(text.contains(" 0 failed"), "h2load failed:\n{text}");
        Ok(())
    };
    h2load(&[
        "-n",
        "20000",
        "-c",
        "8",
        "-m",
        "16",
        &url("/index.html?load=get"),
    ])?;
    h2load(&[
        "-n",
        "200",
        "-c",
        "2",
        "-m",
        "8",
        "-d",
        &load_body.display().to_string(),
        &url("/upload?load=post"),
    ])?;
    let stderr = rec.stop_ok()?;
    let pcap = work.path().join("h2.pcap");
    tcpdump.stop_into(&pcap)?;

    // The captured requests are nginx's requests: method, URI and body length.
    let (lines, _) = inspect(&topo.server_ns, "h2", &store, false)?;
    let captured: Vec<(String, String, u64)> = lines
        .iter()
        .filter_map(|l| l.request.clone().map(|(m, u)| (m, u, l.body)))
        .collect();
    ensure!(lines.iter().all(|l| l.http2), "every message is HTTP/2");
    let log = nginx.access_log()?;
    let logged: Vec<(String, String, u64)> = log
        .iter()
        .map(|e| {
            (
                e.method.clone(),
                e.uri.clone(),
                e.content_length.parse().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(logged.len(), 20_000 + 200 + 5);
    assert_eq!(
        multiset(captured.iter()),
        multiset(logged.iter()),
        "capture stderr:\n{stderr}"
    );
    // Every request has its response, paired by stream.
    let requests: HashMap<u64, &Line> = lines
        .iter()
        .filter(|l| l.request.is_some())
        .map(|l| (l.id, l))
        .collect();
    let answered = lines
        .iter()
        .filter(|l| l.answers.is_some_and(|r| requests.contains_key(&r)))
        .count();
    assert_eq!(answered, requests.len());
    let big = lines
        .iter()
        .find(|l| {
            l.answers.is_some_and(|r| {
                requests[&r]
                    .request
                    .as_ref()
                    .is_some_and(|(_, u)| u == "/big.bin")
            })
        })
        .context("big.bin's response")?;
    assert_eq!((big.status, big.body), (Some(200), 200 << 10));

    // tshark decodes the same streams from the pcap. It must put out-of-order segments back
    // in order as we do: by default it does not, and when the POST burst made a segment arrive
    // late (a retransmission on the veth, not a drop: tcpdump dropped none) its HTTP/2
    // dissector lost that connection's remaining streams (108 or 146 of the 200 POSTs).
    let out = run_ok(Command::new("tshark").arg("-r").arg(&pcap).args([
        "-o",
        "tcp.reassemble_out_of_order:TRUE",
        "-d",
        &format!("tcp.port=={PORT},http2"),
        "-Y",
        "http2.headers.method",
        "-T",
        "fields",
        "-e",
        "http2.headers.method",
        "-e",
        "http2.headers.path",
    ]))?;
    let mut decoded: Vec<(String, String)> = Vec::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let (methods, paths) = line.split_once('\t').context("two fields")?;
        decoded.extend(
            methods
                .split(',')
                .zip(paths.split(','))
                .map(|(m, p)| (m.to_string(), p.to_string())),
        );
    }
    let ours: Vec<(String, String)> = captured.into_iter().map(|(m, u, _)| (m, u)).collect();
    assert_eq!(multiset(decoded.iter()), multiset(ours.iter()));

    // The pcap framed offline gives the same requests as the live capture.
    let out = run_ok(
        Command::new(capture_bin())
            .args([
                "messages",
                "--requests-only",
                "--port",
                &PORT.to_string(),
                "--pcap",
            ])
            .arg(&pcap),
    )?;
    let offline = String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| l.contains(" http2 "))
        .count();
    assert_eq!(offline, ours.len());
    Ok(())
}

/// The gRPC conversation both backends record: unary calls (one with a 70,000-byte message),
/// a server stream of five, and a call that fails with NOT_FOUND.
const GRPC_PLAN: &str = "unary:alice,unary:bob:70000,watch:carol:5,unary:fail,unary:dave";

/// (method, request message) of each call a grpc_peer.py server logged, in order.
fn grpc_calls(log: &Path) -> Result<Vec<(String, String, String)>> {
    std::fs::read_to_string(log)?
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok((
                v["method"].as_str().context("method")?.to_string(),
                // Long messages compared by length and digest, so a failure prints short.
                digest(v["request_hex"].as_str().context("request_hex")?),
                v["metadata"]["x-call"].as_str().unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// A hex string's length and FNV-1a hash: equal strings, equal digests.
fn digest(hex: &str) -> String {
    let hash = hex.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("{}:{hash:016x}", hex.len())
}

/// Starts the peer `script`'s server (grpc_peer.py, h2c_upgrade.py) on `port` of the server
/// namespace, logging to `log`.
fn peer_server(topo: &Topology, script: &str, port: u16, log: &Path) -> Result<Peer> {
    let mut cmd = topo.server("python3");
    let port = port.to_string();
    cmd.arg(peer(script))
        .args([
            "server",
            "--host",
            &topo.server_ip,
            "--port",
            &port,
            "--log",
        ])
        .arg(log);
    Ok(start_until(cmd, "listening")?.0)
}

/// Records GRPC_PLAN with `store` (capture on the client's side, where the broker is), checks
/// what `inspect` shows, replays it to a second server and compares the calls it got.
fn grpc_round_trip(topo: &Topology, store: &[String]) -> Result<()> {
    let work = tempfile::tempdir()?;
    let (first_log, second_log) = (
        work.path().join("first.jsonl"),
        work.path().join("second.jsonl"),
    );
    let _first = peer_server(topo, "grpc_peer.py", PORT, &first_log)?;
    let _second = peer_server(topo, "grpc_peer.py", REPLAY_PORT, &second_log)?;
    let rec = CaptureRun::record(&topo.client_ns, &topo.client_if, "grpc", store)?;
    run_ok(
        topo.client("python3")
            .arg(peer("grpc_peer.py"))
            .args([
                "client",
                "--target",
                &format!("{}:{PORT}", topo.server_ip),
                "--plan",
                GRPC_PLAN,
                "--out",
            ])
            .arg(work.path().join("calls.jsonl")),
    )?;
    let stderr = rec.stop_ok()?;

    let (lines, text) = inspect(&topo.client_ns, "grpc", store, true)?;
    for shown in [
        "POST /pkg.Service/Unary HTTP/2",
        "POST /pkg.Service/Watch HTTP/2",
        "content-type: application/grpc",
        "hello alice",
        "carol-4",
        "grpc-message: no such thing",
    ] {
        ensure!(
            text.contains(shown),
            "inspect does not show {shown:?}:\n{text}\ncapture:\n{stderr}"
        );
    }
    let statuses: Vec<Option<String>> = lines
        .iter()
        .filter(|l| l.status.is_some())
        .map(|l| l.grpc_status.clone())
        .collect();
    assert_eq!(
        statuses,
        ["0", "0", "0", "5", "0"].map(|s| Some(s.to_string())),
        "{text}"
    );
    // The 70,000-byte message (5-byte gRPC prefix, then protobuf) is stored whole.
    let bob = lines
        .iter()
        .find(|l| l.request.is_some() && l.body > 70_000)
        .context("bob's call")?;
    assert_eq!(bob.body, 5 + 70_009);

    let mut replay = Topology::exec(&topo.client_ns, &capture_bin().to_string_lossy());
    replay
        .args([
            "replay",
            "grpc",
            "--target",
            &format!("http://{}:{REPLAY_PORT}", topo.server_ip),
            "--json",
            "--quiet",
        ])
        .args(store);
    let out = replay.output()?;
    let summary: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).to_string())?;
    ensure!(out.status.success(), "replay failed: {summary}");
    assert_eq!(summary["statuses"], serde_json::json!({"200": 5}));
    assert_eq!(
        summary["grpc_statuses"],
        serde_json::json!({"0": 4, "5": 1})
    );
    // Same calls, same protobuf bytes, same metadata, in the recorded order.
    let (recorded, replayed) = (grpc_calls(&first_log)?, grpc_calls(&second_log)?);
    assert_eq!(recorded.len(), 5);
    let listing: Vec<&str> = text.lines().filter(|l| l.contains(" conn=")).collect();
    assert_eq!(replayed, recorded, "recorded:\n{}", listing.join("\n"));
    Ok(())
}

#[test]
fn grpc_is_recorded_inspected_and_replayed_byte_equal_on_the_embedded_store() -> Result<()> {
    let topo = Topology::new("grpe")?;
    topo.disable_offloads()?;
    let data = tempfile::tempdir()?;
    let store = data_dir_args(data.path());
    grpc_round_trip(&topo, &store)?;
    to_an_http1_server_the_calls_fail_saying_why(&topo, &store)
}

/// The gRPC recording sent to an HTTP/1 server by mistake (Python's http.server): every call
/// fails as an HTTP/2 session error, and the summary gives h2's reason, so the mistake can be
/// told from a server that broke its sessions.
fn to_an_http1_server_the_calls_fail_saying_why(topo: &Topology, store: &[String]) -> Result<()> {
    const HTTP1_PORT: u16 = 8082;
    let mut server = topo.server("python3");
    server.args(["-u", "-c"]).arg(format!(
        "import http.server as h\n\
         s = h.HTTPServer(('{}', {HTTP1_PORT}), h.SimpleHTTPRequestHandler)\n\
         print('listening')\n\
         s.serve_forever()",
        topo.server_ip
    ));
    let (_server, _) = start_until(server, "listening")?;
    let mut replay = Topology::exec(&topo.client_ns, &capture_bin().to_string_lossy());
    replay
        .args(["replay", "grpc", "--target"])
        .arg(format!("http://{}:{HTTP1_PORT}", topo.server_ip))
        .args(["--json", "--quiet"])
        .args(store);
    let out = replay.output()?;
    let summary: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stderr).to_string())?;
    ensure!(!out.status.success(), "replay to HTTP/1 passed: {summary}");
    // Each call fails as the session breaks: opening the stream, or writing the body of a
    // call already under way.
    assert_eq!(summary["failed"], 5, "{summary}");
    let kinds: BTreeMap<String, Value> = serde_json::from_value(summary["failures"].clone())?;
    assert!(kinds.contains_key("http2_error"), "{summary}");
    assert!(
        kinds
            .keys()
            .all(|k| ["http2_error", "write_error"].contains(&k.as_str())),
        "{summary}"
    );
    let detail = summary["failure_details"]["http2_error"]
        .as_str()
        .unwrap_or_default();
    // h2 read the start of "HTTP/1.0 505 ..." as a frame header of 4.7 MB.
    assert!(detail.contains("frame with invalid size"), "{summary}");
    Ok(())
}

#[test]
fn grpc_is_recorded_inspected_and_replayed_byte_equal_on_kafka() -> Result<()> {
    let topo = Topology::new("grpk")?;
    topo.disable_offloads()?;
    let broker = Tansu::start_in(&topo.client_ns)?;
    grpc_round_trip(
        &topo,
        &[
            "--kafka".into(),
            broker.bootstrap(),
            "--topic".into(),
            "grpc".into(),
        ],
    )
}

/// The stored form's head: the request line and the header fields, in order.
fn stored_heads(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    // `inspect --bytes` prints each message's bytes escaped on the line after its summary.
    let mut heads = Vec::new();
    for bytes in text.lines().filter(|l| !l.contains(" conn=")) {
        let unescaped = bytes.replace("\\r\\n", "\n");
        let mut lines = unescaped.split('\n');
        let Some(start) = lines.next() else { continue };
        if !start.ends_with(" HTTP/2") {
            continue;
        }
        let fields = lines
            .take_while(|l| !l.is_empty())
            .filter(|l| !l.starts_with(':'))
            .filter_map(|l| {
                l.split_once(": ")
                    .map(|(n, v)| (n.to_string(), v.to_string()))
            })
            .collect();
        heads.push((start.to_string(), fields));
    }
    heads
}

#[test]
fn capture_started_mid_connection_never_stores_a_wrong_header_and_decodes_new_connections()
-> Result<()> {
    let topo = Topology::new("h2m")?;
    topo.disable_offloads()?;
    let _nginx = Nginx::start_h2c(&topo.server_ns, &[PORT])?;
    let work = tempfile::tempdir()?;
    let (go, sent) = (work.path().join("go"), work.path().join("sent.jsonl"));
    let mut session = topo.client("python3");
    session
        .arg(peer("h2_session.py"))
        .args([
            "--host",
            &topo.server_ip,
            "--port",
            &PORT.to_string(),
            "--authority",
            "svc",
            "--phase1",
            "20",
            "--phase2",
            "30",
            "--wait-file",
        ])
        .arg(&go)
        .arg("--out")
        .arg(&sent);
    let (mut session, _stdout) = start_until(session, "phase1 done")?;

    let data = tempfile::tempdir()?;
    let store = data_dir_args(data.path());
    let rec = CaptureRun::record(&topo.server_ns, &topo.server_if, "mid", &store)?;
    std::fs::write(&go, "")?;
    let status = session.0.wait()?;
    ensure!(status.success(), "h2_session.py failed");
    // Three new connections (one URL per curl, see above).
    for i in 0..3 {
        let url = format!("http://{}:{PORT}/index.html?fresh={i}", topo.server_ip);
        curl_h2c(&topo, &url, &["-H", "x-fresh: yes"])?;
    }
    let stderr = rec.stop_ok()?;

    // What the session sent, by path: every stored request of it must be exactly that.
    let truth: BTreeMap<String, Vec<(String, String)>> = std::fs::read_to_string(&sent)?
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            let path = v["path"].as_str().context("path")?.to_string();
            let headers = v["headers"]
                .as_array()
                .context("headers")?
                .iter()
                .filter_map(|h| Some((h[0].as_str()?.to_string(), h[1].as_str()?.to_string())))
                .filter(|(n, _)| !n.starts_with(':'))
                .collect();
            Ok((path, headers))
        })
        .collect::<Result<_>>()?;
    let (_, text) = inspect(&topo.server_ns, "mid", &store, true)?;
    let mut fresh = 0;
    for (start, fields) in stored_heads(&text) {
        let path = start.split(' ').nth(1).unwrap_or_default().to_string();
        if path.contains("fresh=") {
            fresh += 1;
            ensure!(
                fields.iter().any(|(n, v)| n == "x-fresh" && v == "yes"),
                "{start}: {fields:?}"
            );
            continue;
        }
        let expected = truth
            .get(&path)
            .with_context(|| format!("stored a request never sent: {start}"))?;
        assert_eq!(
            &fields, expected,
            "stored headers of {path} differ from what was sent"
        );
    }
    assert_eq!(fresh, 3, "the new connection is decoded fully:\n{text}");
    // The phase-2 header blocks refer to table entries the capture never saw: counted.
    let undecodable = stderr
        .split_whitespace()
        .find_map(|t| t.strip_prefix("h2_undecodable_header_blocks="))
        .context(format!("no undecodable count in:\n{stderr}"))?
        .parse::<u64>()?;
    ensure!(
        undecodable >= 30,
        "{undecodable} undecodable blocks:\n{stderr}"
    );
    Ok(())
}

#[test]
fn an_upgrade_to_h2c_is_followed_into_http2_and_replayed() -> Result<()> {
    let topo = Topology::new("h2u")?;
    topo.disable_offloads()?;
    let work = tempfile::tempdir()?;
    let (first_log, second_log) = (
        work.path().join("first.jsonl"),
        work.path().join("second.jsonl"),
    );
    let start = |port, log: &Path| peer_server(&topo, "h2c_upgrade.py", port, log);
    let (_first, _second) = (start(PORT, &first_log)?, start(REPLAY_PORT, &second_log)?);
    let data = tempfile::tempdir()?;
    let store = data_dir_args(data.path());
    let rec = CaptureRun::record(&topo.server_ns, &topo.server_if, "up", &store)?;
    let url = |p: &str| format!("http://{}:{PORT}{p}", topo.server_ip);
    run_ok(topo.client("curl").args([
        "-sS",
        "--http2",
        "-o",
        "/dev/null",
        &url("/a"),
        "-o",
        "/dev/null",
        &url("/b"),
    ]))?;
    let stderr = rec.stop_ok()?;

    let (lines, text) = inspect(&topo.server_ns, "up", &store, false)?;
    let requests: Vec<(String, bool)> = lines
        .iter()
        .filter_map(|l| l.request.as_ref().map(|(_, u)| (u.clone(), l.http2)))
        .collect();
    assert_eq!(
        requests,
        [("/a".to_string(), false), ("/b".to_string(), true)],
        "{text}\n{stderr}"
    );
    // The 101, then /a's answer on stream 1 (paired with the HTTP/1 request), then /b's.
    let a = lines
        .iter()
        .find(|l| l.request.as_ref().is_some_and(|(_, u)| u == "/a"))
        .context("/a")?;
    let answers: Vec<(Option<u16>, bool)> = lines
        .iter()
        .filter(|l| l.answers == Some(a.id))
        .map(|l| (l.status, l.http2))
        .collect();
    assert_eq!(answers, [(Some(101), false), (Some(200), true)], "{text}");

    let mut replay = topo.client(&capture_bin().to_string_lossy());
    replay
        .args([
            "replay",
            "up",
            "--target",
            &format!("http://{}:{REPLAY_PORT}", topo.server_ip),
            "--json",
            "--quiet",
        ])
        .args(&store);
    let out = replay.output()?;
    ensure!(
        out.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logged: Vec<(String, String)> = std::fs::read_to_string(&second_log)?
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok((
                v["path"].as_str().context("path")?.to_string(),
                v["http"].as_str().context("http")?.to_string(),
            ))
        })
        .collect::<Result<_>>()?;
    assert_eq!(
        logged,
        [
            ("/a".to_string(), "2".to_string()),
            ("/b".to_string(), "2".to_string())
        ]
    );
    Ok(())
}
