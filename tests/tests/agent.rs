//! `capture agent` over real HTTP (curl) in network namespaces: recordings and replays started,
//! polled and stopped through the API match what the CLI gives; bad calls get the right status
//! and a message naming the problem; two agents share one Kafka recording; /metrics parses with
//! the reference Prometheus parser (prometheus-client) and moves with traffic; the OpenAPI
//! document validates (openapi-spec-validator) and lists exactly the routes the agent serves.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tests::agent::{Api, Sample, TOKEN, sample, start_agent};
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::replay::log_from;
use tests::{capture_bin, multiset, run_ok};

const API_PORT: u16 = 9300;

/// An agent in the client's namespace on the client's address (beyond loopback, so with the
/// token), storing in `data`, with `extra` flags; the address it listens on.
fn agent_on_client(topo: &Topology, data: &Path, extra: &[&str]) -> Result<(CaptureRun, String)> {
    let dir = data.display().to_string();
    let listen = format!("{}:{API_PORT}", topo.client_ip);
    let mut flags = vec!["--data-dir", dir.as_str()];
    flags.extend(extra);
    let agent = start_agent(&topo.client_ns, &listen, data, &flags, &[])?;
    Ok((agent, listen))
}

fn curl_n(topo: &Topology, port: u16, tag: &str, n: usize) -> Result<()> {
    for i in 0..n {
        run_ok(topo.client("curl").args([
            "-sS",
            "-o",
            "/dev/null",
            &format!("http://{}:{port}/index.html?{tag}={i}", topo.server_ip),
        ]))?;
    }
    Ok(())
}

/// The agent's replay threads (`--send-threads`): how many, and their CPU time so far (ns).
fn replay_threads(pid: i32) -> Result<(usize, u64)> {
    let mut count = 0;
    let mut cpu_ns = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        if std::fs::read_to_string(task.join("comm"))?.trim() != "replay-send" {
            continue;
        }
        count += 1;
        let schedstat = std::fs::read_to_string(task.join("schedstat"))?;
        let ran: u64 = schedstat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse().ok())
            .context("schedstat")?;
        cpu_ns += ran;
    }
    Ok((count, cpu_ns))
}

/// Waits until `f` holds (live counters update every second).
fn eventually(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out waiting for {what}")
}

#[test]
fn recordings_and_replays_over_the_api_match_the_cli_and_metrics_move_with_traffic() -> Result<()> {
    let topo = Topology::new("agt")?;
    let nginx = Nginx::start(&topo.server_ns, &[8080])?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let (agent, listen) = agent_on_client(&topo, data.path(), &["--send-threads", "3"])?;
    // Called from the server host: the agent listens beyond loopback.
    let api = Api {
        ns: &topo.server_ns,
        base: format!("http://{listen}"),
    };
    assert_eq!(api.raw("GET", "/healthz", None, None)?.0, 200);

    let body = json!({"name": "api1", "interfaces": [topo.client_if], "ports": [8080]}).to_string();
    let started = api.ok("POST", "/v1/recordings", Some(&body))?;
    assert_eq!(started["state"], "recording");
    let before = api.metrics()?;
    curl_n(&topo, 8080, "api", 10)?;
    eventually("20 messages in the live counters", || {
        let v = api.ok("GET", "/v1/recordings/api1", None)?;
        Ok(v["state"] == "recording"
            && v["live"]["messages_queued"] == 20
            && v["live"]["messages_written"] == 20)
    })?;
    let after = api.metrics()?;
    let messages = |s: &[Sample]| {
        sample(
            s,
            "capture_recording_messages_total",
            &[("recording", "api1")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!((messages(&before), messages(&after)), (0.0, 20.0));
    let captured = |s: &[Sample]| {
        sample(
            s,
            "capture_kernel_packets_total",
            &[("recording", "api1"), ("counter", "captured")],
        )
        .unwrap_or(0.0)
    };
    assert!(
        captured(&after) > captured(&before),
        "kernel counters did not move"
    );
    assert_eq!(sample(&after, "capture_recordings_active", &[]), Some(1.0));
    // All 20 written by the store thread: nothing waits in its queue.
    assert_eq!(
        sample(
            &after,
            "capture_recording_store_backlog_messages",
            &[("recording", "api1")]
        ),
        Some(0.0)
    );

    let stopped = api.ok("POST", "/v1/recordings/api1/stop", None)?;
    assert_eq!(stopped["state"], "complete");
    assert_eq!(stopped["messages"], 20);
    let list = api.ok("GET", "/v1/recordings", None)?;
    assert!(
        list["recordings"]
            .as_array()
            .is_some_and(|l| l.iter().any(|r| r["name"] == "api1"))
    );
    // The CLI sees the same recording.
    let inspect =
        run_ok(Command::new(capture_bin()).args(["inspect", "api1", "--data-dir", &dir]))?;
    assert_eq!(String::from_utf8(inspect.stdout)?.lines().count(), 20);

    // A replay through the API, next to the same replay through the CLI.
    let target = format!("http://{}:8080", topo.server_ip);
    let body =
        json!({"recording": "api1", "target": target, "max": true, "diff": true}).to_string();
    let (threads, cpu_before) = replay_threads(agent.pid())?;
    assert_eq!(threads, 3, "--send-threads 3");
    let created = api.ok("POST", "/v1/replays", Some(&body))?;
    let id = created["id"].as_str().context("no replay id")?.to_string();
    let done = api.wait_replay(&id)?;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["progress"]["completed"], 10);
    // The replay sent on the agent's replay threads, not on the threads serving the API
    // (those stay parked while nothing is replayed: no timer, no task).
    let (_, cpu_after) = replay_threads(agent.pid())?;
    assert!(cpu_after > cpu_before, "the replay threads did not run");
    // nginx answers as recorded: the diff finds every answer identical, and the report page
    // shows the same.
    let diff = &done["report"]["diff"];
    assert_eq!(
        (&diff["requests"], &diff["identical"]),
        (&json!(10), &json!(10)),
        "{diff}"
    );
    let (status, page) = api.raw(
        "GET",
        &format!("/v1/replays/{id}/report"),
        None,
        Some(TOKEN),
    )?;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.contains("id=\"endpoints\""),
        "{page}"
    );
    let cli = run_ok(topo.client(&capture_bin().to_string_lossy()).args([
        "replay",
        "api1",
        "--target",
        &target,
        "--max",
        "--json",
        "--quiet",
        "--data-dir",
        &dir,
    ]))?;
    let cli: Value = serde_json::from_slice(&cli.stdout)?;
    for field in [
        "planned",
        "completed",
        "failed",
        "statuses",
        "status_mismatches",
        "connections",
    ] {
        assert_eq!(
            done["report"][field], cli[field],
            "{field}: API {done} CLI {cli}"
        );
    }
    let log = nginx.access_log()?;
    assert_eq!(log.len(), 30);
    let uris = |range: std::ops::Range<usize>| multiset(log[range].iter().map(|e| e.uri.clone()));
    assert_eq!(uris(10..20), uris(0..10));
    assert_eq!(uris(20..30), uris(0..10));
    let m = api.metrics()?;
    assert_eq!(
        sample(
            &m,
            "capture_replay_requests_total",
            &[("replay", &id), ("outcome", "completed")]
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(
            &m,
            "capture_replay_responses_total",
            &[("replay", &id), ("status", "200")]
        ),
        Some(10.0)
    );

    // A long replay stopped with DELETE.
    let body = json!({"recording": "api1", "target": target, "rate": 5.0, "loop": 20}).to_string();
    let created = api.ok("POST", "/v1/replays", Some(&body))?;
    let id = created["id"].as_str().context("no replay id")?.to_string();
    std::thread::sleep(Duration::from_millis(1200));
    let running = api.ok("GET", &format!("/v1/replays/{id}"), None)?;
    assert_eq!(running["state"], "running");
    assert!(
        running["progress"]["done"].as_u64().unwrap_or(0) >= 3,
        "{running}"
    );
    let stopped = api.ok("DELETE", &format!("/v1/replays/{id}"), None)?;
    assert_eq!(stopped["state"], "stopped");
    let completed = stopped["report"]["completed"].as_u64().unwrap_or(0);
    assert!(
        completed < 200 && stopped["report"]["not_run"].as_u64().unwrap_or(0) > 0,
        "{stopped}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(nginx.access_log()?.len() as u64, 30 + completed);
    copies_and_a_sample_through_the_api(&api, &nginx, &target)?;

    // SIGTERM: the agent ends cleanly and leaves nothing attached.
    let out = agent.stop(libc::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr.join("\n"));
    let left = Topology::attachments(&topo.client_ns, &topo.client_if)?.leftovers();
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

/// Copies, a copy header and a sample asked for through the API: the 10 requests of `api1`
/// (the first 10 lines of nginx's log) arrive once per copy, and the report counts each copy.
fn copies_and_a_sample_through_the_api(api: &Api, nginx: &Nginx, target: &str) -> Result<()> {
    let before = nginx.access_log()?.len();
    let body = json!({"recording": "api1", "target": target, "max": true, "copies": 3,
        "copy_header": "X-Copy", "sample": "100%"})
    .to_string();
    let created = api.ok("POST", "/v1/replays", Some(&body))?;
    assert_eq!(created["state"], "running", "{created}");
    let done = api.wait_replay(created["id"].as_str().context("no replay id")?)?;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["progress"]["planned"], 30, "{done}");
    assert_eq!(done["progress"]["completed"], 30);
    // The recording's 20 messages (10 requests, 10 responses) were read, of 20.
    assert_eq!(
        (&done["progress"]["read"], &done["progress"]["messages"]),
        (&json!(20), &json!(20)),
        "{done}"
    );
    let report = &done["report"];
    // 10 connections of one request each: too few for the connection to be the unit.
    assert_eq!(report["sample"]["unit"], "request", "{report}");
    assert_eq!(report["sample"]["requests_kept"], 10, "{report}");
    let log = log_from(nginx, 0, before + 30)?;
    let recorded = multiset(log[..10].iter().map(|e| e.uri.clone()));
    for copy in 1..=3u64 {
        assert_eq!(
            report["copies"][copy as usize - 1]["copy"],
            copy,
            "{report}"
        );
        assert_eq!(
            report["copies"][copy as usize - 1]["completed"],
            10,
            "{report}"
        );
        let mine = log[before..]
            .iter()
            .filter(|e| e.x_copy == copy.to_string());
        assert_eq!(
            multiset(mine.map(|e| e.uri.clone())),
            recorded,
            "copy {copy}"
        );
    }
    Ok(())
}

/// Method, path, body, token, expected status, what the message must name.
type BadCall<'a> = (&'a str, &'a str, String, Option<&'a str>, u16, &'a str);

#[test]
fn bad_calls_get_the_right_status_and_a_message_naming_the_problem() -> Result<()> {
    let topo = Topology::new("agb")?;
    let _nginx = Nginx::start(&topo.server_ns, &[8080])?;
    let data = tempfile::tempdir()?;
    let dir = data.path().display().to_string();
    let allowed = format!("{}:8080", topo.server_ip);
    let (agent, listen) = agent_on_client(&topo, data.path(), &["--allow-target", &allowed])?;
    let api = Api {
        ns: &topo.client_ns,
        base: format!("http://{listen}"),
    };

    // A recording that must survive everything below.
    let good = json!({"name": "keep", "interfaces": [topo.client_if], "ports": [8080]}).to_string();
    api.ok("POST", "/v1/recordings", Some(&good))?;
    curl_n(&topo, 8080, "keep", 5)?;

    let iface = topo.client_if.clone();
    let cases: Vec<BadCall> = vec![
        ("POST", "/v1/recordings", "{".into(), Some(TOKEN), 400, "request body"),
        ("POST", "/v1/recordings", json!({"name": "x", "interfaces": [iface], "ports": [8080], "bogus": 1}).to_string(), Some(TOKEN), 400, "bogus"),
        ("POST", "/v1/recordings", json!({"name": "x", "interfaces": [iface], "ports": [70000]}).to_string(), Some(TOKEN), 400, "ports: 70000"),
        ("POST", "/v1/recordings", json!({"name": "x", "interfaces": [iface], "ports": [0]}).to_string(), Some(TOKEN), 400, "ports: 0"),
        ("POST", "/v1/recordings", json!({"name": "x", "interfaces": ["nosuch0"], "ports": [8080]}).to_string(), Some(TOKEN), 400, "nosuch0"),
        ("POST", "/v1/recordings", json!({"name": "bad name", "interfaces": [iface], "ports": [8080]}).to_string(), Some(TOKEN), 400, "name"),
        ("POST", "/v1/recordings", good.clone(), None, 401, "token"),
        ("POST", "/v1/recordings", good.clone(), Some("wrong-token-of-same-len"), 401, "token"),
        ("GET", "/v1/recordings", String::new(), Some("x"), 401, "token"),
        ("POST", "/v1/recordings", good.clone(), Some(TOKEN), 409, "already running"),
        ("POST", "/v1/recordings/nope/stop", String::new(), Some(TOKEN), 404, "nope"),
        ("GET", "/v1/recordings/nope", String::new(), Some(TOKEN), 404, "nope"),
        ("GET", "/v1/replays/r999", String::new(), Some(TOKEN), 404, "r999"),
        ("POST", "/v1/replays", json!({"recording": "nope", "target": format!("http://{allowed}")}).to_string(), Some(TOKEN), 404, "nope"),
        ("POST", "/v1/replays", json!({"recording": "keep", "target": "http://10.9.9.9:80"}).to_string(), Some(TOKEN), 403, "allow-target"),
        ("POST", "/v1/replays", json!({"recording": "keep", "target": "ftp://x"}).to_string(), Some(TOKEN), 400, "target"),
        ("POST", "/v1/replays", json!({"recording": "keep", "target": format!("http://{allowed}"), "filters": ["colour=red"]}).to_string(), Some(TOKEN), 400, "--filter"),
        ("POST", "/v1/replays", json!({"recording": "keep", "target": format!("http://{allowed}"), "speed": -1}).to_string(), Some(TOKEN), 400, "--speed"),
        ("POST", "/v1/replays", json!({"recording": "keep", "target": format!("http://{allowed}"), "copies": 0}).to_string(), Some(TOKEN), 400, "--copies"),
        ("POST", "/v1/replays", json!({"recording": "keep", "target": format!("http://{allowed}"), "sample": "0%"}).to_string(), Some(TOKEN), 400, "sample: --sample"),
        ("GET", "/v1/nothing", String::new(), Some(TOKEN), 404, "no route"),
    ];
    for (method, path, body, token, status, says) in cases {
        let body = (!body.is_empty()).then_some(body.as_str());
        let (got, v) = api.call(method, path, body, token)?;
        let message = v["error"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{method} {path} {body:?}: {v}");
        assert!(
            message.contains(says),
            "{method} {path} {body:?}: {message:?} lacks {says:?}"
        );
    }
    // Still up, nothing lost, nothing left attached by the failed starts.
    assert_eq!(api.raw("GET", "/healthz", None, None)?.0, 200);
    let stopped = api.ok("POST", "/v1/recordings/keep/stop", None)?;
    assert_eq!(stopped["messages"], 10, "{stopped}");
    let out = agent.stop(libc::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr.join("\n"));
    assert!(
        Topology::attachments(&topo.client_ns, &topo.client_if)?
            .leftovers()
            .is_empty()
    );

    // Beyond loopback without a token: refused at start, one line.
    let out = topo
        .client(&capture_bin().to_string_lossy())
        .args(["agent", "--listen", &listen, "--data-dir", &dir])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("--token-file"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn two_agents_record_one_shared_kafka_recording_and_its_replay_sends_both_nodes_requests()
-> Result<()> {
    let topo = Topology::new("ag2")?;
    let nginx = Nginx::start(&topo.server_ns, &[8080, 8081])?;
    let broker = tests::broker::Tansu::start_on(&topo.client_ns, &topo.client_ip)?;
    let kafka = broker.bootstrap();
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let store = [
        "--kafka",
        kafka.as_str(),
        "--topic",
        "shared-test",
        "--partitions",
        "2",
    ];
    let listen_a = format!("{}:{API_PORT}", topo.client_ip);
    let listen_b = format!("{}:{API_PORT}", topo.server_ip);
    let agent_a = start_agent(
        &topo.client_ns,
        &listen_a,
        dir_a.path(),
        &store,
        &[("CAPTURE_NODE", "node-a")],
    )?;
    let agent_b = start_agent(
        &topo.server_ns,
        &listen_b,
        dir_b.path(),
        &store,
        &[("CAPTURE_NODE", "node-b")],
    )?;
    let a = Api {
        ns: &topo.client_ns,
        base: format!("http://{listen_a}"),
    };
    let b = Api {
        ns: &topo.server_ns,
        base: format!("http://{listen_b}"),
    };

    // Node a sees port 8080 on its veth, node b port 8081 on its own: disjoint traffic.
    let start = |api: &Api, iface: &str, port: u16| {
        api.ok(
            "POST",
            "/v1/recordings",
            Some(&json!({"name": "shared", "interfaces": [iface], "ports": [port]}).to_string()),
        )
    };
    assert_eq!(start(&a, &topo.client_if, 8080)?["shared"], true);
    assert_eq!(start(&b, &topo.server_if, 8081)?["shared"], true);
    curl_n(&topo, 8080, "a", 5)?;
    curl_n(&topo, 8081, "b", 7)?;
    std::thread::sleep(Duration::from_millis(1500));
    a.ok("POST", "/v1/recordings/shared/stop", None)?;
    let seen_from_a = a.ok("GET", "/v1/recordings/shared", None)?;
    assert_eq!(
        seen_from_a["state"], "recording",
        "b is still recording: {seen_from_a}"
    );
    b.ok("POST", "/v1/recordings/shared/stop", None)?;
    let rec = a.ok("GET", "/v1/recordings/shared", None)?;
    assert_eq!(rec["state"], "complete", "{rec}");
    assert_eq!(rec["messages"], 24, "{rec}");
    let source = rec["source"].as_str().unwrap_or_default();
    assert!(
        source.contains("node-a") && source.contains("node-b"),
        "{source}"
    );

    let recorded = nginx.access_log()?;
    assert_eq!(recorded.len(), 12);
    let target = format!("http://{}:8080", topo.server_ip);
    let created = a.ok(
        "POST",
        "/v1/replays",
        Some(&json!({"recording": "shared", "target": target, "max": true}).to_string()),
    )?;
    let done = a.wait_replay(created["id"].as_str().context("id")?)?;
    assert_eq!(done["progress"]["completed"], 12, "{done}");
    let log = nginx.access_log()?;
    assert_eq!(
        multiset(log[12..].iter().map(|e| e.uri.clone())),
        multiset(recorded.iter().map(|e| e.uri.clone()))
    );
    agent_a.stop(libc::SIGTERM)?;
    agent_b.stop(libc::SIGTERM)?;
    drop(broker);
    Ok(())
}

/// Runs openapi-spec-validator (the reference OpenAPI validator) on `doc`.
fn validate_openapi(doc: &Value) -> Result<()> {
    let script = "import json, sys\n\
                  from openapi_spec_validator import validate\n\
                  validate(json.load(sys.stdin))\n";
    let out = tests::python_with_stdin(script, doc.to_string().as_bytes())?;
    ensure!(
        out.status.success(),
        "openapi-spec-validator rejected /v1/openapi.json (install it with `cargo xtask setup`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn the_openapi_document_validates_and_lists_exactly_the_routes_the_agent_serves() -> Result<()> {
    let topo = Topology::new("ago")?;
    let data = tempfile::tempdir()?;
    let (agent, listen) = agent_on_client(&topo, data.path(), &[])?;
    let api = Api {
        ns: &topo.client_ns,
        base: format!("http://{listen}"),
    };
    assert_eq!(api.call("GET", "/v1/openapi.json", None, None)?.0, 401);
    let doc = api.ok("GET", "/v1/openapi.json", None)?;
    validate_openapi(&doc)?;

    // The routes the router is built from, and the document, name the same operations.
    let routes = capture_user::agent::ROUTES;
    let served: BTreeSet<(String, String)> = routes
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(capture_user::agent::openapi::operations(&doc), served);
    // And the running agent answers each of them from a handler, not the no-route fallback.
    for route in routes {
        let path = route.path.replace("{name}", "nope").replace("{id}", "r999");
        let (status, text) = api.raw(route.method.as_str(), &path, None, Some(TOKEN))?;
        let error = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_default();
        assert!(
            !error.starts_with("no route"),
            "{route:?} is not served: {status} {text}"
        );
        let open = route.access == capture_user::agent::Access::Open;
        let op = &doc["paths"][route.path][route.method.as_str().to_lowercase()];
        assert_eq!(op["security"].is_null(), open, "{route:?}: {op}");
    }
    // The request bodies, field by field.
    let schemas = &doc["components"]["schemas"];
    for (body, field) in [
        ("StartRecording", "interfaces"),
        ("StartRecording", "ring_size"),
        ("StartReplay", "loop"),
        ("StartReplay", "rewrite_urls"),
    ] {
        assert!(
            schemas[body]["properties"].get(field).is_some(),
            "{body} lacks {field}: {}",
            schemas[body]
        );
    }
    let out = agent.stop(libc::SIGTERM)?;
    assert!(out.status.success(), "{}", out.stderr.join("\n"));
    Ok(())
}
