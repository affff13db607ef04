//! `replay --diff` end to end (issue 14): live traffic recorded against real servers, the
//! servers changed, and the replay's comparison checked against what was changed. nginx serves
//! JSON files (some gzip-encoded); a small Python backend puts the time and a random id in
//! every answer, to learn noise from a baseline. The HTML report is loaded in headless
//! Chromium, its DOM checked and a screenshot saved.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tests::capture::CaptureRun;
use tests::chromium::{dump_dom, save_screenshot};
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::replay::{replay, target};
use tests::run_ok;

const PORT: u16 = 8080;
const BASELINE_PORT: u16 = 8081;

/// nginx serves extension-less files as JSON and gzips them for clients that ask.
const JSON_SERVER: &str =
    "default_type application/json; gzip on; gzip_types application/json; gzip_min_length 1;";

/// The JSON of `/api/config`: large enough that gzip shrinks it (the access log then proves
/// the recorded answers were gzip-encoded).
fn config_json(max_items: u32, beta: bool) -> String {
    let regions: Vec<String> = (0..40).map(|i| format!("\"region-{i}\"")).collect();
    let beta = if beta { ",\"beta\":true" } else { "" };
    format!(
        "{{\"version\":\"1.2.0\",\"limits\":{{\"max_items\":{max_items},\"ttl\":30}},\"regions\":[{}]{beta}}}",
        regions.join(",")
    )
}

const USERS: [&str; 2] = [
    "3f2b8c1e-4a5d-4e6f-9a7b-1c2d3e4f5a6b",
    "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b",
];

/// Writes the served files: four items, two users, the config and a health check.
fn write_site(root: &Path) -> Result<()> {
    for dir in ["api/items", "api/users"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    for n in 1..=4 {
        let item = format!(
            "{{\"id\":{n},\"name\":\"item {n}\",\"price\":{}.5,\"tags\":[\"a\",\"b\"]}}",
            n * 3
        );
        std::fs::write(root.join(format!("api/items/{n}")), item)?;
    }
    for id in USERS {
        let user = format!("{{\"id\":\"{id}\",\"name\":\"user\",\"roles\":[\"admin\"]}}");
        std::fs::write(root.join(format!("api/users/{id}")), user)?;
    }
    std::fs::write(root.join("api/config"), config_json(100, false))?;
    std::fs::write(root.join("api/health"), "{\"status\":\"ok\"}")?;
    Ok(())
}

/// GETs `paths` on one keep-alive connection, asking for gzip when `gzip`.
fn curl(topo: &Topology, paths: &[String], gzip: bool) -> Result<()> {
    let mut cmd = topo.client("curl");
    cmd.arg("-sS");
    if gzip {
        cmd.args(["-H", "Accept-Encoding: gzip"]);
    }
    for p in paths {
        cmd.args(["-o", "/dev/null", &format!("{}{p}", target(topo, PORT))]);
    }
    run_ok(&mut cmd).map(drop)
}

/// The diff summary's entry for `endpoint`.
fn endpoint<'a>(diff: &'a Value, name: &str) -> Result<&'a Value> {
    diff["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|e| e["endpoint"] == name))
        .with_context(|| format!("no endpoint {name:?} in {diff:#}"))
}

/// The names of an endpoint's listed fields (`fields` or `noise`).
fn field_names(e: &Value, list: &str) -> BTreeSet<String> {
    e[list]
        .as_array()
        .map(|fields| {
            fields
                .iter()
                .filter_map(|f| f["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Records the site's traffic, changes one endpoint's JSON and one's status, and replays with
/// `--diff`: exactly those endpoints differ, on exactly those fields, gzip answers compared
/// decoded; `--diff-out` has one line per differing request, and the report page shows it all
/// in Chromium.
#[test]
fn diff_reports_exactly_the_changed_fields_and_statuses_and_the_report_shows_them() -> Result<()> {
    let topo = Topology::new("dif")?;
    let nginx = Nginx::start_with(&topo.server_ns, &[PORT], JSON_SERVER)?;
    let root = nginx.docroot();
    write_site(&root)?;
    let data = tempfile::tempdir()?;
    let store = ["--data-dir".to_string(), data.path().display().to_string()];
    let run = CaptureRun::record(&topo.client_ns, &topo.client_if, "site", &store)?;
    let items: Vec<String> = (1..=4).map(|n| format!("/api/items/{n}")).collect();
    curl(&topo, &items, false)?;
    curl(&topo, &items, true)?;
    let users: Vec<String> = USERS.iter().map(|u| format!("/api/users/{u}")).collect();
    curl(&topo, &[users.clone(), users].concat(), false)?;
    curl(&topo, &vec!["/api/config".to_string(); 3], true)?;
    curl(&topo, &vec!["/api/health".to_string(); 3], false)?;
    run.stop_ok()?;
    let recorded = nginx.access_log()?;
    ensure!(recorded.len() == 18, "{} requests recorded", recorded.len());
    let config_len = config_json(100, false).len() as u64;
    for e in recorded.iter().filter(|e| e.uri == "/api/config") {
        ensure!(
            e.body_bytes_sent < config_len,
            "the config answers were not gzip-encoded: {e:?}"
        );
    }

    // One field changed and one added in the config; the health check now answers 404.
    std::fs::write(root.join("api/config"), config_json(250, true))?;
    std::fs::remove_file(root.join("api/health"))?;
    let diff_out = data.path().join("diff.jsonl");
    let report = data.path().join("report.html");
    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &[
            "site",
            "--target",
            &target(&topo, PORT),
            "--diff",
            "--diff-out",
            &diff_out.display().to_string(),
            "--report",
            &report.display().to_string(),
        ],
    )?;
    ensure!(ok, "replay failed: {stderr}\n{summary:#}");
    let diff = &summary["diff"];
    ensure!(
        (diff["requests"].as_u64(), diff["different"].as_u64()) == (Some(18), Some(6)),
        "{diff:#}"
    );

    let config = endpoint(diff, "GET /api/config")?;
    ensure!(
        config["different"] == 3 && config["different_body"] == 3,
        "{config:#}"
    );
    ensure!(
        config["different_status"] == 0 && config["different_headers"] == 0,
        "ETag, Last-Modified and Content-Length are noise: {config:#}"
    );
    let want: BTreeSet<String> = ["json:$.beta", "json:$.limits.max_items"]
        .map(String::from)
        .into();
    ensure!(field_names(config, "fields") == want, "{config:#}");
    let example = &config["examples"][0];
    let changed = example["differences"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["field"] == "json:$.limits.max_items"))
        .with_context(|| format!("{example:#}"))?;
    ensure!(
        changed["recorded"] == "100"
            && changed["replayed"] == "250"
            && changed["kind"] == "changed",
        "{changed:#}"
    );
    let added = example["differences"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["field"] == "json:$.beta"))
        .with_context(|| format!("{example:#}"))?;
    ensure!(added["kind"] == "added", "{added:#}");

    let health = endpoint(diff, "GET /api/health")?;
    ensure!(
        health["different"] == 3 && health["different_status"] == 3,
        "{health:#}"
    );
    let status = &health["examples"][0];
    ensure!(
        status["recorded_status"] == 200 && status["replayed_status"] == 404,
        "{status:#}"
    );
    ensure!(
        field_names(health, "fields").contains("status"),
        "{health:#}"
    );

    for (name, requests) in [("GET /api/items/{id}", 8), ("GET /api/users/{id}", 4)] {
        let e = endpoint(diff, name)?;
        ensure!(
            e["requests"] == requests && e["identical"] == requests && e["different"] == 0,
            "{name}: {e:#}"
        );
    }
    ensure!(
        diff["endpoints"].as_array().map(Vec::len) == Some(4),
        "{diff:#}"
    );

    let lines = std::fs::read_to_string(&diff_out)?;
    let lines: Vec<Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("--diff-out holds one JSON object per line")?;
    let endpoints: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["endpoint"].as_str())
        .collect();
    ensure!(
        lines.len() == 6
            && endpoints
                .iter()
                .filter(|e| **e == "GET /api/config")
                .count()
                == 3
            && endpoints
                .iter()
                .filter(|e| **e == "GET /api/health")
                .count()
                == 3,
        "{lines:#?}"
    );

    // The summary a person reads names the same endpoints and fields.
    let text = run_ok(
        topo.client(&tests::capture_bin().to_string_lossy())
            .args(["replay", "site", "--target", &target(&topo, PORT), "--diff"])
            .args(["--quiet", "--data-dir"])
            .arg(data.path()),
    )?;
    let text = String::from_utf8_lossy(&text.stdout);
    println!("{text}");
    for want in [
        "GET /api/config",
        "$.limits.max_items",
        "$.beta",
        "GET /api/health",
        "GET /api/items/{id}",
    ] {
        ensure!(
            text.contains(want),
            "the text summary lacks {want}:\n{text}"
        );
    }

    check_report_in_chromium(&report, data.path())
}

/// Loads the report in headless Chromium: the per-endpoint table has the summary's numbers,
/// the charts are there, and a screenshot at 1280 px is saved for a person to look at.
fn check_report_in_chromium(report: &Path, scratch: &Path) -> Result<()> {
    let page = std::fs::read_to_string(report)?;
    for remote in ["src=\"http", "href=\"http", "@import", "url(http"] {
        ensure!(!page.contains(remote), "the report fetches {remote}");
    }
    let dom = dump_dom(report, scratch)?;
    for id in [
        "id=\"endpoints\"",
        "id=\"statuses\"",
        "id=\"chart-throughput\"",
        "id=\"chart-latency\"",
        "id=\"chart-endpoint-latency\"",
    ] {
        ensure!(dom.contains(id), "the report has no {id}");
    }
    let row = |name: &str| -> Result<String> {
        let start = dom
            .find(&format!("data-endpoint=\"{name}\""))
            .with_context(|| format!("no row for {name}"))?;
        let end = dom[start..].find("</tr>").map_or(dom.len(), |e| start + e);
        Ok(dom[start..end].to_string())
    };
    let cell = |row: &str, col: &str| -> Option<String> {
        let at = row.find(&format!("data-col=\"{col}\""))?;
        let text = &row[at..];
        let open = text.find('>')? + 1;
        let close = text[open..].find('<')?;
        Some(text[open..open + close].trim().to_string())
    };
    let config = row("GET /api/config")?;
    let health = row("GET /api/health")?;
    let items = row("GET /api/items/{id}")?;
    let got = [
        cell(&config, "requests"),
        cell(&config, "different"),
        cell(&config, "body"),
        cell(&health, "status"),
        cell(&items, "identical"),
    ];
    let want = ["3", "3", "3", "3", "8"].map(|s| Some(s.to_string()));
    ensure!(got == want, "table cells {got:?}, want {want:?}");
    ensure!(
        dom.contains("data-field=\"json:$.limits.max_items\""),
        "the config's changed field is not listed"
    );

    save_screenshot(report, "replay-diff-report", 2400, scratch)?;
    Ok(())
}

/// A JSON backend from Python's standard library in a namespace: every answer carries the
/// time and a random id; `price` is the version's one real difference.
struct PyBackend {
    child: Child,
}

const BACKEND: &str = r#"
import json, sys, time, uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PRICE = {"a": 10, "b": 12}[sys.argv[2]]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({
            "time": time.time(),
            "request_id": str(uuid.uuid4()),
            "path": self.path,
            "price": PRICE,
            "currency": "EUR",
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"#;

impl PyBackend {
    /// Starts version `version` ("a" or "b") on `port` in `ns`, once it answers.
    fn start(topo: &Topology, port: u16, version: &str) -> Result<Self> {
        let child = topo
            .server("python3")
            .args(["-c", BACKEND, &port.to_string(), version])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the Python backend")?;
        let backend = Self { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = format!("http://{}:{port}/ready", topo.server_ip);
        while !topo
            .client("curl")
            .args(["-sSf", "-o", "/dev/null", &url])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            ensure!(
                Instant::now() < deadline,
                "the backend did not answer on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(backend)
    }
}

impl Drop for PyBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Recorded against version a; replayed to version b (the price changed) with version a as
/// the baseline: the time and the random id are noise, the price the only regression. Without
/// the baseline, all three differ.
#[test]
fn a_baseline_turns_times_and_random_ids_into_noise_and_leaves_the_real_change() -> Result<()> {
    let topo = Topology::new("dnb")?;
    let data = tempfile::tempdir()?;
    let store = ["--data-dir".to_string(), data.path().display().to_string()];
    let recorded_version = PyBackend::start(&topo, PORT, "a")?;
    let run = CaptureRun::record(&topo.client_ns, &topo.client_if, "quotes", &store)?;
    let paths: Vec<String> = (0..20)
        .map(|i| format!("/quotes/{}", 100 + i % 5))
        .collect();
    let mut curl = topo.client("curl");
    curl.arg("-sS");
    for p in &paths {
        curl.args(["-o", "/dev/null", &format!("{}{p}", target(&topo, PORT))]);
    }
    run_ok(&mut curl)?;
    run.stop_ok()?;
    drop(recorded_version);

    let _candidate = PyBackend::start(&topo, PORT, "b")?;
    let _baseline = PyBackend::start(&topo, BASELINE_PORT, "a")?;
    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &[
            "quotes",
            "--target",
            &target(&topo, PORT),
            "--baseline",
            &target(&topo, BASELINE_PORT),
            "--max",
        ],
    )?;
    ensure!(ok, "replay failed: {stderr}\n{summary:#}");
    let diff = &summary["diff"];
    ensure!(diff["baseline"] == true, "{diff:#}");
    let quotes = endpoint(diff, "GET /quotes/{id}")?;
    ensure!(
        quotes["requests"] == 20 && quotes["different"] == 20 && quotes["different_body"] == 20,
        "{quotes:#}"
    );
    ensure!(
        field_names(quotes, "fields") == BTreeSet::from(["json:$.price".to_string()]),
        "only the price is a regression: {quotes:#}"
    );
    let noise = field_names(quotes, "noise");
    ensure!(
        noise.contains("json:$.time") && noise.contains("json:$.request_id"),
        "the time and the id are noise: {quotes:#}"
    );
    ensure!(
        !noise.contains("json:$.price"),
        "the price is not noise: {quotes:#}"
    );

    let (ok, summary, stderr) = replay(
        &topo,
        data.path(),
        &[
            "quotes",
            "--target",
            &target(&topo, PORT),
            "--diff",
            "--max",
        ],
    )?;
    ensure!(ok, "replay failed: {stderr}\n{summary:#}");
    let quotes = endpoint(&summary["diff"], "GET /quotes/{id}")?;
    let fields = field_names(quotes, "fields");
    let want = ["json:$.price", "json:$.request_id", "json:$.time"].map(String::from);
    ensure!(
        want.iter().all(|f| fields.contains(f)) && field_names(quotes, "noise").is_empty(),
        "without a baseline the time and the id differ too: {quotes:#}"
    );
    Ok(())
}
