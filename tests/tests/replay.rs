//! `capture replay` end to end: recordings (live, from GoReplay files, from pcaps) replayed to
//! nginx in a network namespace, whose access log is the ground truth: which requests arrived
//! (method, URI, length, body, headers) and when ($msec).

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tests::capture::{CaptureRun, Tcpdump};
use tests::chromium::{dump_dom, save_screenshot};
use tests::netns::Topology;
use tests::nginx::{AccessLogEntry, Nginx};
use tests::replay::{
    assert_detail, capture_in, get, json_count, log_from, replay, target, write_gor,
};
use tests::{capture_bin, multiset, run_ok};

const PORT: u16 = 8080;

/// What identifies a request in the access log, whatever its timing and answer.
fn key(e: &AccessLogEntry) -> (String, String, u64, String) {
    (
        e.method.clone(),
        e.uri.clone(),
        e.request_length,
        e.request_body.clone(),
    )
}

/// An alphanumeric body unique to `seed` (nginx logs bodies JSON-escaped; these need none).
fn body(seed: usize, len: usize) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|i| alphabet[(i * 7 + seed * 13 + i / 5) % alphabet.len()] as char)
        .collect()
}

#[test]
fn replay_sends_exactly_the_recorded_requests_per_connection_and_loop_2_sends_them_twice()
-> Result<()> {
    let topo = Topology::new("rpx")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let data = tempfile::tempdir()?;
    let store = ["--data-dir".to_string(), data.path().display().to_string()];
    let tcpdump = Tcpdump::start(&topo.client_ns, &topo.client_if)?;
    let run = CaptureRun::record(&topo.client_ns, &topo.client_if, "exact", &store)?;
    let url = |path: &str| format!("{}{path}", target(&topo, PORT));
    // Three keep-alive connections of ten GETs each.
    for c in 0..3 {
        let mut curl = topo.client("curl");
        curl.args(["-sS"]);
        for i in 0..10 {
            curl.args(["-o", "/dev/null", &url(&format!("/index.html?c={c}&i={i}"))]);
        }
        run_ok(&mut curl)?;
    }
    // POSTs with distinct bodies (one needs 100-continue), a HEAD, a chunked POST.
    for (i, len) in [10usize, 100, 1000, 5000, 20_000, 60_000]
        .into_iter()
        .enumerate()
    {
        let file = data.path().join(format!("body{i}"));
        std::fs::write(&file, body(i, len))?;
        run_ok(topo.client("curl").args([
            "-sS",
            "-o",
            "/dev/null",
            "--data-binary",
            &format!("@{}", file.display()),
            &url(&format!("/upload?post={i}")),
        ]))?;
    }
    run_ok(
        topo.client("curl")
            .args(["-sS", "-I", "-o", "/dev/null", &url("/index.html?head")]),
    )?;
    let chunked = data.path().join("chunked");
    std::fs::write(&chunked, body(99, 3000))?;
    run_ok(topo.client("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", chunked.display()),
        &url("/upload?chunked"),
    ]))?;
    std::thread::sleep(Duration::from_millis(300));
    let out = run.stop(libc::SIGINT)?;
    ensure!(out.status.success(), "record: {}", out.stderr.join("\n"));
    let pcap = data.path().join("exact.pcap");
    tcpdump.stop_into(&pcap)?;

    let recorded = nginx.access_log()?;
    assert_eq!(recorded.len(), 38);
    let recorded_keys = multiset(recorded.iter().map(key));
    assert!(recorded.iter().any(|e| e.request_body.len() == 60_000));

    // Once, at the recorded pace: the same requests, over as many connections as recorded.
    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &["exact", "--target", &target(&topo, PORT)],
    )?;
    assert!(ok, "{stderr}");
    let once = log_from(&nginx, recorded.len(), 38)?;
    assert_eq!(multiset(once.iter().map(key)), recorded_keys);
    assert_eq!(
        (
            json_count(&summary, "planned"),
            json_count(&summary, "completed"),
            json_count(&summary, "failed")
        ),
        (38, 38, 0)
    );
    assert_eq!(json_count(&summary, "status_mismatches"), 0, "{summary}");
    assert_eq!(
        json_count(&summary, "connections"),
        3 + 6 + 1 + 1,
        "{summary}"
    );
    // Within a connection, the recorded order.
    let c1: Vec<&str> = once
        .iter()
        .filter(|e| e.uri.contains("c=1&"))
        .map(|e| e.uri.as_str())
        .collect();
    let expected: Vec<String> = (0..10).map(|i| format!("/index.html?c=1&i={i}")).collect();
    assert_eq!(c1, expected);

    // --loop 2 --max: each exactly twice more.
    let before = nginx.access_log()?.len();
    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &[
            "exact",
            "--target",
            &target(&topo, PORT),
            "--loop",
            "2",
            "--max",
        ],
    )?;
    assert!(ok, "{stderr}");
    assert_eq!(json_count(&summary, "completed"), 76);
    let twice = log_from(&nginx, before, 76)?;
    let doubled: std::collections::HashMap<_, _> = recorded_keys
        .iter()
        .map(|(k, v)| (k.clone(), v * 2))
        .collect();
    assert_eq!(multiset(twice.iter().map(key)), doubled);

    // The same traffic replayed straight from tcpdump's pcap of it.
    let before = nginx.access_log()?.len();
    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &[
            "--pcap",
            &pcap.to_string_lossy(),
            "--port",
            "8080",
            "--target",
            &target(&topo, PORT),
            "--max",
        ],
    )?;
    assert!(ok, "{stderr}");
    assert_eq!(json_count(&summary, "completed"), 38, "{summary}");
    let from_pcap = log_from(&nginx, before, 38)?;
    assert_eq!(multiset(from_pcap.iter().map(key)), recorded_keys);
    Ok(())
}

#[test]
fn speed_2_takes_half_the_recorded_span_and_rate_200_holds_for_20_seconds() -> Result<()> {
    let topo = Topology::new("rpt")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let data = tempfile::tempdir()?;

    // 21 requests over 4 s, on their own connections (as GoReplay files have them).
    let spaced: Vec<(u64, String)> = (0..21u64)
        .map(|i| (i * 200, get(&format!("/index.html?spaced={i}"), "")))
        .collect();
    let file = data.path().join("spaced.gor");
    write_gor(&file, &spaced)?;
    capture_in(
        data.path(),
        &["import", &file.to_string_lossy(), "--name", "spaced"],
    )?;
    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &["spaced", "--target", &target(&topo, PORT), "--speed", "2"],
    )?;
    assert!(ok, "{stderr}");
    let log = log_from(&nginx, 0, 21)?;
    assert_eq!(log.len(), 21);
    let uris: Vec<&str> = log.iter().map(|e| e.uri.as_str()).collect();
    let expected: Vec<String> = (0..21).map(|i| format!("/index.html?spaced={i}")).collect();
    assert_eq!(uris, expected, "recorded order");
    let span = log[20].msec - log[0].msec;
    assert!(
        (1.8..=2.2).contains(&span),
        "--speed 2 over a 4 s recording took {span:.3} s"
    );
    eprintln!(
        "speed 2: span {span:.3} s; schedule lag {}",
        summary["schedule_lag_ms"]
    );

    // 4000 requests recorded in bursts, replayed at 200/s: 20 s.
    let bursty: Vec<(u64, String)> = (0..4000u64)
        .map(|i| ((i / 100) * 10, get(&format!("/index.html?rate={i}"), "")))
        .collect();
    let file = data.path().join("bursty.gor");
    write_gor(&file, &bursty)?;
    capture_in(
        data.path(),
        &["import", &file.to_string_lossy(), "--name", "bursty"],
    )?;
    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &["bursty", "--target", &target(&topo, PORT), "--rate", "200"],
    )?;
    assert!(ok, "{stderr}");
    assert_eq!(json_count(&summary, "completed"), 4000);
    let log = log_from(&nginx, 21, 4000)?;
    assert_eq!(log.len(), 4000);
    let first = log.iter().map(|e| e.msec).fold(f64::MAX, f64::min);
    let last = log.iter().map(|e| e.msec).fold(f64::MIN, f64::max);
    let rate = 3999.0 / (last - first);
    assert!(
        (194.0..=206.0).contains(&rate),
        "--rate 200 held {rate:.1}/s"
    );
    // Every whole second of the run saw 200 ± 10%.
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    for e in &log {
        *per_second.entry((e.msec - first) as u64).or_default() += 1;
    }
    let whole: Vec<(u64, u64)> = per_second
        .iter()
        .filter(|(s, _)| **s < ((last - first) as u64))
        .map(|(s, c)| (*s, *c))
        .collect();
    assert!(whole.len() >= 19, "{per_second:?}");
    for (second, count) in whole {
        assert!(
            (180..=220).contains(&count),
            "second {second}: {count} requests"
        );
    }
    eprintln!(
        "rate 200: {rate:.2}/s; schedule lag {}",
        summary["schedule_lag_ms"]
    );
    Ok(())
}

#[test]
fn filters_and_rewrites_show_up_in_the_access_log_as_asked() -> Result<()> {
    let topo = Topology::new("rpf")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let data = tempfile::tempdir()?;
    let requests = vec![
        (0, get("/api/v1/users/1", "User-Agent: mobile-app\r\nX-Drop-Me: yes\r\n")),
        (10, get("/api/v1/users/2", "User-Agent: desktop\r\n")),
        (
            20,
            "POST /upload?order=1 HTTP/1.1\r\nHost: origin.example\r\nUser-Agent: mobile-app\r\nContent-Length: 5\r\n\r\nhello"
                .to_string(),
        ),
        (30, get("/health", "User-Agent: mobile-app\r\n")),
        (40, get("/api/v1/items?id=5", "User-Agent: mobile-app\r\nX-Drop-Me: also\r\n")),
    ];
    let file = data.path().join("mixed.gor");
    write_gor(&file, &requests)?;
    capture_in(
        data.path(),
        &["import", &file.to_string_lossy(), "--name", "mixed"],
    )?;

    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &[
            "mixed",
            "--target",
            &target(&topo, PORT),
            "--max",
            "--filter",
            "method=GET",
            "--filter",
            "url!=^/health",
            "--filter",
            "header:User-Agent=^mobile",
            "--rewrite-url",
            "^/api/v1/(.*)=>/api/v2/$1",
            "--set-header",
            "X-Replay: yes",
            "--drop-header",
            "X-Drop-Me",
            "--host",
            "replay.example",
        ],
    )?;
    assert!(ok, "{stderr}");
    let log = log_from(&nginx, 0, 2)?;
    let mut seen: Vec<(&str, &str, &str, &str, &str)> = log
        .iter()
        .map(|e| {
            (
                e.method.as_str(),
                e.uri.as_str(),
                e.host.as_str(),
                e.x_replay.as_str(),
                e.x_drop_me.as_str(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("GET", "/api/v2/items?id=5", "replay.example", "yes", ""),
            ("GET", "/api/v2/users/1", "replay.example", "yes", ""),
        ]
    );
    // Recorded 200, nginx has no such files: both differences are reported.
    assert_eq!(json_count(&summary, "planned"), 2);
    assert_eq!(json_count(&summary, "status_mismatches"), 2, "{summary}");
    assert_eq!(summary["mismatches"][0]["recorded"], 200);
    assert_eq!(summary["mismatches"][0]["replayed"], 404);

    // Without rewrites the POST goes byte for byte: nginx counts exactly the recorded length.
    let (ok, _, stderr) = replay(
        &topo,
        data.path(),
        &[
            "mixed",
            "--target",
            &target(&topo, PORT),
            "--filter",
            "method=POST",
        ],
    )?;
    assert!(ok, "{stderr}");
    let log = log_from(&nginx, 2, 1)?;
    assert_eq!(log.len(), 1);
    assert_eq!(
        (
            log[0].method.as_str(),
            log[0].uri.as_str(),
            log[0].request_length,
            log[0].request_body.as_str()
        ),
        (
            "POST",
            "/upload?order=1",
            requests[2].1.len() as u64,
            "hello"
        )
    );

    // Bad rules: one line naming the flag, exit 2 for usage, nothing sent.
    for (args, says) in [
        (vec!["--filter", "colour=red"], "--filter"),
        (vec!["--rewrite-url", "no-arrow"], "--rewrite-url"),
        (vec!["--filter", "url=("], "regex"),
        (
            vec!["--set-header", "X-Evil: a\r\nX-Injected: b"],
            "--set-header",
        ),
    ] {
        let out = topo
            .client(&capture_bin().to_string_lossy())
            .args([
                "replay",
                "mixed",
                "--target",
                &target(&topo, PORT),
                "--data-dir",
            ])
            .arg(data.path())
            .args(&args)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(nginx.access_log()?.len(), 3);
    Ok(())
}

/// Replays the GoReplay file `gor` with `extra` arguments to a [`bad_server`] of `mode`, and
/// stops the server.
fn replay_to_bad_server(
    topo: &Topology,
    data_dir: &std::path::Path,
    gor: &str,
    mode: &str,
    extra: &[&str],
) -> Result<(bool, serde_json::Value, String)> {
    const BAD_PORT: u16 = 9998;
    let mut server = bad_server(&topo.server_ns, BAD_PORT, mode)?;
    let url = target(topo, BAD_PORT);
    let mut args = vec!["--gor", gor, "--target", &url];
    args.extend(extra);
    let result = replay(topo, data_dir, &args);
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// A TCP server in `ns` on `port` that accepts and then never answers (`silent`), closes at
/// once after reading (`close`), or greets with an SSH banner (`banner`).
fn bad_server(ns: &str, port: u16, mode: &str) -> Result<Child> {
    let script = format!(
        r#"
import socket, threading, time
s = socket.socket(socket.AF_INET6 if False else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {port}))
s.listen(128)
print("listening", flush=True)
held = []
while True:
    c, _ = s.accept()
    if "{mode}" == "close":
        c.recv(65536)
        c.close()
    elif "{mode}" == "banner":
        c.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        held.append(c)
    else:
        held.append(c)
"#
    );
    let mut child = Topology::exec(ns, "python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    use std::io::BufRead as _;
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    ensure!(
        line.starts_with("listening"),
        "bad server did not start: {line:?}"
    );
    Ok(child)
}

#[test]
fn target_down_slow_or_hanging_up_is_counted_the_replay_finishes_and_exits_non_zero() -> Result<()>
{
    let topo = Topology::new("rpe")?;
    let data = tempfile::tempdir()?;
    let requests: Vec<(u64, String)> = (0..20u64)
        .map(|i| (i, get(&format!("/index.html?e={i}"), "")))
        .collect();
    let file = data.path().join("twenty.gor");
    write_gor(&file, &requests)?;
    let gor = file.to_string_lossy().to_string();

    // Nothing listens.
    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &["--gor", &gor, "--target", &target(&topo, 9999)],
    )?;
    assert!(!ok);
    assert_eq!(summary["failures"]["connect_refused"], 20, "{summary}");
    assert_eq!(json_count(&summary, "completed"), 0);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert_eq!(last, "error: 20 of 20 requests failed (connect_refused=20)");
    assert_detail(&summary, "connect_refused", "Connection refused");

    // No route to the target (the client namespace has none beyond its link): the summary
    // says which connect error it was, in the OS's words.
    let (ok, summary, _) = replay(
        &topo,
        data.path(),
        &["--gor", &gor, "--target", "http://192.0.2.1:80", "--max"],
    )?;
    assert!(!ok);
    assert_eq!(summary["failures"]["connect_error"], 20, "{summary}");
    assert_detail(&summary, "connect_error", "Network is unreachable");

    // Something that is not HTTP answers (an SSH banner): named, with the bytes it began with.
    // The report page shows it under the failure's row.
    let page = data.path().join("failures.html");
    let page_arg = page.to_string_lossy().to_string();
    let extra = ["--max", "--report", &page_arg];
    let (ok, summary, _) = replay_to_bad_server(&topo, data.path(), &gor, "banner", &extra)?;
    assert!(!ok);
    assert_eq!(summary["failures"]["bad_response"], 20, "{summary}");
    assert_detail(
        &summary,
        "bad_response",
        r#"began "SSH-2.0-OpenSSH_9.6\r\n""#,
    );
    let dom = dump_dom(&page, data.path())?;
    let row = dom
        .split("<tr data-failure=\"bad_response\">")
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .context("the report has no bad_response row")?;
    ensure!(
        row.contains("class=\"failure-detail\">first: the answer's bytes began")
            && row.contains("SSH-2.0-OpenSSH_9.6")
            && row.contains(">20</td>"),
        "bad_response row: {row}"
    );
    save_screenshot(&page, "replay-failures-report", 1800, data.path())?;

    // Accepts and never answers: every request times out, and the replay still ends.
    let extra = ["--timeout", "300ms", "--max"];
    let (ok, summary, _) = replay_to_bad_server(&topo, data.path(), &gor, "silent", &extra)?;
    assert!(!ok);
    assert_eq!(summary["failures"]["response_timeout"], 20, "{summary}");

    // Hangs up after reading.
    let (ok, summary, _) = replay_to_bad_server(&topo, data.path(), &gor, "close", &["--max"])?;
    assert!(!ok);
    assert_eq!(
        summary["failures"]["closed_before_response"], 20,
        "{summary}"
    );

    // --exit-after ends a long replay early, on purpose: not a failure.
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &[
            "--gor",
            &gor,
            "--target",
            &target(&topo, PORT),
            "--rate",
            "10",
            "--exit-after",
            "1s",
        ],
    )?;
    assert!(ok, "{stderr}");
    let completed = json_count(&summary, "completed");
    assert!((8..=12).contains(&completed), "{summary}");
    // A request written just before the stop still gets its answer (the stop grace): what
    // nginx served is exactly what the report counts as completed.
    assert_eq!(json_count(&summary, "in_flight"), 0, "{summary}");
    // The file is read as the replay goes: what was read ahead and never sent is not run.
    let planned = json_count(&summary, "planned");
    assert!(planned >= completed && planned <= 20, "{summary}");
    assert_eq!(json_count(&summary, "not_run"), planned - completed);
    assert!(
        summary["ended_early"]
            .as_str()
            .unwrap_or_default()
            .contains("--exit-after")
    );
    assert_eq!(nginx.access_log()?.len() as u64, completed);
    Ok(())
}

#[test]
fn wrk_traffic_recorded_on_one_nginx_replays_to_a_second_request_for_request() -> Result<()> {
    let topo = Topology::new("rpw")?;
    let origin = Nginx::start(&topo.server_ns, &[PORT])?;
    let data = tempfile::tempdir()?;
    let script = data.path().join("unique.lua");
    std::fs::write(&script, tests::WRK_UNIQUE_URIS_SCRIPT)?;
    let store = ["--data-dir".to_string(), data.path().display().to_string()];
    let run = CaptureRun::record(&topo.client_ns, &topo.client_if, "wrk", &store)?;
    run_ok(
        topo.client("wrk")
            .args(["-t2", "-c8", "-d3s", "-s"])
            .arg(&script)
            .arg(format!("{}/", target(&topo, PORT))),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let out = run.stop(libc::SIGINT)?;
    ensure!(out.status.success(), "record: {}", out.stderr.join("\n"));
    let recorded = origin.access_log()?;
    assert!(
        recorded.len() > 1000,
        "wrk made only {} requests",
        recorded.len()
    );

    // The second nginx listens on the client host's loopback.
    let copy = Nginx::start(&topo.client_ns, &[8081])?;
    let out = topo
        .client(&capture_bin().to_string_lossy())
        .args([
            "replay",
            "wrk",
            "--target",
            "http://127.0.0.1:8081",
            "--quiet",
            "--data-dir",
        ])
        .arg(data.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{stdout}");
    let replayed = log_from(&copy, 0, recorded.len())?;
    let request = |e: &AccessLogEntry| (e.method.clone(), e.uri.clone(), e.request_length);
    assert_eq!(
        multiset(replayed.iter().map(request)),
        multiset(recorded.iter().map(request))
    );
    Ok(())
}
