//! `capture replay`: send a recording's requests (or a GoReplay/pcap file's) to a target, with
//! the recorded timing scaled, a fixed rate, or as fast as possible, as many copies at once as
//! asked, a sample, or one shard of several; the source is read as the replay goes (memory does
//! not grow with its size); a progress line while it runs and a summary at the end.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::cmd::store_args::StoreArgs;
use crate::replay::engine::{Endpoint, Replay};
use crate::replay::html::report_page;
use crate::replay::load::{
    DiffOptions, LoadedReplay, ReplayOptions, ReplaySource, diff_options, endpoints, load_replay,
    pace_of, rewrites_from,
};
use crate::replay::report::ReplayReport;
use crate::replay::rewrite::{CopyHeader, Rewrites};
use crate::replay::sample::SamplePercent;
use crate::replay::select::{FilterRule, Filters};
use crate::replay::shard::Shard;
use crate::replay::source::Lookahead;
use crate::replay::target::Target;
use crate::replay::tls::TlsTrust;
use crate::units::{parse_port, parse_rfc3339};

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

    /// Where to send: http://HOST[:PORT] or https://HOST[:PORT] (TLS: needs --ca-file or
    /// --insecure). Always explicit; nothing is sent anywhere else.
    #[arg(long, value_name = "URL")]
    pub target: String,

    /// For an https target (or baseline): trust the CA certificates in this PEM file, and
    /// only them (this build has no platform roots).
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub ca_file: Option<PathBuf>,

    /// For an https target (or baseline): do not verify its certificate (the session is
    /// encrypted but not authenticated). The starting line and the summary say so.
    #[arg(long)]
    pub insecure: bool,

    /// Recorded inter-arrival times divided by this (2 = twice as fast, 0.5 = half speed).
    #[arg(long, value_name = "X", default_value_t = ReplayOptions::DEFAULT_SPEED, conflicts_with_all = ["rate", "max"])]
    pub speed: f64,

    /// A fixed rate instead of the recorded timing, in requests per second.
    #[arg(long, value_name = "N", conflicts_with = "max")]
    pub rate: Option<f64>,

    /// As fast as the connections allow (still one request at a time per connection).
    #[arg(long)]
    pub max: bool,

    /// Replay the whole set this many times, one pass after the other.
    #[arg(long = "loop", value_name = "N", default_value_t = ReplayOptions::default().loops)]
    pub loops: u32,

    /// Send N copies of the traffic at once, each on connections of its own (every recorded
    /// connection becomes N). The shape over time is kept: at --speed 1 the target sees N
    /// times the recorded rate with the same curve; with --rate, each copy runs at that rate.
    /// Combines with --loop (each copy loops), --sample, filters and rewrites. Up to 1000.
    #[arg(long, value_name = "N", default_value_t = ReplayOptions::default().copies)]
    pub copies: u32,

    /// Add `NAME: <copy number>` (1 to N) to every request, so the target or its logs can tell
    /// the copies apart, e.g. --copy-header X-Copy. A recorded header of that name is replaced.
    #[arg(long, value_name = "NAME", value_parser = CopyHeader::new)]
    pub copy_header: Option<CopyHeader>,

    /// Replay a stable P % of the traffic (e.g. 10%), the same subset every time for the same
    /// P (a fixed hash of recorded ids; a larger P keeps a superset). The unit is the recorded
    /// connection, kept or left out whole, when no connection carries more than 1 % of the
    /// requests (many short connections); otherwise (a few long connections, as from wrk or a
    /// proxy, or a GoReplay file) the request. The summary says what was kept.
    #[arg(long, value_name = "P%")]
    pub sample: Option<SamplePercent>,

    /// Send only part I of N of the recording (e.g. 1/2 here, 2/2 on another node): each
    /// recorded connection goes whole to one part (GoReplay files: each request), the parts
    /// together are the recording exactly once, and every part keeps the recorded timing, so
    /// N replays started together (--start-at) send the recorded traffic between them.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,

    /// Start the schedule at this time (RFC 3339, e.g. 2026-12-06T12:00:00Z) instead of at
    /// once, so replays on several nodes start together; the nodes' clocks must agree (NTP).
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub start_at: Option<std::time::SystemTime>,

    /// Stop sending after this long (e.g. 30s, 5m), whatever is left; requests already sent
    /// get up to 2 s more for their answers. Ctrl-C does the same.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub exit_after: Option<Duration>,

    /// Most connections open at once; each replays one recorded connection.
    #[arg(long, value_name = "N", default_value_t = ReplayOptions::default().concurrency)]
    pub concurrency: usize,

    /// For requests without a recorded connection (--gor): keep-alive connections they share,
    /// per copy (GoReplay files record no connections; one connection per request would run
    /// the client out of ports).
    #[arg(long, value_name = "N", requires = "gor")]
    pub connections: Option<usize>,

    /// Threads that write requests and read answers. Default: half the CPUs, at least one:
    /// the target often runs on the same node, and reading the source and pacing have
    /// threads of their own (on 2 CPUs, one sending thread leaves a whole CPU to the target
    /// and keeps `--max` about 20 % cheaper per request than two).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub send_threads: Option<u16>,

    /// How far (recorded time) the source is read ahead of what is sent: requests wait this
    /// long for their recorded responses and for requests stored after them but captured
    /// before. Memory holds at most --look-ahead-requests requests, whatever the source's size.
    #[arg(long, value_name = "DURATION", default_value_t = Lookahead::default().time.into())]
    pub look_ahead: humantime::Duration,

    /// Most requests read ahead (see --look-ahead), whichever bound comes first.
    #[arg(long, value_name = "N", default_value_t = Lookahead::default().requests)]
    pub look_ahead_requests: usize,

    /// How long to wait for a connection to the target.
    #[arg(long, value_name = "DURATION", default_value_t = ReplayOptions::default().connect_timeout.into())]
    pub connect_timeout: humantime::Duration,

    /// How long to wait for a complete response, from the first byte sent.
    #[arg(long, value_name = "DURATION", default_value_t = ReplayOptions::default().timeout.into())]
    pub timeout: humantime::Duration,

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

    /// Set the Host header (default: as recorded); to an https target, also the server name
    /// asked for (SNI) and verified, without its port.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub host: Option<String>,

    /// Compare each answer with the recorded answer of the same request: the status, the
    /// headers (without those that differ by nature: Date, Set-Cookie values, ETag,
    /// Last-Modified, Age, Expires, request and trace ids, Server-Timing, framing), and the
    /// body decoded (chunked, gzip, deflate, br), JSON field by field ($.items[3].price),
    /// anything else by its first differing byte. The summary says, per endpoint (method and
    /// path with ids as {id}), how many answers were identical and which fields differed,
    /// with example request ids.
    #[arg(long)]
    pub diff: bool,

    /// Also send every request to URL, a target running the recorded version (implies
    /// --diff): fields that differ there as well (times, random ids) are reported as noise,
    /// and only what differs on --target alone as a regression.
    #[arg(long, value_name = "URL")]
    pub baseline: Option<String>,

    /// With --diff: a header that may differ (repeatable), on top of the usual noise.
    #[arg(long = "diff-ignore-header", value_name = "NAME")]
    pub diff_ignore_headers: Vec<String>,

    /// With --diff: a field that may differ (repeatable): 'json:$.meta.generated_at' (and
    /// everything under it; [*] for any index, .* for any key) or 'header:NAME'.
    #[arg(long = "diff-ignore", value_name = "FIELD")]
    pub diff_ignore: Vec<String>,

    /// With --diff: name endpoints by a path pattern instead of collapsing ids (repeatable,
    /// first match wins): '/api/items/*', 'GET /users/{user}/**' (* or {name}: one segment,
    /// **: the rest).
    #[arg(long = "endpoint-pattern", value_name = "[METHOD] PATTERN")]
    pub endpoint_patterns: Vec<String>,

    /// With --diff: write one JSON line per request that differs (ids, endpoint,
    /// differences; with --baseline also the baseline's and which are regressions).
    #[arg(long, value_name = "FILE.jsonl")]
    pub diff_out: Option<PathBuf>,

    /// Write a self-contained HTML report (no network fetches) at the end: throughput,
    /// latency over time, status mix and, with --diff, the differences per endpoint with
    /// examples side by side.
    #[arg(long, value_name = "FILE.html")]
    pub report: Option<PathBuf>,

    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    /// No progress display.
    #[arg(long)]
    pub quiet: bool,

    #[command(flatten)]
    pub store: StoreArgs,
}

fn rewrites_of(args: &ReplayArgs) -> anyhow::Result<Rewrites> {
    rewrites_from(
        &args.rewrite_urls,
        &args.set_headers,
        &args.drop_headers,
        args.host.as_deref(),
    )
}

/// The `--diff` options, when comparing was asked for (`baseline`: `--baseline`, resolved).
fn diff_of(args: &ReplayArgs, baseline: Option<Endpoint>) -> anyhow::Result<Option<DiffOptions>> {
    let diffing = args.diff || args.baseline.is_some();
    let needs_diff = [
        (!args.diff_ignore_headers.is_empty(), "--diff-ignore-header"),
        (!args.diff_ignore.is_empty(), "--diff-ignore"),
        (!args.endpoint_patterns.is_empty(), "--endpoint-pattern"),
        (args.diff_out.is_some(), "--diff-out"),
    ];
    if let Some((_, flag)) = needs_diff.iter().find(|(given, _)| *given && !diffing) {
        bail!("{flag} compares answers: add --diff (or --baseline URL)");
    }
    if !diffing {
        return Ok(None);
    }
    Ok(Some(diff_options(
        &args.diff_ignore_headers,
        &args.diff_ignore,
        &args.endpoint_patterns,
        baseline,
        args.diff_out.clone(),
    )?))
}

/// The threads that send a replay's requests (`--send-threads` of `replay` and `agent`, else
/// half the CPUs).
pub fn send_threads(asked: Option<u16>) -> usize {
    asked.map_or_else(
        || {
            let cpus = std::thread::available_parallelism().map_or(2, usize::from);
            (cpus / 2).max(1)
        },
        usize::from,
    )
}

/// Runs `capture replay`.
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let target: Target = args.target.parse()?;
    let baseline_target: Option<Target> = match &args.baseline {
        Some(url) => Some(url.parse().context("--baseline")?),
        None => None,
    };
    let tls = TlsTrust {
        ca_file: args.ca_file.clone(),
        insecure: args.insecure,
        server_name: args.host.clone(),
    };
    let (endpoint, baseline) = endpoints(&target, baseline_target.as_ref(), &tls).await?;
    let diff = diff_of(&args, baseline)?;
    let options = ReplayOptions {
        pace: pace_of(args.speed, args.rate, args.max),
        loops: args.loops,
        copies: args.copies,
        copy_header: args.copy_header.clone(),
        sample: args.sample,
        shard: args.shard.unwrap_or(Shard::WHOLE),
        start_at: args.start_at,
        exit_after: args.exit_after,
        concurrency: args.concurrency,
        connections: args
            .connections
            .unwrap_or(ReplayOptions::default().connections),
        lookahead: Lookahead {
            time: args.look_ahead.into(),
            requests: args.look_ahead_requests,
        },
        connect_timeout: args.connect_timeout.into(),
        timeout: args.timeout.into(),
        filters: Filters::new(args.filters.clone()),
        rewrites: rewrites_of(&args)?,
        diff,
        tls,
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
    let loaded = load_replay(&source, &args.store.to_config()?, &options)?;
    eprintln!("{}", starting_line(&loaded, &target, &endpoint, &options));
    let loaded_name = loaded.source_name.clone();
    let replay = loaded.start(endpoint, &options)?;
    let interrupted = watch_progress(&replay, args.quiet).await?;
    let report = replay.finish().await;
    print_report(&report, args.json)?;
    if let Some(path) = &args.report {
        write_report_page(path, &args, &loaded_name, &report)?;
    }
    if let Some(e) = &report.diff_out_error {
        bail!("--diff-out: {e}");
    }
    if let Some(signal) = interrupted {
        bail!(
            "replay interrupted by {signal} after {} of {} requests",
            report.sent,
            report.planned
        );
    }
    if let Some(source) = &report.source {
        if let Some(e) = &source.read_error {
            bail!(
                "reading {} failed after {} requests: {e}",
                source.name,
                report.planned
            );
        }
        if report.planned == 0 {
            bail!(
                "{} has no requests to replay ({})",
                source.name,
                source.to_text()
            );
        }
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

/// `--report FILE.html`: the summary as a page.
fn write_report_page(
    path: &std::path::Path,
    args: &ReplayArgs,
    source_name: &str,
    report: &ReplayReport,
) -> anyhow::Result<()> {
    let page = report_page(
        &format!("replay of {source_name}"),
        &args.target,
        args.baseline.as_deref(),
        report,
    );
    std::fs::write(path, page).with_context(|| format!("writing the report {}", path.display()))?;
    eprintln!("report written to {}", path.display());
    Ok(())
}

/// "replaying recording R x 2 loops x 3 copies to ...": what is about to go (and, to an https
/// target, how its certificate is checked: loudly when it is not).
fn starting_line(
    loaded: &LoadedReplay,
    target: &Target,
    endpoint: &Endpoint,
    options: &ReplayOptions,
) -> String {
    let times = |n: u32, what: &str| {
        if n > 1 {
            format!(" x {n} {what}")
        } else {
            String::new()
        }
    };
    let size = loaded.source_size.map_or(String::new(), |n| {
        format!(" ({n} {})", loaded.source_size_unit)
    });
    let shard = if options.shard.count > 1 {
        format!(", shard {}", options.shard)
    } else {
        String::new()
    };
    let start = options.start_at.map_or(String::new(), |at| {
        format!(", starting at {}", humantime::format_rfc3339_millis(at))
    });
    let tls = endpoint.tls.as_ref().map_or(String::new(), |tls| {
        format!("; {}", tls.summary().to_text())
    });
    format!(
        "replaying {}{size}{}{} to {target} ({}){shard}{start}; read as it goes, {} or {} requests ahead at most{tls}",
        loaded.source_name,
        times(options.loops, "loops"),
        times(options.copies, "copies"),
        endpoint.address,
        humantime::format_duration(options.lookahead.time),
        options.lookahead.requests,
    )
}

/// Shows progress until the replay ends; stops it on Ctrl-C/SIGTERM and says which.
async fn watch_progress(replay: &Replay, quiet: bool) -> anyhow::Result<Option<&'static str>> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // The bar is the position in the source (messages of a recording), the line what was sent.
    let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(replay.position().1.unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] read {pos}/{len} {msg}",
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
            _ = replay.over() => {}
            _ = sigint.recv() => { interrupted = Some("SIGINT"); replay.stop("interrupted by SIGINT"); }
            _ = sigterm.recv() => { interrupted = Some("SIGTERM"); replay.stop("interrupted by SIGTERM"); }
        }
        let elapsed = replay.elapsed();
        if let Some(bar) = &bar {
            let (read, total) = replay.position();
            if let Some(total) = total {
                bar.set_length(total.max(read));
            }
            bar.set_position(read);
            bar.set_message(replay.with_tally(|t| t.progress_line(elapsed)));
        } else if !quiet && last_line.elapsed() >= line_every {
            last_line = tokio::time::Instant::now();
            let (read, total) = replay.position();
            let of = total.map_or(String::new(), |t| format!(" of {t}"));
            eprintln!(
                "read {read}{of}; {}",
                replay.with_tally(|t| t.progress_line(elapsed))
            );
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
