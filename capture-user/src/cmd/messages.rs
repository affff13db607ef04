//! `capture messages`: HTTP messages, one line each, from live capture or a pcap file.
//! The same pipeline serves both, so what a file shows is what live capture would show.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd::capture_args::parse_port;
use crate::live::{AttachMode, CaptureConfig, EbpfLogLevel, LiveCapture};
use crate::message::HttpMessage;
use crate::packet::Timestamp;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineStats};

/// Arguments of `capture messages`.
#[derive(Clone, Debug, clap::Args)]
pub struct MessagesArgs {
    /// Read packets from this pcap or pcapng file (gzip-compressed too) instead of capturing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["interfaces", "attach", "duration"])]
    pub pcap: Option<PathBuf>,

    /// Interface to capture on (repeat for several). List them with `ip link`.
    #[arg(
        long = "iface",
        short = 'i',
        value_name = "IF",
        required_unless_present = "pcap"
    )]
    pub interfaces: Vec<String>,

    /// Server TCP port (repeat for several). Required when capturing; with --pcap it limits
    /// the file to these ports (default: every TCP connection).
    #[arg(long = "port", short = 'p', value_name = "P", value_parser = parse_port, required_unless_present = "pcap")]
    pub ports: Vec<u16>,

    /// Kernel hook when capturing (tc sees requests and responses; xdp only ingress).
    #[arg(long, value_enum, default_value_t = AttachMode::Tc)]
    pub attach: AttachMode,

    /// Stop capturing after this long (e.g. 10s); otherwise Ctrl-C or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Print only requests (one line per request).
    #[arg(long)]
    pub requests_only: bool,
}

fn print(messages: &mut Vec<HttpMessage>, requests_only: bool) -> std::io::Result<()> {
    let mut text = String::new();
    for m in messages.drain(..) {
        if requests_only && !m.is_request() {
            continue;
        }
        text.push_str(&m.summary_line());
        text.push('\n');
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Runs `capture messages`.
pub async fn run(args: MessagesArgs) -> anyhow::Result<()> {
    match &args.pcap {
        Some(path) => {
            let stats = run_pcap(path, &args.ports, args.requests_only)?;
            eprintln!("counters: {}", stats.to_line());
            Ok(())
        }
        None => run_live(args).await,
    }
}

/// Frames every message of a capture file and prints them.
pub fn run_pcap(
    path: &std::path::Path,
    ports: &[u16],
    requests_only: bool,
) -> anyhow::Result<PipelineStats> {
    let packets = crate::pcap::open(path)?;
    let mut pipeline = Pipeline::new(PipelineConfig {
        ports: ports.to_vec(),
        ..PipelineConfig::default()
    });
    let mut messages = Vec::new();
    let mut read_error = None;
    for packet in packets {
        match packet {
            Ok(packet) => pipeline.push_packet(&packet, &mut messages),
            Err(e) => {
                // Keep what was read: frame and print it, then report the error.
                read_error = Some(e);
                break;
            }
        }
        if messages.len() >= 256 {
            print(&mut messages, requests_only).context("writing to stdout")?;
        }
    }
    pipeline.finish(&mut messages);
    print(&mut messages, requests_only).context("writing to stdout")?;
    if let Some(e) = read_error {
        eprintln!("counters: {}", pipeline.stats().to_line());
        return Err(e.into());
    }
    Ok(pipeline.stats())
}

async fn run_live(args: MessagesArgs) -> anyhow::Result<()> {
    if args.interfaces.is_empty() || args.ports.is_empty() {
        bail!("capturing needs --iface IF and --port P (or read a file with --pcap FILE)");
    }
    let config = CaptureConfig {
        interfaces: args.interfaces.clone(),
        ports: args.ports.clone(),
        mode: args.attach,
        ring_bytes: 16 << 20,
        ebpf_log: EbpfLogLevel::Off,
        tc_netlink: false,
    };
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut capture = LiveCapture::start(&config)?;
    eprintln!(
        "capturing HTTP on {} ports {:?}; stop with Ctrl-C",
        config.interfaces.join(", "),
        config.ports
    );
    let mut pipeline = Pipeline::new(PipelineConfig {
        ports: args.ports.clone(),
        ..PipelineConfig::default()
    });
    let mut messages = Vec::new();
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            batch = capture.recv() => match batch {
                Some(batch) => {
                    for packet in &batch {
                        pipeline.push_packet(packet, &mut messages);
                    }
                    if print(&mut messages, args.requests_only).is_err() {
                        break;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                pipeline.expire(Timestamp::now(), &mut messages);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline, if args.duration.is_some() => break,
        }
    }
    let capture_stats = crate::cmd::finish_live(capture, &mut pipeline, &mut messages).await?;
    let _ = print(&mut messages, args.requests_only);
    eprintln!(
        "counters: {} {}",
        capture_stats.to_line(),
        pipeline.stats().to_line()
    );
    Ok(())
}
