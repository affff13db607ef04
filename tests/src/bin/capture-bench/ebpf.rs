//! `ebpf`: cost of the eBPF programs per packet from the kernel's own accounting.

use anyhow::Result;
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;

use crate::PORT;
use crate::measure::{BpfStats, program_stats};

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

pub fn ebpf_cost() -> Result<()> {
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
