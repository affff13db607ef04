//! `tls`: what `--tls` costs next to nginx serving HTTPS under wrk, with reads and writes
//! probed at OpenSSL's internal functions (the default) and at the exported ones
//! (`--tls-exported-probes`), paired with clear-text capture of the same load over HTTP: the throughput kept, the capture's CPU per request,
//! the probes' own run time per request (bpf_stats; the uprobe traps themselves are not in
//! it) and the node's extra CPU per request (/proc/stat, traps included). Three rounds, each
//! running a baseline right before its contender.

use std::time::Duration;

use anyhow::Result;
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;
use tests::tls::tls_peers;

use crate::PORT;
use crate::measure::{
    BpfStats, clock_ticks, cpu_seconds, ebpf_run_ns, node_busy_ticks, wrk_requests_per_second,
};

const TLS_PORT: u16 = 8443;
const SECONDS: u32 = 8;

/// One wrk run: requests per second and the node's busy CPU per request (µs).
struct Load {
    rps: f64,
    node_us: f64,
}

fn wrk(topo: &Topology, url: &str, script: &std::path::Path, seconds: u32) -> Result<Load> {
    let busy = node_busy_ticks()?;
    let out = run_ok(
        topo.client("wrk")
            .args(["-t1", "-c16", &format!("-d{seconds}s"), "-s"])
            .arg(script)
            .arg(url),
    )?;
    let busy = (node_busy_ticks()? - busy) as f64 / clock_ticks();
    let rps = wrk_requests_per_second(&String::from_utf8_lossy(&out.stdout));
    let requests = rps * f64::from(seconds);
    Ok(Load {
        rps,
        node_us: if requests > 0.0 {
            busy * 1e6 / requests
        } else {
            0.0
        },
    })
}

/// The same load with `capture ARGS` running: the load, capture's CPU and its eBPF run time
/// per request (µs).
fn with_capture(
    topo: &Topology,
    args: &[&str],
    url: &str,
    script: &std::path::Path,
) -> Result<(Load, f64, f64)> {
    let run = CaptureRun::start(&topo.client_ns, args)?;
    let pid = run.pid();
    let (cpu, ebpf) = (cpu_seconds(pid)?, ebpf_run_ns(pid)?);
    let load = wrk(topo, url, script, SECONDS)?;
    let (cpu, ebpf) = (cpu_seconds(pid)? - cpu, ebpf_run_ns(pid)? - ebpf);
    std::thread::sleep(Duration::from_millis(300));
    let out = run.stop(libc::SIGINT)?;
    anyhow::ensure!(out.status.success(), "{}", out.stderr.join("\n"));
    let requests = (load.rps * f64::from(SECONDS)).max(1.0);
    Ok((load, cpu * 1e6 / requests, ebpf as f64 / 1e3 / requests))
}

pub fn tls_cost() -> Result<()> {
    println!(
        "== --tls next to clear-text capture: nginx in a netns, wrk -t1 -c16 {SECONDS}s, unique URIs =="
    );
    let (topo, _pki, _https) = tls_peers("btls", &[TLS_PORT], false)?;
    let _http = Nginx::start(&topo.server_ns, &[PORT])?;
    let work = tempfile::tempdir()?;
    let script = work.path().join("unique.lua");
    std::fs::write(&script, tests::WRK_UNIQUE_URIS_SCRIPT)?;
    let https = format!("https://{}:{TLS_PORT}/", topo.server_ip);
    let http = format!("http://{}:{PORT}/", topo.server_ip);
    let _stats = BpfStats::enable()?;
    wrk(&topo, &https, &script, 2)?; // warm-up
    println!(
        "{:<6} {:<34} {:>10} {:>10} {:>6} {:>12} {:>11} {:>14}",
        "round",
        "capture",
        "base r/s",
        "with r/s",
        "kept",
        "tool us/req",
        "eBPF us/req",
        "node +us/req"
    );
    let tls_port = TLS_PORT.to_string();
    let port = PORT.to_string();
    let tls_args = [
        "messages",
        "--tls",
        "--tls-side",
        "server",
        "--port",
        &tls_port,
        "--requests-only",
    ];
    let exported_args: Vec<&str> = tls_args
        .iter()
        .copied()
        .chain(["--tls-exported-probes"])
        .collect();
    let plain_args = [
        "messages",
        "--iface",
        &topo.client_if,
        "--port",
        &port,
        "--requests-only",
    ];
    for round in 1..=3 {
        for (name, args, url) in [
            ("--tls --tls-side server (HTTPS)", &tls_args[..], &https),
            ("  + --tls-exported-probes", &exported_args[..], &https),
            ("--iface (clear text, HTTP)", &plain_args[..], &http),
        ] {
            let base = wrk(&topo, url, &script, SECONDS)?;
            let (with, tool_us, ebpf_us) = with_capture(&topo, args, url, &script)?;
            println!(
                "{round:<6} {name:<34} {:>10.0} {:>10.0} {:>6.2} {:>12.2} {:>11.2} {:>14.2}",
                base.rps,
                with.rps,
                with.rps / base.rps.max(1.0),
                tool_us,
                ebpf_us,
                with.node_us - base.node_us
            );
        }
    }
    println!(
        "(kept: req/s with capture / without; node +us/req: the node's busy CPU per request \
         with capture minus without, uprobe traps included)"
    );
    syscall_tax(&topo)
}

/// What an idle `--tls` costs processes that use no TLS at all: the socket syscall
/// tracepoints it attaches (to learn each SSL object's descriptor) run on every read and
/// write of every process. Timed with dd copying /dev/zero to /dev/null in 64-byte blocks,
/// without and then with capture running, three rounds.
fn syscall_tax(topo: &Topology) -> Result<()> {
    const BLOCKS: u32 = 2_000_000;
    let dd = || -> Result<f64> {
        let start = std::time::Instant::now();
        run_ok(std::process::Command::new("dd").args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64",
            &format!("count={BLOCKS}"),
            "status=none",
        ]))?;
        Ok(start.elapsed().as_secs_f64())
    };
    println!(
        "== an idle --tls and the read/write syscalls of a process without TLS (dd, {BLOCKS} blocks) =="
    );
    println!(
        "{:<6} {:>14} {:>14} {:>16}",
        "round", "without ns/sc", "with ns/sc", "added ns/syscall"
    );
    dd()?; // warm-up
    let syscalls = f64::from(2 * BLOCKS);
    let tls_port = TLS_PORT.to_string();
    for round in 1..=3 {
        let without = dd()? * 1e9 / syscalls;
        let run = CaptureRun::start(&topo.client_ns, &["messages", "--tls", "--port", &tls_port])?;
        let with = dd()? * 1e9 / syscalls;
        let out = run.stop(libc::SIGINT)?;
        anyhow::ensure!(out.status.success(), "{}", out.stderr.join("\n"));
        println!(
            "{round:<6} {without:>14.0} {with:>14.0} {:>16.0}",
            with - without
        );
    }
    Ok(())
}
