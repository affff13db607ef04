//! `capture record` (live) and `capture import` (pcap or GoReplay file): frame messages and
//! store them as a named recording, then print a summary an SRE can trust.

use crate::cmd::capture_args::parse_header_name;
use crate::redact::Redaction;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd::capture_args::CaptureArgs;
use crate::cmd::store_args::StoreArgs;
use crate::files::{FileFormat, MessageFile};
use crate::recorder::{Limits, Recorder, RecorderConfig};
use crate::store::{Ending, Recording, RecordingState, RecordingSummary};
use crate::units::parse_port;

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

    /// End the recording (complete) once it holds this many messages.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,

    /// End the recording (complete) before its messages pass this size (bytes as seen on
    /// the wire, e.g. 500MiB).
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_byte_size)]
    pub max_size: Option<u64>,

    /// Framing threads: 1 frames where the ring is drained; more spread connections over
    /// that many threads (each connection stays on one, in order) for a busy node.
    #[arg(long, value_name = "N", default_value_t = crate::recorder::DEFAULT_THREADS, value_parser = parse_threads)]
    pub threads: usize,

    /// Join a recording of the same name that other nodes are making (Kafka only): each
    /// node stores its part, and the recording's window spans them all.
    #[arg(long, requires = "kafka")]
    pub join: bool,

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

    /// Replace the values of this header with "[redacted]" before anything is stored
    /// (repeatable), as for `record`: e.g. Authorization, Cookie, Set-Cookie.
    #[arg(long = "redact-header", value_name = "NAME", value_parser = parse_header_name)]
    pub redact_headers: Vec<String>,

    #[command(flatten)]
    pub store: StoreArgs,
}

fn parse_threads(text: &str) -> Result<usize, String> {
    let n = text
        .trim()
        .parse()
        .map_err(|_| format!("not a number of threads: {text:?}"))?;
    crate::recorder::check_threads(n)
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
    if let (RecordingState::Complete, Some(why)) = (rec.state, &rec.reason) {
        eprintln!("ended by itself: it {why}");
    }
    if rec.drops.is_empty() {
        eprintln!("drops: none");
    } else {
        let list: Vec<String> = rec.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("drops and anomalies: {}", list.join(" "));
    }
}

/// Runs `capture record`.
pub async fn run_record(args: RecordArgs) -> anyhow::Result<()> {
    let store = args.store.to_config()?.open()?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let config = RecorderConfig {
        capture: args.capture.to_config()?,
        name: args.name.clone(),
        join: args.join,
        threads: args.threads,
        limits: Limits {
            max_messages: args.max_messages,
            max_bytes: args.max_size,
        },
    };
    let recorder = Recorder::start(config, store).await?;
    let from = if args.capture.tls {
        format!("TLS libraries ({})", args.capture.tls_side.phrase())
    } else {
        crate::cmd::capture_args::interfaces_line(&args.capture.interfaces, &recorder.interfaces)
    };
    eprintln!(
        "recording {} from {} ports {:?} into {}; stop with Ctrl-C",
        args.name,
        from,
        args.capture.ports,
        args.store.to_config()?.describe()
    );
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if recorder.is_finished() {
                    break;
                }
                let st = recorder.status();
                eprintln!(
                    "recording {}: {:.0}s, {} messages, store backlog {}, kernel drops {}, queue drops {}",
                    args.name,
                    st.elapsed.as_secs_f64(),
                    st.messages_queued,
                    st.store_backlog(),
                    st.live.capture.kernel.get(capture_common::Counter::DroppedRingFull),
                    st.store_queue_full
                );
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline, if args.duration.is_some() => break,
        }
    }
    recorder.stop();
    let finished = recorder.finish().await?;
    print_summary(&finished.recording);
    let live = &finished.status.live;
    if let Some(tls) = &live.tls {
        let pairs: Vec<String> = tls
            .pairs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        eprintln!(
            "tls: {} (libraries: {})",
            pairs.join(" "),
            tls.libraries.join(", ")
        );
        if let Some(line) = tls.unhooked_line() {
            eprintln!("not captured (no libssl mapped, TLS linked statically?): {line}");
        }
    }
    let i = live.capture.interfaces;
    eprintln!(
        "interfaces: {} attached over the recording, {} went away, {} could not be attached; \
         {} duplicate segments stored once (seen on two interfaces, or retransmitted)",
        i.attached, i.vanished, i.attach_failed, live.pipeline.reassembly.duplicate_segments
    );
    eprintln!("kernel: {}", live.capture.kernel_line());
    let per: Vec<String> = live
        .capture
        .per_interface
        .iter()
        .map(|t| format!("{} {} packets {} bytes", t.name, t.packets, t.bytes))
        .collect();
    if !per.is_empty() {
        eprintln!("per interface: {}", per.join(", "));
    }
    if let Some(e) = finished.store_error {
        return Err(e.context(format!(
            "recording {} failed; the {} messages stored before are kept and readable",
            args.name, finished.recording.messages
        )));
    }
    Ok(())
}

/// Runs `capture import`: messages go to the store as the file is read, so memory does not
/// grow with the file. A file that turns out garbled part way ends the recording `failed`
/// with what was stored before kept (or leaves no recording when nothing was).
pub fn run_import(args: ImportArgs) -> anyhow::Result<()> {
    let file = MessageFile::open(&args.file, &args.ports, FileFormat::Detect)?;
    let mut store = args.store.to_config()?.for_import().open()?;
    let redaction = Redaction::new(&args.redact_headers)?;
    let source = format!(
        "import {}{}",
        args.file.display(),
        crate::recorder::redaction_note(&redaction)
    );
    store.begin(&args.name, &source)?;
    let tags = vec![args.name.clone()];
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut append_error = None;
    let redacting = !redaction.is_empty();
    let read = file.visit(&mut |mut m, _| {
        if redacting && let Some(bytes) = redaction.apply(&m.bytes, m.version, m.body_len) {
            m.bytes = bytes;
        }
        match store.append(&m, &tags) {
            Ok(()) => {
                messages += 1;
                bytes += m.bytes.len() as u64;
                true
            }
            Err(e) => {
                append_error = Some(anyhow::Error::from(e).context("storing"));
                false
            }
        }
    });
    let mut summary = RecordingSummary {
        messages,
        bytes,
        ..Default::default()
    };
    let failure = match (read, append_error) {
        (_, Some(e)) | (Err(e), None) => e,
        (Ok(stats), None) => {
            summary.drops = stats.drops;
            let rec = store.end(&args.name, summary)?;
            print_summary(&rec);
            return Ok(());
        }
    };
    summary.ending = Ending::Failed(format!("{failure:#}"));
    let rec = store.end(&args.name, summary)?;
    if rec.messages == 0 {
        store.delete(&args.name)?;
        return Err(failure);
    }
    print_summary(&rec);
    Err(failure.context(format!(
        "importing {} into {} failed; the {} messages stored before are kept and readable",
        args.file.display(),
        args.name,
        rec.messages
    )))
}
