//! Recording under wrk load against nginx in a network namespace, nginx's access log as the
//! ground truth: what a recording holds with framing spread over threads, and how it ends.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::{AccessLogEntry, Nginx};
use tests::{capture_bin, multiset, run_ok};

const PORT: u16 = 8080;

/// One message line of `capture inspect`.
#[derive(Debug)]
struct Inspected {
    conn: String,
    id: u64,
    /// (method, URI) for requests.
    request: Option<(String, String)>,
    /// The request a response answers.
    answers: Option<u64>,
}

fn inspect(name: &str, data_dir: &Path) -> Result<Vec<Inspected>> {
    let out = run_ok(
        Command::new(capture_bin())
            .args(["inspect", name, "--data-dir"])
            .arg(data_dir),
    )?;
    let text = String::from_utf8(out.stdout)?;
    text.lines().map(parse_inspected).collect()
}

/// `TIME conn=C id=I SRC > DST request METHOD URI body=N node=X` or
/// `TIME conn=C id=I SRC > DST response STATUS to=R body=N node=X`.
fn parse_inspected(line: &str) -> Result<Inspected> {
    let f: Vec<&str> = line.split(' ').collect();
    let field = |i: usize, key: &str| -> Result<String> {
        f.get(i)
            .and_then(|v| v.strip_prefix(key))
            .map(str::to_string)
            .with_context(|| format!("no {key} in {line:?}"))
    };
    let conn = field(1, "conn=")?;
    let id: u64 = field(2, "id=")?.parse()?;
    let (request, answers) = match f.get(6).copied() {
        Some("request") => {
            let method = f.get(7).context("no method")?.to_string();
            let uri = f.get(8).context("no URI")?.to_string();
            (Some((method, uri)), None)
        }
        Some("response") => (None, field(8, "to=").ok().and_then(|r| r.parse().ok())),
        _ => anyhow::bail!("unexpected inspect line {line:?}"),
    };
    Ok(Inspected {
        conn,
        id,
        request,
        answers,
    })
}

/// wrk's counter in a unique URI (`...&n=123`): increases with every request a wrk thread
/// sends, so it increases along each connection.
fn wrk_counter(uri: &str) -> Result<u64> {
    let n = uri
        .rsplit_once("n=")
        .map(|(_, n)| n)
        .with_context(|| format!("no n= in {uri}"))?;
    Ok(n.parse()?)
}

fn wrk(topo: &Topology, seconds: u32, script: &Path) -> Result<()> {
    run_ok(
        topo.client("wrk")
            .args(["-t2", "-c16", &format!("-d{seconds}s"), "-s"])
            .arg(script)
            .arg(format!("http://{}:{PORT}/", topo.server_ip)),
    )?;
    Ok(())
}

fn answered(log: &[AccessLogEntry]) -> impl Iterator<Item = (String, String)> + '_ {
    log.iter().map(|e| (e.method.clone(), e.uri.clone()))
}

#[test]
fn two_framing_threads_record_exactly_the_access_log_with_each_connection_in_order() -> Result<()> {
    let topo = Topology::new("thr")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let data = tempfile::tempdir()?;
    let script = data.path().join("unique.lua");
    std::fs::write(&script, tests::WRK_UNIQUE_URIS_SCRIPT)?;
    let store = [
        "--data-dir".to_string(),
        data.path().display().to_string(),
        "--threads".to_string(),
        "2".to_string(),
    ];
    let run = CaptureRun::record(&topo.client_ns, &topo.client_if, "threads2", &store)?;
    wrk(&topo, 10, &script)?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = run.stop(libc::SIGINT)?;
    ensure!(out.status.success(), "record: {}", out.stderr.join("\n"));

    let log = nginx.access_log()?;
    ensure!(log.len() > 1000, "wrk made only {} requests", log.len());
    let messages = inspect("threads2", data.path())?;
    let requests: Vec<(String, String)> =
        messages.iter().filter_map(|m| m.request.clone()).collect();
    assert_eq!(requests.len(), log.len(), "{:?}", out.stderr);
    assert_eq!(multiset(requests), multiset(answered(&log)));

    // Ids are unique across the threads, and every connection's requests are stored in the
    // order wrk sent them, each response after the request it answers.
    let ids = multiset(messages.iter().map(|m| m.id));
    assert!(ids.values().all(|n| *n == 1), "duplicate ids");
    let mut last_n: HashMap<&str, u64> = HashMap::new();
    let mut seen: HashMap<u64, &str> = HashMap::new();
    for m in &messages {
        if let Some((_, uri)) = &m.request {
            let n = wrk_counter(uri)?;
            let previous = last_n.insert(&m.conn, n);
            assert!(
                previous.is_none_or(|p| p < n),
                "connection {} out of order: {previous:?} then {n}",
                m.conn
            );
            seen.insert(m.id, &m.conn);
        } else if let Some(request) = m.answers {
            assert_eq!(
                seen.get(&request).copied(),
                Some(m.conn.as_str()),
                "response {} before or away from its request {request}",
                m.id
            );
        }
    }
    assert!(last_n.len() >= 16, "{} connections", last_n.len());
    Ok(())
}
