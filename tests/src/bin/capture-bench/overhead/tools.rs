//! The tools the overhead table compares, each started on the server's veth and stopped into
//! an [`Outcome`]: which requests it captured (by URI) and what it says it dropped.
//!
//! Each tool is judged by its own output read back independently: `capture messages`' request
//! lines, the recording as `capture inspect` prints it, tcpdump's pcap as tshark decodes it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tests::capture::{CaptureOutput, CaptureRun};
use tests::netns::Topology;
use tests::{capture_bin, run_ok};

use crate::PORT;

/// One row of the table: what runs next to nginx.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Tool {
    Baseline,
    Packets,
    Messages,
    Record,
    RecordXdp,
    RecordThreads,
    RecordLz4,
    RecordAny,
    Tcpdump,
}

impl Tool {
    /// The rows in the order the table shows them.
    pub const ROWS: [Tool; 9] = [
        Tool::Baseline,
        Tool::Packets,
        Tool::Messages,
        Tool::Record,
        Tool::RecordXdp,
        Tool::RecordThreads,
        Tool::RecordLz4,
        Tool::RecordAny,
        Tool::Tcpdump,
    ];

    /// The row's first cell: the command as a user would type it.
    pub fn label(self) -> &'static str {
        match self {
            Tool::Baseline => "no capture (baseline)",
            Tool::Packets => "`capture packets --quiet`",
            Tool::Messages => "`capture messages > FILE`",
            Tool::Record => "`capture record`",
            Tool::RecordXdp => "`capture record --attach xdp`",
            Tool::RecordThreads => "`capture record --threads 2`",
            Tool::RecordLz4 => "`capture record --compression lz4`",
            Tool::RecordAny => "`capture record --iface any`, 10 idle veth pairs",
            Tool::Tcpdump => "`tcpdump -w FILE`",
        }
    }

    /// Starts the tool on the server's veth, keeping its files under `dir`; returns once it
    /// captures.
    pub fn start(self, topo: &Topology, dir: &Path) -> Result<Running> {
        let ns = topo.server_ns.as_str();
        let port = PORT.to_string();
        let on = ["--iface", topo.server_if.as_str(), "--port", port.as_str()];
        let data = dir.join("data");
        let data = data.to_string_lossy();
        let record = |extra: &[&str]| -> Result<Running> {
            let mut args = vec!["record", "--name", RECORDING, "--data-dir", &data];
            args.extend(on);
            args.extend(extra);
            Ok(Running::Record(
                CaptureRun::start(ns, &args)?,
                dir.join("data"),
            ))
        };
        match self {
            Tool::Baseline => Ok(Running::Nothing),
            Tool::Packets => {
                let args = [&["packets"][..], &on, &["--quiet"]].concat();
                Ok(Running::Packets(CaptureRun::start(ns, &args)?))
            }
            Tool::Messages => {
                let file = dir.join("messages.txt");
                let out = std::fs::File::create(&file)
                    .with_context(|| format!("creating {}", file.display()))?;
                let args = [&["messages"][..], &on].concat();
                let run = CaptureRun::start_stdout_to(ns, &args, out)?;
                Ok(Running::Messages(run, file))
            }
            Tool::Record => record(&[]),
            Tool::RecordXdp => record(&["--attach", "xdp"]),
            Tool::RecordThreads => record(&["--threads", "2"]),
            Tool::RecordLz4 => record(&["--compression", "lz4"]),
            Tool::RecordAny => {
                idle_veths(ns, IDLE_VETHS)?;
                let mut args = vec!["record", "--name", RECORDING, "--data-dir", &data];
                args.extend(["--iface", "any", "--port", port.as_str()]);
                Ok(Running::Record(
                    CaptureRun::start(ns, &args)?,
                    dir.join("data"),
                ))
            }
            Tool::Tcpdump => Ok(Running::Tcpdump(PlainTcpdump::start(
                ns,
                &topo.server_if,
                &dir.join("tcpdump.pcap"),
            )?)),
        }
    }
}

/// Idle veth pairs next to the busy one for the `--iface any` row: the row shows whether the
/// busy interface's cost grows with interfaces that carry nothing.
const IDLE_VETHS: usize = 10;

/// Makes sure `count` idle veth pairs (`idleN`/`idleNp`, up, no traffic) exist in `ns`; they
/// go with the namespace.
fn idle_veths(ns: &str, count: usize) -> Result<()> {
    for n in 0..count {
        let name = format!("idle{n}");
        let exists = Topology::exec(ns, "ip")
            .args(["link", "show", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            run_ok(Topology::exec(ns, "ip").args([
                "link",
                "add",
                &name,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{name}p"),
            ]))?;
        }
        for end in [name.clone(), format!("{name}p")] {
            run_ok(Topology::exec(ns, "ip").args(["link", "set", &end, "up"]))?;
        }
    }
    Ok(())
}

/// The recording every `record` row makes (each in a fresh data directory).
const RECORDING: &str = "overhead";

/// Why a row cannot run with this `capture` binary, if it cannot.
pub fn unavailable(tool: Tool) -> Result<Option<String>> {
    if tool != Tool::RecordThreads {
        return Ok(None);
    }
    let help = run_ok(Command::new(capture_bin()).args(["record", "--help"]))?;
    if String::from_utf8_lossy(&help.stdout).contains("--threads") {
        return Ok(None);
    }
    Ok(Some("n/a (capture record has no --threads yet)".into()))
}

/// A tool while the load runs.
pub enum Running {
    Nothing,
    Packets(CaptureRun),
    /// With the file its stdout goes to.
    Messages(CaptureRun, PathBuf),
    /// With its data directory.
    Record(CaptureRun, PathBuf),
    Tcpdump(PlainTcpdump),
}

/// What a tool captured, as far as it can tell.
pub enum Captured {
    /// No tool ran.
    Nothing,
    /// Packets, not requests: nothing to compare with the access log.
    PacketsOnly,
    /// The URI of every request captured.
    Uris(Vec<String>),
}

/// A stopped tool's account of itself.
pub struct Outcome {
    pub captured: Captured,
    /// Losses by the tool's own names, zero ones left out; `None` when no tool ran.
    pub drops: Option<BTreeMap<String, u64>>,
}

impl Running {
    /// The process to account CPU and eBPF time to.
    pub fn pid(&self) -> Option<i32> {
        match self {
            Running::Nothing => None,
            Running::Packets(run) | Running::Messages(run, _) | Running::Record(run, _) => {
                Some(run.pid())
            }
            Running::Tcpdump(t) => Some(t.child.id() as i32),
        }
    }

    /// Whether the kernel accounts the tool's filter in `run_time_ns` (tcpdump's classic
    /// socket filter is not a BPF program with an id).
    pub fn has_ebpf(&self) -> bool {
        !matches!(self, Running::Nothing | Running::Tcpdump(_))
    }

    /// Stops the tool (SIGINT, as Ctrl-C), requires a clean exit, and reads back what it
    /// captured.
    pub fn stop(self) -> Result<Outcome> {
        let (captured, drops) = match self {
            Running::Nothing => return Ok(Outcome::nothing()),
            Running::Packets(run) => {
                let out = stopped(run)?;
                (Captured::PacketsOnly, counter_losses(&out)?)
            }
            Running::Messages(run, file) => {
                let out = stopped(run)?;
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                (Captured::Uris(request_uris(&text)), counter_losses(&out)?)
            }
            Running::Record(run, data) => {
                stopped(run)?;
                (
                    Captured::Uris(recorded_uris(&data)?),
                    recorded_drops(&data)?,
                )
            }
            Running::Tcpdump(t) => {
                let (pcap, dropped) = t.stop()?;
                let drops = BTreeMap::from([("dropped_by_kernel".to_string(), dropped)]);
                (Captured::Uris(pcap_uris(&pcap)?), drops)
            }
        };
        let drops = drops.into_iter().filter(|(_, n)| *n > 0).collect();
        Ok(Outcome {
            captured,
            drops: Some(drops),
        })
    }
}

impl Outcome {
    fn nothing() -> Self {
        Outcome {
            captured: Captured::Nothing,
            drops: None,
        }
    }
}

/// SIGINT, then the output of a run that must have exited cleanly.
fn stopped(run: CaptureRun) -> Result<CaptureOutput> {
    let out = run.stop(libc::SIGINT)?;
    if !out.status.success() {
        bail!(
            "capture exited with {}: {}",
            out.status,
            out.stderr.last().map(String::as_str).unwrap_or("")
        );
    }
    Ok(out)
}

/// The losses in a run's `counters:` line, under the names recordings report them by: the
/// kernel's (named by the counters that own them) and, for `messages`, reassembly's and
/// framing's.
fn counter_losses(out: &CaptureOutput) -> Result<BTreeMap<String, u64>> {
    let counters = out.counters()?;
    let kernel = capture_common::Counter::ALL
        .iter()
        .filter_map(|c| Some((c.name(), c.loss_name()?)));
    let pipeline = capture_user::pipeline::PipelineStats::default().losses();
    let mut losses = BTreeMap::new();
    for (key, name) in kernel {
        losses.insert(name.to_string(), counters.get(key).copied().unwrap_or(0));
    }
    for (name, _) in pipeline {
        if let Some(n) = counters.get(&name) {
            losses.insert(name, *n);
        }
    }
    for (name, n) in &counters {
        if name.starts_with("decode_error_") {
            losses.insert(name.clone(), *n);
        }
    }
    Ok(losses)
}

/// The URI of every request line (`... request METHOD URI body=N ...`), as `capture
/// messages` and `capture inspect` print them.
fn request_uris(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "request")?;
            let _method = words.next()?;
            words.next().map(str::to_string)
        })
        .collect()
}

/// The requests of the recording, as `capture inspect` prints them.
fn recorded_uris(data: &Path) -> Result<Vec<String>> {
    let out = run_ok(
        Command::new(capture_bin())
            .args(["inspect", RECORDING, "--data-dir"])
            .arg(data),
    )?;
    Ok(request_uris(&String::from_utf8_lossy(&out.stdout)))
}

/// The recording's drops, as its catalog entry keeps them.
fn recorded_drops(data: &Path) -> Result<BTreeMap<String, u64>> {
    let out = run_ok(
        Command::new(capture_bin())
            .args(["recordings", "show", RECORDING, "--json", "--data-dir"])
            .arg(data),
    )?;
    let entry: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("recordings show --json printed no JSON")?;
    let drops = entry["drops"]
        .as_object()
        .context("no drops in the catalog entry")?;
    Ok(drops
        .iter()
        .map(|(name, n)| (name.clone(), n.as_u64().unwrap_or(0)))
        .collect())
}

/// The URI of every HTTP request in a pcap, as tshark decodes it (with out-of-order segments
/// put back in order, which tshark does not do by default).
fn pcap_uris(pcap: &Path) -> Result<Vec<String>> {
    let out = run_ok(Command::new("tshark").arg("-r").arg(pcap).args([
        "-o",
        "tcp.reassemble_out_of_order:TRUE",
        "-n",
        "-Y",
        "http.request",
        "-T",
        "fields",
        "-e",
        "http.request.uri",
    ]))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// tcpdump as users run it next to a service: `-i IF -s 0 -w FILE 'tcp port 8080'`, no
/// buffer tuning. `-Z root` only keeps it root so it can write into our private temp dir.
pub struct PlainTcpdump {
    child: Child,
    file: PathBuf,
    stderr: Option<JoinHandle<Vec<String>>>,
}

impl PlainTcpdump {
    fn start(ns: &str, ifname: &str, file: &Path) -> Result<Self> {
        let filter = format!("tcp port {PORT}");
        let mut child = Topology::exec(ns, "tcpdump")
            .args(["-i", ifname, "-s", "0", "-Z", "root", "-w"])
            .arg(file)
            .arg(&filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tcpdump (installed by `cargo xtask setup`)")?;
        let stderr = child.stderr.take().context("tcpdump stderr")?;
        let (tx, rx) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        let tcpdump = PlainTcpdump {
            child,
            file: file.to_path_buf(),
            stderr: Some(stderr),
        };
        rx.recv_timeout(Duration::from_secs(15))
            .context("tcpdump did not start listening")?;
        Ok(tcpdump)
    }

    /// Stops tcpdump (SIGINT); the pcap and its "packets dropped by kernel" count.
    fn stop(mut self) -> Result<(PathBuf, u64)> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait()?;
        let lines = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let dropped = lines
            .iter()
            .find_map(|l| l.strip_suffix(" packets dropped by kernel"))
            .and_then(|n| n.trim().parse().ok());
        match dropped {
            Some(n) if status.success() => Ok((self.file.clone(), n)),
            _ => bail!("tcpdump exited with {status}: {}", lines.join("\n")),
        }
    }
}

impl Drop for PlainTcpdump {
    fn drop(&mut self) {
        // Still holding the reader means stop() never ran (a failed row): kill and reap.
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
