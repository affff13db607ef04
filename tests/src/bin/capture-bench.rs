//! `cargo xtask bench`: figures for the closing notes, printed, never asserted.
//!
//! - ebpf: cost of the eBPF programs per packet from the kernel's own accounting
//!   (`kernel.bpf_stats_enabled`, run_time_ns / run_cnt), for matching ~1500-byte packets and
//!   for packets on a port not in the set, for TC and XDP.
//! - drain: packets/s and MB/s through the ring into userspace under wrk load against nginx
//!   in a network namespace, with drops and the capture process's CPU time per request.
//! - store: the embedded store's write and window-read rates (store-embedded runs only
//!   these), then the sustained store rate into the broker (tansu) next to a plain
//!   librdkafka producer's rate for the same messages (ratio).
//! - replay: `capture replay --max` of a recording of wrk's keep-alive traffic next to wrk
//!   itself against the same nginx (ratio), and the schedule lag of `--speed 1` on a
//!   recording of 500 requests/s.

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
            drain_rate()?;
            store_rates()?;
            replay_rates()
        }
        "ebpf" => ebpf_cost(),
        "drain" => drain_rate(),
        "store" => store_rates(),
        "store-embedded" => embedded_store_rates(),
        "replay" => replay_rates(),
        other => bail!(
            "unknown benchmark {other:?}; use all, ebpf, drain, store, store-embedded or replay"
        ),
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

/// What a benchmark message's body is made of.
#[derive(Clone, Copy)]
enum Body {
    /// All 'x': as compressible as it gets.
    Repeated,
    /// Pseudo-random bytes: LZ4 cannot shrink them (the honest figure).
    Random,
}

/// A realistic 1 KiB request as a framed message.
fn bench_message(id: u64, size: usize, body: Body) -> capture_user::message::HttpMessage {
    let head = format!("POST /api/items/{id} HTTP/1.1\r\nHost: shop\r\nContent-Length: ");
    let body_len = size.saturating_sub(head.len() + 10);
    let mut bytes = format!("{head}{body_len}\r\n\r\n").into_bytes();
    match body {
        Body::Repeated => bytes.resize(bytes.len() + body_len, b'x'),
        Body::Random => {
            let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            bytes.extend((0..body_len).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }));
        }
    }
    capture_user::message::HttpMessage {
        id,
        conn_id: id % 64,
        kind: capture_user::message::MessageKind::Request {
            method: "POST".into(),
            uri: format!("/api/items/{id}"),
        },
        minor_version: 1,
        request_id: None,
        first_ts: capture_user::packet::Timestamp(id),
        last_ts: capture_user::packet::Timestamp(id),
        src: "10.0.0.1:40000".parse().expect("addr"),
        dst: "10.0.0.2:80".parse().expect("addr"),
        bytes: bytes::Bytes::from(bytes),
        body_len: body_len as u64,
        complete: true,
    }
}

/// CPU seconds (user, system) this thread has used.
fn thread_cpu_seconds() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// CPU (user, system) seconds since `before`.
fn cpu_since(before: (f64, f64)) -> (f64, f64) {
    let now = thread_cpu_seconds();
    (now.0 - before.0, now.1 - before.1)
}

/// Wall and CPU (this thread) seconds of one store round.
struct Round {
    write: f64,
    /// (user, system) CPU seconds.
    write_cpu: (f64, f64),
    /// Of `write`: the final `end` (flush and fdatasync).
    end: f64,
    read: f64,
    read_cpu: (f64, f64),
}

/// Writes `n` messages as one recording and reads the window back.
fn store_round(
    store: &mut dyn capture_user::store::Store,
    name: &str,
    n: u64,
    size: usize,
    body: Body,
) -> Result<Round> {
    let tags = vec![name.to_string()];
    let messages: Vec<_> = (1..=n).map(|i| bench_message(i, size, body)).collect();
    let (started, cpu) = (Instant::now(), thread_cpu_seconds());
    store.begin(name, "bench")?;
    for m in &messages {
        store.append(m, &tags)?;
    }
    let ending = Instant::now();
    let rec = store.end(name, capture_user::store::RecordingSummary::default())?;
    let end = ending.elapsed().as_secs_f64();
    let (write, write_cpu) = (started.elapsed().as_secs_f64(), cpu_since(cpu));
    let mut read_n = 0u64;
    let (started, cpu) = (Instant::now(), thread_cpu_seconds());
    store.read(name, &mut |_| {
        read_n += 1;
        true
    })?;
    let (read, read_cpu) = (started.elapsed().as_secs_f64(), cpu_since(cpu));
    if read_n != n {
        bail!(
            "read {read_n} of {n} messages back (stored {})",
            rec.messages
        );
    }
    Ok(Round {
        write,
        write_cpu,
        end,
        read,
        read_cpu,
    })
}

/// A plain librdkafka producer with the same settings, for the ratio.
fn plain_producer_seconds(
    bootstrap: &str,
    topic: &str,
    n: u64,
    size: usize,
    headers: usize,
) -> Result<f64> {
    use rdkafka::config::ClientConfig;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "50")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let payload = bench_message(1, size, Body::Repeated).bytes;
    let started = Instant::now();
    for i in 0..n {
        let key = format!("node/1/{}", i % 64);
        let mut record = BaseRecord::to(topic).key(&key).payload(&payload[..]);
        if headers > 0 {
            let mut h = OwnedHeaders::new();
            for j in 0..headers {
                h = h.insert(Header {
                    key: "capture.header",
                    value: Some(&format!("value-{i}-{j}-0123456789")),
                });
            }
            record = record.headers(h);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(started.elapsed().as_secs_f64())
}

/// The embedded store: write and window-read rates for compressible and random bodies.
fn embedded_store_rates() -> Result<()> {
    println!("== embedded store (segment log) rates, 1 KiB messages ==");
    let size = 1024;
    let n = 200_000;
    // `store-embedded random` (or `repeated`) runs one kind only, for profiling.
    let only = std::env::args().nth(2);
    let kinds = [
        ("'x' bodies", Body::Repeated),
        ("random bodies", Body::Random),
    ];
    for (label, body) in kinds.into_iter().filter(|(_, b)| {
        only.as_deref().is_none_or(|o| {
            o == if matches!(b, Body::Random) {
                "random"
            } else {
                "repeated"
            }
        })
    }) {
        let dir = tempfile::tempdir()?;
        let mut embedded = capture_user::store::embedded::EmbeddedStore::open(dir.path())?;
        let r = store_round(&mut embedded, "bench", n, size, body)?;
        let n = n as f64;
        let us = |(user, sys): (f64, f64)| format!("{:.2}+{:.2}", user * 1e6 / n, sys * 1e6 / n);
        println!(
            "embedded, {label:<13}: write {:>8.0} msg/s ({:>5.0} MB/s, CPU {} us/msg user+sys, end+fdatasync {:.2} s), window read {:>8.0} msg/s ({:>5.0} MB/s, CPU {} us/msg), {:.0} MB on disk",
            n / r.write,
            n * size as f64 / r.write / 1e6,
            us(r.write_cpu),
            r.end,
            n / r.read,
            n * size as f64 / r.read / 1e6,
            us(r.read_cpu),
            embedded.log_bytes()? as f64 / 1e6
        );
    }
    println!(
        "(write is begin, appends and end, whose fdatasync makes the recording durable; CPU is the calling thread's, where the embedded store does all its work)"
    );
    Ok(())
}

fn store_rates() -> Result<()> {
    embedded_store_rates()?;
    println!("== Kafka store rates (1 KiB messages) ==");
    let size = 1024;
    let broker = tests::broker::Tansu::start()?;
    let n = 20_000;
    // tansu does not create topics on demand: create the plain producer's topic first.
    drop(capture_user::store::kafka::KafkaStore::open(
        capture_user::store::kafka::KafkaConfig::new(&broker.bootstrap(), "plain"),
    )?);
    let plain = plain_producer_seconds(&broker.bootstrap(), "plain", n, size, 0)?;
    let plain_headers = plain_producer_seconds(&broker.bootstrap(), "plain", n, size, 10)?;
    let mut config = capture_user::store::kafka::KafkaConfig::new(&broker.bootstrap(), "bench");
    config.queue_max_messages = 1_000_000;
    let mut kafka = capture_user::store::kafka::KafkaStore::open(config)?;
    let Round { write, read, .. } = store_round(&mut kafka, "bench", n, size, Body::Repeated)?;
    println!(
        "kafka store (tansu, lz4, idempotent): write {:.0} msg/s ({:.1} MB/s), window read {:.0} msg/s, {n} messages",
        n as f64 / write,
        n as f64 * size as f64 / write / 1e6,
        n as f64 / read
    );
    println!(
        "plain librdkafka producer, same payloads and settings: {:.0} msg/s without headers, {:.0} msg/s with 10 headers",
        n as f64 / plain,
        n as f64 / plain_headers
    );
    println!(
        "capture/plain ratio: {:.2} (vs no headers), {:.2} (vs the same number of headers)",
        plain / write,
        plain_headers / write
    );
    Ok(())
}

/// Requests per second in wrk's output.
fn wrk_requests_per_second(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0.0)
}

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

fn replay_rates() -> Result<()> {
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
