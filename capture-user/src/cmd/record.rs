//! `capture record` (live) and `capture import` (pcap or GoReplay file): frame messages and
//! store them as a named recording, then print a summary an SRE can trust.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd::capture_args::{CaptureArgs, parse_port};
use crate::cmd::store_args::StoreArgs;
use crate::live::LiveCapture;
use crate::message::HttpMessage;
use crate::packet::Timestamp;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use crate::store::{Recording, RecordingSummary, Store};

/// Arguments of `capture record`.
#[derive(Clone, Debug, clap::Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// Name of the recording (letters, digits, '.', '_', '-').
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// Stop after this long (e.g. 30s, 5m); otherwise Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub store: StoreArgs,
}

/// Arguments of `capture import`.
#[derive(Clone, Debug, clap::Args)]
pub struct ImportArgs {
    /// A pcap/pcapng file (gzip too) or a GoReplay file; the format is detected.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,

    /// Name of the new recording.
    #[arg(long, value_name = "NAME")]
    pub name: String,

    /// For pcaps: only these server ports (default: every TCP connection).
    #[arg(long = "port", short = 'p', value_name = "P", value_parser = parse_port)]
    pub ports: Vec<u16>,

    #[command(flatten)]
    pub store: StoreArgs,
}

/// Messages waiting for the store thread (batches). When full, new messages are dropped and
/// counted as `store_queue_full` instead of stalling capture.
const STORE_QUEUE_BATCHES: usize = 256;

/// How often the store thread makes queued messages durable.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Result of the store thread.
struct StoreOutcome {
    messages: u64,
    bytes: u64,
    error: Option<anyhow::Error>,
}

/// The store thread; joining it gives the store back with what it stored.
type StoreThread = std::thread::JoinHandle<(Box<dyn Store>, StoreOutcome)>;

/// Runs the store on its own thread (SQLite calls block), fed batches of messages.
fn spawn_store_thread(
    mut store: Box<dyn Store>,
    name: String,
) -> (std_mpsc::SyncSender<Vec<HttpMessage>>, StoreThread) {
    let (tx, rx) = std_mpsc::sync_channel::<Vec<HttpMessage>>(STORE_QUEUE_BATCHES);
    let handle = std::thread::spawn(move || {
        let tags = vec![name];
        let mut outcome = StoreOutcome {
            messages: 0,
            bytes: 0,
            error: None,
        };
        let mut last_flush = Instant::now();
        loop {
            let batch = match rx.recv_timeout(FLUSH_EVERY) {
                Ok(batch) => Some(batch),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            };
            for m in batch.iter().flatten() {
                if let Err(e) = store.append(m, &tags) {
                    outcome.error = Some(e.into());
                    return (store, outcome);
                }
                outcome.messages += 1;
                outcome.bytes += m.bytes.len() as u64;
            }
            if last_flush.elapsed() >= FLUSH_EVERY {
                if let Err(e) = store.flush() {
                    outcome.error = Some(e.into());
                    return (store, outcome);
                }
                last_flush = Instant::now();
            }
        }
        if let Err(e) = store.flush() {
            outcome.error = Some(e.into());
        }
        (store, outcome)
    });
    (tx, handle)
}

fn drops_of(pipeline: &PipelineStats, extra: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let anomalies = [
        "truncated_packets",
        "connection_cap_hits",
        "buffer_cap_hits",
        "total_buffer_cap_hits",
        "gaps",
        "incomplete_messages",
        "header_too_large",
        "bad_message_head",
        "bad_framing",
        "body_too_large",
        "upgrades",
    ];
    let mut drops: BTreeMap<String, u64> = pipeline
        .pairs()
        .into_iter()
        .filter(|(k, v)| {
            *v > 0 && (anomalies.contains(&k.as_str()) || k.starts_with("decode_error_"))
        })
        .collect();
    for (k, v) in extra {
        if *v > 0 {
            drops.insert((*k).to_string(), *v);
        }
    }
    drops
}

/// Prints what a user needs after a recording: counts, window, drops.
pub fn print_summary(rec: &Recording) {
    let window = |m: &Option<BTreeMap<i32, i64>>| {
        m.as_ref()
            .map(|m| {
                m.iter()
                    .map(|(p, o)| format!("{p}:{o}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "-".into())
    };
    let start = Some(rec.start.clone());
    eprintln!(
        "recording {}: {} ({} backend), {} messages, {} bytes, window start [{}] end [{}]",
        rec.name,
        rec.state,
        rec.backend,
        rec.messages,
        rec.bytes,
        window(&start),
        window(&rec.end)
    );
    if rec.drops.is_empty() {
        eprintln!("drops: none");
    } else {
        let list: Vec<String> = rec.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("drops and anomalies: {}", list.join(" "));
    }
}

/// Runs `capture record`.
pub async fn run_record(args: RecordArgs) -> anyhow::Result<()> {
    let config = args.capture.to_config();
    let mut store = args.store.open()?;
    crate::store::validate_name(&args.name)?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Attach first, so a bad interface or missing privileges leaves no catalog entry behind.
    let mut capture = LiveCapture::start(&config)?;
    let source = format!(
        "live {} ports {:?}",
        config.interfaces.join(","),
        config.ports
    );
    store.begin(&args.name, &source)?;
    eprintln!(
        "recording {} from {} ports {:?} into {}; stop with Ctrl-C",
        args.name,
        config.interfaces.join(", "),
        config.ports,
        args.store.describe()
    );
    let (tx, store_thread) = spawn_store_thread(store, args.name.clone());
    let mut pipeline = Pipeline::new(PipelineConfig {
        ports: config.ports.clone(),
        ..PipelineConfig::default()
    });
    let mut queue_full: u64 = 0;
    let mut sent: u64 = 0;
    let mut messages = Vec::new();
    let forward = |messages: &mut Vec<HttpMessage>, queue_full: &mut u64, sent: &mut u64| -> bool {
        if messages.is_empty() {
            return true;
        }
        let n = messages.len() as u64;
        match tx.try_send(std::mem::take(messages)) {
            Ok(()) => {
                *sent += n;
                true
            }
            Err(std_mpsc::TrySendError::Full(_)) => {
                *queue_full += n;
                true
            }
            Err(std_mpsc::TrySendError::Disconnected(_)) => false,
        }
    };
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let started = Instant::now();
    loop {
        tokio::select! {
            batch = capture.recv() => match batch {
                Some(batch) => {
                    for packet in &batch {
                        pipeline.push_packet(packet, &mut messages);
                    }
                    if !forward(&mut messages, &mut queue_full, &mut sent) {
                        break;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                pipeline.expire(Timestamp::now(), &mut messages);
                let stats = capture.stats()?;
                eprintln!(
                    "recording {}: {:.0}s, {} messages, kernel drops {}, queue drops {}",
                    args.name,
                    started.elapsed().as_secs_f64(),
                    sent,
                    stats.kernel.get(capture_common::Counter::DroppedRingFull),
                    queue_full
                );
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline, if args.duration.is_some() => break,
        }
    }
    let capture_stats = crate::cmd::finish_live(capture, &mut pipeline, &mut messages).await?;
    // The tail goes in with a blocking send: nothing already captured is dropped at the end.
    if !messages.is_empty() {
        let n = messages.len() as u64;
        if tx.send(std::mem::take(&mut messages)).is_ok() {
            sent += n;
        }
    }
    drop(tx);
    let (mut store, outcome) = tokio::task::spawn_blocking(move || store_thread.join())
        .await
        .context("joining the store thread")?
        .map_err(|_| anyhow::anyhow!("the store thread panicked"))?;
    let kernel = capture_stats.kernel;
    let drops = drops_of(
        &pipeline.stats(),
        &[
            (
                "kernel_ring_full",
                kernel.get(capture_common::Counter::DroppedRingFull),
            ),
            (
                "kernel_copy_failed",
                kernel.get(capture_common::Counter::DroppedCopyFailed),
            ),
            (
                "kernel_truncated",
                kernel.get(capture_common::Counter::Truncated),
            ),
            ("store_queue_full", queue_full),
        ],
    );
    let summary = RecordingSummary {
        messages: outcome.messages,
        bytes: outcome.bytes,
        drops,
    };
    let rec = store.end(&args.name, summary)?;
    print_summary(&rec);
    if let Some(e) = outcome.error {
        return Err(e.context(format!(
            "storing recording {} failed after {} messages (those are kept)",
            args.name, outcome.messages
        )));
    }
    debug_assert!(sent >= outcome.messages);
    Ok(())
}

/// What a file of messages is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// pcap/pcapng (gzip too) or GoReplay, told apart by their first bytes.
    Detect,
    Pcap,
    Gor,
}

/// Reads a pcap (framed by the capture pipeline, `ports` as in `capture messages`) or a
/// GoReplay file into messages, with what was lost on the way (same names as live drops).
pub fn read_messages_file(
    path: &std::path::Path,
    ports: &[u16],
    format: FileFormat,
) -> anyhow::Result<(Vec<HttpMessage>, BTreeMap<String, u64>)> {
    let is_gor = match format {
        FileFormat::Pcap => false,
        FileFormat::Gor => true,
        FileFormat::Detect => {
            use std::io::Read as _;
            let mut head = [0u8; 2];
            let mut f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            let n = f
                .read(&mut head)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                bail!("{} is empty", path.display());
            }
            matches!(head[0], b'1' | b'2' | b'3') && head[1] == b' '
        }
    };
    if is_gor {
        let data =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let payloads = crate::store::gor::parse(&data)
            .with_context(|| format!("{} (GoReplay format)", path.display()))?;
        let (messages, skipped) = crate::store::gor::to_messages(&payloads);
        let drops = BTreeMap::from_iter(
            (skipped > 0).then(|| ("replayed_responses_skipped".to_string(), skipped)),
        );
        return Ok((messages, drops));
    }
    let packets = crate::pcap::open(path)?;
    let mut pipeline = Pipeline::new(PipelineConfig {
        ports: ports.to_vec(),
        ..PipelineConfig::default()
    });
    let mut messages = Vec::new();
    for packet in packets {
        pipeline.push_packet(&packet?, &mut messages);
    }
    pipeline.finish(&mut messages);
    Ok((messages, drops_of(&pipeline.stats(), &[])))
}

/// Runs `capture import`.
pub fn run_import(args: ImportArgs) -> anyhow::Result<()> {
    let (messages, drops) = read_messages_file(&args.file, &args.ports, FileFormat::Detect)?;
    let mut store = args.store.open()?;
    let source = format!("import {}", args.file.display());
    store.begin(&args.name, &source)?;
    let tags = vec![args.name.clone()];
    let mut bytes = 0u64;
    for m in &messages {
        store.append(m, &tags)?;
        bytes += m.bytes.len() as u64;
    }
    let rec = store.end(
        &args.name,
        RecordingSummary {
            messages: messages.len() as u64,
            bytes,
            drops,
        },
    )?;
    print_summary(&rec);
    Ok(())
}
