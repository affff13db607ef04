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
//! - overhead: what recording costs the node next to nginx under wrk, row by row (no
//!   capture, `packets`, `messages`, `record` with TC, XDP and `--threads 2`, tcpdump), as a
//!   Markdown table for the README; `--repeat N` prints N tables (about 2 minutes each).
//! - tls: `--tls` (server side) under wrk over HTTPS next to clear-text capture of the same
//!   load over HTTP, three paired rounds, then tls-idle (not part of `all`).
//! - tls-idle: what an idle `--tls` costs processes without TLS (dd, loopback TCP), with the
//!   `sock` tracepoints and with the socket syscall ones (not part of `all`).

mod drain;
mod ebpf;
mod measure;
mod overhead;
mod replay;
mod store;
mod tls;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, ValueEnum};

/// The port nginx listens on in every benchmark.
const PORT: u16 = 8080;

/// Benchmarks of the capture workspace, printed for the notes (run by `cargo xtask bench`).
#[derive(Debug, Parser)]
#[command(name = "capture-bench")]
struct Cli {
    /// Which benchmark (`all` runs every one).
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
    /// overhead: how many times to run the whole table (each is printed).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// overhead: how long wrk runs for each row (whole seconds).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// overhead: only these rows (comma-separated; the baseline always runs), e.g.
    /// `record,tcpdump` while working on one path.
    #[arg(long, value_enum, value_delimiter = ',')]
    rows: Vec<overhead::Tool>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Which {
    All,
    Ebpf,
    Drain,
    Store,
    /// The embedded store alone (no broker needed).
    StoreEmbedded,
    Replay,
    /// What `replay --diff` costs: rate and peak RSS with and without it, paired.
    ReplayDiff,
    /// An HTTP/2 recording of h2load's load replayed at `--max`, next to h2load (three
    /// paired rounds).
    ReplayH2,
    /// A 200k-request GoReplay file at `--max --connections 16` next to wrk -c16 (three
    /// paired rounds).
    ReplayPool,
    Overhead,
    /// `--tls` next to clear-text capture, three paired rounds, then `tls-idle`.
    Tls,
    /// What an idle `--tls` costs processes without TLS (dd, loopback TCP), with the `sock`
    /// tracepoints and with the syscall ones, three paired rounds.
    TlsIdle,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let overhead = || {
        overhead::overhead(&overhead::Options {
            duration: cli.duration,
            repeat: cli.repeat,
            rows: cli.rows.clone(),
        })
    };
    match cli.which {
        Which::All => {
            ebpf::ebpf_cost()?;
            drain::drain_rate()?;
            store::store_rates()?;
            replay::replay_rates()?;
            replay::diff_cost()?;
            overhead()
        }
        Which::Ebpf => ebpf::ebpf_cost(),
        Which::Drain => drain::drain_rate(),
        Which::Store => store::store_rates(),
        Which::StoreEmbedded => store::embedded_store_rates(),
        Which::Replay => replay::replay_rates(),
        Which::ReplayDiff => replay::diff_cost(),
        Which::ReplayH2 => replay::h2_rates(),
        Which::ReplayPool => replay::pool_rates(),
        Which::Overhead => overhead(),
        Which::Tls => tls::tls_cost(),
        Which::TlsIdle => tls::idle_cost(),
    }
}
