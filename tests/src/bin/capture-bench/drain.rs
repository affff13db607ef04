//! `drain`: packets/s and MB/s through the ring into userspace under wrk load.

use std::time::{Duration, Instant};

use anyhow::Result;
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;

use crate::PORT;
use crate::measure::cpu_seconds;

pub fn drain_rate() -> Result<()> {
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
