//! The `capture` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use capture_user::cmd::agent::{self, AgentArgs};
use capture_user::cmd::messages::{self, MessagesArgs};
use capture_user::cmd::packets::{self, PacketsArgs};
use capture_user::cmd::record::{self, ImportArgs, RecordArgs};
use capture_user::cmd::recordings::{self, ExportArgs, InspectArgs, RecordingsCommand};
use capture_user::cmd::replay::{self, ReplayArgs};

/// Record live HTTP traffic on this node with eBPF, and replay it later.
///
/// Capturing needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON). Start with
/// `capture packets --iface eth0 --port 80` to check that the hooks see your traffic.
#[derive(Debug, Parser)]
#[command(name = "capture", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print every captured TCP packet on the given ports, one line each, then the counters.
    ///
    /// Example: capture packets --iface eth0 --port 8080 --duration 10s
    Packets(PacketsArgs),
    /// Print HTTP messages (one line each), captured live or read from a pcap/pcapng file.
    ///
    /// Examples: capture messages --iface eth0 --port 8080;
    /// capture messages --pcap traffic.pcapng --port 80
    Messages(MessagesArgs),
    /// Record live HTTP messages into a named recording until Ctrl-C, SIGTERM or --duration.
    ///
    /// Example: capture record --iface eth0 --port 8080 --name checkout-peak --duration 10m
    Record(RecordArgs),
    /// Store a pcap/pcapng (or GoReplay) file's messages as a named recording.
    ///
    /// Example: capture import traffic.pcap --name from-prod --port 80
    Import(ImportArgs),
    /// List, show or delete recordings.
    #[command(subcommand)]
    Recordings(RecordingsCommand),
    /// Print a recording's messages (decoded, one line each).
    Inspect(InspectArgs),
    /// Write a recording in GoReplay's file format.
    Export(ExportArgs),
    /// Send a recording's requests to a target: recorded timing (scaled by --speed), a fixed
    /// --rate, or --max; N --copies at once or a --sample; filters and rewrites; a summary with
    /// statuses, latency and mismatches.
    ///
    /// Requests go byte for byte as recorded unless a rewrite says otherwise, each recorded
    /// connection over a connection of its own. Exits non-zero when any request failed.
    ///
    /// Examples: capture replay checkout-peak --target http://staging:8080 --speed 2;
    /// capture replay checkout-peak --target http://10.0.0.7 --rate 200 --exit-after 5m
    /// --filter method=GET --set-header 'X-Replay: 1';
    /// capture replay checkout-peak --target http://staging:8080 --copies 3 --copy-header X-Copy
    /// (three times the traffic, same shape); capture replay checkout-peak --target
    /// http://small-env:8080 --sample 10% (a stable tenth of it)
    Replay(Box<ReplayArgs>),
    /// Serve the HTTP control API a load-testing platform drives: start/stop recordings,
    /// start/poll/stop replays, /metrics (Prometheus), /healthz. One agent per node.
    ///
    /// Beyond loopback it needs a token (--token-file) and TLS (--tls-cert, --tls-key), or
    /// --insecure-plain-http to send the token in clear; token and certificate files are read
    /// again when they change. No client can hold it: a head must arrive within
    /// --header-read-timeout, an idle connection closes after --idle-timeout, a body within
    /// --body-read-timeout (408), store calls answer 503 after --handling-deadline, and past
    /// --max-connections new connections are closed at once; /metrics counts each.
    ///
    /// Example: capture agent --listen 0.0.0.0:9300 --token-file /etc/capture/token
    /// --tls-cert /etc/capture-tls/tls.crt --tls-key /etc/capture-tls/tls.key --kafka kafka:9092
    Agent(Box<AgentArgs>),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let default_level = match &cli.command {
        Command::Packets(args) => log_level(args.capture.ebpf_log),
        Command::Record(args) => log_level(args.capture.ebpf_log),
        Command::Messages(args) => log_level(args.capture.ebpf_log),
        _ => "warn",
    };
    // librdkafka reports every reconnect attempt as an error; the store reports what matters.
    let default_filter = format!("{default_level},librdkafka=off,rdkafka::client=off");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_filter))
        .format_timestamp_millis()
        .init();

    let worker_threads = match &cli.command {
        Command::Replay(args) => replay::send_threads(args.send_threads),
        _ => 2,
    };
    // The agent's replays send on threads of their own, apart from the API's.
    let replay_runtime = match &cli.command {
        Command::Agent(args) => match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(replay::send_threads(args.send_threads))
            .thread_name("replay-send")
            .enable_all()
            .build()
        {
            Ok(runtime) => Some(runtime),
            Err(e) => {
                eprintln!("error: starting the replay threads: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Packets(args) => packets::run(args).await,
            Command::Messages(args) => messages::run(args).await,
            Command::Record(args) => record::run_record(args).await,
            Command::Import(args) => record::run_import(args),
            Command::Recordings(cmd) => recordings::run_recordings(cmd),
            Command::Inspect(args) => recordings::run_inspect(args),
            Command::Export(args) => recordings::run_export(args),
            Command::Replay(args) => replay::run(*args).await,
            Command::Agent(args) => {
                let replays = replay_runtime.as_ref().map(|r| r.handle().clone());
                agent::run(*args, replays).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints help and version as clap does, and argument errors as one line.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            // clap's message up to the usage block, folded onto one line.
            let rendered = e.render().to_string();
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            eprintln!("{} (see `capture --help`)", message.join(" "));
            ExitCode::from(2)
        }
    }
}

fn log_level(ebpf: capture_user::live::EbpfLogLevel) -> &'static str {
    use capture_user::live::EbpfLogLevel::*;
    match ebpf {
        Off | Error | Warn => "warn",
        Info => "info",
        Debug => "debug",
        Trace => "trace",
    }
}
