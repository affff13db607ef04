//! `cargo xtask bench`: figures for the closing notes, printed, never asserted.
//!
//! - ebpf: cost of the eBPF programs per packet from the kernel's own accounting
//!   (`kernel.bpf_stats_enabled`, run_time_ns / run_cnt), for matching ~1500-byte packets and
//!   for packets on a port not in the set, for TC and XDP.
//! - drain: packets/s and MB/s through the ring into userspace under wrk load against nginx
//!   in a network namespace, with drops and the capture process's CPU time per request.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;

const PORT: u16 = 8080;

fn main() -> Result<()> {
    let which = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    match which.as_str() {
        "all" => {
            ebpf_cost()?;
            drain_rate()
        }
        "ebpf" => ebpf_cost(),
        "drain" => drain_rate(),
        other => bail!("unknown benchmark {other:?}; use all, ebpf or drain"),
    }
}

/// Restores `kernel.bpf_stats_enabled` when dropped.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Result<Self> {
        let before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .context("reading kernel.bpf_stats_enabled")?;
        std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")
            .context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self(before.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// run_time_ns and run_cnt per program name, from the capture process's fdinfo.
fn program_stats(pid: i32) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut stats = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let (Some(id), Some(ns), Some(cnt)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        let out = run_ok(Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]))?;
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        let name = line
            .split_whitespace()
            .skip_while(|w| *w != "name")
            .nth(1)
            .unwrap_or("?")
            .to_string();
        stats.insert(name, (ns, cnt));
    }
    Ok(stats)
}

/// Downloads `bytes` from nginx in the client namespace with curl.
fn download(topo: &Topology, path: &str) -> Result<()> {
    run_ok(topo.client("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        &format!("http://{}:{PORT}{path}", topo.server_ip),
    ]))?;
    Ok(())
}

fn ebpf_cost() -> Result<()> {
    println!("== eBPF cost per packet (kernel accounting, bpf_stats_enabled) ==");
    println!("traffic: 200 MB download over veth with TSO/GSO/GRO off (1514-byte frames)");
    let _stats = BpfStats::enable()?;
    let topo = Topology::new("bpfc")?;
    topo.disable_offloads()?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    std::fs::write(nginx.docroot().join("big.bin"), vec![0x5au8; 200_000_000])?;
    println!(
        "{:<6} {:<12} {:<22} {:>12} {:>10} {:>12}",
        "mode", "ports", "program", "packets", "ns/packet", "captured"
    );
    for (mode, iface, ns) in [
        ("tc", &topo.client_if, &topo.client_ns),
        ("xdp", &topo.client_if, &topo.client_ns),
    ] {
        for (label, port) in [("matching", PORT), ("other", 9999)] {
            let run = CaptureRun::packets(ns, iface, port, &["--attach", mode, "--quiet"])?;
            download(&topo, "/big.bin")?;
            let stats = program_stats(run.pid())?;
            let out = run.stop(libc::SIGINT)?;
            let counters = out.counters()?;
            for (name, (ns_total, cnt)) in stats {
                if cnt == 0 {
                    continue;
                }
                println!(
                    "{mode:<6} {label:<12} {name:<22} {cnt:>12} {:>10.1} {:>12}",
                    ns_total as f64 / cnt as f64,
                    counters.get("captured").copied().unwrap_or(0)
                );
            }
        }
    }
    println!(
        "(tc ingress carries the 1514-byte data frames; tc egress sees the client's pure ACKs,"
    );
    println!(" which match the port but are skipped without a copy)");
    Ok(())
}

/// CPU time (user + system) of a process in seconds.
fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("stat format")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

fn drain_rate() -> Result<()> {
    println!("== ring drain rate under wrk load (nginx in a netns, capture --quiet, tc) ==");
    let topo = Topology::new("drain")?;
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    std::fs::write(nginx.docroot().join("1k.bin"), vec![b'a'; 1024])?;
    std::fs::write(nginx.docroot().join("1m.bin"), vec![b'b'; 1 << 20])?;
    println!(
        "{:<8} {:>10} {:>12} {:>10} {:>10} {:>8} {:>14}",
        "object", "wrk req/s", "packets/s", "MB/s", "drops", "bad", "CPU us/request"
    );
    for object in ["1k.bin", "1m.bin"] {
        let run = CaptureRun::packets(&topo.client_ns, &topo.client_if, PORT, &["--quiet"])?;
        let pid = run.pid();
        let cpu_before = cpu_seconds(pid)?;
        let started = Instant::now();
        let wrk = run_ok(topo.client("wrk").args([
            "-t2",
            "-c32",
            "-d10s",
            &format!("http://{}:{PORT}/{object}", topo.server_ip),
        ]))?;
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid)? - cpu_before;
        std::thread::sleep(Duration::from_millis(200));
        let out = run.stop(libc::SIGINT)?;
        let c = out.counters()?;
        let wrk_text = String::from_utf8_lossy(&wrk.stdout).to_string();
        let requests: f64 = wrk_text
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_suffix(" requests in")
                    .or_else(|| l.split_once(" requests in").map(|(n, _)| n))
            })
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0.0);
        let drops = c["dropped_ring_full"] + c["dropped_copy_failed"];
        println!(
            "{object:<8} {:>10.0} {:>12.0} {:>10.1} {:>10} {:>8} {:>14.2}",
            requests / elapsed,
            c["ring_packets"] as f64 / elapsed,
            c["ring_bytes"] as f64 / elapsed / 1e6,
            drops,
            c["bad_records"],
            if requests > 0.0 {
                cpu * 1e6 / requests
            } else {
                0.0
            },
        );
    }
    println!(
        "(wrk, nginx and capture share the machine's cores; CPU is capture's user+system time)"
    );
    Ok(())
}
