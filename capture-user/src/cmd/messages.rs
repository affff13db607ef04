//! `capture messages`: HTTP messages, one line each, from live capture or a pcap file.
//! The same pipeline serves both, so what a file shows is what live capture would show.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd::capture_args::CaptureArgs;
use crate::live::{LiveMessages, MessageSink};
use crate::message::HttpMessage;
use crate::pipeline::PipelineStats;

/// Arguments of `capture messages`.
#[derive(Clone, Debug, clap::Args)]
pub struct MessagesArgs {
    /// Read packets from this pcap or pcapng file (gzip-compressed too) instead of capturing;
    /// --port then limits the file to these server ports (default: every TCP connection).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["interfaces", "attach", "duration"])]
    pub pcap: Option<PathBuf>,

    #[command(flatten)]
    pub capture: CaptureArgs,

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
            let stats = run_pcap(path, &args.capture.ports, args.requests_only)?;
            eprintln!("counters: {}", stats.to_line());
            Ok(())
        }
        None => run_live(args).await,
    }
}

/// Frames every message of a capture file and prints them; the counters are printed even
/// when the file turns out truncated part way.
pub fn run_pcap(
    path: &std::path::Path,
    ports: &[u16],
    requests_only: bool,
) -> anyhow::Result<PipelineStats> {
    let framed = crate::files::frame_pcap(path, ports, |batch| {
        print(batch, requests_only).context("writing to stdout")
    })?;
    if let Some(e) = framed.cut_short {
        eprintln!("counters: {}", framed.stats.to_line());
        return Err(e);
    }
    Ok(framed.stats)
}

/// Prints messages on the ring thread as they are framed; a closed stdout stops capture.
#[derive(Clone)]
struct Printer {
    requests_only: bool,
}

impl MessageSink for Printer {
    fn deliver(&mut self, messages: &mut Vec<HttpMessage>) -> bool {
        print(messages, self.requests_only).is_ok()
    }
}

async fn run_live(args: MessagesArgs) -> anyhow::Result<()> {
    let config = args.capture.to_config()?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let printer = Printer {
        requests_only: args.requests_only,
    };
    let live = LiveMessages::start(&config, 1, printer)?;
    match config.tls {
        Some(side) => {
            let stats = live.stats()?;
            let tls = stats.tls.unwrap_or_default();
            eprintln!(
                "capturing HTTPS plaintext ({}) on ports {:?} from {}; stop with Ctrl-C",
                side.phrase(),
                config.ports,
                tls.probed_line()
            );
            if let Some(line) = tls.unhooked_line() {
                eprintln!("not captured (no libssl mapped, TLS linked statically?): {line}");
            }
        }
        None => eprintln!(
            "capturing HTTP on {} ports {:?}; stop with Ctrl-C",
            config.interfaces.join(", "),
            config.ports
        ),
    }
    let deadline = tokio::time::sleep(args.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut check = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = check.tick() => if !live.is_running() { break },
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline, if args.duration.is_some() => break,
        }
    }
    let stats = tokio::task::spawn_blocking(move || live.finish())
        .await
        .context("joining the capture")??;
    if let Some(tls) = &stats.tls {
        eprintln!("tls libraries probed: {}", tls.libraries.join(", "));
    }
    eprintln!("counters: {}", stats.to_line());
    Ok(())
}
