//! `capture replay`: send a recording's requests (or a GoReplay/pcap file's) to a target, with
//! the recorded timing scaled, a fixed rate, or as fast as possible; a progress line while it
//! runs and a summary at the end.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd::capture_args::parse_port;
use crate::cmd::record::{FileFormat, read_messages_file};
use crate::cmd::store_args::StoreArgs;
use crate::replay::engine::{EngineConfig, PreparedRequest, Replay};
use crate::replay::report::ReplayReport;
use crate::replay::schedule::{Pace, Recorded, plan};
use crate::replay::select::{FilterRule, Filters, RequestHead, Rewrites};
use crate::replay::source::{ReplayRequest, SourceStats, from_stored, requests_from_messages};

/// Arguments of `capture replay`.
#[derive(Clone, Debug, clap::Args)]
pub struct ReplayArgs {
    /// Recording to replay (see `capture recordings list`).
    #[arg(value_name = "RECORDING", required_unless_present_any = ["gor", "pcap"], conflicts_with_all = ["gor", "pcap"])]
    pub name: Option<String>,

    /// Replay the requests of a GoReplay file instead of a recording.
    #[arg(long, value_name = "FILE", conflicts_with = "pcap")]
    pub gor: Option<PathBuf>,

    /// Replay the requests found in a pcap/pcapng file instead of a recording.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,

    /// With --pcap: server ports to take requests from (default: every TCP connection).
    #[arg(long = "port", value_name = "P", value_parser = parse_port, requires = "pcap")]
    pub ports: Vec<u16>,

    /// Where to send: http://HOST[:PORT]. Always explicit; nothing is sent anywhere else.
    #[arg(long, value_name = "URL")]
    pub target: String,

    /// Recorded inter-arrival times divided by this (2 = twice as fast, 0.5 = half speed).
    #[arg(long, value_name = "X", default_value_t = 1.0, conflicts_with_all = ["rate", "max"])]
    pub speed: f64,

    /// A fixed rate instead of the recorded timing, in requests per second.
    #[arg(long, value_name = "N", conflicts_with = "max")]
    pub rate: Option<f64>,

    /// As fast as the connections allow (still one request at a time per connection).
    #[arg(long)]
    pub max: bool,

    /// Replay the whole set this many times, one pass after the other.
    #[arg(long = "loop", value_name = "N", default_value_t = 1)]
    pub loops: u32,

    /// Stop sending after this long (e.g. 30s, 5m), whatever is left; requests already sent
    /// get up to 2 s more for their answers. Ctrl-C does the same.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub exit_after: Option<Duration>,

    /// Most connections open at once; each replays one recorded connection.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub concurrency: usize,

    /// How long to wait for a connection to the target.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// How long to wait for a complete response, from the first byte sent.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Replay only matching requests (repeat: all must match). Forms: method=GET,POST,
    /// method!=OPTIONS, url=REGEX, url!=REGEX, header:NAME=REGEX, header:NAME!=REGEX.
    #[arg(long = "filter", value_name = "RULE")]
    pub filters: Vec<FilterRule>,

    /// Rewrite the request target: 'REGEX=>REPLACEMENT' ($1 for groups); repeat to chain.
    #[arg(long = "rewrite-url", value_name = "REGEX=>REPLACEMENT")]
    pub rewrite_urls: Vec<String>,

    /// Set a header (replacing any recorded value): 'Name: value'. Repeatable.
    #[arg(long = "set-header", value_name = "NAME: VALUE")]
    pub set_headers: Vec<String>,

    /// Remove a header. Repeatable.
    #[arg(long = "drop-header", value_name = "NAME")]
    pub drop_headers: Vec<String>,

    /// Set the Host header (default: as recorded).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub host: Option<String>,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// No progress display.
    #[arg(long)]
    pub quiet: bool,

    #[command(flatten)]
    pub store: StoreArgs,
}

/// An http:// target, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            if url.starts_with("https://") {
                bail!("--target {url}: https is not supported; replay to an http:// endpoint");
            }
            bail!("--target must look like http://HOST[:PORT], got {url:?}");
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            bail!(
                "--target must look like http://HOST[:PORT] without a path (use --rewrite-url to change paths), got {url:?}"
            );
        }
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 literal in brackets has colons of its own.
            Some((host, port)) if !port.contains(']') => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .with_context(|| format!("--target {url}: port must be 1-65535"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("--target {url}: no host");
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl Target {
    /// The first address the host resolves to.
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .with_context(|| format!("cannot resolve target host {}", self.host))
    }
}

/// The requests to replay and what was left out on the way.
pub struct Selection {
    pub requests: Vec<ReplayRequest>,
    pub source: SourceStats,
    /// Requests the filters left out.
    pub filtered_out: u64,
}

/// Applies filters: the requests that pass, in order.
pub fn select(
    requests: Vec<ReplayRequest>,
    filters: &Filters,
) -> anyhow::Result<(Vec<ReplayRequest>, u64)> {
    if filters.is_empty() {
        return Ok((requests, 0));
    }
    let total = requests.len() as u64;
    let mut kept = Vec::with_capacity(requests.len());
    for r in requests {
        let head = RequestHead::parse(&r.bytes)
            .with_context(|| format!("recorded request {} {}", r.method, r.uri))?;
        if filters.matches(&head) {
            kept.push(r);
        }
    }
    let filtered_out = total - kept.len() as u64;
    Ok((kept, filtered_out))
}

/// Applies rewrites: the bytes each request is sent as.
pub fn prepare(
    requests: &[ReplayRequest],
    rewrites: &Rewrites,
) -> anyhow::Result<Vec<PreparedRequest>> {
    requests
        .iter()
        .map(|r| {
            let bytes = if rewrites.is_empty() {
                r.bytes.clone()
            } else {
                bytes::Bytes::from(
                    rewrites
                        .apply(&r.bytes)
                        .with_context(|| format!("rewriting {} {}", r.method, r.uri))?
                        .into_owned(),
                )
            };
            Ok(PreparedRequest {
                bytes,
                recorded_status: r.recorded_status,
            })
        })
        .collect()
}

/// The pace the flags ask for.
pub fn pace_of(speed: f64, rate: Option<f64>, max: bool) -> Pace {
    match (max, rate) {
        (true, _) => Pace::Max,
        (false, Some(per_second)) => Pace::Rate { per_second },
        (false, None) => Pace::Original { speed },
    }
}

fn rewrites_of(args: &ReplayArgs) -> anyhow::Result<Rewrites> {
    rewrites_from(
        &args.rewrite_urls,
        &args.set_headers,
        &args.drop_headers,
        args.host.as_deref(),
    )
}

/// Rewrites from their textual specs (as flags or API fields give them).
pub fn rewrites_from(
    urls: &[String],
    set_headers: &[String],
    drop_headers: &[String],
    host: Option<&str>,
) -> anyhow::Result<Rewrites> {
    let mut rewrites = Rewrites::default();
    for spec in urls {
        rewrites.add_url_rewrite(spec)?;
    }
    for spec in set_headers {
        rewrites.add_set_header(spec)?;
    }
    for name in drop_headers {
        rewrites.add_drop_header(name)?;
    }
    if let Some(host) = host {
        rewrites.set_host(host)?;
    }
    Ok(rewrites)
}

/// Where the requests come from.
#[derive(Clone, Debug)]
pub enum ReplaySource {
    Recording(String),
    Gor(PathBuf),
    Pcap { file: PathBuf, ports: Vec<u16> },
}

/// How to replay, whoever asks (the command line or the agent).
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub pace: Pace,
    pub loops: u32,
    pub exit_after: Option<Duration>,
    pub concurrency: usize,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub filters: Filters,
    pub rewrites: Rewrites,
}

/// A replay ready to start: what will be sent and when.
pub struct LoadedReplay {
    /// "recording R", "GoReplay file F", ...
    pub source_name: String,
    pub source: SourceStats,
    pub filtered_out: u64,
    /// Distinct requests (before loops).
    pub requests: usize,
    pub prepared: Vec<PreparedRequest>,
    pub plan: Vec<crate::replay::schedule::Planned>,
}

impl LoadedReplay {
    /// Planned time from the first send to the last.
    pub fn span(&self) -> Duration {
        self.plan.last().map(|p| p.due).unwrap_or_default()
    }

    /// Starts sending to `address` on the current runtime.
    pub fn start(self, address: SocketAddr, options: &ReplayOptions) -> Replay {
        Replay::start(
            self.prepared,
            self.plan,
            EngineConfig {
                target: address,
                connect_timeout: options.connect_timeout,
                response_timeout: options.timeout,
                concurrency: options.concurrency,
                exit_after: options.exit_after,
            },
        )
    }
}

/// Reads the source (blocking: stores and files), selects, rewrites and plans.
pub fn load_replay(
    source: &ReplaySource,
    store: &StoreArgs,
    options: &ReplayOptions,
) -> anyhow::Result<LoadedReplay> {
    if options.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    crate::replay::schedule::check(options.pace, options.loops)?;
    let (source_name, messages) = match source {
        ReplaySource::Gor(path) => {
            let (messages, _) = read_messages_file(path, &[], FileFormat::Gor)?;
            (format!("GoReplay file {}", path.display()), messages)
        }
        ReplaySource::Pcap { file, ports } => {
            let (messages, _) = read_messages_file(file, ports, FileFormat::Pcap)?;
            (format!("pcap {}", file.display()), messages)
        }
        ReplaySource::Recording(name) => {
            let mut store = store.open()?;
            let recording = store.get(name)?;
            if recording.state == crate::store::RecordingState::Recording {
                log::warn!("recording {name} is still running; replaying what it holds so far");
            }
            let mut stored = Vec::new();
            store.read(name, &mut |m| {
                stored.push(m);
                true
            })?;
            (format!("recording {name}"), from_stored(stored))
        }
    };
    let (requests, source_stats) = requests_from_messages(&messages);
    drop(messages);
    let (requests, filtered_out) = select(requests, &options.filters)?;
    if requests.is_empty() {
        bail!(
            "{source_name} has no requests to replay ({} complete requests, {} incomplete skipped, {} left out by --filter)",
            source_stats.requests,
            source_stats.incomplete_skipped,
            filtered_out
        );
    }
    let recorded: Vec<Recorded> = requests
        .iter()
        .map(|r| Recorded {
            conn: r.conn,
            ts_ns: r.ts_ns,
        })
        .collect();
    let plan = plan(&recorded, options.pace, options.loops)?;
    let prepared = prepare(&requests, &options.rewrites)?;
    Ok(LoadedReplay {
        source_name,
        source: source_stats,
        filtered_out,
        requests: requests.len(),
        prepared,
        plan,
    })
}

/// Runs `capture replay`.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let target: Target = args.target.parse()?;
    let options = ReplayOptions {
        pace: pace_of(args.speed, args.rate, args.max),
        loops: args.loops,
        exit_after: args.exit_after,
        concurrency: args.concurrency,
        connect_timeout: args.connect_timeout,
        timeout: args.timeout,
        filters: Filters::new(args.filters.clone()),
        rewrites: rewrites_of(&args)?,
    };
    let source = match (&args.name, &args.gor, &args.pcap) {
        (_, Some(gor), _) => ReplaySource::Gor(gor.clone()),
        (_, _, Some(file)) => ReplaySource::Pcap {
            file: file.clone(),
            ports: args.ports.clone(),
        },
        (Some(name), _, _) => ReplaySource::Recording(name.clone()),
        _ => bail!("name a recording, or give --gor FILE or --pcap FILE"),
    };
    let address = target.resolve().await?;
    let loaded = load_replay(&source, &args.store, &options)?;
    eprintln!(
        "replaying {} requests{} from {} to http://{}:{} ({address}); {} incomplete skipped, {} filtered out; planned span {}",
        loaded.requests,
        if args.loops > 1 {
            format!(" x {} loops", args.loops)
        } else {
            String::new()
        },
        loaded.source_name,
        target.host,
        target.port,
        loaded.source.incomplete_skipped,
        loaded.filtered_out,
        humantime::format_duration(Duration::from_millis(loaded.span().as_millis() as u64)),
    );
    let replay = loaded.start(address, &options);
    let interrupted = watch_progress(&replay, args.quiet).await?;
    let report = replay.finish().await;
    print_report(&report, args.json)?;
    if let Some(signal) = interrupted {
        bail!(
            "replay interrupted by {signal} after {} of {} requests",
            report.sent,
            report.planned
        );
    }
    if report.has_failures() {
        bail!(
            "{} of {} requests failed ({})",
            report.failed,
            report.planned,
            report
                .failures
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}

/// Shows progress until the replay ends; stops it on Ctrl-C/SIGTERM and says which.
async fn watch_progress(replay: &Replay, quiet: bool) -> anyhow::Result<Option<&'static str>> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(replay.with_tally(|t| t.planned));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    // Without a terminal (CI logs, a pod's log), a plain line every 10 s.
    let line_every = Duration::from_secs(10);
    let mut last_line = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut interrupted = None;
    while !replay.is_finished() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sigint.recv() => { interrupted = Some("SIGINT"); replay.stop("interrupted by SIGINT"); }
            _ = sigterm.recv() => { interrupted = Some("SIGTERM"); replay.stop("interrupted by SIGTERM"); }
        }
        let elapsed = replay.elapsed();
        if let Some(bar) = &bar {
            let (done, line) =
                replay.with_tally(|t| (t.completed + t.failures_total(), t.progress_line(elapsed)));
            bar.set_position(done);
            bar.set_message(line);
        } else if !quiet && last_line.elapsed() >= line_every {
            last_line = tokio::time::Instant::now();
            eprintln!("{}", replay.with_tally(|t| t.progress_line(elapsed)));
        }
        if interrupted.is_some() {
            break;
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(interrupted)
}

fn print_report(report: &ReplayReport, json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, report).context("writing the JSON summary")?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    out.flush().context("writing the summary")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_clear_errors() {
        let t: Target = "http://10.0.0.2:8080".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.2", 8080));
        let t: Target = "http://staging/".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("staging", 80));
        let t: Target = "http://[::1]:9000".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        for (bad, says) in [
            ("https://x", "https is not supported"),
            ("x:80", "http://HOST"),
            ("http://x/api", "without a path"),
            ("http://x:0", "1-65535"),
            ("http://x:99999", "1-65535"),
            ("http://", "http://HOST"),
        ] {
            let err = bad.parse::<Target>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn pace_follows_the_flags() {
        assert_eq!(pace_of(2.0, None, false), Pace::Original { speed: 2.0 });
        assert_eq!(
            pace_of(1.0, Some(50.0), false),
            Pace::Rate { per_second: 50.0 }
        );
        assert_eq!(pace_of(1.0, None, true), Pace::Max);
    }
}
