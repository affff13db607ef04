//! `replay`: `capture replay --max` next to wrk against the same nginx; peak RSS and time to
//! the first request of recordings of 100k, 1M and 3M requests on both backends; a GoReplay
//! file over a 16-connection pool next to wrk -c16; the schedule lag of `--speed 1` at
//! 5k req/s; and what `--diff` costs on a million requests.

use std::time::Duration;

use anyhow::{Context, Result};
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;

use crate::PORT;
use crate::measure::wrk_requests_per_second;
use tests::process::run_measured;
use tests::synth::{both_stores, capture_in, import, round_robin, write_pcap};

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

    replay_h2(&topo, data.path(), "h2load")?;
    replay_pool(&topo, &target, &url)?;
    replay_lag(&topo, &target)?;
    replay_scale(&topo, &target)?;
    Ok(())
}

/// `replay-h2`: the HTTP/2 row of `replay` alone, three paired rounds.
pub fn h2_rates() -> Result<()> {
    println!("== HTTP/2: replay --max of an h2load recording next to h2load ==");
    let topo = Topology::new("rph2")?;
    let data = tempfile::tempdir()?;
    for round in 1..=3 {
        replay_h2(&topo, data.path(), &format!("h2load{round}"))?;
    }
    Ok(())
}

/// h2load's multiplexed HTTP/2 load recorded, then replayed at `--max` next to h2load on the
/// same h2c nginx (8 connections, 16 streams each).
fn replay_h2(topo: &Topology, data_dir: &std::path::Path, name: &str) -> Result<()> {
    const H2_PORT: u16 = 8082;
    let _nginx = Nginx::start_h2c(&topo.server_ns, &[H2_PORT])?;
    let url = format!("http://{}:{H2_PORT}/index.html", topo.server_ip);
    let h2load = |n: &str| -> Result<f64> {
        let out = run_ok(
            topo.client("h2load")
                .args(["-n", n, "-c", "8", "-m", "16", &url]),
        )?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // "finished in 1.23s, 81234.56 req/s, ..."
        text.lines()
            .find_map(|l| l.strip_prefix("finished in "))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|r| r.strip_suffix(" req/s"))
            .and_then(|r| r.parse().ok())
            .with_context(|| format!("no rate in h2load's output:\n{text}"))
    };
    h2load("100000")?;
    let h2load_rate = h2load("400000")?;
    let store = ["--data-dir".to_string(), data_dir.display().to_string()];
    let mut args = store.to_vec();
    let port = H2_PORT.to_string();
    args.extend(["--port", &port, "--ring-size", "128MiB"].map(String::from));
    let run = CaptureRun::record(&topo.client_ns, &topo.client_if, name, &args)?;
    h2load("200000")?;
    std::thread::sleep(Duration::from_millis(300));
    run.stop(libc::SIGINT)?;
    let target = format!("http://{}:{H2_PORT}", topo.server_ip);
    let s = replay_summary(topo, data_dir, &[name, "--target", &target, "--max"])?;
    let rate = s["requests_per_second"].as_f64().unwrap_or(0.0);
    println!(
        "HTTP/2 h2load -c8 -m16 {h2load_rate:.0} req/s, replay --max of its recording {rate:.0} req/s ({} requests, {} failed, {} connections), ratio {:.2}",
        s["completed"],
        s["failed"],
        s["connections"],
        rate / h2load_rate.max(1.0)
    );
    if s["failed"].as_u64().unwrap_or(0) > 0 {
        println!(
            "  failures {}, first of each kind {}",
            s["failures"], s["failure_details"]
        );
    }
    Ok(())
}

/// `replay-pool`: the GoReplay row of `replay` alone, three paired rounds.
pub fn pool_rates() -> Result<()> {
    println!("== a 200k-request GoReplay file at --max --connections 16 next to wrk -c16 ==");
    let topo = Topology::new("rpool")?;
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let url = format!("http://{}:{PORT}/index.html", topo.server_ip);
    let target = format!("http://{}:{PORT}", topo.server_ip);
    for _ in 0..3 {
        replay_pool(&topo, &target, &url)?;
    }
    Ok(())
}

/// A 200k-request GoReplay file at `--max --connections 16`, next to wrk -c16 (one thread
/// each way: replay's pool against wrk's 16 connections).
fn replay_pool(topo: &Topology, target: &str, url: &str) -> Result<()> {
    let data = tempfile::tempdir()?;
    let gor = data.path().join("pool.gor");
    tests::replay::write_round_robin_gor(&gor, 200_000)?;
    let wrk = run_ok(topo.client("wrk").args(["-t2", "-c16", "-d10s", url]))?;
    let wrk_rate = wrk_requests_per_second(&String::from_utf8_lossy(&wrk.stdout));
    let gor = gor.to_string_lossy().to_string();
    let s = replay_summary(
        topo,
        data.path(),
        &[
            "--gor",
            &gor,
            "--target",
            target,
            "--max",
            "--connections",
            "16",
        ],
    )?;
    let rate = s["requests_per_second"].as_f64().unwrap_or(0.0);
    println!(
        "GoReplay 200k requests --max --connections 16: {rate:.0} req/s ({} completed, {} failed, {} connections) vs wrk -c16 {wrk_rate:.0} req/s: ratio {:.2}",
        s["completed"],
        s["failed"],
        s["connections"],
        rate / wrk_rate.max(1.0)
    );
    Ok(())
}

/// `--speed 1` of a recording of 64 connections at 5,000 req/s for 10 s: how late sends leave.
fn replay_lag(topo: &Topology, target: &str) -> Result<()> {
    let data = tempfile::tempdir()?;
    let pcap = data.path().join("lag.pcap");
    // 50,000 exchanges 200 µs apart, with a jitter, over 64 connections.
    let traffic = round_robin(64, 50_000, 1_700_000_000_000_000, 200, 0).map(|mut e| {
        e.ts_us += e.ts_us.wrapping_mul(2_654_435_761) % 150;
        e
    });
    write_pcap(&pcap, PORT, traffic)?;
    let store = ["--data-dir".to_string(), data.path().display().to_string()];
    import(&topo.client_ns, &pcap, PORT, "lag", &store)?;
    let s = replay_summary(
        topo,
        data.path(),
        &["lag", "--target", target, "--speed", "1"],
    )?;
    let lag = &s["schedule_lag_ms"];
    println!(
        "--speed 1, 50,000 requests at 5,000/s over 64 connections: schedule lag p50 {} ms, p90 {} ms, p99 {} ms, max {} ms; latency p99 {} ms; {} completed",
        lag["p50"], lag["p90"], lag["p99"], lag["max"], s["latency_ms"]["p99"], s["completed"]
    );
    Ok(())
}

/// Peak RSS and time to the first request of `replay --max` of 100k, 1M and 3M recorded
/// requests (16 connections), from the embedded store, and of 100k from Kafka (tansu).
fn replay_scale(topo: &Topology, target: &str) -> Result<()> {
    let broker = tests::broker::Tansu::start_in(&topo.client_ns)?;
    let data = tempfile::tempdir()?;
    for requests in [100_000u64, 1_000_000, 3_000_000] {
        let pcap = data.path().join("scale.pcap");
        write_pcap(
            &pcap,
            PORT,
            round_robin(16, requests, 1_700_000_000_000_000, 20, 100),
        )?;
        let name = format!("scale{requests}");
        for (backend, store) in &both_stores(data.path(), broker.bootstrap(), &name) {
            // tansu stores and serves about 4,500 messages a second: beyond 100k requests
            // the Kafka figures would be tansu's.
            if *backend == "kafka" && requests > 100_000 {
                continue;
            }
            let started = std::time::Instant::now();
            let imported = import(&topo.client_ns, &pcap, PORT, &name, store)?;
            let import_s = started.elapsed().as_secs_f64();
            let replay = run_measured(
                capture_in(&topo.client_ns)
                    .args([
                        "replay", &name, "--target", target, "--max", "--json", "--quiet",
                    ])
                    .args(store.iter()),
            )?;
            let s: serde_json::Value = serde_json::from_str(&replay.stdout)
                .with_context(|| format!("replay printed no summary: {}", replay.stderr))?;
            println!(
                "{requests} requests ({} messages), {backend}: replay --max peak RSS {:.1} MiB, first request {:.0} ms after start, {:.0} req/s ({} completed, {} failed); import {import_s:.1} s, peak RSS {:.1} MiB",
                2 * requests,
                replay.peak_rss_mib,
                s["first_request_after_ms"].as_f64().unwrap_or(f64::NAN),
                s["requests_per_second"].as_f64().unwrap_or(0.0),
                s["completed"],
                s["failed"],
                imported.peak_rss_mib,
            );
        }
        std::fs::remove_file(&pcap)?;
    }
    Ok(())
}

/// `replay --max` of a million recorded requests without and with `--diff`, paired three
/// times after a warm-up: the rate and peak RSS of each, and their ratios. Every answer
/// differs from the synthetic recording's (nginx's own headers and body), so each one is
/// decoded, compared and counted, and the examples fill up.
pub fn diff_cost() -> Result<()> {
    println!("== replay --diff next to plain replay, 1M requests, embedded store ==");
    let topo = Topology::new("bdf")?;
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let target = format!("http://{}:{PORT}", topo.server_ip);
    let data = tempfile::tempdir()?;
    let pcap = data.path().join("diff.pcap");
    let requests = 1_000_000u64;
    write_pcap(
        &pcap,
        PORT,
        round_robin(16, requests, 1_700_000_000_000_000, 20, 100),
    )?;
    let store = ["--data-dir".to_string(), data.path().display().to_string()];
    import(&topo.client_ns, &pcap, PORT, "diff", &store)?;
    std::fs::remove_file(&pcap)?;
    let run = |diff: bool| -> Result<(f64, f64)> {
        let mut cmd = capture_in(&topo.client_ns);
        cmd.args([
            "replay", "diff", "--target", &target, "--max", "--json", "--quiet",
        ])
        .args(store.iter());
        if diff {
            cmd.arg("--diff");
        }
        let replay = run_measured(&mut cmd)?;
        let s: serde_json::Value = serde_json::from_str(&replay.stdout)
            .with_context(|| format!("replay printed no summary: {}", replay.stderr))?;
        anyhow::ensure!(
            s["completed"] == requests,
            "not every request completed: {s}"
        );
        let rate = s["requests_per_second"].as_f64().unwrap_or(0.0);
        Ok((rate, replay.peak_rss_mib))
    };
    run(false)?;
    for pair in 1..=3 {
        let (plain_rate, plain_rss) = run(false)?;
        let (diff_rate, diff_rss) = run(true)?;
        println!(
            "pair {pair}: plain {plain_rate:.0} req/s, peak RSS {plain_rss:.1} MiB; --diff {diff_rate:.0} req/s, peak RSS {diff_rss:.1} MiB; rate ratio {:.2}, RSS +{:.1} MiB",
            diff_rate / plain_rate,
            diff_rss - plain_rss
        );
    }
    Ok(())
}
