//! The overhead table as Markdown, to paste into the README as is: a heading, the machine and
//! the load, a one-line legend, the table, and notes for what a cell cannot hold.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::Result;
use tests::capture_bin;

use super::tools::Tool;
use super::{Comparison, Measured, RowResult};

/// What the table was measured on.
pub struct Context {
    date: String,
    kernel: String,
    cpus: usize,
    versions: String,
    wrk: String,
}

impl Context {
    /// Reads the date, the kernel and the tools' versions; `wrk` is wrk's argument list.
    pub fn gather(wrk: &[String]) -> Result<Self> {
        let capture = capture_bin().to_string_lossy().into_owned();
        let versions = [
            ("capture", capture.as_str(), "--version"),
            ("tcpdump", "tcpdump", "--version"),
            ("nginx", "nginx", "-v"),
            ("wrk", "wrk", "-v"),
        ]
        .map(|(name, program, arg)| format!("{name} {}", version(program, arg)))
        .join(", ");
        Ok(Context {
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")?
                .trim()
                .to_string(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            versions,
            wrk: wrk.join(" "),
        })
    }
}

/// The first line a command prints (on stdout or stderr, as nginx prints its version).
fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            text.lines().next().unwrap_or("?").trim().to_string()
        })
        .unwrap_or_else(|_| "?".into())
}

/// The version in `program ARG`'s first line: its first word with a digit, after any `/`
/// (`nginx version: nginx/1.22.1`, `wrk debian/4.1.0-3+b2 [epoll] ...`).
fn version(program: &str, arg: &str) -> String {
    let line = first_line(Command::new(program).arg(arg));
    line.split_whitespace()
        .find(|w| w.chars().any(|c| c.is_ascii_digit()))
        .map(|w| w.rsplit('/').next().unwrap_or(w).to_string())
        .unwrap_or_else(|| "?".into())
}

/// Prints run `run` of `of`.
pub fn print(context: &Context, run: u32, of: u32, rows: &[(Tool, RowResult)]) {
    println!();
    println!("### Recording overhead, run {run} of {of}");
    println!();
    println!(
        "{}; Linux {}, {} CPUs; {}.",
        context.date, context.kernel, context.cpus, context.versions
    );
    println!(
        "Load: `wrk {}` with a unique URI per request (every third a POST with a body of up to \
         2 KB, which nginx proxies to a local sink that logs nothing) against nginx (1 \
         worker) across a veth pair between two namespaces; each tool on the server's veth, in the server \
         namespace; a fresh nginx per row; one warm-up run discarded.",
        context.wrk
    );
    println!(
        "Legend: captured = requests the tool captured whose URI nginx logged (as multisets) \
         / requests nginx logged, rounded down; req/s = wrk's rate / the baseline's; tool CPU \
         = its user+system time, eBPF = run_time_ns of its programs, extra node CPU = busy \
         time of all CPUs minus the baseline's, each per logged request; drops = the tool's \
         own loss counters."
    );
    println!();
    println!(
        "| run | captured/access-log | req/s vs baseline | tool CPU µs/req | eBPF µs/req | extra node CPU µs/req | drops |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|");
    let baseline = rows.iter().find_map(|(tool, result)| match result {
        RowResult::Measured(m) if *tool == Tool::Baseline => Some(m),
        _ => None,
    });
    let mut notes = Vec::new();
    for (tool, result) in rows {
        let cells = match result {
            RowResult::Measured(m) => {
                notes.extend(row_notes(*tool, m));
                measured_cells(*tool, m, baseline)
            }
            RowResult::Unavailable(why) => vec![why.clone()],
            RowResult::Failed(error) => {
                notes.push(format!("{} failed: {}", tool.label(), one_line(error)));
                vec!["failed (see notes)".into()]
            }
        };
        let mut cells = cells;
        cells.resize(6, String::new());
        println!("| {} | {} |", tool.label(), cells.join(" | "));
    }
    if !notes.is_empty() {
        println!();
        for note in notes {
            println!("- {note}");
        }
    }
}

/// The six figures of a measured row.
fn measured_cells(tool: Tool, m: &Measured, baseline: Option<&Measured>) -> Vec<String> {
    let dash = || "—".to_string();
    let is_baseline = tool == Tool::Baseline;
    let rate = match baseline {
        Some(_) if is_baseline => format!("1.00 ({:.0} req/s)", m.wrk_rps),
        Some(b) => format!("{:.2}", m.wrk_rps / b.wrk_rps.max(1.0)),
        None => format!("? ({:.0} req/s)", m.wrk_rps),
    };
    let node = match baseline {
        Some(_) if is_baseline => format!("0 (node {:.1})", m.node_us),
        Some(b) => format!("{:+.1}", m.node_us - b.node_us),
        None => format!("? (node {:.1})", m.node_us),
    };
    let ebpf = match (m.ebpf_us, tool) {
        (Some(us), _) => format!("{us:.2}"),
        (None, Tool::Tcpdump) => "n/a (cBPF)".into(),
        (None, _) => dash(),
    };
    vec![
        captured_cell(&m.capture),
        rate,
        m.tool_cpu_us.map_or_else(dash, |us| format!("{us:.2}")),
        ebpf,
        node,
        m.drops.as_ref().map_or_else(dash, drops_cell),
    ]
}

fn captured_cell(comparison: &Comparison) -> String {
    match comparison {
        Comparison::Nothing => "—".into(),
        Comparison::PacketsOnly => "(packets only)".into(),
        Comparison::Requests {
            matched, logged, ..
        } => {
            // Rounded down, so 1.0000 means every logged request was captured.
            let ratio = (*matched as f64 / *logged as f64 * 1e4).floor() / 1e4;
            format!("{ratio:.4}")
        }
    }
}

/// `0`, or the total and each reason.
fn drops_cell(drops: &BTreeMap<String, u64>) -> String {
    let total: u64 = drops.values().sum();
    if total == 0 {
        return "0".into();
    }
    let each: Vec<String> = drops.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!("{total} ({})", each.join(", "))
}

/// What a row's cells leave out: missed and unexpected requests, what XDP cannot see, wrk's
/// errors.
fn row_notes(tool: Tool, m: &Measured) -> Vec<String> {
    let mut notes = Vec::new();
    if let Comparison::Requests {
        matched,
        extra,
        logged,
        missed_sample,
    } = &m.capture
    {
        if matched < logged {
            notes.push(format!(
                "{}: missed {} of {logged} logged requests (first: {})",
                tool.label(),
                logged - matched,
                missed_sample.join(" ")
            ));
        }
        if *extra > 0 {
            notes.push(format!(
                "{}: {extra} captured requests are not in the access log",
                tool.label()
            ));
        }
    }
    if tool == Tool::RecordXdp {
        notes.push(format!(
            "{}: XDP sees only what the server's veth receives, so it records requests \
             without their responses",
            tool.label()
        ));
    }
    for line in &m.wrk_errors {
        notes.push(format!("{}: wrk: {line}", tool.label()));
    }
    notes
}

/// An error on one line, cut to a readable length.
fn one_line(error: &str) -> String {
    let line = error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ");
    match line.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}
