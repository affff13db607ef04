//! Recordings through the CLI on both backends, with a real Kafka-protocol broker (tansu)
//! and an independent Kafka client (PyPI's confluent-kafka) to cross-check offsets.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tests::broker::Tansu;
use tests::capture::CaptureRun;
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::{capture_bin, run_ok};

const PORT: u16 = 8080;

/// Where recordings go: the embedded store in a directory, or Kafka.
enum Backend<'a> {
    Embedded(&'a Path),
    /// Kafka, with the broker and every client in network namespace `ns`.
    Kafka {
        bootstrap: String,
        topic: &'a str,
        ns: String,
    },
}

impl Backend<'_> {
    fn args(&self) -> Vec<String> {
        match self {
            Backend::Embedded(dir) => vec!["--data-dir".into(), dir.display().to_string()],
            Backend::Kafka {
                bootstrap, topic, ..
            } => {
                vec![
                    "--kafka".into(),
                    bootstrap.clone(),
                    "--topic".into(),
                    topic.to_string(),
                ]
            }
        }
    }

    fn command(&self, program: &str) -> Command {
        match self {
            Backend::Embedded(_) => Command::new(program),
            Backend::Kafka { ns, .. } => Topology::exec(ns, program),
        }
    }

    fn capture(&self, args: &[&str]) -> Result<String> {
        let bin = capture_bin();
        let out = run_ok(
            self.command(&bin.to_string_lossy())
                .args(args)
                .args(self.args()),
        )?;
        Ok(String::from_utf8(out.stdout)?)
    }

    fn record(&self, topo: &Topology, name: &str, extra: &[&str]) -> Result<CaptureRun> {
        let mut args = self.args();
        args.extend(extra.iter().map(|s| s.to_string()));
        CaptureRun::record(&topo.client_ns, &topo.client_if, name, &args)
    }

    /// URIs of the requests in a recording, in the order read.
    fn request_uris(&self, name: &str) -> Result<Vec<String>> {
        let text = self.capture(&["inspect", name])?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(" request GET ").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split(' ').next())
            .map(str::to_string)
            .collect())
    }

    fn field(&self, name: &str, key: &str) -> Result<String> {
        let json = self.capture(&["recordings", "show", name, "--json"])?;
        let at = json
            .find(&format!("\"{key}\":"))
            .with_context(|| format!("no {key} in {json}"))?
            + key.len()
            + 3;
        let rest = json[at..].trim_start();
        let end = rest.find([',', '\n']).unwrap_or(rest.len());
        Ok(rest[..end].trim().trim_matches('"').to_string())
    }
}

fn curl(topo: &Topology, query: &str, n: usize) -> Result<()> {
    for i in 0..n {
        run_ok(
            topo.client("curl")
                .args(["-sS", "-o", "/dev/null", "--max-time", "5"])
                .arg(format!(
                    "http://{}:{PORT}/index.html?{query}={i}",
                    topo.server_ip
                )),
        )?;
    }
    Ok(())
}

fn settle() {
    std::thread::sleep(Duration::from_millis(400));
}

fn stop(run: CaptureRun) -> Result<Vec<String>> {
    let out = run.stop(libc::SIGINT)?;
    ensure!(
        out.status.success(),
        "recorder failed: {}",
        out.stderr.join("\n")
    );
    Ok(out.stderr)
}

/// R1, then R2, and R3 overlapping R2 (two recorder processes at once), live.
fn overlapping_live_recordings(topo: &Topology, backend: &Backend) -> Result<()> {
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let r1 = backend.record(topo, "r1", &[])?;
    curl(topo, "r1", 4)?;
    settle();
    stop(r1)?;
    curl(topo, "none", 2)?;
    let r2 = backend.record(topo, "r2", &[])?;
    curl(topo, "r2only", 3)?;
    settle();
    let r3 = backend.record(topo, "r3", &[])?;
    curl(topo, "both", 3)?;
    settle();
    stop(r2)?;
    curl(topo, "r3only", 2)?;
    settle();
    stop(r3)?;

    let expect = |parts: &[(&str, usize)]| -> Vec<String> {
        parts
            .iter()
            .flat_map(|(q, n)| (0..*n).map(move |i| format!("/index.html?{q}={i}")))
            .collect()
    };
    for _ in 0..2 {
        assert_eq!(backend.request_uris("r1")?, expect(&[("r1", 4)]));
        assert_eq!(
            backend.request_uris("r2")?,
            expect(&[("r2only", 3), ("both", 3)])
        );
        assert_eq!(
            backend.request_uris("r3")?,
            expect(&[("both", 3), ("r3only", 2)])
        );
    }
    Ok(())
}

#[test]
fn overlapping_live_recordings_are_exact_on_the_embedded_store() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let topo = Topology::new("ovle")?;
    overlapping_live_recordings(&topo, &Backend::Embedded(dir.path()))
}

#[test]
fn overlapping_live_recordings_are_exact_on_kafka() -> Result<()> {
    let topo = Topology::new("ovlk")?;
    let broker = Tansu::start_in(&topo.client_ns)?;
    overlapping_live_recordings(
        &topo,
        &Backend::Kafka {
            bootstrap: broker.bootstrap(),
            topic: "overlap",
            ns: topo.client_ns.clone(),
        },
    )
}

/// Counts, with confluent-kafka, the records in [start, end) per partition that carry the
/// recording's tag, and reads the high watermarks.
const PY_WINDOW: &str = r#"
import json, sys
from confluent_kafka import Consumer, TopicPartition
bootstrap, topic, name, start, end = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "xcheck", "enable.auto.commit": False})
high = {}
count = 0
for p in start:
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, int(p)), timeout=10)
    high[p] = hi
    s, e = start[p], end[p]
    if e <= s:
        continue
    c.assign([TopicPartition(topic, int(p), s)])
    seen = s
    while seen < e:
        m = c.poll(10)
        if m is None:
            raise SystemExit(f"timeout at partition {p} offset {seen}")
        if m.error():
            raise SystemExit(str(m.error()))
        seen = m.offset() + 1
        if m.offset() >= e:
            break
        headers = dict(m.headers() or [])
        tags = headers.get("capture.recordings", b"").decode().split(",")
        # One count per message: its first fragment.
        if name in tags and headers.get("capture.fragment", b"0/1").decode().startswith("0/"):
            count += 1
c.close()
print(json.dumps({"count": count, "high": high}))
"#;

#[test]
fn kafka_window_offsets_agree_with_an_independent_client_and_5_mb_round_trips() -> Result<()> {
    let topo = Topology::new("xchk")?;
    let broker = Tansu::start_in(&topo.client_ns)?;
    let backend = Backend::Kafka {
        bootstrap: broker.bootstrap(),
        topic: "xcheck",
        ns: topo.client_ns.clone(),
    };
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let run = backend.record(&topo, "win", &[])?;
    curl(&topo, "w", 10)?;
    let body: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();
    let dir = tempfile::tempdir()?;
    let body_file = dir.path().join("body.bin");
    std::fs::write(&body_file, &body)?;
    run_ok(
        topo.client("curl")
            .args(["-sS", "-o", "/dev/null", "--data-binary"])
            .arg(format!("@{}", body_file.display()))
            .arg(format!("http://{}:{PORT}/upload", topo.server_ip)),
    )?;
    settle();
    stop(run)?;

    let json = backend.capture(&["recordings", "show", "win", "--json"])?;
    let window = |key: &str| -> Result<String> {
        let at = json
            .find(&format!("\"{key}\": {{"))
            .with_context(|| format!("no {key}"))?
            + key.len()
            + 3;
        let end = json[at..].find('}').context("unterminated")? + at + 1;
        Ok(json[at..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(""))
    };
    let (start_json, end_json) = (window("start")?, window("end")?);
    let out = run_ok(backend.command("python3").args([
        "-c",
        PY_WINDOW,
        &broker.bootstrap(),
        "xcheck",
        "win",
        &start_json,
        &end_json,
    ]))?;
    let text = String::from_utf8(out.stdout)?;
    let messages: u64 = backend.field("win", "messages")?.parse()?;
    assert!(
        text.contains(&format!("\"count\": {messages}")),
        "independent count {text} vs {messages}"
    );
    // Nothing else wrote to the topic: the end of the window is the high watermark.
    let high = text
        .split("\"high\": ")
        .nth(1)
        .context("no high")?
        .trim()
        .trim_end_matches('}')
        .to_string()
        + "}";
    assert_eq!(
        high.replace(' ', ""),
        end_json,
        "high watermarks vs window end"
    );

    // The 5 MB body, byte for byte, through Kafka (fragmented and rejoined).
    let gor = dir.path().join("win.gor");
    backend.capture(&["export", "win", "--gor", &gor.to_string_lossy()])?;
    let file = std::fs::read(&gor)?;
    let after = tests::bytes_after_head(&file, b"POST /upload HTTP/1.1")?;
    assert_eq!(&after[..body.len()], &body[..]);
    Ok(())
}

#[test]
fn an_unreachable_broker_is_a_clear_error_within_10_seconds() -> Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let started = Instant::now();
    let out = Command::new(capture_bin())
        .args([
            "recordings",
            "list",
            "--kafka",
            &format!("127.0.0.1:{closed}"),
        ])
        .output()?;
    let elapsed = started.elapsed();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("broker unreachable") && stderr.contains("--kafka"),
        "{stderr}"
    );
    assert!(elapsed < Duration::from_secs(12), "took {elapsed:?}");
    Ok(())
}

#[test]
fn broker_restart_mid_recording_keeps_exact_accounting() -> Result<()> {
    let topo = Topology::new("brst")?;
    let mut broker = Tansu::start_in(&topo.client_ns)?;
    let backend = Backend::Kafka {
        bootstrap: broker.bootstrap(),
        topic: "restart",
        ns: topo.client_ns.clone(),
    };
    let nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let run = backend.record(&topo, "bumpy", &[])?;
    curl(&topo, "before", 5)?;
    settle();
    broker.stop()?;
    curl(&topo, "during", 5)?;
    broker.restart()?;
    curl(&topo, "after", 5)?;
    std::thread::sleep(Duration::from_secs(2));
    let stderr = stop(run)?;
    let framed = 2 * nginx.access_log()?.len() as u64;
    let stored: u64 = backend.field("bumpy", "messages")?.parse()?;
    let uris = backend.request_uris("bumpy")?;
    // Every message reported as stored is in the window ...
    let inspected = backend.capture(&["inspect", "bumpy"])?.lines().count() as u64;
    assert_eq!(inspected, stored, "{stderr:?}");
    // ... and every framed message is either stored or a counted drop.
    let summary = stderr
        .iter()
        .find(|l| l.starts_with("drops"))
        .cloned()
        .unwrap_or_default();
    let dropped: u64 = summary
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| {
            k.starts_with("kafka_") || *k == "producer_queue_full" || *k == "not_acknowledged"
        })
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    assert_eq!(
        stored + dropped,
        framed,
        "stored {stored} + dropped {dropped} vs framed {framed}: {stderr:?}"
    );
    assert!(uris.iter().any(|u| u.contains("after=")), "{uris:?}");
    Ok(())
}

#[test]
fn a_full_producer_queue_is_a_counted_drop() -> Result<()> {
    let topo = Topology::new("qcap")?;
    let broker = Tansu::start_in(&topo.client_ns)?;
    let backend = Backend::Kafka {
        bootstrap: broker.bootstrap(),
        topic: "tiny-queue",
        ns: topo.client_ns.clone(),
    };
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let run = backend.record(&topo, "squeezed", &["--kafka-queue-messages", "5"])?;
    run_ok(
        topo.client("wrk")
            .args(["-t1", "-c8", "-d2s"])
            .arg(format!("http://{}:{PORT}/index.html", topo.server_ip)),
    )?;
    settle();
    let stderr = stop(run)?;
    let drops = stderr
        .iter()
        .find(|l| l.starts_with("drops"))
        .context("no drops line")?;
    assert!(drops.contains("producer_queue_full="), "{drops}");
    let stored: u64 = backend.field("squeezed", "messages")?.parse()?;
    let inspected = backend.capture(&["inspect", "squeezed"])?.lines().count() as u64;
    assert_eq!(inspected, stored);
    Ok(())
}

#[test]
fn a_kafka_recorder_killed_with_sigkill_leaves_an_interrupted_recording_with_provable_offsets()
-> Result<()> {
    let topo = Topology::new("kkil")?;
    let broker = Tansu::start_in(&topo.client_ns)?;
    let backend = Backend::Kafka {
        bootstrap: broker.bootstrap(),
        topic: "killed",
        ns: topo.client_ns.clone(),
    };
    let _nginx = Nginx::start(&topo.server_ns, &[PORT])?;
    let run = backend.record(&topo, "before", &[])?;
    curl(&topo, "before", 3)?;
    settle();
    stop(run)?;
    let before = backend.request_uris("before")?;

    let run = backend.record(&topo, "crashed", &[])?;
    curl(&topo, "crashed", 6)?;
    // Past linger and delivery, so the messages are on the broker.
    std::thread::sleep(Duration::from_millis(1500));
    let out = run.stop(libc::SIGKILL)?;
    assert!(!out.status.success());

    let list = backend.capture(&["recordings", "list"])?;
    let line = list
        .lines()
        .find(|l| l.starts_with("crashed\t"))
        .context("not listed")?;
    assert!(line.contains("\tinterrupted\t"), "{list}");
    assert!(
        backend.field("crashed", "end")?.starts_with('{'),
        "an interrupted recording has end offsets"
    );
    assert_eq!(backend.request_uris("crashed")?.len(), 6);
    assert_eq!(backend.request_uris("before")?, before);
    Ok(())
}
