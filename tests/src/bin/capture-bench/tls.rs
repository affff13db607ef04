//! `tls`: what `--tls` costs next to nginx serving HTTPS under wrk, with reads and writes
//! probed at OpenSSL's internal functions (the default) and at the exported ones
//! (`--tls-exported-probes`), with the socket syscall tracepoints, and with the probes
//! scoped to nginx (`--tls-scope servers`: wrk, a TLS client on the same node, then never
//! traps), paired with clear-text capture of the same load over HTTP: the throughput kept,
//! the capture's CPU per request,
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
    let syscalls_args: Vec<&str> = tls_args
        .iter()
        .copied()
        .chain(["--tls-socket-hooks", "syscalls"])
        .collect();
    let servers_args: Vec<&str> = tls_args
        .iter()
        .copied()
        .chain(["--tls-scope", "servers"])
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
            (
                "  + --tls-socket-hooks syscalls",
                &syscalls_args[..],
                &https,
            ),
            ("  + --tls-scope servers", &servers_args[..], &https),
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

/// `tls-idle` alone, in namespaces of its own.
pub fn idle_cost() -> Result<()> {
    let topo = Topology::new("btli")?;
    syscall_tax(&topo)
}

/// CPU time (user + system) of this process's finished children, in seconds.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    // SAFETY: clock_gettime fills the struct it is given.
    let now = unsafe {
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now);
        now
    };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// This thread's CPU time per syscall over `round_trips` runs of `send_and_receive` (two
/// syscalls each), in ns.
fn per_syscall(
    round_trips: u32,
    mut send_and_receive: impl FnMut() -> std::io::Result<()>,
) -> Result<f64> {
    let start = thread_cpu_seconds();
    for _ in 0..round_trips {
        send_and_receive()?;
    }
    Ok((thread_cpu_seconds() - start) * 1e9 / f64::from(2 * round_trips))
}

/// What an idle `--tls` costs processes that use no TLS at all, with each way of learning
/// connections: the `sock` tracepoints (the default) run on every socket send and receive,
/// the socket syscall tracepoints (`--tls-socket-hooks syscalls`) make every syscall of
/// every process take the kernel's traced path. Timed as the CPU time (user + system) of dd
/// copying /dev/zero to /dev/null in 64-byte blocks (no socket), of 64-byte sends and
/// receives on a Unix datagram socket pair, and of 64-byte writes and reads over a loopback
/// TCP connection, without capture and then with each, three rounds.
fn syscall_tax(topo: &Topology) -> Result<()> {
    const BLOCKS: u32 = 2_000_000;
    const TCP_ROUND_TRIPS: u32 = 300_000;
    const UNIX_ROUND_TRIPS: u32 = 1_000_000;
    const BLOCK: [u8; 64] = [7; 64];
    let dd = || -> Result<f64> {
        let start = children_cpu_seconds();
        run_ok(std::process::Command::new("dd").args([
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64",
            &format!("count={BLOCKS}"),
            "status=none",
        ]))?;
        Ok((children_cpu_seconds() - start) * 1e9 / f64::from(2 * BLOCKS))
    };
    let unix = || -> Result<f64> {
        let (sender, receiver) = std::os::unix::net::UnixDatagram::pair()?;
        let mut into = [0u8; 64];
        per_syscall(UNIX_ROUND_TRIPS, || {
            sender.send(&BLOCK)?;
            receiver.recv(&mut into).map(drop)
        })
    };
    let tcp = || -> Result<f64> {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let mut sender = std::net::TcpStream::connect(listener.local_addr()?)?;
        let (mut receiver, _) = listener.accept()?;
        let mut into = [0u8; 64];
        per_syscall(TCP_ROUND_TRIPS, || {
            sender.write_all(&BLOCK)?;
            receiver.read_exact(&mut into)
        })
    };
    println!(
        "== an idle --tls and the syscalls of processes without TLS: dd (read/write, {BLOCKS} \
         blocks of 64 B), a Unix datagram socket pair ({UNIX_ROUND_TRIPS} sends and receives \
         of 64 B) and loopback TCP ({TCP_ROUND_TRIPS} writes and reads of 64 B) =="
    );
    println!(
        "{:<6} {:<5} {:>14} {:>16} {:>8} {:>18} {:>8}",
        "round", "load", "without ns/sc", "sock tp ns/sc", "added", "syscalls tp ns/sc", "added"
    );
    dd()?; // warm-up
    unix()?;
    tcp()?;
    let tls_port = TLS_PORT.to_string();
    let idle = ["messages", "--tls", "--port", &tls_port];
    let with_syscalls: Vec<&str> = idle
        .iter()
        .copied()
        .chain(["--tls-socket-hooks", "syscalls"])
        .collect();
    for round in 1..=3 {
        let loads = [
            ("dd", &dd as &dyn Fn() -> Result<f64>),
            ("unix", &unix),
            ("tcp", &tcp),
        ];
        for (name, load) in loads {
            let without = load()?;
            let mut with = Vec::new();
            for args in [&idle[..], &with_syscalls[..]] {
                let run = CaptureRun::start(&topo.client_ns, args)?;
                with.push(load()?);
                let out = run.stop(libc::SIGINT)?;
                anyhow::ensure!(out.status.success(), "{}", out.stderr.join("\n"));
            }
            println!(
                "{round:<6} {name:<5} {without:>14.0} {:>16.0} {:>8.0} {:>18.0} {:>8.0}",
                with[0],
                with[0] - without,
                with[1],
                with[1] - without
            );
        }
    }
    println!(
        "(ns/sc: CPU time (user + system) per syscall; sock tp: the default; syscalls tp: \
         --tls-socket-hooks syscalls)"
    );
    Ok(())
}
