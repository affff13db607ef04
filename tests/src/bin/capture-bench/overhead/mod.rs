//! `overhead`: what recording costs the node next to the service it records, side by side
//! with tcpdump, in one table.
//!
//! Every row runs the same load (wrk with a unique URI per request against nginx across a
//! veth pair) with one tool on the server's veth, after one discarded warm-up run. A row
//! measures, over the load plus the time the tool takes to go idle after it: wrk's rate, the
//! tool's CPU time, its eBPF programs' run time, and the busy time of the whole node; then
//! stops the tool and compares the requests it captured with nginx's access log. A row that
//! fails is shown as failed and the next one runs; namespaces, nginx and the tools are
//! removed by their drop guards on every path, and the veth is checked clean after each row.

mod table;
mod tools;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tests::netns::Topology;
use tests::nginx::Nginx;
use tests::run_ok;

use crate::PORT;
use crate::measure::{
    BpfStats, clock_ticks, cpu_seconds, ebpf_run_ns, node_busy_ticks, wrk_requests_per_second,
};
pub use tools::Tool;
use tools::{Captured, Running};

/// What `cargo xtask bench overhead` can be told.
pub struct Options {
    /// How long wrk runs for each row.
    pub duration: Duration,
    /// How many times the whole table runs (each printed).
    pub repeat: u32,
    /// Rows to run besides the baseline; empty: all of them.
    pub rows: Vec<Tool>,
}

/// wrk's connections and threads: a modest keep-alive load that leaves room on 2 cores.
const WRK_THREADS: u32 = 1;
const WRK_CONNECTIONS: u32 = 16;

/// After the load, a tool counts as idle once it used at most this much CPU in
/// [`SETTLE_STEP`] (one clock tick is 10 ms); it is given at most [`SETTLE_MAX`].
const SETTLE_CPU_SECONDS: f64 = 0.015;
const SETTLE_STEP: Duration = Duration::from_millis(250);
const SETTLE_MAX: Duration = Duration::from_secs(15);

/// Time between the measured window and stopping the tool. tcpdump writes the packets of its
/// ring as the kernel hands over blocks, which after traffic stops is its 1 s timeout later;
/// SIGINT before that loses the last block (~100 requests here), an artifact of the stop, not
/// of the load. Every tool gets the same grace, outside what is measured.
const STOP_GRACE: Duration = Duration::from_millis(1500);

/// Runs the table `options.repeat` times after one warm-up run, printing each.
pub fn overhead(options: &Options) -> Result<()> {
    if options.duration < Duration::from_secs(1) || options.duration.subsec_nanos() != 0 {
        bail!("--duration must be whole seconds (wrk's -d), at least 1s");
    }
    let _stats = BpfStats::enable()?;
    let topo = Topology::new("ovhd")?;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("unique-uris.lua");
    std::fs::write(&script, tests::WRK_UNIQUE_URIS_SCRIPT)?;
    let load = Load {
        topo: &topo,
        script,
        duration: options.duration,
    };
    let context = table::Context::gather(&load.wrk_args("SERVER", "unique-uris.lua"))?;
    eprintln!("overhead: warm-up run (discarded)");
    run_row(&load, Tool::Baseline).context("the warm-up run failed")?;
    for run in 1..=options.repeat {
        let rows = run_table(&load, &options.rows)?;
        table::print(&context, run, options.repeat, &rows);
    }
    Ok(())
}

/// One row's result.
pub enum RowResult {
    Measured(Measured),
    /// The row cannot run with this build; why.
    Unavailable(String),
    /// The row failed; the error.
    Failed(String),
}

/// Every row once, in order. Only a failed baseline stops the table (the other rows are
/// relative to it).
fn run_table(load: &Load, only: &[Tool]) -> Result<Vec<(Tool, RowResult)>> {
    let mut rows = Vec::new();
    let chosen = Tool::ROWS
        .into_iter()
        .filter(|t| *t == Tool::Baseline || only.is_empty() || only.contains(t));
    for tool in chosen {
        eprintln!("overhead: {}", tool.label());
        let result = match tools::unavailable(tool)? {
            Some(why) => RowResult::Unavailable(why),
            None => match run_row(load, tool) {
                Ok(measured) => RowResult::Measured(measured),
                Err(e) if tool == Tool::Baseline => return Err(e.context("the baseline failed")),
                Err(e) => {
                    eprintln!("overhead: {} failed: {e:#}", tool.label());
                    RowResult::Failed(format!("{e:#}"))
                }
            },
        };
        let left = Topology::attachments(&load.topo.server_ns, &load.topo.server_if)?.leftovers();
        if !left.is_empty() {
            bail!("{} left hooks on the veth: {left:?}", tool.label());
        }
        rows.push((tool, result));
    }
    Ok(rows)
}

/// The same load for every row.
struct Load<'a> {
    topo: &'a Topology,
    script: PathBuf,
    duration: Duration,
}

impl Load<'_> {
    /// wrk's arguments against `server`, with the script at `script`.
    fn wrk_args(&self, server: &str, script: &str) -> Vec<String> {
        vec![
            format!("-t{WRK_THREADS}"),
            format!("-c{WRK_CONNECTIONS}"),
            format!("-d{}s", self.duration.as_secs()),
            "-s".into(),
            script.to_string(),
            format!("http://{server}:{PORT}/"),
        ]
    }

    /// Runs wrk in the client namespace; its output.
    fn run(&self) -> Result<String> {
        let script = self.script.to_string_lossy();
        let args = self.wrk_args(&self.topo.server_ip, &script);
        let out = run_ok(self.topo.client("wrk").args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Counters read before and after the load.
struct Snapshot {
    node_ticks: u64,
    tool_seconds: Option<f64>,
    ebpf_ns: Option<u64>,
}

impl Snapshot {
    fn take(running: &Running) -> Result<Self> {
        let pid = running.pid();
        Ok(Snapshot {
            node_ticks: node_busy_ticks()?,
            tool_seconds: pid.map(cpu_seconds).transpose()?,
            ebpf_ns: match pid {
                Some(pid) if running.has_ebpf() => Some(ebpf_run_ns(pid)?),
                _ => None,
            },
        })
    }
}

/// A row's figures; "per request" is per request in nginx's access log (served in the row).
pub struct Measured {
    pub wrk_rps: f64,
    /// wrk's error lines (socket errors, non-2xx), when it printed any.
    pub wrk_errors: Vec<String>,
    pub tool_cpu_us: Option<f64>,
    pub ebpf_us: Option<f64>,
    /// Busy time of all CPUs per request (not yet minus the baseline's).
    pub node_us: f64,
    pub capture: Comparison,
    pub drops: Option<BTreeMap<String, u64>>,
}

/// Runs the load once with `tool` on the server's veth, next to a fresh nginx.
fn run_row(load: &Load, tool: Tool) -> Result<Measured> {
    let nginx = Nginx::start(&load.topo.server_ns, &[PORT])?;
    let dir = tempfile::tempdir()?;
    let running = tool.start(load.topo, dir.path())?;
    let before = Snapshot::take(&running)?;
    let wrk = load.run()?;
    settle(&running)?;
    let after = Snapshot::take(&running)?;
    if !matches!(running, Running::Nothing) {
        std::thread::sleep(STOP_GRACE);
    }
    let outcome = running.stop()?;
    let logged: Vec<String> = nginx.access_log()?.into_iter().map(|e| e.uri).collect();
    let requests = logged.len() as u64;
    if requests == 0 {
        bail!("nginx logged no requests; wrk said:\n{wrk}");
    }
    let per_request = |seconds: f64| seconds * 1e6 / requests as f64;
    let delta = |b: Option<f64>, a: Option<f64>| Some(a? - b?);
    let node_seconds = (after.node_ticks - before.node_ticks) as f64 / clock_ticks();
    Ok(Measured {
        wrk_rps: wrk_requests_per_second(&wrk),
        wrk_errors: wrk_errors(&wrk),
        tool_cpu_us: delta(before.tool_seconds, after.tool_seconds).map(per_request),
        ebpf_us: delta(
            before.ebpf_ns.map(|n| n as f64 / 1e9),
            after.ebpf_ns.map(|n| n as f64 / 1e9),
        )
        .map(per_request),
        node_us: per_request(node_seconds),
        capture: Comparison::new(outcome.captured, &logged),
        drops: outcome.drops,
    })
}

/// Waits until the tool has worked off what the load left it (ring, framing, store queue),
/// so its CPU time and the node's include that work.
fn settle(running: &Running) -> Result<()> {
    let Some(pid) = running.pid() else {
        return Ok(());
    };
    let started = Instant::now();
    let mut last = cpu_seconds(pid)?;
    while started.elapsed() < SETTLE_MAX {
        std::thread::sleep(SETTLE_STEP);
        let now = cpu_seconds(pid)?;
        if now - last <= SETTLE_CPU_SECONDS {
            return Ok(());
        }
        last = now;
    }
    eprintln!(
        "overhead: the tool was still busy {} s after the load",
        SETTLE_MAX.as_secs()
    );
    Ok(())
}

/// wrk's lines about failed requests.
fn wrk_errors(out: &str) -> Vec<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Socket errors:") || l.starts_with("Non-2xx or 3xx"))
        .map(str::to_string)
        .collect()
}

/// How many missed URIs a row's note names.
const MISSED_SAMPLE: usize = 3;

/// What a tool captured next to what nginx logged.
pub enum Comparison {
    /// No tool.
    Nothing,
    /// The tool sees packets, not requests.
    PacketsOnly,
    /// Requests compared by URI, as multisets.
    Requests {
        /// Captured requests whose URI nginx logged (each logged request matched once).
        matched: u64,
        /// Captured requests nginx did not log.
        extra: u64,
        /// Requests nginx logged.
        logged: u64,
        /// The first few logged URIs not captured.
        missed_sample: Vec<String>,
    },
}

impl Comparison {
    fn new(captured: Captured, logged: &[String]) -> Self {
        let uris = match captured {
            Captured::Nothing => return Comparison::Nothing,
            Captured::PacketsOnly => return Comparison::PacketsOnly,
            Captured::Uris(uris) => uris,
        };
        let mut want = tests::multiset(logged.iter().map(String::as_str));
        let mut matched = 0u64;
        for uri in &uris {
            if let Some(n) = want.get_mut(uri.as_str()).filter(|n| **n > 0) {
                *n -= 1;
                matched += 1;
            }
        }
        // In log order, so a sample shows whether the misses bunch at the start or the end.
        let missed_sample = logged
            .iter()
            .filter(|uri| match want.get_mut(uri.as_str()) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            })
            .take(MISSED_SAMPLE)
            .cloned()
            .collect();
        Comparison::Requests {
            matched,
            extra: uris.len() as u64 - matched,
            logged: logged.len() as u64,
            missed_sample,
        }
    }
}
