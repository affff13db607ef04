//! `replay`: `capture replay --max` next to wrk against the same nginx, and the schedule lag
//! of `--speed 1`.

use std::time::Duration;

use anyhow::{Context, Result};
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;

use crate::PORT;
use crate::measure::wrk_requests_per_second;

/// Runs `capture replay ARGS --json --quiet` in `topo`'s client namespace; the summary.
fn replay_summary(
    topo: &Topology,
    data_dir: &std::path::Path,
    args: &[&str],
) -> Result<serde_json::Value> {
    let out = run_ok(
        topo.client(&tests::capture_bin().to_string_lossy())
            .arg("replay")
            .args(args)
            .args(["--json", "--quiet", "--data-dir"])
            .arg(data_dir),
    )?;
    serde_json::from_slice(&out.stdout).context("replay printed no JSON summary")
}

pub fn replay_rates() -> Result<()> {
    println!("== replay rate (--max) next to wrk, and schedule lag at --speed 1 ==");
    let topo = Topology::new("rply")?;
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let data = tempfile::tempdir()?;
    let url = format!("http://{}:{PORT}/index.html", topo.server_ip);
    let target = format!("http://{}:{PORT}", topo.server_ip);
    for connections in [16, 64] {
        let conns = format!("-c{connections}");
        let wrk = run_ok(topo.client("wrk").args(["-t2", &conns, "-d10s", &url]))?;
        let wrk_rate = wrk_requests_per_second(&String::from_utf8_lossy(&wrk.stdout));

        // Record the same kind of traffic (shorter), then replay it as fast as it goes.
        let name = format!("wrk{connections}");
        let store = ["--data-dir".to_string(), data.path().display().to_string()];
        let run = CaptureRun::record(&topo.client_ns, &topo.client_if, &name, &store)?;
        run_ok(topo.client("wrk").args(["-t2", &conns, "-d5s", &url]))?;
        std::thread::sleep(Duration::from_millis(300));
        run.stop(libc::SIGINT)?;
        let s = replay_summary(
            &topo,
            data.path(),
            &[&name, "--target", &target, "--max", "--loop", "2"],
        )?;
        let rate = s["requests_per_second"].as_f64().unwrap_or(0.0);
        println!(
            "{connections} connections: wrk {wrk_rate:.0} req/s, replay --max {rate:.0} req/s ({} requests, {} failed), ratio {:.2}; replay latency p50 {} ms p99 {} ms",
            s["completed"],
            s["failed"],
            rate / wrk_rate.max(1.0),
            s["latency_ms"]["p50"],
            s["latency_ms"]["p99"]
        );
    }

    // 5000 requests at 500/s with jittered gaps, each on its own connection (GoReplay style).
    let mut file = Vec::new();
    let mut t_ns = 1_700_000_000_000_000_000u64;
    for i in 0..5000u64 {
        t_ns += 1_000_000 + (i * 2_654_435_761 % 2_000_000);
        let request = format!("GET /index.html?lag={i} HTTP/1.1\r\nHost: bench\r\n\r\n");
        capture_user::files::gor::write_payload(
            &mut file,
            &capture_user::files::gor::GorPayload {
                kind: 1,
                id: format!("{i:024x}"),
                ts_ns: t_ns,
                latency_ns: 0,
                bytes: bytes::Bytes::from(request),
            },
        )?;
    }
    let gor = data.path().join("lag.gor");
    std::fs::write(&gor, file)?;
    let s = replay_summary(
        &topo,
        data.path(),
        &[
            "--gor",
            &gor.to_string_lossy(),
            "--target",
            &target,
            "--speed",
            "1",
        ],
    )?;
    let lag = &s["schedule_lag_ms"];
    println!(
        "--speed 1, 5000 requests at ~500/s: schedule lag p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; latency p99 {} ms",
        lag["p50"], lag["p90"], lag["p99"], lag["max"], s["latency_ms"]["p99"]
    );
    Ok(())
}
