//! Live HTTP framing end to end: wrk against nginx in a network namespace for 10 s while
//! `capture messages` runs on the client's veth; the messages printed must equal nginx's
//! access log, request for request.

use anyhow::{Context, Result};
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::{multiset, run_ok};

const PORT: u16 = 8080;

#[test]
fn messages_from_ten_seconds_of_wrk_equal_the_nginx_access_log() -> Result<()> {
    let topo = Topology::new("wrk")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("unique.lua");
    std::fs::write(&script, tests::WRK_UNIQUE_URIS_SCRIPT)?;

    let capture = CaptureRun::start(
        &topo.client_ns,
        &[
            "messages",
            "--iface",
            &topo.client_if,
            "--port",
            &PORT.to_string(),
        ],
    )?;
    let wrk = run_ok(
        topo.client("wrk")
            .args(["-t2", "-c16", "-d10s", "-s"])
            .arg(&script)
            .arg(format!("http://{}:{PORT}/", topo.server_ip)),
    )?;
    // wrk closes its connections at the end; give the last FINs a moment.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = capture.stop(libc::SIGINT)?;
    assert!(out.status.success(), "{}", out.stderr.join("\n"));

    let log = nginx.access_log()?;
    assert!(
        log.len() > 1000,
        "wrk made only {} requests:\n{}",
        log.len(),
        String::from_utf8_lossy(&wrk.stdout)
    );

    let mut requests = Vec::new();
    let mut statuses = Vec::new();
    let mut incomplete = 0;
    for line in &out.stdout {
        let (head, tail) = line.rsplit_once(" body=").context("line without body=")?;
        incomplete += usize::from(tail.ends_with("incomplete"));
        let fields: Vec<&str> = head.splitn(7, ' ').collect();
        let rest = fields.get(6).context("short line")?;
        if let Some(req) = rest.strip_prefix("request ") {
            let (method, uri) = req.split_once(' ').context("request without URI")?;
            requests.push((method.to_string(), uri.to_string()));
        } else if let Some(resp) = rest.strip_prefix("response ") {
            statuses.push(resp.split(' ').next().unwrap_or("").parse::<u16>()?);
        }
    }
    let counters = out.counters()?;
    eprintln!(
        "{} requests, logged statuses {:?}, {} responses captured; counters: {counters:?}",
        log.len(),
        multiset(log.iter().map(|e| e.status)),
        statuses.len()
    );
    assert_eq!(
        counters["dropped_ring_full"], 0,
        "drops make the comparison moot: {counters:?}"
    );
    assert_eq!(incomplete, 0, "incomplete messages: {counters:?}");
    assert_eq!(
        requests.len(),
        log.len(),
        "request count differs from the access log"
    );
    assert_eq!(
        multiset(requests),
        multiset(log.iter().map(|e| (e.method.clone(), e.uri.clone()))),
        "requests differ from the access log"
    );
    // Responses: when its 10 s are up wrk closes connections with requests in flight. nginx
    // logs those as 499 (client closed request) and sends no response; and a response written
    // into a connection the client reset may never reach the wire (at most one per reset).
    let answered: Vec<_> = log.iter().filter(|e| e.status != 499).collect();
    let logged = multiset(answered.iter().map(|e| e.status));
    for (status, n) in multiset(statuses.iter().copied()) {
        assert!(
            logged.get(&status).copied().unwrap_or(0) >= n,
            "more {status} responses than logged"
        );
    }
    let missing = answered.len().saturating_sub(statuses.len());
    assert!(
        missing as u64 <= counters["resets"],
        "{missing} responses missing with {} resets",
        counters["resets"]
    );
    Ok(())
}
